"""Simulation models of vendor primitives that bertcore instantiates, and what simulating a
design with them needs.

* :data:`MULT18X18D`: our Verilog model of the ECP5 ``MULT18X18D`` (see its header);
* :data:`ECP5`: a stand-in platform for elaborating a design as for an ECP5 device, e.g.
  ``run_cocotb(dut, ..., platform=ECP5, models=[MULT18X18D])``: it only says ``family ==
  "ecp5"``, which is all that :class:`bertcore.rtl.multiplier.Multiplier` asks a platform.
"""

from pathlib import Path
from types import SimpleNamespace

__all__ = ["MULT18X18D", "ECP5"]

#: The Verilog model of the ECP5 MULT18X18D.
MULT18X18D = Path(__file__).resolve().with_name("MULT18X18D.v")

#: Elaborate as for an ECP5 device (see the module documentation).
ECP5 = SimpleNamespace(family="ecp5")
