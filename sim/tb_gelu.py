"""cocotb bench of IntGELU's emitted Verilog (run from tests/test_rtl_gelu.py).

Parameters (``sim.runner.tb_params()``): ``sets``, a list of constant sets, each with the
two's-complement port values ``b``, ``c``, ``q1`` and flat ``inputs``/``expected`` payloads
(computed with ``bertcore.quant.kernels.int_gelu_int`` on the pytest side); ``seed``, ``stall``,
``latency``.
"""

import random

import cocotb
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from sim.axis import check_stream, measure_latency, reset
from sim.runner import tb_params


async def _set_constants(dut, consts):
    dut.b.value = consts["b"]
    dut.c.value = consts["c"]
    dut.q1.value = consts["q1"]
    await RisingEdge(dut.clk)                      # registered once inside the unit
    await RisingEdge(dut.clk)


@cocotb.test()
async def latency(dut):
    """One beat into an empty pipeline comes out after exactly LATENCY cycles."""
    params = tb_params()
    first = params["sets"][0]
    dut.b.value, dut.c.value, dut.q1.value = first["b"], first["c"], first["q1"]
    await reset(dut)
    cycles = await measure_latency(dut, first["inputs"][0])
    assert cycles == params["latency"], f"latency {cycles}, documented {params['latency']}"


@cocotb.test()
async def full_rate(dut):
    """Without stalls, one beat per cycle, for each constant set."""
    params = tb_params()
    await reset(dut)
    for consts in params["sets"]:
        await _set_constants(dut, consts)
        start = get_sim_time("ns")
        await check_stream(dut, consts["inputs"], consts["expected"])
        cycles = (get_sim_time("ns") - start) / 10
        bound = len(consts["inputs"]) + params["latency"] + 2
        assert cycles <= bound, f"{len(consts['inputs'])} beats took {cycles} cycles (> {bound})"


@cocotb.test()
async def random_stalls(dut):
    """Random idle cycles on the input and not-ready cycles on the output, each constant set."""
    params = tb_params()
    rng = random.Random(params["seed"])
    await reset(dut)
    for consts in params["sets"]:
        await _set_constants(dut, consts)
        await check_stream(dut, consts["inputs"], consts["expected"], rng=rng,
                           stall=params["stall"])
