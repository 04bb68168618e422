"""cocotb bench of the emitted Verilog of :class:`bertcore.rtl.systolic.SystolicArray`.

Run through ``sim.runner.run_cocotb`` (see ``tests/test_rtl_systolic.py``) with the parameters
``rows``, ``cols``, ``k_max``, ``a_shape`` (``"s8"``, ``"u8"`` or ``"s17"``), ``out_width``, ``latency`` and
``seed``. Every output is compared with an exact int64 ``A·B + bias``.
"""

import random

import cocotb
import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge

from bertcore.rtl.common import pack, unpack
from bertcore.rtl.gemm_tiling import gemm_assemble, gemm_beats, gemm_reference, gemm_tiles
from bertcore.rtl.systolic import operand_layout, shape_range
from sim.axis import StreamSink, StreamSource, reset
from sim.runner import tb_params

STALL = 0.3
#: The ``a_shape`` parameter: int8, uint8 probabilities, the core's signed(17) A operand (int8
#: activations and 16-bit probabilities).
A_SHAPES = {"s8": signed(8), "u8": unsigned(8), "s17": signed(17)}


class Bench:
    def __init__(self, dut):
        p = tb_params()
        self.dut = dut
        self.p = p
        self.rows, self.cols, self.k_max = p["rows"], p["cols"], p["k_max"]
        self.a_shape = A_SHAPES[p["a_shape"]]
        self.b_shape = signed(8)
        self.a_layout = operand_layout(self.a_shape, self.rows)
        self.b_layout = operand_layout(self.b_shape, self.cols)
        self.bias_layout = data.ArrayLayout(signed(32), self.cols)
        self.c_layout = operand_layout(signed(p["out_width"]), self.cols)
        self.rng = np.random.default_rng(p["seed"])

    def operands(self, m, k, n):
        a_lo, a_hi = shape_range(self.a_shape)
        return (self.rng.integers(a_lo, a_hi + 1, (m, k)),
                self.rng.integers(-128, 128, (k, n)),
                self.rng.integers(-(1 << 31), 1 << 31, n))

    async def run(self, tiles, *, stall, seed):
        """Stream the tiles through the (reset) DUT; return the output payloads (dicts)."""
        dut = self.dut
        a_beats, b_beats, bias_beats = gemm_beats(tiles)
        sources = [
            (StreamSource(dut, "a", dut.clk, rng=random.Random(seed + 1), stall=stall),
             [pack(self.a_layout, beat) for beat in a_beats]),
            (StreamSource(dut, "b", dut.clk, rng=random.Random(seed + 2), stall=stall),
             [pack(self.b_layout, beat) for beat in b_beats]),
            (StreamSource(dut, "bias", dut.clk, rng=random.Random(seed + 3), stall=stall),
             [pack(self.bias_layout, beat) for beat in bias_beats]),
        ]
        sink = StreamSink(dut, "c", dut.clk, rng=random.Random(seed + 4), stall=stall)
        tasks = [cocotb.start_soon(source.send(beats)) for source, beats in sources]
        raw = await sink.recv(len(tiles) * self.rows)
        for task in tasks:
            assert task.done(), "an input beat was not consumed"
        # Nothing more comes out, and the protocol checker stayed quiet.
        dut.c__ready.value = 1
        for _ in range(self.cols + self.rows + 8):
            await ReadOnly()
            assert not dut.c__valid.value, "an output beat too many"
            await RisingEdge(dut.clk)
        assert not dut.error.value
        dut.c__ready.value = 0
        return [unpack(self.c_layout, value) for value in raw]

    def check_tiles(self, problems, beats):
        for t, (a, b, bias) in enumerate(problems):
            rows = beats[t * self.rows:(t + 1) * self.rows]
            assert [row["last"] for row in rows] == [0] * (self.rows - 1) + [1], f"tile {t}"
            got = np.array([row["data"] for row in rows])[:a.shape[0], :b.shape[1]]
            want = gemm_reference(a, b, bias)
            assert (got == want).all(), f"tile {t}: got\n{got}\nwant\n{want}"


@cocotb.test()
async def random_tiles_with_stalls(dut):
    bench = Bench(dut)
    await reset(dut, sources=("a", "b", "bias"), sinks=("c",))
    ks = [1, bench.k_max, 2, *bench.rng.integers(1, bench.k_max + 1, 5).tolist()]
    problems = [bench.operands(bench.rows, k, bench.cols) for k in ks]
    tiles = [gemm_tiles(a, b, bias, rows=bench.rows, cols=bench.cols)[0]
             for a, b, bias in problems]
    bench.check_tiles(problems, await bench.run(tiles, stall=STALL, seed=10))


@cocotb.test()
async def tiled_product(dut):
    bench = Bench(dut)
    await reset(dut, sources=("a", "b", "bias"), sinks=("c",))
    m, k, n = 7, 13, 11
    a, b, bias = bench.operands(m, k, n)
    tiles = gemm_tiles(a, b, bias, rows=bench.rows, cols=bench.cols)
    beats = await bench.run(tiles, stall=STALL, seed=20)
    got = gemm_assemble(beats, m=m, n=n, rows=bench.rows, cols=bench.cols)
    assert (got == gemm_reference(a, b, bias)).all()


@cocotb.test()
async def worst_case_at_k_max(dut):
    bench = Bench(dut)
    await reset(dut, sources=("a", "b", "bias"), sinks=("c",))
    k = bench.k_max
    a_lo, a_hi = shape_range(bench.a_shape)
    # row i alternates the operand extremes, column j the B extremes; biases at the extremes
    a = np.array([[(a_lo, a_hi)[i % 2]] * k for i in range(bench.rows)])
    b = np.array([[(-128, 127)[j % 2] for j in range(bench.cols)]] * k)
    bias = np.array([((1 << 31) - 1, -(1 << 31))[j % 2] for j in range(bench.cols)])
    problems = [(a, b, bias), (a, b[:, ::-1], bias[::-1])]
    tiles = [gemm_tiles(*problem, rows=bench.rows, cols=bench.cols)[0] for problem in problems]
    bench.check_tiles(problems, await bench.run(tiles, stall=0.1, seed=30))


@cocotb.test()
async def back_to_back_timing(dut):
    """Free-flowing streams: tiles end every max(K, rows, cols) cycles, rows leave at latency."""
    bench = Bench(dut)
    k = max(bench.rows, bench.cols)
    count = 4
    problems = [bench.operands(bench.rows, k, bench.cols) for _ in range(count)]
    tiles = [gemm_tiles(a, b, bias, rows=bench.rows, cols=bench.cols)[0]
             for a, b, bias in problems]
    ends, outputs = [], []

    async def monitor():
        cycle = 0
        while True:
            await ReadOnly()
            if dut.a__valid.value and dut.a__ready.value:
                if unpack(bench.a_layout, dut.a__payload.value.to_unsigned())["last"]:
                    ends.append(cycle)
            if dut.c__valid.value and dut.c__ready.value:
                outputs.append(cycle)
            await RisingEdge(dut.clk)
            cycle += 1

    await reset(dut, sources=("a", "b", "bias"), sinks=("c",))
    watcher = cocotb.start_soon(monitor())
    beats = await bench.run(tiles, stall=0.0, seed=40)
    watcher.cancel()
    bench.check_tiles(problems, beats)
    assert [e - ends[0] for e in ends] == [t * k for t in range(count)], ends
    assert outputs == [e + bench.p["latency"] + i for e in ends for i in range(bench.rows)], \
        (ends, outputs)
