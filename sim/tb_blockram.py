"""cocotb bench of :class:`bertcore.rtl.blockram.BlockRam` pairs (run from
tests/test_rtl_blockram.py).

The DUT (``tests/test_rtl_blockram.py``'s ``BlockRamPairs``) holds, per configuration ``k``,
the ``DP16KD`` form (simulated with ``sim/models/DP16KD.v``) and the behavioural form of one
memory, fed from shared ports (``w_addr``, ``r_addr``, ``w_data``: each configuration uses their
low bits; ``w_en``, ``r_en``, ``o_en``); their read data leave on ``d_bram_<k>`` and
``d_ref_<k>``.

Parameters (``sim.runner.tb_params()``): ``configs`` (list of ``{"width": W, "depth": D}``),
``seed``, ``cycles``, ``addr_bits``, ``data_bits`` (the shared ports' widths).
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from sim.runner import tb_params


@cocotb.test()
async def read_data_match(dut):
    """Every cycle, both forms of every configuration show the word a reference model of the
    two read registers gives, under random writes, reads and enables (never a read of the
    address written in the same cycle: undefined on ECP5)."""
    params = tb_params()
    rng = random.Random(params["seed"])
    configs = params["configs"]
    Clock(dut.clk, 10, unit="ns").start(start_high=False)
    dut.rst.value = 0
    mems = [[0] * cfg["depth"] for cfg in configs]
    read = [0] * len(configs)          # each configuration's read register
    out = [0] * len(configs)           # and its output register
    dut.w_en.value = dut.r_en.value = dut.o_en.value = 0
    dut.w_addr.value = dut.r_addr.value = dut.w_data.value = 0
    await RisingEdge(dut.clk)
    for cycle in range(params["cycles"]):
        w_addr = rng.getrandbits(params["addr_bits"])
        r_addr = rng.getrandbits(params["addr_bits"])
        # the first cycles fill the memories, then a mix
        w_en = int(cycle < 64 or rng.random() < 0.4)
        r_en = int(rng.random() < 0.7)
        o_en = int(rng.random() < 0.7)
        w_data = rng.getrandbits(params["data_bits"])
        # a reset half-way: it clears the output registers, not the memories. The first cycle
        # and the one after the reset read and do not load the output register (BlockRam's
        # contract: the read register after a reset differs between the forms, and the
        # behavioural one's starts undefined in a four-state simulator)
        rst = int(cycle == params["cycles"] // 2)
        if cycle in (0, params["cycles"] // 2 + 1):
            r_en, o_en = 1, 0
        addrs = [(w_addr % cfg["depth"], r_addr % cfg["depth"]) for cfg in configs]
        if any(w == r for w, r in addrs) and w_en and r_en:
            w_en = 0                  # no read of the word written in this cycle
        dut.w_addr.value, dut.r_addr.value, dut.w_data.value = w_addr, r_addr, w_data
        dut.w_en.value, dut.r_en.value, dut.o_en.value, dut.rst.value = w_en, r_en, o_en, rst
        await ReadOnly()
        for k, cfg in enumerate(configs):
            bram = int(getattr(dut, f"d_bram_{k}").value)
            ref = int(getattr(dut, f"d_ref_{k}").value)
            assert bram == ref == out[k], (
                f"cycle {cycle}, config {k} {cfg}: DP16KD {bram:#x}, behavioural {ref:#x}, "
                f"expected {out[k]:#x}")
        await RisingEdge(dut.clk)
        for k, cfg in enumerate(configs):
            wa, ra = addrs[k]
            word = mems[k][ra]         # the word before this edge's write
            if w_en:
                mems[k][wa] = w_data & ((1 << cfg["width"]) - 1)
            if rst:
                out[k] = 0
                continue
            if o_en:
                out[k] = read[k]
            if r_en:
                read[k] = word
