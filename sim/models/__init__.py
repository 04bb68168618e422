"""Simulation models of vendor primitives that bertcore instantiates, and what simulating a
design with them needs.

* :data:`MULT18X18D`: our Verilog model of the ECP5 ``MULT18X18D`` (see its header);
* :data:`DP16KD`: our Verilog model of the ECP5 ``DP16KD`` block RAM in its 18-bit mode;
* :data:`ECP5`: a stand-in platform for elaborating a design as for an ECP5 device, e.g.
  ``run_cocotb(dut, ..., platform=ECP5, models=[MULT18X18D])``: it only says ``family ==
  "ecp5"``, which is all that :class:`bertcore.rtl.multiplier.Multiplier` and
  :class:`bertcore.rtl.blockram.BlockRam` ask a platform.
"""

from pathlib import Path
from types import SimpleNamespace

__all__ = ["MULT18X18D", "DP16KD", "ECP5"]

#: The Verilog model of the ECP5 MULT18X18D.
MULT18X18D = Path(__file__).resolve().with_name("MULT18X18D.v")
#: The Verilog model of the ECP5 DP16KD.
DP16KD = Path(__file__).resolve().with_name("DP16KD.v")

#: Elaborate as for an ECP5 device (see the module documentation).
ECP5 = SimpleNamespace(family="ecp5")
