"""cocotb bench: :class:`boards.image_store.ImageStore` on LiteDRAM's simulation core.

The generated ``litedram_core`` (``litedram.gen --sim``: the controller with LiteDRAM's
SDRAMPHYModel, 32 MB of simulated SDRAM) behind the bring-up FSM, the writer, the reader and
the image store. The bench waits for ``init_done``, checks that a run without an image raises
``error``, loads ``words`` (random gaps; the store writes them, reads them back and compares
CRC-32s), checks ``valid`` and the fingerprint, then runs the image twice (random
backpressure, then none) comparing bit for bit, while counting the refresh commands LiteDRAM's
refresher issues (its state machine entering the sequencer state, read through VPI).

Then: a run aborted midway (the image stays valid), a load aborted midway (no image; a run is an
error), a smaller image loaded and run (its own length, ``last`` and fingerprint).

``params``: ``words`` (list of ints), ``fingerprint``, ``smaller`` (``words``,
``fingerprint``), ``seed``, ``ready_prob``, ``init_timeout``,
``refresher`` (candidate hierarchical names of the refresher's state register),
``model_arrays`` (per bank: candidate names of the model's memory array), ``model_samples``
(``[port address, bank, index, 16-bit value]`` expected there after the load), ``report`` (a JSON file).
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


async def _pulse(dut, signal):
    await RisingEdge(dut.clk)
    signal.value = 1
    await RisingEdge(dut.clk)
    signal.value = 0


async def _until_idle(dut, limit, what):
    for n in range(limit):
        await RisingEdge(dut.clk)
        if not dut.busy.value:
            return n
    raise AssertionError(f"{what}: still busy after {limit} cycles")


@cocotb.test()
async def image_store(dut):
    p = tb_params()
    rng = random.Random(p["seed"])
    words, width = p["words"], p["width"]
    report = {}
    # every input driven (Icarus leaves an undriven input X, Verilator 0: an X on ``verify``
    # made the reader's word count X and a run streamed nothing under Icarus)
    for name in ("load", "verify", "run", "cancel", "s_load__valid", "m_param__ready",
                 "expect_words", "expect_fingerprint"):
        getattr(dut, name).value = 0
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

    # a run before any image: error, nothing streamed
    dut.m_param__ready.value = 1
    await _pulse(dut, dut.run)
    for _ in range(50):
        await RisingEdge(dut.clk)
        assert not dut.m_param__valid.value, "a word streamed without an image"
    assert dut.error.value and not dut.valid.value, "no error for a run without an image"

    async def load(image, *, abort_after=None):
        """Load ``image`` (random gaps, last on the final word); with ``abort_after``, pulse
        abort after that many words instead of finishing."""
        await _pulse(dut, dut.load)
        i = 0
        while i < len(image) and i != abort_after:
            valid = rng.random() < 0.8
            dut.s_load__valid.value = int(valid)
            dut.s_load__payload.value = image[i] | (int(i == len(image) - 1) << width)
            await RisingEdge(dut.clk)
            if valid and dut.s_load__ready.value:
                i += 1
        dut.s_load__valid.value = 0
        if abort_after is not None:
            await _pulse(dut, dut.cancel)
        return await _until_idle(dut, 50 * len(image), "load")

    # load: written, read back, compared
    start = cocotb.utils.get_sim_time("ns")
    await load(words)
    report["load_cycles"] = int((cocotb.utils.get_sim_time("ns") - start) // CLOCK_NS)
    assert dut.valid.value and not dut.error.value, "the image did not verify"
    assert int(dut.words.value) == len(words)
    assert int(dut.fingerprint.value) == p["fingerprint"], (
        f"fingerprint {int(dut.fingerprint.value):#010x} != {p['fingerprint']:#010x}")

    # where the model keeps the words (the layout a preloaded image must follow)
    banks = [_lookup(dut, names) for names in p["model_arrays"]]
    for address, bank, index, value in p["model_samples"]:
        got = int(banks[bank][index].value)
        assert got == value, (f"port word {address:#x}: model bank {bank}[{index:#x}] = "
                              f"{got:#06x}, expected {value:#06x}")
    report["model_samples_checked"] = len(p["model_samples"])

    async def run(image, ready_prob, *, abort_after=None):
        await _pulse(dut, dut.run)
        got, first, last_seen, n = [], None, None, 0
        while len(got) < len(image):
            if len(got) == abort_after:
                # stop taking words, cancel: nothing more may come out
                dut.m_param__ready.value = 0
                await _pulse(dut, dut.cancel)
                dut.m_param__ready.value = 1
                for _ in range(200):
                    await RisingEdge(dut.clk)
                    assert not dut.m_param__valid.value, "a word after abort"
                await _until_idle(dut, 1000, "aborted run")
                return None, None
            ready = rng.random() < ready_prob
            dut.m_param__ready.value = int(ready)
            await RisingEdge(dut.clk)
            n += 1
            if ready and dut.m_param__valid.value:
                first = n if first is None else first
                value = int(dut.m_param__payload.value)
                got.append(value & ((1 << width) - 1))
                assert (value >> width) == (len(got) == len(image)), \
                    f"last wrong at word {len(got) - 1}"
                last_seen = n
            assert n < 50 * len(image) + 1000, f"run stalled after {len(got)} words"
        dut.m_param__ready.value = 1
        for _ in range(4):
            await RisingEdge(dut.clk)
            assert not dut.m_param__valid.value, "a word after last"
        bad = [k for k, (a, b) in enumerate(zip(got, image)) if a != b]
        assert not bad, (f"{len(bad)} words differ, first at {bad[0]}: "
                         f"{got[bad[0]]:#x} != {image[bad[0]]:#x}")
        assert not dut.busy.value and not dut.error.value
        return first, last_seen

    before, start = refreshes.count, cocotb.utils.get_sim_time("ns")
    await run(words, p["ready_prob"])
    report["run_backpressure_cycles"] = int((cocotb.utils.get_sim_time("ns") - start)
                                            // CLOCK_NS)
    report["refreshes_backpressure_run"] = refreshes.count - before
    before = refreshes.count
    first, last = await run(words, 1.0)
    report["run_latency_cycles"] = first
    report["run_stream_cycles"] = last - first + 1
    report["refreshes_full_speed_run"] = refreshes.count - before
    report["refreshes"] = refreshes.count
    report["refreshes_after_init"] = refreshes.count - refresh_at_init
    report["total_cycles"] = int(cocotb.utils.get_sim_time("ns") // CLOCK_NS)

    # a run aborted after 333 words: the image stays valid, the next run is whole and exact
    await run(words, 0.9, abort_after=333)
    assert dut.valid.value and not dut.error.value, "an aborted run lost the image"
    smaller = p["smaller"]
    await run(words[:1], 1.0, abort_after=0)            # aborted before any word was taken
    # a load aborted after 700 words leaves no image: a run is an error
    await load(smaller["words"], abort_after=700)
    assert not dut.valid.value, "an aborted load left a valid image"
    await _pulse(dut, dut.run)
    for _ in range(50):
        await RisingEdge(dut.clk)
        assert not dut.m_param__valid.value, "a run on an aborted load"
    assert dut.error.value, "no error for a run after an aborted load"
    # a smaller image after the larger one: its own length, last and fingerprint
    await load(smaller["words"])
    assert dut.valid.value and not dut.error.value
    assert int(dut.words.value) == len(smaller["words"])
    assert int(dut.fingerprint.value) == smaller["fingerprint"]
    await run(smaller["words"], 0.7)
    with open(p["report"], "w") as f:
        json.dump(report, f)
