"""Bit-exact comparison of ``bertcore.quant.kernels`` with transformers' I-BERT reference.

The reference (``transformers.models.ibert.quant_modules``) emulates integers with float tensors.
We run it in float64, where its arithmetic is exact as long as every intermediate value is an
integer below 2**53 (or such an integer times a power of two), and require our int64 kernels to
give IDENTICAL integers there. Two things of the reference need care to get there:

* Its layers start with ``x_int = x / scaling_factor`` and never round: for a generic scale such
  as 1e-5, ``fl(fl(k * s) / s) != k`` for ~16% of integers k, and no float64 x at all maps to k
  for most of them. We therefore use scales with a 20-bit mantissa (log-uniform in the realistic
  range): then ``k * s`` is exact for ``|k| < 2**33`` and ``x / s`` gives back k exactly.
  :func:`feed` asserts that for every input, so no test silently compares non-integers.
* ``IntSoftmax.act`` is a 16-bit ``QuantAct`` fed with an integer where it expects a real value
  (transformers #26767) and needs calibration; :class:`Exp16Act` replaces it by our documented
  16-bit step, so the rest of the reference (sum, ``floor(2**32/sum)``, normalization) is what is
  compared.

Mismatch rates and bounds are printed (``pytest -s``) and asserted.
"""

import math
import random
from fractions import Fraction

import pytest
import torch
from torch import nn
# the reference is part of transformers (a pinned dependency): its absence is an error
from transformers.models.ibert import quant_modules as qm

from bertcore.quant import kernels as K

F64 = torch.float64
I64 = torch.int64


# -- helpers --------------------------------------------------------------------------------------

def short_scale(rng, lo, hi, bits=20):
    """A log-uniform scale in [lo, hi] whose float64 mantissa has at most ``bits`` bits."""
    v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    mant, ex = math.frexp(v)
    return math.ldexp(round(mant * (1 << bits)), ex - bits)


def short_scales(rng, n, lo, hi, bits=20):
    return torch.tensor([short_scale(rng, lo, hi, bits) for _ in range(n)], dtype=F64)


def feed(x_int, scale, dtype=F64):
    """Real input ``x`` for the reference such that its ``x / scale`` is exactly ``x_int``."""
    s = torch.as_tensor(scale, dtype=dtype)
    x = x_int.to(dtype) * s
    assert torch.equal(x / s, x_int.to(dtype)), "scale mantissa too long for exact feeding"
    return x, s


def rand_int(gen, lo, hi, shape):
    return torch.randint(lo, hi, shape, generator=gen, dtype=I64)


def gelu_ref(x_int, scale, dtype=F64):
    x, s = feed(x_int, scale, dtype)
    out, s_out = qm.IntGELU(quant_mode=True)(x, s)
    return out, s_out


def check_exact_output(out_ref, s_ref, y, s_ours, limit=2 ** 51):
    """``out_ref == y * s`` with identical scales, and ``round(out_ref / s) == y``.

    Below 2**51 two different integers cannot give the same float product, so equality of the
    float outputs is equality of the integers.
    """
    assert int(y.abs().max()) < limit
    assert torch.equal(torch.as_tensor(s_ref, dtype=F64), torch.as_tensor(s_ours, dtype=F64))
    assert torch.equal(out_ref, y.to(F64) * s_ours)
    y_rec = torch.round(out_ref / s_ref)
    assert torch.equal(y_rec.to(I64), y)


def ulp(v):
    v = v.abs()
    return torch.nextafter(v, torch.full_like(v, math.inf)) - v


def check_output_beyond_2_53(out_ref, s_ref, y, s_ours):
    """Exact check below 2**53 (where the reference's float64 product is exact). Above, the
    reference rounds its "integer" y to 53 bits before scaling; we compare its output with the
    correctly rounded exact ``y * S`` (Fractions; ``y.to(float64)`` would round y the same way
    the reference does and hide the difference). Returns (count, mismatches, max diff in ulps)."""
    assert torch.equal(torch.as_tensor(s_ref, dtype=F64), torch.as_tensor(s_ours, dtype=F64))
    small = y.abs() < 2 ** 51
    check_exact_output(out_ref[small], s_ref, y[small], s_ours)
    exact = y.abs() < 2 ** 53
    assert torch.equal(out_ref[exact], y[exact].to(F64) * s_ours)
    big = ~exact
    if not bool(big.any()):
        return 0, 0, 0.0
    s_b = torch.as_tensor(s_ours, dtype=F64).expand(y.shape)[big].tolist()
    true = torch.tensor([float(Fraction(v) * Fraction(sv)) for v, sv in zip(y[big].tolist(), s_b)],
                        dtype=F64)
    d = (out_ref[big] - true).abs() / ulp(true)
    return int(big.sum()), int((d > 0).sum()), float(d.max())


class Exp16Act(nn.Module):
    """Stand-in for ``IntSoftmax.act``: our documented 16-bit step, in exact Python integers.

    ``exp16 = min(floor((exp * m + 2**(e-1)) / 2**e), 2**16 - 1)`` with ``(m, e)`` from
    :func:`softmax_constants`, returned as ``(exp16 * S16, S16)`` with ``S16 = 2**-15``.
    """

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.calls = 0

    def forward(self, exp_int, exp_scale):
        self.calls += 1
        m, e, bits = self.k["m"], self.k["e"], self.k["exp_bits"]
        s16 = 2.0 ** -(bits - 1)
        m2, e2 = K.requant_params(float(exp_scale) / s16)   # same ratio as the reference's scale
        assert (int(m2), int(e2)) == (m, e)
        vals = exp_int.reshape(-1).tolist()
        assert all(v >= 0 and v == math.floor(v) for v in vals)
        out = [min((int(v) * m + (1 << (e - 1))) >> e, (1 << bits) - 1) for v in vals]
        t = torch.tensor(out, dtype=exp_int.dtype).reshape(exp_int.shape)
        return t * s16, torch.tensor(s16, dtype=exp_int.dtype)


def softmax_ref(x_int, scale, output_bits=8, dtype=F64):
    """Reference ``IntSoftmax`` output as integers (its output is y * 2**-output_bits, exact)."""
    sm = qm.IntSoftmax(output_bits, quant_mode=True)
    sm.act = Exp16Act(K.softmax_constants(scale))
    x, s = feed(x_int, scale, dtype)
    out, s_out = sm(x, s)
    assert sm.act.calls == 1
    assert s_out == 2.0 ** -output_bits
    y = out.to(F64) * 2 ** output_bits
    assert torch.equal(y, torch.round(y))
    return y.to(I64)


def layernorm_ref(x_int, scale, weight, bias, shift, float64_dim_sqrt=True):
    n = x_int.shape[-1]
    ln = qm.IntLayerNorm(n, eps=1e-12, output_bit=8, quant_mode=True).double().eval()
    with torch.no_grad():
        ln.weight.copy_(weight)
        ln.bias.copy_(bias)
        ln.shift.fill_(float(shift))
    if float64_dim_sqrt:
        # By default the reference computes sqrt(N) in float32 (a plain attribute that .double()
        # does not convert); float64 makes it exact like ours (see test_layernorm_float32_dim_sqrt).
        ln.dim_sqrt = torch.sqrt(torch.tensor(n, dtype=F64))
    x, s = feed(x_int, scale)
    with torch.no_grad():
        out, s_out = ln(x, s)
    return out, s_out


# -- i-GELU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [16, 32])
def test_gelu_matches_reference_random(bits):
    """int16 and int32 inputs, scalar scales 1e-5..1e-3: identical everywhere (int32 outputs
    reach 2**54 but stay representable, see below; smaller scales: the next test)."""
    rng = random.Random(100 + bits)
    gen = torch.Generator().manual_seed(bits)
    lo, hi = K.int_range(bits)
    n_big = n_bad = 0
    worst = 0.0
    n_all = 0
    for i in range(12):
        s = short_scale(rng, 1e-5, 1e-3 if i % 2 else 1.5e-5)   # half near 1e-5: y > 2**53
        x = rand_int(gen, lo, hi + 1, (4000,))
        out, s_out = gelu_ref(x, s)
        y, s_ours = K.int_gelu(x, s)
        nb, bad, w = check_output_beyond_2_53(out, s_out, y, s_ours)
        n_big, n_bad, worst, n_all = n_big + nb, n_bad + bad, max(worst, w), n_all + y.numel()
    if bits == 16:
        assert n_big == 0
    else:
        # The outputs beyond 2**53 are saturated ones, y = x * (floor(c/2**14) + q1) = x * 2*q1:
        # even and below 2**54 for S >= 1e-5, hence representable: the reference stays exact.
        print(f"\nIntGELU int32: {n_big}/{n_all} outputs >= 2**53; reference differs on "
              f"{n_bad} of them, by at most {worst} ulp")
        assert n_big > 0 and n_bad == 0


def test_gelu_tiny_scales_reference_rounds():
    """S in 1e-6..5e-6 with int32 inputs: y reaches 2**61 and the float64 reference rounds it.

    Measured: ~14% of the outputs >= 2**53 differ from the correctly rounded exact y*S, each by
    exactly 1 ulp (the reference rounds y to 53 bits, then rounds again after scaling).
    """
    rng = random.Random(5)
    gen = torch.Generator().manual_seed(5)
    n_big = n_bad = 0
    worst = 0.0
    for _ in range(8):
        s = short_scale(rng, 1e-6, 5e-6)
        x = rand_int(gen, -2 ** 31, 2 ** 31, (4000,))
        out, s_out = gelu_ref(x, s)
        y, s_ours = K.int_gelu(x, s)
        cnt, bad, w = check_output_beyond_2_53(out, s_out, y, s_ours)
        n_big, n_bad, worst = n_big + cnt, n_bad + bad, max(worst, w)
    rate = n_bad / n_big
    print(f"\nIntGELU S in 1e-6..5e-6: {n_big} outputs >= 2**53, reference differs on {n_bad} "
          f"({rate:.1%}), by at most {worst} ulp")
    assert worst <= 1 and 0 < rate < 0.25


def test_gelu_matches_reference_extremes():
    rng = random.Random(3)
    n_big = n_bad = 0
    worst = 0.0
    scales = [short_scale(rng, 1e-5, 1e-3) for _ in range(10)] + [2.0 ** -17]
    scales += [short_scale(rng, 1e-5, 1e-5), short_scale(rng, 1e-3, 1e-3)]   # range ends
    for s in scales:
        k = K.gelu_constants(s)
        nb = -int(k["b"])                        # -b: where the erf polynomial saturates
        pts = {0, 1, -1, 2, -2, 2 ** 15 - 1, -2 ** 15, 2 ** 31 - 1, -2 ** 31, -2 ** 31 + 1}
        for d in range(-3, 4):
            pts |= {nb + d, -(nb + d)}
        x = torch.tensor(sorted(pts), dtype=I64)
        out, s_out = gelu_ref(x, s)
        y, s_ours = K.int_gelu(x, s)
        cnt, bad, w = check_output_beyond_2_53(out, s_out, y, s_ours)
        n_big, n_bad, worst = n_big + cnt, n_bad + bad, max(worst, w)
        assert int(y[x == 0]) == 0
        # Past -b the erf is saturated: y = x * (floor(+-c / 2**14) + q1) exactly, on both sides.
        big = x[x.abs() >= nb]
        c, q1 = int(k["c"]), int(k["q1"])
        sat = torch.where(big > 0, c >> 14, (-c) >> 14) + q1
        assert torch.equal(y[x.abs() >= nb], big * sat)
    print(f"\nIntGELU extremes: {n_big} outputs >= 2**53, {n_bad} differ, by <= {worst} ulp")
    assert worst <= 1


def test_gelu_float32_reference_is_not_integer_exact():
    """Why the reference runs in float64: in float32 its "integers" (c ~ 2**36, y ~ 2**34) round.

    Inputs are int16 with 8-bit-mantissa scales, so even the float32 feed is exact; the mismatches
    therefore come from the reference's own float32 arithmetic.
    """
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    rates = []
    for _ in range(4):
        s = short_scale(rng, 1e-5, 1e-4, bits=8)
        x = rand_int(gen, -2 ** 15, 2 ** 15, (4000,))
        y, _ = K.int_gelu(x, s)
        out64, s64 = gelu_ref(x, s, F64)
        out32, s32 = gelu_ref(x, s, torch.float32)
        y64 = torch.round(out64 / s64).to(I64)
        y32 = torch.round(out32.to(F64) / s32.to(F64)).to(I64)
        assert torch.equal(y64, y)
        rates.append((y32 != y).double().mean().item())
    print(f"\nIntGELU float32 reference vs true integers: mismatch rates {rates}")
    assert min(rates) > 0.5


def test_gelu_properties():
    """Monotone for x >= 0, sign of GELU, and within I-BERT's error bound of the true GELU."""
    for s in [1e-5, 1e-4, 1e-3, 1e-2]:
        n = int(6 / s)
        x = torch.arange(-n, n + 1, max(1, n // 100000))
        y, so = K.int_gelu(x, s)
        real = y.to(F64) * so
        pos = real[x >= 0]
        assert bool((pos[1:] >= pos[:-1]).all()), s
        assert bool((real[x > 0] > 0).all()) and bool((real[x < 0] <= 0).all())
        # |error| <= L_inf of the erf polynomial (0.0182 measured) + the q1 = floor(1/S_e) error.
        se = abs(float(K.gelu_constants(s)["scale_out"])) * 2 / s
        xr = x.to(F64) * s
        err = (real - torch.nn.functional.gelu(xr)).abs()
        assert bool((err <= 0.0185 + xr.abs() * se).all()), (s, float(err.max()))
        if s <= 1e-4:
            assert float(err.max()) < 0.0185


# -- softmax --------------------------------------------------------------------------------------

def test_softmax_matches_reference_random():
    rng = random.Random(11)
    gen = torch.Generator().manual_seed(11)
    for i in range(24):
        s = short_scale(rng, 1e-4, 5e-2)
        spread = [2 ** 20, int(20 / s), int(3 / s)][i % 3]
        t = rng.choice([1, 2, 7, 32, 128])
        x = rand_int(gen, -spread, spread + 1, (4, 8, t))
        y_ref = softmax_ref(x, s)
        y, s_out = K.int_softmax(x, s)
        assert s_out == 2.0 ** -8
        assert torch.equal(y, y_ref), (s, spread, t)


def test_softmax_matches_reference_special_rows():
    rng = random.Random(12)
    n256 = 0
    for _ in range(8):
        s = short_scale(rng, 1e-4, 5e-2)
        x0 = K.softmax_constants(s)["x0"]
        clamp = 30 * x0                                  # scores below max + 30*x0 are clamped
        rows = [
            [5] * 16,                                    # all equal
            [0] * 16,
            [-(2 ** 20)] * 16,
            [0] * 15 + [2 ** 20],                        # one dominant element
            [-(2 ** 20)] * 15 + [2 ** 20],
            [0] * 15 + [int(4 / s)],
            [0, clamp, clamp - 1, clamp + 1, clamp - 2 ** 19, 31 * x0, 29 * x0, x0,
             x0 - 1, x0 + 1, 2 * x0, -1, 1, 7 * x0 + 3, 30 * x0 + 7, -(2 ** 20)],
        ]
        x = torch.tensor(rows, dtype=I64)
        y_ref = softmax_ref(x, s)
        y, _ = K.int_softmax(x, s)
        assert torch.equal(y, y_ref), s
        # exp16(0) ~ 2**15 (+-1 LSB by scale): the winner gets 255 or 256, the rest 0.
        assert not bool(y[3, :15].any()) and int(y[3, 15]) in (255, 256)
        # Everything at or below the clamp gets the same (clamped) exponential.
        assert len(set(y[6, [1, 2, 4, 5]].tolist())) == 1
        # Length-1 rows: the only element is 2**8 (9 bits, as the reference).
        x1 = torch.tensor([[0], [2 ** 20], [-(2 ** 20)], [-5]], dtype=I64)
        assert torch.equal(K.int_softmax(x1, s)[0], softmax_ref(x1, s))
        y1 = K.int_softmax(x1, s)[0]
        assert int(y1.min()) == int(y1.max()) and int(y1[0, 0]) in (255, 256)
        n256 += int(y1[0, 0]) == 256
        assert int(K.int_softmax_int(x1, K.softmax_constants(s), saturate_output=True).max()) == 255
    assert n256 > 0                # 256 does occur: the output needs 9 bits (as the reference)


def test_softmax_lengths_match_reference_on_truncated_rows():
    rng = random.Random(13)
    gen = torch.Generator().manual_seed(13)
    for _ in range(6):
        s = short_scale(rng, 1e-4, 5e-2)
        b, h, t = 3, 2, 24
        x = rand_int(gen, -int(10 / s), int(10 / s) + 1, (b, h, t))
        lengths = rand_int(gen, 1, t + 1, (b, h))
        lengths[0, 0] = 1
        lengths[1, 1] = t
        y, _ = K.int_softmax(x, s, lengths=lengths)
        for i in range(b):
            for j in range(h):
                n = int(lengths[i, j])
                assert torch.equal(y[i, j, :n], softmax_ref(x[i, j, :n], s))
                assert not bool(y[i, j, n:].any())
        # Garbage past the length (even huge scores) does not leak in.
        x2 = x.clone()
        x2[..., t - 1] = 2 ** 20
        lengths2 = torch.clamp(lengths, max=t - 1)
        assert torch.equal(K.int_softmax(x2, s, lengths=lengths2)[0],
                           K.int_softmax(x, s, lengths=lengths2)[0])
    with pytest.raises(ValueError):
        K.int_softmax(x, s, lengths=torch.zeros(b, h, dtype=I64))
    with pytest.raises(ValueError):
        K.int_softmax(x, s, lengths=torch.full((b, h), t + 1))


def test_softmax_properties():
    """Row sums, monotonicity within a row, shift invariance, accuracy against float softmax."""
    rng = random.Random(14)
    gen = torch.Generator().manual_seed(14)
    worst = 0.0
    for _ in range(10):
        s = short_scale(rng, 1e-4, 5e-2)
        t = rng.choice([2, 8, 64, 200])
        x = rand_int(gen, -int(8 / s), int(8 / s) + 1, (64, t))
        y, _ = K.int_softmax(x, s)
        total = y.sum(-1)
        # Each output is floored and f = floor(2**32/sum) is floored: 256 - t/256 - t < sum <= 256.
        assert bool((total <= 256).all()) and bool((total > 256 - t - t / 256).all())
        if t <= 8:
            assert bool((total >= 256 - 8).all())
        # Larger score, larger or equal probability (i-exp is monotone, floors keep order).
        order = torch.argsort(x, dim=-1)
        ys = torch.gather(y, -1, order)
        assert bool((ys[:, 1:] >= ys[:, :-1]).all())
        # Adding a constant to a row changes nothing.
        assert torch.equal(K.int_softmax(x + 12345, s)[0], y)
        ref = torch.softmax(x.to(F64) * s, dim=-1)
        err = (y.to(F64) / 256 - ref).abs().max().item()
        worst = max(worst, err)
    print(f"\nint softmax vs float softmax: max abs error {worst:.5f} (1 LSB = {1 / 256:.5f})")
    assert worst < 3 / 256


def test_softmax_exp16_is_the_documented_requantization():
    """``int_exp_int`` equals the reference's ``int_exp``, and the shift form equals
    ``requantize(poly * 2**(30 - z))`` in big ints."""
    rng = random.Random(15)
    for _ in range(6):
        s = short_scale(rng, 1e-4, 5e-2)
        k = K.softmax_constants(s)
        assert 2 ** 14 <= k["m"] < 2 ** 15 and k["e"] > K.EXP_N
        d = torch.arange(31 * k["x0"] - 5, 1)
        poly, z = K.int_exp_int(d, k["x0"], k["b"], k["c"])
        # i-exp itself against the reference's IntSoftmax.int_exp (exact: poly < 2**53, times a
        # power of two), including the clamp at 30*x0 where the 16-bit value is already 0.
        ref_exp, _ = qm.IntSoftmax(8, quant_mode=True).int_exp(
            d.to(F64), torch.tensor(s, dtype=F64))
        assert [int(v) for v in ref_exp.tolist()] == [
            p * 2 ** (K.EXP_N - zz) for p, zz in zip(poly.tolist(), z.tolist())]
        assert int(z.max()) == K.EXP_ZMAX and int(z.min()) == 0
        sh = k["e"] - K.EXP_N + z
        e16 = ((poly * k["m"] + (1 << (sh - 1))) >> sh).tolist()
        expect = [(p * 2 ** (30 - zz) * k["m"] + 2 ** (k["e"] - 1)) >> k["e"]
                  for p, zz in zip(poly.tolist(), z.tolist())]
        assert e16 == expect
        assert e16[-1] in range(2 ** 15 - 64, 2 ** 15 + 64)     # exp(0) ~ 2**15
        assert max(e16) < 2 ** 16
        assert all(a <= b for a, b in zip(e16, e16[1:]))        # monotone in x


def test_softmax_small_scales_keep_full_precision_or_are_rejected():
    """Score scales down to ~2.8e-7 keep a 15-bit exp multiplier; finer ones raise ValueError."""
    for s in [1e-4, 2e-5, 1e-5, 1e-6, 3e-7]:
        k = K.softmax_constants(s)
        assert k["m"].bit_length() == 15, s
        x = torch.tensor([[0, 0, -int(1 / s)]], dtype=I64)
        y, _ = K.int_softmax(x, s)
        want = [256 / (2 + math.exp(-1))] * 2 + [256 * math.exp(-1) / (2 + math.exp(-1))]
        assert all(abs(int(a) - b) <= 3 for a, b in zip(y[0], want)), (s, y)
    for s in [5e-8, 1e-7]:
        with pytest.raises(ValueError, match="too small"):
            K.softmax_constants(s)


def test_gelu_overflow_is_rejected():
    """An input scale far too fine for int32 inputs would overflow int64: it raises instead."""
    with pytest.raises(ValueError, match="overflow"):
        K.int_gelu(torch.tensor([2 ** 31 - 1], dtype=I64), 2.0 ** -22)
    y, _ = K.int_gelu(torch.tensor([2 ** 15 - 1], dtype=I64), 2.0 ** -22)   # int16 is fine


# -- LayerNorm ------------------------------------------------------------------------------------

def _ln_case(gen, shape, kind):
    lo, hi = K.int_range(K.RESIDUAL_BITS)
    if kind == "full":
        x = rand_int(gen, lo, hi + 1, shape)
    elif kind == "small":
        x = rand_int(gen, -300, 301, shape)
    elif kind == "offset":
        x = rand_int(gen, -2 ** 12, 2 ** 12, shape)
        x += rand_int(gen, -2 ** 20, 2 ** 20, shape[:-1] + (1,))
    else:  # "outlier": one large channel, as in real BERT residuals
        x = rand_int(gen, -2 ** 10, 2 ** 10, shape)
        x[..., 7] = hi
    return torch.clamp(x, lo, hi)


@pytest.mark.parametrize("shift", [0, 3])
def test_layernorm_matches_reference(shift):
    rng = random.Random(21 + shift)
    gen = torch.Generator().manual_seed(21 + shift)
    n = 384
    total = bad = 0
    for kind in ["full", "small", "offset", "outlier"]:
        s = short_scale(rng, 1e-4, 1e-2)
        w = torch.empty(n, dtype=F64).uniform_(0.2, 2.0, generator=gen)
        w *= torch.where(torch.rand(n, generator=gen) < 0.1, -1.0, 1.0).to(F64)
        b = torch.empty(n, dtype=F64).normal_(0, 0.5, generator=gen)
        x = _ln_case(gen, (2, 16, n), kind)
        out, s_out = layernorm_ref(x, s, w, b, shift)
        y, s_ours = K.int_layernorm(x, w, b, shift=shift)
        assert torch.equal(s_out, s_ours)
        y_ref = torch.round(out / s_out).to(I64)
        assert torch.equal(out, y_ref.to(F64) * s_out)          # recovery is exact
        bad += int((y_ref != y).sum())
        total += y.numel()
        check_exact_output(out, s_out, y, s_ours)
    print(f"\nIntLayerNorm (shift={shift}) float64 reference: {bad}/{total} mismatches")
    assert bad == 0


def test_layernorm_mean_ties_and_constant_rows():
    gen = torch.Generator().manual_seed(23)
    n = 64
    w = torch.ones(n, dtype=F64)
    b = torch.empty(n, dtype=F64).normal_(0, 0.3, generator=gen)
    s = 2.0 ** -10
    x = rand_int(gen, -1000, 1000, (1, 8, n))
    # Make sum(x)/N = k + 1/2 (the mean ties), for even and odd k.
    for r in range(8):
        tot = int(x[0, r].sum())
        x[0, r, 0] += n // 2 - tot % n
        if (int(x[0, r].sum()) // n) % 2 != r % 2:
            x[0, r, 0] += n
    sums = x.sum(-1).reshape(-1).tolist()
    assert all(v % n == n // 2 for v in sums) and {(v // n) % 2 for v in sums} == {0, 1}
    out, s_out = layernorm_ref(x, s, w, b, 0)
    y, s_ours = K.int_layernorm(x, w, b)
    check_exact_output(out, s_out, y, s_ours)
    # Constant rows: the reference divides 0 by std = 0 and returns NaN; ours returns beta.
    c = torch.full((1, 2, n), 77, dtype=I64)
    out_c, _ = layernorm_ref(c, s, w, b, 0)
    assert bool(torch.isnan(out_c).all())
    y_c, _ = K.int_layernorm(c, w, b)
    bias_int = torch.floor((b / w) / (math.sqrt(n) / 2 ** 30)).to(I64)
    assert torch.equal(y_c, bias_int.expand(1, 2, n))


def test_layernorm_float32_dim_sqrt():
    """The reference's default sqrt(N) is float32: its scale and beta integer then differ.

    For N = 384 (not a square) the scale differs by a relative ~1e-8 and the bias integers at a
    measured rate; for a square N (256) everything is identical.
    """
    gen = torch.Generator().manual_seed(24)
    for n, square in [(384, False), (256, True)]:
        w = torch.empty(n, dtype=F64).uniform_(0.2, 2.0, generator=gen)
        b = torch.empty(n, dtype=F64).normal_(0, 0.5, generator=gen)
        x = _ln_case(gen, (2, 8, n), "full")
        s = 2.0 ** -12
        out, s_out = layernorm_ref(x, s, w, b, 0, float64_dim_sqrt=False)
        y, s_ours = K.int_layernorm(x, w, b)
        y_ref = torch.round(out / s_out).to(I64)
        rate = (y_ref != y).double().mean().item()
        rel = ((s_out - s_ours) / s_ours).abs().max().item()
        print(f"\nIntLayerNorm float32 sqrt(N={n}): y mismatch rate {rate:.4f}, "
              f"max |diff| {int((y_ref - y).abs().max())}, scale rel diff {rel:.2e}")
        if square:
            assert rate == 0 and rel == 0
        else:
            # beta's integer floor((beta/gamma) / S) moves with S: |diff| <= |bias_int|*rel + 1
            bias_int = torch.floor((b / w) / (math.sqrt(n) / 2 ** 30))
            assert 0 < rel < 2 ** -24
            assert bool(((y_ref - y).abs() <= bias_int.abs() * 2 * rel + 1).all()) and rate > 0


def test_layernorm_properties():
    """Range, shift invariance, and accuracy against float normalization.

    Error model of ``layernorm_int``: isqrt floors std (relative <= 1/std), the reciprocal
    ``floor(2**(31+F)/std)`` (relative <= std/2**(31+F)), the rounded mean (<= 0.5/std relative to
    the row) and the final floor (<= sqrt(N)/2**30). With F = 0 (I-BERT) the reciprocal dominates
    for 22-bit rows: ~1% error; F = LN_FRAC_BITS removes it.
    """
    gen = torch.Generator().manual_seed(25)
    n = 384
    worst = {}
    n_ties = 0
    for kind in ["full", "small", "offset", "outlier"]:
        x = _ln_case(gen, (2, 16, n), kind)
        xf = x.to(F64)
        yf = xf - xf.mean(-1, keepdim=True)
        std = yf.pow(2).sum(-1, keepdim=True).sqrt()          # integer-domain std (no 1/N)
        ref = yf / yf.pow(2).mean(-1, keepdim=True).sqrt()
        errs = {}
        for fb in [0, K.LN_FRAC_BITS]:
            o = K.layernorm_int(x, frac_bits=fb)
            assert int(o.abs().max()) <= 2 ** 30
            err = (o.to(F64) * math.sqrt(n) / 2 ** 30 - ref).abs()
            bound = (ref.abs() * (1 / std + std / 2 ** (31 + fb)) * 1.01
                     + math.sqrt(n) * (0.5 / std + 2 / 2 ** 30))
            assert bool((err <= bound).all()), (kind, fb)
            errs[fb] = float(err.max())
        worst[kind] = errs
        if kind == "full":
            assert errs[K.LN_FRAC_BITS] < errs[0] / 100
        # Adding an even constant to a row changes nothing (the mean is an integer); an odd one
        # can change rows whose mean is a tie (k + 1/2: half-to-even flips), and only those.
        base = K.layernorm_int(x)
        assert torch.equal(K.layernorm_int(x + 1000), base)
        tie = (x.sum(-1) % n) == n // 2
        same = (K.layernorm_int(x + 999) == base).all(-1)
        assert bool((same | tie).all())
        n_ties += int(tie.sum())
    assert n_ties > 0
    print(f"\nlayernorm_int max abs error (normalized units) by frac_bits: {worst}")


# -- integer square root --------------------------------------------------------------------------

def test_isqrt_exact():
    rng = random.Random(31)
    vals = [rng.randrange(0, 2 ** 62) for _ in range(3000)]
    vals += [rng.randrange(0, 2 ** rng.randrange(1, 63)) for _ in range(3000)]
    ks = [rng.randrange(1, 2 ** 31) for _ in range(1500)] + list(range(1, 70)) + [2 ** 31 - 1]
    ks += [2 ** j for j in range(31)] + [2 ** j - 1 for j in range(1, 32)]
    for k in ks:
        vals += [v for v in (k * k - 1, k * k, k * k + 1) if 0 <= v < 2 ** 62]
    vals += [0, 1, 2, 3, 2 ** 62 - 1]
    got = K.isqrt(torch.tensor(vals, dtype=I64)).tolist()
    assert got == [math.isqrt(v) for v in vals]
    with pytest.raises(ValueError):
        K.isqrt(torch.tensor([-1]))
    with pytest.raises(ValueError):
        K.isqrt(torch.tensor([2 ** 62]))
    with pytest.raises(TypeError):
        K.isqrt(torch.tensor([4.0]))


def test_float_sqrt_of_reference_is_not_exact():
    """Where the reference's floor(sqrt(float(n))) goes wrong, and our isqrt does not."""
    rng = random.Random(32)
    gen = torch.Generator().manual_seed(32)
    n = torch.randint(2 ** 20, 2 ** 32, (40000,), generator=gen, dtype=I64)
    exact = K.isqrt(n)
    f32 = torch.floor(torch.sqrt(n.to(torch.float32))).to(I64)
    rate32 = (f32 != exact).double().mean().item()
    ks = torch.tensor([rng.randrange(2 ** 26 + 1, 2 ** 31) for _ in range(2000)], dtype=I64)
    km1 = ks * ks - 1
    f64 = torch.floor(torch.sqrt(km1.to(F64))).to(I64)
    rate64 = (f64 != ks - 1).double().mean().item()
    small = torch.tensor([rng.randrange(2, 2 ** 26) for _ in range(2000)], dtype=I64)
    small = small * small - 1
    ok64 = torch.equal(torch.floor(torch.sqrt(small.to(F64))).to(I64), K.isqrt(small))
    print(f"\nfloor(sqrt(float32 n)) wrong for {rate32:.4%} of n in [2**20, 2**32); "
          f"float64 wrong for {rate64:.1%} of k**2-1, k > 2**26")
    assert 0.0005 < rate32 < 0.005
    assert rate64 > 0.9 and ok64
    assert torch.equal(K.isqrt(km1), ks - 1)


# -- requantization -------------------------------------------------------------------------------

def _bf(ratios, max_bit):
    m, e = qm.batch_frexp(torch.tensor(ratios, dtype=F64), max_bit=max_bit)
    return [int(v) for v in m.tolist()], [int(v) for v in e.tolist()]


@pytest.mark.parametrize("m_bits", [K.REQ_M_BITS, 32])
def test_requant_params_match_batch_frexp(m_bits):
    rng = random.Random(41 + m_bits)
    frac = m_bits - 1
    ratios = [math.exp(rng.uniform(math.log(2.0 ** (frac - 62)), math.log(2.0 ** (frac - 2))))
              for _ in range(3000)]
    ratios = [r if rng.random() < 0.7 else -r for r in ratios]
    # ties of the mantissa rounding (mant * 2**frac = j + 1/2) and the round-up overflow
    for _ in range(300):
        j = rng.randrange(2 ** (frac - 1), 2 ** frac)
        p = rng.randrange(-30, 0)
        ratios.append(math.ldexp(2 * j + 1, p - 1 - frac))
        ratios.append(-math.ldexp(2 * j + 1, p - 1 - frac))
    for p in range(-30, 0):
        ratios.append(math.ldexp(2 ** (frac + 1) - 1, p - 1 - frac))   # rounds up to 2**frac
        ratios.append(math.ldexp(1.0 - 2.0 ** -52, p))
    m, e = K.requant_params(torch.tensor(ratios, dtype=F64), m_bits=m_bits)
    m, e = m.tolist(), e.tolist()
    bm, be = _bf(ratios, frac)
    overflow = ties = 0
    for r, mi, ei, bmi, bei in zip(ratios, m, e, bm, be):
        assert 2 ** (frac - 1) <= abs(mi) < 2 ** frac and 1 <= ei <= 62
        assert (mi < 0) == (r < 0)
        if abs(bmi) == 2 ** frac:                       # batch_frexp's 2**31-style mantissa
            overflow += 1
            assert (mi, ei) == (bmi // 2, bei - 1)
        else:
            assert (mi, ei) == (bmi, bei)
        # rounding: to nearest, ties away from zero
        exact = abs(r) * 2.0 ** ei                      # exact (power-of-two scaling)
        assert abs(abs(mi) - exact) <= 0.5
        if exact - math.floor(exact) == 0.5:
            ties += 1
            assert abs(mi) == math.floor(exact) + 1
    assert overflow >= 30 and ties >= 600
    assert K.requant_params(0.0)[0].item() == 0 and K.requant_params(0.0)[1].item() == 1


def test_requant_params_limits():
    # e would be 0: the ratio does not fit a REQ_M_BITS multiplier with a right shift.
    with pytest.raises(ValueError):
        K.requant_params(2.0 ** 14)
    with pytest.raises(ValueError):
        K.requant_params(float("nan"))
    m, e = K.requant_params(2.0 ** 14 - 1)
    assert int(m) * 2.0 ** -int(e) == 2.0 ** 14 - 1 and int(e) == 1
    # Tiny ratios: e capped at max_shift, m keeps the remaining bits (rounded again).
    for r in [2.0 ** -50, 3.3e-16, 1e-17]:
        m, e = K.requant_params(r)
        assert int(e) == 62
        assert abs(int(m) - r * 2.0 ** 62) <= 0.5 + 2.0 ** -14 * r * 2.0 ** 62


def test_requantize_matches_python_ints():
    rng = random.Random(51)
    gen = torch.Generator().manual_seed(51)
    n = 4000
    x = rand_int(gen, -2 ** 31, 2 ** 31, (n,))
    m = rand_int(gen, -2 ** 15 + 1, 2 ** 15, (n,))
    e = rand_int(gen, 1, 63, (n,))
    bias = rand_int(gen, -2 ** 40, 2 ** 40, (n,))
    # ties: x*m + bias = (2j+1) * 2**(e-1) -> round half up gives j+1
    for i in range(0, n, 4):
        ei = rng.randrange(1, 41)
        e[i] = ei
        j = rng.randrange(-2 ** 20, 2 ** 20)
        bias[i] = (2 * j + 1) * 2 ** (ei - 1) - int(x[i]) * int(m[i])
    bias = torch.clamp(bias, -2 ** 62, 2 ** 62)
    xs, ms, es, bs = x.tolist(), m.tolist(), e.tolist(), bias.tolist()
    exact = [(a * b + c + 2 ** (d - 1)) // 2 ** d for a, b, c, d in zip(xs, ms, bs, es)]
    assert K.requantize(x, m, e, bias=bias).tolist() == exact
    for bits, signed in [(8, True), (16, True), (22, True), (8, False), (32, False)]:
        lo, hi = K.int_range(bits, signed)
        got = K.requantize(x, m, e, bits=bits, bias=bias, signed=signed).tolist()
        assert got == [min(max(v, lo), hi) for v in exact]
    assert any(v > 127 for v in exact) and any(v < -128 for v in exact)
    # ties round up (toward +inf), also for negatives
    assert K.requantize(torch.tensor([5, -5, -3, 3, -1, 1]), 1, 1).tolist() == [3, -2, -1, 2, 0, 1]
    # per-channel m, e along the last axis
    xc = rand_int(gen, -2 ** 20, 2 ** 20, (5, 6))
    mc, ec = rand_int(gen, 2 ** 14, 2 ** 15, (6,)), rand_int(gen, 10, 40, (6,))
    got = K.requantize(xc, mc, ec, bits=8)
    exp = [[max(-128, min(127, (a * mm + 2 ** (ee - 1)) >> ee)) for a, mm, ee in
            zip(row, mc.tolist(), ec.tolist())] for row in xc.tolist()]
    assert got.tolist() == exp
    for bad_e in [0, 63]:
        with pytest.raises(ValueError):
            K.requantize(x, m, bad_e)
    with pytest.raises(TypeError):
        K.requantize(x.to(F64), m, e)


def test_requantize_vs_fixed_point_mul():
    """Against the reference's ``FixedPointMul`` (31-bit batch_frexp, round half to even).

    With (m, e) from ``requant_params(ratio, m_bits=32)`` the two agree everywhere except on exact
    ties, where ours rounds up and the reference rounds to even.
    """
    gen = torch.Generator().manual_seed(52)
    rng = random.Random(52)
    c = 48
    z_scale = torch.tensor([0.0123], dtype=torch.float32)
    cases = [short_scales(rng, c, 1e-4, 5e-3),                       # random ratios
             torch.full((c,), 0.375 * float(z_scale), dtype=F64)]    # ratio 3/8: many ties
    total_ties = 0
    for pre_scale in cases:
        z = rand_int(gen, -2 ** 21, 2 ** 21, (4, 16, c))
        pre_act = z.to(F64) * pre_scale
        ref = qm.FixedPointMul.apply(pre_act, pre_scale, 22, z_scale).to(F64)
        ratio = pre_scale / float(z_scale)
        m, e = K.requant_params(ratio, m_bits=32)
        ours = K.requantize(z, m, e, bits=22)
        num = z * m
        tie = (num % (2 ** e)) == 2 ** (e - 1)
        assert not bool((ours.abs() >= 2 ** 21 - 1).any())
        assert torch.equal(ours[~tie].to(F64), ref[~tie])
        assert torch.equal(ours[tie].to(F64) - ref[tie], (ours[tie] % 2).to(F64))
        total_ties += int(tie.sum())
    assert total_ties > 100


def test_matmul_int_is_exact():
    """The float64 path of matmul_int equals the int64 product bit for bit; past 2**53 it falls
    back to int64."""
    gen = torch.Generator().manual_seed(21)
    a = rand_int(gen, -128, 128, (37, 1536))
    b = rand_int(gen, -128, 128, (1536, 29))
    assert torch.equal(K.matmul_int(a, b), a @ b)
    p = rand_int(gen, 0, 1 << 16, (4, 5, 256))
    v = rand_int(gen, -128, 128, (4, 256, 8))
    assert torch.equal(K.matmul_int(p, v), p @ v)
    big = torch.full((2, 4), 1 << 40, dtype=I64)
    assert torch.equal(K.matmul_int(big, big.T), big @ big.T)     # 2**82 wraps like int64
    assert K.matmul_int(a, b).dtype == I64


def test_bit_length():
    n = torch.tensor([0, 1, 2, 3, 255, 256, (1 << 40) + 3], dtype=I64)
    assert K.bit_length(n).tolist() == [int(v).bit_length() for v in n.tolist()]


def test_softmax_wide_probabilities():
    """prob_bits > 8: the same formula with more output bits, within a few LSB of float."""
    gen = torch.Generator().manual_seed(22)
    s = 2e-3
    k = K.softmax_constants(s)
    x = rand_int(gen, -int(6 / s), int(6 / s) + 1, (32, 200))
    y16 = K.int_softmax_int(x, k, output_bits=16, saturate_output=True)
    y8 = K.int_softmax_int(x, k, output_bits=8, saturate_output=True)
    assert int(y16.max()) < 1 << 16
    assert torch.equal(y16 >> 8, y8)         # the top 8 bits are the uint8 probabilities
    ref = torch.softmax(x.to(F64) * s, dim=-1)
    err16 = float((y16.to(F64) / 2 ** 16 - ref).abs().max())
    err8 = float((y8.to(F64) / 2 ** 8 - ref).abs().max())
    # left: the i-exp polynomial and f = floor(2**32 / sum) (~9 bits for 200-key rows)
    assert err16 < 2 ** -8 / 8 and err16 < err8 / 4, (err16, err8)


def test_softmax_row_scale():
    """Per-row power-of-two scale: r = max(bitlen(sum) - 16, 0), the row maximum keeps 8 bits,
    r = 0 is the fixed-scale softmax, and y * 2**-(8 + r) tracks the float softmax."""
    gen = torch.Generator().manual_seed(23)
    s = 2e-3
    k = K.softmax_constants(s)
    for keys in (1, 3, 40, 256):
        x = rand_int(gen, -int(3 / s), int(3 / s) + 1, (16, keys))
        y, r = K.int_softmax_row_int(x, k)
        fixed = K.int_softmax_int(x, k, saturate_output=True)
        assert r.shape == (16, 1) and int(y.max()) <= 255
        if keys == 1:
            assert torch.equal(r, torch.zeros_like(r)) and torch.equal(y, fixed)
        else:
            assert bool((y.amax(-1, keepdim=True)[r > 0] >= 128).all())
            assert torch.equal(y[(r == 0).squeeze(-1)], fixed[(r == 0).squeeze(-1)])
        ref = torch.softmax(x.to(F64) * s, dim=-1)
        got = y.to(F64) * torch.pow(2.0, -(8 + r).to(F64))
        assert (got - ref).abs().max() <= 2.0 ** -8 + 1e-3
