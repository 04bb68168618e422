"""The core's activation streams: input beats -> bytes -> the X buffer, and the output pass
X -> bytes -> output beats.

Both move one byte per cycle (row-major, ``hidden`` bytes per position, little-endian in a
beat), which :mod:`bertcore.core.perf` models as ``bus_width/8 + 1`` cycles per input beat
and ``N + 2`` cycles per output word of ``N`` bytes.
"""

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bertcore.rtl.common import less
from bertcore.rtl.stream import RegisterSlice

from .common import act_signature, bus_signature, pick, row_read, task, times, write_port
from .segments import SegmentTable

__all__ = ["ActivationInput", "ActivationOutput"]


class ActivationInput(wiring.Component):
    """The activation packet of a run -> the X buffer (and, packed, the segment table).

    A beat is taken into a register and split into bytes; the gatherer collects the row bytes
    (row-major) into words of ``N`` channels and writes each into bank ``p mod N`` of X. Every
    byte also goes to a :class:`~bertcore.core.segments.SegmentTable`, which parses and checks
    the segment table of a packed packet (its beats: ``user`` set) and keeps the bounds of each
    row's segment; a plain packet (first beat ``user = 0``) passes it unchanged, in the same
    cycles.

    Members
    -------
    act : ``In(act_signature(bus_width))``
        The activation packet (``last`` on its final beat, ``user`` on segment-table beats).
    ctl : ``In(task())``
        ``start`` arms the input (from the next cycle on: the pass registers it); ``done`` is
        high once the packet's last beat is in.
    x : ``Out(write_port(...)).array(N)``
        X's write ports.
    length : ``Out(range(max_seq + 2))``
        Positions received (valid with ``done``).
    blocks : ``Out(range(ceil(max_seq / N) + 1))``
        Blocks of ``N`` positions received, the last one partial or not.
    overflow : ``Out(1)``
        A one-cycle pulse: the packet has more than ``max_seq`` positions, or (packed) its
        segment table is malformed, or its data beats do not hold exactly the table's rows.
    packed : ``Out(1)``
        The packet began with a segment table (valid with ``done``).
    r_addr : ``In(range(max_seq))``, r_start, r_end : ``Out(range(max_seq + 1))``
        Packed: the bounds ``[r_start, r_end)`` of the segment of row ``r_addr``, one cycle
        after the address (for the rows of the table, once ``done``).
    """

    def __init__(self, config):
        self._c = config
        n = config.array_cols
        self._grp = -(-config.max_seq // n)
        super().__init__({
            "act": In(act_signature(config.bus_width)),
            "ctl": In(task()),
            "x": Out(write_port(self._grp * config.hidden // n, unsigned(8 * n))).array(n),
            "length": Out(range(config.max_seq + 2)),
            "blocks": Out(range(self._grp + 1)),
            "overflow": Out(1),
            "packed": Out(1),
            "r_addr": In(range(config.max_seq)),
            "r_start": Out(range(config.max_seq + 1)),
            "r_end": Out(range(config.max_seq + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N, GRP, CWH = c.array_cols, self._grp, c.hidden // c.array_cols
        BB = c.bus_width // 8
        m.submodules.segments = seg = SegmentTable(max_seq=c.max_seq,
                                                   max_segments=c.max_segments)
        m.d.comb += [seg.r_addr.eq(self.r_addr), self.r_start.eq(seg.r_start),
                     self.r_end.eq(seg.r_end), self.packed.eq(seg.table)]
        # the pass starts from a register of ``start`` (its own): the run controller's start
        # decode ran on into the resets of the gatherer's and the segment table's registers
        # across the chip (the ULX3S's worst path at 125 MHz, 9.13 ns)
        start = Signal()
        m.d.sync += start.eq(self.ctl.start)
        # gatherer: position g_pos = g_grp * N + g_bank, channel g_chunk * N + g_elem
        g_valid = Signal()
        g_byte = Signal(8)
        g_elem = Signal(range(N))
        g_chunk = Signal(range(CWH))
        g_bank = Signal(range(N))
        g_grp = Signal(range(GRP + 1))
        g_pos = Signal(range(c.max_seq + 2))
        g_word = Signal(8 * N)
        g_full = Cat(*(Mux(g_elem == j, g_byte, g_word[8 * j:8 * j + 8]) for j in range(N)))
        row_end = Signal()
        m.d.comb += [row_end.eq(g_valid & (g_elem == N - 1) & (g_chunk == CWH - 1)),
                     self.length.eq(g_pos), self.blocks.eq(g_grp + (g_bank != 0))]
        with m.If(start):
            m.d.sync += [g_elem.eq(0), g_chunk.eq(0), g_bank.eq(0), g_grp.eq(0), g_pos.eq(0)]
        with m.Elif(g_valid):
            m.d.sync += [g_word.eq(g_full), g_elem.eq(g_elem + 1)]
            with m.If(g_elem == N - 1):
                m.d.sync += [g_elem.eq(0), g_chunk.eq(g_chunk + 1)]
                with m.If(g_chunk == CWH - 1):
                    m.d.sync += [g_chunk.eq(0), g_pos.eq(g_pos + 1), g_bank.eq(g_bank + 1)]
                    with m.If(g_bank == N - 1):
                        m.d.sync += [g_bank.eq(0), g_grp.eq(g_grp + 1)]
                for b, port in enumerate(self.x):
                    m.d.comb += [port.addr.eq(times(g_grp, CWH) + g_chunk), port.data.eq(g_full)]
                    with m.If((g_bank == b) & (g_pos < c.max_seq)):
                        m.d.comb += port.en.eq(1)
        # beats -> bytes (row bytes to the gatherer, every byte to the segment table)
        ib = Signal(c.bus_width)
        ib_valid = Signal()
        ib_last = Signal()
        ib_user = Signal()
        ib_idx = Signal(range(BB))
        in_active = Signal()
        in_done = Signal()
        # a packed packet's data must fill exactly the beats of the table's rows: the bytes of
        # the data beats so far against the rows' bytes (checked at the end of each data beat)
        d_bytes = Signal(range(c.max_seq * c.hidden + 2 * BB))
        d_next = d_bytes + BB
        rows_bytes = Signal(range(c.max_seq * c.hidden + 1))   # the table's rows, in bytes
        m.d.sync += rows_bytes.eq(times(seg.total, c.hidden))  # (set with the table, used later)
        # d_enough = (d_next >= rows_bytes) a cycle late, from a register: its adder and compare
        # ran on into the run controller's failure flag (the ULX3S's worst path at 125 MHz).
        # Exact where it is read, at a data beat's last byte: d_bytes changes only at such a
        # byte and the next one comes two cycles later at the earliest (a beat is taken the
        # cycle after the last byte of the one before, its first byte is the cycle after
        # that), and rows_bytes is final a cycle after the table's last byte, which precedes
        # the first data beat's last byte by two cycles at least
        d_enough = Signal()
        m.d.sync += d_enough.eq(~less(d_next, rows_bytes))
        # the byte of this cycle, ib.word_select(ib_idx, 8), from a register loaded one byte
        # ahead (a beat's byte 0 as the beat is taken, else the byte after the current one): the
        # segment table's checks and the gatherer start at a flip-flop, not at a byte select
        i_byte = Signal(8)
        seg_error_q = Signal()
        m.d.sync += seg_error_q.eq(seg.error)
        m.d.comb += [self.act.ready.eq(in_active & ~ib_valid),
                     self.ctl.done.eq(in_done & ~start & (~seg.table | seg.bounds_ready)),
                     seg.start.eq(start),
                     seg.i_byte.payload.data.eq(i_byte),
                     seg.i_byte.payload.user.eq(ib_user),
                     seg.i_byte.payload.end.eq(ib_idx == BB - 1),
                     seg.i_byte.payload.last.eq(ib_last)]
        with m.If(seg.error & ~seg_error_q):
            m.d.comb += self.overflow.eq(1)            # a malformed table (one pulse)
        with m.If(self.act.valid & self.act.ready):
            m.d.sync += [ib.eq(self.act.payload.data), ib_valid.eq(1),
                         ib_last.eq(self.act.payload.last), ib_user.eq(self.act.payload.user),
                         ib_idx.eq(0), i_byte.eq(self.act.payload.data[:8])]
        with m.If(ib_valid & in_active):
            m.d.comb += [g_valid.eq(~ib_user), g_byte.eq(i_byte), seg.i_byte.valid.eq(1)]
            m.d.sync += [ib_idx.eq(ib_idx + 1),
                         i_byte.eq(Cat(ib[8:], Const(0, 8)).word_select(ib_idx, 8))]
            with m.If(row_end & (g_pos == c.max_seq)):
                m.d.comb += self.overflow.eq(1)
            with m.If(ib_idx == BB - 1):
                m.d.sync += ib_valid.eq(0)
                with m.If(~ib_user):
                    m.d.sync += d_bytes.eq(d_next)
                    # tlast early (rows missing) or late (a beat beyond the rows)
                    with m.If(seg.done & (ib_last != d_enough)):
                        m.d.comb += self.overflow.eq(1)
                with m.If(ib_last):
                    m.d.sync += [in_active.eq(0), in_done.eq(1)]
        with m.If(start):
            m.d.sync += [in_active.eq(1), in_done.eq(0), d_bytes.eq(0)]
        return m


class ActivationOutput(wiring.Component):
    """The output pass (after the last layer): X -> chunks -> the output packet.

    The words of ``N`` channels are read from X one per cycle (a read, then its word in a
    register, reads ahead while the register is taken), each word leaves in chunks of
    ``G = gcd(N, bus_width / 8)`` bytes, one chunk per cycle, and the packer fills a beat with
    ``bus_width / 8 / G`` chunks and sends it (``last`` on the sequence's final chunk) through
    a register slice. With ``N`` bytes per beat (the presets) that is one word, one beat per
    cycle.

    Members
    -------
    out : ``Out(bus_signature(bus_width))``
        The output packet.
    ctl : ``In(task())``
        ``start`` starts the pass; ``done`` is high while no pass runs and the last beat has
        been delivered.
    seq_len : ``In(range(max_seq + 1))``
        Positions to send.
    x : ``Out(row_read(...))``
        A read port of X (its read data held while it is not enabled).
    x_owned : ``Out(1)``
        A flip-flop, high from ``start`` to the pass's last read of X: the pass reads X only
        while it is high (the sequencer starts the pass after the last layer's jobs and
        passes, so nothing else reads X then), and X's read port is the pass's
        (:class:`~bertcore.core.buffers.Buffers`' ``out_owns``).
    """

    def __init__(self, config):
        self._c = config
        n = config.array_cols
        self._grp = -(-config.max_seq // n)
        super().__init__({
            "out": Out(bus_signature(config.bus_width)),
            "ctl": In(task()),
            "seq_len": In(range(config.max_seq + 1)),
            "x": Out(row_read(self._grp * config.hidden // n, unsigned(8 * n), n)),
            "x_owned": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N, GRP, CWH = c.array_cols, self._grp, c.hidden // c.array_cols
        BUS, BB = c.bus_width, c.bus_width // 8
        G = math.gcd(N, BB)                 # bytes per chunk
        CPW, CPB = N // G, BB // G          # chunks per word, per beat
        # packer: chunks -> beats -> a register slice -> ``out``: the slice's ``ready`` is a
        # flip-flop, so the decision to read X (which takes the packer's ``ready``) is of
        # registers alone. The run controller's multiplexing of ``out`` ran on into X's port
        # arbiter and LUT-RAM read otherwise (an ECP5 critical path at 100 MHz).
        m.submodules.o_slice = o_slice = RegisterSlice(self.out.payload.shape())
        wiring.connect(m, o_slice.o_stream, wiring.flipped(self.out))
        out = o_slice.i_stream
        o_acc = Signal(BUS)
        o_idx = Signal(range(max(CPB, 2)))     # (no zero-width signals in the Verilog)
        o_in_valid = Signal()
        o_in_chunk = Signal(8 * G)
        o_in_final = Signal()
        o_ready = Signal()
        m.d.comb += o_ready.eq(~out.valid | out.ready)
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)
        o_full = Cat(*(Mux(o_idx == j, o_in_chunk, o_acc[8 * G * j:8 * G * (j + 1)])
                       for j in range(CPB)))
        with m.If(o_in_valid & o_ready):
            m.d.sync += [o_acc.eq(o_full), o_idx.eq(o_idx + 1)]
            with m.If((o_idx == CPB - 1) | o_in_final):
                m.d.sync += [out.valid.eq(1), out.payload.data.eq(o_full),
                             out.payload.last.eq(o_in_final), o_acc.eq(0), o_idx.eq(0)]
        # reads: word (u_blk, u_bank, u_c) of X; its data arrives the next cycle (r_*)
        u_active = Signal()
        u_blk = Signal(range(GRP + 1))
        u_bank = Signal(range(N))
        u_c = Signal(range(CWH))
        # u_last: the row u_blk * N + u_bank is the last (seq_len - 1), a register set as the
        # row steps (the compare, an adder behind the row counters, ran on into u_active's
        # enable: 8.06 and 8.10 ns in two ULX3S placements at 125 MHz)
        u_last = Signal()
        u_final = u_last & (u_c == CWH - 1)
        r_valid = Signal()
        r_bank = Signal(range(N))
        r_final = Signal()
        # the word register: chunk w_l of w_word goes to the packer
        w_valid = Signal()
        w_word = Signal(8 * N)
        w_final = Signal()
        w_l = Signal(range(max(CPW, 2)))
        w_end = w_l == CPW - 1
        w_last = w_valid & o_ready & w_end      # its last chunk is taken
        w_take = r_valid & (~w_valid | w_last)
        read = u_active & (~r_valid | w_take)
        m.d.comb += [self.x.addr.eq(times(u_blk, CWH) + u_c), self.x.en.eq(read),
                     self.x_owned.eq(u_active),
                     # done: nothing left to read, in the word register, in the packer's beat
                     # register (the final chunk sends its beat) or in the slice
                     self.ctl.done.eq(~u_active & ~r_valid & ~w_valid & ~out.valid
                                      & ~o_slice.o_stream.valid)]
        with m.If(read):
            m.d.sync += [r_valid.eq(1), r_bank.eq(u_bank), r_final.eq(u_final),
                         u_c.eq(u_c + 1)]
            with m.If(u_c == CWH - 1):
                m.d.sync += [u_c.eq(0), u_bank.eq(u_bank + 1),
                             u_last.eq(u_blk * N + u_bank + 2 == self.seq_len)]
                with m.If(u_bank == N - 1):
                    m.d.sync += [u_bank.eq(0), u_blk.eq(u_blk + 1)]
            with m.If(u_final):
                m.d.sync += u_active.eq(0)
        with m.Elif(w_take):
            m.d.sync += r_valid.eq(0)
        with m.If(w_take):
            m.d.sync += [w_valid.eq(1), w_final.eq(r_final), w_l.eq(0),
                         w_word.eq(pick([self.x.data[b] for b in range(N)], r_bank, 8 * N))]
        with m.Elif(w_last):
            m.d.sync += w_valid.eq(0)
        if CPW > 1:
            with m.If(w_valid & o_ready):
                m.d.sync += w_l.eq(w_l + 1)
        # (unconditional assignments: a signal driven only inside an ``If`` becomes an
        # ``always @*`` of its own in the Verilog, which a 4-state simulator leaves X until
        # its condition first changes, and an X valid corrupts the packer's registers)
        m.d.comb += [o_in_valid.eq(w_valid),
                     o_in_chunk.eq(w_word if CPW == 1 else w_word.word_select(w_l, 8 * G)),
                     o_in_final.eq(w_valid & w_final & w_end)]
        with m.If(self.ctl.start):
            m.d.sync += [u_active.eq(1), u_blk.eq(0), u_bank.eq(0), u_c.eq(0), r_valid.eq(0),
                         w_valid.eq(0), u_last.eq(self.seq_len == 1)]
        return m
