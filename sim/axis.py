"""cocotb drivers for the streams Amaranth emits (``<prefix>__payload/valid/ready``).

The DUT has clock ``clk`` and a synchronous, active-high reset ``rst``. Payloads are flat integers
(use :func:`bertcore.rtl.common.pack` / :func:`~bertcore.rtl.common.unpack` for struct layouts).

Handshakes are decided in the ``ReadOnly`` phase before a rising edge (where ``valid`` and a
combinational ``ready`` have settled), and new values are driven right after the edge, so both
Icarus and Verilator see the same transfers. Call ``send``/``recv`` after a rising edge (e.g.
right after :func:`reset`).
"""

from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from bertcore.rtlsim_tb import drive_stream

__all__ = ["StreamSource", "StreamSink", "start_clock", "reset", "check_stream", "measure_latency"]

CLOCK_PERIOD_NS = 10        # 100 MHz


def start_clock(dut, period_ns=CLOCK_PERIOD_NS):
    """Start the clock on ``dut.clk``; returns the clock task."""
    return Clock(dut.clk, period_ns, unit="ns").start(start_high=False)


async def reset(dut, cycles=2, *, sources=("i_stream",), sinks=("o_stream",)):
    """Start the clock and hold ``dut.rst`` high for ``cycles`` rising edges.

    The DUT's stream inputs are idled first (``<prefix>__valid = 0`` for each prefix in
    ``sources``, the DUT's sinks; ``<prefix>__ready = 0`` for each in ``sinks``, the DUT's
    sources), so that no undriven (``Z``) handshake enters the design when reset is released.
    Returns right after a rising edge, with reset low.
    """
    for prefix in sources:
        getattr(dut, f"{prefix}__valid").value = 0
    for prefix in sinks:
        getattr(dut, f"{prefix}__ready").value = 0
    start_clock(dut)
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def _stalled(rng, stall):
    return rng is not None and stall > 0 and rng.random() < stall


class _StreamPort:
    """The ``<prefix>__payload/valid/ready`` handles of an Amaranth-emitted stream."""

    def __init__(self, dut, prefix, clk, *, rng=None, stall=0.0):
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.clk = clk
        self.rng = rng
        self.stall = stall
        self._idle()


class StreamSource(_StreamPort):
    """Drive the DUT's stream sink ``<prefix>__payload/valid`` and watch its ``ready``.

    Parameters
    ----------
    dut : cocotb handle
    prefix : str
        Port prefix, e.g. ``"i_stream"``.
    clk : cocotb handle
    rng : random.Random, optional
        Source of the random idle cycles.
    stall : float
        Probability of an idle cycle before each payload.
    """

    def _idle(self):
        self.valid.value = 0

    async def send(self, payloads):
        """Send each (flat, unsigned) integer of ``payloads``; returns after the last transfer."""
        await drive_stream(self.clk, self.valid, self.ready, self.payload, payloads,
                           rng=self.rng, stall=self.stall)


class StreamSink(_StreamPort):
    """Accept ``<prefix>__payload`` from the DUT's stream source, driving its ``ready``.

    ``ready`` is low on a cycle with probability ``stall``.
    """

    def _idle(self):
        self.ready.value = 0

    async def recv(self, count):
        """Receive ``count`` payloads as flat unsigned integers."""
        result = []
        while len(result) < count:
            ready = not _stalled(self.rng, self.stall)
            self.ready.value = int(ready)
            await ReadOnly()
            valid = bool(self.valid.value)
            payload = self.payload.value.to_unsigned() if ready and valid else None
            await RisingEdge(self.clk)
            if payload is not None:
                result.append(payload)
        self.ready.value = 0
        return result


async def check_stream(dut, inputs, expected, *, rng=None, stall=0.0, i_prefix="i_stream",
                       o_prefix="o_stream"):
    """Send flat ``inputs`` and compare what comes out with flat ``expected``, in order.

    Random stalls of probability ``stall`` on both sides. Call after :func:`reset`. Raises
    :class:`AssertionError` naming the first mismatching beat.
    """
    import cocotb

    source = StreamSource(dut, i_prefix, dut.clk, rng=rng, stall=stall)
    sink = StreamSink(dut, o_prefix, dut.clk, rng=rng, stall=stall)
    sender = cocotb.start_soon(source.send(inputs))
    got = await sink.recv(len(expected))
    await sender
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"beat {index}: got {g:#x}, expected {e:#x}"
    assert len(got) == len(expected)


async def measure_latency(dut, payload, *, i_prefix="i_stream", o_prefix="o_stream",
                          timeout=1000):
    """Cycles from the input transfer of one beat to its output transfer, output always ready.

    Call after :func:`reset` with the pipeline empty.
    """
    source = StreamSource(dut, i_prefix, dut.clk)
    sink = StreamSink(dut, o_prefix, dut.clk)
    sink.ready.value = 1
    source.payload.value = int(payload)
    source.valid.value = 1
    cycle, start = 0, None
    while cycle < timeout:
        await ReadOnly()
        in_fire = bool(source.valid.value) and bool(source.ready.value)
        out_fire = bool(sink.valid.value)
        await RisingEdge(dut.clk)
        if in_fire and start is None:
            start = cycle
            source.valid.value = 0
        if out_fire:
            assert start is not None, "output before input"
            sink.ready.value = 0
            return cycle - start
        cycle += 1
    raise AssertionError(f"no output within {timeout} cycles")
