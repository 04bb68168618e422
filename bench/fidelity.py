#!/usr/bin/env python3
"""Fidelity of the integer reference against the float model, side by side with transformers' I-BERT.

On MiniLM (or --model DIR), calibrate on the built-in calibration set (or --calibration FILE) and
evaluate on sentences that were not used for calibration (bench/eval_sentences.txt). Prints, for
bertcore's integer model and for transformers' IBertModel (quant_mode=True, calibrated on the same
texts, as shipped): the mean and minimum cosine between int and float sentence embeddings, the
token-level relative L2 error of the last hidden states, and the Spearman agreement of all pair
similarities. Targets: mean cosine >= 0.99, min >= 0.97, Spearman >= 0.99, better than I-BERT.

    .venv/bin/python bench/fidelity.py [--model DIR] [--calibration FILE] [--eval FILE]
                                       [--act-granularity channel|tensor] [--no-ibert]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bertcore.checkpoint import load_checkpoint  # noqa: E402
from bertcore.cli import default_calibration_texts  # noqa: E402
from bertcore.quant.floatref import mean_pool  # noqa: E402
from bertcore.quant.model import QuantOptions, quantize  # noqa: E402


def spearman(a, b):
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def figures(float_hidden, other_hidden):
    """Mean/min cosine of pooled embeddings, mean token relative L2, Spearman of pair sims."""
    fe = np.stack([mean_pool(h).numpy() for h in float_hidden])
    oe = np.stack([mean_pool(h).numpy() for h in other_hidden])
    cos = (fe * oe).sum(1)
    rel = [float((f.double() - o.double()).norm(dim=-1).div(f.double().norm(dim=-1)).mean())
           for f, o in zip(float_hidden, other_hidden)]
    iu = np.triu_indices(len(fe), 1)
    sp = spearman((fe @ fe.T)[iu], (oe @ oe.T)[iu])
    return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
            "token_rel_l2": float(np.mean(rel)), "spearman": sp}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="BERT checkpoint directory (default: all-MiniLM-L6-v2)")
    ap.add_argument("--calibration", help="calibration texts (default: built-in set)")
    ap.add_argument("--eval", default=str(HERE / "eval_sentences.txt"))
    ap.add_argument("--act-granularity", default="channel", choices=("channel", "tensor"))
    ap.add_argument("--no-ibert", action="store_true", help="skip transformers' I-BERT")
    args = ap.parse_args()

    ckpt = load_checkpoint(args.model)
    cal = (Path(args.calibration).read_text().split("\n") if args.calibration
           else default_calibration_texts())
    cal = [t for t in cal if t.strip()]
    ev = [t for t in Path(args.eval).read_text().split("\n") if t.strip()]
    overlap = set(cal) & set(ev)
    if overlap:
        raise SystemExit(f"evaluation sentences overlap the calibration set: {sorted(overlap)}")

    float_model = ckpt.float_model()
    with torch.no_grad():
        fh = [float_model(torch.tensor([ckpt.tokenizer.encode(t)])).last_hidden_state[0]
              for t in ev]

    t0 = time.time()
    qm = quantize(ckpt, cal, QuantOptions(act_granularity=args.act_granularity))
    t1 = time.time()
    ih = [qm.dequantize(qm.forward_ids(qm.encode_text(t))) for t in ev]
    t2 = time.time()
    rows = {"bertcore int": figures(fh, ih)}
    print(f"model {ckpt.path}\ncalibration {len(cal)} texts, evaluation {len(ev)} unseen texts; "
          f"quantize {t1 - t0:.1f} s, integer forward {t2 - t1:.1f} s", flush=True)

    if not args.no_ibert:
        from ibert_baseline import build_ibert, calibrate, last_hidden_states, load_tokenizer
        tok = load_tokenizer(ckpt.path)
        ib, _ = build_ibert(ckpt.path, quant_mode=True, dtype=torch.float32)
        calibrate(ib, tok, cal)
        rows["transformers I-BERT"] = figures(fh, last_hidden_states(ib, tok, ev))

    cols = ("mean_cos", "min_cos", "token_rel_l2", "spearman")
    print(f"{'':22s}" + "".join(f"{c:>14s}" for c in cols))
    for name, f in rows.items():
        print(f"{name:22s}" + "".join(f"{f[c]:14.4f}" for c in cols))
    ours = rows["bertcore int"]
    checks = {"mean_cos >= 0.99": ours["mean_cos"] >= 0.99,
              "min_cos >= 0.97": ours["min_cos"] >= 0.97,
              "spearman >= 0.99": ours["spearman"] >= 0.99}
    if "transformers I-BERT" in rows:
        ib = rows["transformers I-BERT"]
        checks["better than I-BERT on every figure"] = (
            ours["mean_cos"] > ib["mean_cos"] and ours["min_cos"] > ib["min_cos"]
            and ours["spearman"] > ib["spearman"] and ours["token_rel_l2"] < ib["token_rel_l2"])
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
