#!/usr/bin/env python3
"""PE utilization of the encoder core, measured in Verilator, next to the analytic cycle model.

Runs the core of --preset (default `minilm`) with --layers layers (default 1: one full encoder
layer, as the schedule repeats identically per layer) on random int8 inputs of several sequence
lengths, checks every output bit-exact against the integer reference, and reads the core's
performance counters: `layer_cycles` (cycles of the last layer of a run) and `array_beats`.

    PE utilization = MACs of a layer / (array_rows * array_cols * layer_cycles)

The weights are random (a model of the preset's shape; cycles do not depend on the values);
`--model minilm` uses the real all-MiniLM-L6-v2 parameters instead (needs --layers 6). The
analytic model (bertcore.core.perf) is printed beside each measurement with its disagreement.
The very last line is `pe_utilization=0.xx` for --seq. Target (issue 4): >= 0.90 at seq 128.
With --packed K a packed run of --seq rows (K segments of seq/K rows, docs/interface.md "Packed
runs") is measured too; its utilization counts the MACs of the segments' own attention only.

    .venv/bin/python bench/utilization.py --preset minilm --seq 128
    .venv/bin/python bench/utilization.py --preset minilm --seq 128 --also "" --packed 8
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
    ap.add_argument("--layers", type=int, default=1, help="encoder layers of the simulated core")
    ap.add_argument("--model", choices=("random", "minilm"), default="random")
    ap.add_argument("--simulator", default="verilator")
    ap.add_argument("--packed", type=int, default=0, metavar="K",
                    help="also a packed run of --seq rows: K segments of seq/K rows")
    args = ap.parse_args()
    if args.packed and (args.packed < 1 or args.seq % args.packed):
        print(f"utilization.py: error: --packed must divide --seq ({args.seq}), not "
              f"{args.packed}", file=sys.stderr)
        return 2
    cfg = preset(args.preset).replace(layers=args.layers)
    if args.model == "minilm":
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
    pes = cfg.array_rows * cfg.array_cols
    cpu = sum(r["cpu_s"] for r in res.runs)
    print(f"\n{args.preset} ({cfg.array_rows}x{cfg.array_cols} array, {cfg.softmax_units} softmax "
          f"+ {cfg.layernorm_units} LayerNorm units), {cfg.layers} layer(s), {args.model} "
          f"weights; {args.simulator} build {res.build_s:.0f} s, simulation {res.sim_s:.1f} s "
          f"for {res.total_cycles} cycles ({res.total_cycles / max(cpu, 1e-9):.0f} cycles/s of "
          f"simulator CPU time)")
    print(f"{'seq':>5s} {'bit-exact':>9s} {'layer cycles':>12s} {'model':>9s} {'diff':>7s} "
          f"{'array busy':>10s} {'utilization':>11s} {'model util':>10s} {'run cycles':>10s}")
    util = {}
    for (seq, same, cycles), run in zip(rows, res.runs):
        layer = run["layer_cycles"]
        model_layer = perf.layer_cycles(cfg, seq)
        util[seq] = perf.macs_per_layer(cfg, seq) / (pes * layer)
        busy = run["array_beats"] / cfg.layers / layer
        print(f"{seq:5d} {str(same):>9s} {layer:12d} {model_layer:9d} "
              f"{(model_layer - layer) / layer:+7.1%} {busy:10.3f} {util[seq]:11.3f} "
              f"{perf.utilization(cfg, seq):10.3f} {cycles:10d}")
    print("where a layer's cycles go (model, seq %d): %s"
          % (args.seq, perf.breakdown(cfg, args.seq)))
    if args.packed:
        segs = [args.seq // args.packed] * args.packed
        same, _, res_p = check_core(cfg, model, segs, simulator=args.simulator, pack=True)
        ok = ok and same
        layer = res_p.runs[0]["layer_cycles"]
        model_layer = perf.layer_cycles(cfg, args.seq, segs)
        print(f"packed {args.packed} x {segs[0]} rows: bit-exact {same}, layer cycles {layer} "
              f"(model {model_layer}, {(model_layer - layer) / layer:+.1%}), PE utilization "
              f"{perf.macs_per_layer(cfg, args.seq, segs) / (pes * layer):.3f} (model "
              f"{perf.utilization(cfg, args.seq, segs):.3f})")
    if not ok:
        print("the simulated core differs from the integer reference", file=sys.stderr)
    print(f"pe_utilization={util[args.seq]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
