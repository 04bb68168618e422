"""`embed --backend rtl` and `bertcore sim`: the emitted core in Verilator and Icarus vs the reference."""

import numpy as np
import pytest

from bertcore.cli import main

from fixtures_bert import (TINY_CALIBRATION, TINY_EVAL, minilm_ckpt,  # noqa: F401
                           minilm_int, tiny_dir)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_dir):  # noqa: F811
    cal = tmp_path_factory.mktemp("cal") / "cal.txt"
    cal.write_text("\n".join(TINY_CALIBRATION) + "\n")
    out = tmp_path_factory.mktemp("q") / "tiny.safetensors"
    assert main(["quantize", "--model", str(tiny_dir), "--calibration", str(cal),
                 "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("simulator, texts, pack", [
    ("verilator", TINY_EVAL, []), ("verilator", TINY_EVAL[:3], ["--no-pack"]),
    ("icarus", TINY_EVAL[1:], [])])
def test_embed_rtl_is_identical_to_int(tmp_path, artifact, simulator, texts, pack):
    """Packed runs (the default of --backend rtl) and one run per text (--no-pack)."""
    rtl, ref = tmp_path / "rtl.npy", tmp_path / "int.npy"
    assert main(["embed", "--quantized", str(artifact), "--backend", "rtl", "--simulator",
                 simulator, *pack, *texts, "-o", str(rtl)]) == 0
    assert main(["embed", "--quantized", str(artifact), "--backend", "int", *texts,
                 "-o", str(ref)]) == 0
    a, b = np.load(rtl), np.load(ref)
    assert a.shape == (len(texts), 32)
    assert np.array_equal(a, b)


def test_rtl_cycles_and_outputs(artifact):
    import torch
    from bertcore.config import preset
    from bertcore.core.perf import run_cycles
    from bertcore.embed import rtl_embeddings
    from bertcore.quant.artifact import load_artifact
    qm = load_artifact(artifact)
    emb, info = rtl_embeddings(qm, TINY_EVAL[:2])
    for y, t, cycles in zip(info["outputs"], TINY_EVAL, info["cycles"]):
        ids = qm.encode_text(t)
        assert torch.equal(y, qm.forward_ids(ids))
        model = run_cycles(preset("tiny"), len(ids))
        assert abs(cycles - model) / model < 0.01, (cycles, model)


def test_check_core_counters():
    """The simulation reports the core's performance counters per run (what
    ``bench/utilization.py`` reads): ``array_beats`` exact, ``layer_cycles`` near the model."""
    from bertcore.config import preset
    from bertcore.core.perf import array_beats, layer_cycles
    from bertcore.rtlsim import check_core, random_model
    cfg = preset("tiny")
    ok, rows, res = check_core(cfg, random_model(cfg), [3, 16], stall=0.1)
    assert ok and [n for n, _, _ in rows] == [3, 16]
    for (n, _, _), run in zip(rows, res.runs):
        assert run["array_beats"] == array_beats(cfg, n)
        assert abs(run["layer_cycles"] - layer_cycles(cfg, n)) <= 0.01 * run["layer_cycles"]


def test_direct_harness_equals_cocotb():
    """The C++ main (``harness="direct"``, what ``embed --backend rtl`` and the benches use)
    drives the core as the cocotb driver does: the same outputs, core counters and simulated
    cycles, plain and packed, on a bus of 48 bits (an integer port) and of 128 (a wide one)."""
    from bertcore.config import preset
    from bertcore.rtlsim import check_core, random_model
    fields = ("out", "cycles", "sim_cycles", "error", "failed", "array_beats", "layer_cycles",
              "failed_runs")
    for bus in (48, 128):
        cfg = preset("tiny").replace(bus_width=bus)
        model = random_model(cfg)
        for pack in (False, True):
            got = {}
            for harness in ("direct", "cocotb"):
                ok, rows, res = check_core(cfg, model, [1, 9, 3, 16], pack=pack,
                                           harness=harness)
                assert ok, (harness, rows)
                got[harness] = [[run[f] for f in fields] for run in res.runs]
            assert got["direct"] == got["cocotb"]


def test_direct_harness_image_file(tmp_path):
    """The direct harness writes the image into the top's ROM from :func:`image_file` (not
    ``$readmemh``): beats as little-endian 32-bit limbs, ``tlast`` on the last. An image longer
    than the ROM, a word wider than the bus, a truncated file or another file are one error
    line, no run."""
    import struct
    import subprocess
    import torch
    from bertcore.checkpoint import BertError
    from bertcore.config import preset
    from bertcore.core.image import pack_activations, pack_parameter_image
    from bertcore.rtlsim import CoreSimulator, image_file, random_model
    from bertcore.rtlsim_main import write_job
    cfg = preset("tiny")                                # 33-bit beats: two limbs each
    data = image_file([5, 1 << 31, (1 << 32) + 7], cfg)
    assert data[:12] == b"BCIM" + struct.pack("<II", 2, 3)
    assert struct.unpack("<6I", data[12:]) == (5, 0, 1 << 31, 0, 7, 1)   # masked, tlast set
    assert image_file([], cfg) == b"BCIM" + struct.pack("<II", 2, 0)
    model = random_model(cfg)
    words = pack_parameter_image(model, cfg)
    sim = CoreSimulator(cfg, "verilator")
    packet = (pack_activations(torch.zeros(3, cfg.hidden, dtype=torch.int64), cfg), 3)
    assert sim.run(words, [packet]).runs[0]["failed"] == 0
    with pytest.raises(BertError, match=rf"an image of {len(words) + 1} beats; the ROM holds "
                                        rf"{len(words)}"):
        sim.run(words + [0], [packet])
    # words are integers that fit the bus (numpy's too), checked before any file is written
    assert sim.run(np.array(words, dtype=np.uint64), [packet]).runs[0]["failed"] == 0
    for bad, why in [([1 << 32] + words[1:], "does not fit the 32-bit bus"),
                     (words[:-1] + [-1], "does not fit the 32-bit bus"),
                     ([0.5] + words[1:], "must be a sequence of integers")]:
        with pytest.raises(BertError, match=why):
            sim.run(bad, [packet])
    binary = sim._build_dirs["direct"] / "obj" / "sim"
    write_job(tmp_path / "job.txt", [])
    for content, why in [(image_file(words, cfg)[:-3], "its beats do not match the ROM's"),
                         (b"\x00" * 64, "is not a bertcore image file")]:
        (tmp_path / "p.bin").write_bytes(content)
        done = subprocess.run([str(binary), f"+job={tmp_path / 'job.txt'}",
                               f"+result={tmp_path / 'r.json'}",
                               f"+params_bin={tmp_path / 'p.bin'}"],
                              capture_output=True, text=True)
        assert done.returncode == 2 and why in done.stderr, done.stderr
        assert not (tmp_path / "r.json").exists()


def test_gated_equals_ungated():
    """Verilator's default build, the idle passes on stopped clocks (``gate_idle``), runs as
    the plain core does: the same outputs, counters and simulated cycles, plain and packed
    runs of several lengths (L = 1: the passes idle between short bursts; 16: the longest)."""
    from bertcore.config import preset
    from bertcore.rtlsim import CoreSimulator, check_core, random_model
    fields = ("out", "cycles", "sim_cycles", "error", "failed", "array_beats", "layer_cycles",
              "failed_runs")
    cfg = preset("tiny")
    assert CoreSimulator(cfg).gate_idle and not CoreSimulator(cfg, "icarus").gate_idle
    assert not CoreSimulator(cfg, waves=True).gate_idle
    # the two builds are the two cores (else the comparison below compares one with itself)
    for gate in (True, False):
        verilog = (CoreSimulator(cfg, gate_idle=gate).build() / "bertcore_encoder.v").read_text()
        assert ("smax_on" in verilog) == gate and ("negedge" in verilog) == gate
    model = random_model(cfg)
    for pack in (False, True):
        got = {}
        for gate in (True, False):
            ok, rows, res = check_core(cfg, model, [1, 9, 3, 16, 2], pack=pack, gate_idle=gate)
            assert ok, (gate, rows)
            got[gate] = [[run[f] for f in fields] for run in res.runs]
        assert got[True] == got[False]


def test_harness_choice():
    from bertcore.checkpoint import BertError
    from bertcore.config import preset
    from bertcore.rtlsim import CoreSimulator
    cfg = preset("tiny")
    assert CoreSimulator(cfg).harness_for() == "direct"
    assert CoreSimulator(cfg).harness_for(stall=0.2) == "cocotb"
    assert CoreSimulator(cfg, waves=True).harness_for() == "cocotb"
    assert CoreSimulator(cfg, "icarus").harness_for() == "cocotb"
    assert CoreSimulator(cfg, harness="cocotb").harness_for() == "cocotb"
    with pytest.raises(BertError, match="without stalls or waveforms"):
        CoreSimulator(cfg, harness="direct").harness_for(stall=0.1)
    with pytest.raises(BertError, match="without stalls or waveforms"):
        CoreSimulator(cfg, "icarus", harness="direct").harness_for()
    with pytest.raises(BertError, match="unknown harness"):
        CoreSimulator(cfg, harness="vpi")


def test_build_options_are_their_own_build():
    """``verilator_args`` and ``opt_fast`` (what bench/verilator_speed.py varies) reach the
    Verilator and make commands, and a build with them is a cache entry of its own."""
    from bertcore.checkpoint import BertError
    from bertcore.config import preset
    from bertcore.rtlsim import CoreSimulator
    cfg = preset("tiny")
    plain = CoreSimulator(cfg).build()
    varied = CoreSimulator(cfg, verilator_args=["--x-initial", "unique"], opt_fast="-O1").build()
    assert varied != plain
    log = (varied / "build.log").read_text()
    assert "OPT_FAST=-O1" in log and "OPT_FAST=-O3" not in log
    assert "--x-initial unique" in log
    assert "OPT_FAST=-O1" not in (plain / "build.log").read_text()
    with pytest.raises(BertError, match="options of a Verilator build"):
        CoreSimulator(cfg, "icarus", opt_fast="-O1")
    for bad in ("yes", 1):
        with pytest.raises(BertError, match="gate_idle must be a bool or None"):
            CoreSimulator(cfg, gate_idle=bad)


def test_sim_command_plain_core(capsys, monkeypatch):
    """``bertcore sim --no-gate``: Verilator on the plain core (one clock), bit-exact; without
    the flag the simulator's default (gated in Verilator)."""
    import bertcore.rtlsim
    check_core, asked = bertcore.rtlsim.check_core, []

    def spy(*args, **kwargs):
        asked.append(kwargs["gate_idle"])
        return check_core(*args, **kwargs)

    monkeypatch.setattr(bertcore.rtlsim, "check_core", spy)
    assert main(["sim", "--preset", "tiny", "--seq", "2,7", "--no-gate", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "FAIL" not in out
    assert main(["sim", "--preset", "tiny", "--seq", "3", "--quiet"]) == 0
    assert asked == [False, None]


def test_sim_command_with_stalls(capsys):
    assert main(["sim", "--preset", "tiny", "--seq", "1,5", "--stall", "0.3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "FAIL" not in out


def test_rtl_bad_input(capsys, tmp_path, artifact):
    long = " ".join(["the dog runs"] * 10)
    assert main(["embed", "--quantized", str(artifact), "--backend", "rtl", long,
                 "-o", str(tmp_path / "e.npy")]) == 2
    assert "the core holds at most 16" in capsys.readouterr().err
    assert main(["sim", "--preset", "tiny", "--seq", "0,4"]) == 2
    assert "outside 1..16" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


def test_no_preset_for_model(capsys, tmp_path):
    from bertcore.testing import make_tiny_checkpoint
    d = make_tiny_checkpoint(tmp_path / "odd", hidden=24, heads=2, ffn=48, layers=1)
    art = tmp_path / "odd.safetensors"
    assert main(["quantize", "--model", str(d), "-o", str(art)]) == 0
    assert main(["embed", "--quantized", str(art), "--backend", "rtl", "the dog",
                 "-o", str(tmp_path / "e.npy")]) == 2
    assert "no core preset runs this model (hidden=24" in capsys.readouterr().err


def test_rtl_failure_packet_is_one_error_line(capsys, tmp_path, artifact, monkeypatch):
    """A run the core rejects (here: an image whose magic is 0) ends with its failure packet;
    the host turns it into one error line naming the cause, exit code 2, no output file."""
    import bertcore.core.image
    from bertcore.core.image import FAIL_HEADER, RunFailed, pack_parameter_image

    def bad_image(model, config):
        words = pack_parameter_image(model, config)
        return [0] + words[1:]

    # (embed imports it from bertcore.core.image when it runs)
    monkeypatch.setattr(bertcore.core.image, "pack_parameter_image", bad_image)
    out = tmp_path / "e.npy"
    assert main(["embed", "--quantized", str(artifact), "--backend", "rtl", "the dog",
                 "a cat", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bertcore: error: "), err
    assert "the core rejected the run: bad image header" in err[0] and "cause code 1" in err[0]
    assert not out.exists()
    # the simulation itself: one failure packet per run, counted in failed_runs
    from bertcore.config import preset
    from bertcore.core.image import pack_activations
    from bertcore.quant.artifact import load_artifact
    from bertcore.rtlsim import CoreSimulator
    import torch
    cfg = preset("tiny")
    qm = load_artifact(artifact)
    x = torch.zeros(3, cfg.hidden, dtype=torch.int64)
    res = CoreSimulator(cfg, "verilator").run(bad_image(qm, cfg),
                                              [(pack_activations(x, cfg), 3)] * 2)
    assert [r["failed"] for r in res.runs] == [FAIL_HEADER] * 2
    assert [r["out"] for r in res.runs] == [[FAIL_HEADER]] * 2
    assert all(r["error"] for r in res.runs)
    assert [r["failed_runs"] for r in res.runs] == [1, 2]
    with pytest.raises(RunFailed, match="bad image header"):
        res.check()


@pytest.mark.slow          # the minilm Verilator build (~6 min) and ~7M cycles (~1-2 min)
def test_minilm_rtl_is_identical_to_int_beyond_128_tokens(tmp_path, minilm_int):  # noqa: F811
    """Issue 11's "done when": all-MiniLM-L6-v2 through ``embed --backend rtl`` (the minilm
    core, max_seq 256, 16-bit probabilities) is bit-identical to ``--backend int`` on a text of
    more than 128 tokens."""
    from bertcore.quant.artifact import save_artifact
    from test_truncation import PARAGRAPH
    art = save_artifact(minilm_int, tmp_path / "minilm.safetensors")
    text = PARAGRAPH * 2
    n = len(minilm_int.encode_text(text))
    assert 128 < n <= 256, n
    rtl, ref = tmp_path / "rtl.npy", tmp_path / "int.npy"
    assert main(["embed", "--quantized", str(art), "--backend", "rtl", text,
                 "-o", str(rtl)]) == 0
    assert main(["embed", "--quantized", str(art), "--backend", "int", text,
                 "-o", str(ref)]) == 0
    a, b = np.load(rtl), np.load(ref)
    assert a.shape == (1, 384) and np.array_equal(a, b)


@pytest.mark.slow          # the ulx3s-minilm Verilator build and ~15M cycles
def test_ulx3s_minilm_core_is_bit_exact():
    """The ULX3S-85F's MiniLM core (``ulx3s-minilm``: 4x4 array, max_seq 96, 8-bit GELU
    outputs in the memories of X, Q, K and V, 32-bit bus, X and A on one read port each) is
    bit-exact with the integer reference: a random model of its shape, a short sequence and
    one of max_seq rows."""
    from bertcore.config import preset
    from bertcore.rtlsim import check_core, random_model
    cfg = preset("ulx3s-minilm")
    ok, rows, res = check_core(cfg, random_model(cfg), [6, cfg.max_seq])
    assert ok, rows
    assert [n for n, _, _ in rows] == [6, cfg.max_seq]
