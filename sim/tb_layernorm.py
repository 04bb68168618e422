"""cocotb bench of IntLayerNorm's emitted Verilog (run from tests/test_rtl_layernorm.py).

Parameters (``sim.runner.tb_params()``), computed with ``bertcore.quant.kernels`` on the pytest
side: ``beats`` (flat input payloads: corner and random rows, with two malformed rows among them),
``expected`` (flat output payloads of the well-formed rows), ``errors`` (the number of malformed
rows), ``seed`` and ``stall`` for the random stalls, and for the timing test ``timing_beats`` (a
few well-formed rows), ``hidden``, ``latency`` and ``row_period``.
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.axis import check_stream, reset
from sim.runner import tb_params


async def count_pulses(dut, signal, stop):
    """Count the cycles on which ``signal`` is high until ``stop`` (a list) is not empty."""
    count = 0
    while not stop:
        await RisingEdge(dut.clk)
        await ReadOnly()
        count += int(signal.value)
    return count


@cocotb.test()
async def rows_with_stalls_and_errors(dut):
    """Every well-formed row exact and in order under random stalls; malformed rows dropped,
    each with one ``error`` pulse."""
    params = tb_params()
    await reset(dut)
    stop = []
    monitor = cocotb.start_soon(count_pulses(dut, dut.error, stop))
    await check_stream(dut, params["beats"], params["expected"],
                       rng=random.Random(params["seed"]), stall=params["stall"])
    stop.append(True)
    errors = await monitor
    assert errors == params["errors"], f"{errors} error pulses, expected {params['errors']}"


@cocotb.test()
async def latency_and_row_period(dut):
    """From an idle unit: the documented latency, then one row per ``row_period`` cycles."""
    params = tb_params()
    await reset(dut)
    n, beats = params["hidden"], params["timing_beats"]
    dut.o_stream__ready.value = 1
    ins, outs, cycle = [], [], 0
    while len(outs) < len(beats):
        sending = len(ins) < len(beats)
        if sending:
            dut.i_stream__payload.value = beats[len(ins)]
        dut.i_stream__valid.value = int(sending)
        await ReadOnly()
        if sending and dut.i_stream__ready.value:
            ins.append(cycle)
        if dut.o_stream__valid.value:
            outs.append(cycle)
        await RisingEdge(dut.clk)
        cycle += 1
        assert cycle < 100 * len(beats), "timeout"
    dut.i_stream__valid.value = 0
    assert outs[0] - ins[n - 1] == params["latency"], \
        f"latency {outs[0] - ins[n - 1]}, documented {params['latency']}"
    starts = outs[::n]
    periods = [b - a for a, b in zip(starts, starts[1:])]
    assert periods == [params["row_period"]] * len(periods), f"row periods {periods}"
    assert all(outs[i + n - 1] - outs[i] == n - 1 for i in range(0, len(outs), n))
