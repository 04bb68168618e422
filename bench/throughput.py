#!/usr/bin/env python3
"""Sentences per run: packed against unpacked runs of the encoder core, by the cycle model.

Embeds a fixed mixed-length corpus (`bench/throughput_corpus.txt`: 80 texts of 4-39 tokens of
the MiniLM tokenizer, [CLS] and [SEP] included) through the analytic cycle model of the core
(`bertcore.core.perf`), each text in its own run (unpacked) and packed several per run by the
host packer (`bertcore.packing.first_fit`, docs/interface.md "Packed runs"), with the
parameter image streamed at the full rate of the bus (one beat per cycle) and throttled to
--rate bytes per cycle (default 2: a 16-bit SDRAM). Prints cycles per sentence each way and
sentences per second at --mhz; the last line is

    throughput: cycles_per_sentence@2Bpc packed=N unpacked=M speedup=X.X

With --rtl N the first N texts also run through the Verilated core, unpacked (one run each)
and packed (first-fit, segment tables), with random weights of the preset's shape (the
schedule does not depend on the values; every segment bit-exact against the integer reference
of its sequence alone), the image replayed at the full rate and throttled by the wrapper's
tvalid duty cycle (+param_period = bus bytes / --rate): the core's cycles of each run next to
the model's, and the subset's cycles per sentence each way; then the PE utilization of a full
packed run (8 segments of max_seq / 8 rows) from the core's layer_cycles. On minilm an
unpacked run at 2 B/cycle alone is ~5.5M cycles: --rtl-unpacked K sends only the first K of
the N texts unpacked, --rtl-parts picks the parts (full, throttled, util) so that they can run
in separate processes.

    .venv/bin/python bench/throughput.py --preset minilm
    .venv/bin/python bench/throughput.py --preset minilm --rtl 8     # + a minilm Verilator build
    .venv/bin/python bench/throughput.py --preset minilm --set max_seq=128 --rtl 8 \
        --rtl-unpacked 1 --rtl-parts throttled                         # one part of it
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.config import ConfigError, load_config  # noqa: E402
from bertcore.core import perf  # noqa: E402
from bertcore.packing import first_fit  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "throughput_corpus.txt"


def corpus_lengths(path):
    """Token counts of the texts of ``path`` (one per line) with the MiniLM tokenizer."""
    from bertcore.checkpoint import load_checkpoint
    tok = load_checkpoint().tokenizer
    texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return [len(tok.encode(t)) for t in texts]


def model_cycles(cfg, lengths, runs, rate):
    """Modeled cycles of ``runs`` (lists of indices of ``lengths``) at ``rate`` bytes/cycle."""
    total = 0
    for run in runs:
        segs = [lengths[i] for i in run]
        total += perf.run_cycles(cfg, sum(segs), segments=segs if len(segs) > 1 else None,
                                 param_rate=rate)
    return total


def rtl_check(cfg, lengths, bus_bytes, rate, *, unpacked=None, parts=("full", "throttled",
                                                                        "util")):
    """Run ``lengths`` through the Verilated core, unpacked (the first ``unpacked`` of them,
    default all) and packed, at the full (part ``full``) and the throttled rate (``throttled``);
    print the core's cycles of each run beside the model's; then (``util``) a full packed run's
    PE utilization. Returns the worst model error and ``{(rate, way): RTL cycles per
    sentence}``."""
    import time
    from bertcore.rtlsim import check_core, random_model
    period = max(1, round(bus_bytes / rate))
    model = random_model(cfg)
    t0 = time.time()
    worst, per = 0.0, {}
    periods = [p for p, part in ((1, "full"), (period, "throttled")) if part in parts]
    for p in periods:
        for way in ("unpacked", "packed"):
            texts = lengths[:unpacked] if way == "unpacked" and unpacked else lengths
            ok, rows, res = check_core(cfg, model, texts, param_period=p,
                                       pack=way == "packed",
                                       progress=lambda msg: print(
                                           f"[{time.time() - t0:6.0f} s] {msg}", flush=True))
            total = 0
            for plan, run in zip(res.plan, res.runs):
                segs = list(plan.lengths)
                same = all(rows[i][1] for i in plan.indices)
                want = perf.run_cycles(cfg, sum(segs), segments=plan.lengths if plan.table
                                       else None, param_rate=bus_bytes / p)
                err = (want - run["cycles"]) / run["cycles"]
                worst = max(worst, abs(err))
                total += run["cycles"]
                print(f"RTL {way}, {bus_bytes / p:g} B/cycle, segments {segs}: bit-exact "
                      f"{same}, {run['cycles']:,} cycles, model {want:,} ({err:+.2%})")
            per[bus_bytes / p, way] = total / len(texts)
            if not ok:
                print("the simulated core differs from the integer reference", file=sys.stderr)
        print(f"RTL cycles/sentence @{bus_bytes / p:g}Bpc ({len(lengths)} texts packed, "
              f"{len(lengths[:unpacked] if unpacked else lengths)} unpacked): packed="
              f"{per[bus_bytes / p, 'packed']:.0f} unpacked={per[bus_bytes / p, 'unpacked']:.0f}"
              f" speedup={per[bus_bytes / p, 'unpacked'] / per[bus_bytes / p, 'packed']:.2f}")
    if "util" in parts:
        # PE utilization of a layer of a full packed run: 8 segments of max_seq / 8 rows
        segs = [cfg.max_seq // 8] * 8
        ok, _, res = check_core(cfg, model, segs, pack=True)
        run = res.runs[0]
        want = perf.run_cycles(cfg, cfg.max_seq, segs)
        worst = max(worst, abs(want - run["cycles"]) / run["cycles"])
        util = (perf.macs_per_layer(cfg, cfg.max_seq, segs)
                / (cfg.array_rows * cfg.array_cols * run["layer_cycles"]))
        print(f"RTL full packed run ({len(segs)} x {segs[0]} rows): bit-exact {ok}, "
              f"{run['cycles']:,} cycles (model {want:,}), layer_cycles "
              f"{run['layer_cycles']:,} (model {perf.layer_cycles(cfg, cfg.max_seq, segs):,}), "
              f"PE utilization {util:.3f} (model {perf.utilization(cfg, cfg.max_seq, segs):.3f})")
    print(f"RTL against the model: worst run {worst:.2%}")
    return worst, per


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a configuration field (e.g. max_segments=8)")
    ap.add_argument("--corpus", default=str(CORPUS), help="texts, one per line")
    ap.add_argument("--rate", type=float, default=2.0,
                    help="throttled parameter stream, bytes per cycle (default 2)")
    ap.add_argument("--mhz", type=float, default=100.0, help="clock for sentences/s")
    ap.add_argument("--rtl", type=int, default=0, metavar="N",
                    help="also run the first N texts in Verilator, unpacked and packed")
    ap.add_argument("--rtl-unpacked", type=int, default=0, metavar="K",
                    help="of those, send only the first K unpacked (default: all N)")
    ap.add_argument("--rtl-parts", default="full,throttled,util",
                    help="RTL parts to run: full, throttled (the two rates), util (a full "
                         "packed run's PE utilization); default all")
    args = ap.parse_args()
    try:
        cfg = load_config(args.preset, sets=args.set)
    except ConfigError as exc:
        print(f"throughput.py: error: {exc}", file=sys.stderr)
        return 2
    if not args.rate > 0:
        print(f"throughput.py: error: --rate must be positive, not {args.rate}", file=sys.stderr)
        return 2
    parts = tuple(p.strip() for p in args.rtl_parts.split(",") if p.strip())
    if not parts or set(parts) - {"full", "throttled", "util"} or args.rtl_unpacked < 0:
        print(f"throughput.py: error: --rtl-parts takes full, throttled, util and "
              f"--rtl-unpacked a count, not {args.rtl_parts!r} / {args.rtl_unpacked}",
              file=sys.stderr)
        return 2
    lengths = corpus_lengths(args.corpus)
    if not lengths or max(lengths) > cfg.max_seq:
        print(f"throughput.py: error: the corpus needs 1..{cfg.max_seq} tokens per text "
              f"(max_seq), it has {max(lengths, default=0)}", file=sys.stderr)
        return 2
    n = len(lengths)
    packed = first_fit(lengths, cfg.max_seq, min(cfg.max_segments, cfg.max_seq))
    single = [[i] for i in range(n)]
    bus_bytes = cfg.bus_width // 8
    rows = sum(lengths)
    print(f"{args.preset}: {n} texts of {min(lengths)}..{max(lengths)} tokens ({rows} in all, "
          f"mean {rows / n:.1f}); packed into {len(packed)} runs of max_seq {cfg.max_seq} "
          f"(rows filled {rows / (len(packed) * cfg.max_seq):.1%}, up to "
          f"{max(len(r) for r in packed)} segments per run, max_segments {cfg.max_segments})")
    util = [perf.utilization(cfg, sum(lengths[i] for i in r), [lengths[i] for i in r])
            for r in packed]
    print(f"modeled PE utilization of a layer, packed runs: mean {sum(util) / len(util):.3f} "
          f"(min {min(util):.3f}); of a full packed run (8 x {cfg.max_seq // 8} rows): "
          f"{perf.utilization(cfg, cfg.max_seq, [cfg.max_seq // 8] * 8):.3f}")
    print(f"{'parameter stream':>18s} {'way':>9s} {'runs':>5s} {'cycles':>13s} "
          f"{'cycles/sentence':>15s} {'sentences/s':>11s} {'speedup':>7s}")
    result = {}
    for label, rate in ((f"{bus_bytes} B/cycle (full)", bus_bytes),
                        (f"{args.rate:g} B/cycle", args.rate)):
        per = {}
        for way, runs in (("unpacked", single), ("packed", packed)):
            cycles = model_cycles(cfg, lengths, runs, rate)
            per[way] = cycles / n
            speed = per["unpacked"] / per[way]
            print(f"{label:>18s} {way:>9s} {len(runs):5d} {cycles:13,d} {per[way]:15,.0f} "
                  f"{args.mhz * 1e6 / per[way]:11.1f} {speed:7.2f}")
        result[rate] = per
    if args.rtl > 0:
        rtl_check(cfg, lengths[:args.rtl], bus_bytes, args.rate,
                  unpacked=args.rtl_unpacked or None, parts=parts)
    slow = result[args.rate]
    print(f"throughput: cycles_per_sentence@{args.rate:g}Bpc packed={slow['packed']:.0f} "
          f"unpacked={slow['unpacked']:.0f} speedup={slow['unpacked'] / slow['packed']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
