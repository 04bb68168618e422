"""SDRAM bring-up in hardware: LiteDRAM's init sequence over the generated core's control bus.

A LiteDRAM core generated without a CPU (``cpu: None``) leaves its DFII (the DFI injector that
lets software drive the DRAM's command pins) in hardware mode with CKE low, and nothing runs the
SDRAM's power-up sequence: LiteX's BIOS would (``sdram_init`` in liblitedram). :class:`SDRAMInit`
is that part of the BIOS as a small program in a ROM, run by a state machine that is a Wishbone
master on the core's ``wb_ctrl`` bus:

1. DFII to software control, CKE low; wait 100 us (the SDRAM's power-up time at this clock);
2. LiteDRAM's init sequence for this PHY (``litedram.init.get_sdram_phy_init_sequence``, computed
   by the generator and carried in :class:`~boards.sdram.GeneratedCore`): CKE high, precharge
   all, mode register (CAS latency), two auto refreshes, mode register, with LiteDRAM's delays
   (the BIOS's ``cdelay(n)`` loops, taken here as ``n`` clock cycles);
3. a check of the chip through the DFII: activate the last row of the last bank, write two
   complementary patterns to its last two columns, read them back, precharge all (a dead chip, a
   stuck or unsoldered data line fails here instead of corrupting the image later). The last
   two words of the DRAM, not the first: an image stored from address 0 survives a bring-up
   after a reconfiguration that kept the SDRAM powered, or preloaded into a simulation model
   (a verify-only load, :class:`~boards.image_store.ImageStore`);
4. DFII to hardware control (LiteDRAM's controller takes over, refreshes from then on);
5. the core's ``init_done`` register (and ``init_error`` on a failure), which also opens the
   user ports (LiteDRAM blocks them until ``init_done & ~init_error``).

A Wishbone error, a bus that does not answer within :data:`SDRAMInit.BUS_TIMEOUT` cycles or a
pattern read back wrong ends in the error state: ``error`` high (``done`` stays low), and the
core's ``init_error`` register set if the bus still answers.
"""

import math

from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["wishbone_signature", "init_program", "SDRAMInit"]


def wishbone_signature(addr_width=30, data_width=32):
    """A classic Wishbone initiator (the generated core's ``wb_ctrl`` from the outside).

    Written here rather than taken from amaranth-soc, which has no release on PyPI. ``adr`` is a
    word address; ``cti``/``bte`` are not used (single transfers).
    """
    return wiring.Signature({
        "adr": Out(addr_width), "dat_w": Out(data_width), "dat_r": In(data_width),
        "sel": Out(data_width // 8), "cyc": Out(1), "stb": Out(1), "we": Out(1),
        "ack": In(1), "err": In(1),
    })


# Program operations
_WRITE, _WAIT, _CHECK, _END = range(4)
#: Cycles between a DFII command and the next that depends on it (tRCD, tWR, the read latency):
#: far more than an SDR chip needs at any clock LiteDRAM accepts.
COMMAND_GAP = 16


def init_program(core, clock):
    """The bring-up as a program: a list of ``(op, register name or None, argument, comment)``
    (ops: write, wait cycles, read and compare, end), and the index where a failed check
    continues (a write of ``ddrctrl_init_error``, end)."""
    dfii = core.dfii
    prog = []

    def write(reg, value, comment=""):
        prog.append((_WRITE, reg, value, comment))

    def wait(cycles, comment=""):
        if cycles:
            prog.append((_WAIT, None, cycles, comment))

    def command(bits, address, bank=0, comment=""):
        write("sdram_dfii_pi0_address", address, comment)
        write("sdram_dfii_pi0_baddress", bank)
        write("sdram_dfii_pi0_command", bits)
        write("sdram_dfii_pi0_command_issue", 1)

    write("sdram_dfii_control", 0, "software control, CKE low")
    wait(math.ceil(100e-6 * clock), "power-up: 100 us")
    precharge_all = None
    for step in core.init_sequence:
        if step["kind"] == "control":
            write("sdram_dfii_pi0_address", step["address"], step["comment"])
            write("sdram_dfii_pi0_baddress", step["bank"])
            write("sdram_dfii_control", step["bits"])
        else:
            command(step["bits"], step["address"], step["bank"], step["comment"])
            if step["comment"].startswith("Precharge All"):
                precharge_all = step
        wait(step["delay"])

    cs, we = dfii["dfii_command_cs"], dfii["dfii_command_we"]
    cas, ras = dfii["dfii_command_cas"], dfii["dfii_command_ras"]
    mask = (1 << core.databits) - 1
    patterns = [0x5AC3A55A & mask, ~0x5AC3A55A & mask]
    # the top of the DRAM (see the module docstring): last bank, last row, last two columns
    row, bank = (1 << core.geom["rowbits"]) - 1, (1 << core.geom["bankbits"]) - 1
    columns = [(1 << core.geom["colbits"]) - 2 + i for i in range(len(patterns))]
    command(ras | cs, row, bank, f"check: activate bank {bank} row {row}")
    wait(COMMAND_GAP)
    for column, pattern in zip(columns, patterns):
        write("sdram_dfii_pi0_wrdata", pattern, f"check: write column {column}")
        command(cas | we | cs | dfii["dfii_command_wrdata"], column, bank)
    wait(COMMAND_GAP)
    for column, pattern in zip(columns, patterns):
        command(cas | cs | dfii["dfii_command_rddata"], column, bank,
                comment=f"check: read column {column}")
        wait(COMMAND_GAP)
        prog.append((_CHECK, "sdram_dfii_pi0_rddata", pattern, "check: compare"))
    if precharge_all is not None:
        command(precharge_all["bits"], precharge_all["address"], comment="check: precharge")
        wait(COMMAND_GAP)
    write("sdram_dfii_control", dfii["dfii_control_sel"], "hardware control")
    write("ddrctrl_init_done", 1, "init done")
    prog.append((_END, None, 0, ""))
    # where a failed check continues: tell the core (init_error closes its user ports)
    fail_pc = len(prog)
    write("ddrctrl_init_error", 1, "check failed")
    prog.append((_END, None, 0, ""))
    return prog, fail_pc


class SDRAMInit(wiring.Component):
    """Run the SDRAM init sequence of a generated LiteDRAM core over its control bus.

    Parameters
    ----------
    core : GeneratedCore
        The generated core (:func:`boards.sdram.generate`): init sequence, DFII bits, CSR
        addresses, data width.
    clock : float
        The clock in Hz (for the 100 us power-up wait); default the core's configured clock.

    Members
    -------
    bus : ``Out(wishbone_signature())``
        To the core's ``wb_ctrl``.
    done : ``Out(1)``
        The sequence ran and the chip answered: the controller owns the DRAM.
    error : ``Out(1)``
        The sequence failed (bus error or time-out, or the pattern check).

    Raises
    ------
    ValueError
        If the PHY has more than one phase (only SDR PHYs are handled) or the init sequence is
        empty.
    """

    #: Cycles without ``ack`` after which a bus access counts as failed.
    BUS_TIMEOUT = 1024

    def __init__(self, core, clock=None):
        if not core.init_sequence:
            raise ValueError("the generated core has no init sequence")
        if core.csr.get("sdram_dfii_pi1_command") is not None:
            raise ValueError("only single-phase (SDR) PHYs are handled, not a multi-phase PHY")
        self._core = core
        self._clock = core.config.clock if clock is None else clock
        self._program, self._fail_pc = init_program(core, self._clock)
        super().__init__({"bus": Out(wishbone_signature()), "done": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        core = self._core
        for _, reg, _, _ in self._program:
            if reg is not None and reg not in core.csr:
                raise ValueError(f"the generated core has no control register {reg!r}")
        adr_width = max(1, max(core.csr.values()).bit_length() - 2)
        arg_width = max(32, max(arg for _, _, arg, _ in self._program).bit_length())
        step = data.StructLayout({"op": 2, "adr": adr_width, "arg": arg_width})
        init = [{"op": op, "adr": core.csr[reg] // 4 if reg else 0, "arg": arg}
                for op, reg, arg, _ in self._program]
        m.submodules.rom = rom = Memory(shape=step, depth=len(init), init=init)
        rd = rom.read_port(domain="comb")
        pc = Signal(range(len(init)))
        m.d.comb += rd.addr.eq(pc)
        op, adr, arg = rd.data.op, rd.data.adr, rd.data.arg

        bus = self.bus
        count = Signal(unsigned(arg_width))
        timer = Signal(range(self.BUS_TIMEOUT + 1))
        m.d.comb += [bus.sel.eq(0xF), bus.adr.eq(adr), bus.dat_w.eq(arg)]

        failed = Signal()
        # states as an if-chain on a register (an Amaranth FSM's emitted case statements are
        # incomplete where yosys drops unused arms, which Verilator's build flags)
        fetch, access, wait, halt = range(4)
        state = Signal(range(4))
        with m.If(state == fetch):
            m.d.sync += timer.eq(0)
            with m.If(op == _WAIT):
                m.d.sync += [count.eq(arg), state.eq(wait)]
            with m.Elif(op == _END):
                m.d.sync += state.eq(halt)
            with m.Else():                             # _WRITE, _CHECK
                m.d.sync += state.eq(access)
        with m.Elif(state == access):
            m.d.comb += [bus.cyc.eq(1), bus.stb.eq(1), bus.we.eq(op == _WRITE)]
            m.d.sync += timer.eq(timer + 1)
            with m.If(bus.ack):
                m.d.sync += [pc.eq(pc + 1), state.eq(fetch)]
                # the whole register: the bits above the DRAM's width read as 0
                with m.If((op == _CHECK) & (bus.dat_r != arg)):
                    m.d.sync += [failed.eq(1), pc.eq(self._fail_pc)]
            with m.Elif(bus.err | (timer == self.BUS_TIMEOUT)):
                m.d.sync += [failed.eq(1), state.eq(halt)]   # the bus itself failed: stop
        with m.Elif(state == wait):
            m.d.sync += count.eq(count - 1)
            with m.If(count <= 1):
                m.d.sync += [pc.eq(pc + 1), state.eq(fetch)]
        with m.Else():
            m.d.comb += [self.done.eq(~failed), self.error.eq(failed)]
        return m
