"""The integer-only BERT encoder (the oracle the hardware is held to) and its quantization.

:func:`quantize` calibrates a float checkpoint on a list of texts and derives every integer the
hardware receives (int8 weights, int32 biases, per-channel requantization multipliers and shifts,
softmax/GELU constants, LayerNorm output multipliers with folded gamma and beta). :class:`IntBert`
runs the encoder on those integers only; floats appear only when the host dequantizes the final
hidden states for pooling. The dataflow of one layer (all ``int64`` tensors)::

    q,k,v  = requant8(x @ Wqkv.T + bqkv)                     per-channel (m, e)
    s      = q_h @ k_h.T                                      scores, scale Sq*Sk/sqrt(d)
    p      = int_softmax(s)  in 0..2**B-1                     B = prob_bits (16), scale 2**-B
    ctx    = requant8(p @ v_h)
    r1     = sat22(requant(ctx @ Wo.T + bo) + requant(x))     22-bit residual
    a      = requant8(layernorm_int(r1), bias=beta)           gamma, beta folded, per channel
    g_in   = requant16(a @ W1.T + b1)
    h      = requantG(int_gelu(g_in))                         G = gelu_bits (16), per channel
    r2     = sat22(requant(h @ W2.T + b2) + requant(a))
    x'     = requant8(layernorm_int(r2), bias=beta)

Activations entering a GEMM may carry a per-channel scale: it is folded into the weights of that
GEMM (``W'[j, c] = W[j, c] * s[c]``) before their per-output-channel quantization, so the array
still computes a plain int8 GEMM. See ``docs/quantization.md`` for every choice and its effect.
"""

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import kernels as K
from .floatref import float_forward, mean_pool
from ..checkpoint import BertError, BertShape

__all__ = ["QuantOptions", "Calibration", "calibrate", "quantize", "IntBert", "check_segments",
           "segment_mask"]

INT8 = 8
#: Fewest calibration texts :func:`calibrate` takes (one text says little about the ranges).
MIN_CALIBRATION_TEXTS = 2
GELU_IN_BITS = K.GELU_IN_BITS
#: Finest i-GELU input scale: keeps |b| = floor(1.769 * 1.4142 / S) within GELU_IN_BITS + 1 bits.
GELU_MIN_SCALE = -K.GELU_COEFF[1] * K.GELU_K / 2 ** GELU_IN_BITS * (1 + 1e-9)


@dataclass(frozen=True)
class QuantOptions:
    """Quantization choices (all stay integer-only at run time).

    Parameters
    ----------
    act_granularity : "channel" or "tensor"
        Scale granularity of the int8 activations that feed a GEMM and come out of a per-channel
        requantizer (LayerNorm and GELU outputs). Per-channel scales are folded into the next
        GEMM's weights.
    percentile : float
        Calibration percentile of |x| for per-tensor int8 activations (100 = max).
    residual_margin : float
        Headroom factor of the 22-bit residual path over the calibrated maximum.
    act_margin : float
        Headroom factor of the per-channel int8 outputs (LayerNorm, GELU) over the calibrated
        per-channel range: a few calibration texts see only part of each channel's range.
    act_scale_ratio : float
        Largest ratio between the widest and the finest scale of one per-channel activation.
        The scales are folded into the next GEMM's weights before their per-row int8
        quantization, so a fine channel scale makes its weights large and coarsens the whole
        row's grid (docs/quantization.md); a ratio caps that at the cost of the narrow
        channels' activation resolution.
    gelu_floor : float
        The calibrated range of each GELU output channel is taken as at least ``gelu_floor``
        times that channel's calibrated ``|x|`` range at the GELU input (before
        ``act_margin``). A channel that stays negative on the calibration texts (GELU output
        near 0) can fire on a token they lack; its input range says how far. 0: off.
    pack_tokens : int
        Length-aware calibration: besides each calibration text alone, the texts joined end to
        end into sequences of up to ``pack_tokens`` tokens (0: off), so that the activation
        ranges also cover inputs longer than the calibration texts.
    pack_rounds : int
        How many orders the texts are joined in for ``pack_tokens`` (the first is the given
        order, the others fixed pseudo-random ones): more long contexts from the same texts.
    prob_scale : "fixed" or "row"
        Scale of the uint8 attention probabilities: ``"fixed"`` is 2**-8 for every row;
        ``"row"`` is a power of two per row (:func:`~bertcore.quant.kernels.int_softmax_row_int`)
        folded into the context requantization shift. Changes the arithmetic the RTL follows.
    prob_bits : int
        Width of the unsigned attention probabilities (8..16, default 16: a row spread over
        hundreds of keys keeps its resolution; docs/quantization.md). Changes the arithmetic:
        a core runs the model only if it computes the same width (``CoreConfig.prob_bits``).
    gelu_bits : int
        Width of the signed GELU output, the FFN2 GEMM's activation operand (8..16, default
        16: the int8 GELU output was the largest remaining error, docs/quantization.md).
        Changes the arithmetic: a core runs the model only if it computes the same width
        (``CoreConfig.gelu_bits``).
    gelu_granularity : "auto", "channel" or "tensor"
        Scale granularity of the GELU output (FFN2's activation operand). Per-channel scales
        are folded into FFN2's weights before their per-row int8 quantization, so a few
        channels with a wide GELU range (MiniLM has them) take the weights' resolution from all
        the others: on short texts that weight error was the largest one left
        (docs/quantization.md). ``"tensor"`` (one scale, the widest channel's) keeps the
        weights' own grid and costs the activations nothing at 16 bits. ``"auto"``:
        ``"tensor"`` from ``gelu_bits`` 12 up, ``act_granularity`` below.
    gelu_zero_point : bool
        Asymmetric GELU output: GELU's values lie in [-0.17, max], so each channel's range
        ``[-GELU_OUT_MIN, hi]`` is mapped onto the whole signed range by a per-channel offset
        ``z`` (added by the GELU output requantizer as a pre-shift bias ``z * 2**e``) that FFN2
        takes out of its bias (``b - sum_c W[j, c] * z[c]``, exact). One bit finer than the
        symmetric scale. Changes the arithmetic the RTL follows.
    """
    act_granularity: str = "channel"
    percentile: float = 100.0
    residual_margin: float = 2.0
    act_margin: float = 2.0
    act_scale_ratio: float = 1000.0
    gelu_floor: float = 0.35
    pack_tokens: int = 256
    pack_rounds: int = 4
    prob_scale: str = "fixed"
    prob_bits: int = 16
    gelu_bits: int = 16
    gelu_granularity: str = "auto"
    gelu_zero_point: bool = False

    def __post_init__(self):
        if self.act_granularity not in ("channel", "tensor"):
            raise ValueError(f"act_granularity must be 'channel' or 'tensor', "
                             f"not {self.act_granularity!r}")
        if not 50.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must lie in [50, 100], not {self.percentile!r}")
        if not self.residual_margin >= 1.0:
            raise ValueError(f"residual_margin must be >= 1, not {self.residual_margin!r}")
        if not self.act_margin >= 1.0:
            raise ValueError(f"act_margin must be >= 1, not {self.act_margin!r}")
        if not self.act_scale_ratio >= 1.0:
            raise ValueError(f"act_scale_ratio must be >= 1, not {self.act_scale_ratio!r}")
        if not self.gelu_floor >= 0.0:
            raise ValueError(f"gelu_floor must be >= 0, not {self.gelu_floor!r}")
        if self.gelu_granularity not in ("auto", "channel", "tensor"):
            raise ValueError(f"gelu_granularity must be 'auto', 'channel' or 'tensor', "
                             f"not {self.gelu_granularity!r}")
        if self.pack_tokens < 0:
            raise ValueError(f"pack_tokens must be >= 0, not {self.pack_tokens!r}")
        if self.pack_rounds < 1:
            raise ValueError(f"pack_rounds must be >= 1, not {self.pack_rounds!r}")
        if self.prob_scale not in ("fixed", "row"):
            raise ValueError(f"prob_scale must be 'fixed' or 'row', not {self.prob_scale!r}")
        if not K.PROB_BITS_MIN <= self.prob_bits <= K.PROB_BITS_MAX:
            raise ValueError(f"prob_bits must lie in {K.PROB_BITS_MIN}..{K.PROB_BITS_MAX}, "
                             f"not {self.prob_bits!r}")
        if not K.GELU_BITS_MIN <= self.gelu_bits <= K.GELU_BITS_MAX:
            raise ValueError(f"gelu_bits must lie in {K.GELU_BITS_MIN}..{K.GELU_BITS_MAX}, "
                             f"not {self.gelu_bits!r}")

    #: Narrowest ``gelu_bits`` at which ``gelu_granularity="auto"`` takes one scale per tensor.
    GELU_TENSOR_MIN_BITS = 12

    def gelu_scale_granularity(self):
        """``"channel"`` or ``"tensor"``: the GELU output's scale granularity, ``"auto"``
        resolved."""
        if self.gelu_granularity != "auto":
            return self.gelu_granularity
        return "tensor" if self.gelu_bits >= self.GELU_TENSOR_MIN_BITS else self.act_granularity


class Calibration:
    """Per-tap statistics of the float activations over the calibration texts."""

    def __init__(self, keep_samples=True):
        self.keep_samples = keep_samples    # the percentiles need every sample; the maxima do not
        self.chan_max = {}
        self.samples = {}
        self.texts = 0
        self.tokens = 0

    def tap(self, name, layer, x):
        key = name if layer is None else f"{layer}.{name}"
        a = x.detach().abs().to(torch.float32).reshape(-1, x.shape[-1])
        cm = a.amax(0)
        self.chan_max[key] = torch.maximum(self.chan_max[key], cm) if key in self.chan_max else cm
        if self.keep_samples:
            self.samples.setdefault(key, []).append(a)

    def max(self, key):
        return float(self.chan_max[key].max())

    def percentile(self, key, pct):
        """The ``pct`` percentile of |x| over the whole tensor."""
        if pct >= 100.0:
            return self.max(key)
        a = torch.cat(self.samples[key]).reshape(-1)
        k = max(1, min(a.numel(), int(round(a.numel() * pct / 100.0))))
        return float(a.kthvalue(k).values)

    def channel_percentile(self, key, pct):
        """The ``pct`` percentile of |x| per channel (last axis)."""
        if pct >= 100.0:
            return self.chan_max[key]
        a = torch.cat(self.samples[key])
        k = max(1, min(a.shape[0], int(round(a.shape[0] * pct / 100.0))))
        return a.kthvalue(k, dim=0).values


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: per-sentence matrices are small, and a second OpenMP thread
    only spins (6x slower calibration measured on this 2-core machine under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _packed(seqs, pack_tokens, rounds=1):
    """The token sequences ``seqs`` (each with [CLS] ... [SEP]) joined end to end into sequences
    of at most ``pack_tokens`` tokens: one [CLS], the texts' word pieces, one [SEP]. Round 0 joins
    them in the given order, round ``k > 0`` in a fixed pseudo-random order (seed ``k``). Only
    packs longer than the longest single sequence are kept (the others add nothing)."""
    cls, sep = seqs[0][0], seqs[0][-1]
    longest = max(len(s) for s in seqs)
    packs = []
    for k in range(rounds):
        order = (range(len(seqs)) if k == 0 else
                 torch.randperm(len(seqs), generator=torch.Generator().manual_seed(k)).tolist())
        cur = []
        for i in order:
            body = seqs[i][1:-1]
            if cur and len(cur) + len(body) + 2 > pack_tokens:
                packs.append([cls] + cur + [sep])
                cur = []
            cur = (cur + body)[:pack_tokens - 2]
        if cur:
            packs.append([cls] + cur + [sep])
    return [p for p in packs if len(p) > longest]


def calibrate(ckpt, texts, pack_tokens=0, pack_rounds=1, keep_samples=True):
    """Run the float encoder over ``texts`` and collect activation statistics.

    With ``pack_tokens``, the texts also run joined end to end into sequences of up to that many
    tokens (length-aware calibration, see :class:`QuantOptions`).
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BertError("the calibration set is empty")
    if len(texts) < MIN_CALIBRATION_TEXTS:
        raise BertError(f"the calibration set has {len(texts)} text; at least "
                        f"{MIN_CALIBRATION_TEXTS} are needed (a few dozen varied texts is better)")
    cal = Calibration(keep_samples)
    enc = [ckpt.tokenizer.encode_checked(t) for t in texts]
    if all(truncated for _, truncated in enc):
        raise BertError(f"every calibration text is longer than the model's limit of "
                        f"{ckpt.tokenizer.max_length} tokens; calibrate on texts that fit")
    seqs = [ids for ids, _ in enc]
    if pack_tokens:
        seqs += _packed(seqs, min(pack_tokens, ckpt.tokenizer.max_length), pack_rounds)
    cal.texts = len(texts)
    with _one_thread():
        for ids in seqs:
            float_forward(ckpt, ids, tap=cal.tap)
            cal.tokens += len(ids)
    return cal


# -- Quantization helpers ------------------------------------------------------------------------

def _qmax(bits):
    return (1 << (bits - 1)) - 1


def _quant_linear(w, b, s_in):
    """Fold the input scales into ``w`` and quantize it per output channel (symmetric int8).

    Returns ``(w_int8, b_int32, s_acc)``: the accumulator of ``x_int @ w_int.T + b_int`` has the
    per-output-channel scale ``s_acc``.
    """
    w = w.to(torch.float64) * s_in.to(torch.float64)[None, :]
    s_acc = w.abs().amax(1).clamp_min(1e-30) / _qmax(INT8)
    w_int = torch.clamp(torch.round(w / s_acc[:, None]), -_qmax(INT8), _qmax(INT8))
    lo, hi = K.int_range(32)
    b_int = torch.round(b.to(torch.float64) / s_acc)
    if bool((b_int < lo).any()) or bool((b_int > hi).any()):
        raise BertError("a GEMM bias does not fit 32 bits at its accumulator scale (an input "
                        "scale far too fine for the weights)")
    return w_int.to(torch.int8), b_int.to(torch.int32), s_acc


class _Scales:
    """Activation scales from calibration statistics under the chosen options."""

    def __init__(self, cal, opts, hidden):
        self.cal, self.opts, self.hidden = cal, opts, hidden

    def tensor(self, key, bits=INT8, pct=None):
        pct = self.opts.percentile if pct is None else pct
        return max(self.cal.percentile(key, pct), 1e-8) / _qmax(bits)

    def int8_out(self, key, floor=None, bits=INT8):
        """Scale vector of an int8 (``bits``-bit) activation produced by a per-channel
        requantizer.

        ``floor`` (a per-channel range) bounds the calibrated range from below (per-channel
        scales only).
        """
        cm = self.cal.channel_percentile(key, self.opts.percentile).to(torch.float64)
        if floor is not None:
            cm = torch.maximum(cm, floor.to(torch.float64))
        n = cm.numel()
        if self.opts.act_granularity == "tensor":
            return torch.full((n,), self.tensor(key, bits=bits), dtype=torch.float64)
        # no channel's scale finer than 1/act_scale_ratio of the widest one's: the scales are
        # folded into the next GEMM's weights, whose rows are quantized at their largest entry
        cm = cm * self.opts.act_margin
        return cm.clamp_min(float(cm.max()) / self.opts.act_scale_ratio).clamp_min(1e-8) \
            / _qmax(bits)

    def residual(self, key, s_in):
        """Scale of a 22-bit residual sum whose int8 term has the scale vector ``s_in``.

        The headroom is ``residual_margin`` over the calibrated maximum; the scale is never finer
        than ``max(s_in) / 2**(REQ_M_BITS - 3)``, so the int8 term's upscaling ratio stays
        representable by a requantization multiplier (``ratio < 2**(REQ_M_BITS - 2)``).
        """
        s = self.opts.residual_margin * max(self.cal.max(key), 1e-8) / _qmax(K.RESIDUAL_BITS)
        return max(s, float(s_in.max()) / 2 ** (K.REQ_M_BITS - 3))


def _ln_out(gamma, beta, s_out):
    """Requantization ``(m, e, bias)`` of ``layernorm_int`` to int8 with gamma/beta folded in."""
    n = gamma.numel()
    s_norm = math.sqrt(n) / 2 ** 30
    m, e = K.requant_params(gamma.to(torch.float64) * s_norm / s_out)
    bias = torch.round(beta.to(torch.float64) / s_out * torch.pow(2.0, e.to(torch.float64)))
    return m, e, bias.to(torch.int64)


#: Most negative GELU output (exact GELU: -0.16997 at x = -0.75; I-BERT's i-GELU: -0.1675), with a
#: little headroom: the low end of every GELU output channel with ``gelu_zero_point``.
GELU_OUT_MIN = 0.171


def _zero_point(s_sym, bits):
    """Asymmetric form of a GELU output whose symmetric scales are ``s_sym`` (per channel).

    The channel range ``[-GELU_OUT_MIN, hi]`` (``hi = s_sym * qmax``) spans all ``2**bits``
    codes: ``s = (hi + GELU_OUT_MIN) / (2**bits - 1)``, offset ``z = -2**(bits-1) +
    ceil(GELU_OUT_MIN / s)``, so a real value ``g`` is the integer ``round(g / s) + z``.
    Returns ``(s, z)``.
    """
    hi = s_sym * _qmax(bits)
    s = (hi + GELU_OUT_MIN) / ((1 << bits) - 1)
    z = torch.ceil(GELU_OUT_MIN / s).to(torch.int64) - (1 << (bits - 1))
    return s, torch.clamp(z, max=_qmax(bits))


def _shifted(z, e, what):
    """The pre-shift bias ``z * 2**e`` of a requantizer that adds ``z`` after its shift."""
    bias = z.to(torch.int64) << e.to(torch.int64)
    if bool((bias.abs() >= 1 << 62).any()):
        raise BertError(f"{what} does not fit 62 bits")
    return bias


def _fold_offset(b_int, w_int, z, what):
    """``b - sum_c w[j, c] * z[c]``: an input offset ``z`` folded into a GEMM's int32 bias."""
    b = b_int.to(torch.int64) - w_int.to(torch.int64) @ z.to(torch.int64)
    lo, hi = K.int_range(32)
    if bool((b < lo).any()) or bool((b > hi).any()):
        raise BertError(f"{what} does not fit 32 bits")
    return b.to(torch.int32)


def quantize(ckpt, texts, opts=QuantOptions()):
    """Quantize a float checkpoint into an :class:`IntBert` by calibration on ``texts``.

    A model whose ranges the integer kernels cannot represent (a requantization ratio past
    the multiplier's range, from weights or activations far outside a trained BERT's) raises
    :class:`BertError` naming it."""
    try:
        return _quantize(ckpt, texts, opts)
    except ValueError as exc:
        raise BertError(f"{ckpt.path}: cannot quantize this model: {exc}") from None


def _quantize(ckpt, texts, opts):
    cal = calibrate(ckpt, texts, opts.pack_tokens, opts.pack_rounds,
                    keep_samples=opts.percentile < 100.0)
    s = ckpt.shape
    w = ckpt.weights
    sc = _Scales(cal, opts, s.hidden)
    t = {}
    consts = {"layers": []}

    # Embeddings (host side): int16 tables at one common scale, so the sum needs no rescaling.
    tables = [w["embeddings.word_embeddings.weight"], w["embeddings.position_embeddings.weight"],
              w["embeddings.token_type_embeddings.weight"]]
    s_emb = max(float(tb.abs().max()) for tb in tables) / _qmax(16)
    for name, tb in zip(("word", "position", "type"), tables):
        t[f"emb.{name}"] = torch.round(tb.to(torch.float64) / s_emb).to(torch.int16)
    s_x = sc.int8_out("emb_out")
    m, e, bias = _ln_out(w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], s_x)
    t["emb.ln.m"], t["emb.ln.e"], t["emb.ln.bias"] = m, e, bias
    t["emb.out_scale"] = s_x.clone()
    consts["emb_scale"] = s_emb

    hd = s.head_dim
    for i in range(s.layers):
        p = f"encoder.layer.{i}."
        L = f"layer.{i}."
        lc = {}
        # Q, K, V: int8 per-tensor outputs (their channels meet in dot products)
        out_s = {nm: sc.tensor(f"{i}.{nm}") for nm in ("q", "k", "v")}
        # scores: scale Sq*Sk/sqrt(d), not finer than the softmax hardware takes (coarsen Q and K
        # equally when a model's Q/K ranges are tiny)
        s_scores = out_s["q"] * out_s["k"] / math.sqrt(hd)
        if s_scores < K.SOFTMAX_MIN_SCALE:
            f = math.sqrt(K.SOFTMAX_MIN_SCALE / s_scores) * (1 + 1e-9)
            out_s["q"] *= f
            out_s["k"] *= f
            s_scores = out_s["q"] * out_s["k"] / math.sqrt(hd)
        for nm, hf in (("q", "query"), ("k", "key"), ("v", "value")):
            wi, bi, s_acc = _quant_linear(w[p + f"attention.self.{hf}.weight"],
                                          w[p + f"attention.self.{hf}.bias"], s_x)
            t[L + nm + ".w"], t[L + nm + ".b"] = wi, bi
            t[L + nm + ".m"], t[L + nm + ".e"] = K.requant_params(s_acc / out_s[nm])
        lc["softmax"] = K.softmax_constants(s_scores)
        # context: P (scale 2**-prob_bits, times 2**-r per row with prob_scale "row") @ V
        # (scale Sv) -> int8 per tensor
        s_ctx = sc.tensor(f"{i}.ctx")
        m, e = K.requant_params(out_s["v"] * 2.0 ** -opts.prob_bits / s_ctx)
        lc["ctx_m"], lc["ctx_e"] = int(m), int(e)
        # attention output dense + residual -> 22 bits -> LayerNorm -> int8
        s_r1 = sc.residual(f"{i}.ln1_in", s_x)
        wi, bi, s_acc = _quant_linear(w[p + "attention.output.dense.weight"],
                                      w[p + "attention.output.dense.bias"],
                                      torch.full((s.hidden,), s_ctx, dtype=torch.float64))
        t[L + "o.w"], t[L + "o.b"] = wi, bi
        t[L + "o.m"], t[L + "o.e"] = K.requant_params(s_acc / s_r1)
        t[L + "res1.m"], t[L + "res1.e"] = K.requant_params(s_x / s_r1)
        s_a = sc.int8_out(f"{i}.ln1_out")
        t[L + "ln1.out_scale"] = s_a.clone()
        t[L + "ln1.m"], t[L + "ln1.e"], t[L + "ln1.bias"] = _ln_out(
            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
            s_a)
        # FFN1 -> int16 -> i-GELU -> int8
        # not finer than GELU_MIN_SCALE, so |b| = 1.769*1.4142/S fits GELU_IN_BITS + 1 bits
        s_g = max(sc.tensor(f"{i}.ffn1", bits=GELU_IN_BITS, pct=100.0), GELU_MIN_SCALE)
        wi, bi, s_acc = _quant_linear(w[p + "intermediate.dense.weight"],
                                      w[p + "intermediate.dense.bias"], s_a)
        t[L + "ffn1.w"], t[L + "ffn1.b"] = wi, bi
        t[L + "ffn1.m"], t[L + "ffn1.e"] = K.requant_params(s_acc / s_g)
        g = K.gelu_constants(s_g)
        lc["gelu"] = {"b": int(g["b"]), "c": int(g["c"]), "q1": int(g["q1"])}
        s_h = sc.int8_out(f"{i}.gelu", floor=opts.gelu_floor * cal.chan_max[f"{i}.ffn1"],
                          bits=opts.gelu_bits)
        if opts.gelu_scale_granularity() == "tensor":
            s_h = torch.full_like(s_h, float(s_h.max()))
        z = None
        if opts.gelu_zero_point:
            s_h, z = _zero_point(s_h, opts.gelu_bits)
        t[L + "gelu.out_scale"] = s_h.clone()
        t[L + "gelu.m"], t[L + "gelu.e"] = K.requant_params(float(g["scale_out"]) / s_h)
        if z is not None:
            t[L + "gelu.z"] = z
            t[L + "gelu.bias"] = _shifted(z, t[L + "gelu.e"], f"layer {i} GELU offset")
        # FFN2 + residual -> 22 bits -> LayerNorm -> int8 (the next layer's input)
        s_r2 = sc.residual(f"{i}.ln2_in", s_a)
        wi, bi, s_acc = _quant_linear(w[p + "output.dense.weight"], w[p + "output.dense.bias"],
                                      s_h)
        if z is not None:   # sum_c W (h - z) + b = sum_c W h + (b - sum_c W z)
            bi = _fold_offset(bi, wi, z, f"layer {i} FFN2 bias")
        t[L + "ffn2.w"], t[L + "ffn2.b"] = wi, bi
        t[L + "ffn2.m"], t[L + "ffn2.e"] = K.requant_params(s_acc / s_r2)
        t[L + "res2.m"], t[L + "res2.e"] = K.requant_params(s_a / s_r2)
        s_out = sc.int8_out(f"{i}.ln2_out")
        t[L + "ln2.out_scale"] = s_out.clone()
        t[L + "ln2.m"], t[L + "ln2.e"], t[L + "ln2.bias"] = _ln_out(
            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], s_out)
        lc["scales"] = {"q": out_s["q"], "k": out_s["k"], "v": out_s["v"], "scores": s_scores,
                        "ctx": s_ctx, "res1": s_r1, "gelu_in": s_g, "res2": s_r2}
        consts["layers"].append(lc)
        s_x = s_out
    t["out_scale"] = s_x.clone()
    consts["calibration"] = {"texts": cal.texts, "tokens": cal.tokens}
    # the model directory as an absolute path: the float backend finds it from any directory
    return IntBert(s, t, consts, opts, source=str(Path(ckpt.path).absolute()),
                   tokenizer=ckpt.tokenizer)


# -- Packed sequences ----------------------------------------------------------------------------

def check_segments(segments, rows):
    """The segment lengths of a packed run of ``rows`` rows as a list of ints.

    ``segments`` lists the lengths of the sequences packed one after the other into the rows;
    ``None`` means one segment of all rows. Raises ``ValueError`` unless every length is a
    positive integer and they add up to ``rows``.
    """
    if segments is None:
        return [rows]
    lengths = [int(n) for n in segments]
    if not lengths:
        raise ValueError("a packed run needs at least one segment")
    if any(n < 1 for n in lengths):
        raise ValueError(f"segment lengths must be positive, not {lengths}")
    if sum(lengths) != rows:
        raise ValueError(f"segment lengths {lengths} add up to {sum(lengths)}, not to the "
                         f"{rows} rows of the run")
    return lengths


def segment_mask(segments, rows):
    """Bool ``[rows, rows]``: ``mask[q, k]`` is true when query ``q`` and key ``k`` lie in the
    same segment (the keys a query of a packed run attends to)."""
    lengths = check_segments(segments, rows)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return seg[:, None] == seg[None, :]


# -- The integer encoder -------------------------------------------------------------------------

class IntBert:
    """An integer-only BERT encoder: integer tensors plus scalar constants.

    Parameters
    ----------
    shape : BertShape
    tensors : dict of str to torch.Tensor
        Integer parameters as the hardware receives them (and float scales used only by the host
        to dequantize: ``emb.out_scale``, ``out_scale``).
    consts : dict
        Per-layer scalar constants (softmax, GELU, context requantization) and float scales kept
        for reference.
    """

    def __init__(self, shape, tensors, consts, opts, source, tokenizer=None):
        self.shape = shape
        self.tokenizer = tokenizer
        self.t = tensors
        self.consts = consts
        self.opts = opts
        self.source = source
        #: Stages of :attr:`WIDEN_STAGES` carried 8 bits wider (error isolation only; empty in
        #: every model the hardware runs).
        self.widen = set()

    # host side ----------------------------------------------------------------------------------
    def embed_int(self, ids):
        """Token ids → the int8 input of layer 0 (integer lookup, sum, integer LayerNorm)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        n = ids.shape[0]
        if n < 1:
            raise BertError("empty token sequence")
        if n > self.shape.max_position:
            raise BertError(f"sequence of {n} tokens exceeds {self.shape.max_position} positions")
        x = (self.t["emb.word"][ids].to(torch.int64) + self.t["emb.position"][:n].to(torch.int64)
             + self.t["emb.type"][0].to(torch.int64))
        xw = self._WIDE if "hidden" in self.widen else 0
        return K.requantize(K.layernorm_int(x), self.t["emb.ln.m"], self.t["emb.ln.e"] - xw,
                            INT8 + xw, bias=self.t["emb.ln.bias"])

    def dequantize(self, x_int):
        """Final int8 hidden states → float (host side, for pooling)."""
        xw = self._WIDE if "hidden" in self.widen else 0
        return x_int.to(torch.float64) * self.t["out_scale"] / 2 ** xw

    # encoder ------------------------------------------------------------------------------------
    #: Stages that :attr:`widen` can carry 8 bits wider (error isolation, ``bench/fidelity.py
    #: --isolate``): the layer input (embedding and LayerNorm-2 outputs), Q, K, V, the attention
    #: probabilities, the context, the LayerNorm-1 output and the GELU output.
    WIDEN_STAGES = ("hidden", "q", "k", "v", "probs", "ctx", "ln1_out", "gelu")
    _WIDE = 8

    def layer(self, i, x, trace=None, segments=None):
        """One encoder layer on int8 hidden states ``x`` ``[L, hidden]`` (int64 tensor).

        ``trace(name, tensor)``, when given, receives every intermediate integer tensor.
        ``segments`` (lengths adding up to ``L``) packs several sequences into the rows: each
        query attends only to the keys of its own segment (the other keys get probability 0
        and take no part in the softmax's maximum and sum); every other step is row-wise.
        """
        trace = trace or (lambda name, value: None)
        t, lc, s = self.t, self.consts["layers"][i], self.shape
        L = f"layer.{i}."
        n, hd = x.shape[0], s.head_dim
        # Diagnosis only (empty by default): a stage in self.widen keeps 8 more bits, its scale
        # 2**-8 of the stored one; its producer shifts 8 less, its consumers 8 more.
        wide = {st: (self._WIDE if st in self.widen else 0) for st in self.WIDEN_STAGES}

        def gemm(a, name, extra=0):
            return (K.matmul_int(a, t[L + name + ".w"].T)
                    + (t[L + name + ".b"].to(torch.int64) << extra))

        def rq(acc, name, bits=None, bias=None, extra_in=0, extra_out=0):
            return K.requantize(acc, t[L + name + ".m"], t[L + name + ".e"] + extra_in - extra_out,
                                None if bits is None else bits + extra_out, bias=bias)

        xw = wide["hidden"]
        q = rq(gemm(x, "q", xw), "q", INT8, extra_in=xw, extra_out=wide["q"])
        k = rq(gemm(x, "k", xw), "k", INT8, extra_in=xw, extra_out=wide["k"])
        v = rq(gemm(x, "v", xw), "v", INT8, extra_in=xw, extra_out=wide["v"])
        trace("q", q)
        trace("k", k)
        trace("v", v)
        qh = q.view(n, s.heads, hd).transpose(0, 1)
        kh = k.view(n, s.heads, hd).transpose(0, 1)
        vh = v.view(n, s.heads, hd).transpose(0, 1)
        scores = K.matmul_int(qh, kh.transpose(1, 2))
        sw = wide["q"] + wide["k"]
        if sw:    # back to the score scale the softmax constants are made for, rounded
            scores = (scores + (1 << (sw - 1))) >> sw
        sm = lc["softmax"]
        mask = None if segments is None else segment_mask(segments, n)
        if self.opts.prob_scale == "row":
            p, r = K.int_softmax_row_int(scores, sm,
                                         output_bits=self.opts.prob_bits + wide["probs"],
                                         mask=mask)
        else:
            p = K.int_softmax_int(scores, sm, output_bits=self.opts.prob_bits + wide["probs"],
                                  saturate_output=True, mask=mask)
            r = torch.zeros((s.heads, n, 1), dtype=torch.int64)
        trace("probs", p)
        # the context requantization shift takes the probabilities' per-row exponent r
        ctx_e = lc["ctx_e"] + r + wide["probs"] + wide["v"] - wide["ctx"]
        ctx = K.requantize(K.matmul_int(p, vh), lc["ctx_m"], ctx_e, INT8 + wide["ctx"])
        ctx = ctx.transpose(0, 1).reshape(n, s.hidden)
        trace("ctx", ctx)
        r1 = K.saturate(rq(gemm(ctx, "o", wide["ctx"]), "o", extra_in=wide["ctx"])
                        + rq(x, "res1", extra_in=xw), K.RESIDUAL_BITS)
        trace("ln1_in", r1)
        aw = wide["ln1_out"]
        a = rq(K.layernorm_int(r1), "ln1", INT8, bias=t[L + "ln1.bias"], extra_out=aw)
        trace("ln1_out", a)
        g_in = rq(gemm(a, "ffn1", aw), "ffn1", GELU_IN_BITS, extra_in=aw)
        g = K.int_gelu_int(g_in, lc["gelu"]["b"], lc["gelu"]["c"], lc["gelu"]["q1"])
        trace("ffn1", g_in)
        h = rq(g, "gelu", self.opts.gelu_bits, bias=t.get(L + "gelu.bias"),
               extra_out=wide["gelu"])
        trace("gelu", h)
        r2 = K.saturate(rq(gemm(h, "ffn2", wide["gelu"]), "ffn2", extra_in=wide["gelu"])
                        + rq(a, "res2", extra_in=aw), K.RESIDUAL_BITS)
        trace("ln2_in", r2)
        out = rq(K.layernorm_int(r2), "ln2", INT8, bias=t[L + "ln2.bias"], extra_out=xw)
        trace("ln2_out", out)
        return out

    def encode_int(self, x, segments=None):
        """All encoder layers on the int8 input of layer 0; returns the int8 output.

        ``segments`` (optional): lengths of the sequences packed into the rows of ``x`` (see
        :meth:`layer`); the rows of segment ``s`` of the output equal ``encode_int`` of that
        sequence alone, bit for bit.
        """
        x = torch.as_tensor(x).to(torch.int64)
        if segments is not None:
            check_segments(segments, x.shape[0])
        for i in range(self.shape.layers):
            x = self.layer(i, x, segments=segments)
        return x

    def forward_ids(self, ids):
        """Token ids → int8 hidden states of the last layer ``[L, hidden]``."""
        with _one_thread():
            return self.encode_int(self.embed_int(ids))

    def sentence_embedding(self, ids):
        """Mean-pooled, L2-normalized sentence embedding (float64) of one token sequence."""
        return mean_pool(self.dequantize(self.forward_ids(ids)))

    def encode_text(self, text):
        """Token ids of ``text`` with the tokenizer of the source model."""
        if self.tokenizer is None:
            raise BertError("this integer model has no tokenizer")
        return self.tokenizer.encode(text)

    # artifact -----------------------------------------------------------------------------------
    def manifest(self):
        return {"shape": self.shape.to_dict(), "options": asdict(self.opts),
                "consts": self.consts, "source_model": self.source,
                "tokenizer": self.tokenizer.to_json() if self.tokenizer is not None else None,
                "max_seq_length": (self.tokenizer.max_length if self.tokenizer is not None
                                   else self.shape.max_position)}

    @classmethod
    def from_manifest(cls, manifest, tensors):
        """The model of an artifact's manifest and tensors, checked (:meth:`check`)."""
        from ..checkpoint import Tokenizer
        shape = BertShape(**manifest["shape"])
        # artifacts written before gelu_granularity existed have per-channel GELU scales
        opts = QuantOptions(**{"gelu_granularity": "channel", **manifest["options"]})
        tok = manifest.get("tokenizer")
        # artifacts written before max_seq_length was stored truncate at max_position
        max_len = int(manifest.get("max_seq_length") or shape.max_position)
        tok = Tokenizer.from_json(tok, max_len) if tok else None
        model = cls(shape, tensors, manifest["consts"], opts, manifest["source_model"], tok)
        model.check()
        return model

    #: Tensors that are float scales for the host (dequantization, reference), not parameters.
    _FLOAT_TENSORS = ("out_scale",)

    def check(self):
        """Raise :class:`BertError` unless the shape, the tensors and the constants agree: an
        artifact edited or damaged inside a well-formed file is refused when it is loaded, with
        what is wrong, not later in a kernel (or, worse, run with a layer left out).

        Checked: the shape (:meth:`BertShape.check`); every parameter an integer tensor; the
        embedding tables' and weight matrices' shapes; tensors for exactly the layers ``0 ..
        layers - 1``, the same ones in each; every requantization shift (``*.e``) in ``1 ..
        kernels.REQ_MAX_SHIFT``; then one two-token run through the embedding and every layer,
        which reads every tensor and constant a run reads.
        """
        s = self.shape
        s.check("quantized model")
        for name, t in self.t.items():
            if not isinstance(t, torch.Tensor):
                raise BertError(f"quantized model: {name} is not a tensor")
            if name.rsplit(".", 1)[-1] in self._FLOAT_TENSORS:
                if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
                    raise BertError(f"quantized model: {name} holds scales that are not "
                                    "finite and positive")
                continue
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise BertError(f"quantized model: {name} is {t.dtype}, not an integer tensor")
            if name.endswith(".e") and t.numel() and not (
                    1 <= int(t.min()) and int(t.max()) <= K.REQ_MAX_SHIFT):
                raise BertError(f"quantized model: {name} has shifts "
                                f"{int(t.min())}..{int(t.max())}, outside "
                                f"1..{K.REQ_MAX_SHIFT}")
        h, f = s.hidden, s.ffn
        shapes = {"emb.word": (s.vocab_size, h), "emb.position": (s.max_position, h),
                  "emb.type": (s.type_vocab_size, h)}
        for i in range(s.layers):
            shapes.update({f"layer.{i}.{g}.w": (h, h) for g in "qkvo"})
            shapes.update({f"layer.{i}.ffn1.w": (f, h), f"layer.{i}.ffn2.w": (h, f)})
        if "out_scale" not in self.t:           # read by dequantize only, not the check run
            raise BertError("quantized model: tensor out_scale is missing")
        for name, want in shapes.items():
            if name not in self.t:
                raise BertError(f"quantized model: tensor {name} is missing")
            if tuple(self.t[name].shape) != want:
                raise BertError(f"quantized model: {name} is {tuple(self.t[name].shape)}, not "
                                f"{want} as the model's shape says")
        per_layer = {}
        for name in self.t:
            parts = name.split(".", 2)
            if parts[0] == "layer":
                if len(parts) < 3 or not parts[1].isdigit():
                    raise BertError(f"quantized model: unexpected tensor {name}")
                per_layer.setdefault(int(parts[1]), set()).add(parts[2])
        if sorted(per_layer) != list(range(s.layers)):
            raise BertError(f"quantized model: tensors for layers {sorted(per_layer)}, the "
                            f"shape says {s.layers}")
        for i, names in per_layer.items():
            if names != per_layer[0]:
                odd = sorted(names ^ per_layer[0])
                raise BertError(f"quantized model: layer {i}'s tensors differ from layer 0's "
                                f"({', '.join(odd[:3])})")
        layers = self.consts.get("layers") if isinstance(self.consts, dict) else None
        if not isinstance(layers, list) or len(layers) != s.layers:
            raise BertError(f"quantized model: constants for {s.layers} layers expected")
        try:
            with _one_thread():
                self.encode_int(self.embed_int(list(range(min(2, s.max_position)))))
        except BertError:
            raise
        except KeyError as exc:
            raise BertError(f"quantized model: {exc.args[0]} is missing") from None
        except Exception as exc:
            raise BertError(f"quantized model: a check run fails: {type(exc).__name__}: "
                            f"{exc}") from None

    def manifest_json(self):
        return json.dumps(self.manifest(), sort_keys=True)

