"""The generated LiteDRAM core in an Amaranth design, and the DRAM subsystem of the board tops.

* :class:`LiteDRAMCore`: the generated Verilog module (:func:`boards.sdram.generate`) as an
  ``Instance``, with its native user port, its control bus and its status as members.
* :class:`DRAMSubsystem`: the core, its bring-up (:class:`~boards.sdram_init.SDRAMInit`), a
  :class:`~boards.dram_stream.DRAMWriter` and a :class:`~boards.dram_stream.DRAMReader` sharing
  the one native port (the writer's commands first).
* :func:`sdram_pads`: an amaranth-boards ``SDRAMResource`` (the ULX3S's ``sdram``) as the pads
  of the board variant, with the SDRAM clock pin.

The core runs in the domain it is given (``sync``): the DRAM controller and the user logic share
one clock, the configuration's :attr:`~boards.sdram.SDRAMConfig.clock`.
"""

from types import SimpleNamespace

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import data, io, stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from .dram_stream import DRAMReader, DRAMWriter, native_port_signature
from .sdram_init import SDRAMInit, wishbone_signature

__all__ = ["LiteDRAMCore", "DRAMSubsystem", "sdram_pads"]

_PORT = "user_port_native_0"


class LiteDRAMCore(wiring.Component):
    """A generated LiteDRAM core (``litedram_core``) as an Amaranth component.

    Parameters
    ----------
    core : GeneratedCore
    pads : object, optional
        Board variant only (:func:`sdram_pads`): ``a``, ``ba``, ``cas_n``, ``cke``, ``cs_n``,
        ``dm``, ``ras_n``, ``we_n`` (signals the core drives; the core registers them in its
        I/O flip-flops) and ``dq`` (the pins' IO value: the core has its own ``TRELLIS_IO``
        tristate buffers on them). The SDRAM clock pin is the board top's.

    Members
    -------
    port : ``In(native_port_signature(...))``
    ctrl : ``In(wishbone_signature())``
        The control registers (``wb_ctrl``).
    init_done, init_error : ``Out(1)``
        The core's ``ddrctrl`` registers.
    """

    def __init__(self, core, pads=None):
        if core.sim and pads is not None:
            raise ValueError("the simulation variant of the core has no pads")
        if not core.sim and pads is None:
            raise ValueError("the board variant of the core needs the SDRAM's pads")
        self._core = core
        self._pads = pads
        super().__init__({
            "port": In(native_port_signature(core.address_width, core.data_width)),
            "ctrl": In(wishbone_signature()),
            "init_done": Out(1), "init_error": Out(1),
        })

    @property
    def core(self):
        return self._core

    def elaborate(self, platform):
        m = Module()
        if platform is not None:
            platform.add_file(self._core.verilog.name, self._core.verilog.read_text())
        port, ctrl = self.port, self.ctrl
        ports = dict(
            # the core's clock and reset as it sees them (the same as ours: unused)
            i_clk=ClockSignal(), o_user_clk=Signal(), o_user_rst=Signal(),
            o_init_done=self.init_done, o_init_error=self.init_error,
            i_wb_ctrl_adr=ctrl.adr, i_wb_ctrl_dat_w=ctrl.dat_w, o_wb_ctrl_dat_r=ctrl.dat_r,
            i_wb_ctrl_sel=ctrl.sel, i_wb_ctrl_cyc=ctrl.cyc, i_wb_ctrl_stb=ctrl.stb,
            i_wb_ctrl_we=ctrl.we, o_wb_ctrl_ack=ctrl.ack, o_wb_ctrl_err=ctrl.err,
            i_wb_ctrl_cti=0, i_wb_ctrl_bte=0,
            **{f"i_{_PORT}_cmd_valid": port.cmd.valid, f"o_{_PORT}_cmd_ready": port.cmd.ready,
               f"i_{_PORT}_cmd_we": port.cmd.payload.we,
               f"i_{_PORT}_cmd_addr": port.cmd.payload.addr,
               f"i_{_PORT}_wdata_valid": port.wdata.valid,
               f"o_{_PORT}_wdata_ready": port.wdata.ready,
               f"i_{_PORT}_wdata_data": port.wdata.payload.data,
               f"i_{_PORT}_wdata_we": port.wdata.payload.we,
               f"o_{_PORT}_rdata_valid": port.rdata.valid,
               f"i_{_PORT}_rdata_ready": port.rdata.ready,
               f"o_{_PORT}_rdata_data": port.rdata.payload},
        )
        if self._core.sim:
            ports["i_sim_trace"] = 0
        else:
            pads = self._pads
            ports["i_rst"] = ResetSignal()
            for name in ("a", "ba", "cas_n", "cke", "cs_n", "dm", "ras_n", "we_n"):
                ports[f"o_sdram_{name}"] = getattr(pads, name)
            ports["io_sdram_dq"] = pads.dq
        m.submodules.core = Instance(self._core.name, **ports)
        return m


class DRAMSubsystem(wiring.Component):
    """LiteDRAM with its bring-up, a writer and a prefetching reader.

    Parameters
    ----------
    core : GeneratedCore
    pads : object, optional
        For the board variant (see :class:`LiteDRAMCore`).
    data_width : int
        Width of the streams (the core's bus width); default the port's. A multiple of the
        port's width: the reader and writer split words into port words.
    prefetch : int
        The reader's FIFO depth in port words.

    Members
    -------
    init_done, init_error : ``Out(1)``
        The bring-up's result (:class:`~boards.sdram_init.SDRAMInit`); the core's own registers
        follow it.
    w_start, w_base, w_data, w_written, w_idle, w_overflow
        The writer's members (:class:`~boards.dram_stream.DRAMWriter` ``start``, ...).
    r_start, r_base, r_count, r_busy, r_cancel, m_axis
        The reader's members (:class:`~boards.dram_stream.DRAMReader`).
    """

    def __init__(self, core, pads=None, *, data_width=None, prefetch=64):
        dw = core.data_width if data_width is None else data_width
        self._dram = LiteDRAMCore(core, pads)
        self._init = SDRAMInit(core)
        self._writer = DRAMWriter(core.address_width, dw, port_width=core.data_width)
        self._reader = DRAMReader(core.address_width, dw, port_width=core.data_width,
                                  depth=prefetch)
        aw = len(self._reader.base)
        super().__init__({
            "init_done": Out(1), "init_error": Out(1),
            "w_start": In(1), "w_base": In(aw), "w_data": In(stream.Signature(dw)),
            "w_written": Out(aw + 1), "w_idle": Out(1), "w_overflow": Out(1),
            "r_start": In(1), "r_base": In(aw), "r_count": In(aw + 1), "r_busy": Out(1),
            "r_cancel": In(1),
            "m_axis": Out(stream.Signature(data.StructLayout({"data": dw, "last": 1}))),
        })

    @property
    def init(self):
        return self._init

    def elaborate(self, platform):
        m = Module()
        m.submodules.dram = dram = self._dram
        m.submodules.init = init = self._init
        m.submodules.writer = writer = self._writer
        m.submodules.reader = reader = self._reader
        connect(m, init.bus, dram.ctrl)
        m.d.comb += [
            self.init_done.eq(init.done), self.init_error.eq(init.error),
            writer.start.eq(self.w_start), writer.base.eq(self.w_base),
            self.w_written.eq(writer.written), self.w_idle.eq(writer.idle),
            self.w_overflow.eq(writer.overflow),
            reader.start.eq(self.r_start), reader.base.eq(self.r_base),
            reader.count.eq(self.r_count), self.r_busy.eq(reader.busy),
            reader.cancel.eq(self.r_cancel),
        ]
        connect(m, flipped(self.w_data), writer.s_axis)
        connect(m, reader.m_axis, flipped(self.m_axis))
        # one native port: write commands first (a read command waits, its valid held), write
        # data from the writer, read data to the reader
        port = dram.port
        with m.If(writer.port.cmd.valid):
            m.d.comb += [port.cmd.valid.eq(1), port.cmd.payload.eq(writer.port.cmd.payload),
                         writer.port.cmd.ready.eq(port.cmd.ready)]
        with m.Else():
            m.d.comb += [port.cmd.valid.eq(reader.port.cmd.valid),
                         port.cmd.payload.eq(reader.port.cmd.payload),
                         reader.port.cmd.ready.eq(port.cmd.ready)]
        connect(m, writer.port.wdata, port.wdata)
        connect(m, port.rdata, reader.port.rdata)
        return m


#: The generated core's SDRAM outputs: (its name, the amaranth-boards subsignal, active low).
_SDRAM_OUTPUTS = (("a", "a", False), ("ba", "ba", False), ("cas_n", "cas", True),
                  ("cke", "clk_en", False), ("cs_n", "cs", True), ("dm", "dqm", False),
                  ("ras_n", "ras", True), ("we_n", "we", True))


def sdram_pads(m, platform, number=0, *, domain="sync"):
    """The SDRAM of an amaranth-boards platform (``SDRAMResource``) as :class:`LiteDRAMCore`'s
    pads, on an ECP5.

    Output pins get an ``io.Buffer`` each (the resource's active-low pins are ``PinsN``: the
    buffer is driven with the inverse of the core's ``*_n``); ``dq`` is handed to the core's
    own tristate buffers as it is. The SDRAM clock pin is the inverted clock of ``domain``
    through an ``ODDRX1F`` (D0 = 0, D1 = 1): the chip samples commands and data half a cycle
    after the FPGA launches them (LiteX's ULX3S target uses a phase-shifted PLL output
    instead; which one holds at speed is for a board to tell).

    Returns
    -------
    SimpleNamespace
        ``a``, ``ba``, ``cas_n``, ``cke``, ``cs_n``, ``dm``, ``ras_n``, ``we_n``, ``dq``.
    """
    res = platform.request("sdram", number, dir="-")
    pads = SimpleNamespace()
    for name, sub, active_low in _SDRAM_OUTPUTS:
        port = getattr(res, sub)
        signal = Signal(len(port), name=f"sdram_{name}")
        setattr(pads, name, signal)
        m.submodules[f"sdram_{name}"] = buf = io.Buffer("o", port)
        m.d.comb += buf.o.eq(~signal if active_low else signal)
    pads.dq = res.dq.io
    m.submodules.sdram_clk = Instance("ODDRX1F", i_SCLK=ClockSignal(domain), i_RST=0, i_D0=0,
                                      i_D1=1, o_Q=res.clk.io)
    return pads
