"""Integer-only kernels of I-BERT, in true integers (``torch.int64``).

This module is the arithmetic specification of bertcore: the RTL units implement exactly these
functions, bit for bit. Each kernel is split in two halves:

* ``*_constants(scale)`` derives, once, at quantization time, every integer constant the kernel
  needs from the floating-point input scale (this is the only place floats appear), and
* ``*_int(x, ...)`` is the integer-only run-time computation the hardware performs.

The I-BERT-compatible entry points :func:`int_gelu`, :func:`int_softmax` and
:func:`int_layernorm` compose the two halves and return ``(y_int, y_scale)`` as the reference
``IntGELU``/``IntSoftmax``/``IntLayerNorm`` modules of transformers do, but computing in exact
integers. Every deviation from the reference code is listed in ``docs/quantization.md``.

Rounding rules (identical everywhere, see ``docs/quantization.md``):

* requantization ``y = floor((x*m + bias + 2**(e-1)) / 2**e)``: round half up (toward +inf),
  which hardware does with one adder and an arithmetic right shift;
* LayerNorm mean: round half to even (as ``torch.round`` in the reference);
* every nonlinear step (GELU, exp, division, square root): floor.
"""

import math

import torch

__all__ = [
    "REQ_M_BITS", "REQ_MAX_SHIFT", "RESIDUAL_BITS", "GELU_IN_BITS", "SOFTMAX_EXP_BITS", "SOFTMAX_MAX_BIT", "LN_FRAC_BITS",
    "SOFTMAX_POLY_BITS", "SOFTMAX_MAX_SHIFT", "SOFTMAX_X0_BITS", "SOFTMAX_MIN_SCALE",
    "GELU_K", "GELU_COEFF", "GELU_SHIFT", "EXP_X0", "EXP_COEFF", "EXP_N", "EXP_ZMAX",
    "int_range", "saturate", "floor_div", "round_half_even_div", "bit_length", "isqrt",
    "matmul_int",
    "requant_params", "requantize",
    "gelu_constants", "int_gelu_int", "int_gelu",
    "softmax_constants", "int_exp_int", "int_softmax_int", "int_softmax_row_int", "int_softmax",
    "layernorm_int", "int_layernorm",
]

# -- Widths and constants ------------------------------------------------------------------------

#: Requantization multipliers are signed ``REQ_M_BITS``-bit integers with
#: ``2**(REQ_M_BITS-2) <= |m| < 2**(REQ_M_BITS-1)`` (15 significant bits): one 18x18 DSP operand.
REQ_M_BITS = 16
#: Largest requantization shift ``e`` (``1 <= e <= REQ_MAX_SHIFT``): the rounding constant
#: ``2**(e-1)`` and the shift stay within int64.
REQ_MAX_SHIFT = 62
#: Width of the residual path (the LayerNorm inputs), as in I-BERT's ``ln_input_bit``.
RESIDUAL_BITS = 22
#: Width of the i-GELU input (the FFN1 output is requantized to this many signed bits).
GELU_IN_BITS = 16
#: Width of the exponentials inside the softmax (I-BERT's 16-bit ``QuantAct``); unsigned here.
SOFTMAX_EXP_BITS = 16
#: The exp polynomial ``(p+b)*p + c`` stays below ``2**SOFTMAX_POLY_BITS`` (so ``poly*m < 2**61``):
#: this bounds the finest softmax input scale (about 2.8e-7).
SOFTMAX_POLY_BITS = 45
#: Largest ``e`` of the softmax exp requantization (the shift of ``poly*m`` is ``e - 30 + z``,
#: 30 being ``EXP_N``).
SOFTMAX_MAX_SHIFT = REQ_MAX_SHIFT + 30
#: Fixed-point precision of ``floor(2**SOFTMAX_MAX_BIT / sum(exp))`` in the softmax.
SOFTMAX_MAX_BIT = 32
#: Widths the attention probabilities may have (``QuantOptions.prob_bits``,
#: ``CoreConfig.prob_bits``): unsigned ``B`` bits at scale ``2**-B``.
PROB_BITS_MIN, PROB_BITS_MAX = 8, 16
#: Widths the GELU output (the FFN2 GEMM's activation operand) may have
#: (``QuantOptions.gelu_bits``, ``CoreConfig.gelu_bits``): signed ``G`` bits per channel.
GELU_BITS_MIN, GELU_BITS_MAX = 8, 16
#: Extra fractional bits of the LayerNorm reciprocal ``floor(2**(31+F) / std)``; 0 is I-BERT.
LN_FRAC_BITS = 16

#: Width of the softmax constant x0 = floor(-0.6931 / S) in hardware (signed).
SOFTMAX_X0_BITS = 16
#: Finest softmax input scale the hardware takes: x0 >= -2**(SOFTMAX_X0_BITS - 1).
SOFTMAX_MIN_SCALE = 0.6931 / 2 ** (SOFTMAX_X0_BITS - 1)

GELU_K = 1.4142                      # I-BERT's literal for sqrt(2)
GELU_COEFF = (-0.2888, -1.769, 1.0)  # erf(x) ~ sign(x) * (a * (min(|x|, -b) + b)**2 + c)
GELU_SHIFT = 14                      # I-BERT's "avoid overflow" shift of the erf result
EXP_X0 = -0.6931                     # -ln 2, as written in I-BERT
EXP_COEFF = (0.35815147, 0.96963238, 1.0)  # exp(p) ~ a * p**2 + b * p + c on (-ln2, 0]
EXP_N = 30                           # I-BERT's exp shift constant
EXP_ZMAX = 30                        # x is clamped to EXP_ZMAX * x0 before decomposition


# -- Integer helpers ----------------------------------------------------------------------------

def _as_int64(x):
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"integer kernels take integer tensors, not {x.dtype}")
    return x.to(torch.int64)


def int_range(bits, signed=True):
    """Return ``(lo, hi)``, the range of a ``bits``-bit two's complement (or unsigned) integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x, bits, signed=True):
    """Clamp ``x`` to the range of a ``bits``-bit integer."""
    lo, hi = int_range(bits, signed)
    return torch.clamp(_as_int64(x), lo, hi)


def floor_div(a, b):
    """``floor(a / b)`` for integer tensors (``b != 0``)."""
    return torch.div(_as_int64(a), _as_int64(b), rounding_mode="floor")


def round_half_even_div(a, n):
    """``round(a / n)`` with ties to even, for integer tensors and a positive integer ``n``."""
    a = _as_int64(a)
    q = torch.div(a, n, rounding_mode="floor")
    r2 = 2 * (a - q * n)
    up = (r2 > n) | ((r2 == n) & (q % 2 == 1))
    return q + up.to(torch.int64)


def bit_length(n):
    """Number of significant bits of each non-negative element (0 for 0), like ``int.bit_length``."""
    m = _as_int64(n).clone()
    bits = torch.zeros_like(m)
    while bool((m > 0).any()):
        bits += (m > 0).to(torch.int64)
        m = m >> 1
    return bits


def isqrt(n):
    """Exact ``floor(sqrt(n))`` of a non-negative int64 tensor by Newton's iteration.

    This is Algorithm 4 of the I-BERT paper: ``x0 = 2**ceil(bits(n)/2)``, then
    ``x <- floor((x + floor(n/x)) / 2)`` while it decreases. Unlike the reference code (which takes
    ``floor(sqrt(float32(n)))``), the result is exact for every ``0 <= n < 2**62``.
    """
    n = _as_int64(n)
    if bool((n < 0).any()):
        raise ValueError("isqrt takes non-negative integers")
    if bool((n >= (1 << 62)).any()):
        raise ValueError("isqrt takes integers below 2**62")
    zero = n == 0
    n = torch.where(zero, torch.ones_like(n), n)
    x = torch.ones_like(n) << ((bit_length(n) + 1) // 2)   # 2**ceil(bits/2) > sqrt(n)
    while True:
        y = (x + torch.div(n, x, rounding_mode="floor")) >> 1
        if not bool((y < x).any()):
            break
        x = torch.minimum(x, y)
    return torch.where(zero, torch.zeros_like(n), x)


#: Integers below 2**53 are exact in float64, whatever the order of the additions.
_F64_EXACT = 1 << 53


def matmul_int(a, b):
    """Exact integer product ``a @ b`` (int64 result) of integer tensors.

    When every partial sum is bounded by ``max|a| * max|b| * K < 2**53`` (``K`` the inner
    dimension), the product runs through float64 BLAS: each partial sum is an integer below
    ``2**53`` and therefore exact, so the result equals the int64 product bit for bit, about 30x
    faster (torch has no integer BLAS). Otherwise it falls back to int64.
    """
    a, b = _as_int64(a), _as_int64(b)
    if a.numel() == 0 or b.numel() == 0:
        return a @ b
    bound = int(a.abs().max()) * int(b.abs().max()) * a.shape[-1]
    if bound < _F64_EXACT:
        return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int64)
    return a @ b


# -- Requantization -----------------------------------------------------------------------------

def requant_params(ratio, m_bits=REQ_M_BITS, max_shift=REQ_MAX_SHIFT):
    """Fixed-point form ``(m, e)`` of a positive or negative real ``ratio ~= m / 2**e``.

    ``m`` is a signed ``m_bits``-bit integer with ``2**(m_bits-2) <= |m| < 2**(m_bits-1)`` (the
    mantissa rounded half away from zero, as I-BERT's ``batch_frexp``; a mantissa that rounds up to
    ``2**(m_bits-1)`` is halved so it still fits) and ``1 <= e <= max_shift``. A ratio below
    ``2**(m_bits-2-max_shift)`` keeps ``e = max_shift`` and a smaller ``|m|`` (fewer significant
    bits, rounded once). A zero ratio gives ``m = 0, e = 1``. Accepts a float or a float tensor; returns int64 tensors of the same shape.
    """
    r = torch.as_tensor(ratio, dtype=torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("requantization ratio must be finite")
    flat = r.reshape(-1).tolist()
    ms, es = [], []
    frac = m_bits - 1
    for v in flat:
        if v == 0.0:
            ms.append(0)
            es.append(1)
            continue
        mant, exp = math.frexp(abs(v))                 # abs(v) = mant * 2**exp, 0.5 <= mant < 1
        m = math.floor(mant * (1 << frac) + 0.5)       # half away from zero (mant > 0)
        e = frac - exp
        if m == (1 << frac):
            m >>= 1
            e -= 1
        if e > max_shift:                              # ratio too small: fewer mantissa bits,
            e = max_shift                              # rounded once from the exact ratio
            m = math.floor(math.ldexp(abs(v), max_shift) + 0.5)
        if e < 1:
            raise ValueError(
                f"requantization ratio {v!r} is too large for a {m_bits}-bit multiplier")
        ms.append(-m if v < 0 else m)
        es.append(e)
    shape = r.shape
    return (torch.tensor(ms, dtype=torch.int64).reshape(shape),
            torch.tensor(es, dtype=torch.int64).reshape(shape))


def requantize(x, m, e, bits=None, bias=None, signed=True):
    """Fixed-point rescale ``y = floor((x*m + bias + 2**(e-1)) / 2**e)``, saturated to ``bits``.

    Round half up. ``m``, ``e`` (and ``bias``, pre-shift) broadcast against ``x`` (per-channel
    values along the last axis). ``bits=None`` skips the saturation.
    """
    x = _as_int64(x)
    m = _as_int64(m)
    e = _as_int64(e)
    if bool((e < 1).any()) or bool((e > REQ_MAX_SHIFT).any()):
        raise ValueError(f"requantization shifts must lie in 1..{REQ_MAX_SHIFT}")
    acc = x * m
    if bias is not None:
        acc = acc + _as_int64(bias)
    y = (acc + (torch.ones_like(e) << (e - 1))) >> e
    return y if bits is None else saturate(y, bits, signed)


# -- i-GELU -------------------------------------------------------------------------------------

def gelu_constants(scale):
    """Integer constants of i-GELU for an input scale: ``b, c, q1`` and the output scale.

    ``S' = S / 1.4142``, ``b = floor(-1.769 / S')``, ``c = floor((1 / -0.2888) / S'**2)``,
    ``S_e = -0.2888 * S'**2 * 2**14``, ``q1 = floor(1 / S_e)``, ``S_out = S * S_e / 2``.
    Works on float64; ``scale`` may be a float or a tensor (per channel).
    """
    s = torch.as_tensor(scale, dtype=torch.float64)
    if bool((s <= 0).any()):
        raise ValueError("GELU input scale must be positive")
    a, b, c = GELU_COEFF
    sp = s / GELU_K
    b_int = torch.floor(b / sp)
    c_int = torch.floor((c / a) / sp ** 2)
    s_e = sp ** 2 * a * 2 ** GELU_SHIFT
    q1 = torch.floor(1.0 / s_e)
    return {
        "b": b_int.to(torch.int64), "c": c_int.to(torch.int64), "q1": q1.to(torch.int64),
        "scale_out": s * s_e / 2,
    }


def int_gelu_int(x, b, c, q1):
    """Integer half of i-GELU: ``x * (floor(sign(x)*((min(|x|,-b)+b)**2 + c) / 2**14) + q1)``.

    Raises ``ValueError`` when the result could exceed 62 bits (an input scale far too fine for
    the input width).
    """
    x = _as_int64(x)
    b, c, q1 = _as_int64(b), _as_int64(c), _as_int64(q1)
    if x.numel():
        bmax, cmax, qmax = (int(v.abs().max()) for v in (b, c, q1))
        bound = int(x.abs().max()) * (((bmax * bmax + cmax) >> GELU_SHIFT) + 1 + qmax)
        if bound >= 1 << 62:
            raise ValueError("i-GELU result would overflow 62 bits: the input scale is too "
                             "fine for the input width")
    t = torch.minimum(x.abs(), -b) + b
    erf = torch.sign(x) * (t * t + c)
    erf = erf >> GELU_SHIFT                           # floor division by 2**14
    return x * (erf + q1)


def int_gelu(x_int, scale):
    """I-BERT's ``IntGELU`` in integers: returns ``(y_int, y_scale)``."""
    k = gelu_constants(scale)
    return int_gelu_int(x_int, k["b"], k["c"], k["q1"]), k["scale_out"]


# -- i-exp and softmax --------------------------------------------------------------------------

def softmax_constants(scale, exp_bits=SOFTMAX_EXP_BITS):
    """Integer constants of the integer softmax for an input (score) scale ``S``.

    ``x0 = floor(-0.6931 / S)``, ``b = floor((0.96963238 / 0.35815147) / S)``,
    ``c = floor((1 / 0.35815147) / S**2)``; the exponential ``poly * 2**(30 - z)`` has scale
    ``0.35815147 * S**2 / 2**30`` and is requantized to an unsigned ``exp_bits``-bit value of scale
    ``2**-(exp_bits - 1)`` (``exp(0) = 1`` maps to about ``2**(exp_bits-1)``) with ``(m, e)``.
    """
    s = float(scale)
    if not s > 0:
        raise ValueError("softmax input scale must be positive")
    a, b, c = EXP_COEFF
    x0 = math.floor(EXP_X0 / s)
    if x0 >= 0 or x0 < -(1 << 40):
        raise ValueError(f"softmax input scale {s!r} is out of range")
    b_int = math.floor((b / a) / s)
    c_int = math.floor((c / a) / s ** 2)
    if c_int >= 1 << SOFTMAX_POLY_BITS:
        raise ValueError(f"softmax input scale {s!r} is too small (the exp polynomial would "
                         f"exceed {SOFTMAX_POLY_BITS} bits)")
    exp_scale = a * s ** 2 / 2 ** EXP_N
    # The shift applied to poly*m is e - 30 + z, so e may reach 62 + 30 with full precision.
    m, e = requant_params(exp_scale / 2.0 ** -(exp_bits - 1), max_shift=SOFTMAX_MAX_SHIFT)
    if int(e) <= EXP_N:
        raise ValueError(f"softmax input scale {s!r} is too large for the exp requantization")
    return {"x0": x0, "b": b_int, "c": c_int, "m": int(m), "e": int(e), "exp_bits": exp_bits}


def int_exp_int(x, x0, b, c):
    """Integer exponential of ``x <= 0``: returns ``(poly, z)`` with ``exp = poly * 2**(30 - z)``.

    ``x = max(x, 30*x0)``, ``z = floor(x / x0)``, ``p = x - x0*z``, ``poly = max((p+b)*p + c, 0)``.
    """
    x = _as_int64(x)
    x = torch.maximum(x, torch.full_like(x, EXP_ZMAX * x0))
    z = torch.div(x, x0, rounding_mode="floor")
    p = x - x0 * z
    poly = torch.clamp((p + b) * p + c, min=0)
    return poly, z


def _softmax_exp(x, k, lengths, mask=None):
    """The 16-bit exponentials of a softmax row and their sum (shared by both output forms).

    Positions past ``lengths`` or where ``mask`` is false take no part and get 0."""
    x = _as_int64(x)
    n = x.shape[-1]
    if lengths is None:
        valid = torch.ones_like(x, dtype=torch.bool)
    else:
        lengths = _as_int64(lengths)
        if bool((lengths < 1).any()) or bool((lengths > n).any()):
            raise ValueError(f"softmax row lengths must lie in 1..{n}")
        valid = torch.arange(n) < lengths.unsqueeze(-1)
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        valid = valid & mask
        if not bool(valid.any(dim=-1).all()):
            raise ValueError("every softmax row needs at least one unmasked position")
    lo = torch.iinfo(torch.int64).min
    rowmax = torch.where(valid, x, torch.full_like(x, lo)).amax(dim=-1, keepdim=True)
    d = torch.where(valid, x - rowmax, torch.zeros_like(x))
    poly, z = int_exp_int(d, k["x0"], k["b"], k["c"])
    # >= 1 by softmax_constants; poly*m < 2**61, so every shift of 62 or more gives 0 and the
    # shift saturates at 62 without changing the result
    sh = torch.clamp(k["e"] - EXP_N + z, max=REQ_MAX_SHIFT)
    exp16 = (poly * k["m"] + (torch.ones_like(sh) << (sh - 1))) >> sh
    exp16 = torch.clamp(exp16, 0, (1 << k["exp_bits"]) - 1)
    exp16 = torch.where(valid, exp16, torch.zeros_like(exp16))
    return exp16, exp16.sum(dim=-1, keepdim=True)


def int_softmax_int(x, k, output_bits=8, lengths=None, saturate_output=False, mask=None):
    """Integer half of the softmax along the last axis.

    ``x`` are int scores; ``k`` the dict from :func:`softmax_constants`. ``lengths`` (optional,
    int tensor broadcast over the leading axes) masks the tail of each row: positions ``>= length``
    take no part and output 0. ``mask`` (optional, bool tensor broadcast against ``x``) masks any
    positions the same way (``False``: no part, output 0; every row needs one ``True``): the
    key mask of packed sequences. Steps: rowmax; ``poly, z = int_exp(x - rowmax)``;
    ``exp16 = min(floor((poly*m + 2**(s-1)) / 2**s), 2**exp_bits - 1)`` with
    ``s = min(e - 30 + z, REQ_MAX_SHIFT)`` (exact: ``poly*m < 2**61``)
    (the requantization of ``poly * 2**(30-z)``); ``f = floor(2**32 / sum(exp16))``;
    ``y = floor(exp16 * f / 2**(32 - output_bits))``, at most ``2**output_bits`` (or
    ``2**output_bits - 1`` with ``saturate_output``).
    """
    exp16, total = _softmax_exp(x, k, lengths, mask)
    f = torch.div(torch.full_like(total, 1 << SOFTMAX_MAX_BIT), total, rounding_mode="floor")
    y = (exp16 * f) >> (SOFTMAX_MAX_BIT - output_bits)
    if saturate_output:
        y = torch.clamp(y, max=(1 << output_bits) - 1)
    return y


def int_softmax_row_int(x, k, output_bits=8, lengths=None, mask=None):
    """The softmax with a power-of-two scale per row: returns ``(y, r)``.

    ``y`` has the scale ``2**-(output_bits + r)`` (``r`` per row, shape ``[..., 1]``), so that
    every row keeps ``output_bits`` significant bits however many keys share the probability
    mass; the consumer folds ``r`` into its requantization shift (exact). With ``exp16`` and
    ``S = sum(exp16)`` as in :func:`int_softmax_int` (``exp16 <= 2**(exp_bits-1)`` at the row
    maximum, about): ``r = max(bitlen(S) - exp_bits, 0)``, ``f = floor(2**(32 + r) / S)``
    (``2**16 < f <= 2**17``: 17 bits whatever ``r``), ``y = min(floor(exp16 * f /
    2**(32 - output_bits)), 2**output_bits - 1)``; the row maximum of ``y`` is at least
    ``2**(output_bits-1)`` once ``r > 0``. ``r = 0`` gives exactly :func:`int_softmax_int`
    with ``saturate_output``. ``lengths`` and ``mask`` as in :func:`int_softmax_int`.
    """
    exp16, total = _softmax_exp(x, k, lengths, mask)
    r = torch.clamp(bit_length(total) - k["exp_bits"], min=0)
    f = torch.div(torch.ones_like(total) << (SOFTMAX_MAX_BIT + r), total, rounding_mode="floor")
    y = torch.clamp((exp16 * f) >> (SOFTMAX_MAX_BIT - output_bits), max=(1 << output_bits) - 1)
    return y, r


def int_softmax(x_int, scale, output_bits=8, lengths=None):
    """I-BERT's ``IntSoftmax`` in integers: returns ``(y_int, 2**-output_bits)``."""
    k = softmax_constants(scale)
    return int_softmax_int(x_int, k, output_bits, lengths), 2.0 ** -output_bits


# -- LayerNorm ----------------------------------------------------------------------------------

def layernorm_int(x, shift=0, frac_bits=LN_FRAC_BITS):
    """Integer normalization along the last axis (without gamma and beta).

    ``mean = round_half_even(sum(x) / N)``, ``y = x - mean``,
    ``var = sum(floor(y / 2**shift)**2)``, ``std = isqrt(var) * 2**shift`` (at least 1),
    ``f = floor(2**(31 + frac_bits) / std)``, ``out = floor(y * f / 2**(1 + frac_bits))``.
    The output has the scale ``sqrt(N) / 2**30`` relative to the normalized value and lies in
    ``[-2**30, 2**30]`` when ``shift == 0``. ``frac_bits=0`` is I-BERT's arithmetic.
    """
    x = _as_int64(x)
    n = x.shape[-1]
    mean = round_half_even_div(x.sum(dim=-1, keepdim=True), n)
    y = x - mean
    ys = y >> shift
    var = (ys * ys).sum(dim=-1, keepdim=True)
    std = torch.clamp(isqrt(var) << shift, min=1)
    f = torch.div(torch.full_like(std, 1 << (31 + frac_bits)), std, rounding_mode="floor")
    return (y * f) >> (1 + frac_bits)


def int_layernorm(x_int, weight, bias, shift=0):
    """I-BERT's ``IntLayerNorm`` in integers: returns ``(y_int, y_scale)`` (per channel).

    ``bias_int = floor((bias / weight) / (sqrt(N) / 2**30))`` is added to the normalized integer
    and the output scale is ``weight * sqrt(N) / 2**30``, as in the reference (``frac_bits=0``).
    """
    x = _as_int64(x_int)
    n = x.shape[-1]
    w = torch.as_tensor(weight, dtype=torch.float64)
    bvec = torch.as_tensor(bias, dtype=torch.float64)
    s = math.sqrt(n) / 2 ** 30
    bias_int = torch.floor((bvec / w) / s).to(torch.int64)
    y = layernorm_int(x, shift=shift, frac_bits=0) + bias_int
    return y, w * s
