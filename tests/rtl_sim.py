"""Amaranth-simulator helpers shared by the RTL unit tests.

* :func:`stream_put` drives a :class:`amaranth.lib.stream.Interface` with random idle cycles,
* :func:`stream_get` collects payloads from one with random not-ready cycles,
* :func:`simulate` runs a design with a 100 MHz ``sync`` clock and testbenches, optionally writing
  ``build/waves/<name>.vcd`` (environment variable ``BERTCORE_WAVES=1``).

Payloads are Python values as :mod:`bertcore.rtl.common` packs them: ``int`` for plain shapes,
``dict`` for structs, ``list`` for arrays (nested as the layout nests).
"""

import os
from pathlib import Path

from amaranth.lib import data
from amaranth.sim import Simulator

from bertcore.rtl.common import pack, unpack

__all__ = ["stream_put", "stream_get", "stream_latency", "simulate", "WAVES_DIR"]

#: Where :func:`simulate` writes waveforms.
WAVES_DIR = Path(__file__).resolve().parent.parent / "build" / "waves"

CLOCK_PERIOD = 1e-8        # 100 MHz


def _payload_layout(stream):
    payload = stream.payload
    if isinstance(payload, data.View):
        return payload.shape(), payload.as_value()
    return payload.shape(), payload


def _stalled(rng, stall):
    return rng is not None and stall > 0 and rng.random() < stall


async def stream_put(ctx, stream, payloads, *, rng=None, stall=0.0):
    """Send ``payloads`` into ``stream`` (the DUT's sink), one per handshake.

    Before each payload, idle cycles (``valid`` low) are inserted while ``rng.random() < stall``.
    Once ``valid`` is raised it stays high with a stable payload until ``ready`` is seen, as the
    stream rules require. Returns after the last transfer, with ``valid`` low.
    """
    layout, raw_payload = _payload_layout(stream)
    for payload in payloads:
        while _stalled(rng, stall):
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(raw_payload, pack(layout, payload))
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, count, *, rng=None, stall=0.0):
    """Receive ``count`` payloads from ``stream`` (the DUT's source).

    ``ready`` is low on a cycle with probability ``stall``. Returns the payloads as Python values
    (see :func:`bertcore.rtl.common.unpack`), with ``ready`` low again.
    """
    layout, raw_payload = _payload_layout(stream)
    result = []
    while len(result) < count:
        ready = not _stalled(rng, stall)
        ctx.set(stream.ready, ready)
        _, _, valid, raw = await ctx.tick().sample(stream.valid, raw_payload)
        if ready and valid:
            result.append(unpack(layout, raw))
    ctx.set(stream.ready, 0)
    return result


def simulate(dut, *testbenches, name, processes=(), deadline=None):
    """Simulate ``dut`` with a 100 MHz ``sync`` clock until every testbench returns.

    Parameters
    ----------
    dut : Elaboratable
        The design under test.
    *testbenches : async functions of ``ctx``
        Added with :meth:`Simulator.add_testbench`.
    name : str
        Names the waveform file ``build/waves/<name>.vcd``, written when the environment variable
        ``BERTCORE_WAVES`` is ``1``.
    processes : iterable of async functions of ``ctx``
        Added with :meth:`Simulator.add_process` (models of circuits around the DUT).
    deadline : float or None
        Simulated time in seconds after which the run stops; if a testbench has not returned
        by then, :class:`AssertionError` is raised (a hang or a lost beat). ``None`` runs until
        the testbenches return.
    """
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD, domain="sync", if_exists=True)   # a comb-only design has none
    finished = []

    def wrap(testbench):
        async def run(ctx):
            await testbench(ctx)
            finished.append(testbench)
        return run

    for testbench in testbenches:
        sim.add_testbench(wrap(testbench))
    for process in processes:
        sim.add_process(process)

    expired = []
    if deadline is not None:
        async def watchdog(ctx):
            await ctx.delay(deadline)
            expired.append(True)
        sim.add_testbench(watchdog, background=True)

    def run():
        # Stop as soon as every testbench has returned, or at the deadline. (`run_until()` would
        # always simulate up to the deadline, long after the testbenches are done.)
        while not expired and sim.advance():
            pass

    if os.environ.get("BERTCORE_WAVES") == "1":
        WAVES_DIR.mkdir(parents=True, exist_ok=True)
        with sim.write_vcd(str(WAVES_DIR / f"{name}.vcd")):
            run()
    else:
        run()
    if len(finished) != len(testbenches):
        pending = [tb.__name__ for tb in testbenches if tb not in finished]
        raise AssertionError(
            f"{name}: testbenches {pending} did not finish within {deadline} s of simulated time")


async def stream_latency(ctx, i_stream, o_stream, payload, *, timeout=1000):
    """Cycles from the input transfer of ``payload`` to the output transfer of its result.

    ``o_stream.ready`` is held high; call with the pipeline empty. Returns ``(cycles, output)``.
    """
    i_layout, i_raw = _payload_layout(i_stream)
    o_layout, o_raw = _payload_layout(o_stream)
    ctx.set(o_stream.ready, 1)
    ctx.set(i_raw, pack(i_layout, payload))
    ctx.set(i_stream.valid, 1)
    start = None
    for cycle in range(timeout):
        _, _, in_fire, out_fire, raw = await ctx.tick().sample(
            i_stream.valid & i_stream.ready, o_stream.valid, o_raw)
        if in_fire and start is None:
            start = cycle
            ctx.set(i_stream.valid, 0)
        if out_fire:
            assert start is not None, "output before input"
            ctx.set(o_stream.ready, 0)
            return cycle - start, unpack(o_layout, raw)
    raise AssertionError(f"no output within {timeout} cycles")
