"""Sentence embeddings through the float model, the integer reference, or the simulated RTL."""

import numpy as np
import torch

from .checkpoint import BertError, load_checkpoint
from .quant.floatref import mean_pool

__all__ = ["embed_texts", "float_embeddings"]


def float_embeddings(ckpt, texts):
    """Mean-pooled, L2-normalized embeddings of the transformers ``BertModel`` (float32)."""
    model = ckpt.float_model()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([ckpt.tokenizer.encode(t)])
            out.append(mean_pool(model(ids).last_hidden_state[0]).numpy())
    return np.stack(out).astype(np.float32)


def embed_texts(texts, *, backend, quantized=None, model=None, simulator="verilator"):
    """Embeddings ``[N, hidden]`` (float32, input order kept) of ``texts`` with ``backend``.

    ``backend="float"`` runs the float checkpoint ``model`` (or, with ``quantized``, the float
    model the artifact came from); ``"int"`` runs the integer reference of the artifact.
    """
    if not texts:
        raise BertError("no input texts")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise BertError("empty input text")
    if backend == "float":
        if model is None:
            from .quant.artifact import load_artifact
            model = load_artifact(quantized).source
        return float_embeddings(load_checkpoint(model), texts)
    if backend not in ("int", "rtl"):
        raise BertError(f"unknown backend {backend!r}")
    from .quant.artifact import load_artifact
    qm = load_artifact(quantized)
    if backend == "rtl":
        raise BertError("--backend rtl needs the encoder core, which this version does not "
                        "have yet (use --backend int, the bit-exact reference)")
    out = [qm.sentence_embedding(qm.encode_text(t)).numpy() for t in texts]
    return np.stack(out).astype(np.float32)
