"""RegisterSlice and StreamBuffer: every beat in order under random stalls, full rate,
registered handshakes; StreamBuffer holds exactly ``depth`` beats."""

import random

import pytest
from amaranth.hdl import signed
from amaranth.lib import data

from bertcore.rtl.common import pack
from bertcore.rtl.stream import RegisterSlice, StreamBuffer
from rtl_sim import simulate, stream_get, stream_latency, stream_put
from sim.runner import lint, run_cocotb

LAYOUT = data.StructLayout({"data": data.ArrayLayout(signed(8), 3), "last": 1})
#: The stages under test: a register slice and buffers of several depths.
STAGES = {"slice": RegisterSlice, "buffer2": lambda shape: StreamBuffer(shape, 2),
          "buffer5": lambda shape: StreamBuffer(shape, 5),
          "buffer8": lambda shape: StreamBuffer(shape, 8)}


def beats(rng, count):
    return [{"data": [rng.randint(-128, 127) for _ in range(3)], "last": rng.randint(0, 1)}
            for _ in range(count)]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("i_stall, o_stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.3, 0.6),
                                              (0.7, 0.2)])
def test_order_under_stalls(stage, i_stall, o_stall):
    dut = STAGES[stage](LAYOUT)
    rng = random.Random(f"slice-{i_stall}-{o_stall}")
    sent = beats(rng, 400)
    got = []

    async def source(ctx):
        await stream_put(ctx, dut.i_stream, sent, rng=random.Random(1), stall=i_stall)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o_stream, len(sent), rng=random.Random(2),
                                    stall=o_stall))

    simulate(dut, source, sink, name=f"{stage}_{i_stall}_{o_stall}", deadline=1e-4)
    assert got == sent


@pytest.mark.parametrize("stage", STAGES)
def test_full_rate_and_latency(stage):
    dut = STAGES[stage](signed(8))
    sent = list(range(-50, 50))
    cycles = []

    async def bench(ctx):
        latency, out = await stream_latency(ctx, dut.i_stream, dut.o_stream, 7)
        assert (latency, out) == (type(dut).latency, 7) == (1, 7)
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

    simulate(dut, bench, name=f"{stage}_rate", deadline=1e-5)
    assert cycles == [len(sent) + 1]


@pytest.mark.parametrize("depth", [2, 3, 8])
def test_buffer_holds_depth_beats(depth):
    """With the output stalled a StreamBuffer takes exactly ``depth`` beats, then gives them
    back in order, one per cycle, and takes again."""
    dut = StreamBuffer(signed(8), depth)

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        taken = 0
        for value in range(depth + 3):
            ctx.set(dut.i_stream.payload, value)
            ctx.set(dut.i_stream.valid, 1)
            _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
            taken += ready
            if not ready:
                break
            ctx.set(dut.i_stream.payload, value + 1)
        assert taken == depth
        ctx.set(dut.i_stream.valid, 0)
        ctx.set(dut.o_stream.ready, 1)
        got = []
        for _ in range(depth + 2):
            _, _, valid, out = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid:
                got.append(out)
        assert got == list(range(depth))
        assert ctx.get(dut.i_stream.ready) and not ctx.get(dut.o_stream.valid)

    simulate(dut, bench, name=f"buffer_depth_{depth}", deadline=1e-5)


def test_buffer_rejects_depth():
    for depth in (1, 0, 2.0, True):
        with pytest.raises((TypeError, ValueError), match="depth must be"):
            StreamBuffer(signed(8), depth)


@pytest.mark.parametrize("stage", STAGES)
def test_handshakes_are_registered(stage):
    """``i_stream.ready`` and ``o_stream.valid`` do not change with the inputs of the same cycle."""
    dut = STAGES[stage](signed(8))

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        for valid in (1, 0, 1, 1):
            before = (ctx.get(dut.i_stream.ready), ctx.get(dut.o_stream.valid))
            ctx.set(dut.i_stream.valid, valid)
            ctx.set(dut.o_stream.ready, 1 - valid)
            assert (ctx.get(dut.i_stream.ready), ctx.get(dut.o_stream.valid)) == before
            await ctx.tick()

    simulate(dut, bench, name=f"{stage}_registered", deadline=1e-6)


@pytest.mark.parametrize("stage", ["slice", "buffer5"])
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_cocotb(stage, simulator):
    dut = STAGES[stage](LAYOUT)
    rng = random.Random("slice-cocotb")
    run_cocotb(dut, toplevel=f"stream_{stage}", test_module="tb_stream", simulator=simulator,
               name=stage, params={"inputs": [pack(LAYOUT, b) for b in beats(rng, 300)],
                                   "seed": 5, "stall": 0.4,
                                   "depth": getattr(dut, "depth", 2)})


@pytest.mark.parametrize("stage", ["slice", "buffer2", "buffer8"])
def test_lint(stage):
    lint(STAGES[stage](LAYOUT), toplevel=f"stream_{stage}")
