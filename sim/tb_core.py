"""cocotb bench of the emitted Verilog of the encoder core (``tests/test_core.py``).

The toplevel is ``ImageReplayTop`` (``tests/test_core.py``): ``bertcore_encoder`` with the
parameter image of the tiny model in a ROM that replays one image into ``s_axis_param`` after
each ``param_go`` pulse, ``tvalid`` gated by ``param_en`` (random stalls); ``corrupt`` flips a
header bit, ``short_image`` ends the image one beat early. cocotb drives the activations and
checks the outputs against ``IntBert.encode_int`` (computed by the test and passed as
``params``: ``runs`` = list of ``{"length": L, "act": [words], "out": [words]}``; ``report``,
when given, is a file that receives the ``cycles``, ``array_beats`` and ``layer_cycles``
outputs of each run as JSON). The caller selects the tests (``run_cocotb(tests=)``):
``outcomes`` runs ``params["scenario"]`` (runs that fail and succeed, the failed runs'
activation packets at given delays: ``tests/test_core_outcome.py``); ``reset_mid_run`` needs
``runs``.
"""

import json
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from bertcore.core.image import FAIL_HEADER, FAIL_NO_IMAGE
from bertcore.rtlsim_tb import send_packet as _send_act
from sim.runner import tb_params


async def _reset(dut):
    dut.s_axis_act_tvalid.value = 0
    dut.s_axis_act_tlast.value = 0
    dut.s_axis_act_tuser.value = 0
    dut.s_axis_act_tdata.value = 0
    dut.m_axis_act_tready.value = 0
    dut.param_en.value = 0
    dut.param_go.value = 0
    dut.corrupt.value = 0
    dut.short_image.value = 0
    Clock(dut.clk, 10, unit="ns").start(start_high=False)
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _recv(dut, rng, stall, timeout, *, users=None):
    """Receive one output packet (up to tlast); ``users`` (a list) receives each beat's
    ``tuser``."""
    words = []
    for _ in range(timeout):
        ready = rng.random() >= stall
        dut.m_axis_act_tready.value = int(ready)
        await ReadOnly()
        fire = ready and bool(dut.m_axis_act_tvalid.value)
        if fire:
            words.append(dut.m_axis_act_tdata.value.to_unsigned())
            last = bool(dut.m_axis_act_tlast.value)
            if users is not None:
                users.append(int(dut.m_axis_act_tuser.value))
        await RisingEdge(dut.clk)
        if fire and last:
            dut.m_axis_act_tready.value = 0
            return words
    raise AssertionError(f"no complete output packet within {timeout} cycles")


async def _param_driver(dut, rng, stall):
    """Keep the image ROM's valid gated by random stalls (forever)."""
    while True:
        dut.param_en.value = int(rng.random() >= stall)
        await RisingEdge(dut.clk)


async def _wait(dut, signal, value, timeout):
    for _ in range(timeout):
        await ReadOnly()
        if int(signal.value) == value:
            await RisingEdge(dut.clk)
            return
        await RisingEdge(dut.clk)
    raise AssertionError(f"{signal._name} did not become {value} within {timeout} cycles")


async def _go(dut):
    """Arm the image ROM for one image."""
    dut.param_go.value = 1
    await RisingEdge(dut.clk)
    dut.param_go.value = 0


async def _run(dut, run, rng, stall, timeout):
    """One inference: start an image, send the activations, check the output."""
    await _go(dut)
    await _wait(dut, dut.busy, 1, timeout)
    sender = cocotb.start_soon(_send_act(dut, run["act"], rng, stall, run.get("table", ())))
    users = []
    got = await _recv(dut, rng, stall, timeout, users=users)
    await sender
    assert got == run["out"], f"output mismatch: got {got[:4]}..., want {run['out'][:4]}..."
    assert set(users) == {0}, "tuser set on a result beat"
    await _wait(dut, dut.busy, 0, 100)
    assert not dut.error.value, "error raised on a valid run"
    return int(dut.cycles.value), int(dut.array_beats.value), int(dut.layer_cycles.value)


@cocotb.test()
async def runs_back_to_back(dut):
    """Every run of ``params["runs"]`` in sequence, random stalls on all streams."""
    p = tb_params()
    rng = random.Random(p["seed"])
    await _reset(dut)
    driver = cocotb.start_soon(_param_driver(dut, random.Random(p["seed"] + 1), p["stall"]))
    cycles, beats, layers = [], [], []
    for run in p["runs"]:
        c, b, layer = await _run(dut, run, rng, p["stall"], p["timeout"])
        cycles.append(c)
        beats.append(b)
        layers.append(layer)
    driver.cancel()
    dut._log.info(f"cycles per run: {cycles}, array beats: {beats}, last layer: {layers}")
    if "report" in p:
        with open(p["report"], "w") as f:
            json.dump({"lengths": [r["length"] for r in p["runs"]], "cycles": cycles,
                       "beats": beats, "layer_cycles": layers}, f)


async def _image_driver(dut, runs, started, got):
    """Send the image of each run that has one, back to back (``bad_header``: the magic
    corrupted, ``short``: one beat short; after a run with no image, once its outcome is in
    ``got``); ``started`` receives the index of each run whose first image beat was taken."""
    for r, run in enumerate(runs):
        if run["image"] == "none":
            continue
        while r and runs[r - 1]["image"] == "none" and len(got) < r:
            await RisingEdge(dut.clk)
        dut.corrupt.value = int(run["image"] == "bad_header")
        dut.short_image.value = int(run["image"] == "short")
        await _go(dut)
        first = True
        while True:
            await ReadOnly()
            fire = bool(dut.s_axis_param_tvalid.value) and bool(dut.s_axis_param_tready.value)
            last = bool(dut.s_axis_param_tlast.value)
            await RisingEdge(dut.clk)
            if fire and first:
                started.add(r)
                first = False
            if fire and last:
                break
    dut.corrupt.value = 0
    dut.short_image.value = 0


@cocotb.test()
async def outcomes(dut):
    """The runs of ``params["scenario"]``: each run's image (queued right behind the previous
    one), its activation packet ``delay`` cycles after its first image beat (-1: after its
    outcome), random stalls on all streams; every run ends with its own outcome packet."""
    p = tb_params()
    runs, stall, timeout = p["scenario"], p["stall"], p["timeout"]
    rng = random.Random(p["seed"])
    await _reset(dut)
    driver = cocotb.start_soon(_param_driver(dut, random.Random(p["seed"] + 1), stall))
    started, got = set(), []
    images = cocotb.start_soon(_image_driver(dut, runs, started, got))

    async def activations():
        arng = random.Random(p["seed"] + 2)
        for r, run in enumerate(runs):
            if run["image"] == "none":
                while len(got) < r:          # a packet with no run: after the last outcome
                    await RisingEdge(dut.clk)
            else:
                while r not in started:
                    await RisingEdge(dut.clk)
                while run["delay"] < 0 and len(got) <= r:
                    await RisingEdge(dut.clk)
                for _ in range(max(run["delay"], 0)):
                    await RisingEdge(dut.clk)
            await _send_act(dut, run["act"], arng, stall)

    sender = cocotb.start_soon(activations())
    for r, run in enumerate(runs):
        users = []
        words = await _recv(dut, rng, stall, timeout, users=users)
        got.append(words)
        if run["fail"]:
            assert (words, users) == ([run["fail"]], [1]), \
                f"run {r}: got {words[:4]} (tuser {users[:4]}), want failure {run['fail']}"
        else:
            assert set(users) == {0}, f"run {r}: tuser set on a result beat"
            assert words == run["out"], f"run {r}: not the result of its own input"
        dut._log.info(f"run {r} ({run['image']}, delay {run['delay']}): "
                      f"{'failure ' + str(run['fail']) if run['fail'] else 'result'} as expected")
    await sender
    await images
    await _wait(dut, dut.busy, 0, timeout)
    dut.m_axis_act_tready.value = 1
    for _ in range(100):
        await ReadOnly()
        assert not dut.m_axis_act_tvalid.value, "an output packet with no run"
        await RisingEdge(dut.clk)
    failed = sum(1 for run in runs if run["fail"])
    assert int(dut.failed_runs.value) == failed, f"failed_runs {int(dut.failed_runs.value)}"
    driver.cancel()


async def _pulse_reset(dut):
    """Hold ``rst`` for two cycles (the activation source idled); check the core is idle,
    ``error`` and ``failed_runs`` cleared, the image ROM disarmed."""
    dut.rst.value = 1
    dut.s_axis_act_tvalid.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert not dut.busy.value and not dut.error.value and not dut.s_axis_param_tvalid.value
    assert int(dut.failed_runs.value) == 0
    await RisingEdge(dut.clk)


@cocotb.test()
async def reset_mid_run(dut):
    """A reset while a failed run waits for its activation packet, and one in the middle of a
    run, return to idle (counters cleared); then a valid run."""
    p = tb_params()
    rng = random.Random(p["seed"] + 7)
    timeout = p["timeout"]
    good = p["runs"][0]
    await _reset(dut)
    dut.param_en.value = 1
    # a failed run first, so that failed_runs has something to clear
    sender = cocotb.start_soon(_send_act(dut, good["act"], rng, 0.0))
    assert await _recv(dut, rng, 0.0, timeout) == [FAIL_NO_IMAGE]
    await sender
    assert int(dut.failed_runs.value) == 1
    # a bad image whose activation packet never comes: the core waits for it (busy) until reset
    dut.corrupt.value = 1
    await _go(dut)
    assert await _recv(dut, rng, 0.0, timeout) == [FAIL_HEADER]
    dut.corrupt.value = 0
    await _wait(dut, dut.s_axis_param_tvalid, 0, timeout)     # the image dropped to its end
    for _ in range(100):
        await RisingEdge(dut.clk)
    assert dut.busy.value and int(dut.failed_runs.value) == 2
    await _pulse_reset(dut)
    dut._log.info("reset while a failed run's packet was owed: back to idle")
    await _go(dut)
    await _wait(dut, dut.busy, 1, timeout)
    sender = cocotb.start_soon(_send_act(dut, good["act"], rng, 0.0))
    for _ in range(3000):
        await RisingEdge(dut.clk)
    assert dut.busy.value and sender.done()
    await _pulse_reset(dut)
    dut._log.info("reset mid-run: back to idle")
    await _run(dut, good, rng, 0.2, timeout)
