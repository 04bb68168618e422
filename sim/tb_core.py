"""cocotb bench of the emitted Verilog of the encoder core (``tests/test_core.py``).

The toplevel is ``ImageReplayTop`` (``tests/test_core.py``): ``bertcore_encoder`` with the
parameter image of the tiny model in a ROM that replays one image into ``s_axis_param`` after
each ``param_go`` pulse, ``tvalid`` gated by ``param_en`` (random stalls); ``corrupt`` flips a
header bit, ``short_image`` ends the image one beat early. cocotb drives the activations and
checks the outputs against ``IntBert.encode_int`` (computed by the test and passed as
``params``: ``runs`` = list of ``{"length": L, "act": [words], "out": [words]}``; ``report``,
when given, is a file that receives the ``cycles``, ``array_beats`` and ``layer_cycles``
outputs of each run as JSON). The caller selects the tests (``run_cocotb(tests=)``):
``protocol_errors`` also needs ``too_long`` (an over-long activation packet).
"""

import json
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

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


async def _recv(dut, rng, stall, timeout):
    """Receive one output packet (up to tlast)."""
    words = []
    for _ in range(timeout):
        ready = rng.random() >= stall
        dut.m_axis_act_tready.value = int(ready)
        await ReadOnly()
        fire = ready and bool(dut.m_axis_act_tvalid.value)
        if fire:
            words.append(dut.m_axis_act_tdata.value.to_unsigned())
            last = bool(dut.m_axis_act_tlast.value)
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
    got = await _recv(dut, rng, stall, timeout)
    await sender
    assert got == run["out"], f"output mismatch: got {got[:4]}..., want {run['out'][:4]}..."
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


@cocotb.test()
async def protocol_errors(dut):
    """Activations first, bad header, too long a sequence, short image, reset mid-run; then a
    valid run."""
    p = tb_params()
    rng = random.Random(p["seed"] + 7)
    timeout = p["timeout"]
    good, too_long = p["runs"][0], p["too_long"]
    await _reset(dut)

    async def expect_error(what):
        await _wait(dut, dut.error, 1, timeout)
        await _wait(dut, dut.busy, 0, timeout)
        await ReadOnly()
        assert not dut.s_axis_param_tvalid.value, "the image was not dropped to its end"
        await RisingEdge(dut.clk)
        dut._log.info(f"{what}: error raised, packets dropped, back to idle")

    async def start_image():
        await _go(dut)
        await _wait(dut, dut.busy, 1, timeout)     # a run started: error is cleared
        assert not dut.error.value

    dut.param_en.value = 1
    # 1. activations before parameters: the packet is dropped
    await _send_act(dut, good["act"], rng, 0.0)
    await expect_error("activations first")
    # 2. corrupted header: the whole image is dropped
    dut.corrupt.value = 1
    await start_image()
    await expect_error("bad header")
    dut.corrupt.value = 0
    # 3. a sequence longer than max_seq: both packets are dropped
    await start_image()
    await _send_act(dut, too_long, rng, 0.0)
    await expect_error("too long")
    # 4. an image one beat short
    dut.short_image.value = 1
    await start_image()
    sender = cocotb.start_soon(_send_act(dut, good["act"], rng, 0.0))
    await expect_error("short image")
    await sender
    dut.short_image.value = 0
    assert not dut.m_axis_act_tvalid.value
    # 5. a reset in the middle of a run returns to idle
    await start_image()
    sender = cocotb.start_soon(_send_act(dut, good["act"], rng, 0.0))
    for _ in range(3000):
        await RisingEdge(dut.clk)
    assert dut.busy.value and sender.done()
    dut.rst.value = 1
    dut.s_axis_act_tvalid.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert not dut.busy.value and not dut.error.value and not dut.s_axis_param_tvalid.value
    await RisingEdge(dut.clk)
    dut._log.info("reset mid-run: back to idle")
    # 6. a valid run succeeds
    await _run(dut, good, rng, 0.2, timeout)

