"""cocotb bench of IntSoftmax's emitted Verilog (run from tests/test_rtl_softmax.py).

Parameters (``sim.runner.tb_params()``), all computed with ``bertcore.quant.kernels`` on the
pytest side:

* ``batches``: list of ``{"k", "inputs", "expected", "errors"}``, the constants, flat input and
  expected output payloads and the number of overlong rows of each batch, run one after the
  other with random stalls (``seed``, ``stall``), the constants changed between batches;
* ``rate``: ``{"k", "inputs", "expected", "times"}`` for back-to-back rows without stalls, with
  the cycle (counted from the first input transfer) of every output transfer;
* ``probe``: one flat payload (a one-element row) and ``latency``, its documented latency.
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.axis import StreamSink, StreamSource, measure_latency, reset
from sim.runner import tb_params

CONSTANTS = ("x0", "b", "c", "m", "e")


def set_constants(dut, k):
    for name in CONSTANTS:
        port = getattr(dut, name)
        port.value = k[name] & ((1 << len(port)) - 1)


async def count_pulses(dut, counter):
    while True:
        await ReadOnly()
        if dut.error.value:
            counter[0] += 1
        await RisingEdge(dut.clk)


@cocotb.test()
async def latency(dut):
    """A one-element row in an idle unit comes out after exactly latency(1) cycles."""
    params = tb_params()
    await reset(dut)
    set_constants(dut, params["batches"][0]["k"])
    cycles = await measure_latency(dut, params["probe"])
    assert cycles == params["latency"], f"latency {cycles}, documented {params['latency']}"


@cocotb.test()
async def full_rate(dut):
    """Back-to-back rows, no stalls: every output at its documented cycle, every value exact."""
    params = tb_params()["rate"]
    await reset(dut)
    set_constants(dut, params["k"])
    source = StreamSource(dut, "i_stream", dut.clk)
    dut.o_stream__ready.value = 1
    sender = cocotb.start_soon(source.send(params["inputs"]))
    got, times, cycle, start = [], [], 0, None
    while len(got) < len(params["expected"]) and cycle < 10_000:
        await ReadOnly()
        if start is None and dut.i_stream__valid.value and dut.i_stream__ready.value:
            start = cycle
        if dut.o_stream__valid.value:
            got.append(dut.o_stream__payload.value.to_unsigned())
            times.append(cycle - start)
        await RisingEdge(dut.clk)
        cycle += 1
    await sender
    assert got == params["expected"]
    assert times == params["times"], f"output cycles {times}, documented {params['times']}"


@cocotb.test()
async def random_stalls(dut):
    """Batches of rows for several scales with random stalls on both sides; overlong rows."""
    params = tb_params()
    await reset(dut)
    rng = random.Random(params["seed"])
    pulses = [0]
    cocotb.start_soon(count_pulses(dut, pulses))
    for index, batch in enumerate(params["batches"]):
        set_constants(dut, batch["k"])
        source = StreamSource(dut, "i_stream", dut.clk, rng=rng, stall=params["stall"])
        sink = StreamSink(dut, "o_stream", dut.clk, rng=rng, stall=params["stall"])
        sender = cocotb.start_soon(source.send(batch["inputs"]))
        got = await sink.recv(len(batch["expected"]))
        await sender
        for beat, (g, e) in enumerate(zip(got, batch["expected"])):
            assert g == e, f"batch {index} beat {beat}: got {g:#x}, expected {e:#x}"
    await RisingEdge(dut.clk)
    want = sum(batch["errors"] for batch in params["batches"])
    assert pulses[0] == want, f"{pulses[0]} error pulses, expected {want}"
