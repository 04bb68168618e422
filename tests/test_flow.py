"""The synthesis / place-and-route report flow (yowasp tools), on a small unit for speed."""

import dataclasses
import sys
import time

import pytest
from amaranth.back import verilog

from bertcore.cli import main
from bertcore.flow.report import DEVICES, FitError, FlowError, get_device, report_verilog
from bertcore.rtl.gelu import IntGELU


@pytest.fixture(scope="module")
def gelu_v():
    return verilog.convert(IntGELU(lanes=1, in_width=16), name="gelu")


def test_synthesis_counts_resources(gelu_v):
    r = report_verilog(gelu_v, "gelu", "up5k", pnr=False)
    assert r["resources"]["DSP"] == r["cells"]["SB_MAC16"] >= 1
    assert r["resources"]["FF"] >= 300 and r["resources"]["LUT"] > 0
    assert r["fmax_mhz"] is None


def test_place_and_route_ecp5_gives_fmax(gelu_v):
    t0 = time.time()
    r = report_verilog(gelu_v, "gelu", "ecp5-25k", freq_mhz=100)
    assert r["resources"]["DSP"] == r["cells"]["MULT18X18D"] == 3
    assert 50 < r["fmax_mhz"] < 500, r["fmax_mhz"]
    assert "TRELLIS_COMB" in r["nextpnr_utilization"] or "TRELLIS_SLICE" in str(r)
    print(f"IntGELU int16 on ECP5-25k: {r['fmax_mhz']:.1f} MHz in {time.time() - t0:.0f} s")


def test_design_that_does_not_fit(gelu_v, monkeypatch):
    small = dataclasses.replace(DEVICES["up5k"], capacity={"LUT": 5280, "FF": 100, "DSP": 8,
                                                            "BRAM": 30})
    monkeypatch.setitem(DEVICES, "up5k", small)
    with pytest.raises(FitError, match=r"does not fit up5k: it needs \d+ FF of 100"):
        report_verilog(gelu_v, "gelu", "up5k", pnr=False)


def test_unknown_device_and_tool_errors(gelu_v):
    with pytest.raises(FlowError, match="unknown device 'xc7a35t'"):
        get_device("xc7a35t")
    with pytest.raises(FlowError, match="yosys synthesis failed"):
        report_verilog("module broken(; endmodule", "broken", "up5k", pnr=False)


def test_tool_failures_say_how(tmp_path):
    """A tool that exits or is killed without printing anything is reported with its exit
    status or signal and the end of its log file."""
    from bertcore.flow.report import _run
    script = "open('t.log', 'w').write('step 1\\nstep 2: abc9\\n'); raise SystemExit(3)"
    with pytest.raises(FlowError, match=r"^tool failed: it exited with status 3 and printed "
                                        r"nothing; the end of its log:\n  step 1\n  step 2: abc9$"):
        _run([sys.executable, "-c", script], tmp_path, "tool", log="t.log")
    with pytest.raises(FlowError, match=r"^tool failed: it was killed by SIGKILL and printed "
                                        r"nothing$"):
        _run([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], tmp_path, "tool",
             log="none.log")
    with pytest.raises(FlowError, match=r"^tool failed: last line$"):
        _run([sys.executable, "-c", "print('first\\nlast line'); raise SystemExit(1)"], tmp_path,
             "tool")


def test_cli_report_errors(capsys, tmp_path):
    def err(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("bertcore: error: ")
        return lines[-1]
    assert "invalid choice" in err(["report", "--preset", "tiny", "--device", "xc7"])
    assert "--sweep takes KEY=V1,V2" in err(["report", "--preset", "tiny", "--device", "up5k",
                                             "--sweep", "array_rows"])
    assert "array_rows must be an integer" in err(["report", "--preset", "tiny", "--device",
                                                   "up5k", "--sweep", "array_rows=4,x"])
    assert "unknown sweep key 'depth' (known: array, array_cols" in err(
        ["report", "--preset", "tiny", "--device", "up5k", "--sweep", "depth=1,2"])
    base = ["report", "--preset", "tiny", "--device", "up5k"]
    assert "--zip needs sweeps of equal length, not array_rows (2), array_cols (3)" in err(
        base + ["--zip", "--sweep", "array_rows=2,4", "--sweep", "array_cols=2,4,8"])
    assert "--zip pairs two or more --sweep keys" in err(base + ["--zip", "--sweep", "array=2"])
    assert "--sweep array_rows sets a field that another --sweep sets" in err(
        base + ["--sweep", "array=2,4", "--sweep", "array_rows=2"])
    # every point is checked before any synthesis: the product has non-square arrays
    assert "sweep point array_rows=2, array_cols=4: the encoder core needs a square array" in err(
        base + ["--sweep", "array_rows=2,4", "--sweep", "array_cols=2,4"])
    assert "sweep point array=3: hidden (32) must be a multiple of array_cols (3)" in err(
        base + ["--sweep", "array=2,3"])


def test_sweep_points_alias_zip_and_product():
    from bertcore.cli import _parse_sweep, _sweep_points
    from bertcore.config import preset
    tiny = preset("tiny")
    points = _sweep_points(tiny, _parse_sweep(["array=2,4,8"]), zipped=False)
    assert [(a, (c.array_rows, c.array_cols)) for a, c in points] == [
        ((("array", 2),), (2, 2)), ((("array", 4),), (4, 4)), ((("array", 8),), (8, 8))]
    zipped = _sweep_points(tiny, _parse_sweep(["array_rows=2,8", "array_cols=2,8"]), zipped=True)
    assert [(c.array_rows, c.array_cols) for _, c in zipped] == [(2, 2), (8, 8)]
    product = _sweep_points(tiny, _parse_sweep(["array=2,4", "bus_width=16,32"]), zipped=False)
    assert [(c.array_cols, c.bus_width) for _, c in product] == [(2, 16), (2, 32), (4, 16),
                                                                 (4, 32)]


def test_sweep_writes_csv_and_png(tmp_path, monkeypatch, capsys):
    """The sweep outputs (CSV columns, PNG) and a point that does not fit, without the tools:
    ``report_core`` is replaced by a stand-in that raises ``FitError`` for the 8x8 array."""
    import csv

    import bertcore.flow.report as flow

    def fake_report(config, device, *, freq_mhz, pnr, pnr_timeout, step):
        n = config.array_rows
        r = {"device": device, "resources": {"LUT": 1000 * n, "FF": 500 * n, "DSP": n * n,
                                             "BRAM": n}, "capacity": dict(DEVICES[device].capacity),
             "fmax_mhz": 100.0 / n, "synth_s": 1.0, "pnr_s": 2.0, "config": config.to_dict()}
        if n == 8:
            exc = FitError("does not fit", "DSP", 64, 28)
            exc.report = dict(r, fmax_mhz=None, pnr_s=None)
            raise exc
        return r
    monkeypatch.setattr(flow, "report_core", fake_report)
    stem = tmp_path / "out" / "sweep"
    assert main(["report", "--preset", "tiny", "--device", "ecp5-25k", "--sweep", "array=2,4,8",
                 "-o", str(stem)]) == 0
    table = capsys.readouterr().out
    assert "array=8" in table and "does not fit: DSP 229%" in table
    rows = list(csv.DictReader(open(stem.with_suffix(".csv"))))
    assert [r["array"] for r in rows] == ["2", "4", "8"]
    assert [r["fits"] for r in rows] == ["True", "True", "False"]
    assert rows[1]["DSP"] == "16" and rows[1]["fmax_mhz"] == "25.0"
    assert int(rows[0]["modeled_cycles_per_layer"]) > int(rows[1]["modeled_cycles_per_layer"])
    assert stem.with_suffix(".png").stat().st_size > 10000
    # one point that does not fit: the table, then one error line, exit 2
    assert main(["report", "--preset", "tiny", "--device", "ecp5-25k", "--set", "array_rows=8",
                 "--set", "array_cols=8"]) == 2
    captured = capsys.readouterr()
    assert "does not fit: DSP" in captured.out
    assert captured.err.strip().splitlines() == ["bertcore: error: does not fit"]


@pytest.mark.slow
def test_tiny_core_does_not_fit_up5k(capsys):
    """The iCEBreaker's UP5K cannot hold even the tiny core: the report says by how much."""
    assert main(["report", "--preset", "tiny", "--device", "up5k", "--quiet"]) == 2
    assert "does not fit up5k" in capsys.readouterr().err


def test_cli_build_errors(capsys):
    def err(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("bertcore: error: ")
        return lines[-1]
    assert "unknown board 'de10' (known: ulx3s-85f" in err(["build", "--board", "de10"])
    assert "divisible by heads (3)" in err(["build", "--board", "ulx3s-85f", "--set", "heads=3"])
    assert "unknown preset" in err(["build", "--board", "icebreaker", "--preset", "huge"])
    assert "core clock must be 1 to 400 MHz, not 0.5" in err(["build", "--board", "ulx3s-85f",
                                                             "--clock", "0.5"])
    assert "invalid float value: 'fast'" in err(["build", "--board", "ulx3s-85f", "--clock",
                                                 "fast"])
    assert "--seed: must be below 2**31" in err(["build", "--board", "ulx3s-85f", "--seed",
                                                 str(2 ** 31)])
    assert "--seed: must be at least 0" in err(["build", "--board", "ulx3s-85f", "--seed", "-3"])
    assert "--seed: invalid int value: '1.5'" in err(["build", "--board", "ulx3s-85f", "--seed",
                                                      "1.5"])
    assert "--seed: a seed is given twice in 3,4,3" in err(["build", "--board", "ulx3s-85f",
                                                            "--seed", "3,4,3"])
    assert "--seed: invalid int value: ''" in err(["build", "--board", "ulx3s-85f", "--seed",
                                                   "3,"])
    assert "--pnr-timeout stops the placements of a sweep: give several seeds" in err(
        ["build", "--board", "ulx3s-85f", "--seed", "3", "--pnr-timeout", "60"])
    assert "--pnr-timeout: must be greater than 0, not 0" in err(
        ["build", "--board", "ulx3s-85f", "--seed", "3,4", "--pnr-timeout", "0"])


def test_build_placement_seed(monkeypatch, tmp_path):
    """``seed`` reaches nextpnr's command line (only when given); a bad seed is refused before
    anything runs. ECP5 builds route with ``--tmg-ripup``, iCE40 builds without."""
    from bertcore.boards import build
    for bad in (-1, 2 ** 31, 1.0, True, "7"):
        with pytest.raises(ValueError, match="placement seed must be a whole number"):
            build.build("ulx3s-85f", outdir=tmp_path / "never", seed=bad)
    assert not (tmp_path / "never").exists()
    opts = []

    def fake_platform_build(self, top, name, build_dir, do_program, **kwargs):
        opts.append(kwargs["nextpnr_opts"])
        top._MustUse__silence = True        # (never elaborated here: no unused-design warning)
        raise RuntimeError("stopped before the tools")

    from amaranth.vendor import LatticePlatform, SiliconBluePlatform
    monkeypatch.setattr(LatticePlatform, "build", fake_platform_build)
    monkeypatch.setattr(SiliconBluePlatform, "build", fake_platform_build)
    for seed, want in ((None, None), (0, "--seed 0"), (12345, "--seed 12345")):
        with pytest.raises(RuntimeError, match="failed before place and route"):
            build.build("ulx3s-85f", outdir=tmp_path / "b", seed=seed)
        assert opts[-1].split().count("--seed") == (want is not None)
        assert want is None or opts[-1].endswith(want)
    # the router's timing-driven rip-up on the ECP5 boards (build.ECP5_PNR_OPTS), not on iCE40
    for board, ripup in (("ulx3s-85f", True), ("orangecrab-25f", True), ("icebreaker", False)):
        with pytest.raises(RuntimeError, match="failed before place and route"):
            build.build(board, outdir=tmp_path / board)
        assert ("--tmg-ripup" in opts[-1].split()) == ripup, board


def test_cli_build_prints_failing_endpoints(monkeypatch, capsys, tmp_path):
    """A build that misses its clock prints the latest endpoint groups under the report."""
    from bertcore.boards import build
    failing = [{"endpoint": "core.dp.array.a_in.DI", "arrival_ns": 11.44, "count": 9},
               {"endpoint": "bridge.crc_in.M", "arrival_ns": 10.2, "count": 8}]

    clocks = []

    def fake_build(board, config, outdir, do_program=False, clock_mhz=None, seed=None,
                   pnr_timeout=None):
        clocks.append((clock_mhz, seed) if pnr_timeout is None else (clock_mhz, seed, pnr_timeout))
        return {"board": board, "routed": True, "timing_met": False, "fmax": {"clk": 87.4},
                "target_mhz": 100.0, "utilization": {}, "bitstream": None, "seconds": 1.0,
                "failing": failing}

    monkeypatch.setattr(build, "build", fake_build)
    assert main(["build", "--board", "ulx3s-85f", "-o", str(tmp_path), "--clock", "100"]) == 0
    assert clocks == [(100.0, None)]
    out = capsys.readouterr().out
    assert main(["build", "--board", "ulx3s-85f", "-o", str(tmp_path), "--seed", "7",
                 "--quiet"]) == 0
    assert clocks[-1] == (None, 7)
    sweep = [{"seed": 7, "routed": True, "fmax": {"clk": 87.4}, "timing_met": False},
             {"seed": 9, "routed": False, "fmax": {}, "timing_met": False, "stopped": False},
             {"seed": 4, "routed": False, "fmax": {}, "timing_met": False, "stopped": True}]
    monkeypatch.setattr(build, "build", lambda *a, **k: dict(fake_build(*a, **k), seeds=sweep))
    assert main(["build", "--board", "ulx3s-85f", "-o", str(tmp_path), "--seed", "7, 9,4",
                 "--pnr-timeout", "900"]) == 0
    assert clocks[-1] == (None, [7, 9, 4], 900.0)
    swept = capsys.readouterr().out
    assert "seed 7         87.40 MHz (missed)" in swept and "seed 9         - MHz (not routed)" \
        in swept and "seed 4         - MHz (stopped at --pnr-timeout)" in swept
    assert "seeds " not in swept
    assert "timing_met     False" in out
    assert "latest endpoints over the 100 MHz period (arrival ns, count):" in out
    assert " 11.44  x9    core.dp.array.a_in.DI" in out
    assert "failing" not in out


@pytest.mark.slow
@pytest.mark.parametrize("board", [
    pytest.param("ulx3s-85f", id="ulx3s"),           # tiny, resident: ~17 min
    pytest.param("orangecrab-25f", id="orangecrab"),   # tiny on 2x2, LUT multipliers: ~8 min
])
def test_build_bitstream(board, tmp_path, capsys):
    """Each ECP5 board with its default core routes, meets its core clock and writes a
    bitstream."""
    import json
    assert main(["build", "--board", board, "-o", str(tmp_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["routed"] and rep["bitstream"] and (tmp_path / "top.bit").stat().st_size > 0
    assert rep["timing_met"], rep["fmax"]


FAKE_NEXTPNR = """#!/bin/sh
# a stand-in for nextpnr: the Fmax of each seed from FAKE_FMAX ("seed:MHz,..."; "x": no route)
seed=1
log=
while [ $# -gt 0 ]; do
  case "$1" in --seed) seed=$2; shift;; --log) log=$2; shift;; esac
  shift
done
mhz=$(echo "$FAKE_FMAX" | tr ',' '\\n' | sed -n "s/^$seed://p")
echo "seed $seed" > top.config
if [ "$mhz" = x ]; then echo "ERROR: failed to route" > "$log"; exit 1; fi
if [ "$mhz" = slow ]; then echo "Info: routing..." > "$log"; sleep 60; fi
echo 'Info: Routing complete.' > "$log"
echo "Info: Max frequency for clock   'clk': $mhz MHz" >> "$log"
echo '{"critical_paths": [], "detailed_net_timings": []}' > top.report.json
"""


def _fake_build_dir(tmp_path, first_seed, fmax):
    """An extracted Amaranth ECP5 build directory (its script not run), with a stand-in
    synthesis (it counts its runs in ``synth.runs``), nextpnr and packer (``FAKE_FMAX``)."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "nextpnr").write_text(FAKE_NEXTPNR)
    (tools / "pack").write_text('#!/bin/sh\ncp top.config top.bit\n')
    (tools / "synth").write_text('#!/bin/sh\necho run >> synth.runs\n')
    for tool in ("nextpnr", "pack", "synth"):
        (tools / tool).chmod(0o755)
    out = tmp_path / "build"
    out.mkdir()
    (out / "build_top.sh").write_text(
        '#!/bin/sh\nset -e\n"$YOSYS" -q -l top.rpt top.ys\n'
        '"$NEXTPNR_ECP5" --quiet --timing-allow-fail --log top.tim --json top.json '
        f'--seed {first_seed}\n'
        '"$ECPPACK" --compress --input top.config --bit top.bit\n')
    env = {"YOSYS": str(tools / "synth"), "NEXTPNR_ECP5": str(tools / "nextpnr"),
           "ECPPACK": str(tools / "pack"), "FAKE_FMAX": fmax}
    return out, env


@pytest.mark.parametrize("fmax, seeds, chosen, ran, met", [
    ("1:118.2,2:126.1,3:130.0", [1, 2, 3], 2, [1, 2], True),        # stops at the first met
    ("1:126.1,2:119.0", [1, 2], 1, [1], True),                       # the first met: no more
    ("4:117.9,5:122.9,6:121.4", [4, 5, 6], 5, [4, 5, 6], False),    # none: the fastest
    ("1:x,2:122.0,3:x", [1, 2, 3], 2, [1, 2, 3], False),            # unrouted ones skipped
    ("1:slow,2:126.5", [1, 2], 2, [1, 2], True),                     # a slow one stopped
])
def test_sweep_seeds(monkeypatch, tmp_path, fmax, seeds, chosen, ran, met):
    """A sweep of placement seeds (``build(seed=[...])``, ``bertcore build --seed 1,2,3``)
    places and routes the synthesized design with each seed until one meets the target; the
    build directory holds the chosen placement's log and bitstream, ``seed-N/`` each one's."""
    from bertcore.boards.build import sweep_seeds
    slow = "slow" in fmax
    out, env = _fake_build_dir(tmp_path, seeds[0], fmax)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    seed, tried = sweep_seeds(out, "top", seeds, 125.0, timeout=3 if slow else None)
    assert (out / "synth.runs").read_text() == "run\n"          # synthesis once
    assert seed == chosen
    assert [t["seed"] for t in tried] == ran
    assert [t["stopped"] for t in tried] == [slow and t["seed"] == 1 for t in tried]
    assert [t["timing_met"] for t in tried] == [t["routed"] and t["fmax"]["clk"] >= 125
                                                for t in tried]
    assert any(t["timing_met"] for t in tried) == met
    assert (out / "top.bit").read_text() == f"seed {chosen}\n"
    assert f"{dict(p.split(':') for p in fmax.split(','))[str(chosen)]} MHz" in \
        (out / "top.tim").read_text()
    assert sorted(p.name for p in out.glob("seed-*")) == sorted(f"seed-{s}" for s in ran)
    for s in ran:
        assert (out / f"seed-{s}" / "top.config").read_text() == f"seed {s}\n"
    script = (out / "pnr_top.sh").read_text()    # the lines after synthesis, reseeded
    assert "$YOSYS" not in script and script.count("--seed") == 1
    assert f"--seed {ran[-1]}\n" in script and '"$ECPPACK"' in script


def test_sweep_seeds_refuses(monkeypatch, tmp_path):
    from bertcore.boards import build
    for bad in ([], [3, 3], [None, 2], [1, -1]):
        with pytest.raises(ValueError, match="sweep takes distinct|placement seed must be"):
            build.build("ulx3s-85f", outdir=tmp_path / "never", seed=bad)
    for seed, timeout in ((3, 60), ([1, 2], 0), ([1, 2], "60"), ([1, 2], True)):
        with pytest.raises(ValueError, match="pnr_timeout is a positive number of seconds"):
            build.build("ulx3s-85f", outdir=tmp_path / "never", seed=seed, pnr_timeout=timeout)
    assert not (tmp_path / "never").exists()
    out = tmp_path / "odd"
    out.mkdir()
    (out / "build_top.sh").write_text('#!/bin/sh\n"$NEXTPNR_ECP5" --json top.json\n')
    with pytest.raises(RuntimeError, match="not one synthesis line and a nextpnr line"):
        build.sweep_seeds(out, "top", [1, 2], 100.0)
    (out / "build_top.sh").write_text('#!/bin/sh\n"$YOSYS" top.ys\n"$NEXTPNR_ECP5" --json x\n')
    monkeypatch.setenv("YOSYS", "false")
    with pytest.raises(RuntimeError, match=r"synthesis failed \(exit status 1\)"):
        build.sweep_seeds(out, "top", [1, 2], 100.0)
