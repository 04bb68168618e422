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

__all__ = ["StreamSource", "StreamSink", "start_clock", "reset"]

CLOCK_PERIOD_NS = 10        # 100 MHz


def start_clock(dut, period_ns=CLOCK_PERIOD_NS):
    """Start the clock on ``dut.clk``; returns the clock task."""
    return Clock(dut.clk, period_ns, unit="ns").start(start_high=False)


async def reset(dut, cycles=2):
    """Start the clock and hold ``dut.rst`` high for ``cycles`` rising edges."""
    start_clock(dut)
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def _stalled(rng, stall):
    return rng is not None and stall > 0 and rng.random() < stall


class StreamSource:
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

    def __init__(self, dut, prefix, clk, *, rng=None, stall=0.0):
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.clk = clk
        self.rng = rng
        self.stall = stall
        self.valid.value = 0

    async def send(self, payloads):
        """Send each (flat, unsigned) integer of ``payloads``; returns after the last transfer."""
        for payload in payloads:
            while _stalled(self.rng, self.stall):
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.payload.value = int(payload)
            self.valid.value = 1
            while True:
                await ReadOnly()
                ready = bool(self.ready.value)
                await RisingEdge(self.clk)
                if ready:
                    break
        self.valid.value = 0


class StreamSink:
    """Accept ``<prefix>__payload`` from the DUT's stream source, driving its ``ready``.

    ``ready`` is low on a cycle with probability ``stall``.
    """

    def __init__(self, dut, prefix, clk, *, rng=None, stall=0.0):
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.clk = clk
        self.rng = rng
        self.stall = stall
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
