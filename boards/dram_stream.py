"""Streams in and out of DRAM through a LiteDRAM native user port.

* :class:`DRAMReader`: reads ``count`` words from ``base`` on and streams them as an AXI4-Stream
  (the core's ``s_axis_param`` payload: ``data`` + ``last`` on the final word), through a prefetch
  FIFO.
* :class:`DRAMWriter`: writes the words of a stream to consecutive addresses from ``base`` on.

They are the Amaranth counterparts of LiteDRAM's ``LiteDRAMDMAReader`` / ``LiteDRAMDMAWriter``
(``litedram/frontend/dma.py``), which the standalone generator does not offer as a user port
type (it has native, Wishbone, AXI and a DRAM-backed FIFO): same credit scheme, so that the
controller's read data, which LiteDRAM does not hold back, always finds room.

The native port (:func:`native_port_signature`): ``cmd`` (``addr`` in words of the port's width,
``we``), ``wdata`` (``data``, byte enables ``we``) in the order of the write commands, ``rdata``
in the order of the read commands.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

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


def _check_params(address_width, data_width, depth):
    if not isinstance(address_width, int) or address_width < 1:
        raise TypeError(f"address_width must be a positive integer, not {address_width!r}")
    if not isinstance(data_width, int) or data_width < 8 or data_width % 8:
        raise TypeError(f"data_width must be a positive multiple of 8, not {data_width!r}")
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an integer of at least 2, not {depth!r}")


class DRAMReader(wiring.Component):
    """Stream ``count`` words from DRAM address ``base`` on, with prefetch.

    Commands go out as long as the words they will return have room in the prefetch FIFO
    (``depth`` words reserved: in flight in the controller or waiting in the FIFO), so the
    controller keeps reading ahead while the consumer stalls, and a refresh or a row change
    (a few tens of cycles without data) is covered by the words already fetched.

    Parameters
    ----------
    address_width, data_width : int
        Of the native port (addresses in words).
    depth : int
        Prefetch FIFO depth in words (at least 2).

    Members
    -------
    start : ``In(1)``
        Pulse: latch ``base`` and ``count`` and begin (ignored while ``busy``).
    base : ``In(address_width)``
    count : ``In(address_width + 1)``
        Words to read (0: nothing happens).
    busy : ``Out(1)``
        From ``start`` until the last word has left on ``m_axis``.
    port : ``Out(native_port_signature(..., write=False))``
    m_axis : ``Out(stream.Signature({"data": data_width, "last": 1}))``
        The words; ``last`` on the final one.

    Throughput: one word per cycle when the DRAM delivers it. On the ULX3S's 16-bit SDR chip
    through LiteDRAM's 32-bit port: one word every 3.0 cycles (1.33 bytes per cycle, refreshes
    and row changes included; ``tests/test_sdram.py``). Latency from ``start`` to the first word:
    16 cycles there.
    """

    def __init__(self, address_width, data_width, *, depth=64):
        _check_params(address_width, data_width, depth)
        self._address_width, self._data_width, self._depth = address_width, data_width, depth
        super().__init__({
            "start": In(1), "base": In(address_width), "count": In(address_width + 1),
            "busy": Out(1),
            "port": Out(native_port_signature(address_width, data_width, write=False)),
            "m_axis": Out(stream.Signature(data.StructLayout({"data": data_width,
                                                              "last": 1}))),
        })

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self._data_width, depth=self._depth)
        port = self.port
        addr = Signal(self._address_width)
        to_issue = Signal(self._address_width + 1)   # commands still to send
        to_send = Signal(self._address_width + 1)    # words still to leave on m_axis
        reserved = Signal(range(self._depth + 1))    # commands sent whose word is not out yet

        cmd_fire = port.cmd.valid & port.cmd.ready
        out_fire = self.m_axis.valid & self.m_axis.ready
        m.d.comb += [
            port.cmd.payload.addr.eq(addr),
            port.cmd.payload.we.eq(0),
            port.cmd.valid.eq((to_issue != 0) & (reserved != self._depth)),
            # the credits guarantee room: LiteDRAM's read data path does not wait
            fifo.w_data.eq(port.rdata.payload),
            fifo.w_en.eq(port.rdata.valid),
            port.rdata.ready.eq(fifo.w_rdy),
            self.m_axis.payload.data.eq(fifo.r_data),
            self.m_axis.payload.last.eq(to_send == 1),
            self.m_axis.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.m_axis.ready),
            self.busy.eq(to_send != 0),
        ]
        with m.If(cmd_fire & ~out_fire):
            m.d.sync += reserved.eq(reserved + 1)
        with m.Elif(out_fire & ~cmd_fire):
            m.d.sync += reserved.eq(reserved - 1)
        with m.If(cmd_fire):
            m.d.sync += [addr.eq(addr + 1), to_issue.eq(to_issue - 1)]
        with m.If(out_fire):
            m.d.sync += to_send.eq(to_send - 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [addr.eq(self.base), to_issue.eq(self.count), to_send.eq(self.count)]
        return m


class DRAMWriter(wiring.Component):
    """Write the words of ``s_axis`` to consecutive DRAM addresses from ``base`` on.

    A word is taken when its write command is accepted; its data waits in a FIFO until the
    controller asks for it (``wdata``), as in LiteDRAM's DMA writer.

    Parameters
    ----------
    address_width, data_width : int
        Of the native port.
    depth : int
        Write data FIFO depth.

    Members
    -------
    start : ``In(1)``
        Pulse: the next word goes to ``base`` (and ``written``, ``overflow`` clear).
    base : ``In(address_width)``
    s_axis : ``In(stream.Signature(data_width))``
    written : ``Out(address_width + 1)``
        Words taken since ``start``.
    idle : ``Out(1)``
        No write data waiting for the controller (every taken word is in the controller).
    overflow : ``Out(1)``
        A word arrived past the end of the DRAM: it was dropped (and all after it).
    port : ``Out(native_port_signature(..., read=False))``
    """

    def __init__(self, address_width, data_width, *, depth=16):
        _check_params(address_width, data_width, depth)
        self._address_width, self._data_width, self._depth = address_width, data_width, depth
        super().__init__({
            "start": In(1), "base": In(address_width), "s_axis": In(stream.Signature(data_width)),
            "written": Out(address_width + 1), "idle": Out(1), "overflow": Out(1),
            "port": Out(native_port_signature(address_width, data_width, read=False)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self._data_width, depth=self._depth)
        port = self.port
        addr = Signal(self._address_width + 1)        # the top bit: past the end
        full = addr[-1]
        m.d.comb += [
            port.cmd.payload.addr.eq(addr[:-1]),
            port.cmd.payload.we.eq(1),
            port.cmd.valid.eq(self.s_axis.valid & fifo.w_rdy & ~full),
            fifo.w_data.eq(self.s_axis.payload),
            fifo.w_en.eq(self.s_axis.valid & port.cmd.ready & ~full),
            self.s_axis.ready.eq((port.cmd.ready & fifo.w_rdy) | full),
            port.wdata.valid.eq(fifo.r_rdy),
            port.wdata.payload.data.eq(fifo.r_data),
            port.wdata.payload.we.eq(-1),
            fifo.r_en.eq(port.wdata.ready),
            self.idle.eq(~fifo.r_rdy),
        ]
        with m.If(self.s_axis.valid & full):
            m.d.sync += self.overflow.eq(1)
        with m.If(port.cmd.valid & port.cmd.ready):
            m.d.sync += [addr.eq(addr + 1), self.written.eq(self.written + 1)]
        with m.If(self.start):
            m.d.sync += [addr.eq(self.base), self.written.eq(0), self.overflow.eq(0)]
        return m
