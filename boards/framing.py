"""The frame layer of the UART bridge: bytes ↔ frames of ``docs/uart-protocol.md``.

* :class:`FrameReceiver` takes bytes from :class:`~boards.uart.UARTRx`, parses one frame
  (``SOF, type, seq, len, payload, crc``), writes its payload into the frame buffer and checks
  its CRC-16; a bad frame (CRC, length, framing error) is drained until the line goes quiet, a
  frame that stops in the middle times out.
* :class:`ReplySender` sends one reply frame (header, payload from the status word, the NAK
  reason or the reply buffer, CRC-16) into the transmitter's byte stream.

The link is stop and wait (a frame is received whole before its reply is sent, and no byte is
taken while replying), so both share one CRC unit (``amaranth.lib.crc.Processor``, CRC-16): each
drives its ``crc_*`` members, which :class:`~boards.bridge.UARTBridge` (the owner of the unit)
merges; it starts the receiver and the sender in turn.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bertcore import uart_protocol as P
from bertcore.rtl.common import less
from bertcore.rtl.fsm import Fsm

__all__ = ["FrameReceiver", "ReplySender"]


class FrameReceiver(wiring.Component):
    """Receive and check one frame.

    Starts hunting for ``SOF`` at reset and after each ``start``; bytes are taken from
    ``i_stream`` only while hunting, inside a frame or draining a bad one (outside, they wait in
    the UART receiver). A frame ends with a one-cycle ``done`` (combinational, in the cycle its
    outcome is known): ``reason`` is 0 for a good frame (CRC residue matched, one cycle after
    the last CRC byte), else the NAK reason. After a CRC, length or framing error the receiver
    takes and drops bytes until the line has been idle for ``timeout`` cycles, then ends; a line
    idle for ``timeout`` cycles inside a frame ends it with ``NAK_TIMEOUT``.

    Parameters
    ----------
    max_payload : int
        Bytes of the frame buffer (a longer ``len`` is ``NAK_LENGTH``).
    bus_bytes : int
        Bytes of a bus word (for ``whole_words``).
    timeout : int
        Idle cycles (see above).

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes from the UART receiver.
    frame_error : ``In(1)``
        The UART receiver's framing-error pulse.
    start : ``In(1)``
        Hunt for the next frame (after the reply to this one).
    done : ``Out(1)``, reason : ``Out(8)``
        A frame ended, good (``reason`` 0) or with this NAK reason.
    type, seq : ``Out(8)``, length : ``Out(16)``
        The header of the frame (held until the next frame's bytes arrive).
    whole_words : ``Out(1)``
        The payload is a non-zero whole number of bus words.
    frame : ``In(WritePort.Signature(...))``
        The frame buffer's write port (payload byte ``i`` at address ``i``).
    crc_start, crc_valid : ``Out(1)``, crc_data : ``Out(8)``, crc_match : ``In(1)``
        The CRC unit: ``start`` on ``SOF``, then every byte from the type to the last CRC byte;
        a whole frame leaves the residue (``match_detected``) a cycle later.
    """

    def __init__(self, max_payload, bus_bytes, timeout):
        self._max_payload = max_payload
        self._bus_bytes = bus_bytes
        self._timeout = timeout
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "frame_error": In(1),
            "start": In(1),
            "done": Out(1),
            "reason": Out(8),
            "type": Out(8),
            "seq": Out(8),
            "length": Out(16),
            "whole_words": Out(1),
            "frame": In(WritePort.Signature(addr_width=ceil_log2(max_payload), shape=8)),
            "crc_start": Out(1),
            "crc_valid": Out(1),
            "crc_data": Out(8),
            "crc_match": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        MAXP, NB = self._max_payload, self._bus_bytes
        byte = self.i_stream.payload
        got = self.i_stream.valid & self.i_stream.ready
        idx = Signal(range(MAXP + 1))               # payload byte
        part = Signal(range(NB))                    # byte within a word
        reason = Signal(8)                          # of a frame being drained
        last = Signal(16)                           # the last payload byte: length - 1
        at_last = Signal()                          # idx == last, a register like idle_out
        m.d.comb += [self.crc_data.eq(byte), self.frame.addr.eq(idx), self.frame.data.eq(byte),
                     self.whole_words.eq((self.length != 0) & (part == 0))]

        idle = Signal(range(self._timeout + 1))     # cycles since the last byte taken
        # idle == timeout, kept in a register of its own (the counter's compare ran on into
        # the frame's state multiplexers: an ECP5 path of 9.35 ns)
        idle_out = Signal(init=self._timeout == 0)
        with m.If(got):
            m.d.sync += [idle.eq(0), idle_out.eq(self._timeout == 0)]
        with m.Elif(~idle_out):
            m.d.sync += [idle.eq(idle + 1), idle_out.eq(idle == self._timeout - 1)]

        with Fsm(m, "frame") as fsm:
            with fsm.State("HUNT"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(got & (byte == P.SOF)):
                    m.d.comb += self.crc_start.eq(1)
                    fsm.next("TYPE")
            for state, nxt in (("TYPE", "SEQ"), ("SEQ", "LEN0"), ("LEN0", "LEN1"),
                               ("LEN1", "LENGTH"), ("PAYLOAD", None), ("CRC0", "CRC1"),
                               ("CRC1", "CHECK")):
                with fsm.State(state):
                    m.d.comb += self.i_stream.ready.eq(1)
                    with m.If(self.frame_error):
                        m.d.sync += reason.eq(P.NAK_FRAMING)
                        fsm.next("DISCARD")
                    with m.Elif(got):
                        m.d.comb += self.crc_valid.eq(1)
                        if nxt is not None:
                            fsm.next(nxt)
                        self._take(m, fsm, state, byte, idx, part, last, at_last)
                    with m.Elif(idle_out):
                        m.d.comb += [self.done.eq(1), self.reason.eq(P.NAK_TIMEOUT)]
                        fsm.next("IDLE")
            with fsm.State("LENGTH"):
                # the length checked from its register, a cycle after its last byte (no byte
                # is taken meanwhile: it waits in the UART receiver); the compare and the
                # frame's state after the byte's own multiplexers did not fit 10 ns on ECP5
                m.d.sync += [last.eq(self.length - 1), at_last.eq(self.length == 1)]
                with m.If(less(self._max_payload, self.length)):
                    m.d.sync += reason.eq(P.NAK_LENGTH)
                    fsm.next("DISCARD")
                with m.Elif(self.length == 0):
                    fsm.next("CRC0")
                with m.Else():
                    fsm.next("PAYLOAD")
            with fsm.State("CHECK"):
                # the CRC has taken the last byte
                with m.If(self.crc_match):
                    m.d.comb += self.done.eq(1)
                    fsm.next("IDLE")
                with m.Else():
                    m.d.sync += reason.eq(P.NAK_CRC)
                    fsm.next("DISCARD")
            with fsm.State("DISCARD"):
                m.d.comb += self.i_stream.ready.eq(1)
                # wait for the line to go quiet, so that the NAK follows the whole bad frame
                with m.If(idle_out):
                    m.d.comb += [self.done.eq(1), self.reason.eq(reason)]
                    fsm.next("IDLE")
            with fsm.State("IDLE"):
                with m.If(self.start):
                    fsm.next("HUNT")
        return m

    def _take(self, m, fsm, state, byte, idx, part, last, at_last):
        """A byte of the frame taken in ``state``: store it (header field or payload)."""
        NB = self._bus_bytes
        if state == "TYPE":
            m.d.sync += self.type.eq(byte)
        elif state == "SEQ":
            m.d.sync += self.seq.eq(byte)
        elif state == "LEN0":
            m.d.sync += self.length[:8].eq(byte)
        elif state == "LEN1":
            m.d.sync += [self.length[8:].eq(byte), idx.eq(0), part.eq(0)]
        elif state == "PAYLOAD":
            m.d.comb += self.frame.en.eq(1)
            m.d.sync += [idx.eq(idx + 1), part.eq(Mux(part == NB - 1, 0, part + 1)),
                         at_last.eq(idx + 1 == last)]
            with m.If(at_last):
                fsm.next("CRC0")


class ReplySender(wiring.Component):
    """Send one reply frame: ``SOF, kind, seq, length``, the payload, the CRC-16.

    ``start`` latches what the payload is (``kind``, ``length``); ``kind``, ``length``, ``seq``
    and the payload sources must hold still until ``done``. The payload is the NAK ``reason``
    (NAK), ``flags`` then ``length - 1`` bytes of the reply buffer's words, low byte first
    (DATA), or the first ``length`` bytes of ``status`` (ACK, STATUS). ``done`` pulses
    (combinationally) when the last CRC byte is taken.

    The CRC takes each sent byte one cycle later, from a register (the byte multiplexer does
    not run on into the CRC's XOR network); the CRC bytes go out once it has taken the last
    one. The reply buffer's word is read through two registers, the address and the word
    (:class:`~bertcore.rtl.blockram.BlockRam`: on ECP5 the block's own output register; a
    block RAM's clock-to-out without it is 5.6 ns on the ULX3S's -6 part, and it ran on into
    this unit's word register, the ULX3S's worst path at 125 MHz): the word follows the
    word index two cycles late, which the header's five bytes, one per UART character time,
    leave room for.

    Parameters
    ----------
    bus_width : int
        Bits of a reply buffer word.
    reply_words : int
        Words of the reply buffer.
    status_bytes : int
        Bytes of ``status``.

    Members
    -------
    start : ``In(1)``, done : ``Out(1)``
        See above.
    kind, seq : ``In(8)``, length : ``In(16)``
        The reply's header fields.
    status : ``In(8 * status_bytes)``, reason : ``In(8)``, flags : ``In(8)``
        The payload of a STATUS, NAK or DATA reply.
    words : ``In(ReadPort.Signature(...))``
        The reply buffer's read: ``data`` is the word ``addr`` named two cycles before, through
        its output register (a :class:`~bertcore.rtl.blockram.BlockRam` read with ``r_en`` and
        ``o_en`` high; transparency not needed: the buffer is written before).
    o_stream : ``Out(stream.Signature(8))``
        Bytes for the UART transmitter.
    crc_start, crc_valid : ``Out(1)``, crc_data : ``Out(8)``, crc : ``In(16)``
        The CRC unit: ``start`` with ``start``, then each sent byte after the SOF.
    """

    def __init__(self, bus_width, reply_words, status_bytes):
        self._bus = bus_width
        self._reply_words = reply_words
        self._status_bytes = status_bytes
        super().__init__({
            "start": In(1),
            "done": Out(1),
            "kind": In(8),
            "seq": In(8),
            "length": In(16),
            "status": In(8 * status_bytes),
            "reason": In(8),
            "flags": In(8),
            "words": In(ReadPort.Signature(addr_width=ceil_log2(reply_words), shape=bus_width)),
            "o_stream": Out(stream.Signature(8)),
            "crc_start": Out(1),
            "crc_valid": Out(1),
            "crc_data": Out(8),
            "crc": In(16),
        })

    def elaborate(self, platform):
        m = Module()
        NB, SB = self._bus // 8, self._status_bytes
        j = Signal(range(P.HEADER_BYTES))           # header byte
        k = Signal(16)                              # payload byte
        k_first = Signal()                          # k == 0
        k_end = Signal(16)                          # length - 1
        r_data = Signal()                           # kind is R_DATA (registered at start)
        r_nak = Signal()                            # kind is R_NAK
        wi = Signal(range(self._reply_words + 1))   # word of the reply buffer
        part = Signal(range(NB))                    # byte within the word
        word = self.words.data                      # (the read's output register)
        tx_byte = Signal(8)
        crc_in = self.crc_data                      # (a register)
        crc_pend = self.crc_valid                   # crc_in waits for the CRC (a register)
        m.d.sync += crc_pend.eq(0)
        m.d.comb += self.words.addr.eq(wi)
        out = self.o_stream
        # a header or payload byte leaves from a register, tx_pre, loaded every cycle with
        # the byte of that cycle's counters, and is offered once it has (`staged`: low for a
        # cycle after each byte sent and as a reply starts). The byte's multiplexers (a status
        # byte, a word's byte, the reply's kind) ran on into the transmitter's register slice
        # otherwise (8.2 ns on the ULX3S at 125 MHz). The word of the reply buffer may still
        # be on its way when a byte is staged (its index changes with a byte sent, its word
        # comes two cycles later), as before: one byte per UART character time leaves the
        # time (see above).
        tx_pre = Signal(8)
        staged = Signal()
        m.d.sync += [tx_pre.eq(tx_byte), staged.eq(1)]

        with Fsm(m, "reply") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += self.crc_start.eq(1)
                    m.d.sync += [j.eq(0), k.eq(0), k_first.eq(1), wi.eq(0), part.eq(0),
                                 staged.eq(0),
                                 r_data.eq(self.kind == P.R_DATA),
                                 r_nak.eq(self.kind == P.R_NAK), k_end.eq(self.length - 1)]
                    fsm.next("HEAD")
            with fsm.State("HEAD"):
                head = Cat(Const(P.SOF, 8), self.kind, self.seq, self.length[:8],
                           self.length[8:])
                m.d.comb += [tx_byte.eq(head.word_select(j, 8)),
                             out.valid.eq(staged), out.payload.eq(tx_pre)]
                with m.If(out.ready & staged):
                    m.d.sync += [j.eq(j + 1), staged.eq(0)]
                    with m.If(j != 0):
                        m.d.sync += [crc_in.eq(tx_pre), crc_pend.eq(1)]
                    with m.If(j == P.HEADER_BYTES - 1):
                        fsm.next("PAYLOAD")
                        with m.If(self.length == 0):
                            fsm.next("CRC0")
            with fsm.State("PAYLOAD"):
                # shallow selects: status byte k by the low bits of k (a status reply has
                # status_bytes bytes), the reply kind and first byte from registered flags
                st = self.status.word_select(k[:(SB - 1).bit_length()], 8)
                data_byte = Mux(k_first, self.flags, word.word_select(part, 8))
                m.d.comb += [tx_byte.eq(Mux(r_data, data_byte, Mux(r_nak, self.reason, st))),
                             out.valid.eq(staged), out.payload.eq(tx_pre)]
                with m.If(out.ready & staged):
                    m.d.sync += [crc_in.eq(tx_pre), crc_pend.eq(1), k.eq(k + 1), k_first.eq(0),
                                 staged.eq(0)]
                    with m.If(~k_first):
                        m.d.sync += part.eq(Mux(part == NB - 1, 0, part + 1))
                        with m.If(part == NB - 1):
                            m.d.sync += wi.eq(wi + 1)
                    with m.If(k == k_end):
                        fsm.next("CRC0")
            with fsm.State("CRC0"):
                m.d.comb += [out.valid.eq(~crc_pend), out.payload.eq(self.crc[8:])]
                with m.If(out.ready & ~crc_pend):
                    fsm.next("CRC1")
            with fsm.State("CRC1"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(self.crc[:8])]
                with m.If(out.ready):
                    m.d.comb += self.done.eq(1)
                    fsm.next("IDLE")
        return m
