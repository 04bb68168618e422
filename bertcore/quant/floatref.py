"""A plain float BERT encoder forward pass over checkpoint weights, with calibration taps.

It computes what transformers' ``BertModel`` computes (a test checks that), but exposes every
activation the integer model quantizes, so calibration sees exactly the tensors it scales.
"""

import math

import torch

__all__ = ["TAPS", "LAYER_TAPS", "float_forward", "mean_pool"]

#: Activations recorded per encoder layer, in the order the layer computes them.
LAYER_TAPS = ("x", "q", "k", "v", "ctx", "ln1_in", "ln1_out", "ffn1", "gelu", "ln2_in", "ln2_out")
#: Activations of the embedding stage.
TAPS = ("emb_sum", "emb_out")


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


_CAST = {}


def _weights_as(ckpt, dtype):
    """The checkpoint's weights in ``dtype``, converted once per checkpoint and dtype."""
    key = (id(ckpt.weights), dtype)
    hit = _CAST.get(key)
    if hit is None or hit[0] is not ckpt.weights:
        _CAST.clear()          # keep only the latest checkpoint's conversion alive
        hit = _CAST[key] = (ckpt.weights, {k: v.to(dtype) for k, v in ckpt.weights.items()})
    return hit[1]


def float_forward(ckpt, ids, tap=None, dtype=torch.float64):
    """Run one sequence of token ids through the float encoder; return ``[L, hidden]``.

    ``tap(name, layer, tensor)`` is called for every recorded activation (``layer`` is ``None``
    for the embedding stage).
    """
    w = _weights_as(ckpt, dtype)
    s = ckpt.shape
    eps = s.layer_norm_eps
    tap = tap or (lambda *a: None)
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = ids.shape[0]
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    tap("emb_sum", None, x)
    x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    tap("emb_out", None, x)
    hd = s.head_dim
    for i in range(s.layers):
        p = f"encoder.layer.{i}."

        def lin(name, t):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        tap("x", i, x)
        q = lin("attention.self.query", x)
        k = lin("attention.self.key", x)
        v = lin("attention.self.value", x)
        tap("q", i, q)
        tap("k", i, k)
        tap("v", i, v)
        qh = q.view(n, s.heads, hd).transpose(0, 1)
        kh = k.view(n, s.heads, hd).transpose(0, 1)
        vh = v.view(n, s.heads, hd).transpose(0, 1)
        att = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(hd), dim=-1)
        ctx = (att @ vh).transpose(0, 1).reshape(n, s.hidden)
        tap("ctx", i, ctx)
        h = lin("attention.output.dense", ctx) + x
        tap("ln1_in", i, h)
        a = _ln(h, w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"], eps)
        tap("ln1_out", i, a)
        f = lin("intermediate.dense", a)
        tap("ffn1", i, f)
        g = _gelu(f)
        tap("gelu", i, g)
        h = lin("output.dense", g) + a
        tap("ln2_in", i, h)
        x = _ln(h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        tap("ln2_out", i, x)
    return x


def mean_pool(hidden):
    """Mean over tokens, L2-normalized: the sentence-transformers embedding of one sequence."""
    v = hidden.to(torch.float64).mean(0)
    return v / v.norm().clamp_min(1e-12)
