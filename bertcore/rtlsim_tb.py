"""cocotb driver of :mod:`bertcore.rtlsim`: runs a job file against ``bertcore_sim_top``.

The job (``$BERTCORE_RTLSIM_JOB``, JSON) lists runs of activation words; for each run the bench
pulses ``param_go`` (the wrapper replays the image), sends the activation packet, collects the
output packet (or the failure packet's cause code) and reads ``cycles``, with optional random
stalls on both activation streams.
Results go to the job's ``result`` file, with the wall and CPU (simulator process) time per run.

Python sleeps while the core computes: the clock runs in the simulator's GPI layer, and without
stalls the bench awaits single edges (``tvalid`` rising, ``busy`` falling), not every cycle.
"""

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


async def drive_stream(clk, valid, ready, data, words, *, last=None, rng=None, stall=0.0,
                       beats=None):
    """Drive ``words`` on a valid/ready stream (``data``, and ``last`` on the final word when
    given), each word held until a clock edge with ``ready``; before each word an idle cycle
    with probability ``stall`` (drawn from ``rng``). ``beats`` (a dict signal -> one value per
    word) drives further signals beat by beat, e.g. ``tuser`` and ``tlast`` of a malformed
    packet; they return to 0 afterwards. Shared with ``sim/axis.py``."""
    beats = beats or {}
    for i, word in enumerate(words):
        while rng is not None and stall > 0 and rng.random() < stall:
            valid.value = 0
            await RisingEdge(clk)
        data.value = int(word)
        if last is not None:
            last.value = int(i == len(words) - 1)
        for signal, values in beats.items():
            signal.value = int(values[i])
        valid.value = 1
        while True:
            await ReadOnly()
            taken = bool(ready.value)
            await RisingEdge(clk)
            if taken:
                break
    valid.value = 0
    for signal in [last, *beats]:
        if signal is not None:
            signal.value = 0


async def send_packet(dut, words, rng, stall, table=()):
    """Drive ``words`` into ``s_axis_act`` (``tlast`` on the last one) with random idle cycles,
    after the words of a segment ``table`` (``tuser`` set, a packed run) when given."""
    if table:
        dut.s_axis_act_tuser.value = 1
        await drive_stream(dut.clk, dut.s_axis_act_tvalid, dut.s_axis_act_tready,
                           dut.s_axis_act_tdata, table, rng=rng, stall=stall)
    dut.s_axis_act_tuser.value = 0
    await drive_stream(dut.clk, dut.s_axis_act_tvalid, dut.s_axis_act_tready,
                       dut.s_axis_act_tdata, words, last=dut.s_axis_act_tlast, rng=rng,
                       stall=stall)


async def _receive(dut, rng, stall, limit):
    """Collect one output packet; returns its words and the cause code of a failure packet
    (``tuser`` = 1; 0 for a result). Without stalls, Python sleeps until ``tvalid`` rises
    instead of waking every cycle while the core computes."""
    out = []
    failed = 0
    dut.m_axis_act_tready.value = 1
    while True:
        if stall:
            ready = rng.random() >= stall
            dut.m_axis_act_tready.value = int(ready)
        else:
            ready = True
        await ReadOnly()
        if not dut.m_axis_act_tvalid.value:
            if not stall:
                await RisingEdge(dut.m_axis_act_tvalid)
                await ReadOnly()
            else:
                await RisingEdge(dut.clk)
                continue
        if ready and dut.m_axis_act_tvalid.value:
            out.append(int(dut.m_axis_act_tdata.value))
            last = bool(dut.m_axis_act_tlast.value)
            if dut.m_axis_act_tuser.value:
                failed = out[-1]
            await RisingEdge(dut.clk)
            if last:
                break
            if len(out) > limit:
                raise AssertionError(f"output packet longer than {limit} beats")
        else:
            await RisingEdge(dut.clk)
    dut.m_axis_act_tready.value = 0
    return out, failed


@cocotb.test()
async def run_job(dut):
    job = json.loads(open(os.environ["BERTCORE_RTLSIM_JOB"]).read())
    rng = random.Random(job.get("seed", 1))
    stall = float(job.get("stall", 0.0))
    for name in ("s_axis_act_tvalid", "s_axis_act_tlast", "s_axis_act_tuser", "s_axis_act_tdata",
                 "m_axis_act_tready", "param_go"):
        getattr(dut, name).value = 0
    # the clock toggles in the simulator's GPI layer (C++): a Python clock would wake Python twice
    # per cycle and cap the simulation far below the model's speed
    Clock(dut.clk, 10, unit="ns", impl="gpi").start(start_high=False)
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    results = []
    failure = None
    try:
        for run in job["runs"]:
            words = [int(w, 16) for w in run["act"]]
            table = [int(w, 16) for w in run.get("table", [])]
            start = cocotb.utils.get_sim_time("ns")
            wall, cpu = time.perf_counter(), time.process_time()
            dut.param_go.value = 1
            await RisingEdge(dut.clk)
            dut.param_go.value = 0
            sender = cocotb.start_soon(send_packet(dut, words, rng, stall, table))
            out, failed = await _receive(dut, rng, stall, 4 * run["out_beats"] + 4)
            await sender
            if dut.busy.value:
                await FallingEdge(dut.busy)
            await RisingEdge(dut.clk)
            cycles = int((cocotb.utils.get_sim_time("ns") - start) // 10)
            results.append({"out": [f"{w:x}" for w in out], "cycles": int(dut.cycles.value),
                            "sim_cycles": cycles, "error": int(dut.error.value),
                            "failed": failed,
                            "wall_s": time.perf_counter() - wall,
                            "cpu_s": time.process_time() - cpu,
                            # the core's performance counters of this run
                            **{name: int(getattr(dut, name).value)
                               for name in ("array_beats", "layer_cycles", "failed_runs")
                               if hasattr(dut, name)}})
    except AssertionError as exc:
        failure = str(exc)
    with open(job["result"], "w") as f:
        json.dump({"runs": results, "failure": failure}, f)
    assert failure is None, failure
