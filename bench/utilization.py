#!/usr/bin/env python3
"""PE utilization of the encoder core, measured in Verilator, next to the analytic cycle model.

Runs the `minilm` core (or --preset) with the real MiniLM parameters on random int8 inputs of
several sequence lengths; utilization = MACs done / (rows * cols * cycles), where the cycles are
the core's own `cycles` output for a whole run divided evenly over its identical layers. Prints
the analytic model (bertcore.core.perf) beside each measurement and their disagreement. The very
last line is `pe_utilization=0.xx` for --seq. Target (issue 4): >= 0.90 at seq 128.

    .venv/bin/python bench/utilization.py --preset minilm --seq 128
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.config import preset  # noqa: E402
from bertcore.core import perf  # noqa: E402
from bertcore.rtlsim import check_core, random_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--also", default="16,32,64", help="further sequence lengths")
    ap.add_argument("--simulator", default="verilator")
    args = ap.parse_args()
    cfg = preset(args.preset)
    if args.preset == "minilm":
        from bertcore.checkpoint import load_checkpoint
        from bertcore.cli import default_calibration_texts
        from bertcore.quant.model import quantize
        model = quantize(load_checkpoint(), default_calibration_texts())
    else:
        model = random_model(cfg)
    seqs = sorted({int(s) for s in args.also.split(",") if s} | {args.seq})
    t0 = time.time()
    ok, rows, res = check_core(cfg, model, seqs, simulator=args.simulator,
                               progress=lambda m: print(f"[{time.time() - t0:7.1f} s] {m}",
                                                        flush=True))
    n = cfg.array_rows * cfg.array_cols
    print(f"\n{args.preset}: {cfg.array_rows}x{cfg.array_cols} array, {cfg.layers} layers; "
          f"{args.simulator} build {res.build_s:.0f} s, simulation {res.sim_s:.1f} s for "
          f"{res.total_cycles} cycles ({res.total_cycles / res.sim_s:.0f} cycles/s)")
    print(f"{'seq':>5s} {'bit-exact':>9s} {'cycles/layer':>13s} {'model':>10s} {'diff':>7s} "
          f"{'utilization':>11s} {'model util':>10s}")
    util = {}
    for (seq, same, cycles), in zip([(r,) for r in rows]):
        per_layer = cycles / cfg.layers
        model_layer = perf.layer_cycles(cfg, seq)
        util[seq] = perf.macs_per_layer(cfg, seq) / (n * per_layer)
        print(f"{seq:5d} {str(same):>9s} {per_layer:13.0f} {model_layer:10d} "
              f"{(model_layer - per_layer) / per_layer:+7.1%} {util[seq]:11.3f} "
              f"{perf.utilization(cfg, seq):10.3f}")
    print("where a layer's cycles go (model, seq %d): %s" % (args.seq, perf.breakdown(cfg, args.seq)))
    if not ok:
        print("the simulated core differs from the integer reference", file=sys.stderr)
    print(f"pe_utilization={util[args.seq]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
