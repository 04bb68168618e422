"""cocotb bench of the Requantizer's emitted Verilog (run from tests/test_rtl_requant.py).

Parameters (``sim.runner.tb_params()``): flat ``inputs`` and ``expected`` payloads (computed with
``bertcore.quant.kernels`` on the pytest side), ``seed``, ``stall``, ``latency`` and a ``probe``
input payload for the latency measurement.
"""

import random

import cocotb
from cocotb.utils import get_sim_time

from sim.axis import check_stream, measure_latency, reset
from sim.runner import tb_params


@cocotb.test()
async def latency(dut):
    """One beat into an empty pipeline comes out after exactly LATENCY cycles."""
    params = tb_params()
    await reset(dut)
    cycles = await measure_latency(dut, params["probe"])
    assert cycles == params["latency"], f"latency {cycles}, documented {params['latency']}"


@cocotb.test()
async def full_rate(dut):
    """Without stalls, one beat per cycle: every beat exact, nothing lost or duplicated."""
    params = tb_params()
    await reset(dut)
    start = get_sim_time("ns")
    await check_stream(dut, params["inputs"], params["expected"])
    cycles = (get_sim_time("ns") - start) / 10
    bound = len(params["inputs"]) + params["latency"] + 2
    assert cycles <= bound, f"{len(params['inputs'])} beats took {cycles} cycles (> {bound})"


@cocotb.test()
async def random_stalls(dut):
    """Random idle cycles on the input and not-ready cycles on the output."""
    params = tb_params()
    await reset(dut)
    await check_stream(dut, params["inputs"], params["expected"],
                       rng=random.Random(params["seed"]), stall=params["stall"])
