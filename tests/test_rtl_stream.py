"""RegisterSlice: every beat in order under random stalls, full rate, registered handshakes."""

import random

import pytest
from amaranth.hdl import signed
from amaranth.lib import data

from bertcore.rtl.common import pack
from bertcore.rtl.stream import RegisterSlice
from rtl_sim import simulate, stream_get, stream_latency, stream_put
from sim.runner import lint, run_cocotb

LAYOUT = data.StructLayout({"data": data.ArrayLayout(signed(8), 3), "last": 1})


def beats(rng, count):
    return [{"data": [rng.randint(-128, 127) for _ in range(3)], "last": rng.randint(0, 1)}
            for _ in range(count)]


@pytest.mark.parametrize("i_stall, o_stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.3, 0.6),
                                              (0.7, 0.2)])
def test_order_under_stalls(i_stall, o_stall):
    dut = RegisterSlice(LAYOUT)
    rng = random.Random(f"slice-{i_stall}-{o_stall}")
    sent = beats(rng, 400)
    got = []

    async def source(ctx):
        await stream_put(ctx, dut.i_stream, sent, rng=random.Random(1), stall=i_stall)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o_stream, len(sent), rng=random.Random(2),
                                    stall=o_stall))

    simulate(dut, source, sink, name=f"slice_{i_stall}_{o_stall}", deadline=1e-4)
    assert got == sent


def test_full_rate_and_latency():
    dut = RegisterSlice(signed(8))
    sent = list(range(-50, 50))
    cycles = []

    async def bench(ctx):
        latency, out = await stream_latency(ctx, dut.i_stream, dut.o_stream, 7)
        assert (latency, out) == (RegisterSlice.latency, 7)
        ctx.set(dut.o_stream.ready, 1)
        start = 0
        got = []
        for value in sent:                     # one beat offered and one taken every cycle
            ctx.set(dut.i_stream.payload, value)
            ctx.set(dut.i_stream.valid, 1)
            _, _, ready, valid, out = await ctx.tick().sample(
                dut.i_stream.ready, dut.o_stream.valid, dut.o_stream.payload)
            assert ready
            if valid:
                got.append(out)
            start += 1
        ctx.set(dut.i_stream.valid, 0)
        _, _, valid, out = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
        assert valid
        got.append(out)
        assert got == sent
        cycles.append(start + 1)

    simulate(dut, bench, name="slice_rate", deadline=1e-5)
    assert cycles == [len(sent) + 1]


def test_handshakes_are_registered():
    """``i_stream.ready`` and ``o_stream.valid`` do not change with the inputs of the same cycle."""
    dut = RegisterSlice(signed(8))

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        for valid in (1, 0, 1, 1):
            before = (ctx.get(dut.i_stream.ready), ctx.get(dut.o_stream.valid))
            ctx.set(dut.i_stream.valid, valid)
            ctx.set(dut.o_stream.ready, 1 - valid)
            assert (ctx.get(dut.i_stream.ready), ctx.get(dut.o_stream.valid)) == before
            await ctx.tick()

    simulate(dut, bench, name="slice_registered", deadline=1e-6)


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_cocotb(simulator):
    dut = RegisterSlice(LAYOUT)
    rng = random.Random("slice-cocotb")
    run_cocotb(dut, toplevel="register_slice", test_module="tb_stream", simulator=simulator,
               name="slice", params={"inputs": [pack(LAYOUT, b) for b in beats(rng, 300)],
                                     "seed": 5, "stall": 0.4})


def test_lint():
    lint(RegisterSlice(LAYOUT), toplevel="register_slice")
