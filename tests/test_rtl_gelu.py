"""IntGELU RTL against bertcore.quant.kernels.int_gelu_int: Amaranth sim, cocotb, lint."""

import random

import pytest
import torch
from amaranth.hdl import Fragment, signed

from bertcore.quant.kernels import gelu_constants, int_gelu_int, int_range
from bertcore.rtl.common import MULTIPLIER_STYLES, pack
from bertcore.rtl.gelu import IntGELU
from rtl_sim import simulate, stream_get, stream_latency, stream_put
from sim.models import ECP5, MULT18X18D
from sim.runner import lint, run_cocotb

#: Input scales of the 16-bit GELU input in the encoder (FFN1 requantized to int16).
SCALES = (4e-5, 1e-4, 2.5e-4, 5e-4, 1e-3)


def constant_sets(dut, rng, randoms=3):
    """Realistic constants from gelu_constants, the port extremes, then random port values."""
    sets = []
    for scale in SCALES:                        # the same real input ranges at other widths
        k = gelu_constants(scale * 2.0 ** (16 - dut.in_width))
        sets.append({name: int(k[name]) for name in ("b", "c", "q1")})
    b_lo, b_hi = int_range(dut.b_width)
    c_lo, c_hi = int_range(dut.c_width)
    q_lo, q_hi = int_range(dut.q1_width)
    sets.append({"b": b_lo, "c": c_lo, "q1": q_lo})      # largest |t|, most negative erf
    sets.append({"b": b_lo, "c": c_hi, "q1": q_hi})
    sets.append({"b": b_hi, "c": c_hi, "q1": q_lo})      # b > 0: t = 0 everywhere
    sets.append({"b": 0, "c": 0, "q1": 0})
    for _ in range(randoms):
        sets.append({"b": rng.randint(b_lo, b_hi), "c": rng.randint(c_lo, c_hi),
                     "q1": rng.randint(q_lo, q_hi)})
    for consts in sets:
        assert b_lo <= consts["b"] <= b_hi and c_lo <= consts["c"] <= c_hi
        assert q_lo <= consts["q1"] <= q_hi
    return sets


def make_inputs(dut, rng, consts, count):
    """Named corner cases (extremes, zero, the clip point -b), then random values of x."""
    lo, hi = int_range(dut.in_width)
    clip = -consts["b"]
    xs = [lo, hi, 0, 1, -1, lo + 1]
    xs += [v for d in (-1, 0, 1) for v in (clip + d, -clip + d) if lo <= v <= hi]
    while len(xs) < count:
        kind = rng.random()
        if kind < 0.6:
            xs.append(rng.randint(lo, hi))
        elif kind < 0.8 and 0 < clip:
            xs.append(max(lo, min(hi, rng.randint(-clip - 8, clip + 8))))
        else:
            xs.append(rng.randint(-64, 64))
    rng.shuffle(xs)
    xs += xs[:(-len(xs)) % dut.lanes]
    return xs


def make_beats(dut, rng, consts, count):
    xs = make_inputs(dut, rng, consts, count)
    ys = int_gelu_int(torch.tensor(xs), consts["b"], consts["c"], consts["q1"]).tolist()
    lo, hi = int_range(dut.out_width)
    assert all(lo <= y <= hi for y in ys), "output width bound violated by the reference"
    beats, outs = [], []
    for start in range(0, len(xs), dut.lanes):
        last = int(rng.random() < 0.25)
        beats.append({"data": xs[start:start + dut.lanes], "last": last})
        outs.append({"data": ys[start:start + dut.lanes], "last": last})
    return beats, outs


def run_sets(dut, sets, stall, name, stall_out=None):
    """Amaranth sim: for each constant set, stream the beats through with random stalls."""
    got = [[] for _ in sets]

    async def producer(ctx):
        rng = random.Random(1)
        for index, (consts, beats, _) in enumerate(sets):
            ctx.set(dut.b, consts["b"])
            ctx.set(dut.c, consts["c"])
            ctx.set(dut.q1, consts["q1"])
            await ctx.tick().repeat(2)
            await stream_put(ctx, dut.i_stream, beats, rng=rng, stall=stall)
            while len(got[index]) < len(beats):                # drain before the next set
                await ctx.tick()

    async def consumer(ctx):
        rng = random.Random(2)
        for index, (_, _, expected) in enumerate(sets):
            got[index] = await stream_get(ctx, dut.o_stream, len(expected), rng=rng,
                                          stall=stall if stall_out is None else stall_out)
        for _ in range(2 * dut.latency):                       # nothing extra comes out
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid)

    total = sum(len(beats) for _, beats, _ in sets)
    simulate(dut, producer, consumer, name=name, deadline=1e-8 * (20 * total + 200 * len(sets)))
    for (consts, beats, expected), out in zip(sets, got):
        for index, (g, e) in enumerate(zip(out, expected)):
            assert g == e, f"constants {consts}, beat {index}: x {beats[index]}, got {g}, want {e}"
        assert len(out) == len(expected)


@pytest.mark.parametrize("lanes, in_width, multipliers", [
    (2, 16, "dsp"), (1, 8, "dsp"), (3, 20, "dsp"),
    (2, 16, "lut"), (1, 20, "lut"),          # shift-and-add: x*v in two and in three pieces
])
def test_amaranth_sim(lanes, in_width, multipliers):
    dut = IntGELU(lanes=lanes, in_width=in_width, multipliers=multipliers)
    rng = random.Random(f"gelu-{lanes}-{in_width}")
    count = 160 if in_width == 16 else 60
    sets = []
    for consts in constant_sets(dut, rng):
        sets.append((consts, *make_beats(dut, rng, consts, count)))
    run_sets(dut, sets, 0.3, f"gelu_{lanes}x{in_width}_{multipliers}")


@pytest.mark.parametrize("stall_in, stall_out", [(0.0, 0.8), (0.8, 0.0)])
def test_backpressure(stall_in, stall_out):
    dut = IntGELU(lanes=1, in_width=16)
    rng = random.Random(f"gelu-stall-{stall_in}")
    sets = [(consts, *make_beats(dut, rng, consts, 60))
            for consts in constant_sets(dut, rng, randoms=1)[:3]]
    run_sets(dut, sets, stall_in, f"gelu_stall_{stall_in}_{stall_out}", stall_out=stall_out)


@pytest.mark.parametrize("multipliers", MULTIPLIER_STYLES)
def test_latency_and_throughput(multipliers):
    dut = IntGELU(lanes=1, in_width=16, multipliers=multipliers)
    consts = {k: int(v) for k, v in gelu_constants(1e-4).items() if k != "scale_out"}
    beats, expected = make_beats(dut, random.Random(5), consts, 24)
    result = {}

    async def bench(ctx):
        for name in ("b", "c", "q1"):
            ctx.set(getattr(dut, name), consts[name])
        await ctx.tick().repeat(2)
        result["latency"], out = await stream_latency(ctx, dut.i_stream, dut.o_stream, beats[0])
        assert out == expected[0]

    simulate(dut, bench, name=f"gelu_latency_{multipliers}", deadline=1e-6)
    assert result["latency"] == dut.latency == IntGELU.latency_for(multipliers)
    assert IntGELU.latency_for("dsp") == IntGELU.LATENCY

    dut = IntGELU(lanes=1, in_width=16, multipliers=multipliers)
    fire = []

    async def feeder(ctx):
        for name in ("b", "c", "q1"):
            ctx.set(getattr(dut, name), consts[name])
        await ctx.tick().repeat(2)
        await stream_put(ctx, dut.i_stream, beats)

    async def watcher(ctx):
        ctx.set(dut.o_stream.ready, 1)
        for cycle in range(len(beats) + 4 * dut.latency):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            if valid:
                fire.append(cycle)

    simulate(dut, feeder, watcher, name=f"gelu_throughput_{multipliers}", deadline=1e-6)
    assert len(fire) == len(beats)
    assert fire == list(range(fire[0], fire[0] + len(beats))), "not one beat per cycle"


@pytest.mark.parametrize("simulator, ecp5", [("icarus", False), ("verilator", False),
                                             ("verilator", True)])
def test_cocotb(simulator, ecp5):
    """The emitted Verilog, bit-exact under random stalls and constant sets; with ``ecp5`` as
    built for ECP5 (t*t and x*v in MULT18X18Ds with the operand and product registers inside,
    simulated with our model of the primitive)."""
    dut = IntGELU(lanes=2, in_width=16)
    rng = random.Random("gelu-cocotb")
    i_layout = dut.i_stream.payload.shape()
    o_layout = dut.o_stream.payload.shape()
    sets = []
    for consts in constant_sets(dut, rng, randoms=4):
        beats, expected = make_beats(dut, rng, consts, 240)
        sets.append({
            "b": pack(signed(dut.b_width), consts["b"]),
            "c": pack(signed(dut.c_width), consts["c"]),
            "q1": pack(signed(dut.q1_width), consts["q1"]),
            "inputs": [pack(i_layout, beat) for beat in beats],
            "expected": [pack(o_layout, beat) for beat in expected],
        })
    target = dict(platform=ECP5, models=[MULT18X18D]) if ecp5 else {}
    run_cocotb(dut, toplevel="int_gelu", test_module="tb_gelu", simulator=simulator,
               name="gelu_ecp5" if ecp5 else "gelu",
               params={"sets": sets, "latency": IntGELU.LATENCY, "seed": 11, "stall": 0.3},
               **target)


@pytest.mark.parametrize("lanes, in_width, multipliers", [(2, 16, "dsp"), (1, 16, "lut")])
def test_lint(lanes, in_width, multipliers):
    lint(IntGELU(lanes=lanes, in_width=in_width, multipliers=multipliers), toplevel="int_gelu")


def test_widths():
    dut = IntGELU(lanes=2, in_width=16)
    assert (dut.lanes, dut.in_width, dut.multipliers) == (2, 16, "dsp")
    assert (dut.b_width, dut.c_width, dut.q1_width, dut.out_width) == (17, 34, 21, 37)
    assert dut.o_stream.payload.shape()["data"].shape.elem_shape == signed(37)
    # realistic constants of 16-bit inputs fit the ports
    for scale in SCALES:
        k = gelu_constants(scale)
        for name, width in (("b", 17), ("c", 34), ("q1", 21)):
            lo, hi = int_range(width)
            assert lo <= int(k[name]) <= hi, (scale, name)
    # the output bound is reached within one bit by the extreme constants
    x = torch.tensor(int_range(16))
    ys = [int_gelu_int(x, b, c, q1).abs().max().item()
          for b in int_range(17) for c in int_range(34) for q1 in int_range(21)]
    assert max(ys).bit_length() + 1 in (dut.out_width, dut.out_width - 1)
    Fragment.get(dut, None)                                  # elaborates (and marks used)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lanes=0), ValueError, r"lanes must be a positive integer, not 0"),
    (dict(lanes=True), TypeError, r"lanes must be an integer, not True"),
    (dict(in_width=1), ValueError, r"in_width must be an integer of at least 2, not 1"),
    (dict(in_width="16"), TypeError, r"in_width must be an integer, not '16'"),
    (dict(multipliers="LUT"), ValueError, r"multipliers must be 'dsp' or 'lut', not 'LUT'"),
])
def test_bad_parameters(kwargs, error, message):
    args = dict(lanes=1, in_width=16)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        IntGELU(**args)
