"""cocotb bench: :class:`boards.litedram.DRAMSubsystem` on LiteDRAM's simulation core.

The generated ``litedram_core`` (``litedram.gen --sim``: the controller with LiteDRAM's
SDRAMPHYModel, 32 MB of simulated SDRAM) behind the bring-up FSM, the writer and the reader.
The bench waits for ``init_done``, writes ``words`` through the writer (random gaps), streams
them back through the reader twice (random backpressure, then none) and compares bit for bit,
while counting the refresh commands LiteDRAM's refresher issues (its state machine entering the
sequencer state, read through VPI).

``params``: ``words`` (list of ints), ``base``, ``seed``, ``ready_prob``, ``init_timeout``,
``refresher`` (candidate hierarchical names of the refresher's state register), ``report`` (a JSON file).
"""

import json
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Edge, RisingEdge

from sim.runner import tb_params

CLOCK_NS = 20


class RefreshCounter:
    def __init__(self, signal):
        self.signal = signal
        self.count = 0

    async def run(self):
        while True:
            await Edge(self.signal)
            if int(self.signal.value) == 2:            # LiteDRAM's refresher: sequencer started
                self.count += 1


def _lookup(dut, paths):
    """The first of ``paths`` (dotted names below ``dut``) that exists: Migen prefixes names
    only where they would clash, so the refresher's state register is named differently in
    differently configured cores."""
    for path in paths:
        handle = dut
        try:
            for part in path.split("."):
                handle = getattr(handle, part)
        except AttributeError:
            continue
        return handle
    raise AssertionError(f"none of {paths} in the design")


@cocotb.test()
async def dram_roundtrip(dut):
    p = tb_params()
    rng = random.Random(p["seed"])
    words, base = p["words"], p["base"]
    report = {}
    dut.w_start.value = 0
    dut.r_start.value = 0
    dut.w_data__valid.value = 0
    dut.m_axis__ready.value = 0
    dut.rst.value = 1
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    refreshes = RefreshCounter(_lookup(dut, p["refresher"]))
    cocotb.start_soon(refreshes.run())

    cycle = 0
    for cycle in range(p["init_timeout"]):
        await RisingEdge(dut.clk)
        if dut.init_done.value or dut.init_error.value:
            break
    assert int(dut.init_error.value) == 0, "the bring-up reported an error"
    assert int(dut.init_done.value) == 1, f"no init_done within {p['init_timeout']} cycles"
    report["init_cycles"] = cycle
    refresh_at_init = refreshes.count

    # write the image through the writer, with random gaps
    await RisingEdge(dut.clk)
    dut.w_base.value = base
    dut.w_start.value = 1
    await RisingEdge(dut.clk)
    dut.w_start.value = 0
    start = cocotb.utils.get_sim_time("ns")
    i = 0
    while i < len(words):
        valid = rng.random() < 0.8
        dut.w_data__valid.value = int(valid)
        dut.w_data__payload.value = words[i]
        await RisingEdge(dut.clk)
        if valid and dut.w_data__ready.value:
            i += 1
    dut.w_data__valid.value = 0
    for _ in range(10000):
        await RisingEdge(dut.clk)
        if dut.w_idle.value and int(dut.w_written.value) == len(words):
            break
    assert int(dut.w_written.value) == len(words) and dut.w_idle.value, "writer did not finish"
    assert int(dut.w_overflow.value) == 0
    report["write_cycles"] = int((cocotb.utils.get_sim_time("ns") - start) // CLOCK_NS)

    async def read_back(ready_prob):
        dut.r_base.value = base
        dut.r_count.value = len(words)
        dut.r_start.value = 1
        await RisingEdge(dut.clk)
        dut.r_start.value = 0
        got, first, last_seen = [], None, None
        n = 0
        while len(got) < len(words):
            ready = rng.random() < ready_prob
            dut.m_axis__ready.value = int(ready)
            await RisingEdge(dut.clk)
            n += 1
            if ready and dut.m_axis__valid.value:
                if first is None:
                    first = n
                got.append(int(dut.m_axis__payload.value) & ((1 << p["width"]) - 1))
                last = (int(dut.m_axis__payload.value) >> p["width"]) & 1
                assert last == (len(got) == len(words)), f"last wrong at word {len(got) - 1}"
                last_seen = n
            assert n < 50 * len(words) + 1000, f"read stalled after {len(got)} words"
        dut.m_axis__ready.value = 0
        for _ in range(4):
            await RisingEdge(dut.clk)
            assert not dut.m_axis__valid.value, "a word after last"
        bad = [k for k, (a, b) in enumerate(zip(got, words)) if a != b]
        assert not bad, (f"{len(bad)} words differ, first at {bad[0]}: "
                         f"{got[bad[0]]:#x} != {words[bad[0]]:#x}")
        assert not dut.r_busy.value
        return first, last_seen

    refresh_before = refreshes.count
    start = cocotb.utils.get_sim_time("ns")
    await read_back(p["ready_prob"])
    report["read_backpressure_cycles"] = int((cocotb.utils.get_sim_time("ns") - start)
                                             // CLOCK_NS)
    report["refreshes_backpressure_read"] = refreshes.count - refresh_before
    refresh_before = refreshes.count
    first, last = await read_back(1.0)
    report["read_latency_cycles"] = first
    report["read_stream_cycles"] = last - first + 1
    report["refreshes_full_speed_read"] = refreshes.count - refresh_before
    report["refreshes"] = refreshes.count
    report["refreshes_after_init"] = refreshes.count - refresh_at_init
    report["total_cycles"] = int(cocotb.utils.get_sim_time("ns") // CLOCK_NS)
    with open(p["report"], "w") as f:
        json.dump(report, f)
