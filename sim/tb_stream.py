"""cocotb bench of RegisterSlice's emitted Verilog (run from tests/test_rtl_stream.py).

Parameters (``sim.runner.tb_params()``): ``inputs`` (flat payloads; a slice's output equals its
input), ``seed``, ``stall``.
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.axis import check_stream, measure_latency, reset
from sim.runner import tb_params


@cocotb.test()
async def latency(dut):
    """A beat into the empty slice comes out one cycle later."""
    params = tb_params()
    await reset(dut)
    assert await measure_latency(dut, params["inputs"][0]) == 1


@cocotb.test()
async def full_rate(dut):
    """Without stalls every beat passes in order at one beat per cycle."""
    params = tb_params()
    await reset(dut)
    start = cocotb.utils.get_sim_time("ns")
    await check_stream(dut, params["inputs"], params["inputs"])
    cycles = (cocotb.utils.get_sim_time("ns") - start) / 10
    assert cycles <= len(params["inputs"]) + 3, f"{len(params['inputs'])} beats: {cycles} cycles"


@cocotb.test()
async def random_stalls(dut):
    """Random idle input and not-ready output cycles, light to heavy: nothing lost, repeated or
    reordered."""
    params = tb_params()
    rng = random.Random(params["seed"])
    await reset(dut)
    for stall in (0.2, params["stall"], 0.8):      # each pass ends with the slice empty
        await check_stream(dut, params["inputs"], params["inputs"], rng=rng, stall=stall)


@cocotb.test()
async def ready_after_stall(dut):
    """With the output stalled the slice holds two beats, then drops ready; ready returns once
    the output moves again."""
    params = tb_params()
    await reset(dut)
    dut.o_stream__ready.value = 0
    dut.i_stream__valid.value = 1
    taken = 0
    for payload in params["inputs"][:4]:
        dut.i_stream__payload.value = payload
        await ReadOnly()
        ready = int(dut.i_stream__ready.value)
        await RisingEdge(dut.clk)
        taken += ready
        if not ready:
            break
    assert taken == 2, f"the stalled slice took {taken} beats, not 2"
    dut.i_stream__valid.value = 0
    dut.o_stream__ready.value = 1
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert int(dut.i_stream__ready.value) == 1
