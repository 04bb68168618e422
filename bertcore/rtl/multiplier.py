"""A registered 18x18 multiplier: the ECP5 ``MULT18X18D`` DSP primitive, or its behavioural twin.

:class:`Multiplier` computes ``p = a * b`` for operands of at most 18 bits through up to three
register stages, those a DSP block has: input (``a``, ``b``), pipeline (the product inside the
block) and output. On an ECP5 target it instantiates one ``MULT18X18D`` with exactly those
registers switched on, so the multiply sits between registers inside the block and no fabric
flip-flop or routing lies on its path (speed-6: ~0.7 ns clock-to-P with the output register
against 2.9-3.9 ns A-to-P combinational). Everywhere else (the Amaranth simulator, Icarus,
Verilator, iCE40, plain ``verilog.convert``) it is an equivalent behavioural description: the
same registers in fabric around a ``*``. Both have the same ports, results and latency.

yosys's ``synth_ecp5`` maps a bare ``*`` onto a combinational ``MULT18X18D`` and leaves the
registers around it in the fabric (it absorbs DSP registers only for Nexus); hence the explicit
instance here.

Which one is built
------------------
``target=None`` (default) asks the platform at elaboration: an Amaranth platform whose
``family`` is ``"ecp5"`` (``amaranth.vendor.LatticePlatform`` for an ECP5 device, as every
ECP5 board of amaranth-boards) gets the primitive, anything else (no platform, iCE40, ...) the
behavioural form. ``target="ecp5"`` or ``target="generic"`` forces one or the other, e.g. to
emit the instance with ``verilog.convert`` for a simulation against a ``MULT18X18D`` model
(``sim/models/MULT18X18D.v``).

Control signals
---------------
All registers use the block's ``CLK0``/``CE0``/``RST0``: the clock and the (synchronous) reset
of ``domain``, and the ``en`` input (default high). The DSPs of one ECP5 block share their
CLK/CE/RST lines, so the placer may put two multipliers in one block only when these agree:
every multiplier of a clock domain whose ``en`` is left unconnected has the same control set
(clock, 1, reset), and any two of them pair up. Both forms reset every register to 0 on the
domain's reset. A ``ResetInserter`` around a design resets the behavioural registers but does
not reach the primitive's ``RST0`` (an instance port): a datapath must not rely on the reset
value of these registers, and bertcore's units do not (their valid bits, reset in the fabric,
say when a product is used; the registers refill within the latency).
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, ResetSignal, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .common import (DSP_WIDTH, PRIMITIVE_TARGETS, check_domain, check_target, dsp_tiles,
                     rejecting, targets_ecp5)

__all__ = ["Multiplier", "MULTIPLIER_TARGETS", "mult18x18d_operand_shapes", "uses_mult18x18d",
           "mult18x18d_products", "fabric_copies"]

#: Values of :class:`Multiplier`'s ``target``: ``None`` (from the platform), ``"ecp5"`` (the
#: ``MULT18X18D`` instance), ``"generic"`` (behavioural).
MULTIPLIER_TARGETS = PRIMITIVE_TARGETS


def mult18x18d_operand_shapes(a_shape, b_shape):
    """Whether ``a_shape x b_shape`` fits one ``MULT18X18D``: returns ``signed`` (the flag both
    SIGNEDA and SIGNEDB get), or raises ``ValueError``.

    Two unsigned operands of up to 18 bits multiply unsigned. Otherwise both are taken as
    signed 18-bit values (an unsigned operand of up to 17 bits zero-extended), so that the
    block never mixes a signed and an unsigned operand.
    """
    a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
    if not a_shape.signed and not b_shape.signed:
        limit = {"a_shape": DSP_WIDTH, "b_shape": DSP_WIDTH}
        signed_ = False
    else:
        limit = {name: DSP_WIDTH if shape.signed else DSP_WIDTH - 1
                 for name, shape in (("a_shape", a_shape), ("b_shape", b_shape))}
        signed_ = True
    for name, shape in (("a_shape", a_shape), ("b_shape", b_shape)):
        if shape.width > limit[name]:
            raise ValueError(
                f"{name} must fit an 18x18 multiplier ({limit[name]} bits "
                f"{'signed' if shape.signed else 'unsigned'} at most here), not {shape!r}")
    return signed_


def uses_mult18x18d(platform, target=None):
    """Whether a :class:`Multiplier` with this ``target`` instantiates ``MULT18X18D`` when
    elaborated for ``platform`` (for a parent whose structure around it depends on that)."""
    return targets_ecp5(platform, target)


class Multiplier(wiring.Component):
    """``p = a * b`` through the registers of a DSP block; one ``MULT18X18D`` on ECP5.

    Parameters
    ----------
    a_shape, b_shape : shape
        Shapes of the operands: two unsigned ones of up to 18 bits, or any mix of signed ones
        of up to 18 bits and unsigned ones of up to 17 bits.
    input_register : bool
        Register ``a`` and ``b`` (the block's input registers). Default ``True``.
    pipeline_register : bool
        Register the product inside the block (its pipeline register). Default ``False``.
    output_register : bool
        Register the product at the block's output. Default ``True``.
    target : ``None``, ``"ecp5"`` or ``"generic"``
        Which form to build (see the module documentation); ``None`` asks the platform.
    domain : str
        Clock domain of the registers (``"sync"``).

    Members
    -------
    a : In(a_shape)
    b : In(b_shape)
    en : In(1, init=1)
        Clock enable of every register (``CE0``): while low, all stages hold.
    p : Out(product_shape)
        The product of the operands presented :attr:`latency` enabled cycles earlier, of the
        shape Amaranth gives ``a * b`` (exact).

    Latency and throughput
    ----------------------
    :attr:`latency` is the number of registers switched on (0 to 3); one product per cycle.
    With ``latency == 0`` the multiplier is combinational (and ``en`` unused).

    Raises
    ------
    TypeError
        If a shape is not a shape, a register flag not a bool or ``domain`` not a str.
    ValueError
        If the operands do not fit an 18x18 multiplier or ``target`` is unknown.
    """

    def __init__(self, a_shape, b_shape, *, input_register=True, pipeline_register=False,
                 output_register=True, target=None, domain="sync"):
        with rejecting(self):
            for name, value in (("a_shape", a_shape), ("b_shape", b_shape)):
                try:
                    Shape.cast(value)
                except TypeError:
                    raise TypeError(f"{name} must be a shape, not {value!r}") from None
            a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
            self._signed = mult18x18d_operand_shapes(a_shape, b_shape)
            for name, value in (("input_register", input_register),
                                ("pipeline_register", pipeline_register),
                                ("output_register", output_register)):
                if not isinstance(value, bool):
                    raise TypeError(f"{name} must be a bool, not {value!r}")
            check_target(target)
            check_domain(domain)
        self._a_shape = a_shape
        self._b_shape = b_shape
        self._registers = (input_register, pipeline_register, output_register)
        self._target = target
        self._domain = domain
        product_shape = (Const(0, a_shape) * Const(0, b_shape)).shape()
        super().__init__({
            "a": In(a_shape),
            "b": In(b_shape),
            "en": In(1, init=1),
            "p": Out(product_shape),
        })

    @property
    def a_shape(self):
        return self._a_shape

    @property
    def b_shape(self):
        return self._b_shape

    @property
    def product_shape(self):
        return self.p.shape()

    @property
    def latency(self):
        """Register stages from the operands to ``p``."""
        return sum(self._registers)

    @property
    def target(self):
        return self._target

    def uses_primitive(self, platform):
        """Whether :meth:`elaborate` with this ``platform`` instantiates ``MULT18X18D``."""
        return uses_mult18x18d(platform, self._target)

    def elaborate(self, platform):
        if self.uses_primitive(platform):
            return self._elaborate_mult18x18d()
        return self._elaborate_behavioural()

    def _elaborate_behavioural(self):
        m = Module()
        input_register, pipeline_register, output_register = self._registers

        def stage(value, enabled, name):
            if not enabled:
                return value
            reg = Signal.like(value, name=name)
            with m.If(self.en):
                m.d[self._domain] += reg.eq(value)
            return reg

        a = stage(self.a, input_register, "a_reg")
        b = stage(self.b, input_register, "b_reg")
        product = stage(a * b, pipeline_register, "p_pipe")
        m.d.comb += self.p.eq(stage(product, output_register, "p_reg"))
        return m

    def _elaborate_mult18x18d(self):
        m = Module()
        input_register, pipeline_register, output_register = self._registers

        def clock(enabled):
            return "CLK0" if enabled else "NONE"

        # the operand pins: each operand extended to 18 bits (by its sign bit when signed,
        # else with zeros); the block reads them as SIGNEDA/SIGNEDB say
        def extended(value, k):
            if k < len(value):
                return value[k]
            return value[-1] if value.shape().signed else Const(0, 1)

        # the product pins: one signal per pin used (P0..P35 are single-bit ports); the pins
        # above the product's width stay open
        p = [Signal(name=f"dsp_p{k}") for k in range(len(self.p))]
        m.d.comb += self.p.eq(Cat(p))

        ports = {}
        for name, value in (("A", self.a), ("B", self.b)):
            ports.update({f"i_{name}{k}": extended(value, k) for k in range(DSP_WIDTH)})
        ports.update({f"i_C{k}": 0 for k in range(DSP_WIDTH)})
        ports.update({f"o_P{k}": pin for k, pin in enumerate(p)})
        # CLK1..3, CE1..3, RST1..3 and the shift inputs SRIA/SRIB stay unconnected, as in
        # yosys' own mapping (share/lattice/dsp_map_18x18.v): tied to a constant, the clock
        # lines would need a route from the constant net that nextpnr cannot find
        ports.update({
            "i_SIGNEDA": int(self._signed), "i_SIGNEDB": int(self._signed),
            "i_SOURCEA": 0, "i_SOURCEB": 0,           # the A and B ports, not the shift chains
            "i_CLK0": ClockSignal(self._domain), "i_CE0": self.en,
            "i_RST0": ResetSignal(self._domain),
        })
        m.submodules.mult18x18d = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK=clock(input_register), p_REG_INPUTA_CE="CE0",
            p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK=clock(input_register), p_REG_INPUTB_CE="CE0",
            p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE",
            p_REG_PIPELINE_CLK=clock(pipeline_register), p_REG_PIPELINE_CE="CE0",
            p_REG_PIPELINE_RST="RST0",
            p_REG_OUTPUT_CLK=clock(output_register), p_REG_OUTPUT_CE="CE0",
            p_REG_OUTPUT_RST="RST0",
            p_RESETMODE="SYNC",
            p_SOURCEB_MODE="B_SHIFT",
            p_MULT_BYPASS="DISABLED",
            p_CAS_MATCH_REG="FALSE",
            p_GSR="DISABLED",
            **ports,
        )
        return m


def mult18x18d_products(m, a, b, *, en=None, name="mul", domain="sync"):
    """The partial products of ``a * b`` as :class:`Multiplier` instances with their input and
    output registers (for an ECP5 target): a list of ``(product, shift)``,
    ``a * b == sum(product << shift)``, each ``product`` valid two ``en`` cycles after ``a`` and
    ``b`` were presented.

    The operands are split by :func:`~bertcore.rtl.common.dsp_tiles` (each piece fits one block),
    so a unit whose stage 1 registers ``a`` and ``b`` and whose stage 2 registers their
    :func:`~bertcore.rtl.common.dsp_partial_products` gets, from this, the same values in the
    same cycles with both registers inside the DSP blocks: it passes the values its operand
    registers would load (``a``, ``b``) and the enable of those stages (``en``).
    """
    products = []
    for pa, sa in dsp_tiles(a):
        for pb, sb in dsp_tiles(b):
            mul = Multiplier(pa.shape(), pb.shape(), target="ecp5", domain=domain)
            m.submodules[f"{name}{len(products)}"] = mul
            m.d.comb += [mul.a.eq(pa), mul.b.eq(pb)]
            if en is not None:
                m.d.comb += mul.en.eq(en)
            products.append((mul.p, sa + sb))
    return products


def fabric_copies(m, products, *, en=None, name):
    """Each ``(product, shift)`` of ``products`` copied into a fabric register of its own
    (loaded while ``en``, default always; not reset: the caller's valid bits travel beside
    them), returned as a list of ``(register, shift)``: a stage between a multiplier's
    registered product and the adder that sums the products.

    On ECP5 the DSP blocks sit in a few rows, far from most of the fabric: the route from a
    ``MULT18X18D``'s output register to the adder behind it was 3.7-5.1 ns of the ULX3S's
    failing paths at 125 MHz (the requantizers', the softmax normalization's); with this
    stage each half of that route ends in a register. Units add it in both multiplier forms,
    so that their latency does not depend on the target."""
    copies = []
    for index, (product, shift) in enumerate(products):
        copy = Signal.like(product, name=f"{name}{index}", reset_less=True)
        if en is None:
            m.d.sync += copy.eq(product)
        else:
            with m.If(en):
                m.d.sync += copy.eq(product)
        copies.append((copy, shift))
    return copies
