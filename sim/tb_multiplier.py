"""cocotb bench of :class:`bertcore.rtl.multiplier.Multiplier` pairs (run from
tests/test_rtl_multiplier.py).

The DUT (``tests/test_rtl_multiplier.py``'s ``MultiplierPairs``) holds, per configuration ``k``,
the ``MULT18X18D`` form (simulated with ``sim/models/MULT18X18D.v``) and the behavioural form of
one multiplier, fed from shared ports ``a``, ``b`` (18 bits, each configuration uses its low
bits) and ``en``; their products leave on ``p_dsp_<k>`` and ``p_ref_<k>``.

Parameters (``sim.runner.tb_params()``): ``configs`` (list of ``{"a": [width, signed], "b":
[width, signed], "p": [width, signed], "latency": L}``:
the operand and product shapes), ``seed``, ``cycles``, ``en_low`` (probability of ``en`` low).
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from sim.runner import tb_params


def _value(raw, width, signed):
    raw &= (1 << width) - 1
    return raw - (1 << width) if signed and raw >> (width - 1) else raw


def _corner_operands(width, signed):
    if signed:
        return [-(1 << (width - 1)), (1 << (width - 1)) - 1, -1, 0, 1]
    return [0, (1 << width) - 1, 1, 1 << (width - 1)]


@cocotb.test()
async def products_match(dut):
    """Every cycle, both forms of every configuration show the product of the operands
    presented ``latency`` enabled cycles earlier (zeros before that and after a reset), under a
    random ``en``."""
    params = tb_params()
    rng = random.Random(params["seed"])
    configs = params["configs"]
    Clock(dut.clk, 10, unit="ns").start(start_high=False)
    dut.rst.value = 0
    dut.a.value = 0
    dut.b.value = 0
    dut.en.value = 1
    # the products in flight, oldest first: latency entries per configuration
    pipes = [[0] * cfg["latency"] for cfg in configs]
    corners = [(x, y) for x in _corner_operands(18, True) for y in _corner_operands(18, True)]
    await RisingEdge(dut.clk)
    for cycle in range(params["cycles"]):
        if cycle < len(corners):
            a, b = (v & ((1 << 18) - 1) for v in corners[cycle])
            en = 1
        else:
            a, b = rng.getrandbits(18), rng.getrandbits(18)
            en = int(rng.random() >= params["en_low"])
        # one reset pulse half-way (the domain's synchronous reset clears every register,
        # whatever en is)
        rst = int(cycle == params["cycles"] // 2)
        dut.a.value, dut.b.value, dut.en.value, dut.rst.value = a, b, en, rst
        await ReadOnly()
        for k, cfg in enumerate(configs):
            expected = pipes[k][0] if cfg["latency"] else None
            got_dsp = getattr(dut, f"p_dsp_{k}").value
            got_ref = getattr(dut, f"p_ref_{k}").value
            dsp = _value(int(got_dsp), *cfg["p"])
            ref = _value(int(got_ref), *cfg["p"])
            assert dsp == ref == expected, (
                f"cycle {cycle}, config {k} {cfg}: MULT18X18D {dsp}, behavioural {ref}, "
                f"expected {expected}")
        await RisingEdge(dut.clk)
        if rst:
            pipes = [[0] * cfg["latency"] for cfg in configs]
        elif en:
            for k, cfg in enumerate(configs):
                if cfg["latency"]:
                    x = _value(a, *cfg["a"])
                    y = _value(b, *cfg["b"])
                    pipes[k] = pipes[k][1:] + [x * y]
