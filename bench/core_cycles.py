#!/usr/bin/env python3
"""The cycle tables of docs/core.md, regenerated: measured in Verilator next to the model.

Prints, as Markdown:

1. ``tiny`` (2 layers, random weights of its shape): the core's ``cycles`` and
   ``layer_cycles`` outputs at L = 1, 9, 16, without stalls and with 20% random stalls on both
   activation streams, beside ``perf.run_cycles`` / ``perf.layer_cycles``; every output is
   checked bit-exact against the integer reference;
2. ``tiny`` with a throttled image (``+param_period=P``) beside ``perf.run_cycles``;
3. ``minilm``, modeled only (``perf.layer_cycles``, ``perf.utilization``, ``perf.breakdown``).

    .venv/bin/python bench/core_cycles.py            # ~2 minutes (one Verilator build of tiny)
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.config import preset  # noqa: E402
from bertcore.core import perf  # noqa: E402
from bertcore.rtlsim import check_core, random_model  # noqa: E402

SEQS = (1, 9, 16)


def _measure(cfg, model, seqs, **kwargs):
    ok, rows, res = check_core(cfg, model, list(seqs), **kwargs)
    if not ok:
        raise SystemExit("the simulated core differs from the integer reference")
    return res.runs


def _pct(model, rtl):
    return f"{(model - rtl) / rtl:+.1%}"


def tiny_table(cfg, model, simulator):
    plain = _measure(cfg, model, SEQS, simulator=simulator)
    stalled = _measure(cfg, model, SEQS, simulator=simulator, stall=0.2, seed=2)
    head = "| tiny, L | " + " | ".join(str(n) for n in SEQS) + " |"
    lines = [head, "|---" * (len(SEQS) + 1) + "|"]

    def row(name, values):
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("RTL `cycles` (Verilator)", [str(r["cycles"]) for r in plain])
    row("RTL `cycles`, 20% stalls on both activation streams",
        [str(r["cycles"]) for r in stalled])
    row("model `run_cycles`", [f"{perf.run_cycles(cfg, n)} ({_pct(perf.run_cycles(cfg, n), r['cycles'])})"
                               for n, r in zip(SEQS, plain)])
    row("RTL `layer_cycles` (last layer)", [str(r["layer_cycles"]) for r in plain])
    row("model `layer_cycles`",
        [f"{perf.layer_cycles(cfg, n)} ({_pct(perf.layer_cycles(cfg, n), r['layer_cycles'])})"
         for n, r in zip(SEQS, plain)])
    row("RTL `array_beats` (= `perf.array_beats`)",
        [f"{r['array_beats']} ({'=' if r['array_beats'] == perf.array_beats(cfg, n) else '!='})"
         for n, r in zip(SEQS, plain)])
    return "\n".join(lines)


def throttled_table(cfg, model, simulator):
    nb = cfg.bus_width // 8
    lines = ["| P (B/cycle) | " + " | ".join(f"L = {n}: RTL / model" for n in SEQS) + " |",
             "|---" * (len(SEQS) + 1) + "|"]
    for period in (1, 2, 4, 8):
        runs = _measure(cfg, model, SEQS, simulator=simulator, param_period=period)
        cells = []
        for n, r in zip(SEQS, runs):
            mod = perf.run_cycles(cfg, n, param_rate=nb / period)
            cells.append(f"{r['cycles']:,} / {mod:,} ({_pct(mod, r['cycles'])})")
        lines.append(f"| {period} ({nb / period:g}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def minilm_table():
    cfg = preset("minilm")
    lines = ["| L | cycles / layer | PE utilization | QKV | attention | O | LN x2 | FFN1 | FFN2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({16, 32, 64, 128, cfg.max_seq}):
        parts = perf.breakdown(cfg, n)
        total = sum(parts.values())
        shares = " | ".join(f"{parts[k] / total:.1%}" for k in parts)
        lines.append(f"| {n} | {perf.layer_cycles(cfg, n)} | {perf.utilization(cfg, n):.1%} | "
                     f"{shares} |")
    return "\n".join(lines), list(perf.breakdown(cfg, 16))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulator", default="verilator")
    args = ap.parse_args()
    t0 = time.time()
    cfg = preset("tiny")
    model = random_model(cfg)
    print(tiny_table(cfg, model, args.simulator), end="\n\n")
    print(throttled_table(cfg, model, args.simulator), end="\n\n")
    table, keys = minilm_table()
    print(table)
    print(f"\n(minilm breakdown columns: {', '.join(keys)}; {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
