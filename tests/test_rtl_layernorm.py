# amaranth: UnusedElaboratable=no
"""Tests of :class:`bertcore.rtl.layernorm.IntLayerNorm` against ``kernels.layernorm_int``.

Amaranth simulation: seeded random rows and named corner cases with random stalls on both
streams, protocol errors, latency and throughput, bad parameters. The same stimulus then runs as
the cocotb bench ``sim/tb_layernorm.py`` on the emitted Verilog under Icarus and Verilator, and
the Verilog is linted.
"""

import random

import pytest
import torch

from bertcore.quant.kernels import (
    LN_FRAC_BITS, RESIDUAL_BITS, int_range, layernorm_int, round_half_even_div)
from bertcore.rtl.common import MULTIPLIER_STYLES, pack
from bertcore.rtl.layernorm import IntLayerNorm
from rtl_sim import simulate, stream_get, stream_put

#: Configurations of the stream tests: (hidden, in_width, frac_bits). The encoder's widths with
#: a power-of-two and a non-power-of-two row, I-BERT's F = 0 on narrow inputs, and N = 1.
CONFIGS = [
    (8, RESIDUAL_BITS, LN_FRAC_BITS),
    (12, RESIDUAL_BITS, LN_FRAC_BITS),
    (5, 10, 0),
    (1, RESIDUAL_BITS, LN_FRAC_BITS),
]
#: The configuration of the cocotb benches (non-power-of-two row, encoder widths).
COCOTB_CONFIG = (12, RESIDUAL_BITS, LN_FRAC_BITS)


def reference(rows, frac_bits):
    """``layernorm_int`` of each row (lists of ints)."""
    return layernorm_int(torch.tensor(rows, dtype=torch.int64), frac_bits=frac_bits).tolist()


def tie_row(n, k):
    """A row of ``n`` (even) values whose mean is exactly ``k + 0.5``."""
    assert n % 2 == 0
    row = [k] * (n // 2) + [k + 1] * (n // 2)
    assert 2 * sum(row) == (2 * k + 1) * n
    return row


def corner_rows(n, width):
    """Named corner cases for rows of ``n`` values of ``width`` signed bits."""
    lo, hi = int_range(width)
    rows = {
        "all zero": [0] * n,
        "all equal": [hi // 3] * n,
        "all lowest": [lo] * n,
        "all highest": [hi] * n,
        "spike up in zeros": [0] * (n - 1) + [hi],
        "spike down in zeros": [lo] + [0] * (n - 1),
        "lowest/highest halves": [lo] * (n // 2) + [hi] * (n - n // 2),
        "highest/lowest alternating": [hi if i % 2 == 0 else lo for i in range(n)],
        "one below zero": [-1] + [0] * (n - 1),
    }
    if n >= 8 and width >= 22:
        # isqrt at its boundaries: var = k*k and var = k*k - 1 (rows c + y with sum(y) == 0:
        # y = (a, -a, a, -a) gives var = 4a**2; y = (m, -m, m, -m, r, -r, s, -s) with
        # 2m = r*r + s*s gives var = 4m**2 + 4m = (2m + 1)**2 - 1)
        def centred(c, y):
            return [c + v for v in y] + [c] * (n - len(y))
        m = ((2**10 + 1) ** 2 + (2**10 - 1) ** 2) // 2
        rows["var = (2**21)**2"] = centred(-5, [2**20, -2**20, 2**20, -2**20])
        rows["var = (2**21 + 3)**2 - 1"] = centred(-123456, [m, -m, m, -m, 2**10 + 1,
                                                             -2**10 - 1, 2**10 - 1, 1 - 2**10])
        rows["var = 3**2 - 1"] = centred(0, [1, -1, 1, -1, 1, -1, 1, -1])
        rows["var = 11**2 - 1"] = centred(9, [5, -5, 5, -5, 3, -3, 1, -1])
        rows["var = 10**2"] = centred(-1, [5, -5, 5, -5])
    if n % 2 == 0:
        # the mean is an exact .5 tie: rounds to the even neighbour, both parities and signs
        rows["tie to even (up)"] = tie_row(n, 3)           # 3.5 -> 4
        rows["tie to even (down)"] = tie_row(n, 4)         # 4.5 -> 4
        rows["tie negative (up)"] = tie_row(n, -5)         # -4.5 -> -4
        rows["tie negative (down)"] = tie_row(n, -4)       # -3.5 -> -4
        rows["tie near lowest"] = tie_row(n, lo)
        rows["tie near highest"] = tie_row(n, hi - 1)
    else:
        # a sum with remainder N // 2 + 1 (rounds up) and N // 2 (rounds down)
        rows["remainder above half"] = [7] * (n // 2 + 1) + [6] * (n - n // 2 - 1)
        rows["remainder below half"] = [7] * (n // 2) + [6] * (n - n // 2)
    return rows


def random_rows(rng, n, width, count):
    """Full-range rows, then realistic ones: a small spread around an offset, and outliers."""
    lo, hi = int_range(width)
    rows = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            rows.append([rng.randint(lo, hi) for _ in range(n)])
        else:
            spread = rng.randint(1, max(1, hi >> rng.randint(2, width - 1)))
            center = rng.randint(lo + spread, hi - spread)
            row = [center + rng.randint(-spread, spread) for _ in range(n)]
            if kind == 2:
                row[rng.randrange(n)] = rng.choice((lo, hi))
            rows.append(row)
    return rows


def stimulus(n, width, seed, count=12):
    """Corner rows and seeded random rows (and their names, for failure messages)."""
    rng = random.Random(seed)
    corners = corner_rows(n, width)
    names = list(corners) + [f"random {i}" for i in range(count)]
    rows = list(corners.values()) + random_rows(rng, n, width, count)
    return names, rows


def beats_of(rows):
    return [{"data": v, "last": int(i == len(row) - 1)} for row in rows for i, v in enumerate(row)]


def check_rows(names, rows, expected, got, n):
    assert len(got) == len(rows) * n, "lost or duplicated elements"
    for r, (name, row, want) in enumerate(zip(names, rows, expected)):
        out = got[r * n:(r + 1) * n]
        assert [o["last"] for o in out] == [0] * (n - 1) + [1], f"row {r} ({name}): last"
        assert [o["data"] for o in out] == want, f"row {r} ({name}): {row}"


def run_stream(dut, beats, count, *, seed, stall, name, blocked=0, out_stall=None):
    """Send ``beats``, collect ``count`` outputs and count ``error`` pulses.

    The output is not ready for the first ``blocked`` cycles; ``out_stall`` (default
    ``stall``) is the output's.
    """
    rng = random.Random(seed)
    got, errors, done = [], [], []

    async def producer(ctx):
        await stream_put(ctx, dut.i_stream, beats, rng=rng, stall=stall)

    async def consumer(ctx):
        if blocked:
            await ctx.tick().repeat(blocked)
        got.extend(await stream_get(ctx, dut.o_stream, count, rng=rng,
                                    stall=stall if out_stall is None else out_stall))
        await ctx.tick().repeat(dut.latency)       # nothing more may come out
        assert not ctx.get(dut.o_stream.valid), "extra output"
        done.append(True)

    async def monitor(ctx):
        while not done:
            _, _, error = await ctx.tick().sample(dut.error)
            errors.append(error)

    cycles = (len(beats) + count) * 3 + (len(beats) // dut.hidden + 4) * dut.row_period + blocked
    simulate(dut, producer, consumer, monitor, name=name, deadline=2e-8 * cycles)
    return got, sum(errors)


# -- Stream tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden,in_width,frac_bits,multipliers", [
    *(config + ("dsp",) for config in CONFIGS),
    (8, RESIDUAL_BITS, LN_FRAC_BITS, "lut"),           # shift-and-add squarer and multiplier
])
def test_rows_match_kernel(hidden, in_width, frac_bits, multipliers):
    dut = IntLayerNorm(hidden, in_width=in_width, frac_bits=frac_bits, multipliers=multipliers)
    names, rows = stimulus(hidden, in_width, seed=hidden * 1000 + in_width)
    expected = reference(rows, frac_bits)
    got, errors = run_stream(dut, beats_of(rows), len(rows) * hidden, seed=7, stall=0.3,
                             name=f"layernorm_rows_{hidden}_{in_width}_{frac_bits}_{multipliers}")
    check_rows(names, rows, expected, got, hidden)
    assert errors == 0


@pytest.mark.parametrize("hidden,in_width,frac_bits", [
    (8, RESIDUAL_BITS, LN_FRAC_BITS),     # rows pile up: hold register, engine, normalizer
    (70, 8, 0),                           # N > stats_cycles: the row buffer fills mid-row
])
def test_output_blocked(hidden, in_width, frac_bits):
    """A long-blocked output fills every stage; the input then stalls, nothing is lost."""
    dut = IntLayerNorm(hidden, in_width=in_width, frac_bits=frac_bits)
    rows = random_rows(random.Random(hidden), hidden, in_width, 7)
    got, errors = run_stream(dut, beats_of(rows), len(rows) * hidden, seed=9, stall=0.2,
                             name=f"layernorm_blocked_{hidden}", blocked=6 * dut.row_period)
    check_rows([f"random {i}" for i in range(len(rows))], rows, reference(rows, frac_bits), got,
               hidden)
    assert errors == 0


def test_buffer_entries_come_back():
    """Rows three times round the row buffer, the input trickling and the output always ready:
    the normalizer frees entries in cycles without a write, and each must come back to the
    writer (one lost per such cycle leaves no room after a few rows: the input stalls for
    good)."""
    hidden = 8
    dut = IntLayerNorm(hidden, in_width=RESIDUAL_BITS, frac_bits=LN_FRAC_BITS)
    rows = random_rows(random.Random(11), hidden, RESIDUAL_BITS,
                       3 * dut.buffer_depth // hidden)
    got, errors = run_stream(dut, beats_of(rows), len(rows) * hidden, seed=5, stall=0.6,
                             out_stall=0.0, name="layernorm_entries_back")
    check_rows([f"random {i}" for i in range(len(rows))], rows,
               reference(rows, LN_FRAC_BITS), got, hidden)
    assert errors == 0


@pytest.mark.parametrize("multipliers", MULTIPLIER_STYLES)
def test_output_range_reached(multipliers):
    """The extreme outputs +-2**30 of the kernel come out (32-bit signed output, no overflow)."""
    dut = IntLayerNorm(2, in_width=RESIDUAL_BITS, frac_bits=LN_FRAC_BITS, multipliers=multipliers)
    lo, hi = int_range(RESIDUAL_BITS)
    rows = [[lo, hi], [hi, lo], [0, 1], [-1, 0], [5, 5]]
    expected = reference(rows, LN_FRAC_BITS)
    assert max(max(r) for r in expected) == 1 << 30
    assert min(min(r) for r in expected) == -(1 << 30)
    got, errors = run_stream(dut, beats_of(rows), 2 * len(rows), seed=3, stall=0.0,
                             name=f"layernorm_range_{multipliers}")
    check_rows([str(r) for r in rows], rows, expected, got, 2)
    assert errors == 0


def test_protocol_errors_drop_rows():
    """Rows with an early or a missing ``last`` are dropped whole; each pulses ``error`` once."""
    n, width = 8, RESIDUAL_BITS
    dut = IntLayerNorm(n, in_width=width)
    rng = random.Random(11)
    good = random_rows(rng, n, width, 6)
    bad = [
        beats_of([good[0][:3]]),                                 # early last
        beats_of([good[1][:1]]),                                 # a row of one
        beats_of([good[2] + good[3][:4]]),                       # too long by 4
        [{"data": v, "last": 0} for v in good[4] + good[5]],     # no last in two rows' worth...
        beats_of([good[5][:n - 1]]),                             # ...then one short by one
    ]
    beats = beats_of([good[0]])
    for bad_beats, row in zip(bad, good[1:]):
        beats += bad_beats + beats_of([row])
    # the 4th bad stream swallows its following good row too (up to the next last)
    kept = [good[0], good[1], good[2], good[3], good[5]]
    # more dropped rows than the buffer has entries: a dropped row gives back all of its own
    for i in range(dut.buffer_depth + 1):
        bad.append(beats_of([good[1][i % n:i % n + 1]]))
        beats += bad[-1]
    bad.append(beats_of([good[2] + good[3]]))
    beats += bad[-1] + beats_of([good[4]])
    kept.append(good[4])
    expected = reference(kept, LN_FRAC_BITS)
    got, errors = run_stream(dut, beats, len(kept) * n, seed=5, stall=0.3,
                             name="layernorm_protocol")
    check_rows([f"good {i}" for i in range(len(kept))], kept, expected, got, n)
    assert errors == len(bad)


# -- Latency and throughput ---------------------------------------------------------------------

def measure(dut, rows):
    """Handshake cycles of the input and output, with an always-valid input and ready output."""
    n = dut.hidden
    layout = dut.i_stream.payload.shape()
    beats = beats_of(rows)
    ins, outs = [], []

    async def bench(ctx):
        cycle = 0
        ctx.set(dut.o_stream.ready, 1)
        while len(outs) < len(beats):
            if len(ins) < len(beats):
                ctx.set(dut.i_stream.payload.as_value(), pack(layout, beats[len(ins)]))
                ctx.set(dut.i_stream.valid, 1)
            else:
                ctx.set(dut.i_stream.valid, 0)
            _, _, i_valid, i_ready, o_valid = await ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid)
            if i_valid and i_ready:
                ins.append(cycle)
            if o_valid:
                outs.append(cycle)
            cycle += 1

    simulate(dut, bench, name=f"layernorm_timing_{n}",
             deadline=1e-8 * (len(rows) + 2) * (dut.row_period + dut.latency))
    return ins, outs, n


@pytest.mark.parametrize("hidden,in_width,frac_bits,stats_cycles,latency", [
    # statistics-bound: one row per stats_cycles (2*22 + 23 + 16 + 37); latency stats_cycles +
    # squarer (3 partial products: 1 + 2) + multiplier (5 partial products: 1 + 3) + 8
    (8, RESIDUAL_BITS, LN_FRAC_BITS, 120, 120 + 3 + 4 + 8),
    # N == stats_cycles (2*8 + 10 + 0 + 37): the tightest buffer; squarer 1, multiplier 1 + 1
    (63, 8, 0, 63, 63 + 1 + 2 + 8),
    # input-bound: one element per cycle (stats_cycles 2*8 + 11 + 37)
    (70, 8, 0, 64, 64 + 1 + 2 + 8),
])
@pytest.mark.parametrize("multipliers", MULTIPLIER_STYLES)
def test_latency_and_throughput(hidden, in_width, frac_bits, stats_cycles, latency, multipliers):
    dut = IntLayerNorm(hidden, in_width=in_width, frac_bits=frac_bits, multipliers=multipliers)
    assert dut.stats_cycles == stats_cycles
    assert dut.latency == latency
    assert dut.row_period == max(hidden, stats_cycles)
    rng = random.Random(hidden)
    lo, hi = int_range(in_width)
    rows = [[rng.randint(lo, hi) for _ in range(hidden)] for _ in range(8)]
    ins, outs, n = measure(dut, rows)
    assert outs[0] - ins[n - 1] == dut.latency
    for r in range(len(rows)):
        assert outs[r * n + n - 1] - outs[r * n] == n - 1, "a row's outputs are contiguous"
    starts = [outs[r * n] for r in range(len(rows))]
    assert [b - a for a, b in zip(starts, starts[1:])] == [dut.row_period] * (len(rows) - 1)


def test_widths_derived():
    """The derived variance width holds the kernel's worst case exactly (half the row at each
    extreme, mean on a .5 tie when N is even)."""
    for n, width in [(2, 22), (8, 22), (12, 22), (384, 22), (6, 10), (5, 10)]:
        dut = IntLayerNorm(n, in_width=width)
        lo, hi = int_range(width)
        worst = [lo] * (n // 2) + [hi] * (n - n // 2)
        mean = int(round_half_even_div(torch.tensor(sum(worst)), n))
        var = sum((x - mean) ** 2 for x in worst)
        if n % 2 == 0:
            assert var.bit_length() == dut.var_width
        else:
            assert var.bit_length() <= dut.var_width
        assert dut.root_width == (dut.var_width + 1) // 2
    assert IntLayerNorm(384).row_period == 384       # the encoder's LayerNorm streams at full rate


# -- Parameters ---------------------------------------------------------------------------------

def test_parameters_exposed():
    dut = IntLayerNorm(12, in_width=20, frac_bits=3, multipliers="lut")
    assert (dut.hidden, dut.in_width, dut.frac_bits, dut.multipliers) == (12, 20, 3, "lut")
    dut = IntLayerNorm(4)
    assert (dut.in_width, dut.frac_bits, dut.multipliers) == (RESIDUAL_BITS, LN_FRAC_BITS, "dsp")
    assert len(dut.o_stream.payload.data) == IntLayerNorm.OUT_WIDTH == 32
    with pytest.raises(AttributeError):
        dut.hidden = 5


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(hidden=0), ValueError, r"^hidden must be a positive integer, not 0$"),
    (dict(hidden=-3), ValueError, r"^hidden must be a positive integer, not -3$"),
    (dict(hidden=8.0), TypeError, r"^hidden must be an integer, not 8\.0$"),
    (dict(hidden=True), TypeError, r"^hidden must be an integer, not True$"),
    (dict(hidden=8, in_width=1), ValueError, r"^in_width must be an integer >= 2, not 1$"),
    (dict(hidden=8, in_width="22"), TypeError, r"^in_width must be an integer, not '22'$"),
    (dict(hidden=8, frac_bits=-1), ValueError,
     r"^frac_bits must be an integer in 0\.\.31, not -1$"),
    (dict(hidden=8, frac_bits=32), ValueError,
     r"^frac_bits must be an integer in 0\.\.31, not 32$"),
    (dict(hidden=8, frac_bits=None), TypeError, r"^frac_bits must be an integer, not None$"),
    (dict(hidden=384, in_width=32), ValueError,
     r"^in_width 32 with hidden 384 allows a variance up to \d+, beyond the 2\*\*62"),
    (dict(hidden=8, multipliers="soft"), ValueError,
     r"^multipliers must be 'dsp' or 'lut', not 'soft'$"),
])
def test_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        IntLayerNorm(**kwargs)


# -- Emitted Verilog: cocotb (Icarus, Verilator) and lint ---------------------------------------

def cocotb_params(dut):
    """Stimulus and expected payloads of ``sim/tb_layernorm.py`` (see its docstring)."""
    n, width, frac_bits = dut.hidden, dut.in_width, dut.frac_bits
    _, rows = stimulus(n, width, seed=2024, count=10)
    rng = random.Random(99)
    bad = random_rows(rng, n, width, 1)[0]
    # an early last, then a row too long (its last comes 3 beats late)
    bad_beats = beats_of([bad[:5]]) + beats_of([bad + [1, 2, 3]])
    beats = beats_of(rows[:4]) + bad_beats + beats_of(rows[4:])
    expected = [{"data": v, "last": int(i == n - 1)}
                for row in reference(rows, frac_bits) for i, v in enumerate(row)]
    i_layout = dut.i_stream.payload.shape()
    o_layout = dut.o_stream.payload.shape()
    return {
        "beats": [pack(i_layout, beat) for beat in beats],
        "expected": [pack(o_layout, beat) for beat in expected],
        "errors": 2,
        "seed": 5,
        "stall": 0.3,
        "timing_beats": [pack(i_layout, beat) for beat in beats_of(rows[-4:])],
        "hidden": n,
        "latency": dut.latency,
        "row_period": dut.row_period,
    }


@pytest.mark.parametrize("simulator, ecp5", [("icarus", False), ("verilator", False),
                                             ("verilator", True)])
def test_cocotb(simulator, ecp5):
    """The emitted Verilog, bit-exact; with ``ecp5`` as built for ECP5 (the partial products
    of u*u and y*f in MULT18X18Ds with their operand and product registers inside, the row
    buffer a DP16KD read through its output register, simulated with our models of the
    primitives)."""
    from sim.models import DP16KD, ECP5, MULT18X18D
    from sim.runner import run_cocotb

    n, width, frac_bits = COCOTB_CONFIG
    dut = IntLayerNorm(n, in_width=width, frac_bits=frac_bits)
    target = dict(platform=ECP5, models=[MULT18X18D, DP16KD]) if ecp5 else {}
    names = run_cocotb(dut, toplevel="int_layernorm", test_module="tb_layernorm",
                       simulator=simulator, params=cocotb_params(dut),
                       name="layernorm_ecp5" if ecp5 else "layernorm", **target)
    assert len(names) == 2


@pytest.mark.parametrize("multipliers", MULTIPLIER_STYLES)
def test_lint(multipliers):
    from sim.runner import lint

    n, width, frac_bits = COCOTB_CONFIG
    lint(IntLayerNorm(n, in_width=width, frac_bits=frac_bits, multipliers=multipliers),
         toplevel="int_layernorm")
