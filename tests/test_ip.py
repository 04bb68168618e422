"""`bertcore generate` as IP delivery: manifest ports, Verilator waivers, FuseSoC core and the
example testbench, checked with the real tools (Verilator, FuseSoC through edalize)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertcore.cli import main
from bertcore.config import preset
from bertcore.toolchain import LINT_WAIVERS, ensure_verilator_env

from fixtures_bert import tiny_ckpt, tiny_dir, tiny_int  # noqa: F401

NAME = "enc"


@pytest.fixture(scope="module")
def ip(tmp_path_factory, tiny_int):
    """The tiny core generated with the parameter image of a tiny model."""
    from bertcore.quant.artifact import save_artifact
    base = tmp_path_factory.mktemp("ip")
    save_artifact(tiny_int, base / "tiny.safetensors")
    out = base / "ip"
    assert main(["generate", "--preset", "tiny", "--quantized", str(base / "tiny.safetensors"),
                 "--name", NAME, "-o", str(out)]) == 0
    return out


def _verilog_ports(text, module):
    """``{name: (direction, width)}`` of the ports of ``module`` in Verilog ``text``."""
    body = text[text.index(f"module {module}("):]
    body = body[:body.index("endmodule")]
    ports = {}
    for direction, rng, name in re.findall(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?"
                                           r"(\[\d+:0\]\s*)?\\?(\w+)\s*;", body, re.M):
        width = int(re.match(r"\[(\d+)", rng).group(1)) + 1 if rng else 1
        ports[name] = ("in" if direction == "input" else "out", width)
    return ports


def test_generated_files(ip):
    names = sorted(p.name for p in ip.iterdir())
    assert names == sorted([f"{NAME}.v", f"{NAME}.json", f"{NAME}.vlt", f"{NAME}.core",
                            f"{NAME}_tb.v", "params.bin", "params.hex", "example_act.hex",
                            "example_out.hex"])


def test_manifest_lists_every_port(ip):
    """The manifest's ports come from the component's signature: the same as the Verilog's."""
    man = json.loads((ip / f"{NAME}.json").read_text())
    listed = {p["name"]: (p["direction"], p["width"]) for p in man["ports"]}
    assert listed == _verilog_ports((ip / f"{NAME}.v").read_text(), NAME)
    assert listed["layer_cycles"] == ("out", 32) and listed["clk"] == ("in", 1)
    assert listed["failed_runs"] == ("out", 32) and listed["m_axis_act_tuser"] == ("out", 1)
    assert listed["s_axis_param_tdata"] == ("in", preset("tiny").bus_width)


def _warnings(output):
    return re.findall(r"^%Warning-(\w+):", output, re.M)


def test_waiver_file_makes_wall_lint_clean(ip, tmp_path):
    """Raw -Wall: thousands of warnings, all of waived kinds; with <name>.vlt: none, from the
    bare file name, a relative and an absolute path. A user's own file keeps its warnings."""
    verilator = ensure_verilator_env()
    raw = subprocess.run([verilator, "--lint-only", "-Wall", "-Wno-fatal", f"{NAME}.v"],
                         cwd=ip, capture_output=True, text=True)
    kinds = _warnings(raw.stderr + raw.stdout)
    assert len(kinds) > 1000 and set(kinds) <= set(LINT_WAIVERS), set(kinds)
    for cwd, path in ((ip, f"{NAME}.v"), (ip.parent, f"{ip.name}/{NAME}.v"),
                      (tmp_path, str(ip / f"{NAME}.v"))):
        r = subprocess.run([verilator, "--lint-only", "-Wall", str(ip / f"{NAME}.vlt"), path],
                           cwd=cwd, capture_output=True, text=True)
        assert r.returncode == 0 and not _warnings(r.stderr + r.stdout), r.stderr[-3000:]
    # the waivers are scoped to the core's file: the same kind of warning elsewhere stays
    user = tmp_path / "user.v"
    user.write_text("module user(input wire [7:0] a, output wire [3:0] y);\n"
                    "    assign y = a;\nendmodule\n")
    r = subprocess.run([verilator, "--lint-only", "-Wall", "-Wno-fatal", str(ip / f"{NAME}.vlt"),
                        str(user)], capture_output=True, text=True)
    assert "WIDTHTRUNC" in _warnings(r.stderr + r.stdout)


def test_testbench_lint_clean(ip):
    verilator = ensure_verilator_env()
    r = subprocess.run([verilator, "--lint-only", "-Wall", "--timing", f"{NAME}.vlt",
                        f"{NAME}.v", f"{NAME}_tb.v", "--top-module", f"{NAME}_tb"],
                       cwd=ip, capture_output=True, text=True)
    assert r.returncode == 0 and not _warnings(r.stderr + r.stdout), r.stderr[-3000:]


def _fusesoc(ip, build, *args):
    env_bin = str(Path(sys.executable).parent)
    cmd = [str(Path(env_bin) / "fusesoc"), "--cores-root", str(ip), "run", "--build-root",
           str(build), *args]
    import os
    env = dict(os.environ, PATH=env_bin + os.pathsep + os.environ.get("PATH", ""))
    ensure_verilator_env()
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)


def test_fusesoc_lint_and_sim(ip, tmp_path):
    """FuseSoC runs the core file's lint target (Verilator -Wall with the waivers) and its sim
    target (the example testbench in Verilator: bit-exact against the integer reference);
    the bench fails on a wrong expected beat."""
    if shutil.which("fusesoc", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("fusesoc is not installed (make install)")
    vlnv = f"bertcore:ip:{NAME}"
    r = _fusesoc(ip, tmp_path / "build", "--target", "lint", vlnv)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not _warnings(r.stdout + r.stderr)
    r = _fusesoc(ip, tmp_path / "build", "--target", "sim", vlnv, "--stall=20")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    beats = len((ip / "example_out.hex").read_text().split())
    assert f"PASS: {beats} output beats bit-exact" in r.stdout
    cycles = int(re.search(r"cycles=(\d+)", r.stdout).group(1))
    assert cycles > 0
    words = (ip / "example_out.hex").read_text().split()
    words[3] = f"{int(words[3], 16) ^ 0x100:0{len(words[3])}x}"
    bad = tmp_path / "bad.hex"
    bad.write_text("\n".join(words) + "\n")
    r = _fusesoc(ip, tmp_path / "build", "--target", "sim", "--run", vlnv, f"--expect={bad}")
    assert r.returncode != 0 and "FAIL: 1 of" in r.stdout, r.stdout[-2000:]
    # an image the core rejects (magic 0): its failure packet fails the bench with the cause
    lines = (ip / "params.hex").read_text().split()
    lines[0] = "0" * len(lines[0])
    bad = tmp_path / "bad_params.hex"
    bad.write_text("\n".join(lines) + "\n")
    r = _fusesoc(ip, tmp_path / "build", "--target", "sim", "--run", vlnv, f"--params={bad}")
    assert r.returncode != 0 and "the core rejected the run: cause code 1" in r.stdout, \
        r.stdout[-2000:]


def test_core_file_without_model(tmp_path):
    """Without --quantized there is no image: the core file has the lint target only."""
    from bertcore.core.generate import fusesoc_core
    text = fusesoc_core(preset("tiny"), "x", example=False)
    assert "  lint:" in text and "  sim:" not in text and "--quantized" in text
