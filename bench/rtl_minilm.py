#!/usr/bin/env python3
"""MiniLM through the simulated encoder core: bit-exactness, cycles, wall time, cycles/s.

Quantizes all-MiniLM-L6-v2 (built-in calibration set), runs sentences through the `minilm` core
in Verilator (`--simulator icarus` also works, slowly) with the parameter image streamed every
inference, and compares the int8 outputs with the integer reference.

    .venv/bin/python bench/rtl_minilm.py [--simulator verilator] [TEXT ...]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.checkpoint import load_checkpoint  # noqa: E402
from bertcore.cli import default_calibration_texts  # noqa: E402
from bertcore.config import preset  # noqa: E402
from bertcore.core.perf import run_cycles  # noqa: E402
from bertcore.embed import rtl_embeddings  # noqa: E402
from bertcore.quant.model import quantize  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"))
    ap.add_argument("text", nargs="*", default=["Hello world."])
    args = ap.parse_args()
    t0 = time.time()
    qm = quantize(load_checkpoint(), default_calibration_texts())
    print(f"quantized MiniLM in {time.time() - t0:.1f} s", flush=True)
    cfg = preset("minilm")
    t1 = time.time()
    emb, info = rtl_embeddings(qm, args.text, simulator=args.simulator, config=cfg,
                               progress=lambda m: print(f"[{time.time() - t1:7.1f} s] {m}",
                                                        flush=True))
    for t, y, cycles in zip(args.text, info["outputs"], info["cycles"]):
        ids = qm.encode_text(t)
        same = torch.equal(y, qm.forward_ids(ids))
        print(f"{len(ids):3d} tokens, {cycles} core cycles (model {run_cycles(cfg, len(ids))}),"
              f" bit-exact: {same}   {t!r}")
    sim_cycles = info["sim_cycles"]
    print(f"{args.simulator}: build {info['build_s']:.1f} s (cached afterwards), simulation "
          f"{info['sim_s']:.1f} s for {sim_cycles} cycles = {sim_cycles / info['sim_s']:.0f} "
          f"cycles/s (including simulator start-up)")


if __name__ == "__main__":
    main()
