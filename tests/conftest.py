"""Put the repository root on ``sys.path`` so tests can ``import sim.runner`` and ``tests.rtl_sim``,
and keep the package's simulation cache (:func:`bertcore.cache.cache_dir`) in the repository's
``build/cache/`` unless ``BERTCORE_CACHE`` says otherwise."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BERTCORE_CACHE", str(ROOT / "build" / "cache"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
