"""Packed runs (several sequences per run of the core): the integer reference with segments,
the segment table of the activation packet, the host's packer and the cycle model.

The reference of a packed run is ``IntBert.encode_int(x, segments=...)``; each segment's rows
must equal ``encode_int`` of that sequence alone, bit for bit.
"""

import random

import pytest
import torch

from bertcore.checkpoint import BertError
from bertcore.config import preset
from bertcore.core.image import (ImageError, activation_beats, check_activation_packet,
                                 pack_activations, pack_segment_table, pack_segments,
                                 parse_segment_table, segment_table_beats, unpack_segments)
from bertcore.packing import first_fit, plan_runs, reference_runner, split_outputs
from bertcore.quant import kernels as K
from bertcore.quant.model import segment_mask
from fixtures_bert import TINY_EVAL, tiny_ckpt, tiny_dir, tiny_int  # noqa: F401

TINY = preset("tiny")


def random_layout(rng, max_rows, max_segments):
    """Random segment lengths: 1..max_segments segments of 1.. rows, at most max_rows in all."""
    count = rng.randint(1, min(max_segments, max_rows))
    total = rng.randint(count, max_rows)
    cuts = sorted(rng.sample(range(1, total), count - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


# -- The reference ----------------------------------------------------------------------------

def test_masked_softmax_ignores_masked_keys():
    k = K.softmax_constants(0.01)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-3000, 3000, (6, 9), generator=gen)
    mask = torch.zeros((6, 9), dtype=torch.bool)
    mask[:, 2:6] = True
    y = K.int_softmax_int(x, k, saturate_output=True, mask=mask)
    assert torch.equal(y[:, 2:6], K.int_softmax_int(x[:, 2:6], k, saturate_output=True))
    assert int(y[:, :2].abs().sum()) == 0 and int(y[:, 6:].abs().sum()) == 0
    # masked scores may be anything (here larger than every kept score): no effect
    x2 = x.clone()
    x2[:, 0] = 10 ** 6
    assert torch.equal(K.int_softmax_int(x2, k, saturate_output=True, mask=mask), y)
    with pytest.raises(ValueError, match="at least one unmasked"):
        K.int_softmax_int(x, k, mask=torch.zeros((6, 9), dtype=torch.bool))


def test_segment_mask():
    m = segment_mask([2, 1, 3], 6)
    assert m.tolist()[0] == [True, True, False, False, False, False]
    assert m.tolist()[2] == [False, False, True, False, False, False]
    assert m.tolist()[5] == [False, False, False, True, True, True]
    assert torch.equal(segment_mask(None, 3), torch.ones((3, 3), dtype=torch.bool))
    for bad, match in (([2, 2], "add up to 4"), ([3, 0, 3], "positive"), ([], "at least one")):
        with pytest.raises(ValueError, match=match):
            segment_mask(bad, 6)


def test_packed_reference_is_bit_exact_per_segment(tiny_int):  # noqa: F811
    rng = random.Random(5)
    gen = torch.Generator().manual_seed(5)
    layouts = [[TINY.max_seq], [1], [1] * TINY.max_seq, [15, 1], [1, 15]]
    layouts += [random_layout(rng, TINY.max_seq, TINY.max_segments) for _ in range(25)]
    for lengths in layouts:
        xs = [torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in lengths]
        y = tiny_int.encode_int(torch.cat(xs), segments=lengths)
        for x, ys in zip(xs, torch.split(y, lengths)):
            assert torch.equal(ys, tiny_int.encode_int(x)), lengths


def test_packed_reference_real_sentences(tiny_int, tiny_ckpt):  # noqa: F811
    xs = [tiny_int.embed_int(tiny_ckpt.tokenizer.encode(s)) for s in TINY_EVAL]
    lengths = [x.shape[0] for x in xs]
    y = tiny_int.encode_int(torch.cat(xs), segments=lengths)
    for x, ys in zip(xs, torch.split(y, lengths)):
        assert torch.equal(ys, tiny_int.encode_int(x))
    # one segment is the unpacked run
    x = torch.cat(xs)
    assert torch.equal(tiny_int.encode_int(x, segments=[x.shape[0]]), tiny_int.encode_int(x))


# -- The segment table ------------------------------------------------------------------------

def test_segment_table_layout():
    # 32-bit bus: two 16-bit lanes per beat; count, then the lengths; unused lanes zero
    assert pack_segment_table([5, 3, 8], TINY) == [5 << 16 | 3, 8 << 16 | 3]
    assert pack_segment_table([7], TINY) == [7 << 16 | 1]
    assert segment_table_beats(16, TINY) == 9
    minilm = preset("minilm")
    assert segment_table_beats(7, minilm) == 1 and segment_table_beats(8, minilm) == 2
    rng = random.Random(2)
    for _ in range(50):
        lengths = random_layout(rng, TINY.max_seq, TINY.max_segments)
        words = pack_segment_table(lengths, TINY)
        assert len(words) == segment_table_beats(len(lengths), TINY)
        assert parse_segment_table(words, TINY) == lengths


@pytest.mark.parametrize("table, match", [
    ([0], r"count 0 is outside 1\.\.16"),
    ([17], r"count 17 is outside 1\.\.16"),
    ([2 | 3 << 16], r"takes 2 beats, not 1"),
    ([1 | 3 << 16, 0], r"takes 1 beats, not 2"),
    ([2 | 3 << 16, 0], r"positive"),
    ([1], r"positive"),
    ([2 | 3 << 16, 4 | 5 << 16], r"unused lanes are not zero"),
    ([2 | 9 << 16, 9], r"exceed max_seq \(16\)"),
    ([], r"empty"),
])
def test_malformed_segment_tables(table, match):
    with pytest.raises(ImageError, match=match):
        parse_segment_table(table, TINY)


def test_segment_limit_follows_the_config():
    cfg = TINY.replace(max_segments=3)
    with pytest.raises(ImageError, match=r"1\.\.3 segments, not 4"):
        pack_segment_table([1, 1, 1, 1], cfg)
    with pytest.raises(ImageError, match=r"count 4 is outside 1\.\.3"):
        parse_segment_table(pack_segment_table([1, 1, 1, 1], TINY), cfg)
    assert parse_segment_table(pack_segment_table([1, 1, 1], TINY), cfg) == [1, 1, 1]


def test_packed_packet_round_trip_and_checks():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in (3, 1, 6)]
    table, data = pack_segments(xs, TINY)
    assert table == pack_segment_table([3, 1, 6], TINY)
    assert data == pack_activations(torch.cat(xs), TINY)          # rows as for one sequence
    assert check_activation_packet(table, data, TINY) == [3, 1, 6]
    for a, b in zip(unpack_segments(data, [3, 1, 6], TINY), xs):
        assert torch.equal(a, b)
    # a plain packet: one segment of all its rows
    assert check_activation_packet([], data, TINY) == [10]
    with pytest.raises(ImageError, match="add up to 10 rows, the packet holds"):
        check_activation_packet(table, data[:-activation_beats(1, TINY)], TINY)
    with pytest.raises(ImageError, match="add up to 10 rows"):
        check_activation_packet(table, data + [0], TINY)
    with pytest.raises(ImageError, match=r"sequence length must lie in 1\.\.16, not 0"):
        check_activation_packet([], [], TINY)
    with pytest.raises(ImageError, match=r"shape \[L, 32\]"):
        pack_segments([torch.zeros((2, 8), dtype=torch.int64)], TINY)


# -- The host's packer ------------------------------------------------------------------------

def test_first_fit():
    assert first_fit([10, 6, 6, 3], 16, 16) == [[0, 1], [2, 3]]
    assert first_fit([4] * 5, 16, 16) == [[0, 1, 2, 3], [4]]
    assert first_fit([4] * 5, 16, 2) == [[0, 1], [2, 3], [4]]
    assert first_fit([1, 16, 15], 16, 16) == [[0, 2], [1]]
    rng = random.Random(3)
    for _ in range(30):
        lengths = [rng.randint(1, 16) for _ in range(rng.randint(1, 40))]
        runs = first_fit(lengths, 16, 5)
        assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in run) <= 16 and len(run) <= 5 for run in runs)
        assert all(run == sorted(run) for run in runs)
        # never worse than the volume bound by more than one run per half-full run
        assert len(runs) <= 2 * -(-sum(lengths) // 16) + 1
    with pytest.raises(BertError, match=r"17 tokens does not fit a run of 1\.\.16"):
        first_fit([3, 17], 16, 16)


def test_packed_runs_through_the_reference(tiny_int):  # noqa: F811
    rng = random.Random(9)
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randint(-128, 128, (rng.randint(1, 9), TINY.hidden), generator=gen)
          for _ in range(11)]
    run = reference_runner(tiny_int, TINY)
    want = [tiny_int.encode_int(x) for x in xs]
    for pack in (True, False):
        runs = plan_runs(xs, TINY, pack=pack)
        assert len(runs) < len(xs) if pack else len(runs) == len(xs)
        got = split_outputs(runs, run(runs), TINY)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    # a run the core would reject (a table that does not match its rows)
    bad = plan_runs(xs[:3], TINY)
    bad = [type(bad[0])(r.indices, r.lengths, r.table, r.data[:-1]) for r in bad]
    with pytest.raises(BertError, match="the core would reject this packet"):
        run(bad)


# -- embed --pack ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, tiny_int):  # noqa: F811
    from bertcore.quant.artifact import save_artifact
    path = tmp_path_factory.mktemp("packed") / "tiny.safetensors"
    save_artifact(tiny_int, path)
    return path


def test_embed_pack_matches_unpacked(tiny_artifact, tiny_int, tmp_path, capsys):  # noqa: F811
    import numpy as np
    from bertcore.cli import main
    from bertcore.embed import embed_texts, rtl_embeddings
    texts = TINY_EVAL * 3 + ["the dog", "a man is playing a guitar on the street ."]
    plain = embed_texts(texts, backend="int", quantized=tiny_artifact)
    packed = embed_texts(texts, backend="int", quantized=tiny_artifact, pack=True)
    assert np.array_equal(plain, packed)
    _, info = rtl_embeddings(tiny_int, texts, pack=True,
                             runner=reference_runner(tiny_int, TINY))
    assert info["runs"] < len(texts)
    out = tmp_path / "e.npy"
    assert main(["embed", "--quantized", str(tiny_artifact), "--backend", "int", "--pack",
                 *texts, "-o", str(out)]) == 0
    assert np.array_equal(np.load(out), plain)
    capsys.readouterr()
    for argv, match in (
            (["--backend", "float", "--pack"], "--pack packs runs of the core"),):
        assert main(["embed", "--quantized", str(tiny_artifact), *argv, *texts,
                     "-o", str(tmp_path / "x.npy")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert not (tmp_path / "x.npy").exists()


# -- The cycle model --------------------------------------------------------------------------

def test_key_spans():
    from bertcore.core.perf import key_spans
    assert key_spans(TINY, 16) == [(4, 16)] * 4
    assert key_spans(TINY, 6) == [(2, 6)] * 2
    # segments [0,3) [3,9) [9,16) on 4-row blocks
    assert key_spans(TINY, 16, [3, 6, 7]) == [(3, 12), (3, 12), (4, 16), (2, 8)]
    assert key_spans(TINY, 16, [4] * 4) == [(1, 4)] * 4
    assert key_spans(TINY, 7, [2, 5]) == [(2, 7), (2, 7)]


def test_packed_cycle_model():
    from bertcore.core import perf
    from bertcore.core.image import image_beats
    # packing only removes attention tiles: the rest of a layer is that of the whole run
    full, packed = perf.breakdown(TINY, 16), perf.breakdown(TINY, 16, [4] * 4)
    assert packed["attention"] < full["attention"]
    assert {k: v for k, v in packed.items() if k != "attention"} == \
        {k: v for k, v in full.items() if k != "attention"}
    assert perf.array_beats(TINY, 16, [4] * 4) < perf.array_beats(TINY, 16)
    assert perf.array_beats(TINY, 16, [16]) == perf.array_beats(TINY, 16)
    assert perf.macs_per_layer(TINY, 16, [4] * 4) == 16 * (4 * 32 * 32 + 2 * 32 * 64) \
        + 2 * 32 * 4 * 16
    minilm = preset("minilm")
    assert perf.utilization(minilm, 128, [16] * 8) >= 0.9
    # the default is the full rate (one beat per cycle; a faster stream is no faster), and the
    # last layer's breakdown adds up to its cycles
    for cfg, n in ((TINY, 9), (TINY, 16), (minilm, 1), (minilm, 64), (minilm, 128)):
        bus_rate = cfg.bus_width // 8
        assert perf.run_cycles(cfg, n, param_rate=bus_rate) == perf.run_cycles(cfg, n) \
            == perf.run_cycles(cfg, n, param_rate=4 * bus_rate)
        assert sum(perf.breakdown(cfg, n).values()) == perf.layer_cycles(cfg, n)
    for n in (1, 16, 40):
        # at 2 bytes per cycle the image (8 cycles a beat) bounds a short run
        slow = perf.run_cycles(minilm, n, param_rate=2)
        assert image_beats(minilm) * 8 < slow < image_beats(minilm) * 8 * 1.05
    # the stream's pace: a lower rate never helps
    rates = [perf.run_cycles(minilm, 128, [32] * 4, param_rate=r) for r in (16, 8, 4, 2, 1)]
    assert rates == sorted(rates)
    with pytest.raises(ValueError, match="param_rate must be positive"):
        perf.run_cycles(minilm, 16, param_rate=0)


def test_throughput_bench_last_line():
    import re
    import subprocess
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"
    out = subprocess.run([sys.executable, str(bench), "--preset", "minilm"], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()
    m = re.fullmatch(r"throughput: cycles_per_sentence@2Bpc packed=(\d+) unpacked=(\d+) "
                     r"speedup=(\d+\.\d)", out[-1])
    assert m, out[-1]
    packed, unpacked = int(m[1]), int(m[2])
    assert packed < unpacked and float(m[3]) == round(unpacked / packed, 1)
    bad = subprocess.run([sys.executable, str(bench), "--preset", "tiny"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "1..16 tokens" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_throttled_parameter_stream_matches_the_model():
    """The image offered one beat every P cycles (the replay wrapper's +param_period): the
    Verilated tiny core stays bit-exact and its cycles follow perf.run_cycles(param_rate=)."""
    from bertcore.core import perf
    from bertcore.rtlsim import check_core, random_model
    model = random_model(TINY)
    for period in (2, 8):
        ok, rows, _ = check_core(TINY, model, [1, 9, 16], param_period=period, stall=0.1)
        assert ok
        for n, _, cycles in rows:
            want = perf.run_cycles(TINY, n, param_rate=TINY.bus_width / 8 / period)
            assert abs(want - cycles) <= 0.01 * cycles, (period, n, cycles, want)
    with pytest.raises(BertError, match="param_period must be an integer"):
        check_core(TINY, model, [1], param_period=0)


def test_throughput_bench_rtl_part(capsys):
    """bench/throughput.py --rtl: texts run unpacked and packed in Verilator at both rates,
    beside the model (here on tiny), and a full packed run for the PE utilization."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    worst, per = bench.rtl_check(TINY, [3, 9], TINY.bus_width // 8, 2.0)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "bit-exact" in ln]
    # 2 unpacked runs and 1 packed run at each rate, the full packed run
    assert len(lines) == 7 and all("bit-exact True" in ln for ln in lines), lines
    assert sum("2 B/cycle" in ln for ln in lines) == 3
    assert sum("packed, " in ln and "unpacked" not in ln for ln in lines) == 2
    assert worst < 0.01
    assert per[2.0, "packed"] < per[2.0, "unpacked"]
