# amaranth: UnusedElaboratable=no
"""Tests of :class:`bertcore.rtl.systolic.SystolicArray` and the GEMM tiling scheme.

Every output is compared bit for bit with an exact int64 ``A·B + bias``; every stream gets random
stalls (except in the cycle-count test, which needs free-flowing streams).
"""

import random

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned

from bertcore.rtl.gemm_tiling import (gemm_assemble, gemm_beats, gemm_cycles, gemm_reference,
                                      gemm_tiles)
from bertcore.rtl.systolic import SystolicArray, shape_range
from rtl_sim import simulate, stream_get, stream_put
from sim.models import ECP5, MULT18X18D
from sim.runner import lint, run_cocotb
from sim.tb_systolic import A_SHAPES

STALL = 0.3


def _random_operands(rng, dut, m, k, n):
    a_lo, a_hi = shape_range(dut.a_shape)
    b_lo, b_hi = shape_range(dut.b_shape)
    bias_lo, bias_hi = shape_range(dut.bias_shape)
    return (rng.integers(a_lo, a_hi + 1, (m, k)), rng.integers(b_lo, b_hi + 1, (k, n)),
            rng.integers(bias_lo, bias_hi + 1, n))


def run_tiles(dut, problems, *, seed, stall=STALL, c_stall=None, name, processes=()):
    """Stream each ``(a, b, bias)`` of ``problems`` (one tile each) through ``dut``.

    ``stall`` is the stall probability of the input streams, ``c_stall`` (default ``stall``)
    that of the output. Returns the tiles' results as ``rows × cols`` int64 arrays and the
    final ``error`` output.
    """
    c_stall = stall if c_stall is None else c_stall
    tiles = [gemm_tiles(a, b, bias, rows=dut.rows, cols=dut.cols)[0] for a, b, bias in problems]
    a_beats, b_beats, bias_beats = gemm_beats(tiles)
    beats = []
    error = []

    async def put_a(ctx):
        await stream_put(ctx, dut.a, a_beats, rng=random.Random(seed + 1), stall=stall)

    async def put_b(ctx):
        await stream_put(ctx, dut.b, b_beats, rng=random.Random(seed + 2), stall=stall)

    async def put_bias(ctx):
        await stream_put(ctx, dut.bias, bias_beats, rng=random.Random(seed + 3), stall=stall)

    async def get_c(ctx):
        beats.extend(await stream_get(ctx, dut.c, len(tiles) * dut.rows,
                                      rng=random.Random(seed + 4), stall=c_stall))
        for _ in range(dut.latency + dut.rows):     # nothing more may come out
            assert not ctx.get(dut.c.valid), "an output beat too many"
            await ctx.tick()
        error.append(ctx.get(dut.error))

    testbenches = [put_a, put_b, get_c]
    if "bias" in dut.signature.members:
        testbenches.append(put_bias)
    else:
        assert not any(bias.any() for _, _, bias in problems), "a bias for an array without"
    simulate(dut, *testbenches, name=name, processes=processes, deadline=1e-3)
    results = []
    for t in range(len(tiles)):
        rows = beats[t * dut.rows:(t + 1) * dut.rows]
        assert [row["last"] for row in rows] == [0] * (dut.rows - 1) + [1]
        results.append(np.array([row["data"] for row in rows], np.int64))
    return results, error[0]


def check_tiles(dut, problems, **kwargs):
    results, error = run_tiles(dut, problems, **kwargs)
    for t, ((a, b, bias), got) in enumerate(zip(problems, results)):
        want = gemm_reference(a, b, bias)
        np.testing.assert_array_equal(got[:a.shape[0], :b.shape[1]], want, err_msg=f"tile {t}")
    assert error == 0


# -- Random tiles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (3, 5), (4, 4)])
def test_random_tiles_back_to_back(rows, cols):
    k_max = 12
    dut = SystolicArray(rows, cols, k_max=k_max)
    rng = np.random.default_rng(rows * 10 + cols)
    ks = [1, k_max, 2, 1, *rng.integers(1, k_max + 1, 4).tolist()]
    problems = [_random_operands(rng, dut, rows, k, cols) for k in ks]
    check_tiles(dut, problems, seed=rows * 100 + cols, name=f"systolic_random_{rows}x{cols}")


def test_without_bias():
    """``bias=False``: no ``bias`` member, ``A·B`` leaves as it is (tiles back to back, random
    stalls), and ``out_shape`` still holds a ``bias_shape`` value added downstream."""
    dut = SystolicArray(3, 2, k_max=10, bias=False)
    assert "bias" not in dut.signature.members
    assert dut.out_shape == SystolicArray(3, 2, k_max=10).out_shape
    rng = np.random.default_rng(8)
    problems = [(a, b, np.zeros_like(bias)) for a, b, bias in
                (_random_operands(rng, dut, 3, k, 2) for k in (1, 10, 3, 2, 7))]
    check_tiles(dut, problems, seed=8, name="systolic_no_bias")


def test_slow_consumer_holds_back_tile_ends():
    # Short tiles and an output that is mostly stalled: the queue's credits run out, so tile
    # ends wait (a.ready low while a and b are valid) and no row is lost or overwritten.
    dut = SystolicArray(2, 3, k_max=4)
    rng = np.random.default_rng(5)
    problems = [_random_operands(rng, dut, 2, k, 3) for k in [1] * 10 + [2, 4, 1, 3]]
    held = []

    async def watch(ctx):
        async for _, _, a_valid, b_valid, a_ready, last in ctx.tick().sample(
                dut.a.valid, dut.b.valid, dut.a.ready, dut.a.payload.last):
            if a_valid and b_valid and not a_ready:
                assert last, "only a tile's last beat may be held back"
                held.append(1)

    check_tiles(dut, problems, seed=5, stall=0.0, c_stall=0.85, name="systolic_slow_consumer",
                processes=[watch])
    assert held


def test_unsigned_a_operand():
    # softmax probabilities (unsigned) times int8 V
    dut = SystolicArray(2, 3, k_max=9, a_shape=unsigned(8))
    rng = np.random.default_rng(7)
    problems = [_random_operands(rng, dut, 2, k, 3) for k in (9, 1, 4, 9)]
    a, b, bias = problems[0]
    problems[0] = (np.full_like(a, 255), np.full_like(b, -128), bias)
    check_tiles(dut, problems, seed=7, name="systolic_unsigned_a")


def test_wide_a_operand_with_guaranteed_sum_range():
    """The encoder core's array: a signed(17) A operand (int8 activations, 16-bit
    probabilities) with accumulators sized by ``acc_range`` instead of ``k_max`` worst-case
    products: exact whenever each tile's final sum lies in the range, even where partial
    sums leave it (the accumulators add modulo their width)."""
    pv = (-(128 << 16), 127 << 16)
    dut = SystolicArray(2, 3, k_max=40, a_shape=signed(17), acc_range=pv)
    assert dut.acc_shape == signed(24)
    assert SystolicArray(2, 3, k_max=40, a_shape=signed(17)).acc_shape == signed(30)
    rng = np.random.default_rng(17)
    problems = []
    for k in (40, 1, 7, 40):             # probability rows summing to at most 2**16, int8 V
        p = np.stack([rng.multinomial(1 << 16, rng.dirichlet(np.ones(k) * 0.3))
                      for _ in range(2)])
        problems.append((np.minimum(p, (1 << 16) - 1), rng.integers(-128, 128, (k, 3)),
                         np.zeros(3, np.int64)))
    problems.append((np.full((2, 1), (1 << 16) - 1), np.full((1, 3), -128), np.zeros(3, int)))
    problems.append((rng.integers(-128, 128, (2, 40)), rng.integers(-128, 128, (40, 3)),
                     rng.integers(-1000, 1000, 3)))                     # an int8 projection
    # partial sums 2 * 65535 * 127 > 2**23 wrap; the final sum -131070 is in range
    problems.append((np.full((2, 4), 65535), np.array([[127] * 3, [127] * 3, [-128] * 3,
                                                       [-128] * 3]), np.zeros(3, int)))
    check_tiles(dut, problems, seed=17, name="systolic_wide_a_acc_range")


def test_wide_a_operand_with_16bit_gelu_sums():
    """FFN2 with ``gelu_bits = 16``: signed 16-bit GELU outputs (sign-extended into the
    signed(17) operand) times int8 weights over ``k`` beats, accumulators sized by the FFN2
    sums (``gemm.accumulator_range``: ``k * 2**22``), at both extremes of the 16-bit range."""
    k_max = 40
    ffn2 = k_max << 22
    dut = SystolicArray(2, 3, k_max=k_max, a_shape=signed(17), acc_range=(-ffn2, ffn2))
    assert dut.acc_shape == signed(29)
    rng = np.random.default_rng(23)
    lo, hi = -(1 << 15), (1 << 15) - 1
    problems = [
        (np.full((2, k_max), lo), np.full((k_max, 3), -128), np.zeros(3, int)),   # +k * 2**22
        (np.full((2, k_max), lo), np.full((k_max, 3), 127), np.zeros(3, int)),    # most negative
        (np.full((2, k_max), hi), np.full((k_max, 3), -128), rng.integers(-2**31, 2**31, 3)),
        (rng.integers(lo, hi + 1, (2, k_max)), rng.integers(-128, 128, (k_max, 3)),
         rng.integers(-2**31, 2**31, 3)),
        (rng.integers(lo, hi + 1, (2, 7)), rng.integers(-128, 128, (7, 3)), np.zeros(3, int)),
    ]
    check_tiles(dut, problems, seed=23, name="systolic_gelu16_ffn2")


def test_tiled_product_larger_than_array():
    rows, cols, m, k, n = 3, 4, 7, 13, 11
    dut = SystolicArray(rows, cols, k_max=16)
    rng = np.random.default_rng(11)
    a, b, bias = _random_operands(rng, dut, m, k, n)
    tiles = gemm_tiles(a, b, bias, rows=rows, cols=cols)
    assert [(t.m0, t.n0) for t in tiles] == [(m0, n0) for m0 in (0, 3, 6) for n0 in (0, 4, 8)]
    a_beats, b_beats, bias_beats = gemm_beats(tiles)
    beats = []

    async def put_a(ctx):
        await stream_put(ctx, dut.a, a_beats, rng=random.Random(1), stall=STALL)

    async def put_b(ctx):
        await stream_put(ctx, dut.b, b_beats, rng=random.Random(2), stall=STALL)

    async def put_bias(ctx):
        await stream_put(ctx, dut.bias, bias_beats, rng=random.Random(3), stall=STALL)

    async def get_c(ctx):
        beats.extend(await stream_get(ctx, dut.c, len(tiles) * rows, rng=random.Random(4),
                                      stall=STALL))

    simulate(dut, put_a, put_b, put_bias, get_c, name="systolic_tiled", deadline=1e-3)
    got = gemm_assemble(beats, m=m, n=n, rows=rows, cols=cols)
    np.testing.assert_array_equal(got, gemm_reference(a, b, bias))


# -- Worst-case accumulation at k_max ------------------------------------------------------------

@pytest.mark.parametrize("a_shape, worst", [
    (signed(8), 3072 * -128 * -128),        # the largest sum: 3072 · 2**14 = 50_331_648
    (unsigned(8), 3072 * 255 * -128),       # the most negative: 3072 · -32640 = -100_270_080
])
def test_worst_case_at_k_max(a_shape, worst):
    k_max = 3072                            # bert-base FFN2
    dut = SystolicArray(2, 2, k_max=k_max, a_shape=a_shape)
    # The accumulator is the narrowest that holds the worst case: one bit less would wrap.
    acc_lo, acc_hi = shape_range(dut.acc_shape)
    narrower_lo, narrower_hi = shape_range(signed(dut.acc_shape.width - 1))
    assert dut.acc_shape.signed and acc_lo <= worst <= acc_hi
    assert not narrower_lo <= worst <= narrower_hi
    assert dut.acc_shape == (signed(27) if a_shape.signed else signed(28))
    assert dut.out_shape == signed(33)                        # + a signed(32) bias
    a_lo, a_hi = shape_range(a_shape)
    # Rows of A at the extremes times columns of B at the extremes give every extreme sum;
    # column 0 holds the largest sum plus the largest bias, column 1 the most negative sum plus
    # the most negative bias: the ends of out_shape. A 1-beat tile follows straight after.
    a = np.array([[a_lo] * k_max, [a_hi] * k_max])
    b = np.array([[-128, 127] if a_shape.signed else [127, -128]] * k_max)
    bias = np.array([(1 << 31) - 1, -(1 << 31)])
    problems = [(a, b, bias), (a[:, :1], b[:1], bias)]
    check_tiles(dut, problems, seed=3, stall=0.1, name=f"systolic_worst_{a_shape}")


# -- Latency and throughput -------------------------------------------------------------------

@pytest.mark.parametrize("rows, cols, k", [(3, 5, 5), (3, 5, 2), (3, 5, 9), (4, 2, 1)])
def test_latency_and_throughput(rows, cols, k):
    """Free-flowing streams: tiles end every max(K, rows, cols) cycles, fixed latency."""
    tiles_count = 4
    dut = SystolicArray(rows, cols, k_max=16)
    rng = np.random.default_rng(k)
    problems = [_random_operands(rng, dut, rows, k, cols) for _ in range(tiles_count)]
    tiles = [gemm_tiles(a, b, bias, rows=rows, cols=cols)[0] for a, b, bias in problems]
    a_beats, b_beats, bias_beats = gemm_beats(tiles)
    ends, outputs = [], []

    async def testbench(ctx):
        ctx.set(dut.c.ready, 1)
        ctx.set(dut.bias.valid, 1)
        beat = biases = cycle = 0
        while len(outputs) < tiles_count * rows:
            feeding = beat < len(a_beats)
            ctx.set(dut.a.valid, feeding)
            ctx.set(dut.b.valid, feeding)
            if feeding:
                ctx.set(dut.a.payload, a_beats[beat])
                ctx.set(dut.b.payload, b_beats[beat])
            ctx.set(dut.bias.payload, bias_beats[min(biases, tiles_count - 1)])
            _, _, a_ready, bias_ready, c_valid, c_payload = await ctx.tick().sample(
                dut.a.ready, dut.bias.ready, dut.c.valid, dut.c.payload)
            if feeding and a_ready:
                if a_beats[beat]["last"]:
                    ends.append(cycle)
                beat += 1
            if bias_ready:
                biases += 1
            if c_valid:
                outputs.append((cycle, [int(x) for x in c_payload.data]))
            cycle += 1

    simulate(dut, testbench, name=f"systolic_timing_{rows}x{cols}_k{k}", deadline=1e-4)
    period = max(k, rows, cols)
    assert dut.tile_interval == max(rows, cols)
    assert dut.latency == cols + 6
    # Tiles end every max(K, rows, cols) cycles; the first never waits.
    assert ends == [k - 1 + t * period for t in range(tiles_count)]
    # Each tile's rows leave on consecutive cycles, latency after its end.
    assert [cycle for cycle, _ in outputs] == [
        e + dut.latency + i for e in ends for i in range(rows)]
    # The analytic counts (cycle 0 holds the first operand beat).
    total = outputs[-1][0] + 1
    assert total == dut.cycles(k, tiles_count) == k + (tiles_count - 1) * period + rows + cols + 5
    assert gemm_cycles(rows, k, cols * tiles_count, rows=rows, cols=cols) == total
    for t, (a, b, bias) in enumerate(problems):
        got = np.array([data for _, data in outputs[t * rows:(t + 1) * rows]])
        np.testing.assert_array_equal(got, gemm_reference(a, b, bias))


def test_full_utilization_in_steady_state():
    # K >= max(rows, cols): one operand beat every cycle, i.e. rows·cols MACs per cycle.
    dut = SystolicArray(4, 4, k_max=512)
    k, tiles = 384, 12                     # e.g. a 384-wide reduction, 12 output tiles
    cycles = gemm_cycles(4 * 3, k, 4 * 4, rows=4, cols=4)
    assert cycles == dut.cycles(k, tiles) == k * tiles + 4 + 4 + 5
    assert 12 * k * 16 / (16 * cycles) > 0.99


@pytest.mark.parametrize("m, k, n", [
    (128, 384, 384),     # MiniLM Q/K/V/O projections at 128 tokens
    (128, 384, 1536),    # FFN1
    (128, 1536, 384),    # FFN2
    (128, 32, 128),      # q·kᵀ of one head (head dim 32)
    (128, 128, 32),      # p·v of one head
])
def test_encoder_gemms_keep_a_16x16_array_busy(m, k, n):
    # The analytic count (checked cycle-exact above) against the encoder's 0.90 target.
    cycles = gemm_cycles(m, k, n, rows=16, cols=16)
    assert m * k * n / (16 * 16 * cycles) >= 0.95


# -- Protocol errors ------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["last_mismatch", "too_long"])
def test_error_flag(fault):
    dut = SystolicArray(2, 2, k_max=3)
    k = 4 if fault == "too_long" else 3
    a_beats = [{"data": [1, 2], "last": int(i == k - 1)} for i in range(k)]
    b_beats = [{"data": [3, 4], "last": int(i == k - 1)} for i in range(k)]
    if fault == "last_mismatch":
        b_beats[1]["last"] = 1
    seen = []

    async def put_ab(ctx):
        assert not ctx.get(dut.error)
        for a_beat, b_beat in zip(a_beats, b_beats):
            ctx.set(dut.a.payload, a_beat)
            ctx.set(dut.b.payload, b_beat)
            ctx.set(dut.a.valid, 1)
            ctx.set(dut.b.valid, 1)
            await ctx.tick().until(dut.a.ready)
        ctx.set(dut.a.valid, 0)
        ctx.set(dut.b.valid, 0)
        await ctx.tick()
        seen.append(ctx.get(dut.error))

    simulate(dut, put_ab, name=f"systolic_error_{fault}", deadline=1e-5)
    assert seen == [1]


# -- Parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(rows=0), ValueError, r"^rows must be a positive integer, not 0$"),
    (dict(cols=-1), ValueError, r"^cols must be a positive integer, not -1$"),
    (dict(k_max=0), ValueError, r"^k_max must be a positive integer, not 0$"),
    (dict(rows=2.0), TypeError, r"^rows must be an integer, not 2\.0$"),
    (dict(cols="4"), TypeError, r"^cols must be an integer, not '4'$"),
    (dict(k_max=True), TypeError, r"^k_max must be an integer, not True$"),
    (dict(a_shape="int8"), TypeError, r"^a_shape must be a shape, not 'int8'$"),
    (dict(b_shape=unsigned(0)), ValueError,
     r"^b_shape must be at least 1 bit wide, not unsigned\(0\)$"),
    (dict(out_shape=signed(32)), ValueError,
     r"^out_shape signed\(32\) is too narrow for k_max=3072 products of signed\(8\) by "
     r"signed\(8\) plus a signed\(32\) bias: the sums span \[-2197422080, 2197815295\], "
     r"which needs signed\(33\)$"),
    (dict(bias_shape=signed(16), out_shape=signed(26)), ValueError,
     r"^out_shape signed\(26\) is too narrow .* which needs signed\(27\)$"),
    (dict(acc_range=(1, 5)), ValueError,
     r"^acc_range must be \(lo, hi\) with lo <= 0 <= hi, not \(1, 5\)$"),
    (dict(acc_range=[-1, 1]), TypeError,
     r"^acc_range must be a pair of integers or None, not \[-1, 1\]$"),
])
def test_bad_parameters(kwargs, error, message):
    params = dict(rows=2, cols=2, k_max=3072) | kwargs
    with pytest.raises(error, match=message):
        SystolicArray(params.pop("rows"), params.pop("cols"), **params)


def test_parameters_and_widths():
    dut = SystolicArray(3, 5, k_max=1536, bias_shape=signed(16), out_shape=signed(32))
    assert (dut.rows, dut.cols, dut.k_max) == (3, 5, 1536)
    assert (dut.a_shape, dut.b_shape, dut.bias_shape) == (signed(8), signed(8), signed(16))
    assert dut.product_shape == signed(16)           # -128·-128 = 2**14 needs 16 signed bits
    assert dut.acc_shape == signed(26)                # 1536·2**14 = 2**25 needs 26
    assert dut.out_shape == signed(32)
    assert SystolicArray(1, 1, k_max=1, a_shape=unsigned(8), b_shape=unsigned(8)).acc_shape \
        == unsigned(16)
    assert SystolicArray(1, 1, k_max=1, a_shape=unsigned(8)).product_shape == signed(16)


def test_tiling_rejects_mismatched_operands():
    with pytest.raises(ValueError, match=r"^a is 2×3 but b is 4×5: the reductions differ$"):
        gemm_tiles(np.zeros((2, 3), int), np.zeros((4, 5), int), rows=2, cols=2)
    with pytest.raises(TypeError, match=r"^a must hold integers, not float64$"):
        gemm_tiles(np.zeros((2, 3)), np.zeros((3, 5), int), rows=2, cols=2)
    with pytest.raises(ValueError, match=r"^2 tiles of 2 rows need 4 output beats, not 3$"):
        gemm_assemble([{"data": [0, 0], "last": 0}] * 3, m=3, n=2, rows=2, cols=2)


# -- The emitted Verilog: cocotb under Icarus and Verilator, and lint --------------------------

COCOTB_CONFIGS = {
    # name: (constructor arguments, simulators)
    "3x4_s8": (dict(rows=3, cols=4, k_max=40, a_shape="s8"), ("icarus", "verilator")),
    "2x3_u8": (dict(rows=2, cols=3, k_max=24, a_shape="u8"), ("icarus",)),
    # the encoder core's A operand with 16-bit probabilities (full-range random operands:
    # the k_max worst-case accumulators)
    "2x3_s17": (dict(rows=2, cols=3, k_max=24, a_shape="s17"), ("icarus",)),
}


def _cocotb_dut(config):
    kwargs = dict(COCOTB_CONFIGS[config][0])
    a_shape = A_SHAPES[kwargs.pop("a_shape")]
    return SystolicArray(kwargs.pop("rows"), kwargs.pop("cols"), a_shape=a_shape, **kwargs)


@pytest.mark.parametrize("config, simulator", [
    (config, simulator) for config, (_, simulators) in COCOTB_CONFIGS.items()
    for simulator in simulators])
def test_cocotb(config, simulator):
    dut = _cocotb_dut(config)
    params = dict(COCOTB_CONFIGS[config][0], seed=5, latency=dut.latency,
                  out_width=dut.out_shape.width)
    names = run_cocotb(dut, toplevel="systolic_array", test_module="tb_systolic",
                       simulator=simulator, params=params, name=f"systolic_{config}")
    assert len(names) == 4


@pytest.mark.parametrize("config, simulator", [("3x4_s8", "verilator"), ("2x3_u8", "icarus"),
                                               ("2x3_s17", "verilator")])
def test_cocotb_ecp5(config, simulator):
    """The array as built for ECP5 (each PE's multiply a MULT18X18D with its input and output
    registers, simulated with our model of the primitive): the same bench, bit-exact, same
    latency."""
    dut = _cocotb_dut(config)
    params = dict(COCOTB_CONFIGS[config][0], seed=6, latency=dut.latency,
                  out_width=dut.out_shape.width)
    names = run_cocotb(dut, toplevel="systolic_array", test_module="tb_systolic",
                       simulator=simulator, params=params, name=f"systolic_ecp5_{config}",
                       platform=ECP5, models=[MULT18X18D])
    assert len(names) == 4


def test_lint():
    lint(_cocotb_dut("3x4_s8"), toplevel="systolic_array")
