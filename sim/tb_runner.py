"""cocotb bench of :mod:`sim.runner` itself (``tests/test_rtl_common.py``): on any design, one
test that passes and one that cocotb skips."""

import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def passes(dut):
    """Passes."""
    await Timer(1, "ns")


@cocotb.test(skip=True)
async def skipped(dut):
    """Skipped: the runner must report it as a failure."""
    raise AssertionError("a skipped test ran")
