"""A simple dual-port block RAM whose read data passes a second register: on ECP5 the
``DP16KD`` primitive with its output register, elsewhere its behavioural twin.

:class:`BlockRam` has one write port and one read port. A read takes two register stages: the
address (enable ``r_en``, the block's read clock enable) and the output register (enable
``o_en``), so a word addressed in cycle ``t`` with ``r_en`` high is on ``r_data`` from cycle
``t + 2`` if ``o_en`` was high in cycle ``t + 1``. That is what a design gets from an Amaranth
``Memory`` read port followed by a register of its data, and what the ``behavioural`` form
builds.

Why an instance: yosys's ``synth_ecp5`` maps a ``Memory`` onto ``DP16KD`` blocks with their
output register off (``REGMODE "NOREG"``) and leaves the register after the read port in the
fabric; the read then costs the block's clock-to-output time (5.8 ns on the ULX3S's -6 part)
plus the route to that flip-flop, the worst paths of the ULX3S core at 125 MHz. With the
block's own output register (``REGMODE_B "OUTREG"``, clock-to-output ~1 ns) the register sits
inside the block, as :class:`~bertcore.rtl.multiplier.Multiplier` does for the DSPs.

Which one is built
------------------
``target=None`` (default) asks the platform at elaboration: a platform whose ``family`` is
``"ecp5"`` gets ``DP16KD`` blocks, anything else the behavioural form. ``target="ecp5"`` or
``target="generic"`` forces one or the other (e.g. to emit the instances with
``verilog.convert`` for a simulation against ``sim/models/DP16KD.v``).

The ECP5 form uses the blocks in their 1024 x 18 mode: ``ceil(width / 18)`` blocks side by
side, write port A, read port B, both on the clock of ``domain``; ``depth`` must be at most
1024 for it.

Behaviour both forms share
--------------------------
* The memory starts all zeros and the output register 0. The domain's reset clears the
  output register (synchronously, over ``o_en``), never the memory. The read register starts
  0 and is cleared by the reset on ECP5 (a block's state after configuration; its ``RSTB``),
  not in the behavioural form (an Amaranth read port has no initial value in a four-state
  simulator and no reset): load the output register only with a word read after the
  configuration or the last reset. A ``ResetInserter`` around a design clears the behavioural
  output register but does not reach ``RSTB`` (an instance port), as for
  :class:`~bertcore.rtl.multiplier.Multiplier`: do not rely on ``r_data`` after such a reset
  before the output register has loaded again. The run controller does neither (its valid
  bits say when a block's word is used).
* A read of the word written in the same cycle is not defined on ECP5 (the two ports of a
  block); the behavioural form gives the old word. Do not rely on either.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, ResetSignal, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .common import (PRIMITIVE_TARGETS, check_domain, check_int, check_target, rejecting,
                     targets_ecp5)

__all__ = ["BlockRam", "BLOCKRAM_TARGETS", "DP16KD_WIDTH", "DP16KD_DEPTH"]

#: Values of :class:`BlockRam`'s ``target``: ``None`` (from the platform), ``"ecp5"``
#: (``DP16KD`` instances), ``"generic"`` (behavioural).
BLOCKRAM_TARGETS = PRIMITIVE_TARGETS
#: A ``DP16KD`` in its widest true dual-port mode: 1024 words of 18 bits.
DP16KD_WIDTH = 18
DP16KD_DEPTH = 1024
_ADDR_LSB = 4          # in the 18-bit mode the word address is AD[13:4]; AD[1:0] byte enables


class BlockRam(wiring.Component):
    """``depth`` words of ``width`` bits, one write port, one read port with two registers.

    Parameters
    ----------
    width : int
        Bits per word (``>= 1``).
    depth : int
        Words (``>= 1``; at most 1024 for the ECP5 form).
    target : ``None``, ``"ecp5"`` or ``"generic"``
        Which form to build (see the module documentation); ``None`` asks the platform.
    domain : str
        Clock domain of the ports (``"sync"``).

    Members
    -------
    w_addr : ``In(addr_width)``, w_data : ``In(width)``, w_en : ``In(1)``
        The write port: ``w_data`` is written to ``w_addr`` at the clock edge while ``w_en``.
    r_addr : ``In(addr_width)``, r_en : ``In(1, init=1)``
        The read address, taken at the clock edge while ``r_en`` (else the block holds the
        word read last).
    o_en : ``In(1, init=1)``
        Enable of the output register: it loads the word read at the edge while ``o_en``.
    r_data : ``Out(width)``
        The output register.

    Raises
    ------
    TypeError
        If ``width`` or ``depth`` is not an integer or ``domain`` not a str.
    ValueError
        If ``width`` or ``depth`` is not positive, ``target`` is unknown, or ``target="ecp5"``
        with ``depth`` above 1024.
    """

    def __init__(self, width, depth, *, target=None, domain="sync"):
        with rejecting(self):
            check_int("width", width)
            check_int("depth", depth)
            check_target(target)
            if target == "ecp5" and depth > DP16KD_DEPTH:
                raise ValueError(f"depth must be at most {DP16KD_DEPTH} for the ECP5 form, "
                                 f"not {depth}")
            check_domain(domain)
        self._width = width
        self._depth = depth
        self._target = target
        self._domain = domain
        addr_width = max(ceil_log2(depth), 1)
        super().__init__({
            "w_addr": In(addr_width), "w_data": In(width), "w_en": In(1),
            "r_addr": In(addr_width), "r_en": In(1, init=1), "o_en": In(1, init=1),
            "r_data": Out(width),
        })

    width = property(lambda self: self._width, doc="Bits per word.")
    depth = property(lambda self: self._depth, doc="Words.")
    target = property(lambda self: self._target, doc="The form asked for (see the module).")

    def uses_primitive(self, platform):
        """Whether :meth:`elaborate` with this ``platform`` instantiates ``DP16KD`` blocks
        (``target=None`` on an ECP5 platform with a ``depth`` above 1024 gets the behavioural
        form: one block would not hold it)."""
        return targets_ecp5(platform, self._target) and (
            self._target is not None or self._depth <= DP16KD_DEPTH)

    @property
    def blocks(self):
        """``DP16KD`` blocks of the ECP5 form."""
        return -(-self._width // DP16KD_WIDTH)

    def elaborate(self, platform):
        if self.uses_primitive(platform):
            return self._elaborate_dp16kd()
        return self._elaborate_behavioural()

    def _elaborate_behavioural(self):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self._width), depth=self._depth, init=[])
        wp = mem.write_port(domain=self._domain)
        # the read register: the port's own (what synthesis maps onto any block RAM's read)
        rp = mem.read_port(domain=self._domain)
        m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     rp.addr.eq(self.r_addr), rp.en.eq(self.r_en)]
        out = Signal(self._width, name="out_reg")
        with m.If(self.o_en):
            m.d[self._domain] += out.eq(rp.data)
        m.d.comb += self.r_data.eq(out)
        return m

    def _elaborate_dp16kd(self):
        m = Module()
        clk = ClockSignal(self._domain)
        addr_bits = 14 - _ADDR_LSB

        def address(prefix, addr, low):
            # AD[3:0]: the byte enables (AD1, AD0) of a write port, zeros elsewhere; the word
            # address on AD[13:4], zero-extended
            bits = {f"i_{prefix}{k}": low[k] for k in range(_ADDR_LSB)}
            bits.update({f"i_{prefix}{_ADDR_LSB + k}": addr[k] if k < len(addr) else 0
                         for k in range(addr_bits)})
            return bits

        outs = []
        for b in range(self.blocks):
            lo = b * DP16KD_WIDTH
            width = min(DP16KD_WIDTH, self._width - lo)
            data = self.w_data[lo:lo + width]
            # one signal per pin used (DOB0..DOB17 are single-bit ports)
            do = [Signal(name=f"dob{b}_{k}") for k in range(width)]
            outs.append(Cat(do))
            ports = {f"i_DIA{k}": data[k] if k < width else 0 for k in range(DP16KD_WIDTH)}
            ports.update({f"i_DIB{k}": 0 for k in range(DP16KD_WIDTH)})
            ports.update({f"o_DOB{k}": pin for k, pin in enumerate(do)})
            ports.update(address("ADA", self.w_addr, [1, 1, 0, 0]))
            ports.update(address("ADB", self.r_addr, [0, 0, 0, 0]))
            ports.update({f"i_CS{p}{k}": 0 for p in "AB" for k in range(3)})
            # DOA (port A is write-only) stays open, as yosys leaves the unused outputs
            m.submodules[f"dp16kd_{b}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=DP16KD_WIDTH, p_DATA_WIDTH_B=DP16KD_WIDTH,
                p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
                p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL",
                p_GSR="DISABLED",
                i_CLKA=clk, i_CEA=Const(1, 1), i_OCEA=Const(1, 1), i_WEA=self.w_en,
                i_RSTA=Const(0, 1),
                i_CLKB=clk, i_CEB=self.r_en, i_OCEB=self.o_en, i_WEB=Const(0, 1),
                i_RSTB=ResetSignal(self._domain),
                **ports,
            )
        m.d.comb += self.r_data.eq(Cat(outs))
        return m
