"""UART bridge: framed host protocol ↔ the encoder core's parameter, activation and output streams.

The protocol is described in ``docs/uart-protocol.md``; codes and the CRC are in
:mod:`bertcore.uart_protocol`. In short: the host sends one frame and waits for its reply (stop
and wait). The bridge receives a whole frame into a buffer, checks its CRC-16, and only then
executes it: PARAM/ACT frames are assembled into bus words and forwarded to ``param``/``act``
(``last`` on the final word of a ``*_LAST`` frame; ``user`` on the words of an ACT_TABLE frame,
the segment table of a packed packet), then ACKed; READ gathers output words from
``result`` into a reply buffer and returns them in a DATA reply; STATUS returns busy, error and
cycles; RESET pulses ``core_reset``. A frame with a bad CRC, length or type, a UART framing
error, or a line that goes idle in the middle of a frame is NAKed and nothing of it reaches the
core. Every frame carries a sequence byte: a frame with the same sequence byte as the previous
executed one (a retry after a lost reply) is not executed again; its stored reply is resent.

With ``sdram=True`` (a board with an SDRAM image store, :class:`boards.image_store.ImageStore`)
the bridge also executes LOAD (the following PARAM .. PARAM_LAST frames go to ``store_load``),
VERIFY (a verify-only load: a pulse on ``store_verify`` with the word count and fingerprint of
its payload on ``store_expect_*``: the store checks the image the SDRAM already holds) and RUN
(a pulse on ``store_run``: the store streams its image into the core), all answered with the
long STATUS reply, whose flag ``SD_ACCEPTED`` says whether the store took the command.

Structure (the boxes are components; the bridge's own ``elaborate`` and ``_dispatch`` are the
dispatcher, which starts one unit at a time)::

    rx ─► UARTRx ─► FrameReceiver ─► frame buffer ─► WordForwarder ─► param / act / store_load
                    (parse, CRC)       (bytes)       (bytes → words)
                         │ done, reason, header            ▲ start
                         ▼                                 │
                     dispatcher ───────────────────────────┤
                         │                                 ▼ start
    result ──────────────┼─────────────────────────► ResultGatherer ─► reply buffer (words)
                         │ start                                              │
                         ▼                                                    │
                     ReplySender (ACK/NAK/STATUS/DATA, CRC) ◄─────────────────┘
                         └─► RegisterSlice ─► UARTTx ─► tx

The dispatcher owns the reply's kind and length, the status word, the NAK reason, the
duplicate state (last sequence byte and reply), the SDRAM load flag and the core reset; every
unit owns the counters it steps; the bridge owns the CRC unit the receiver and the sender share.
:mod:`boards.framing` holds the receiver and the sender.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out, connect
from amaranth.utils import ceil_log2

from bertcore.core.common import act_layout
from bertcore.core.encoder import bus_layout, out_layout

from bertcore import uart_protocol as P
from bertcore.rtl.blockram import BlockRam
from bertcore.rtl.common import rejecting
from bertcore.rtl.fsm import Fsm
from bertcore.rtl.stream import RegisterSlice
from .framing import FrameReceiver, ReplySender
from .uart import UARTRx, UARTTx

__all__ = ["UARTBridge", "WordForwarder", "ResultGatherer"]


class WordForwarder(wiring.Component):
    """Forward a received PARAM/ACT payload from the frame buffer as bus words.

    After ``start``, reads ``length`` bytes (a whole number of words) from the frame buffer,
    assembles each word (byte ``i`` of the word from payload byte ``i``, little-endian) and
    offers it on ``o_stream``, ``last`` on the final word when ``last_frame``; ``done`` pulses
    (combinationally) when the final word is taken. ``abort`` (a line break) drops the frame in
    any state: ``aborted`` pulses, and no further word is offered.
    One word per ``3 * bus_width / 8 + 1`` cycles at most: the UART is far slower.

    Members
    -------
    start, abort : ``In(1)``, done, aborted : ``Out(1)``
        See above; ``aborted`` pulses when an ``abort`` drops the frame.
    length : ``In(16)``, last_frame : ``In(1)``
        The frame's payload bytes and whether it is a ``*_LAST`` frame (held until ``done``).
    frame : ``In(ReadPort.Signature(...))``
        The frame buffer's read: ``data`` is the byte ``addr`` named two cycles before, through
        its output register (a :class:`~bertcore.rtl.blockram.BlockRam` read with ``r_en`` and
        ``o_en`` high). The block RAM's clock-to-output ran on into the word register
        otherwise (8.2 ns on the ULX3S at 125 MHz).
    o_stream : ``Out(stream.Signature(bus_layout(bus_width)))``
        The words.
    """

    def __init__(self, bus_width, max_payload):
        self._bus = bus_width
        self._max_payload = max_payload
        super().__init__({
            "start": In(1),
            "abort": In(1),
            "done": Out(1),
            "aborted": Out(1),
            "length": In(16),
            "last_frame": In(1),
            "frame": In(ReadPort.Signature(addr_width=ceil_log2(max_payload), shape=8)),
            "o_stream": Out(stream.Signature(bus_layout(bus_width))),
        })

    def elaborate(self, platform):
        m = Module()
        NB = self._bus // 8
        idx = Signal(range(self._max_payload + 1))  # payload byte read next
        part = Signal(range(NB))                    # byte within the word
        word = Signal(self._bus)
        m.d.comb += self.frame.addr.eq(idx)
        with Fsm(m, "forward") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [idx.eq(0), part.eq(0)]
                    fsm.next("ADDR")
            with fsm.State("ADDR"):                 # frame.addr = idx; data in DATA
                fsm.next("WAIT")
            with fsm.State("WAIT"):                 # (the block RAM's output register)
                fsm.next("DATA")
            with fsm.State("DATA"):
                m.d.sync += [word.eq(Cat(word[8:], self.frame.data)), idx.eq(idx + 1),
                             part.eq(Mux(part == NB - 1, 0, part + 1))]
                with m.If(part == NB - 1):
                    fsm.next("SEND")
                with m.Else():
                    fsm.next("ADDR")
            with fsm.State("SEND"):
                m.d.comb += [self.o_stream.valid.eq(1), self.o_stream.payload.data.eq(word),
                             self.o_stream.payload.last.eq(self.last_frame
                                                           & (idx == self.length))]
                with m.If(self.o_stream.ready):
                    with m.If(idx == self.length):
                        m.d.comb += self.done.eq(1)
                        fsm.next("IDLE")
                    with m.Else():
                        fsm.next("ADDR")
            # in every busy state (a word offered is withdrawn: the core is being reset)
            with m.If(self.abort & ~fsm.ongoing("IDLE")):
                m.d.comb += self.aborted.eq(1)
                fsm.next("IDLE")
        return m


class ResultGatherer(wiring.Component):
    """Gather the core's output words for a DATA reply into the reply buffer.

    After ``start``, takes words from ``i_stream`` while they come, each within ``gap_cycles``
    of the previous one (or of ``start``), until the ``last`` word or a full buffer; then
    ``done`` pulses (combinationally, one cycle after the final word or the gap) with ``words``
    written and ``last`` (the packet's last word is among them), both held until the next
    ``start``.

    Members
    -------
    start : ``In(1)``, done : ``Out(1)``
        See above.
    i_stream : ``In(stream.Signature(out_layout(bus_width)))``
        The core's output (``user``: the word is a failed run's failure packet).
    words : ``Out(range(reply_words + 1))``, last : ``Out(1)``, failed : ``Out(1)``
        What was gathered (``failed``: the packet's last word is a failure packet).
    buffer : ``In(WritePort.Signature(...))``
        The reply buffer's write port.
    """

    def __init__(self, bus_width, reply_words, gap_cycles):
        self._reply_words = reply_words
        self._gap = gap_cycles
        super().__init__({
            "start": In(1),
            "done": Out(1),
            "i_stream": In(stream.Signature(out_layout(bus_width))),
            "words": Out(range(reply_words + 1)),
            "last": Out(1),
            "failed": Out(1),
            "buffer": In(WritePort.Signature(addr_width=ceil_log2(reply_words),
                                             shape=bus_width)),
        })

    def elaborate(self, platform):
        m = Module()
        RW = self._reply_words
        gap = Signal(range(self._gap + 1))
        wi = self.words
        m.d.comb += [self.buffer.addr.eq(wi), self.buffer.data.eq(self.i_stream.payload.data)]
        with Fsm(m, "gather") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [wi.eq(0), gap.eq(0), self.last.eq(0), self.failed.eq(0)]
                    fsm.next("GATHER")
            with fsm.State("GATHER"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    m.d.comb += self.buffer.en.eq(1)
                    m.d.sync += [wi.eq(wi + 1), gap.eq(0)]
                    with m.If(self.i_stream.payload.last | (wi == RW - 1)):
                        m.d.sync += [self.last.eq(self.i_stream.payload.last),
                                     self.failed.eq(self.i_stream.payload.user)]
                        fsm.next("DONE")
                with m.Elif(gap == self._gap):
                    fsm.next("DONE")
                with m.Else():
                    m.d.sync += gap.eq(gap + 1)
            with fsm.State("DONE"):
                m.d.comb += self.done.eq(1)
                fsm.next("IDLE")
        return m


class UARTBridge(wiring.Component):
    """Framed UART link to the encoder core's streams (see the module docstring).

    Parameters
    ----------
    bus_width : int
        Bits of the core's stream words (``CoreConfig.bus_width``, a multiple of 8).
    divisor : int
        Clock cycles per UART bit (:func:`boards.uart.uart_divisor`).
    max_payload : int
        Bytes of the frame buffer (the longest payload accepted; a multiple of
        ``bus_width // 8``). A DATA reply holds up to ``(max_payload - 1) // (bus_width // 8)``
        words.
    timeout : int or None
        Idle cycles after which a partly received frame is abandoned (NAK ``TIMEOUT``), and the
        idle gap awaited after a bad frame before its NAK. Default: 20 character times.
    gather : int or None
        Cycles a READ waits for the next output word before replying with what it has.
        Default: one character time.
    sdram : bool
        Add the image-store members and the LOAD / RUN frames (see the module docstring).

    Members
    -------
    rx : ``In(1, init=1)``, tx : ``Out(1, init=1)``
        The UART lines.
    param : ``Out(stream.Signature(bus_layout(bus_width)))``
        Words for the core's ``s_param``.
    act : ``Out(stream.Signature(act_layout(bus_width)))``
        Words for the core's ``s_act`` (``user``: a segment table word, from an ACT_TABLE
        frame).
    result : ``In(stream.Signature(out_layout(bus_width)))``
        The core's ``m_act`` (``user``: a failed run's failure packet, flagged in DATA).
    core_busy, core_error : ``In(1)``, core_cycles : ``In(32)``
        The core's status, reported by STATUS (and the error flag of DATA replies).
    core_reset : ``Out(1)``
        One-cycle pulse (registered) on a RESET frame or a line break: reset the core.
    nak : ``Out(1)``
        One-cycle pulse when a NAK is sent (for a LED).
    store_load : ``Out(stream.Signature(bus_layout(bus_width)))``
        (``sdram``) Image words for ``ImageStore.s_load``.
    store_start, store_verify, store_run : ``Out(1)``
        (``sdram``) One-cycle pulses: ``ImageStore.load`` / ``ImageStore.verify`` /
        ``ImageStore.run``.
    store_expect_words, store_expect_fingerprint : ``Out(32)``
        (``sdram``) A VERIFY frame's payload, for ``ImageStore.expect_*`` (held from the frame
        on).
    store_ready : ``In(1)``
        (``sdram``) The store takes a command (``init_done`` and not ``busy``).
    store_flags : ``In(5)``
        (``sdram``) ``init_done``, ``init_error``, ``valid``, ``error``, ``busy`` (bit 0 up).
    store_fingerprint, store_words : ``In(32)``
        (``sdram``) The stored image's CRC-32 and its words.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, bus_width, divisor, *, max_payload=256, timeout=None, gather=None,
                 sdram=False):
        with rejecting(self):
            if not isinstance(bus_width, int) or bus_width < 8 or bus_width % 8:
                raise ValueError(f"bus_width must be a positive multiple of 8, not {bus_width!r}")
            nb = bus_width // 8
            if (not isinstance(max_payload, int) or max_payload % nb
                    or not 2 * nb <= max_payload <= 0xFFFF):
                raise ValueError(f"max_payload must be a multiple of {nb} bytes from {2 * nb} "
                                 f"to 65535, not {max_payload!r}")
            self._rx = UARTRx(divisor)
            self._tx = UARTTx(divisor)
        self._bus = bus_width
        self._divisor = divisor
        self._max_payload = max_payload
        self._timeout = 200 * divisor if timeout is None else timeout
        self._gather = 10 * divisor if gather is None else gather
        self._sdram = bool(sdram)
        layout = bus_layout(bus_width)
        members = {}
        if self._sdram:
            members = {"store_load": Out(stream.Signature(layout)), "store_start": Out(1),
                       "store_verify": Out(1), "store_run": Out(1),
                       "store_expect_words": Out(32), "store_expect_fingerprint": Out(32),
                       "store_ready": In(1), "store_flags": In(5),
                       "store_fingerprint": In(32), "store_words": In(32)}
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "param": Out(stream.Signature(layout)),
            "act": Out(stream.Signature(act_layout(bus_width))),
            "result": In(stream.Signature(out_layout(bus_width))),
            "core_busy": In(1),
            "core_error": In(1),
            "core_cycles": In(32),
            "core_reset": Out(1),
            "nak": Out(1),
            **members,
        })

    @property
    def bus_width(self):
        return self._bus

    @property
    def sdram(self):
        return self._sdram

    @property
    def status_bytes(self):
        """Payload bytes of the STATUS reply."""
        return P.SDRAM_STATUS_BYTES if self._sdram else P.STATUS_BYTES

    @property
    def max_payload(self):
        return self._max_payload

    @property
    def reply_words(self):
        """Most words in one DATA reply."""
        return (self._max_payload - 1) // (self._bus // 8)

    def elaborate(self, platform):
        m = Module()
        NB, MAXP, RW = self._bus // 8, self._max_payload, self.reply_words
        m.submodules.uart_rx = urx = self._rx
        m.submodules.uart_tx = utx = self._tx
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # the frame buffer is read through its output register (WordForwarder)
        m.submodules.frame_mem = frame_mem = BlockRam(8, MAXP)
        # the reply buffer is read through its output register (ReplySender's word)
        m.submodules.reply_mem = reply_mem = BlockRam(self._bus, RW)
        # bytes are taken while hunting or inside a frame; outside (executing, replying) they
        # wait in the UART receiver, and further ones are lost (the host waits for the reply)
        m.submodules.receiver = rx = FrameReceiver(MAXP, NB, self._timeout)
        connect(m, urx.o_stream, rx.i_stream)
        m.d.comb += [frame_mem.w_addr.eq(rx.frame.addr), frame_mem.w_data.eq(rx.frame.data),
                     frame_mem.w_en.eq(rx.frame.en)]
        # the UART's error pulses, registered together (a cycle late, in step): the stop-bit
        # decode of a break ran on through the dispatcher's reset and NAK logic into its
        # reason register (the ULX3S's worst path at a 125 MHz core clock, 8.66 ns)
        frame_error, line_break = Signal(), Signal()
        m.d.sync += [frame_error.eq(urx.frame_error), line_break.eq(urx.line_break)]
        m.d.comb += rx.frame_error.eq(frame_error)
        if self._sdram:
            # a VERIFY frame's 8 payload bytes (words, fingerprint: u32 LE each), taken as the
            # receiver writes them into the frame buffer (the header, type included, comes
            # first; the store reads them only with the pulse of a good VERIFY frame)
            expect = Signal(8 * P.VERIFY_BYTES)
            with m.If(rx.frame.en & (rx.frame.addr < P.VERIFY_BYTES)
                      & (rx.type == P.T_VERIFY)):
                m.d.sync += expect.word_select(rx.frame.addr[:3], 8).eq(rx.frame.data)
            m.d.comb += [self.store_expect_words.eq(expect[:32]),
                         self.store_expect_fingerprint.eq(expect[32:])]
        m.submodules.forwarder = fwd = WordForwarder(self._bus, MAXP)
        m.d.comb += [frame_mem.r_addr.eq(fwd.frame.addr), frame_mem.r_en.eq(1),
                     frame_mem.o_en.eq(1), fwd.frame.data.eq(frame_mem.r_data)]
        m.d.comb += [fwd.length.eq(rx.length), fwd.abort.eq(line_break)]
        m.submodules.gatherer = gather = ResultGatherer(self._bus, RW, self._gather)
        connect(m, wiring.flipped(self.result), gather.i_stream)
        m.d.comb += [reply_mem.w_addr.eq(gather.buffer.addr),
                     reply_mem.w_data.eq(gather.buffer.data),
                     reply_mem.w_en.eq(gather.buffer.en)]
        m.submodules.sender = tx = ReplySender(self._bus, RW, self.status_bytes)
        m.d.comb += [reply_mem.r_addr.eq(tx.words.addr), reply_mem.r_en.eq(1),
                     reply_mem.o_en.eq(1), tx.words.data.eq(reply_mem.r_data)]
        # reply bytes pass a register slice on their way to the transmitter (the byte
        # multiplexer of the reply does not run on into its shift register)
        m.submodules.tx_slice = tx_slice = RegisterSlice(unsigned(8))
        connect(m, tx.o_stream, tx_slice.i_stream)
        connect(m, tx_slice.o_stream, utx.i_stream)
        m.d.comb += tx.seq.eq(rx.seq)
        # one CRC unit serves both directions: the receiver's bytes, or (one cycle late) the
        # sender's; the link is stop and wait, so they never use it at once
        m.submodules.crc = crc_unit = crc.Processor(P.CRC16(8))
        m.d.comb += [crc_unit.start.eq(rx.crc_start | tx.crc_start),
                     crc_unit.valid.eq(rx.crc_valid | tx.crc_valid),
                     crc_unit.data.eq(Mux(tx.crc_valid, tx.crc_data, rx.crc_data)),
                     rx.crc_match.eq(crc_unit.match_detected), tx.crc.eq(crc_unit.crc)]

        lost = Signal()                             # a byte was lost (overrun) since STATUS
        with m.If(urx.overrun):
            m.d.sync += lost.eq(1)
        to_store = Signal()                         # PARAM frames go to store_load (after LOAD)
        self._route_words(m, fwd, rx.type, to_store)
        reset_core = Signal()
        self._dispatch(m, rx, fwd, gather, tx, lost=lost, to_store=to_store,
                       reset_core=reset_core, line_break=line_break)

        # A break on the line resets the core and forgets the last sequence byte; a frame being
        # forwarded is abandoned (the dispatcher), one being received is NAKed (framing error).
        with m.If(line_break):
            m.d.comb += reset_core.eq(1)
            m.d.sync += to_store.eq(0)
        # registered: the core's reset reaches every flip-flop of the core (a large fan-out)
        m.d.sync += self.core_reset.eq(reset_core)
        return m

    def _route_words(self, m, fwd, ftype, to_store):
        """The forwarder's words go to ``param`` (PARAM), ``act`` (ACT, and ACT_TABLE with
        ``user``) or, after a LOAD, ``store_load`` (PARAM: the image-load path); its final PARAM
        word ends the load."""
        is_param = (ftype == P.T_PARAM) | (ftype == P.T_PARAM_LAST)
        word = fwd.o_stream
        is_table = ftype == P.T_ACT_TABLE
        is_act = (ftype == P.T_ACT) | (ftype == P.T_ACT_LAST) | is_table
        outs = [(self.param, is_param & ~to_store), (self.act, is_act)]
        if self._sdram:
            outs.append((self.store_load, is_param & to_store))
        for out, sel in outs:
            m.d.comb += [out.payload.data.eq(word.payload.data),
                         out.payload.last.eq(word.payload.last),
                         out.valid.eq(word.valid & sel)]
        m.d.comb += self.act.payload.user.eq(is_table)
        taken = Mux(is_param, Mux(to_store, self.store_load.ready if self._sdram else 0,
                                  self.param.ready), self.act.ready)
        m.d.comb += [word.ready.eq(taken),
                     fwd.last_frame.eq((ftype == P.T_PARAM_LAST) | (ftype == P.T_ACT_LAST))]
        with m.If(word.valid & taken & word.payload.last & is_param):
            m.d.sync += to_store.eq(0)              # the image is complete

    def _status_word(self, lost, to_store, accepted):
        """The STATUS payload (``docs/uart-protocol.md``); ``accepted`` answers LOAD / RUN."""
        NB, MAXP = self._bus // 8, self._max_payload
        # bit 4: this bridge forwards ACT_TABLE frames (packed runs)
        base = Cat(self.core_busy, self.core_error, self.result.valid, lost, Const(1, 1),
                   Const(0, 3), self.core_cycles, Const(NB, 8), Const(MAXP, 16))
        if not self._sdram:
            return base
        return Cat(base, self.store_flags, to_store, accepted, Const(0, 1),
                   self.store_fingerprint, self.store_words)

    def _dispatch(self, m, rx, fwd, gather, tx, *, lost, to_store, reset_core, line_break):
        """The dispatcher: execute each good frame, NAK a bad one, choose and start the reply.

        It owns the reply (kind, length, status word, NAK reason, DATA flags) and the
        duplicate state: the sequence byte and the reply of the last executed frame.
        """
        ftype, seq = rx.type, rx.seq
        rtype, rlen = Signal(8), Signal(16)         # the reply being sent
        status = Signal.like(tx.status)             # its payload: STATUS,
        reason = Signal(8)                          # NAK,
        dflags = Signal(8)                          # DATA (then the reply buffer's words)
        m.d.comb += [tx.kind.eq(rtype), tx.length.eq(rlen), tx.status.eq(status),
                     tx.reason.eq(reason), tx.flags.eq(dflags)]
        last_seq, last_rtype, last_rlen = Signal(8), Signal(8), Signal(16)
        last_valid = Signal()
        is_data = ((ftype == P.T_PARAM) | (ftype == P.T_PARAM_LAST) | (ftype == P.T_ACT)
                   | (ftype == P.T_ACT_LAST) | (ftype == P.T_ACT_TABLE))
        known = is_data | (ftype == P.T_READ) | (ftype == P.T_RESET)
        is_store = (ftype == P.T_LOAD) | (ftype == P.T_RUN) | (ftype == P.T_VERIFY)
        if self._sdram:
            known = known | is_store

        def reply(kind, nbytes, *, record):
            m.d.sync += [rtype.eq(kind), rlen.eq(nbytes)]
            if record:
                m.d.sync += [last_seq.eq(seq), last_valid.eq(1), last_rtype.eq(kind),
                             last_rlen.eq(nbytes)]
            fsm.next("REPLY")

        with Fsm(m, "link") as fsm:
            with fsm.State("RECEIVE"):
                with m.If(rx.done & (rx.reason == 0)):
                    fsm.next("DISPATCH")
                with m.Elif(rx.done):
                    m.d.sync += reason.eq(rx.reason)
                    fsm.next("NAK")
            with fsm.State("NAK"):
                m.d.comb += self.nak.eq(1)
                reply(P.R_NAK, 1, record=False)
            with fsm.State("DISPATCH"):
                with m.If(ftype == P.T_STATUS):
                    m.d.sync += [lost.eq(0), status.eq(self._status_word(lost, to_store, 0))]
                    reply(P.R_STATUS, self.status_bytes, record=False)
                with m.Elif(~known):
                    m.d.sync += reason.eq(P.NAK_TYPE)
                    fsm.next("NAK")
                with m.Elif(last_valid & (seq == last_seq)):
                    # a retry of the frame executed last: resend its reply
                    m.d.sync += [rtype.eq(last_rtype), rlen.eq(last_rlen)]
                    fsm.next("REPLY")
                with m.Elif(is_data & ~rx.whole_words):
                    m.d.sync += reason.eq(P.NAK_LENGTH)
                    fsm.next("NAK")
                with m.Elif(is_data):
                    m.d.comb += fwd.start.eq(1)
                    fsm.next("FORWARD")
                with m.Elif(ftype == P.T_READ):
                    m.d.comb += gather.start.eq(1)
                    fsm.next("GATHER")
                if self._sdram:
                    with m.Elif((ftype == P.T_VERIFY) & (rx.length != P.VERIFY_BYTES)):
                        m.d.sync += reason.eq(P.NAK_LENGTH)
                        fsm.next("NAK")
                    with m.Elif(is_store):
                        # LOAD / VERIFY / RUN: taken only by a ready store (RUN: with a valid
                        # image); the reply is the status with SD_ACCEPTED (recorded: a retry
                        # is not executed). VERIFY's word count and fingerprint are the store's
                        # to judge: a bad one ends as image error, no valid image.
                        accepted = self.store_ready & ((ftype != P.T_RUN) | self.store_flags[2])
                        m.d.sync += status.eq(self._status_word(lost, to_store, accepted))
                        with m.If(accepted):
                            with m.If(ftype == P.T_LOAD):
                                m.d.comb += self.store_start.eq(1)
                                m.d.sync += to_store.eq(1)
                            with m.Elif(ftype == P.T_VERIFY):
                                m.d.comb += self.store_verify.eq(1)
                            with m.Else():
                                m.d.comb += self.store_run.eq(1)
                        reply(P.R_STATUS, self.status_bytes, record=True)
                with m.Else():                      # RESET (also ends a load)
                    m.d.comb += reset_core.eq(1)
                    m.d.sync += to_store.eq(0)
                    reply(P.R_ACK, 0, record=True)
            with fsm.State("FORWARD"):
                with m.If(fwd.done):
                    reply(P.R_ACK, 0, record=True)
                with m.If(fwd.aborted):             # a line break (the core is reset)
                    m.d.comb += rx.start.eq(1)
                    fsm.next("RECEIVE")
            with fsm.State("GATHER"):
                with m.If(gather.done):
                    m.d.sync += dflags.eq(Cat(gather.last, self.core_error, gather.failed))
                    reply(P.R_DATA, 1 + gather.words * (self._bus // 8), record=True)
            with fsm.State("REPLY"):
                m.d.comb += tx.start.eq(1)
                fsm.next("SEND")
            with fsm.State("SEND"):
                with m.If(tx.done):
                    m.d.comb += rx.start.eq(1)
                    fsm.next("RECEIVE")
        with m.If(line_break):
            m.d.sync += last_valid.eq(0)
