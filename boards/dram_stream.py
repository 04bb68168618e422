"""Streams in and out of DRAM through a LiteDRAM native user port.

* :class:`DRAMReader`: reads ``count`` words from ``base`` on and streams them as an AXI4-Stream
  (the core's ``s_axis_param`` payload: ``data`` + ``last`` on the final word), through a prefetch
  FIFO.
* :class:`DRAMWriter`: writes the words of a stream to consecutive addresses from ``base`` on.

A stream word may be wider than the port (the core's 32-bit bus on the ULX3S's 16-bit SDRAM):
the reader and writer then split it into ``data_width // port_width`` port words themselves,
lowest bits at the lowest address, instead of asking LiteDRAM for a port of the stream's width.
LiteDRAM's down-converter (``LiteDRAMNativePortDownConverter``) spends one extra cycle per user
command (an IDLE state between its conversions): 3 cycles per 32-bit word on a 16-bit SDRAM
(1.33 bytes per cycle) where the controller can take a command every cycle (measured here:
see :class:`DRAMReader`).

They are the Amaranth counterparts of LiteDRAM's ``LiteDRAMDMAReader`` / ``LiteDRAMDMAWriter``
(``litedram/frontend/dma.py``), which the standalone generator does not offer as a user port
type (it has native, Wishbone, AXI and a DRAM-backed FIFO): same credit scheme, so that the
controller's read data, which LiteDRAM does not hold back, always finds room.

The native port (:func:`native_port_signature`): ``cmd`` (``addr`` in words of the port's width,
``we``), ``wdata`` (``data``, byte enables ``we``) in the order of the write commands, ``rdata``
in the order of the read commands.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

__all__ = ["native_port_signature", "DRAMReader", "DRAMWriter"]


def native_port_signature(address_width, data_width, *, read=True, write=True):
    """A LiteDRAM native user port, from its user's side (``read=False``: without ``rdata``,
    ``write=False``: without ``wdata``, for a user that only writes or only reads)."""
    members = {"cmd": Out(stream.Signature(data.StructLayout({"addr": address_width,
                                                              "we": 1})))}
    if write:
        members["wdata"] = Out(stream.Signature(data.StructLayout({"data": data_width,
                                                                    "we": data_width // 8})))
    if read:
        members["rdata"] = In(stream.Signature(data_width))
    return wiring.Signature(members)


def _set_geometry(unit, address_width, data_width, port_width, depth):
    """Check the geometry of a DRAM reader or writer, keep it on ``unit`` (``_ratio``,
    ``_address_width``, ``_data_width``, ``_port_width``, ``_depth``) and return the width of a
    stream-word address."""
    port_width = data_width if port_width is None else port_width
    unit._ratio = _check_params(address_width, data_width, port_width, depth)
    unit._address_width, unit._data_width, unit._depth = address_width, data_width, depth
    unit._port_width = port_width
    return address_width - exact_log2(unit._ratio)


def _check_params(address_width, data_width, port_width, depth):
    if not isinstance(address_width, int) or address_width < 1:
        raise TypeError(f"address_width must be a positive integer, not {address_width!r}")
    if not isinstance(port_width, int) or port_width < 8 or port_width % 8:
        raise TypeError(f"port_width must be a positive multiple of 8, not {port_width!r}")
    ratio = data_width // port_width if isinstance(data_width, int) else 0
    if (not isinstance(data_width, int) or data_width % port_width or ratio & (ratio - 1)
            or ratio < 1):
        raise TypeError(f"data_width must be a power-of-two multiple of port_width "
                        f"({port_width}), not {data_width!r}")
    if (1 << address_width) < ratio:
        raise ValueError(f"address_width {address_width} is too small for {ratio} port words "
                         "per stream word")
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an integer of at least 2, not {depth!r}")
    return ratio


class DRAMReader(wiring.Component):
    """Stream ``count`` words from DRAM address ``base`` on, with prefetch.

    Commands go out as long as the data they will return has room in the prefetch FIFO
    (``depth`` port words reserved: in flight in the controller or waiting in the FIFO), so the
    controller keeps reading ahead while the consumer stalls, and a refresh or a row change
    (a few cycles without data) is covered by the words already fetched.

    Parameters
    ----------
    address_width : int
        Of the native port (addresses in port words).
    data_width : int
        Of the stream: a power-of-two multiple of ``port_width``.
    port_width : int
        Of the native port; default ``data_width``.
    depth : int
        Prefetch depth in port words (at least 2): the FIFO holds ``depth // ratio`` stream
        words.

    Members
    -------
    start : ``In(1)``
        Pulse: latch ``base`` and ``count`` and begin (ignored while ``busy``).
    base : ``In(address_width - log2(ratio))``
        In stream words.
    count : ``In(address_width - log2(ratio) + 1)``
        Stream words to read (0: nothing happens).
    busy : ``Out(1)``
        From ``start`` until the last word has left on ``m_axis``, or a cancel has drained.
    cancel : ``In(1)``
        Pulse: stop; nothing more leaves on ``m_axis``; ``busy`` falls once the words of the
        commands already sent have come back (and been dropped).
    port : ``Out(native_port_signature(address_width, port_width, write=False))``
    m_axis : ``Out(stream.Signature({"data": data_width, "last": 1}))``
        The words; ``last`` on the final one.

    Throughput: one port word per cycle when the DRAM delivers it; a stream word needs ``ratio``
    of them. On the ULX3S's 16-bit SDR chip (32-bit stream words, LiteDRAM at 1:1) see
    ``docs/boards.md`` for the measured bytes per cycle.
    """

    def __init__(self, address_width, data_width, *, port_width=None, depth=64):
        beat_width = _set_geometry(self, address_width, data_width, port_width, depth)
        super().__init__({
            "start": In(1), "base": In(beat_width), "count": In(beat_width + 1),
            "busy": Out(1), "cancel": In(1),
            "port": Out(native_port_signature(address_width, port_width, write=False)),
            "m_axis": Out(stream.Signature(data.StructLayout({"data": data_width,
                                                              "last": 1}))),
        })

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        ratio, pw = self._ratio, self._port_width
        # the FIFO holds whole stream words, so m_axis can take one per cycle after a stall
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self._data_width,
                                                    depth=max(2, self._depth // ratio))
        port = self.port
        addr = Signal(self._address_width)
        to_issue = Signal(self._address_width + 1)   # port commands still to send
        to_send = Signal(len(self.count))            # stream words still to leave
        # port commands sent whose data has not left on m_axis: at most the FIFO's capacity
        reserved = Signal(range(ratio * fifo.depth + 1))
        # cancelled: the words of commands already sent are taken from the FIFO and dropped
        drop = Signal()
        cmd_fire = port.cmd.valid & port.cmd.ready
        pop = fifo.r_rdy & fifo.r_en
        m.d.comb += [
            port.cmd.payload.addr.eq(addr),
            port.cmd.payload.we.eq(0),
            port.cmd.valid.eq((to_issue != 0) & (reserved != ratio * fifo.depth)),
            self.m_axis.payload.data.eq(fifo.r_data),
            self.m_axis.payload.last.eq(to_send == 1),
            self.m_axis.valid.eq(fifo.r_rdy & ~drop),
            fifo.r_en.eq(self.m_axis.ready | drop),
            self.busy.eq(to_send != 0),
        ]
        m.d.sync += reserved.eq(reserved + cmd_fire - Mux(pop, ratio, 0))
        with m.If(cmd_fire):
            m.d.sync += [addr.eq(addr + 1), to_issue.eq(to_issue - 1)]
        # the credits guarantee room: LiteDRAM's read data path does not wait
        if ratio == 1:
            m.d.comb += [port.rdata.ready.eq(fifo.w_rdy), fifo.w_data.eq(port.rdata.payload),
                         fifo.w_en.eq(port.rdata.valid)]
        else:
            # port words are shifted in from the top: after ratio of them the first is lowest;
            # the whole word goes into the FIFO from this register a cycle later (room for it
            # is reserved by the credits)
            part = Signal(range(ratio))
            packed = Signal(self._data_width)
            push = Signal()
            m.d.comb += [port.rdata.ready.eq(1), fifo.w_data.eq(packed), fifo.w_en.eq(push)]
            m.d.sync += push.eq(port.rdata.valid & (part == ratio - 1))
            with m.If(port.rdata.valid):
                m.d.sync += [packed.eq(Cat(packed[pw:], port.rdata.payload)),
                             part.eq(Mux(part == ratio - 1, 0, part + 1))]
            with m.If(self.start & ~self.busy):
                m.d.sync += part.eq(0)
        with m.If(pop):
            m.d.sync += to_send.eq(to_send - 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [addr.eq(self.base * ratio), to_issue.eq(self.count * ratio),
                         to_send.eq(self.count)]
        # cancel: only the commands that complete the stream word under way still go out
        # (``to_issue`` counts down from a multiple of ``ratio``), then everything sent is
        # drained
        with m.If(self.cancel & self.busy):
            m.d.sync += drop.eq(1)
            with m.If(cmd_fire):
                m.d.sync += to_issue.eq((to_issue - 1)[:exact_log2(ratio)] if ratio > 1 else 0)
            with m.Else():
                m.d.sync += to_issue.eq(to_issue[:exact_log2(ratio)] if ratio > 1 else 0)
        with m.If(drop & (to_issue == 0) & (reserved == 0)):
            m.d.sync += [drop.eq(0), to_send.eq(0)]
        return m


class DRAMWriter(wiring.Component):
    """Write the words of ``s_axis`` to consecutive DRAM addresses from ``base`` on.

    A port word is taken when its write command is accepted; its data waits in a FIFO until the
    controller asks for it (``wdata``), as in LiteDRAM's DMA writer. A stream word is taken with
    its last port word.

    Parameters
    ----------
    address_width, data_width, port_width
        As for :class:`DRAMReader`.
    depth : int
        Write data FIFO depth in port words.

    Members
    -------
    start : ``In(1)``
        Pulse: the next word goes to ``base`` (and ``written``, ``overflow`` clear).
    base : ``In(address_width - log2(ratio))``
        In stream words.
    s_axis : ``In(stream.Signature(data_width))``
    written : ``Out(address_width - log2(ratio) + 1)``
        Stream words taken since ``start``.
    idle : ``Out(1)``
        No write data waiting for the controller (every taken word is in the controller).
    overflow : ``Out(1)``
        A word arrived past the end of the DRAM: it was dropped (and all after it).
    port : ``Out(native_port_signature(address_width, port_width, read=False))``
    """

    def __init__(self, address_width, data_width, *, port_width=None, depth=16):
        beat_width = _set_geometry(self, address_width, data_width, port_width, depth)
        super().__init__({
            "start": In(1), "base": In(beat_width), "s_axis": In(stream.Signature(data_width)),
            "written": Out(beat_width + 1), "idle": Out(1), "overflow": Out(1),
            "port": Out(native_port_signature(address_width, port_width, read=False)),
        })

    def elaborate(self, platform):
        m = Module()
        ratio, pw = self._ratio, self._port_width
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=pw, depth=self._depth)
        port = self.port
        addr = Signal(self._address_width + 1)        # the top bit: past the end
        full = addr[-1]
        cmd_fire = port.cmd.valid & port.cmd.ready
        if ratio == 1:
            last_part = 1
            m.d.comb += fifo.w_data.eq(self.s_axis.payload)
        else:
            part = Signal(range(ratio))               # the port word of s_axis being written
            last_part = part == ratio - 1
            m.d.comb += fifo.w_data.eq(self.s_axis.payload.word_select(part, pw))
            with m.If(cmd_fire):
                m.d.sync += part.eq(Mux(last_part, 0, part + 1))
            with m.If(self.start):
                m.d.sync += part.eq(0)
        m.d.comb += [
            port.cmd.payload.addr.eq(addr[:-1]),
            port.cmd.payload.we.eq(1),
            port.cmd.valid.eq(self.s_axis.valid & fifo.w_rdy & ~full),
            fifo.w_en.eq(cmd_fire),
            self.s_axis.ready.eq((cmd_fire & last_part) | full),
            port.wdata.valid.eq(fifo.r_rdy),
            port.wdata.payload.data.eq(fifo.r_data),
            port.wdata.payload.we.eq(-1),
            fifo.r_en.eq(port.wdata.ready),
            self.idle.eq(~fifo.r_rdy),
        ]
        with m.If(self.s_axis.valid & full):
            m.d.sync += self.overflow.eq(1)
        with m.If(cmd_fire):
            m.d.sync += addr.eq(addr + 1)
            with m.If(last_part):
                m.d.sync += self.written.eq(self.written + 1)
        with m.If(self.start):
            m.d.sync += [addr.eq(self.base * ratio), self.written.eq(0), self.overflow.eq(0)]
        return m
