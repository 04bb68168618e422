"""cocotb bench of packed runs of the encoder core (``tests/test_core_packed.py``).

The toplevel is ``ImageReplayTop`` (``tests/test_core.py``; see ``sim/tb_core.py``, whose
``_run`` sends a run's segment table, ``tuser = 1``, before its rows). ``params``:

* ``runs``: ``{"table": [words], "act": [words], "out": [words], "segments": [L0, ...]}``,
  the expected output computed by the test (``IntBert.encode_int`` of each segment alone);
* ``bad``: ``{"what": str, "beats": [[tdata, tuser, tlast], ...]}``, malformed packets
  (``protocol_errors``), each followed by ``runs[0]``, which must be bit-exact again;
* ``seed``, ``stall``, ``timeout``; ``report`` (optional): a JSON file for the ``cycles``,
  ``array_beats`` and ``layer_cycles`` outputs of each run of ``packed_runs``.
"""

import json
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bertcore.rtlsim_tb import drive_stream
from sim.runner import tb_params
from bertcore.core.image import FAIL_EMPTY, FAIL_TOO_LONG
from sim.tb_core import _go, _param_driver, _recv, _reset, _run, _wait


async def _send_beats(dut, beats, rng, stall):
    """Drive ``[tdata, tuser, tlast]`` beats into ``s_axis_act`` (a malformed packet: ``tuser``
    and ``tlast`` anywhere)."""
    data, user, last = zip(*beats) if beats else ((), (), ())
    await drive_stream(dut.clk, dut.s_axis_act_tvalid, dut.s_axis_act_tready,
                       dut.s_axis_act_tdata, data, rng=rng, stall=stall,
                       beats={dut.s_axis_act_tuser: user, dut.s_axis_act_tlast: last})


@cocotb.test()
async def packed_runs(dut):
    """Every run of ``params["runs"]`` back to back, random stalls on all streams."""
    p = tb_params()
    rng = random.Random(p["seed"])
    await _reset(dut)
    driver = cocotb.start_soon(_param_driver(dut, random.Random(p["seed"] + 1), p["stall"]))
    counters = [await _run(dut, run, rng, p["stall"], p["timeout"]) for run in p["runs"]]
    driver.cancel()
    dut._log.info(f"cycles, array beats, last layer per run: {counters}")
    if "report" in p:
        with open(p["report"], "w") as f:
            json.dump({"segments": [r["segments"] for r in p["runs"]],
                       "cycles": [c[0] for c in counters], "beats": [c[1] for c in counters],
                       "layer_cycles": [c[2] for c in counters]}, f)


@cocotb.test()
async def protocol_errors(dut):
    """Each malformed packet: ``error`` raised, one failure packet (``tuser`` 1, cause 3, or 4
    for a packet with no row), the packet and the image dropped, back to idle; then a valid
    packed run, bit-exact."""
    p = tb_params()
    rng = random.Random(p["seed"] + 5)
    timeout = p["timeout"]
    await _reset(dut)
    dut.param_en.value = 1
    for bad in p["bad"]:
        await _go(dut)
        await _wait(dut, dut.busy, 1, timeout)
        assert not dut.error.value
        sender = cocotb.start_soon(_send_beats(dut, bad["beats"], rng, 0.0))
        users = []
        got = await _recv(dut, rng, 0.0, timeout, users=users)
        assert users == [1] and got[0] in (FAIL_TOO_LONG, FAIL_EMPTY), \
            f"{bad['what']}: got {got[:4]} (tuser {users[:4]}), not a failure packet"
        assert dut.error.value
        await _wait(dut, dut.busy, 0, timeout)
        await sender
        await ReadOnly()
        assert not dut.s_axis_param_tvalid.value, f"{bad['what']}: the image was not dropped"
        assert not dut.m_axis_act_tvalid.value, f"{bad['what']}: an output packet"
        await RisingEdge(dut.clk)
        dut._log.info(f"{bad['what']}: failure packet (cause {got[0]}), packets dropped, "
                      "back to idle")
        await _run(dut, p["runs"][0], rng, p["stall"], timeout)
