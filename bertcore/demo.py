"""`make demo`: the main job on the default model (all-MiniLM-L6-v2).

Quantizes MiniLM on the built-in calibration set with `bertcore quantize`, embeds a few sentences
with `bertcore embed` through the float and the integer backends, and prints how closely they agree.
"""

import sys
import time
from pathlib import Path

import numpy as np

from .cli import main as cli

SENTENCES = [
    "A man is riding a horse along the beach.",
    "Someone rides a horse on the sand by the sea.",
    "The central bank kept interest rates unchanged.",
    "Solar panels turn sunlight into electricity.",
    "Where is the nearest train station?",
]


def run(outdir="build/demo"):
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "minilm.safetensors"
    t0 = time.time()
    if cli(["quantize", "-o", str(artifact)]) != 0:
        return 2
    t1 = time.time()
    for backend in ("float", "int"):
        if cli(["embed", "--quantized", str(artifact), "--backend", backend, *SENTENCES,
                "-o", str(out / f"{backend}.npy")]) != 0:
            return 2
    t2 = time.time()
    f, i = np.load(out / "float.npy"), np.load(out / "int.npy")
    cos = (f * i).sum(1)
    print(f"\nquantize {t1 - t0:.1f} s, embed (float + int) {t2 - t1:.1f} s")
    print(f"{'cosine(int, float)':>20s}  sentence")
    for c, s in zip(cos, SENTENCES):
        print(f"{c:20.4f}  {s}")
    print(f"{'mean':>20s}  {cos.mean():.4f}   (min {cos.min():.4f})")
    sf, si = f @ f.T, i @ i.T
    print(f"pair similarity 0-1: float {sf[0, 1]:.3f}, int {si[0, 1]:.3f};  "
          f"0-2: float {sf[0, 2]:.3f}, int {si[0, 2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
