#!/usr/bin/env python3
"""MiniLM through the simulated encoder core: bit-exactness, cycles, wall time, cycles/s.

Quantizes all-MiniLM-L6-v2 (built-in calibration set), runs sentences through the `minilm` core
in Verilator (`--simulator icarus` also works, slowly) with the parameter image streamed every
inference, and compares the int8 outputs with the integer reference. The speed is given for the
whole simulation (start-up and the load of the image included) and for the runs alone, as wall
time and as CPU time of the simulator process (independent of the machine's load).

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
from bertcore.core.image import (  # noqa: E402
    pack_activations, pack_parameter_image, unpack_activations,
)
from bertcore.core.perf import run_cycles  # noqa: E402
from bertcore.quant.model import quantize  # noqa: E402
from bertcore.rtlsim import CoreSimulator  # noqa: E402


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
    ids = [qm.encode_text(t) for t in args.text]
    xs = [qm.embed_int(i) for i in ids]
    sim = CoreSimulator(cfg, args.simulator)
    res = sim.run(pack_parameter_image(qm, cfg), [(pack_activations(x, cfg), len(x)) for x in xs],
                  progress=lambda m: print(f"[{time.time() - t1:7.1f} s] {m}", flush=True)).check()
    for t, i, x, run in zip(args.text, ids, xs, res.runs):
        y = unpack_activations(run["out"], len(x), cfg)
        same = not run["error"] and torch.equal(y, qm.forward_ids(i))
        print(f"{len(i):3d} tokens, {run['cycles']} core cycles (model {run_cycles(cfg, len(i))}),"
              f" bit-exact: {same}   {t!r}")
    n = res.total_cycles
    print(f"{args.simulator}: build {res.build_s:.1f} s (cached afterwards); whole simulation "
          f"{res.sim_s:.1f} s for {n} cycles = {n / res.sim_s:.0f} cycles/s (start-up and "
          f"the image load included); runs alone {res.run_s:.1f} s = "
          f"{n / res.run_s:.0f} cycles/s wall, {res.run_cpu_s:.1f} s CPU = "
          f"{n / res.run_cpu_s:.0f} cycles/s")


if __name__ == "__main__":
    main()
