#!/usr/bin/env python3
"""Verilator speed of the simulated encoder core: the model alone, and through the package.

Builds of ``bertcore_sim_top`` (:data:`bertcore.rtlsim.REPLAY_TOP` around the core of
``--preset``), all with the package's Verilator flags:

* ``model``: the package's C++ main (:mod:`bertcore.rtlsim_main`) built in ``--work`` (not
  cached) with options that can be varied (``--opt-fast``, arguments after ``--``), to compare
  Verilator and compiler options.
* ``direct``: the package's path for runs without stalls, :class:`bertcore.rtlsim.CoreSimulator`
  with its C++ main (:mod:`bertcore.rtlsim_main`), as ``bertcore embed --backend rtl`` and the
  benches use it (cached in ``rtlsim/`` of :func:`bertcore.cache.cache_dir`).
* ``cocotb``: the same through the cocotb driver (:mod:`bertcore.rtlsim_tb`), which the tests
  use for random backpressure (cached too).

Each checks the outputs against the integer reference and prints the build time and cycles/s;
the last line is ``cycles_per_s=N`` of the package's path (``direct``, else the last measured).
Parameters are random (:func:`bertcore.rtlsim.random_model`); the speed does not depend on them.

    .venv/bin/python bench/verilator_speed.py --preset minilm --seq 9
    .venv/bin/python bench/verilator_speed.py --preset minilm --only direct
    .venv/bin/python bench/verilator_speed.py --preset tiny --only model --opt-fast=-Os -- -O0
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.config import preset  # noqa: E402
from bertcore.toolchain import (  # noqa: E402
    VERILATOR_BUILD_ARGS, VERILATOR_MAKE_VARS, VERILATOR_SIM_MAKE_VARS, ensure_verilator_env,
)


def _run(cmd, log, **kw):
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if proc.returncode:
        raise SystemExit(f"failed ({log}): {' '.join(map(str, cmd))}")


def model_speed(cfg, top, files, work, extra_args, opt_fast):
    """Build the package's C++ main (:mod:`bertcore.rtlsim_main`) around the core ``top`` in
    ``work`` with the package's Verilator flags plus ``extra_args`` and ``opt_fast``, run the
    job ``files["job"]``; returns (verilate s, C++ s, the result's runs)."""
    from amaranth.back import verilog
    from bertcore.core.image import image_beats
    from bertcore.rtlsim import extra_outputs, replay_top
    from bertcore.rtlsim_main import harness_source
    verilator = ensure_verilator_env()
    work.mkdir(parents=True, exist_ok=True)
    (work / "bertcore_encoder.v").write_text(
        verilog.convert(top, name="bertcore_encoder", emit_src=False))
    (work / "bertcore_sim_top.v").write_text(replay_top(top))
    (work / "main.cpp").write_text(harness_source(extra_outputs(top)))
    obj = work / "obj"
    subprocess.run(["rm", "-rf", str(obj)], check=True)
    t0 = time.time()
    _run([verilator, "--cc", "--exe", "-Mdir", str(obj), "--top-module", "bertcore_sim_top",
          "--prefix", "Vtop", "-o", "sim", *VERILATOR_BUILD_ARGS, *extra_args,
          f"-GBUS={cfg.bus_width}", f"-GDEPTH={image_beats(cfg)}",
          *(str(work / name) for name in ("main.cpp", "bertcore_encoder.v", "bertcore_sim_top.v"))],
         work / "verilate.log")
    t1 = time.time()
    make_vars = [*VERILATOR_MAKE_VARS, *VERILATOR_SIM_MAKE_VARS]
    if opt_fast is not None:
        make_vars = [*(v for v in make_vars if not v.startswith("OPT_FAST=")),
                     f"OPT_FAST={opt_fast}"]
    _run(["make", "-j2", "-C", str(obj), "-f", "Vtop.mk", *make_vars], work / "make.log")
    t2 = time.time()
    result = work / "result.json"
    result.unlink(missing_ok=True)
    _run([str(obj / "sim"), f"+job={files['job']}", f"+result={result}",
          f"+params={files['params']}"], work / "run.log")
    data = json.loads(result.read_text())
    if data["failure"]:
        raise SystemExit(f"the model run failed: {data['failure']}")
    return t1 - t0, t2 - t1, data["runs"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--seq", type=int, default=9, help="tokens per run")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", choices=("model", "direct", "cocotb"))
    ap.add_argument("--opt-fast", help="C++ optimization of the model build's hot code "
                    "(make OPT_FAST; default: the package's)")
    ap.add_argument("--work", type=Path, default=Path("build/verilator_speed"))
    ap.add_argument("verilator_args", nargs="*", help="after --: more Verilator arguments")
    args = ap.parse_args()

    import torch
    from bertcore.core.encoder import EncoderTop
    from bertcore.core.image import image_to_hex, pack_activations, pack_parameter_image
    from bertcore.rtlsim import check_core, random_model
    from bertcore.rtlsim_main import write_job

    cfg = preset(args.preset)
    t0 = time.time()
    model = random_model(cfg)
    print(f"random {args.preset} model in {time.time() - t0:.1f} s", flush=True)
    model_figure = None
    if args.only in (None, "model"):
        top = EncoderTop(cfg)
        work = args.work / args.preset
        work.mkdir(parents=True, exist_ok=True)
        x = torch.randint(-128, 128, (args.seq, cfg.hidden),
                          generator=torch.Generator().manual_seed(1))
        acts = pack_activations(x, cfg)
        expect = pack_activations(model.encode_int(x), cfg)
        files = {"params": work / "params.hex", "job": work / "job.txt"}
        files["params"].write_text(image_to_hex(pack_parameter_image(model, cfg), cfg))
        write_job(files["job"], [(args.seq, [], acts, len(expect), 1 << 40)] * args.runs)
        vl_s, cc_s, runs = model_speed(cfg, top, files, work, args.verilator_args,
                                       args.opt_fast)
        print(f"model: Verilator {vl_s:.0f} s + C++ {cc_s:.0f} s = build {vl_s + cc_s:.0f} s")
        for i, run in enumerate(runs):
            same = [int(w, 16) for w in run["out"]] == expect and not run["error"]
            print(f"model: run {i}: bit-exact {'yes' if same else 'NO'}, "
                  f"core cycles {run['cycles']}")
            if not same:
                return 1
        n = sum(run["sim_cycles"] for run in runs)
        wall, cpu = sum(run["wall_s"] for run in runs), sum(run["cpu_s"] for run in runs)
        model_figure = n / cpu
        print(f"model: runs {n} cycles in {wall:.2f} s wall = {n / wall:.0f} cycles/s, "
              f"{cpu:.2f} s CPU = {model_figure:.0f} cycles/s", flush=True)
    figure = None
    for harness in ("direct", "cocotb"):
        if args.only not in (None, harness):
            continue
        t0 = time.time()
        ok, rows, res = check_core(cfg, model, [args.seq] * args.runs, harness=harness,
                                   progress=lambda m: print(f"[{time.time() - t0:7.1f} s] {m}",
                                                            flush=True))
        for seq, same, cycles in rows:
            print(f"{harness}: {seq} tokens, bit-exact {'yes' if same else 'NO'}, "
                  f"core cycles {cycles}")
        n = res.total_cycles
        print(f"{harness}: build {res.build_s:.0f} s (cached afterwards); whole simulation "
              f"{res.sim_s:.2f} s (start-up and $readmemh included) = {n / res.sim_s:.0f} "
              "cycles/s")
        print(f"{harness}: runs {n} cycles in {res.run_s:.2f} s wall = {n / res.run_s:.0f} "
              f"cycles/s, {res.run_cpu_s:.2f} s CPU = {n / res.run_cpu_s:.0f} cycles/s",
              flush=True)
        if not ok:
            return 1
        figure = figure or n / res.run_cpu_s
    figure = figure or model_figure
    if figure is not None:
        print(f"cycles_per_s={figure:.0f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
