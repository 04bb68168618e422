# amaranth: UnusedElaboratable=no
"""The outcome of every run of the encoder core: failed runs and their activation packets.

Every run pairs with exactly one activation packet and ends with exactly one packet on
``m_act``: the result (``user`` = 0) or a one-beat failure packet (``user`` = 1, the cause code
in ``data``). A failed run drops its own activation packet whenever it arrives -- before,
during or after the failure -- and never the next run's. The scenarios below send the failed
run's packet at several delays after its first image beat, with the next run's image queued
right behind, and check that the next run's result is bit-exact on *its own* input (before the
fix, run 1 took packet 0 and returned a bit-exact result for the wrong input).

A scenario is a list of runs (JSON-able, shared with the cocotb bench ``sim/tb_core.py``)::

    {"image": "good" | "bad_header" | "short" | "none",
     "act": [words], "delay": cycles after the run's first image beat (-1: after its
     outcome packet), "fail": cause code (0: a successful run), "out": [words]}

A run needs its activation packet to get through its image (the image streams while the core
computes), so ``delay = -1`` fits only failures found without it (a bad header). An image
after a ``"none"`` run (a packet with no run) waits for that packet's outcome, or the packet
would be the next run's.
"""

import random

import pytest
import torch

from bertcore.config import preset
from bertcore.core.encoder import EncoderCore
from bertcore.core.image import (FAIL_EMPTY, FAIL_HEADER, FAIL_IMAGE_LENGTH, FAIL_NO_IMAGE,
                                 FAIL_TOO_LONG, pack_activations, pack_parameter_image)
from fixtures_bert import tiny_ckpt, tiny_dir, tiny_int  # noqa: F401
from rtl_sim import CLOCK_PERIOD, simulate, stream_get, stream_put
from sim.runner import run_cocotb
from test_core import (ImageReplayTop, cocotb_core, packet, sim_budget,  # noqa: F401
                       tiny_core, tiny_image)

TINY = preset("tiny")
#: After the failure packet (the run's outcome) has been received.
AFTER_OUTCOME = -1


class Scenario:
    """Builds a list of runs with random int8 inputs (seeded) and their expected outcomes."""

    def __init__(self, model, config, seed):
        self.model, self.config = model, config
        self.gen = torch.Generator().manual_seed(seed)
        self.runs = []

    def _x(self, rows):
        return torch.randint(-128, 128, (rows, self.config.hidden), generator=self.gen)

    def good(self, rows, *, image="good", delay=0):
        x = self._x(rows)
        self.runs.append({"image": image, "act": pack_activations(x, self.config),
                          "delay": delay, "fail": 0,
                          "out": pack_activations(self.model.encode_int(x), self.config)})
        return self

    def failed(self, image, cause, *, rows=7, delay=0, act=None):
        if act is None:
            act = pack_activations(self._x(rows), self.config)
        self.runs.append({"image": image, "act": act, "delay": delay, "fail": cause,
                          "out": [cause]})
        return self

    def too_long(self, delay=0, image="good"):
        c = self.config
        act = pack_activations(self._x(c.max_seq), c) * 2          # 2 * max_seq rows
        return self.failed(image, FAIL_TOO_LONG, act=act, delay=delay)

    def empty(self, delay=0):
        return self.failed("good", FAIL_EMPTY, act=[0x01020304], delay=delay)   # < one row


def image_packet(words, kind):
    """The image of a run of kind ``kind`` as stream payloads (``bad_header``: magic 0;
    ``short``: one beat short, ``last`` on the new final beat)."""
    words = list(words)
    if kind == "bad_header":
        words[0] = 0
    elif kind == "short":
        words = words[:-1]
    return packet(words)


def run_scenario_sim(dut, image, runs, *, stall, seed=1):
    """Amaranth simulation of ``dut`` (an :class:`EncoderCore`) over the scenario ``runs``.

    Images go back to back (each queued right behind the previous one); run ``r``'s activation
    packet goes ``delay`` cycles after run ``r``'s first image beat was taken (after the
    previous packet, and, with ``AFTER_OUTCOME``, after run ``r``'s outcome packet). Random
    stalls of probability ``stall`` on all three streams. Returns the output packets (lists of
    payload dicts) and the final ``failed_runs``.

    The simulation stops with an error after a budget from the cycle model: per run, twice a
    full-length run's modeled cycles (a failed run takes no longer than a good one) slowed by
    the stalls, its delay, and 2000 cycles.
    """
    cfg = dut.config
    budget = (sim_budget(cfg, [cfg.max_seq] * len(runs), stall)
              + sum(max(run["delay"], 0) for run in runs))
    started = set()             # runs whose first image beat was taken
    outcomes = []
    failed = []

    async def put_param(ctx):
        rng = random.Random(seed)
        for r, run in enumerate(runs):
            if run["image"] == "none":
                continue
            while r and runs[r - 1]["image"] == "none" and len(outcomes) < r:
                await ctx.tick()              # an image after a packet with no run: after it
            beats = image_packet(image, run["image"])
            await stream_put(ctx, dut.s_param, beats[:1], rng=rng, stall=stall)
            started.add(r)
            await stream_put(ctx, dut.s_param, beats[1:], rng=rng, stall=stall)

    async def put_act(ctx):
        rng = random.Random(seed + 1)
        for r, run in enumerate(runs):
            if run["image"] == "none":
                while len(outcomes) < r:      # a packet with no run: after the last outcome
                    await ctx.tick()
            else:
                while r not in started:
                    await ctx.tick()
                if run["delay"] == AFTER_OUTCOME:
                    while len(outcomes) <= r:
                        await ctx.tick()
                for _ in range(max(run["delay"], 0)):
                    await ctx.tick()
            await stream_put(ctx, dut.s_act, packet(run["act"], user=0), rng=rng,
                             stall=stall)

    async def get_out(ctx):
        rng = random.Random(seed + 2)
        for _ in runs:
            packet = []
            while not packet or not packet[-1]["last"]:
                packet += await stream_get(ctx, dut.m_act, 1, rng=rng, stall=stall)
            outcomes.append(packet)
        await ctx.tick().until(~dut.busy)
        ctx.set(dut.m_act.ready, 1)
        for _ in range(100):          # nothing more comes out
            assert not ctx.get(dut.m_act.valid), "an output packet with no run"
            await ctx.tick()
        failed.append(ctx.get(dut.failed_runs))

    try:
        simulate(dut, put_param, put_act, get_out, name="core_outcome",
                 deadline=budget * CLOCK_PERIOD)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(outcomes)} of {len(runs)} outcome packets in "
                             f"{budget} cycles (a stalled core?)") from None
    return outcomes, failed[0]


def check_outcomes(runs, outcomes):
    """Each run's outcome packet is its expected one (results bit-exact, ``user`` = 0 on every
    beat; a failure: one beat, ``user`` = 1, the cause code)."""
    assert len(outcomes) == len(runs)
    for r, (run, packet) in enumerate(zip(runs, outcomes)):
        got = [b["data"] for b in packet]
        users = {b["user"] for b in packet}
        if run["fail"]:
            assert (got, users) == ([run["fail"]], {1}), f"run {r}: {packet[:4]}"
        else:
            assert users == {0}, f"run {r}: a result beat with user = 1"
            assert got == run["out"], f"run {r}: not the result of its own input"
        assert [b["last"] for b in packet] == [0] * (len(packet) - 1) + [1], f"run {r}"


def test_stale_packet_amaranth(tiny_core, tiny_image):
    """The case of the issue: a bad header (magic 0) for run 0, its 7-row packet sent 8 cycles
    after the first image beat, image 1 queued right behind, then packet 1: run 1 returns
    the result of packet 1; run 0 returns one failure packet."""
    s = Scenario(tiny_core, TINY, seed=21).failed("bad_header", FAIL_HEADER, delay=8).good(2)
    outcomes, failed = run_scenario_sim(EncoderCore(TINY), tiny_image, s.runs, stall=0.2)
    check_outcomes(s.runs, outcomes)
    assert failed == 1


@pytest.mark.slow          # ~4 minutes
def test_failures_amaranth(tiny_core, tiny_image):
    """Every failure point, packets before/during/after the failure, then a valid run."""
    s = (Scenario(tiny_core, TINY, seed=22)
         .failed("bad_header", FAIL_HEADER, delay=0)
         .failed("short", FAIL_IMAGE_LENGTH, delay=200)
         .failed("bad_header", FAIL_HEADER, delay=AFTER_OUTCOME)
         .failed("none", FAIL_NO_IMAGE)
         .too_long()
         .empty(delay=3)
         .good(2))
    outcomes, failed = run_scenario_sim(EncoderCore(TINY), tiny_image, s.runs, stall=0.3)
    check_outcomes(s.runs, outcomes)
    assert failed == 6


@pytest.mark.slow          # ~5 minutes
def test_failures_resident_amaranth(tiny_core, tiny_image):
    """``resident``: activations with no image stored fail (cause 5); a replayed run fails only
    on its packet and keeps the image; a failed image load leaves none stored."""
    cfg = TINY.replace(resident=True)
    s = (Scenario(tiny_core, cfg, seed=23)
         .failed("none", FAIL_NO_IMAGE)
         .good(2)
         .too_long(image="none")
         .good(1, image="none")
         .failed("bad_header", FAIL_HEADER, delay=8)
         .failed("none", FAIL_NO_IMAGE))
    outcomes, failed = run_scenario_sim(EncoderCore(cfg), tiny_image, s.runs, stall=0.2)
    check_outcomes(s.runs, outcomes)
    assert failed == 4


#: Delays (cycles after the first image beat) of a failed run's packet: during the header,
#: right after the failure, while the rest of the image is dropped, after the image was
#: dropped (5596 beats on ``tiny``), after the failure packet was received.
DELAYS = (0, 1, 3, 8, 20, 200, 6000, AFTER_OUTCOME)


def _cocotb(model, image, scenario, simulator, *, seed, stall):
    # the core as the simulations build it: Verilator with idle passes on stopped clocks
    # (their reset is asynchronous there: the failures abort passes mid-way), Icarus plain;
    # the same build as test_core_cocotb's
    top, name = cocotb_core(TINY, image, simulator)
    params = {"scenario": scenario.runs, "seed": seed, "stall": stall, "timeout": 400000}
    names = run_cocotb(top, toplevel="tb_core_top", test_module="tb_core", simulator=simulator,
                       params=params, name=name, tests=["outcomes"])
    assert names == ["outcomes"]


def test_outcomes_verilator(tiny_core, tiny_image):
    """On the emitted Verilog (Verilator): the bad-header case at every delay of
    :data:`DELAYS`, each followed by a valid run of another input; then every other failure
    point (short image, no image, too long, empty, failures back to back); random stalls on
    all streams."""
    s = Scenario(tiny_core, TINY, seed=31)
    for i, delay in enumerate(DELAYS):
        s.failed("bad_header", FAIL_HEADER, delay=delay).good(1 + i % 3)
    (s.failed("short", FAIL_IMAGE_LENGTH, delay=3)
     .failed("short", FAIL_IMAGE_LENGTH, delay=200).good(2)
     .failed("none", FAIL_NO_IMAGE).good(1, delay=20)
     .too_long(delay=1).good(3)
     .empty(delay=200).good(1)
     .failed("bad_header", FAIL_HEADER, delay=6000).failed("none", FAIL_NO_IMAGE)
     .failed("bad_header", FAIL_HEADER, delay=0).good(2))
    _cocotb(tiny_core, tiny_image, s, "verilator", seed=5, stall=0.2)


def test_outcomes_backpressure_verilator(tiny_core, tiny_image):
    """The issue's case (packet 8 cycles after the first image beat) and a packet after the
    failure, under heavy random stalls (half the cycles) on all three streams."""
    s = (Scenario(tiny_core, TINY, seed=32)
         .failed("bad_header", FAIL_HEADER, delay=8).good(7)
         .failed("bad_header", FAIL_HEADER, delay=AFTER_OUTCOME).good(3))
    _cocotb(tiny_core, tiny_image, s, "verilator", seed=6, stall=0.5)


def test_outcomes_icarus(tiny_core, tiny_image):
    """The issue's case and a packet after the failure on Icarus, then a valid run."""
    s = (Scenario(tiny_core, TINY, seed=33)
         .failed("bad_header", FAIL_HEADER, delay=8)
         .failed("bad_header", FAIL_HEADER, delay=AFTER_OUTCOME).good(1))
    _cocotb(tiny_core, tiny_image, s, "icarus", seed=7, stall=0.2)


def test_outcomes_resident_ecp5_verilator(tiny_core, tiny_image):
    """The resident core as built for ECP5 (``MULT18X18D`` multipliers and the stored image in
    ``DP16KD`` blocks with their output registers, simulated with our models of both): a run
    with no image stored fails; an image and replays of it give each packet's own result; a
    failed image load leaves none stored. Verilator, random stalls on all streams."""
    from sim.models import DP16KD, ECP5, MULT18X18D
    cfg = TINY.replace(resident=True)
    s = (Scenario(tiny_core, cfg, seed=34)
         .failed("none", FAIL_NO_IMAGE)
         .good(2)
         .good(5, image="none")
         .good(1, image="none")
         .failed("bad_header", FAIL_HEADER, delay=8)
         .failed("none", FAIL_NO_IMAGE)
         .good(3))
    params = {"scenario": s.runs, "seed": 8, "stall": 0.2, "timeout": 400000}
    names = run_cocotb(ImageReplayTop(cfg, tiny_image), toplevel="tb_core_top",
                       test_module="tb_core", simulator="verilator", params=params,
                       name="core_tiny_resident_ecp5", tests=["outcomes"], platform=ECP5,
                       models=[MULT18X18D, DP16KD])
    assert names == ["outcomes"]
