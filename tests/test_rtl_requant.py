"""Requantizer RTL against bertcore.quant.kernels.requantize: Amaranth sim, cocotb, lint."""

import random

import pytest
import torch
from amaranth.hdl import Fragment, signed, unsigned
from amaranth.lib import data

from bertcore.quant.kernels import (GELU_IN_BITS, REQ_M_BITS, RESIDUAL_BITS, gelu_constants,
                                    int_gelu_int, int_range, requant_params, requantize,
                                    saturate)
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.common import MULTIPLIER_STYLES, pack, unpack
from bertcore.rtl.requant import REQ_E_BITS, Requantizer
from rtl_sim import simulate, stream_get, stream_latency, stream_put
from sim.models import ECP5, MULT18X18D
from sim.runner import lint, run_cocotb

CONFIGS = {
    # GEMM accumulators to int8, two lanes; 32-bit x splits into two 18x18 multiplies
    "gemm": dict(lanes=2, in_width=32, out_bits=8),
    # LayerNorm output with a pre-shift bias; 37-bit x needs three multiplies
    "bias": dict(lanes=2, in_width=37, out_bits=8, bias_width=32),
    # residual add of the encoder: int32 GEMM output + int8 residual, into RESIDUAL_BITS
    "residual": dict(lanes=2, in_width=32, out_bits=RESIDUAL_BITS, residual=True,
                     residual_width=8),
    # everything at once, with a narrow output that saturates often
    "full": dict(lanes=1, in_width=20, out_bits=6, bias_width=12, residual=True,
                 residual_width=14),
    # tiny input, output wider than any result (saturation never active)
    "narrow": dict(lanes=3, in_width=3, out_bits=24),
    # the encoder's GELU output requantizer with gelu_bits = 16: i-GELU's output to int16
    "gelu16": dict(lanes=2, in_width=IntGELU(lanes=1, in_width=GELU_IN_BITS).out_width,
                   out_bits=16),
    # FFN2's residual add from minilm's 16-bit-GELU accumulators (34 bits with the bias)
    "ffn2_wide": dict(lanes=2, in_width=34, out_bits=RESIDUAL_BITS, residual=True,
                      residual_width=8),
}

M_LO, M_HI = int_range(REQ_M_BITS)


def _terms(cfg):
    terms = [("x", "m", "e", cfg["in_width"])]
    if cfg.get("residual"):
        terms.append(("r", "m_r", "e_r", cfg.get("residual_width") or cfg["in_width"]))
    return terms


def _useful_shift(width, cfg):
    """A shift that maps full-scale products near the output range (not all 0, not saturated)."""
    return max(1, min(62, width + REQ_M_BITS - cfg["out_bits"]))


def _random_term(rng, width, cfg):
    lo, hi = int_range(width)
    kind = rng.random()
    if kind < 0.6:
        x = rng.randint(lo, hi)
    elif kind < 0.8:
        x = rng.randint(max(lo, -64), min(hi, 64))
    else:
        x = rng.choice([lo, hi, 0, -1, 1 if hi >= 1 else 0])
    kind = rng.random()
    if kind < 0.5:          # normalized, as requant_params gives
        m = rng.choice([-1, 1]) * rng.randint(1 << (REQ_M_BITS - 2), (1 << (REQ_M_BITS - 1)) - 1)
    elif kind < 0.9:
        m = rng.randint(M_LO, M_HI)
    else:
        m = rng.choice([M_LO, M_HI, 0, -1, 1])
    if rng.random() < 0.5:
        e = rng.randint(1, 62)
    else:
        e = max(1, min(62, _useful_shift(width, cfg) + rng.randint(-4, 4)))
    return x, m, e


def _tie_term(rng, width, bias):
    """``(x, m, e)`` with ``x*m + bias == 2**(e-1) (mod 2**e)``: a rounding tie."""
    lo, hi = int_range(width)
    e = rng.randint(1, max(1, min(width - 1, 20)))
    m = rng.randint(M_LO, M_HI) | 1                          # odd: invertible mod 2**e
    x0 = ((1 << (e - 1)) - bias) * pow(m, -1, 1 << e) % (1 << e)
    x = x0 + (rng.randint(-((x0 - lo) >> e), (hi - x0) >> e) << e)
    assert lo <= x <= hi and (x * m + bias) % (1 << e) == 1 << (e - 1)
    return x, m, e


def make_elements(cfg, rng, count):
    """Named corner cases, then seeded random elements (dicts of the lane layout)."""
    elements = []
    bias_lo, bias_hi = int_range(cfg["bias_width"]) if cfg.get("bias_width") else (0, 0)

    def element(terms, bias=0):
        elem = {}
        for (fx, fm, fe, _), (x, m, e) in zip(_terms(cfg), terms):
            elem.update({fx: x, fm: m, fe: e})
        if cfg.get("bias_width"):
            elem["bias"] = bias
        return elem

    # corners: extremes of x and m against the smallest, largest and a useful shift
    for fx, fm, fe, width in _terms(cfg):
        lo, hi = int_range(width)
        for x in sorted({lo, hi, 0, -1, min(1, hi)}):
            for m in (M_LO, M_HI, 0, -1, 1):
                for e in (1, 62, _useful_shift(width, cfg)):
                    terms = [(x, m, e) if t[0] == fx else (0, 0, 1) for t in _terms(cfg)]
                    for bias in ({bias_lo, bias_hi, 0} if fx == "x" else {0}):
                        elements.append(element(terms, bias))
    # rounding ties, each term on its own and all terms at once
    for _ in range(24):
        bias = rng.randint(bias_lo, bias_hi)
        terms = [_tie_term(rng, width, bias if fx == "x" else 0)
                 for fx, _, _, width in _terms(cfg)]
        elements.append(element(terms, bias))
    # both terms saturating the sum together
    if cfg.get("residual"):
        for sign in (1, -1):
            terms = []
            for _, _, _, width in _terms(cfg):
                lo, hi = int_range(width)
                terms.append((hi if sign > 0 else lo, M_HI, 1))
            elements.append(element(terms, bias_hi if sign > 0 else bias_lo))
    while len(elements) < count:
        bias = rng.randint(bias_lo, bias_hi)
        elements.append(element([_random_term(rng, w, cfg) for *_, w in _terms(cfg)], bias))
    rng.shuffle(elements)
    lanes = cfg["lanes"]
    elements += elements[:(-len(elements)) % lanes]            # whole beats
    return elements


def reference(cfg, elements):
    """Expected outputs from bertcore.quant.kernels, one int per element."""
    def col(name):
        return torch.tensor([elem[name] for elem in elements], dtype=torch.int64)

    bias = col("bias") if cfg.get("bias_width") else None
    if not cfg.get("residual"):
        y = requantize(col("x"), col("m"), col("e"), bits=cfg["out_bits"], bias=bias)
    else:
        y = saturate(requantize(col("x"), col("m"), col("e"), bias=bias)
                     + requantize(col("r"), col("m_r"), col("e_r")), cfg["out_bits"])
    return y.tolist()


def make_beats(cfg, rng, count):
    elements = make_elements(cfg, rng, count)
    expected = reference(cfg, elements)
    lanes = cfg["lanes"]
    beats, outs = [], []
    for start in range(0, len(elements), lanes):
        last = int(rng.random() < 0.25)
        beats.append({"data": elements[start:start + lanes], "last": last})
        outs.append({"data": expected[start:start + lanes], "last": last})
    return beats, outs


@pytest.mark.parametrize("name, stall_in, stall_out, multipliers", [
    *((name, 0.3, 0.3, "dsp") for name in CONFIGS),
    ("full", 0.0, 0.8, "dsp"),      # heavy backpressure on a full-rate input
    ("full", 0.8, 0.0, "dsp"),      # sparse input
    # shift-and-add multipliers: three 18x18 pieces (bias), signed and unsigned pieces (full)
    ("bias", 0.3, 0.3, "lut"),
    ("full", 0.3, 0.3, "lut"),
])
def test_amaranth_sim(name, stall_in, stall_out, multipliers):
    cfg = CONFIGS[name]
    dut = Requantizer(**cfg, multipliers=multipliers)
    rng = random.Random(f"requant-{name}")
    beats, expected = make_beats(cfg, rng, 360 if stall_in == stall_out else 120)
    _check_stream(dut, beats, expected, stall_in, stall_out, rng,
                  f"requant_{name}_{stall_in}_{stall_out}_{multipliers}")


def test_gelu16_output_saturates_at_both_ends():
    """The encoder's GELU output requantizer with ``gelu_bits = 16`` on real i-GELU outputs
    (every int16 input at a realistic scale, per-channel ``(m, e)`` as ``quantize`` derives
    them): a channel scale so fine that GELU's minimum (-0.17) and large inputs saturate at
    -2**15 and 2**15 - 1, one that saturates only at the top, and one that never does."""
    cfg = CONFIGS["gelu16"]
    dut = Requantizer(**cfg)
    k = gelu_constants(2.5e-4)                        # int16 inputs span [-8.2, 8.2]
    xs = torch.arange(-(1 << 15), 1 << 15, 7)
    g = int_gelu_int(xs, int(k["b"]), int(k["c"]), int(k["q1"]))
    elements, expected = [], []
    for s_h in (4e-6, 1e-4, 8.2 / 32767):             # output scales of a channel
        m, e = (int(v) for v in requant_params(torch.tensor(float(k["scale_out"]) / s_h)))
        y = requantize(g, m, e, bits=16)
        elements += [{"x": int(x), "m": m, "e": e} for x in g]
        expected += y.tolist()
        if s_h == 4e-6:
            assert int(y.min()) == -(1 << 15) and int(y.max()) == (1 << 15) - 1
    elements += elements[:len(elements) % 2]
    expected += expected[:len(expected) % 2]
    beats = [{"data": elements[i:i + 2], "last": 0} for i in range(0, len(elements), 2)]
    outs = [{"data": expected[i:i + 2], "last": 0} for i in range(0, len(expected), 2)]
    _check_stream(dut, beats, outs, 0.1, 0.1, random.Random(3), "requant_gelu16_saturation")


def _check_stream(dut, beats, expected, stall_in, stall_out, rng, name):
    """Amaranth sim: ``beats`` through ``dut`` with random stalls give ``expected``."""
    got = []

    async def producer(ctx):
        await stream_put(ctx, dut.i_stream, beats, rng=random.Random(1), stall=stall_in)

    async def consumer(ctx):
        got.extend(await stream_get(ctx, dut.o_stream, len(expected),
                                    rng=random.Random(2), stall=stall_out))
        for _ in range(2 * Requantizer.LATENCY):            # nothing extra comes out
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid)

    simulate(dut, producer, consumer, name=name, deadline=1e-8 * 20 * len(beats))
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"beat {index}: input {beats[index]}, got {g}, expected {e}"
    assert len(got) == len(expected)


@pytest.mark.parametrize("multipliers", MULTIPLIER_STYLES)
def test_latency_and_throughput(multipliers):
    cfg = CONFIGS["full"]
    dut = Requantizer(**cfg, multipliers=multipliers)
    beats, expected = make_beats(cfg, random.Random(3), 40)
    beats, expected = beats[:32], expected[:32]
    got = []
    cycles = {}

    async def feeder(ctx):
        await ctx.tick().repeat(Requantizer.LATENCY + 4)
        await stream_put(ctx, dut.i_stream, beats)

    async def watcher(ctx):
        await ctx.tick().repeat(Requantizer.LATENCY + 4)
        ctx.set(dut.o_stream.ready, 1)
        fire = []
        for cycle in range(len(beats) + 3 * Requantizer.LATENCY):
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload.as_value())
            if valid:
                fire.append(cycle)
                got.append(payload)
        cycles["fire"] = fire

    async def first(ctx):
        latency, out = await stream_latency(ctx, dut.i_stream, dut.o_stream, beats[0])
        cycles["latency"] = latency
        assert out == expected[0]

    simulate(dut, first, name=f"requant_latency_{multipliers}", deadline=1e-6)
    assert cycles["latency"] == Requantizer.LATENCY
    dut = Requantizer(**cfg, multipliers=multipliers)
    simulate(dut, feeder, watcher, name=f"requant_throughput_{multipliers}", deadline=1e-6)
    fire = cycles["fire"]
    assert len(fire) == len(beats)
    assert fire == list(range(fire[0], fire[0] + len(beats))), "not one beat per cycle"
    assert [unpack(dut.o_stream.payload.shape(), raw) for raw in got] == expected


@pytest.mark.parametrize("simulator, ecp5", [("icarus", False), ("verilator", False),
                                             ("verilator", True)])
def test_cocotb(simulator, ecp5):
    """The emitted Verilog, bit-exact under random stalls; with ``ecp5`` as built for ECP5
    (every partial product a MULT18X18D with the operand and product registers inside,
    simulated with our model of the primitive)."""
    cfg = dict(lanes=2, in_width=32, out_bits=RESIDUAL_BITS - 8, bias_width=20, residual=True,
               residual_width=12)
    dut = Requantizer(**cfg)
    i_layout = dut.i_stream.payload.shape()
    o_layout = dut.o_stream.payload.shape()
    beats, expected = make_beats(cfg, random.Random("requant-cocotb"), 1200)
    target = dict(platform=ECP5, models=[MULT18X18D]) if ecp5 else {}
    run_cocotb(dut, toplevel="requantizer", test_module="tb_requant", simulator=simulator,
               name="requant_ecp5" if ecp5 else "requant", params={
                   "inputs": [pack(i_layout, beat) for beat in beats],
                   "expected": [pack(o_layout, beat) for beat in expected],
                   "probe": pack(i_layout, beats[0]),
                   "latency": Requantizer.LATENCY,
                   "seed": 7, "stall": 0.3,
               }, **target)


@pytest.mark.parametrize("name, multipliers", [("gemm", "dsp"), ("full", "dsp"), ("full", "lut")])
def test_lint(name, multipliers):
    lint(Requantizer(**CONFIGS[name], multipliers=multipliers), toplevel="requantizer")


def test_layout():
    dut = Requantizer(lanes=2, in_width=24, out_bits=8, bias_width=10, residual=True)
    assert {name: field.shape for name, field in dut.lane_layout} == {
        "x": signed(24), "m": signed(REQ_M_BITS), "e": unsigned(REQ_E_BITS),
        "bias": signed(10),
        "r": signed(24), "m_r": signed(REQ_M_BITS), "e_r": unsigned(REQ_E_BITS),
    }
    assert (dut.lanes, dut.in_width, dut.out_bits, dut.bias_width, dut.residual,
            dut.residual_width, dut.multipliers) == (2, 24, 8, 10, True, 24, "dsp")
    out = dut.o_stream.payload.shape()
    assert out["data"].shape == data.ArrayLayout(signed(8), 2)
    Fragment.get(dut, None)                                  # elaborates (and marks used)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lanes=0), ValueError, r"lanes must be a positive integer, not 0"),
    (dict(lanes="2"), TypeError, r"lanes must be an integer, not '2'"),
    (dict(in_width=0), ValueError, r"in_width must be a positive integer, not 0"),
    (dict(out_bits=-1), ValueError, r"out_bits must be a positive integer, not -1"),
    (dict(out_bits=8.0), TypeError, r"out_bits must be an integer, not 8.0"),
    (dict(bias_width=-1), ValueError, r"bias_width must be a non-negative integer, not -1"),
    (dict(residual=1), TypeError, r"residual must be a bool, not 1"),
    (dict(residual_width=8), ValueError, r"residual_width must be None without residual, not 8"),
    (dict(residual=True, residual_width=0), ValueError,
     r"residual_width must be a positive integer, not 0"),
    (dict(multipliers="fabric"), ValueError, r"multipliers must be 'dsp' or 'lut', not 'fabric'"),
    (dict(multipliers=None), ValueError, r"multipliers must be 'dsp' or 'lut', not None"),
])
def test_bad_parameters(kwargs, error, message):
    args = dict(lanes=1, in_width=8, out_bits=8)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        Requantizer(**args)
