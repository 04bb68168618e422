"""Run the emitted encoder core in a Verilog simulator (Verilator or Icarus) on real inputs.

The parameter image is replayed from the simulator side: a small hand-written Verilog wrapper
(:data:`REPLAY_TOP`) holds the image in a ROM and streams it into ``s_axis_param`` at the start of
every run, so Python is not in the loop for every weight beat. Under cocotb the ROM is read
with ``$readmemh`` (file given with ``+params=FILE``); the direct harness writes it itself from
a binary file (``+params_bin=FILE``, :func:`image_file`). A harness drives the activation
packets, reads the outputs and the counters: for Verilator runs without stalls or waveforms
(``bertcore embed --backend rtl``, the benches) a C++ main linked with the Verilated model
(:mod:`bertcore.rtlsim_main`), else cocotb (:mod:`bertcore.rtlsim_tb`), which the tests use for
random backpressure; both follow the same protocol. One build per configuration, simulator and
harness is cached under ``rtlsim/`` of the cache directory (:func:`bertcore.cache.cache_dir`:
``$BERTCORE_CACHE`` or the user's cache directory): the image is a run-time file, so a new model
of the same shape needs no rebuild.
"""

import hashlib
import json
import operator
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from .cache import cache_dir, entry_lock
from .checkpoint import BertError
from .toolchain import (
    VERILATOR_BUILD_ARGS, VERILATOR_MAKE_VARS, VERILATOR_PORTS_ONLY_ARGS,
    VERILATOR_SIM_MAKE_VARS, ToolNotFound, ensure_verilator_env, patch_verilator_make,
    verilator_public_ports,
)

__all__ = ["REPLAY_TOP", "HARNESSES", "CoreSimulator", "SimResult", "core_options", "image_file",
           "default_gate_idle"]

#: How :class:`CoreSimulator` drives a run: "auto" (the C++ main for Verilator runs without
#: stalls or waveforms, else cocotb), "cocotb" (:mod:`bertcore.rtlsim_tb`) or "direct" (the C++
#: main of :mod:`bertcore.rtlsim_main`).
HARNESSES = ("auto", "cocotb", "direct")

#: Simulation top: the core plus a ROM that replays the parameter image on each ``param_go``.
#: ``{extra_ports}``/``{extra_conns}`` take the core's further outputs (performance counters).
#:
#: Every input of the top reaches the core's logic through a register: the reset through
#: ``rst_q`` here, the streams through the core's own port register slices. Amaranth writes
#: each register's next value, reset included, as combinational logic, and Verilator
#: re-evaluates all logic that depends combinationally on a top-level input at every ``eval``
#: (its ``ico`` region), i.e. at each clock edge and at each of cocotb's writes. With registered
#: inputs that logic runs once per cycle (see the "MiniLM through the simulated core" section of
#: docs/core.md for the figures).
REPLAY_TOP = """\
// bertcore simulation top: replays the parameter image from a ROM into s_axis_param.
`default_nettype none
module bertcore_sim_top #(
    parameter integer BUS = 32,
    parameter integer DEPTH = 2
) (
    input  wire           clk,
    input  wire           rst,
    input  wire           param_go,
    input  wire [BUS-1:0] s_axis_act_tdata,
    input  wire           s_axis_act_tvalid,
    output wire           s_axis_act_tready,
    input  wire           s_axis_act_tlast,
    input  wire           s_axis_act_tuser,
    output wire [BUS-1:0] m_axis_act_tdata,
    output wire           m_axis_act_tvalid,
    input  wire           m_axis_act_tready,
    output wire           m_axis_act_tlast,
    output wire           m_axis_act_tuser,
    output wire           busy,
    output wire           error,
    output wire [31:0]    cycles{extra_ports}
);
    reg [BUS:0] rom [0:DEPTH-1] /*verilator public*/;   // {tlast, tdata} per beat
    reg [8*1024-1:0] image_file;
    initial begin
        if ($value$plusargs("params=%s", image_file))
            $readmemh(image_file, rom);
        else if (!$test$plusargs("params_bin="))   // the direct harness writes rom itself
            $display("bertcore_sim_top: no +params=FILE given");
    end
    // +param_period=P: at most one image beat every P cycles (tvalid rises P-1 cycles after
    // each transfer; a slower parameter memory, e.g. an SDRAM)
    reg [15:0] period;
    initial begin
        if (!$value$plusargs("param_period=%d", period))
            period = 16'd1;
    end
    reg rst_q;
    always @(posedge clk)
        rst_q <= rst;
    reg [$clog2(DEPTH+1)-1:0] idx;
    reg armed;
    reg [15:0] gap;
    wire offer = armed && (gap == 16'd0);
    wire [BUS:0] word = rom[idx];
    wire param_tready;
    always @(posedge clk) begin
        if (rst_q) begin
            idx <= 0;
            armed <= 1'b0;
            gap <= 16'd0;
        end else begin
            if (param_go)
                armed <= 1'b1;
            if (offer && param_tready)
                gap <= period - 16'd1;
            else if (gap != 16'd0)
                gap <= gap - 16'd1;
            if (offer && param_tready) begin
                if (word[BUS]) begin
                    idx <= 0;
                    armed <= 1'b0;
                end else
                    idx <= idx + 1'b1;
            end
        end
    end
    bertcore_encoder core (
        .clk(clk), .rst(rst_q),
        .s_axis_param_tdata(word[BUS-1:0]), .s_axis_param_tvalid(offer),
        .s_axis_param_tready(param_tready), .s_axis_param_tlast(word[BUS]),
        .s_axis_act_tdata(s_axis_act_tdata), .s_axis_act_tvalid(s_axis_act_tvalid),
        .s_axis_act_tready(s_axis_act_tready), .s_axis_act_tlast(s_axis_act_tlast),
        .s_axis_act_tuser(s_axis_act_tuser),
        .m_axis_act_tdata(m_axis_act_tdata), .m_axis_act_tvalid(m_axis_act_tvalid),
        .m_axis_act_tready(m_axis_act_tready), .m_axis_act_tlast(m_axis_act_tlast),
        .m_axis_act_tuser(m_axis_act_tuser), .busy(busy), .error(error), .cycles(cycles){extra_conns}
    );
endmodule

`default_nettype wire
"""


_WRAPPED = {"clk", "rst", "busy", "error", "cycles", "m_axis_act_tuser"} | {
    f"{p}_{f}" for p in ("s_axis_param", "s_axis_act", "m_axis_act")
    for f in ("tdata", "tvalid", "tready", "tlast")} | {"s_axis_act_tuser"}

#: Ports of :data:`REPLAY_TOP` before the core's further outputs.
_TOP_PORTS = ("clk", "rst", "param_go", *(f"{p}_{f}" for p in ("s_axis_act", "m_axis_act")
                                          for f in ("tdata", "tvalid", "tready", "tlast")),
              "s_axis_act_tuser", "m_axis_act_tuser", "busy", "error", "cycles")


def _extra_outputs(top):
    """``(name, width)`` of each output of the core ``top`` the wrapper passes through."""
    from amaranth.hdl import Shape
    from amaranth.lib.wiring import Out
    extra = []
    for name, member in top.signature.members.items():
        if name in _WRAPPED:
            continue
        if member.flow != Out or not member.is_port:
            raise BertError(f"the core has an input port {name!r} the simulation top cannot drive")
        extra.append((name, Shape.cast(member.shape).width))
    return extra


def replay_top(top):
    """The Verilog of :data:`REPLAY_TOP` for the core ``top`` (an ``EncoderTop``): every further
    output of the core (counters) becomes an output of the wrapper."""
    ports, conns = [], []
    for name, width in _extra_outputs(top):
        rng = f"[{width - 1}:0] " if width > 1 else ""
        ports.append(f",\n    output wire {rng}{name}")
        conns.append(f", .{name}({name})")
    text = REPLAY_TOP.replace("{extra_ports}", "".join(ports))
    return text.replace("{extra_conns}", "".join(conns))


def _bus_words(words, bus_width):
    """``words`` as a list of ints, each checked to fit a ``bus_width``-bit bus (one line of
    error otherwise: the ROM's text or binary image would carry the excess bits into the
    ``tlast`` flag or drop them)."""
    try:
        words = [operator.index(w) for w in words]
    except TypeError:
        raise BertError("the parameter image must be a sequence of integers (bus words)") from None
    if any(w < 0 or w >> bus_width for w in words):
        raise BertError(f"a parameter image word does not fit the {bus_width}-bit bus")
    return words


def image_file(words, config):
    """The parameter image as the direct harness reads it into the top's ROM
    (``+params_bin=FILE``): ``BCIM``, the 32-bit limbs per beat and the number of beats
    (little-endian 32-bit words), then each beat ``{last, word}`` (``bus_width + 1`` bits, the
    flag set on the last beat) in little-endian limbs: what
    :func:`bertcore.core.image.image_to_hex` gives ``$readmemh``, without the text."""
    bus = config.bus_width
    limbs = (bus + 32) // 32
    mask = (1 << bus) - 1
    beats = [(w & mask).to_bytes(4 * limbs, "little") for w in words]
    if beats:
        beats[-1] = ((words[-1] & mask) | 1 << bus).to_bytes(4 * limbs, "little")
    return b"BCIM" + struct.pack("<II", limbs, len(beats)) + b"".join(beats)


class SimResult:
    """Outputs of a simulation: per run the output words, the core's counters (``cycles``,
    ``array_beats``, ``layer_cycles``) and timings; ``failed`` is the cause code of a run that
    ended with a failure packet (0 for a result; :meth:`check` raises on one).

    ``sim_s`` is the wall time of the whole simulation (simulator start-up, the image's load into
    the ROM, the harness); :attr:`run_s` and :attr:`run_cpu_s` cover only the runs, as wall time and
    as CPU time of the simulator process (the figure that does not depend on the machine's load).
    """

    def __init__(self, data, build_s, sim_s, waves):
        self.runs = [{"out": [int(w, 16) for w in r["out"]], "cycles": r["cycles"],
                      "sim_cycles": r["sim_cycles"], "error": r["error"],
                      "failed": r.get("failed", 0),
                      "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                      "array_beats": r.get("array_beats"),
                      "layer_cycles": r.get("layer_cycles"),
                      "failed_runs": r.get("failed_runs")} for r in data["runs"]]
        self.build_s = build_s
        self.sim_s = sim_s
        self.waves = waves
        self.plan = None            # check_core: the runs (bertcore.packing.Run)

    def check(self):
        """Raise :class:`~bertcore.core.image.RunFailed` (an ``ImageError``: one line, exit code
        2 at the command line) for the first run that ended with a failure packet."""
        from .core.image import RunFailed
        for r in self.runs:
            if r["failed"]:
                raise RunFailed(r["failed"])
        return self

    @property
    def total_cycles(self):
        return sum(r["sim_cycles"] for r in self.runs)

    @property
    def run_s(self):
        return sum(r["wall_s"] for r in self.runs)

    @property
    def run_cpu_s(self):
        return sum(r["cpu_s"] for r in self.runs)


def default_gate_idle(simulator, waves=False):
    """Whether a simulation of the core stops the clocks of its idle passes unless asked
    otherwise (:class:`CoreSimulator`'s ``gate_idle=None``): in Verilator without waveforms (a
    waveform shows the plain core); not in Icarus (an event-driven simulator gains little)."""
    return simulator == "verilator" and not waves


def core_options(gate_idle):
    """``EncoderTop``'s keyword arguments for a simulation of the gated core (``gate_idle``,
    which puts the datapath in its own domain, ``dp_domain``) or of the plain one."""
    return {"dp_domain": True, "gate_idle": True} if gate_idle else {}


class CoreSimulator:
    """The encoder core of ``config`` built once for ``simulator`` ("verilator" or "icarus").

    Parameters
    ----------
    config : CoreConfig
    simulator : str
    waves : bool
        Build with waveform tracing and write a waveform file per simulation.
    harness : str
        :data:`HARNESSES`.
    verilator_args : sequence of str
        More Verilator arguments, after the package's (:data:`toolchain.VERILATOR_BUILD_ARGS`).
    opt_fast : str or None
        The C++ optimization of the Verilated model's per-cycle code (``make OPT_FAST``), in
        place of the package's (:data:`toolchain.VERILATOR_SIM_MAKE_VARS`). Both are part of
        the cache key; ``bench/verilator_speed.py`` varies them.
    gate_idle : bool or None
        Simulate the core with the clocks of its idle passes stopped
        (:class:`~bertcore.core.encoder.EncoderCore`'s ``gate_idle``, with ``dp_domain``):
        the same outputs, counters and cycles, about twice the cycles per second in Verilator,
        which evaluates a stopped clock domain's logic not at all. ``None`` (the default):
        :func:`default_gate_idle`. Part of the cache key.
    """

    def __init__(self, config, simulator="verilator", *, waves=False, harness="auto",
                 verilator_args=(), opt_fast=None, gate_idle=None):
        if simulator not in ("verilator", "icarus"):
            raise BertError(f"unknown simulator {simulator!r} (verilator or icarus)")
        if harness not in HARNESSES:
            raise BertError(f"unknown harness {harness!r} ({', '.join(HARNESSES)})")
        if simulator != "verilator" and (verilator_args or opt_fast is not None):
            raise BertError("verilator_args and opt_fast are options of a Verilator build")
        if gate_idle is not None and not isinstance(gate_idle, bool):
            raise BertError(f"gate_idle must be a bool or None, not {gate_idle!r}")
        self.gate_idle = default_gate_idle(simulator, waves) if gate_idle is None else gate_idle
        self.config = config
        self.simulator = simulator
        self.waves = waves
        self.harness = harness
        self.verilator_args = list(verilator_args)
        self.opt_fast = opt_fast
        self.build_s = 0.0
        self._build_dirs = {}

    def _check_tools(self):
        if self.simulator == "verilator":
            ensure_verilator_env()
        elif shutil.which("iverilog") is None:
            raise ToolNotFound("iverilog not found: `apt-get install -y iverilog` "
                               "(or run `make install`)")

    def harness_for(self, stall=0.0):
        """The harness a run with ``stall`` uses: "direct" (the C++ main of
        :mod:`bertcore.rtlsim_main`) for Verilator runs without stalls or waveforms when
        ``harness`` is "auto", else "cocotb"; an explicit "direct" that cannot serve the run is
        an error."""
        direct_ok = self.simulator == "verilator" and not self.waves and not stall
        if self.harness == "direct" and not direct_ok:
            raise BertError("the direct harness runs Verilator without stalls or waveforms only")
        if self.harness == "cocotb" or not direct_ok:
            return "cocotb"
        return "direct"

    def build(self, progress=lambda msg: None, harness=None):
        """Generate the Verilog and build the simulator for ``harness`` (default: that of a run
        without stalls, :meth:`harness_for`; cached); returns the build directory.

        The cache key is made from the configuration, the simulator, the harness and their
        options, the Amaranth version and the source of the ``bertcore`` package (every ``.py``
        file), so a cached build is found without generating the Verilog (40-90 s on
        ``minilm``); any change to the package's source builds anew.
        """
        from importlib.metadata import version

        harness = harness or self.harness_for()
        self._check_tools()
        build_args = [*VERILATOR_BUILD_ARGS, *self.verilator_args]
        if harness == "cocotb":
            build_args += VERILATOR_PORTS_ONLY_ARGS
        make_vars = [*VERILATOR_MAKE_VARS, *VERILATOR_SIM_MAKE_VARS]
        if self.opt_fast is not None:
            make_vars = [*(v for v in make_vars if not v.startswith("OPT_FAST=")),
                         f"OPT_FAST={self.opt_fast}"]
        digest = hashlib.sha256()
        for item in (json.dumps(self.config.to_dict(), sort_keys=True), self.simulator, harness,
                     str(self.waves), f"gate_idle={self.gate_idle}", version("amaranth"),
                     *build_args, *make_vars):
            digest.update(item.encode() + b"\0")
        package = Path(__file__).resolve().parent
        for source in sorted(package.rglob("*.py")):
            digest.update(str(source.relative_to(package)).encode() + b"\0")
            digest.update(source.read_bytes() + b"\0")
        key = digest.hexdigest()[:16]
        name = self.simulator if harness == "cocotb" else f"{self.simulator}-{harness}"
        build_dir = cache_dir("rtlsim", f"{name}-{key}")
        stamp = build_dir / ".built"
        # one build per entry at a time: a second process waits, then finds it built
        with entry_lock(build_dir):
            if not stamp.exists():
                t0 = time.time()
                if harness == "direct":
                    self._build_direct(build_dir, build_args, make_vars, progress)
                else:
                    self._build_cocotb(build_dir, build_args, make_vars, progress)
                self.build_s = time.time() - t0
                stamp.write_text(json.dumps({"build_s": self.build_s}))
            else:
                self.build_s = json.loads(stamp.read_text())["build_s"]
        self._build_dirs[harness] = build_dir
        return build_dir

    def _sources(self, build_dir, progress):
        """Write the core's and the wrapper's Verilog into ``build_dir``; returns the core top
        (an ``EncoderTop``) and the two paths."""
        from amaranth.back import verilog
        from .core.encoder import EncoderTop
        progress("generating the core's Verilog")
        top = EncoderTop(self.config, **core_options(self.gate_idle))
        core_v = verilog.convert(top, name="bertcore_encoder", emit_src=False)
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "bertcore_encoder.v").write_text(core_v)
        (build_dir / "bertcore_sim_top.v").write_text(replay_top(top))
        return top, [build_dir / "bertcore_encoder.v", build_dir / "bertcore_sim_top.v"]

    def _build_cocotb(self, build_dir, build_args, make_vars, progress):
        from cocotb_tools.runner import VerilatorControlFile, get_runner
        from .core.image import image_beats
        top, sources = self._sources(build_dir, progress)
        runner = get_runner(self.simulator)
        if self.simulator == "verilator":
            patch_verilator_make(runner, make_vars=make_vars)
        kw = {}
        if self.simulator == "icarus":
            kw["timescale"] = ("1ns", "1ps")
        else:
            # cocotb touches only the wrapper's ports: the rest of the design stays private to
            # Verilator
            public_vlt = verilator_public_ports(
                "bertcore_sim_top", [*_TOP_PORTS, *(name for name, _ in _extra_outputs(top))])
            (build_dir / "public_ports.vlt").write_text(public_vlt)
            sources.append(VerilatorControlFile(build_dir / "public_ports.vlt"))
            kw["build_args"] = build_args
        progress(f"building the {self.simulator} model (cached afterwards)")
        try:
            runner.build(sources=sources, hdl_toplevel="bertcore_sim_top", build_dir=build_dir,
                         parameters={"BUS": self.config.bus_width,
                                     "DEPTH": image_beats(self.config)},
                         waves=self.waves, always=True, log_file=build_dir / "build.log", **kw)
        except Exception as exc:
            raise BertError(f"the {self.simulator} build failed (see "
                            f"{build_dir / 'build.log'}): {exc}") from None

    def _build_direct(self, build_dir, build_args, make_vars, progress):
        import subprocess
        from .core.image import image_beats
        from .rtlsim_main import harness_source
        verilator = ensure_verilator_env()
        top, sources = self._sources(build_dir, progress)
        (build_dir / "main.cpp").write_text(harness_source(_extra_outputs(top)))
        obj = build_dir / "obj"
        progress("building the verilator model (cached afterwards)")
        log = build_dir / "build.log"
        steps = [
            [verilator, "--cc", "--exe", "-Mdir", str(obj), "--top-module", "bertcore_sim_top",
             "--prefix", "Vtop", "-o", "sim", *build_args, f"-GBUS={self.config.bus_width}",
             f"-GDEPTH={image_beats(self.config)}", str(build_dir / "main.cpp"),
             *map(str, sources)],
            ["make", "-j2", "-C", str(obj), "-f", "Vtop.mk", *make_vars],
        ]
        with open(log, "w") as f:
            for cmd in steps:
                f.write(" ".join(cmd) + "\n")
                f.flush()
                try:
                    failed = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
                except OSError as exc:
                    raise BertError(f"the verilator build could not run {cmd[0]}: {exc}") from None
                if failed:
                    raise BertError(f"the verilator build failed (see {log})")

    def run(self, image_words, activation_packets, *, stall=0.0, seed=1,
            progress=lambda msg: None, param_period=1):
        """Run one inference per activation packet; returns a SimResult.

        ``image_words``: the parameter image's bus words
        (:func:`bertcore.core.image.pack_parameter_image`), integers of at most ``bus_width``
        bits (anything else is a :class:`BertError`); the last carries ``tlast``.

        ``activation_packets``: ``(words, rows)`` per run (a plain packet), or ``(words, rows,
        table)`` with the words of a segment table (a packed run of ``rows`` rows in all; the
        table goes first, with ``tuser`` set: :func:`bertcore.core.image.pack_segments`).

        ``param_period``: the image is offered at most one beat every ``param_period`` cycles
        (``bus_width / 8 / param_period`` bytes per cycle).
        """
        if not isinstance(param_period, int) or not 1 <= param_period < 1 << 16:
            raise BertError(f"param_period must be an integer in 1..65535, not {param_period!r}")
        image_words = _bus_words(image_words, self.config.bus_width)
        from .core.image import activation_beats, image_to_hex
        harness = self.harness_for(stall)
        if harness not in self._build_dirs:
            self.build(progress, harness)
        build_dir = self._build_dirs[harness]
        cfg = self.config
        runs = []
        for packet in activation_packets:
            words, length, table = (*packet, [])[:3]
            if len(words) != activation_beats(length, cfg):
                raise BertError("activation packet length does not match its row count")
            runs.append((length, list(table), list(words), activation_beats(length, cfg)))
        with tempfile.TemporaryDirectory(prefix="bertcore-rtlsim-") as tmp:
            tmp = Path(tmp)
            if harness == "direct":
                (tmp / "params.bin").write_bytes(image_file(image_words, cfg))
                plusargs = [f"+params_bin={tmp / 'params.bin'}"]
            else:
                (tmp / "params.hex").write_text(image_to_hex(image_words, cfg))
                plusargs = [f"+params={tmp / 'params.hex'}"]
            plusargs.append(f"+param_period={param_period}")
            progress(f"simulating {len(runs)} run(s) on {self.simulator}")
            t0 = time.time()
            if harness == "direct":
                data = self._run_direct(build_dir, tmp, runs, plusargs, param_period)
            else:
                data = self._run_cocotb(build_dir, tmp, runs, plusargs, stall, seed)
            sim_s = time.time() - t0
            waves = None
            if self.waves:
                found = [f for d in (tmp, Path(build_dir)) for ext in ("fst", "vcd")
                         for f in sorted(d.glob(f"*.{ext}"))]
                if found:
                    keep = cache_dir("rtlsim", "waves")
                    keep.mkdir(parents=True, exist_ok=True)
                    waves = keep / f"core-{self.simulator}-{int(time.time())}{found[0].suffix}"
                    shutil.copy(found[0], waves)
        if data.get("failure"):
            raise BertError(f"simulation failed: {data['failure']}")
        return SimResult(data, self.build_s, sim_s, waves)

    def _run_cocotb(self, build_dir, tmp, runs, plusargs, stall, seed):
        from cocotb_tools.runner import get_runner
        job = {"bus": self.config.bus_width, "stall": stall, "seed": seed,
               "result": str(tmp / "result.json"),
               "runs": [{"length": length, "act": [f"{w:x}" for w in words],
                         "table": [f"{w:x}" for w in table], "out_beats": out_beats}
                        for length, table, words, out_beats in runs]}
        (tmp / "job.json").write_text(json.dumps(job))
        env = {"BERTCORE_RTLSIM_JOB": str(tmp / "job.json"),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        results_xml = get_runner(self.simulator).test(
            hdl_toplevel="bertcore_sim_top", hdl_toplevel_lang="verilog",
            test_module="bertcore.rtlsim_tb", build_dir=build_dir, test_dir=tmp,
            extra_env=env, plusargs=plusargs, waves=self.waves, log_file=tmp / "sim.log")
        return self._result(tmp, tmp / "sim.log", results_xml)

    def _run_direct(self, build_dir, tmp, runs, plusargs, param_period):
        import subprocess
        from .core.perf import run_cycles
        from .rtlsim_main import write_job
        cfg = self.config
        # a hang guard, not a check: 8x the modeled cycles of the longest run the core takes
        limit = 8 * run_cycles(cfg, cfg.max_seq,
                               param_rate=cfg.bus_width / 8 / param_period) + 1_000_000
        write_job(tmp / "job.txt", [(length, table, words, out_beats, limit)
                                    for length, table, words, out_beats in runs])
        with open(tmp / "sim.log", "w") as log:
            try:
                subprocess.run([str(build_dir / "obj" / "sim"), f"+job={tmp / 'job.txt'}",
                                f"+result={tmp / 'result.json'}", *plusargs],
                               stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
            except OSError as exc:   # e.g. the cached build was partly deleted
                raise BertError(f"the verilator simulation could not start ({exc}); delete "
                                f"{build_dir} to rebuild it") from None
        return self._result(tmp, tmp / "sim.log", "no result file")

    def _result(self, tmp, log_path, fallback):
        result_file = tmp / "result.json"
        if not result_file.exists():
            log = log_path.read_text()[-2000:] if log_path.exists() else ""
            raise BertError(f"the {self.simulator} simulation produced no result: "
                            f"{log.strip().splitlines()[-1] if log.strip() else fallback}")
        return json.loads(result_file.read_text())


def random_model(config, seed=0):
    """A quantized random BERT of the shape of ``config`` (built offline in a temp directory)."""
    from .checkpoint import load_checkpoint
    from .quant.model import QuantOptions, quantize
    from .testing import TINY_WORDS, make_tiny_checkpoint
    import random as _random
    rng = _random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bertcore-random-") as tmp:
        path = make_tiny_checkpoint(Path(tmp) / "bert", hidden=config.hidden, heads=config.heads,
                                    ffn=config.ffn, layers=config.layers,
                                    max_position=max(config.max_seq, 8), seed=seed)
        ckpt = load_checkpoint(path)
        texts = [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(3, 12)))
                 for _ in range(8)]
        return quantize(ckpt, texts, QuantOptions(prob_bits=config.prob_bits,
                                                 gelu_bits=config.gelu_bits))


def check_core(config, model, lengths, *, simulator="verilator", waves=False, seed=1,
               stall=0.0, progress=lambda msg: None, param_period=1, pack=False,
               harness="auto", verilator_args=(), opt_fast=None, gate_idle=None):
    """Run random int8 inputs of ``lengths`` rows through the simulated core of ``config``.

    ``pack``: the sequences go first-fit into packed runs (:func:`bertcore.packing.plan_runs`),
    else one run each. Returns ``(passed, rows, result)``: per sequence, in input order,
    ``(length, identical, cycles of its run)`` against ``model.encode_int`` of that sequence
    alone; ``result.plan`` lists the runs (:class:`bertcore.packing.Run`, ``indices``: the
    sequences of each run). ``harness``, ``verilator_args``, ``opt_fast``, ``gate_idle``: as
    :class:`CoreSimulator` takes them.
    """
    import torch
    from .core.image import check_model, pack_parameter_image, unpack_segments
    from .packing import plan_runs
    check_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randint(-128, 128, (n, config.hidden), generator=gen) for n in lengths]
    image = pack_parameter_image(model, config)
    runs = plan_runs(xs, config, pack=pack)
    sim = CoreSimulator(config, simulator, waves=waves, harness=harness,
                        verilator_args=verilator_args, opt_fast=opt_fast, gate_idle=gate_idle)
    res = sim.run(image, [(run.data, sum(run.lengths), run.table) for run in runs],
                  stall=stall, seed=seed, progress=progress, param_period=param_period).check()
    rows = [None] * len(xs)
    for plan, run in zip(runs, res.runs):
        ys = (unpack_segments(run["out"], plan.lengths, config) if run["out"]
              else [None] * len(plan.indices))
        for i, y in zip(plan.indices, ys):
            ok = (y is not None and not run["error"]
                  and torch.equal(y, model.encode_int(xs[i])))
            rows[i] = (int(xs[i].shape[0]), ok, run["cycles"])
    res.plan = runs
    return all(row[1] for row in rows), rows, res
