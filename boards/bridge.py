"""UART bridge: framed host protocol ↔ the encoder core's parameter, activation and output streams.

The protocol is described in ``docs/uart-protocol.md``; codes and the CRC are in
:mod:`bertcore.uart_protocol`. In short: the host sends one frame and waits for its reply (stop
and wait). The bridge receives a whole frame into a buffer, checks its CRC-16, and only then
executes it: PARAM/ACT frames are assembled into bus words and forwarded to ``param``/``act``
(``last`` on the final word of a ``*_LAST`` frame), then ACKed; READ gathers output words from
``result`` into a reply buffer and returns them in a DATA reply; STATUS returns busy, error and
cycles; RESET pulses ``core_reset``. A frame with a bad CRC, length or type, a UART framing
error, or a line that goes idle in the middle of a frame is NAKed and nothing of it reaches the
core. Every frame carries a sequence byte: a frame with the same sequence byte as the previous
executed one (a retry after a lost reply) is not executed again; its stored reply is resent.

With ``sdram=True`` (a board with an SDRAM image store, :class:`boards.image_store.ImageStore`)
the bridge also executes LOAD (the following PARAM .. PARAM_LAST frames go to ``store_load``)
and RUN (a pulse on ``store_run``: the store streams its image into the core), both answered
with the long STATUS reply, whose flag ``SD_ACCEPTED`` says whether the store took the command.

Structure::

    rx ─► UARTRx ─► frame parser (CRC) ─► frame buffer (bytes) ─► word assembly ─► param / act
                                   └──► dispatch ──► reply (ACK/NAK/STATUS/DATA) ─► UARTTx ─► tx
    result ─► gather ─► reply buffer (words) ──────────┘
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect

from bertcore.core.encoder import bus_layout, out_layout

from bertcore import uart_protocol as P
from bertcore.rtl.common import rejecting
from bertcore.rtl.fsm import Fsm
from bertcore.rtl.stream import RegisterSlice
from .uart import UARTRx, UARTTx

__all__ = ["UARTBridge"]


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
    param, act : ``Out(stream.Signature(bus_layout(bus_width)))``
        Words for the core's ``s_param`` / ``s_act``.
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
    store_start, store_run : ``Out(1)``
        (``sdram``) One-cycle pulses: ``ImageStore.load`` / ``ImageStore.run``.
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
                       "store_run": Out(1), "store_ready": In(1), "store_flags": In(5),
                       "store_fingerprint": In(32), "store_words": In(32)}
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "param": Out(stream.Signature(layout)),
            "act": Out(stream.Signature(layout)),
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
        BUS, NB, MAXP = self._bus, self._bus // 8, self._max_payload
        RW = self.reply_words

        m.submodules.uart_rx = urx = self._rx
        m.submodules.uart_tx = utx = self._tx
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        # reply bytes pass a register slice on their way to the transmitter (the byte
        # multiplexer of the reply does not run on into its shift register)
        m.submodules.tx_slice = tx_slice = RegisterSlice(unsigned(8))
        connect(m, tx_slice.o_stream, utx.i_stream)
        tx_in = tx_slice.i_stream
        # bytes are taken while hunting or inside a frame; outside (executing, replying) they
        # wait in the receiver, and further ones are lost (the host waits for the reply)
        got = urx.o_stream.valid & urx.o_stream.ready
        byte = urx.o_stream.payload

        m.submodules.frame_mem = frame_mem = Memory(shape=8, depth=MAXP, init=[])
        fw, fr = frame_mem.write_port(), frame_mem.read_port()
        m.submodules.reply_mem = reply_mem = Memory(shape=BUS, depth=RW, init=[])
        rw, rr = reply_mem.write_port(), reply_mem.read_port()

        # -- Received frame -------------------------------------------------------------------
        ftype = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        idx = Signal(range(MAXP + 1))               # payload byte (receive, forward)
        part = Signal(range(NB))                    # byte within a word (receive, forward)
        # One CRC unit serves both directions (stop and wait: a frame is received whole before
        # its reply is sent, and no byte is taken while replying). Receive: ``start`` on SOF,
        # then every byte from the type to the last CRC byte; a whole frame leaves the residue
        # (``match_detected``) a cycle later. Reply: ``start`` in SEND, then each sent byte
        # one cycle later from ``crc_in`` (below); ``crc`` is the CRC to send.
        m.submodules.crc = crc_unit = crc.Processor(P.CRC16(8))
        reason = Signal(8)

        idle = Signal(range(self._timeout + 1))     # cycles since the last received byte
        with m.If(got):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self._timeout):
            m.d.sync += idle.eq(idle + 1)
        idle_out = idle == self._timeout

        # -- Reply --------------------------------------------------------------------------
        rtype = Signal(8)
        rlen = Signal(16)
        last_seq = Signal(8)
        last_valid = Signal()
        last_rtype = Signal(8)
        last_rlen = Signal(16)
        dflags = Signal(8)                          # flags of the stored DATA reply
        SB = self.status_bytes
        status = Signal(8 * SB)
        j = Signal(range(P.HEADER_BYTES))
        k = Signal(16)                              # payload byte of the reply
        k_first = Signal()                          # k == 0
        r_data = Signal()                           # rtype is R_DATA (registered in SEND)
        r_nak = Signal()                            # rtype is R_NAK
        k_end = Signal(16)                          # rlen - 1
        wi = Signal(range(RW + 1))                  # word of the reply buffer
        tx_byte = Signal(8)
        # the reply CRC takes each sent byte one cycle later, from a register (``crc_pend``:
        # a byte is waiting; the byte multiplexer does not run on into the XOR network); the
        # CRC bytes go out once it has taken the last one
        tcrc = crc_unit.crc
        crc_in = Signal(8)
        crc_pend = Signal()
        m.d.sync += crc_pend.eq(0)
        m.d.comb += [crc_unit.data.eq(Mux(crc_pend, crc_in, byte)),
                     crc_unit.valid.eq(crc_pend)]      # (receive states add their bytes)
        m.d.comb += [rr.addr.eq(wi), fr.addr.eq(idx)]
        # the reply word passes a register (a block RAM's clock-to-out without its output
        # register is 5.6 ns on the ULX3S's -6 part; it ran on into the byte select)
        rr_word = Signal.like(rr.data)
        m.d.sync += rr_word.eq(rr.data)

        is_param = (ftype == P.T_PARAM) | (ftype == P.T_PARAM_LAST)
        is_act = (ftype == P.T_ACT) | (ftype == P.T_ACT_LAST)
        is_last = (ftype == P.T_PARAM_LAST) | (ftype == P.T_ACT_LAST)
        known = is_param | is_act | (ftype == P.T_READ) | (ftype == P.T_RESET)
        is_store = Signal()                         # LOAD or RUN (sdram only)
        to_store = Signal()                         # PARAM frames go to store_load (after LOAD)
        if self._sdram:
            m.d.comb += is_store.eq((ftype == P.T_LOAD) | (ftype == P.T_RUN))
            known = known | is_store

        word = Signal(BUS)
        word_last = Signal()
        word_failed = Signal()                      # the gathered word is a failure packet
        gap = Signal(range(self._gather + 1))

        reset_core = Signal()
        lost = Signal()                             # a byte was lost (overrun) since STATUS
        with m.If(urx.overrun):
            m.d.sync += lost.eq(1)

        def status_word(accepted):
            base = Cat(self.core_busy, self.core_error, self.result.valid, lost, Const(0, 4),
                       self.core_cycles, Const(NB, 8), Const(MAXP, 16))
            if not self._sdram:
                return base
            return Cat(base, self.store_flags, to_store, accepted, Const(0, 1),
                       self.store_fingerprint, self.store_words)

        def reply(kind, nbytes, *, record):
            m.d.sync += [rtype.eq(kind), rlen.eq(nbytes)]
            if record:
                m.d.sync += [last_seq.eq(seq), last_valid.eq(1), last_rtype.eq(kind),
                             last_rlen.eq(nbytes)]
            fsm.next("SEND")

        with Fsm(m, "link") as fsm:
            # -- receive ----------------------------------------------------------------------
            with fsm.State("HUNT"):
                m.d.comb += urx.o_stream.ready.eq(1)
                with m.If(got & (byte == P.SOF)):
                    m.d.comb += crc_unit.start.eq(1)
                    fsm.next("TYPE")
            for state, nxt in (("TYPE", "SEQ"), ("SEQ", "LEN0"), ("LEN0", "LEN1"),
                               ("LEN1", None), ("PAYLOAD", None), ("CRC0", "CRC1"),
                               ("CRC1", None)):
                with fsm.State(state):
                    m.d.comb += urx.o_stream.ready.eq(1)
                    with m.If(urx.frame_error):
                        m.d.sync += reason.eq(P.NAK_FRAMING)
                        fsm.next("DISCARD")
                    with m.Elif(got):
                        m.d.comb += crc_unit.valid.eq(1)
                        if state == "TYPE":
                            m.d.sync += ftype.eq(byte)
                        elif state == "SEQ":
                            m.d.sync += seq.eq(byte)
                        elif state == "LEN0":
                            m.d.sync += length[:8].eq(byte)
                        elif state == "LEN1":
                            new_len = Cat(length[:8], byte)
                            m.d.sync += [length[8:].eq(byte), idx.eq(0), part.eq(0)]
                            with m.If(new_len > MAXP):
                                m.d.sync += reason.eq(P.NAK_LENGTH)
                                fsm.next("DISCARD")
                            with m.Elif(new_len == 0):
                                fsm.next("CRC0")
                            with m.Else():
                                fsm.next("PAYLOAD")
                        elif state == "PAYLOAD":
                            m.d.comb += [fw.addr.eq(idx), fw.data.eq(byte), fw.en.eq(1)]
                            m.d.sync += [idx.eq(idx + 1),
                                         part.eq(Mux(part == NB - 1, 0, part + 1))]
                            with m.If(idx == length - 1):
                                fsm.next("CRC0")
                        elif state == "CRC1":
                            fsm.next("CHECK")
                        if nxt is not None:
                            fsm.next(nxt)
                    with m.Elif(idle_out):
                        m.d.sync += reason.eq(P.NAK_TIMEOUT)
                        fsm.next("NAK")
            with fsm.State("CHECK"):
                # the CRC has taken the last byte
                with m.If(crc_unit.match_detected):
                    fsm.next("DISPATCH")
                with m.Else():
                    m.d.sync += reason.eq(P.NAK_CRC)
                    fsm.next("DISCARD")
            with fsm.State("DISCARD"):
                m.d.comb += urx.o_stream.ready.eq(1)
                # wait for the line to go quiet, so that the NAK follows the whole bad frame
                with m.If(idle_out):
                    fsm.next("NAK")
            with fsm.State("NAK"):
                m.d.comb += self.nak.eq(1)
                reply(P.R_NAK, 1, record=False)

            # -- execute ----------------------------------------------------------------------
            with fsm.State("DISPATCH"):
                m.d.sync += [idx.eq(0), wi.eq(0), gap.eq(0), word_last.eq(0),
                             word_failed.eq(0)]
                with m.If(ftype == P.T_STATUS):
                    m.d.sync += lost.eq(0)
                    m.d.sync += status.eq(status_word(0))
                    reply(P.R_STATUS, SB, record=False)
                with m.Elif(~known):
                    m.d.sync += reason.eq(P.NAK_TYPE)
                    fsm.next("NAK")
                with m.Elif(last_valid & (seq == last_seq)):
                    # a retry of the frame executed last: resend its reply
                    m.d.sync += [rtype.eq(last_rtype), rlen.eq(last_rlen)]
                    fsm.next("SEND")
                with m.Elif((is_param | is_act) & ((length == 0) | (part != 0))):
                    m.d.sync += reason.eq(P.NAK_LENGTH)
                    fsm.next("NAK")
                with m.Elif(is_param | is_act):
                    fsm.next("FWD_ADDR")
                with m.Elif(ftype == P.T_READ):
                    fsm.next("GATHER")
                if self._sdram:
                    with m.Elif(is_store):
                        # LOAD / RUN: taken only by a ready store (RUN: with a valid image); the
                        # reply is the status with SD_ACCEPTED (recorded: a retry is not executed)
                        accepted = self.store_ready & ((ftype == P.T_LOAD) | self.store_flags[2])
                        m.d.sync += status.eq(status_word(accepted))
                        with m.If(accepted):
                            with m.If(ftype == P.T_LOAD):
                                m.d.comb += self.store_start.eq(1)
                                m.d.sync += to_store.eq(1)
                            with m.Else():
                                m.d.comb += self.store_run.eq(1)
                        reply(P.R_STATUS, SB, record=True)
                with m.Else():                      # RESET (also ends a load)
                    m.d.comb += reset_core.eq(1)
                    m.d.sync += to_store.eq(0)
                    reply(P.R_ACK, 0, record=True)

            with fsm.State("FWD_ADDR"):               # fr.addr = idx; data in FWD_DATA
                fsm.next("FWD_DATA")
                with m.If(urx.line_break):          # abandon the frame (the core is reset)
                    fsm.next("HUNT")
            with fsm.State("FWD_DATA"):
                m.d.sync += [word.eq(Cat(word[8:], fr.data)), idx.eq(idx + 1),
                             part.eq(Mux(part == NB - 1, 0, part + 1))]
                with m.If(part == NB - 1):
                    fsm.next("FWD_SEND")
                with m.Else():
                    fsm.next("FWD_ADDR")
            with fsm.State("FWD_SEND"):
                last = is_last & (idx == length)
                outs = [(self.param, is_param & ~to_store), (self.act, is_act)]
                if self._sdram:
                    outs.append((self.store_load, is_param & to_store))
                for out, sel in outs:
                    m.d.comb += [out.payload.data.eq(word), out.payload.last.eq(last),
                                 out.valid.eq(sel)]
                taken = Mux(is_param, Mux(to_store, self.store_load.ready if self._sdram else 0,
                                          self.param.ready), self.act.ready)
                with m.If(taken):
                    with m.If(last & is_param):
                        m.d.sync += to_store.eq(0)      # the image is complete
                    with m.If(idx == length):
                        reply(P.R_ACK, 0, record=True)
                    with m.Else():
                        fsm.next("FWD_ADDR")
                with m.If(urx.line_break):
                    fsm.next("HUNT")

            with fsm.State("GATHER"):
                m.d.comb += self.result.ready.eq(1)
                m.d.comb += [rw.addr.eq(wi), rw.data.eq(self.result.payload.data)]
                with m.If(self.result.valid):
                    m.d.comb += rw.en.eq(1)
                    m.d.sync += [wi.eq(wi + 1), gap.eq(0)]
                    with m.If(self.result.payload.last | (wi == RW - 1)):
                        m.d.sync += [word_last.eq(self.result.payload.last),
                                     word_failed.eq(self.result.payload.user)]
                        fsm.next("GATHERED")
                with m.Elif(gap == self._gather):
                    fsm.next("GATHERED")
                with m.Else():
                    m.d.sync += gap.eq(gap + 1)
            with fsm.State("GATHERED"):
                m.d.sync += dflags.eq(Cat(word_last, self.core_error, word_failed))
                reply(P.R_DATA, 1 + wi * NB, record=True)

            # -- reply ------------------------------------------------------------------------
            with fsm.State("SEND"):
                m.d.comb += crc_unit.start.eq(1)
                m.d.sync += [j.eq(0), k.eq(0), k_first.eq(1), wi.eq(0), part.eq(0),
                             r_data.eq(rtype == P.R_DATA),
                             r_nak.eq(rtype == P.R_NAK), k_end.eq(rlen - 1)]
                fsm.next("TX_HEAD")
            with fsm.State("TX_HEAD"):
                head = Cat(Const(P.SOF, 8), rtype, seq, rlen[:8], rlen[8:])
                m.d.comb += tx_byte.eq(head.word_select(j, 8))
                m.d.comb += [tx_in.valid.eq(1), tx_in.payload.eq(tx_byte)]
                with m.If(tx_in.ready):
                    m.d.sync += j.eq(j + 1)
                    with m.If(j != 0):
                        m.d.sync += [crc_in.eq(tx_byte), crc_pend.eq(1)]
                    with m.If(j == P.HEADER_BYTES - 1):
                        fsm.next("TX_PAY")
                        with m.If(rlen == 0):
                            fsm.next("TX_CRC0")
            with fsm.State("TX_PAY"):
                # shallow selects: status byte k by the low bits of k (a status reply has
                # STATUS_BYTES bytes), the reply kind and first byte from registered flags
                st = status.word_select(k[:(SB - 1).bit_length()], 8)
                # (rr_word follows wi two cycles late: payload bytes are taken one per UART
                # byte time, the slice's two places being filled by the five header bytes)
                data_byte = Mux(k_first, dflags, rr_word.word_select(part, 8))
                m.d.comb += tx_byte.eq(Mux(r_data, data_byte, Mux(r_nak, reason, st)))
                m.d.comb += [tx_in.valid.eq(1), tx_in.payload.eq(tx_byte)]
                with m.If(tx_in.ready):
                    m.d.sync += [crc_in.eq(tx_byte), crc_pend.eq(1), k.eq(k + 1), k_first.eq(0)]
                    with m.If(~k_first):
                        m.d.sync += part.eq(Mux(part == NB - 1, 0, part + 1))
                        with m.If(part == NB - 1):
                            m.d.sync += wi.eq(wi + 1)
                    with m.If(k == k_end):
                        fsm.next("TX_CRC0")
            with fsm.State("TX_CRC0"):
                m.d.comb += [tx_in.valid.eq(~crc_pend), tx_in.payload.eq(tcrc[8:])]
                with m.If(tx_in.ready & ~crc_pend):
                    fsm.next("TX_CRC1")
            with fsm.State("TX_CRC1"):
                m.d.comb += [tx_in.valid.eq(1), tx_in.payload.eq(tcrc[:8])]
                with m.If(tx_in.ready):
                    fsm.next("HUNT")

        # A break on the line resets the core and forgets the last sequence byte; a frame being
        # forwarded is abandoned (above), one being received is NAKed (framing error).
        with m.If(urx.line_break):
            m.d.comb += reset_core.eq(1)
            m.d.sync += [last_valid.eq(0), to_store.eq(0)]
        # registered: the core's reset reaches every flip-flop of the core (a large fan-out)
        m.d.sync += self.core_reset.eq(reset_core)
        return m
