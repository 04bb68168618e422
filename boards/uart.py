"""An 8N1 UART: a transmitter and a receiver with byte streams (``lib.stream``).

* :class:`UARTTx` sends the bytes of ``i_stream`` on ``tx`` (start bit, 8 data bits LSB first,
  one stop bit), one bit every ``divisor`` clock cycles; ``i_stream.ready`` while idle.
* :class:`UARTRx` samples ``rx`` through a 2-flip-flop synchronizer (``FFSynchronizer``), finds
  the falling edge of a start bit, re-checks the start bit half a bit later (glitch rejection)
  and samples each data bit and the stop bit in the middle of the bit. A low stop bit is a
  framing error: the byte is dropped, ``frame_error`` pulses for one cycle, and the receiver
  waits for the line to return high (a break is one error, not many). A byte that completes
  while the previous one has not been taken from ``o_stream`` is dropped with a one-cycle
  ``overrun`` pulse (a UART cannot be stalled; the consumer must keep up, one byte per
  ``10 * divisor`` cycles).

Baud tolerance: the stop bit is sampled 9.5 bit periods after the start edge, so a transmitter
whose bit period differs by up to about ``(0.5 - 2.5 / divisor) / 9.5`` (4.6 % at ``divisor`` 16,
2 % at ``divisor`` 8, accounting for the synchronizer delay and the rounding of the half-bit
wait) is received correctly; :func:`uart_divisor` allows at most 2 % error between the clock's
divisor and the requested baud rate.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from bertcore.rtl.common import rejecting
from bertcore.rtl.fsm import Fsm

__all__ = ["UARTTx", "UARTRx", "uart_divisor", "MIN_DIVISOR"]

#: Smallest divisor (clock cycles per bit): the receiver needs a distinct middle of each bit.
MIN_DIVISOR = 4
#: Largest relative error between ``clk_freq / divisor`` and the requested baud rate.
MAX_BAUD_ERROR = 0.02


def uart_divisor(clk_freq, baud):
    """Clock cycles per bit for ``baud`` at ``clk_freq`` Hz (rounded).

    Raises
    ------
    ValueError
        If the divisor is below :data:`MIN_DIVISOR` or the rounding error exceeds 2 %.
    """
    if clk_freq <= 0 or baud <= 0:
        raise ValueError(f"clock and baud rate must be positive, not {clk_freq!r} and {baud!r}")
    divisor = round(clk_freq / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud rate {baud} is too high for a {clk_freq / 1e6:g} MHz clock "
                         f"(divisor {divisor} < {MIN_DIVISOR})")
    error = abs(clk_freq / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"baud rate {baud} is {error:.1%} off at a {clk_freq / 1e6:g} MHz "
                         f"clock (divisor {divisor}); at most {MAX_BAUD_ERROR:.0%} is allowed")
    return divisor


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be an integer of at least {MIN_DIVISOR}, "
                         f"not {divisor!r}")


class _UARTPort(wiring.Component):
    """A UART side clocked at ``divisor`` cycles per bit (validated by ``_check_divisor``)."""

    def __init__(self, divisor):
        with rejecting(self):
            _check_divisor(divisor)
        self._divisor = divisor
        super().__init__()

    @property
    def divisor(self):
        return self._divisor


class UARTTx(_UARTPort):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least :data:`MIN_DIVISOR`; see :func:`uart_divisor`).

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes to send; ``ready`` while the transmitter is idle (one byte per ``10 * divisor``
        cycles).
    tx : ``Out(1, init=1)``
        The serial line (idle high).

    Raises
    ------
    ValueError
        If ``divisor`` is not an integer of at least :data:`MIN_DIVISOR`.
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        bits = Signal(10, init=1)          # stop, data[7:0], start (shifted out LSB first)
        left = Signal(range(11))           # bits left to send
        m.d.comb += self.tx.eq(bits[0])
        m.d.comb += self.i_stream.ready.eq(left == 0)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [bits.eq(Cat(0, self.i_stream.payload, 1)), left.eq(10),
                         timer.eq(self._divisor - 1)]
        with m.Elif(left != 0):
            with m.If(timer == 0):
                m.d.sync += [bits.eq(Cat(bits[1:], 1)), left.eq(left - 1),
                             timer.eq(self._divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(_UARTPort):
    """8N1 receiver with mid-bit sampling and framing-error detection.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least :data:`MIN_DIVISOR`).

    Members
    -------
    rx : ``In(1, init=1)``
        The serial line (asynchronous; synchronized by two flip-flops).
    o_stream : ``Out(stream.Signature(8))``
        Received bytes. ``valid`` stays high until taken; take each byte within ``10 * divisor``
        cycles, or the next one is lost (``overrun``).
    frame_error : ``Out(1)``
        One-cycle pulse: a byte with a low stop bit was dropped.
    overrun : ``Out(1)``
        One-cycle pulse: a byte was dropped because ``o_stream`` still held the previous one.
    line_break : ``Out(1)``
        One-cycle pulse with ``frame_error`` when the dropped character was all zeros (a break:
        the line held low for at least a whole character).

    Latency: ``o_stream.valid`` rises about ``9.5 * divisor + 3`` cycles after the start edge.

    Raises
    ------
    ValueError
        If ``divisor`` is not an integer of at least :data:`MIN_DIVISOR`.
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)
    line_break: Out(1)

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        # 2-FF synchronizer, reset to the idle level (resettable: reset-less flip-flops would
        # leave the domain's reset unused in the synchronizer's module, which verilator -Wall
        # flags)
        line = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, line, init=1, reset_less=False)

        timer = Signal(range(d))
        shift = Signal(8)
        count = Signal(range(8))

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with Fsm(m, "rx") as fsm:
            with fsm.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(d // 2 - 1)      # to the middle of the start bit
                    fsm.next("START")
            with fsm.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    fsm.next("IDLE")                        # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), count.eq(0)]
                    fsm.next("DATA")
            with fsm.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), timer.eq(d - 1),
                                 count.eq(count + 1)]
                    with m.If(count == 7):
                        fsm.next("STOP")
            with fsm.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    with m.If(self.o_stream.valid & ~self.o_stream.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o_stream.payload.eq(shift),
                                     self.o_stream.valid.eq(1)]
                    fsm.next("IDLE")
                with m.Else():
                    m.d.comb += [self.frame_error.eq(1), self.line_break.eq(shift == 0)]
                    fsm.next("BREAK")
            with fsm.State("BREAK"):
                with m.If(line):
                    fsm.next("IDLE")
        return m
