"""The segment table of a packed activation packet, in hardware: :class:`SegmentTable`.

A packed packet (``docs/interface.md``, "Packed runs") starts with table beats
(``tuser = 1``): 16-bit lanes, the segment count ``S`` then ``S`` lengths, unused lanes zero,
as many beats as ``ceil(16 * (S + 1) / bus_width)``; the rows follow (``tuser = 0``). The
encoder's input path takes a packet byte by byte (one byte per cycle); this unit watches the
same bytes, parses and checks the table (the checks of
:func:`bertcore.core.image.parse_segment_table`, in stream order) and then writes, for each
row ``p`` of the run, the bounds ``[start, end)`` of its segment into a memory the attention
schedule reads (the keys a query of row ``p`` attends to).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from bertcore.rtl.common import less

from .image import SEGMENT_LANE_BITS

__all__ = ["SegmentTable"]


class SegmentTable(wiring.Component):
    """Parser and checker of a packet's segment table, and the memory of row bounds.

    Parameters
    ----------
    max_seq : int
        Rows of a run (``CoreConfig.max_seq``).
    max_segments : int
        Most segments of a run (``CoreConfig.max_segments``); at most ``max_seq`` are used.

    Members
    -------
    start : ``In(1)``
        Forget the previous packet (one cycle, before its first byte).
    i_byte : ``In(stream.Signature(byte_layout))``
        Every byte of the packet in order: ``data``, the beat's ``user`` (``tuser``), ``end``
        (the last byte of its beat) and ``last`` (the beat's ``tlast``). ``ready`` is always
        high: the unit takes one byte per cycle and never holds one back.
    table : ``Out(1)``
        The packet began with a table beat (a packed run).
    done : ``Out(1)``
        The table is complete and well-formed (its last beat seen, no error).
    total : ``Out(range(max_seq + 1))``
        With ``done``: the rows the lengths add up to.
    bounds_ready : ``Out(1)``
        With ``done``: the bounds of all ``total`` rows are in the memory.
    error : ``Out(1)``
        A protocol error in the table (sticky until ``start``; the unit ignores the rest of
        the packet): a count outside ``1..min(max_segments, max_seq)``, a zero length, lengths
        beyond ``max_seq`` rows, a non-zero unused lane, a row byte (``tuser = 0``) before the
        table's last lane, a table beat after the table or after the rows began, ``tlast`` on a
        table beat.
    r_addr : ``In(range(max_seq))``, r_start, r_end : ``Out(range(max_seq + 1))``
        Bounds ``[r_start, r_end)`` of the segment of row ``r_addr``, one cycle after the
        address (a memory read port).

    Raises
    ------
    TypeError, ValueError
        If a parameter is not a positive integer.
    """

    def __init__(self, *, max_seq, max_segments):
        for name, value in (("max_seq", max_seq), ("max_segments", max_segments)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self._max_seq = max_seq
        self._limit = min(max_segments, max_seq)
        byte_layout = data.StructLayout({"data": 8, "user": 1, "end": 1, "last": 1})
        pos = range(max_seq + 1)
        super().__init__({
            "start": In(1),
            "i_byte": In(stream.Signature(byte_layout)),
            "table": Out(1),
            "done": Out(1),
            "total": Out(pos),
            "bounds_ready": Out(1),
            "error": Out(1),
            "r_addr": In(range(max_seq)),
            "r_start": Out(pos),
            "r_end": Out(pos),
        })

    @property
    def max_seq(self):
        return self._max_seq

    @property
    def limit(self):
        """Most segments a table may announce: ``min(max_segments, max_seq)``."""
        return self._limit

    def elaborate(self, platform):
        m = Module()
        pb = bits_for(self._max_seq)
        limit = self._limit
        lane_bytes = SEGMENT_LANE_BITS // 8

        # row bounds: word p = Cat(start, end) of the segment of row p
        m.submodules.bounds = mem = Memory(shape=2 * pb, depth=self._max_seq, init=[])
        w_port, r_port = mem.write_port(), mem.read_port()
        m.d.comb += [self.i_byte.ready.eq(1), r_port.addr.eq(self.r_addr), self.r_start.eq(r_port.data[:pb]),
                     self.r_end.eq(r_port.data[pb:])]

        # -- parser: bytes -> 16-bit lanes -> checks --------------------------------------
        seen = Signal()                        # a byte of this packet has been seen
        rows = Signal()                        # a row byte has been seen
        lanes_done = Signal()                  # lane S is complete (the rest of the beat: 0)
        lane_lo = Signal(8)
        lane_byte = Signal(range(lane_bytes))
        lane_idx = Signal(range(limit + 2))    # 0: the count, s + 1: length of segment s
        count = Signal(range(limit + 1))
        ends = [Signal(pb, name=f"end{s}") for s in range(limit)]
        b = self.i_byte.payload
        lane = Cat(lane_lo, b.data)            # complete on the lane's second byte
        # (the checks split the lane at pb bits: a lane with a bit set above them exceeds
        # max_seq (< 2**pb) by itself, so only a pb-bit sum and compare remain, not a 16-bit
        # adder and comparator chain after the byte)
        # The sum total + lane[:pb] and the checks are begun with the lane's first byte, into
        # registers (total changes only with a lane's second byte, so it is final by the next
        # lane's first): `lo_sum` = total + the first byte's bits below pb, `room` = max_seq -
        # lo_sum, and the first byte's share of each check. The second byte's bits below pb
        # (`hi`, at 2**8 and up) then take compares of a few bits with registers and
        # constants: the sum exceeds max_seq iff room < 0 or hi > room // 2**8 (hi * 2**8 is
        # a multiple of 2**8); the count exceeds the limit iff hi > limit // 2**8, or equal
        # and the first byte > limit % 2**8. The sum and compares after the second byte ran
        # on through the checks into `error` (7.7-8.5 ns on the ULX3S at 125 MHz).
        lo_bits = min(pb, 8)
        hi = b.data[:max(pb - 8, 0)]
        lo_sum = Signal(range(self._max_seq + 2 ** lo_bits))
        room = Signal(signed(pb + 2))          # max_seq - lo_sum
        lo_zero = Signal()
        lo_big = Signal()                      # the first byte has a bit at or above pb
        lo_over = Signal()                     # the first byte > limit % 2**8
        lane_zero = lo_zero & (b.data == 0)
        lane_big = lo_big | b.data[max(pb - 8, 0):].any()
        sum_next = lo_sum + (hi << 8)
        sum_over = room[-1]
        count_over = lo_over
        if len(hi):
            sum_over = sum_over | less(room[8:-1], hi)
            count_over = less(limit >> 8, hi) | ((hi == limit >> 8) & lo_over)
        fail = Signal()
        # the table's last beat seen (`done` unless an error came with it or before or after
        # it: the failing checks stay out of this register's enable and reset, 8.2-8.7 ns on
        # the ULX3S at 125 MHz)
        ended = Signal()
        m.d.comb += self.done.eq(ended & ~self.error)
        with m.If(self.start):
            m.d.sync += [seen.eq(0), rows.eq(0), lanes_done.eq(0), lane_byte.eq(0),
                         lane_idx.eq(0), count.eq(0), self.total.eq(0), self.table.eq(0),
                         ended.eq(0), self.error.eq(0)]
        with m.Elif(self.i_byte.valid & ~self.error):
            m.d.sync += seen.eq(1)
            with m.If(~b.user):
                m.d.sync += rows.eq(1)
                # a row byte ends a table only once its lanes are complete
                with m.If(self.table & ~ended):
                    m.d.comb += fail.eq(1)
            with m.Elif((seen & ~self.table) | rows | ended | b.last):
                m.d.comb += fail.eq(1)                 # table beat out of place, or tlast on it
            with m.Else():
                m.d.sync += self.table.eq(1)
                with m.If(lanes_done):
                    with m.If(b.data != 0):
                        m.d.comb += fail.eq(1)
                with m.Elif(lane_byte == 0):
                    m.d.sync += [lane_lo.eq(b.data), lane_byte.eq(1),
                                 lo_sum.eq(self.total + b.data[:lo_bits]),
                                 room.eq(self._max_seq - self.total - b.data[:lo_bits]),
                                 lo_zero.eq(b.data == 0), lo_big.eq(b.data[lo_bits:].any()),
                                 lo_over.eq(less(limit & 0xFF, b.data[:lo_bits]))]
                with m.Else():
                    m.d.sync += [lane_byte.eq(0), lane_idx.eq(lane_idx + 1)]
                    with m.If(lane_idx == 0):
                        with m.If(lane_zero | lane_big | count_over):
                            m.d.comb += fail.eq(1)
                        m.d.sync += count.eq(lane)
                    with m.Elif(lane_zero | lane_big | sum_over):
                        m.d.comb += fail.eq(1)
                    with m.Else():
                        m.d.sync += self.total.eq(sum_next)
                        with m.If(lane_idx == count):
                            m.d.sync += lanes_done.eq(1)
                    # segment s's end whether or not the lane passes its checks (a failed
                    # table is never written out): the sum and compare of the checks stay
                    # out of the ends' enables (the ULX3S's worst paths at 125 MHz, 8.7 ns)
                    for s in range(limit):
                        with m.If(lane_idx == s + 1):
                            m.d.sync += ends[s].eq(sum_next)
                with m.If(b.end):
                    # the table ends with the beat of its last lane (a failing one sets error,
                    # which masks done)
                    lane_last = (lane_byte == 1) & (lane_idx != 0) & (lane_idx == count)
                    with m.If(lanes_done | lane_last):
                        m.d.sync += ended.eq(1)
        with m.If(fail):
            m.d.sync += self.error.eq(1)

        # -- writer: the bounds of each row, once the table is done -----------------------
        # One row per cycle, from the cycle after `done` (the table's last end is written with
        # `done`). The end of the row's segment is a register, `end_now`, loaded with the
        # next segment's end when a row ends its segment: the max_segments-way multiplexer of
        # the ends runs into that register only, not into the compare that moves the writer
        # to the next segment (the multiplexer, the row's adder and the compare into the
        # segment's enables were among the ULX3S's worst paths at 125 MHz, 8.0-8.3 ns).
        w_pos = Signal(range(self._max_seq + 1))
        w_pos1 = Signal(range(self._max_seq + 2), init=1)   # w_pos + 1
        w_next = Signal(range(limit + 1), init=1)           # the segment after the row's
        w_start = Signal(pb)
        end_now = Signal(pb)                                # the end of the row's segment
        go = Signal()                                       # done a cycle ago
        ends_next = Signal(pb)
        m.d.comb += ends_next.eq(0)
        for s in range(1, limit):
            with m.If(w_next == s):
                m.d.comb += ends_next.eq(ends[s])
        writing = go & self.done & ~self.start & (w_pos != self.total)
        hit = w_pos1 == end_now
        m.d.comb += [w_port.addr.eq(w_pos), w_port.data.eq(Cat(w_start, end_now)),
                     w_port.en.eq(writing),
                     self.bounds_ready.eq(go & self.done & (w_pos == self.total))]
        with m.If(self.start):
            m.d.sync += [w_pos.eq(0), w_pos1.eq(1), w_next.eq(1), w_start.eq(0), go.eq(0)]
        with m.Else():
            m.d.sync += go.eq(self.done)
            with m.If(writing):
                m.d.sync += [w_pos.eq(w_pos + 1), w_pos1.eq(w_pos1 + 1)]
                with m.If(hit):
                    m.d.sync += [w_next.eq(w_next + 1), w_start.eq(end_now)]
        with m.If(~go):
            m.d.sync += end_now.eq(ends[0])
        with m.Elif(writing & hit):
            m.d.sync += end_now.eq(ends_next)
        return m
