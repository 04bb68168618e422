#!/usr/bin/env python3
"""Verilator speed of the simulated encoder core, through the package's two harnesses.

Builds of ``bertcore_sim_top`` (:data:`bertcore.rtlsim.REPLAY_TOP` around the core of
``--preset``) by :class:`bertcore.rtlsim.CoreSimulator`, cached in ``rtlsim/`` of
:func:`bertcore.cache.cache_dir`:

* ``direct``: the path of runs without stalls, the C++ main of :mod:`bertcore.rtlsim_main`, as
  ``bertcore embed --backend rtl`` and the benches use it;
* ``cocotb``: the same through the cocotb driver (:mod:`bertcore.rtlsim_tb`), which the tests
  use for random backpressure.

``--opt-fast`` (the C++ optimization of the model's per-cycle code) and Verilator arguments
after ``--`` change the builds' options, to compare them; each set of options is a build of its
own (they are part of the cache key). ``--no-gate`` builds the plain core, one clock for all of
it, in place of the default, whose idle passes run on stopped clocks
(:class:`bertcore.rtlsim.CoreSimulator`'s ``gate_idle``).

Each checks the outputs against the integer reference and prints the build time and cycles/s;
the last line is ``cycles_per_s=N`` of ``direct`` (else ``cocotb``). Parameters are random
(:func:`bertcore.rtlsim.random_model`); the speed does not depend on them.

    .venv/bin/python bench/verilator_speed.py --preset minilm --seq 9
    .venv/bin/python bench/verilator_speed.py --preset minilm --only direct --runs 3
    .venv/bin/python bench/verilator_speed.py --preset tiny --only direct --opt-fast=-Os -- -O0
    .venv/bin/python bench/verilator_speed.py --preset minilm --only direct --no-gate
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.config import preset  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--seq", type=int, default=9, help="tokens per run")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", choices=("direct", "cocotb"))
    ap.add_argument("--opt-fast", help="C++ optimization of the model's per-cycle code "
                    "(make OPT_FAST; default: the package's)")
    ap.add_argument("--no-gate", action="store_true",
                    help="simulate the plain core (no stopped clocks for idle passes)")
    ap.add_argument("verilator_args", nargs="*", help="after --: more Verilator arguments")
    args = ap.parse_args()

    from bertcore.rtlsim import check_core, random_model

    cfg = preset(args.preset)
    t0 = time.time()
    model = random_model(cfg)
    print(f"random {args.preset} model in {time.time() - t0:.1f} s", flush=True)
    figure = None
    for harness in ("direct", "cocotb"):
        if args.only not in (None, harness):
            continue
        t0 = time.time()
        ok, rows, res = check_core(cfg, model, [args.seq] * args.runs, harness=harness,
                                   verilator_args=args.verilator_args, opt_fast=args.opt_fast,
                                   gate_idle=False if args.no_gate else None,
                                   progress=lambda m: print(f"[{time.time() - t0:7.1f} s] {m}",
                                                            flush=True))
        for seq, same, cycles in rows:
            print(f"{harness}: {seq} tokens, bit-exact {'yes' if same else 'NO'}, "
                  f"core cycles {cycles}")
        n = res.total_cycles
        print(f"{harness}: build {res.build_s:.0f} s (cached afterwards); whole simulation "
              f"{res.sim_s:.2f} s (start-up and the image load included) = {n / res.sim_s:.0f} "
              "cycles/s")
        print(f"{harness}: runs {n} cycles in {res.run_s:.2f} s wall = {n / res.run_s:.0f} "
              f"cycles/s, {res.run_cpu_s:.2f} s CPU = {n / res.run_cpu_s:.0f} cycles/s",
              flush=True)
        if not ok:
            return 1
        figure = figure or n / res.run_cpu_s
    if figure is not None:
        print(f"cycles_per_s={figure:.0f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
