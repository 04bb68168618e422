"""The shared verification infrastructure: payload packing, DSP tiling, runner failure paths."""

import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data

from bertcore.rtl.common import check_int, dsp_partial_products, dsp_tiles, pack, unpack
from bertcore.rtl.requant import Requantizer
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


@pytest.mark.parametrize("a_shape, b_shape", [
    (signed(32), signed(16)), (signed(37), signed(16)), (unsigned(20), signed(18)),
    (signed(18), signed(18)), (signed(22), signed(16)),
])
def test_dsp_partial_products(a_shape, b_shape):
    a, b = Signal(a_shape), Signal(b_shape)
    parts = dsp_partial_products(a, b)
    for pa, _ in dsp_tiles(a) + dsp_tiles(b):
        assert len(pa) <= 18
    m = Module()
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

    simulate(m, bench, name="dsp_partial_products")


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


def test_runner_missing_simulator(monkeypatch):
    """A missing simulator fails (never skips)."""
    dut, params = _requant_case()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolNotFound, match=r"iverilog not found"):
        run_cocotb(dut, toplevel="requantizer", test_module="tb_requant", simulator="icarus",
                   name="runner_missing", params=params)
    dut._MustUse__silence = True
