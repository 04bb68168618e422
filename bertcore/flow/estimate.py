"""Resource estimate of an encoder core from its configuration, in seconds and without synthesis.

The core is elaborated in Amaranth (no Verilog, no yosys) and its netlist read the way yosys'
``synth_ecp5`` would map it:

* **Block RAM and LUT RAM**: every memory of the design with its depth, width and ports. Each
  read port gets its own copy of the memory (one write and one read port per copy: a DP16KD has
  two ports). A copy goes where yosys' ``memory_libmap`` puts it, by the same costs as its ECP5
  libraries (``brams_16kd.txt``, ``lutrams_trellis.txt``): ``DP16KD`` blocks (16K x 1 ... 1K x
  18 true dual port, 512 x 36 pseudo dual port), 128 each, or ``TRELLIS_DPR16X4`` cells (16 x
  4), 4 each, plus half a unit per bit and extra input of the read multiplexer over the
  pieces stacked in depth (a tie goes to LUT RAM); a read port without a clock (asynchronous)
  only in LUT RAM. Checked cell for cell against ``synth_ecp5`` of single memories.
* **Multipliers**: the ``MULT18X18D`` instances (the units instantiate them on ECP5) and every
  ``*`` but those by 0 or a power of two (shifts): yosys maps a product by any other constant
  (e.g. an address times 48 channel words) onto a DSP block too, which is why the core builds
  its addresses with :func:`bertcore.core.common.times` (shifts and adds) and has no ``*``
  left. Split into 18 x 18 tiles as ``mul2dsp`` does (the units split their wide products
  themselves, :func:`bertcore.rtl.common.dsp_partial_products`); structurally equal products
  count once. On the ``ulx3s-minilm`` SDRAM board this gives yosys' 138 exactly, on ``tiny``
  yosys' 67.
* **LUT4**: a coarse model, not a netlist count: the array per processing element, the
  per-lane units of the write-back, the softmax and LayerNorm units, the LUT RAM, and the rest
  of the core per array column, with coefficients fitted to the two SDRAM board builds
  (``docs/boards.md``). Expect it within about 15 % of place and route.

Checked against yosys in ``tests/test_estimate.py`` (the buffers of a configuration, DP16KD
and LUT RAM cell counts exact) and in ``docs/boards.md`` (whole cores).
"""

from dataclasses import dataclass
from math import ceil
from types import SimpleNamespace

from amaranth.hdl import Const

from ..rtl.common import dsp_tiles
from .report import DEVICES

__all__ = ["Memory", "elaborate", "design_memories", "design_multipliers", "memory_cells",
           "estimate_core", "ECP5_85F"]

#: The LFE5U-85F (ULX3S-85F): LUT4, FF, MULT18X18D, DP16KD (18 kbit each).
ECP5_85F = DEVICES["ecp5-85k"].capacity

# DP16KD geometries (depth, width): true dual port 1..18 bits, pseudo dual port 36 bits
_DP16KD = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
_BRAM_COST, _LUTRAM_COST = 128, 4       # memory_libmap's costs (yosys techlibs/lattice)
_FACTOR_MUX = 0.5


@dataclass(frozen=True)
class Memory:
    """One memory of a design: ``path`` (names of the submodules), ``depth``, ``width`` in
    bits, ``sync_reads`` / ``async_reads`` read ports, ``writes`` write ports; ``dp16kd``:
    the ``DP16KD`` instances of a memory built from them (a
    :class:`~bertcore.rtl.blockram.BlockRam`'s ECP5 form), else 0 (yosys maps it)."""
    path: tuple
    depth: int
    width: int
    sync_reads: int
    async_reads: int
    writes: int
    dp16kd: int = 0


def _fragments(fragment, path=()):
    yield fragment, path
    for sub, name, *_ in fragment.subfragments:
        yield from _fragments(sub, path + (str(name),))


#: What the design is elaborated for: an ECP5 device (the units then instantiate their
#: ``MULT18X18D`` blocks as on a board, :func:`bertcore.rtl.multiplier.uses_mult18x18d`);
#: Verilog files a component adds (LiteDRAM's core) are not read.
ECP5_TARGET = SimpleNamespace(family="ecp5", add_file=lambda name, content: None)


def elaborate(design, platform=ECP5_TARGET):
    """The Amaranth fragment of ``design`` (an elaboratable, or a fragment returned as is)
    elaborated for ``platform``."""
    from amaranth.hdl import Fragment
    return design if isinstance(design, Fragment) else Fragment.get(design, platform)


def design_memories(design):
    """Every memory of ``design`` (an elaboratable or :func:`elaborate`'s fragment of one), a
    list of :class:`Memory`."""
    from amaranth.hdl import Shape
    from amaranth.hdl._ir import Instance
    from amaranth.hdl._mem import MemoryInstance

    from ..rtl.blockram import BlockRam
    out = []
    for frag, path in _fragments(elaborate(design)):
        ram = next((o for o in (getattr(frag, "origins", None) or ()) if isinstance(o, BlockRam)),
                   None)
        blocks = sum(isinstance(sub, Instance) and sub.type == "DP16KD"
                     for sub, *_ in frag.subfragments)
        if ram is not None and blocks:
            # a BlockRam's ECP5 form: its blocks as instantiated (the behavioural form is a
            # Memory below it, counted as yosys maps it)
            out.append(Memory(path=path, depth=ram.depth, width=ram.width, sync_reads=1,
                              async_reads=0, writes=1, dp16kd=blocks))
        elif isinstance(frag, MemoryInstance):
            data = frag._data
            domains = [port._domain for port in frag._read_ports]
            out.append(Memory(path=path, depth=data.depth, width=Shape.cast(data.shape).width,
                              sync_reads=sum(d != "comb" for d in domains),
                              async_reads=sum(d == "comb" for d in domains),
                              writes=len(frag._write_ports)))
    return out


def memory_cells(mem):
    """``(dp16kd, dpr16x4)`` of one memory as yosys maps it on ECP5 (see the module docstring),
    or as instantiated (``mem.dp16kd``)."""
    if mem.dp16kd:
        return mem.dp16kd, 0
    if mem.depth == 0 or mem.width == 0:
        return 0, 0
    # each geometry: blocks x 128, plus the read multiplexer over the blocks stacked in depth
    # (memory_libmap's mux score, FACTOR_MUX 0.5 per bit and extra input)
    bram_cost, blocks = min((ceil(mem.depth / d) * ceil(mem.width / w) * _BRAM_COST
                             + _FACTOR_MUX * mem.width * (ceil(mem.depth / d) - 1),
                             ceil(mem.depth / d) * ceil(mem.width / w)) for d, w in _DP16KD)
    cells = ceil(mem.depth / 16) * ceil(mem.width / 4)
    lut_cost = cells * _LUTRAM_COST + _FACTOR_MUX * mem.width * (ceil(mem.depth / 16) - 1)
    on_bram = bram_cost < lut_cost      # a tie goes to LUT RAM (the library yosys reads first)
    copies = max(mem.sync_reads, 1 if not mem.async_reads else 0)
    bram = blocks * copies if on_bram else 0
    lutram = cells * (mem.async_reads + (0 if on_bram else copies))
    return bram, lutram


def _tiles(shape):
    """18-bit DSP operand pieces of an operand of ``shape``, split as the units split theirs."""
    return len(dsp_tiles(Const(0, shape)))


def _shift(const):
    """Whether a product by ``const`` is a shift (0 or a power of two; yosys maps a product by
    any other constant onto a DSP block like any product)."""
    value = abs(const.value)
    return value & (value - 1) == 0


def design_multipliers(design):
    """MULT18X18D blocks of ``design`` (an elaboratable or :func:`elaborate`'s fragment of one):
    its ``MULT18X18D`` instances and its ``*`` (but by 0 or a power of two) in 18 x 18
    tiles."""
    from amaranth.hdl import _ast as ast
    from amaranth.hdl._ir import Instance

    seen = set()
    products = set()            # structurally equal products are one cell (yosys opt_merge)
    count = 0

    def value(v):
        nonlocal count
        if id(v) in seen:
            return
        seen.add(id(v))
        if isinstance(v, ast.Operator):
            if v.operator == "*" and not any(isinstance(o, Const) and _shift(o)
                                             for o in v.operands):
                a, b = (o.shape() for o in v.operands)
                key = repr(v)
                if len(v.operands[0]) >= 2 and len(v.operands[1]) >= 2 and key not in products:
                    products.add(key)
                    count += _tiles(a) * _tiles(b)
            for o in v.operands:
                value(o)
        elif isinstance(v, (ast.Slice, ast.Part)):
            value(v.value)
            if isinstance(v, ast.Part):
                value(v.offset)
        elif isinstance(v, ast.Concat):
            for p in v.parts:
                value(p)
        elif isinstance(v, ast.SwitchValue):
            value(v.test)
            for _, case in v.cases:
                if case is not None:
                    value(case)

    def statement(s):
        if isinstance(s, ast.Assign):
            value(s.lhs)
            value(s.rhs)
        elif isinstance(s, ast.Switch):
            value(s.test)
            for _, stmts, _ in s.cases:
                for t in stmts:
                    statement(t)

    for frag, _ in _fragments(elaborate(design)):
        if isinstance(frag, Instance) and frag.type == "MULT18X18D":
            count += 1
        for stmts in getattr(frag, "statements", {}).values():
            for s in stmts:
                statement(s)
    return count


# LUT4 model, coefficients fitted to nextpnr's LUT4 totals of the two SDRAM board builds
# (tiny: 25 980, ulx3s-minilm with its units on DSPs: 45 212; less LiteDRAM's 827), the LUT
# multipliers' extra from docs/units.md
_LUT_PER_PE = 95            # a processing element: accumulator adder, operand registers' muxes
_LUT_PER_LANE = 1450        # write-back requantizer + GELU + its requantizer, per array column
_LUT_SOFTMAX = 1900         # one IntSoftmax (+1900 with LUT multipliers)
_LUT_LAYERNORM = 1700       # one IntLayerNorm and its requantizer lane (+2700 with LUT ones)
_LUT_PER_COLUMN = 2290      # buffers' bank picks, feeder, loader, control, per array column
_LUT_FIXED = 3840
_LUT_MULTIPLIERS = {"softmax": 1900, "layernorm": 2700}


def estimate_core(config, design=None):
    """Estimated ECP5 resources of the encoder core of ``config``.

    ``design`` (default: the core, ``EncoderTop(config)``) is the elaboratable whose memories
    and multipliers are counted. Returns a dict: ``BRAM`` (DP16KD), ``DSP`` (MULT18X18D),
    ``LUTRAM`` (TRELLIS_DPR16X4 cells), ``LUT`` (LUT4, coarse, LUT RAM counted as two LUT4 per
    cell as :mod:`bertcore.flow.report` does) and ``memories`` (``(path, dp16kd, dpr16x4)`` of
    each memory, largest first).
    """
    if design is None:
        from ..core.encoder import EncoderTop
        design = EncoderTop(config)
    design = elaborate(design)
    mems = design_memories(design)
    cells = [memory_cells(mem) for mem in mems]
    bram = sum(b for b, _ in cells)
    lutram = sum(c for _, c in cells)
    n = config.array_cols
    extra = {u: cost if config.multipliers(u) == "lut" else 0
             for u, cost in _LUT_MULTIPLIERS.items()}
    lut = (_LUT_FIXED + _LUT_PER_PE * n * config.array_rows
           + (_LUT_PER_LANE + _LUT_PER_COLUMN) * n
           + config.softmax_units * (_LUT_SOFTMAX + extra["softmax"])
           + config.layernorm_units * (_LUT_LAYERNORM + extra["layernorm"])
           + 2 * lutram)
    return {"BRAM": bram, "DSP": design_multipliers(design), "LUTRAM": lutram, "LUT": lut,
            "memories": sorted(((m, b, c) for m, (b, c) in zip(mems, cells)),
                               key=lambda t: (-t[1], -t[2]))}
