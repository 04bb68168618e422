"""The `bertcore quantize` and `bertcore embed` commands, including bad input."""

import subprocess
import sys
from pathlib import Path

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


def test_quantize_gelu_granularity(tmp_path, artifact, calib_file, tiny_dir):
    """--gelu-granularity reaches the options and the stored GELU scales: the default (auto,
    16-bit GELU outputs) is one scale per tensor, "channel" keeps one per channel."""
    out = tmp_path / "chan.safetensors"
    assert main(["quantize", "--model", str(tiny_dir), "--calibration", str(calib_file),
                 "--gelu-granularity", "channel", "-o", str(out)]) == 0
    chan, auto = load_artifact(out), load_artifact(artifact)
    assert chan.opts.gelu_granularity == "channel" and auto.opts.gelu_granularity == "auto"
    s_c, s_a = chan.t["layer.0.gelu.out_scale"], auto.t["layer.0.gelu.out_scale"]
    assert len(set(s_a.tolist())) == 1 and len(set(s_c.tolist())) > 1
    assert float(s_a[0]) == float(s_c.max())


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
    cfg = preset("minilm")
    util = perf.utilization(cfg, cfg.max_seq)       # modeled utilization at max_seq
    assert 0.85 <= util < 1
    assert "8+8" in minilm and f"{util:.1%}" in minilm
    header = out.splitlines()[0].split()
    assert minilm.split()[header.index("prob")] == str(cfg.prob_bits)
    assert minilm.split()[header.index("gelu")] == str(cfg.gelu_bits)
    # the ULX3S-85F's MiniLM core: 4x4 array, 96 tokens, 8-bit GELU outputs
    board = next(line for line in out.splitlines() if line.startswith("ulx3s-minilm")).split()
    assert board[header.index("array")] == "4x4" and board[header.index("max_seq")] == "96"
    assert board[header.index("gelu")] == "8" and board[header.index("prob")] == "16"


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
    (["generate", "--preset", "tiny", "--name", "module", "-o", "x"], "not a Verilog module name"),
    (["generate", "--preset", "tiny", "--name", "a$b", "-o", "x"], "not a Verilog module name"),
    (["generate", "--preset", "tiny", "--name", "", "-o", "x"], "not a Verilog module name"),
    (["generate", "--preset", "tiny", "--name", "n" * 5000, "-o", "x"],
     "--name is 5000 characters long, at most 200"),
    # sizes far past anything buildable: refused at once (not hours of elaboration, or
    # Python's OverflowError / MemoryError)
    (["generate", "--preset", "tiny", "--set", "hidden=4000000000000000000000", "-o", "x"],
     "hidden must be at most 8192"),
    (["generate", "--preset", "tiny", "--set", "layers=100000000000", "-o", "x"],
     "layers must be at most 256"),
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


# -- issue 14: every bad input found by trying the command line ----------------------------------

def _leftovers(directory):
    """Temporary files or directories that an aborted write left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


@pytest.fixture
def fake_generate(monkeypatch):
    """``bertcore generate`` without the Verilog conversion: records the configuration and
    writes one file (the routing, output handling and errors of the command are real)."""
    import bertcore.core.generate as gen
    seen = []

    def fake(config, outdir, name="bertcore_encoder", model=None):
        seen.append(config)
        path = outdir / f"{name}.v"
        path.write_text("module x; endmodule\n")
        return [path]
    monkeypatch.setattr(gen, "write_ip", fake)
    return seen


@pytest.mark.parametrize("value", ["1.5", "nan", "-1", "1", "inf", "fast"])
def test_sim_stall_range(capsys, value):
    """--stall 1.5 or nan never ended, -1 was accepted: 0 <= p < 1 before anything runs."""
    msg = _error(capsys, ["sim", "--preset", "tiny", "--stall", value])
    assert "--stall" in msg


@pytest.mark.parametrize("argv", [
    ["report", "--preset", "tiny", "--device", "up5k", "--freq", "0"],
    ["report", "--preset", "tiny", "--device", "up5k", "--pnr-timeout", "nan"],
    ["build", "--board", "ulx3s-85f", "--clock", "-50"],
    ["board", "status", "--port", "x", "--timeout", "-1"],
    ["board", "status", "--port", "x", "--retries", "-1"],
    ["board", "status", "--port", "x", "--baud", "0"],
    ["sim", "--preset", "tiny", "--seed", str(2 ** 70)],
    ["board", "run", "--port", "x", "--preset", "tiny", "--seed", "-3", "hi"],
])
def test_numeric_options_range_checked(capsys, argv):
    assert "must be" in _error(capsys, argv)


@pytest.mark.parametrize("content", [bytes(range(256)) * 2, b"hidden = 32\n\xff\xfe\n",
                                     "preset = 'tiny'\n".encode("utf-16")])
def test_config_file_not_utf8_text(capsys, tmp_path, content):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(content)
    msg = _error(capsys, ["generate", "--config", str(cfg), "-o", str(tmp_path / "o")])
    assert "not UTF-8 TOML text" in msg
    assert not (tmp_path / "o").exists()
    assert "is a directory" in _error(capsys, ["generate", "--config", str(tmp_path), "-o",
                                               str(tmp_path / "o")])


def test_readme_toml_form(capsys, tmp_path, fake_generate):
    """The README's form: `preset = "tiny"` at top level plus a [core] table."""
    from bertcore.config import load_config, preset
    cfg = tmp_path / "my.toml"
    cfg.write_text('preset = "tiny"\n\n[core]\narray_rows = 2\narray_cols = 2\n')
    assert load_config(config_file=cfg) == preset("tiny").replace(array_rows=2, array_cols=2)
    assert main(["generate", "--config", str(cfg), "--set", "resident=true", "-o",
                 str(tmp_path / "o")]) == 0
    assert fake_generate[-1] == preset("tiny").replace(array_rows=2, array_cols=2,
                                                       resident=True)
    # fields at top level and in [core] together, preset inside [core]
    cfg.write_text('array_rows = 2\n[core]\npreset = "tiny"\narray_cols = 2\n')
    assert load_config(config_file=cfg) == preset("tiny").replace(array_rows=2, array_cols=2)


@pytest.mark.parametrize("text, message", [
    ('preset = "tiny"\nspeeed = 3\n', "unknown key 'speeed' at top level"),
    ('colour = 1\n[core]\npreset = "tiny"\n', "unknown key 'colour' at top level"),
    ('preset = "tiny"\n[core]\nspeed = 3\n', r"unknown key 'speed' in \[core\]"),
    ('preset = "tiny"\n[board]\nname = "x"\n', "unknown key 'board' at top level"),
    ('array_rows = 2\n[core]\npreset = "tiny"\narray_rows = 4\n',
     r"array_rows is given both at top level and in \[core\]"),
    ('preset = "tiny"\n[core]\npreset = "minilm"\n', "preset is given twice"),
    ('preset = 3\n', "preset must be a name"),
    ('core = 3\n', r"core must be a table"),
])
def test_toml_unknown_keys_rejected_by_name(capsys, tmp_path, text, message):
    import re
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    msg = _error(capsys, ["generate", "--config", str(cfg), "-o", str(tmp_path / "o")])
    assert re.search(message, msg), msg
    assert str(cfg) in msg
    assert not (tmp_path / "o").exists()


def test_set_unknown_key_named(capsys, tmp_path):
    """`--set speed=fast` names the unknown key (not "must be an integer")."""
    msg = _error(capsys, ["generate", "--preset", "tiny", "--set", "speed=fast", "-o",
                          str(tmp_path / "o")])
    assert "unknown configuration key 'speed'" in msg


def test_output_under_a_file(capsys, tmp_path, artifact, tiny_dir):
    """-o below an existing file: one line naming the file, nothing written, no traceback."""
    f = tmp_path / "afile"
    f.write_text("keep")
    cases = [
        ["quantize", "--model", str(tiny_dir), "-o", str(f / "q.safetensors")],
        ["embed", "--quantized", str(artifact), "--backend", "int", "hi", "-o",
         str(f / "e.npy")],
        ["generate", "--preset", "tiny", "-o", str(f / "sub")],
        ["generate", "--preset", "tiny", "-o", str(f / "a" / "b")],
        ["board", "run", "--port", str(tmp_path / "no-port"), "--preset", "tiny", "hi", "-o",
         str(f / "x.npy")],
        ["report", "--preset", "tiny", "--device", "up5k", "--sweep", "array=2,4", "-o",
         str(f / "stem")],
        ["build", "--board", "ulx3s-85f", "-o", str(f / "b")],
    ]
    for argv in cases:
        msg = _error(capsys, argv)
        assert "is a file, not a directory" in msg, (argv, msg)
    assert f.read_text() == "keep"
    assert _leftovers(tmp_path) == []


def test_output_that_cannot_be_created(capsys, tmp_path, artifact):
    """A directory that cannot be created (under /proc, even for root): one line."""
    base = Path("/proc/bertcore-test-no-such-dir")
    msg = _error(capsys, ["generate", "--preset", "tiny", "-o", str(base / "out")])
    assert "cannot create" in msg or "not writable" in msg
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "hi",
                          "-o", str(base / "e.npy")])
    assert "does not exist" in msg
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "hi",
                          "-o", "/proc/e.npy"])
    assert "cannot write" in msg or "not writable" in msg


def test_empty_output_paths(capsys, tmp_path, monkeypatch, artifact):
    """`generate -o ""` wrote into the current directory: rejected, like the other commands."""
    monkeypatch.chdir(tmp_path)
    assert "output directory is empty" in _error(capsys, ["generate", "--preset", "tiny",
                                                          "-o", ""])
    assert "output" in _error(capsys, ["embed", "--quantized", str(artifact), "--backend",
                                       "int", "hi", "-o", ""])
    assert list(tmp_path.iterdir()) == []


def test_safetensors_lacking_a_tensor(capsys, tmp_path, tiny_dir):
    """A checkpoint whose model.safetensors lacks a tensor (a bias): one line naming it."""
    import shutil
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    for name in ("encoder.layer.1.output.dense.bias", "embeddings.token_type_embeddings.weight"):
        weights = load_file(str(tiny_dir / "model.safetensors"))
        del weights[name]
        save_file(weights, str(bad / "model.safetensors"))
        for argv in (["quantize", "--model", str(bad), "-o", str(tmp_path / "q.st")],
                     ["embed", "--model", str(bad), "--backend", "float", "hi", "-o",
                      str(tmp_path / "e.npy")]):
            msg = _error(capsys, argv)
            assert f"tensor {name} is missing" in msg
    assert not (tmp_path / "q.st").exists() and not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "cp1252"])
def test_input_in_another_encoding(capsys, tmp_path, artifact, encoding):
    inp = tmp_path / "in.txt"
    inp.write_bytes("café au lait\nnaïve señor\n".encode(encoding))
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "--input",
                          str(inp), "-o", str(tmp_path / "e.npy")])
    assert str(inp) in msg
    assert not (tmp_path / "e.npy").exists()


def test_input_is_a_directory(capsys, tmp_path, artifact):
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "--input",
                          str(tmp_path), "-o", str(tmp_path / "e.npy")])
    assert "is a directory" in msg


def test_quantize_model_checks(capsys, tmp_path, tiny_dir):
    """--model FILE says it is a file; the model is checked before the calibration file."""
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0")
    out = str(tmp_path / "q.st")
    msg = _error(capsys, ["quantize", "--model", str(f), "-o", out])
    assert "is a file, not a model directory" in msg
    msg = _error(capsys, ["quantize", "--model", str(tmp_path / "none"), "--calibration",
                          str(tmp_path / "no-cal.txt"), "-o", out])
    assert "model directory" in msg and "calibration" not in msg
    assert "calibration" in _error(capsys, ["quantize", "--model", str(tiny_dir),
                                            "--calibration", str(tmp_path / "no-cal.txt"),
                                            "-o", out])
    assert not (tmp_path / "q.st").exists()


def test_board_run_checks_output_before_the_run(capsys, tmp_path):
    """The output path is checked before the port is opened (not after the whole run)."""
    msg = _error(capsys, ["board", "run", "--port", str(tmp_path / "no-such-port"), "--preset",
                          "tiny", "hi", "-o", str(tmp_path / "missing" / "x.npy")])
    assert "output directory" in msg and "does not exist" in msg


def test_generate_interrupted_leaves_nothing(capsys, tmp_path, monkeypatch):
    """An interrupt (or error) in the middle of `generate` leaves no directory and no temp."""
    import bertcore.core.generate as gen

    def interrupted(config, outdir, name="bertcore_encoder", model=None):
        (outdir / f"{name}.v").write_text("half")
        raise KeyboardInterrupt
    monkeypatch.setattr(gen, "write_ip", interrupted)
    out = tmp_path / "out"
    assert main(["generate", "--preset", "tiny", "-o", str(out)]) == 130
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # into an existing directory: its files are untouched
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["generate", "--preset", "tiny", "-o", str(out)]) == 130
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and _leftovers(tmp_path) == []
    assert _leftovers(out) == []


def test_generate_into_existing_directory(tmp_path, fake_generate):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    (out / "bertcore_encoder.v").write_text("old")
    assert main(["generate", "--preset", "tiny", "-o", str(out)]) == 0
    assert (out / "bertcore_encoder.v").read_text().startswith("module")
    assert (out / "mine.txt").read_text() == "keep" and _leftovers(tmp_path) == []
    assert sorted(p.name for p in out.iterdir()) == ["bertcore_encoder.v", "mine.txt"]


def test_version(capsys):
    from importlib.metadata import version
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bertcore {version('bertcore')}"


@pytest.mark.parametrize("argv, words", [
    (["--frobnicate"], ["unknown option '--frobnicate'", "quantize", "generate", "board"]),
    ([], ["a command is required", "quantize", "embed", "sim"]),
    (["embed", "--frobnicate"], ["unknown option '--frobnicate'", "bertcore embed"]),
    (["sim", "--preset", "tiny", "--wave"], ["unknown option '--wave'"]),  # no abbreviations
    (["board"], ["a command is required", "run", "status"]),
    (["presets", "extra"], ["unknown argument 'extra'", "bertcore presets"]),
])
def test_unknown_options_and_missing_commands(capsys, argv, words):
    msg = _error(capsys, argv)
    for w in words:
        assert w in msg, msg


def test_help_texts_and_examples(capsys):
    """Every option of embed, --set's keys, --stall's range and --waves' path have help;
    each command has examples."""
    def helptext(*argv):
        assert main([*argv, "--help"]) == 0
        return " ".join(capsys.readouterr().out.split())
    embed = helptext("embed")
    for opt in ("--quantized", "--model", "--backend", "--simulator", "--input", "TEXT",
                "--output"):
        line = embed[embed.index(opt):]
        assert len(line.split(opt, 1)[1].strip()) > 10, opt
    assert "integer reference" in embed and "examples:" in embed
    sim = helptext("sim")
    assert "0 <= P < 1" in sim and "build/rtlsim/waves" in sim
    for key in ("hidden", "array_rows", "lut_multipliers", "resident"):
        assert key in sim.split("--set KEY=VALUE", 1)[1]
    for cmd in (["quantize"], ["generate"], ["report"], ["build"], ["board", "run"],
                ["board", "status"], ["presets"]):
        assert "examples: bertcore" in helptext(*cmd), cmd


def test_cli_functions_short():
    """No function of the command line is longer than 200 lines (the parser builder is split
    per command)."""
    import inspect
    import bertcore.cli as cli
    for name, fn in inspect.getmembers(cli, inspect.isfunction):
        if fn.__module__ == cli.__name__:
            assert len(inspect.getsource(fn).splitlines()) <= 200, name


# -- bad input found by an independent probe of the CLI ------------------------------------------

def _edited_artifact(src, dst, *, tensors=None, manifest=None):
    """A copy of the artifact ``src`` at ``dst``, well-formed as a file, with its tensors and
    manifest changed by the functions ``tensors(dict)`` and ``manifest(dict)`` (in place)."""
    import json
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    m = json.loads(meta["manifest"])
    if tensors:
        tensors(t)
    if manifest:
        manifest(m)
    meta["manifest"] = json.dumps(m)
    save_file(t, str(dst), metadata=meta)
    return dst


def _set(d, path, value):
    *keys, last = path.split(".")
    for k in keys:
        d = d[k]
    if value is None:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize("tensors, manifest, message", [
    (lambda t: t.pop("layer.1.ffn2.w"), None, "tensor layer.1.ffn2.w is missing"),
    (lambda t: t.__setitem__("layer.0.q.w", t["layer.0.q.w"][:16]), None,
     "layer.0.q.w is (16, 32), not (32, 32)"),
    (lambda t: t.__setitem__("layer.0.q.w", t["layer.0.q.w"].float()), None,
     "layer.0.q.w is torch.float32, not an integer tensor"),
    (lambda t: t["layer.0.v.e"].fill_(100), None, "layer.0.v.e has shifts 100..100"),
    (lambda t: t["emb.ln.e"].fill_(0), None, "emb.ln.e has shifts 0..0, outside 1..62"),
    (lambda t: t["out_scale"].fill_(float("nan")), None, "out_scale holds scales"),
    (lambda t: t.pop("layer.1.res2.m"), None, "layer 1's tensors differ from layer 0's"),
    (lambda t: t.__setitem__("emb.word", t["emb.word"][:10]), None, "emb.word is (10, 32)"),
    (None, lambda m: _set(m, "shape.layers", 3), "tensor layer.2.q.w is missing"),
    (None, lambda m: _set(m, "shape.layers", 1), "tensors for layers [0, 1], the shape says 1"),
    (None, lambda m: _set(m, "shape.heads", 0), "heads is 0, not a positive size"),
    (None, lambda m: _set(m, "shape.hidden", 64), "emb.word is (92, 32), not (92, 64)"),
    (None, lambda m: _set(m, "consts.layers", None), "constants for 2 layers expected"),
], ids=["missing-tensor", "short-matrix", "float-weight", "shift-100", "shift-0", "nan-scale",
        "layer-tensors-differ", "short-vocab", "layers-3", "layers-1", "heads-0", "hidden-64",
        "no-layer-constants"])
def test_artifact_inconsistent_inside(capsys, tmp_path, artifact, tensors, manifest, message):
    """An artifact that is a well-formed file but contradicts itself (edited, or damaged in
    its data) is refused when it is loaded, by every command, with one line saying what is
    wrong: not a traceback from a kernel, and never a run with a layer left out."""
    bad = _edited_artifact(artifact, tmp_path / "bad.safetensors", tensors=tensors,
                           manifest=manifest)
    out = tmp_path / "e.npy"
    assert message in _error(capsys, ["embed", "--quantized", str(bad), "--backend", "int",
                                      "hi", "-o", str(out)])
    assert message in _error(capsys, ["generate", "--preset", "tiny", "--quantized", str(bad),
                                      "-o", str(tmp_path / "g")])
    assert not out.exists() and not (tmp_path / "g").exists()


def test_artifact_bytes_flipped(capsys, tmp_path, artifact):
    """Every 97th byte of the tensors' data inverted (the header intact): refused at load."""
    import struct
    data = bytearray(artifact.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    for i in range(start, len(data), 97):
        data[i] ^= 0xFF
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    assert "quantized model" in _error(capsys, ["embed", "--quantized", str(bad), "--backend",
                                                "int", "hi", "-o", str(tmp_path / "e.npy")])


def test_text_argument_not_utf8(capsys, tmp_path, artifact):
    """Bytes that are not UTF-8 on the command line (Python holds them as surrogates)."""
    msg = _error(capsys, ["embed", "--quantized", str(artifact), "--backend", "int",
                          "\udcff\udcfe bad", "-o", str(tmp_path / "e.npy")])
    assert "not UTF-8 (byte 0xff at character 0)" in msg
    assert not (tmp_path / "e.npy").exists()


def test_file_system_refusals_one_line(capsys, tmp_path, artifact, monkeypatch):
    """What the file system refuses beyond the commands' own checks (a name too long, a cache
    directory that is a file) is one line with the path, not a traceback."""
    long = "a" * 300
    for argv in (["embed", "--quantized", str(artifact), "--backend", "int", "hi", "-o",
                  str(tmp_path / f"{long}.npy")],
                 ["embed", "--quantized", str(tmp_path / long), "--backend", "int", "hi", "-o",
                  str(tmp_path / "e.npy")]):
        assert "File name too long" in _error(capsys, argv)
    cache = tmp_path / "cache-file"
    cache.write_text("")
    monkeypatch.setenv("BERTCORE_CACHE", str(cache))
    msg = _error(capsys, ["sim", "--preset", "tiny", "--seq", "1"])
    assert "Not a directory" in msg and str(cache) in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-file"]


def test_model_config_and_weights_checked(capsys, tmp_path, tiny_dir):
    """A config.json that is JSON but not an object; a weight holding NaN, or one far too
    large to quantize."""
    import shutil
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "m"
    shutil.copytree(tiny_dir, bad)
    (bad / "config.json").write_text("[1, 2]")
    out = str(tmp_path / "q.st")
    assert "a JSON object expected, not list" in _error(capsys, ["quantize", "--model",
                                                                str(bad), "-o", out])
    shutil.copy(tiny_dir / "config.json", bad / "config.json")
    weights = load_file(str(tiny_dir / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    weights[name][0, 0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"))
    assert f"weight {name} holds NaN" in _error(capsys, ["quantize", "--model", str(bad),
                                                         "-o", out])
    weights[name][0, 0] = 1e30                 # finite, but past what int8 kernels can scale
    save_file(weights, str(bad / "model.safetensors"))
    assert "cannot quantize this model" in _error(capsys, ["quantize", "--model", str(bad),
                                                           "-o", out])
    assert not (tmp_path / "q.st").exists()


def test_garbage_pytorch_weights(capsys, tmp_path, tiny_dir):
    """A pytorch_model.bin that torch cannot load as weights: one short line, not torch's page
    that suggests ``weights_only=False`` (which would run code from the file)."""
    bad = tmp_path / "m"
    bad.mkdir()
    for name in ("config.json", "vocab.txt"):
        (bad / name).write_bytes((tiny_dir / name).read_bytes())
    (bad / "pytorch_model.bin").write_bytes(bytes(range(256)) * 8)
    msg = _error(capsys, ["quantize", "--model", str(bad), "-o", str(tmp_path / "q.st")])
    assert "unreadable weights" in msg and "weights_only" not in msg and len(msg) < 200


def test_float_backend_model_moved(capsys, tmp_path, tiny_dir, calib_file, monkeypatch):
    """The artifact keeps its model directory as an absolute path (the float backend works
    from any directory); a model directory that is gone is named as the artifact's."""
    import shutil
    model = tmp_path / "m"
    shutil.copytree(tiny_dir, model)
    monkeypatch.chdir(tmp_path)
    assert main(["quantize", "--model", "m", "--calibration", str(calib_file), "-o",
                 "q.safetensors"]) == 0
    assert load_artifact(tmp_path / "q.safetensors").source == str(model)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["embed", "--quantized", "../q.safetensors", "--backend", "float", "hi",
                 "-o", "e.npy"]) == 0
    shutil.rmtree(model)
    msg = _error(capsys, ["embed", "--quantized", "../q.safetensors", "--backend", "float",
                          "hi", "-o", "f.npy"])
    assert "quantized from" in msg and "no longer there" in msg


def test_messages_name_the_real_problem(capsys, tmp_path, artifact, tiny_dir):
    """A directory given as the artifact or the input, a device as the input, a trailing
    slash on the output, an empty build directory."""
    out = str(tmp_path / "e.npy")
    d = tmp_path / "d"
    d.mkdir()
    assert "is a directory, not a .safetensors file" in _error(
        capsys, ["embed", "--quantized", str(d), "--backend", "int", "hi", "-o", out])
    assert "is a directory, not a text file" in _error(
        capsys, ["quantize", "--model", str(tiny_dir), "--calibration", str(d), "-o", out])
    assert "not a regular file" in _error(
        capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "--input",
                 "/dev/null", "-o", out])
    assert "names a directory, not a file" in _error(
        capsys, ["embed", "--quantized", str(artifact), "--backend", "int", "hi", "-o",
                 str(tmp_path / "x") + "/"])
    assert "output directory is empty" in _error(capsys, ["build", "--board", "ulx3s-85f",
                                                          "-o", ""])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_output_through_a_symlink_and_to_a_device(tmp_path, artifact):
    """An output that is a symlink writes the file it points to and keeps the link; one that
    is a device is written, not replaced by a file (``-o /dev/null`` keeps /dev/null)."""
    import os
    import stat
    target = tmp_path / "real.npy"
    link = tmp_path / "link.npy"
    link.symlink_to(target)
    assert main(["embed", "--quantized", str(artifact), "--backend", "int", "hi", "-o",
                 str(link)]) == 0
    assert link.is_symlink() and np.load(target).shape[0] == 1
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    assert main(["embed", "--quantized", str(artifact), "--backend", "int", "hi", "-o",
                 str(dev)]) == 0
    assert stat.S_ISCHR(dev.stat().st_mode) and _leftovers(tmp_path) == []


def test_generate_file_in_the_way_moves_nothing(capsys, tmp_path, fake_generate):
    """A directory where ``generate`` writes a file: one line naming it, and the output
    directory as it was (no mix of new and old files)."""
    out = tmp_path / "out"
    (out / "bertcore_encoder.v").mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    msg = _error(capsys, ["generate", "--preset", "tiny", "-o", str(out)])
    assert "bertcore_encoder.v': it is a directory" in msg
    assert sorted(p.name for p in out.iterdir()) == ["bertcore_encoder.v", "mine.txt"]
    assert _leftovers(out) == [] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("url, message", [
    ("socket://:x", "a socket URL is socket://HOST:PORT"),
    ("socket://host", "a socket URL is socket://HOST:PORT"),
    ("socket://h:99999", "a socket URL is socket://HOST:PORT"),
    ("loop://?bad=1", "unknown options in the URL"),
])
def test_malformed_port_urls(capsys, url, message):
    """pyserial's messages for these were its format string's KeyError
    ('debug|info|warning|error'), and loop://?bad=1 was a traceback."""
    assert message in _error(capsys, ["board", "status", "--port", url, "--preset", "tiny"])
