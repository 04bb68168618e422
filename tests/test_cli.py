"""The `bertcore quantize` and `bertcore embed` commands, including bad input."""

import subprocess
import sys

import numpy as np
import pytest

from bertcore.cli import main
from bertcore.quant.artifact import load_artifact

from fixtures_bert import TINY_CALIBRATION, TINY_EVAL, tiny_dir  # noqa: F401


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cal") / "cal.txt"
    p.write_text("\n".join(TINY_CALIBRATION) + "\n")
    return p


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_dir, calib_file):
    out = tmp_path_factory.mktemp("q") / "tiny.safetensors"
    assert main(["quantize", "--model", str(tiny_dir), "--calibration", str(calib_file),
                 "-o", str(out)]) == 0
    return out


def _error(capsys, argv):
    """Run the CLI, expect exit code 2 and exactly one readable line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bertcore: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_quantize_writes_artifact(artifact, tiny_dir):
    m = load_artifact(artifact)
    assert m.source == str(tiny_dir)
    assert m.consts["calibration"]["texts"] == len(TINY_CALIBRATION)


def test_embed_int_and_float(tmp_path, artifact, tiny_dir):
    out_i, out_f = tmp_path / "i.npy", tmp_path / "f.npy"
    assert main(["embed", "--quantized", str(artifact), "--backend", "int", *TINY_EVAL,
                 "-o", str(out_i)]) == 0
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(TINY_EVAL) + "\n")
    assert main(["embed", "--model", str(tiny_dir), "--backend", "float", "--input", str(inp),
                 "-o", str(out_f)]) == 0
    a, b = np.load(out_i), np.load(out_f)
    assert a.shape == b.shape == (len(TINY_EVAL), 32) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() > 0.98, cos
    # order is kept: each int embedding is closest to its own float embedding
    assert (np.argmax(a @ b.T, axis=1) == np.arange(len(TINY_EVAL))).all()
    # the float backend of an artifact uses the model it came from
    out_f2 = tmp_path / "f2.npy"
    assert main(["embed", "--quantized", str(artifact), "--backend", "float", *TINY_EVAL,
                 "-o", str(out_f2)]) == 0
    assert np.allclose(np.load(out_f2), b, atol=1e-6)


def test_missing_model_dir(capsys, tmp_path):
    msg = _error(capsys, ["quantize", "--model", str(tmp_path / "nope"), "-o",
                          str(tmp_path / "o.safetensors")])
    assert "does not exist" in msg
    assert not (tmp_path / "o.safetensors").exists()


def test_malformed_model_dir(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{")
    msg = _error(capsys, ["quantize", "--model", str(tmp_path), "-o", str(tmp_path / "o.st")])
    assert "malformed config.json" in msg
    assert not (tmp_path / "o.st").exists()


def test_empty_calibration_file(capsys, tmp_path, tiny_dir):
    cal = tmp_path / "empty.txt"
    cal.write_text("\n  \n")
    msg = _error(capsys, ["quantize", "--model", str(tiny_dir), "--calibration", str(cal),
                          "-o", str(tmp_path / "o.st")])
    assert "empty" in msg
    assert not (tmp_path / "o.st").exists()


@pytest.mark.parametrize("name, data, expect", [
    ("one-line", b"the dog runs in the park\n", "at least 2"),
    ("too-long", ("the dog runs in the park " * 30 + "\n").encode() * 3, "longer than"),
    ("latin-1", "the caf\u00e9 is open\nthe dog runs\n".encode("latin-1"), "not UTF-8"),
    ("utf-16", "the dog runs\nthe cat sleeps\n".encode("utf-16"), "not UTF-8"),
    ("nul", b"the dog\x00runs\nthe cat sleeps\n", "not a text file"),
])
def test_bad_calibration_file(capsys, tmp_path, tiny_dir, name, data, expect):
    """One clear line, exit code 2, nothing written."""
    cal = tmp_path / f"{name}.txt"
    cal.write_bytes(data)
    msg = _error(capsys, ["quantize", "--model", str(tiny_dir), "--calibration", str(cal),
                          "-o", str(tmp_path / "o.st")])
    assert expect in msg, msg
    assert not (tmp_path / "o.st").exists()
    assert [p.name for p in tmp_path.iterdir()] == [cal.name]


def test_calibration_file_with_bom_and_some_long_texts(tmp_path, tiny_dir):
    """A UTF-8 byte-order mark is dropped; texts past the limit are truncated, not refused."""
    cal = tmp_path / "bom.txt"
    cal.write_bytes(b"\xef\xbb\xbf" + "\n".join(TINY_CALIBRATION + ["the dog " * 80]).encode())
    out = tmp_path / "o.st"
    assert main(["quantize", "--model", str(tiny_dir), "--calibration", str(cal),
                 "-o", str(out)]) == 0
    assert load_artifact(out).consts["calibration"]["texts"] == len(TINY_CALIBRATION) + 1


def test_artifact_of_another_version(capsys, tmp_path, artifact):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(artifact), framework="pt") as f:
        meta = dict(f.metadata())
    meta["version"] = "999"
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(artifact)), str(old), metadata=meta)
    msg = _error(capsys, ["embed", "--quantized", str(old), "--backend", "int", "hi",
                          "-o", str(tmp_path / "e.npy")])
    assert "version" in msg
    assert not (tmp_path / "e.npy").exists()


def test_empty_input(capsys, tmp_path, artifact):
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "  ",
                          "-o", str(tmp_path / "e.npy")])
    assert "empty input" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int",
                          "--input", str(empty), "-o", str(tmp_path / "e.npy")])
    assert "empty" in msg
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int",
                          "-o", str(tmp_path / "e.npy")])
    assert "no input" in msg
    assert not (tmp_path / "e.npy").exists()


def test_usage_errors(capsys, tmp_path, artifact):
    assert "--backend" in _error(capsys, ["embed", "--quantized", str(artifact), "x",
                                          "-o", str(tmp_path / "e.npy")])
    assert "needs --quantized" in _error(capsys, ["embed", "--model", "m", "--backend", "int",
                                                  "x", "-o", str(tmp_path / "e.npy")])
    assert "invalid choice" in _error(capsys, ["frobnicate"])
    assert "does not exist" in _error(capsys, ["quantize", "-o", str(tmp_path / "no" / "o.st")])


def test_console_script_exit_code_and_one_line(tmp_path):
    """The real process: exit status 2 and a single stderr line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "bertcore.cli", "quantize", "--model",
                        str(tmp_path / "missing"), "-o", str(tmp_path / "o.st")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], r.stderr


def test_presets_lists_key_figures(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "minilm", "bert-base"):
        assert name in out
    assert "16x16" in out and "MAC/cycle" in out
    minilm = next(line for line in out.splitlines() if line.startswith("minilm"))
    from bertcore.config import preset
    from bertcore.core import perf
    util = perf.utilization(preset("minilm"), 128)    # modeled utilization at max_seq
    assert 0.9 <= util < 1
    assert "8+8" in minilm and f"{util:.1%}" in minilm


def test_generate_tiny_with_image(tmp_path, artifact):
    import json
    from bertcore.core.image import image_beats
    from bertcore.config import preset
    out = tmp_path / "gen"
    assert main(["generate", "--preset", "tiny", "--quantized", str(artifact), "--name", "enc",
                 "-o", str(out)]) == 0
    v = (out / "enc.v").read_text()
    assert "module enc(" in v
    for port in ("s_axis_param_tdata", "s_axis_act_tlast", "m_axis_act_tready", "busy", "error"):
        assert port in v
    man = json.loads((out / "enc.json").read_text())
    assert man["config"] == json.loads(json.dumps(preset("tiny").to_dict()))   # tuples: lists
    beats = image_beats(preset("tiny"))
    assert man["parameter_image"]["beats"] == beats
    assert (out / "params.bin").stat().st_size == beats * 4
    assert len((out / "params.hex").read_text().split()) == beats


@pytest.mark.parametrize("argv, message", [
    (["generate", "--preset", "huge", "-o", "x"], "unknown preset 'huge'"),
    (["generate", "--preset", "tiny", "--set", "heads=5", "-o", "x"], "divisible by heads"),
    (["generate", "--preset", "tiny", "--set", "speed=9", "-o", "x"], "unknown configuration key"),
    (["generate", "-o", "x"], "give --preset NAME or --config"),
    (["generate", "--preset", "tiny", "--name", "9bad", "-o", "x"], "not a Verilog module name"),
])
def test_generate_bad_input(capsys, tmp_path, argv, message):
    argv = [a if a != "x" else str(tmp_path / "out") for a in argv]
    assert message in _error(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_generate_config_file_errors(capsys, tmp_path, artifact):
    bad = tmp_path / "c.toml"
    bad.write_text("[core\nhidden = 3")
    assert "syntax error" in _error(capsys, ["generate", "--config", str(bad), "-o",
                                             str(tmp_path / "o")])
    assert "the model has hidden=32" in _error(capsys, ["generate", "--preset", "minilm",
                                                        "--quantized", str(artifact), "-o",
                                                        str(tmp_path / "o")])


def test_generate_unsupported_core_shape(capsys, tmp_path):
    """A valid configuration the core cannot build (non-square array): one line, exit 2."""
    msg = _error(capsys, ["generate", "--preset", "tiny", "--set", "array_rows=2", "-o",
                          str(tmp_path / "o")])
    assert "array" in msg
