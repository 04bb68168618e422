# amaranth: UnusedElaboratable=no
"""Packed runs of the encoder core (several sequences per run, ``docs/interface.md``).

Every segment of a packed run must equal :meth:`IntBert.encode_int` of that sequence alone, in
the Amaranth simulator, Icarus and Verilator (random stalls), and each malformed segment table
must raise ``error``, drop the packet and its image, and leave the core ready for a run that
is bit-exact again. The cycle model (``perf.run_cycles(segments=)``) is held to the RTL.
"""

import json
import random

import pytest
import torch

from bertcore.config import preset
from bertcore.core.encoder import EncoderCore
from bertcore.core.image import (pack_activations, pack_parameter_image, pack_segment_table,
                                 pack_segments, segment_table_beats)
from bertcore.core.interp import run_image
from bertcore.core.perf import array_beats, layer_cycles, run_cycles
from fixtures_bert import tiny_ckpt, tiny_dir, tiny_int  # noqa: F401
from sim.runner import run_cocotb
from test_core import ImageReplayTop, run_core_sim, tiny_core, tiny_image  # noqa: F401

TINY = preset("tiny")


def random_partition(rng, total, count):
    """``count`` positive lengths adding up to ``total``."""
    cuts = sorted(rng.sample(range(1, total), count - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def packed_run(model, config, lengths, gen):
    """A packed run of random sequences of ``lengths``: its table and data words and the
    expected output words (each segment alone through ``encode_int``)."""
    xs = [torch.randint(-128, 128, (n, config.hidden), generator=gen) for n in lengths]
    table, data = pack_segments(xs, config)
    want = torch.cat([model.encode_int(x) for x in xs])
    return {"table": table, "act": data, "out": pack_activations(want, config),
            "segments": list(lengths)}


def beats(table, data):
    """``[tdata, tuser, tlast]`` of a packet: ``table`` words, then ``data`` words."""
    return ([[w, 1, 0] for w in table]
            + [[w, 0, int(i == len(data) - 1)] for i, w in enumerate(data)])


def malformed(config, gen):
    """Malformed packets, one per protocol error of docs/interface.md ("Packed runs")."""
    lanes = config.bus_width // 16

    def table_words(values):
        """Raw 16-bit lanes -> whole table beats."""
        values = values + [0] * (-len(values) % lanes)
        return [sum(v << (16 * j) for j, v in enumerate(values[i:i + lanes]))
                for i in range(0, len(values), lanes)]

    def rows(n):
        return pack_activations(torch.randint(-128, 128, (n, config.hidden), generator=gen),
                                config)

    limit = min(config.max_segments, config.max_seq)
    # a table of two beats or more: as many segments as a beat has lanes
    lengths = [(2, 3, 1)[i % 3] for i in range(lanes)]
    good, n = pack_segment_table(lengths, config), sum(lengths)
    assert len(good) == segment_table_beats(lanes, config) > 1 and lanes <= limit
    cases = [
        ("segment count 0", beats(table_words([0, 2]), rows(2))),
        ("too many segments", beats(table_words([limit + 1] + [1] * (limit + 1)),
                                    rows(limit))),
        ("data before the table is complete", beats(good[:-1], rows(n))),
        ("a further tuser beat", beats(good + [0], rows(n))),
        ("tuser on a data beat", beats(good, rows(n))[:-2]
         + [[1, 1, 0]] + beats(good, rows(n))[-1:]),
        ("tlast on a table beat", [[good[0], 1, 1]]),
        ("a zero-length segment", beats(table_words([3, 2, 0, 4]), rows(n))),
        ("non-zero unused lanes", beats(table_words([2, 1, 1, 5]), rows(2))),
        ("lengths beyond max_seq", beats(table_words([2, config.max_seq, 1]),
                                         rows(config.max_seq))),
        ("tlast early", beats(good, rows(n)[:-1])),
        ("tlast late", beats(good, rows(n) + rows(1))),
    ]
    return [{"what": what, "beats": b} for what, b in cases]


def test_malformed_packets_are_malformed():
    """Each malformed packet of the benches is one the Python checks reject too."""
    from bertcore.core.image import ImageError, check_activation_packet
    gen = torch.Generator().manual_seed(1)
    for case in malformed(TINY, gen):
        table = [w for w, user, _ in case["beats"] if user]
        # tuser on a data beat / a further tuser beat: not a table-then-data split
        split = [user for _, user, _ in case["beats"]]
        if split != sorted(split, reverse=True) or case["what"].startswith("tlast on"):
            continue
        data = [w for w, user, _ in case["beats"] if not user]
        with pytest.raises(ImageError):
            check_activation_packet(table, data, TINY)


def test_interpreter_packed(tiny_core, tiny_image):
    """``run_image(segments=)`` equals each segment run alone."""
    gen = torch.Generator().manual_seed(4)
    for lengths in ([3, 1, 5], [1] * 16, [7, 9]):
        xs = [torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in lengths]
        got = run_image(tiny_image, torch.cat(xs), TINY, segments=lengths)
        assert torch.equal(got, torch.cat([tiny_core.encode_int(x) for x in xs]))


@pytest.mark.parametrize("runs", [
    pytest.param(((1, 3),), id="1-3"),           # one block of 4 rows across two segments
    pytest.param(((16,), (1,) * 16, (2, 7, 1, 6), (9,)), id="full-16x1-mixed-plain",
                 marks=pytest.mark.slow),
])
def test_core_amaranth_sim_packed(tiny_core, tiny_image, runs):
    """Packed runs (a tuple of lengths: one run with a segment table; with several runs the
    last one is plain), random stalls: every segment bit-exact with a run of that sequence
    alone, ``array_beats`` as modeled."""
    gen = torch.Generator().manual_seed(12)
    xs = [[torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in run]
          for run in runs]
    if len(xs) > 1:
        xs[-1] = xs[-1][0]
    outputs, cycles, layers = run_core_sim(EncoderCore(TINY), tiny_image, xs, stall=0.2)
    for run, got in zip(xs, outputs):
        if isinstance(run, list):
            assert len(got) == len(run)
            for x, y in zip(run, got):
                assert torch.equal(y, tiny_core.encode_int(x)), f"segment of {x.shape[0]}"
        else:
            assert torch.equal(got, tiny_core.encode_int(run))
    print("packed cycles (with stalls):", cycles, layers)


def packed_params(model, config, *, seed, stall, counts, errors):
    """cocotb parameters: packed runs of ``counts`` segments (random lengths, random totals
    up to ``max_seq``), the malformed packets with ``errors``."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for count in counts:
        total = rng.randint(count, config.max_seq)
        runs.append(packed_run(model, config, random_partition(rng, total, count), gen))
    params = {"runs": runs, "seed": seed, "stall": stall, "timeout": 600000}
    if errors:
        params["bad"] = malformed(config, gen)
    return params


def check_report(config, report, stall, tolerance=0.02):
    """The model of a packed run (``run_cycles``/``layer_cycles`` with ``segments``) within
    ``tolerance`` of the RTL, ``array_beats`` exact. ``stall``: the bench's stall probability
    on the image, which makes it a stream of ``1 - stall`` beats per cycle (a short run's
    panels wait for it: as in ``test_core.py::test_core_cocotb``)."""
    measured = json.loads(report.read_text())
    rate = (1 - stall) * config.bus_width / 8
    rows = []
    for segs, cycles, beats_, layer in zip(measured["segments"], measured["cycles"],
                                           measured["beats"], measured["layer_cycles"]):
        total = sum(segs)
        model = run_cycles(config, total, segs, param_rate=rate)
        model_layer = layer_cycles(config, total, segs, param_rate=rate)
        rows.append((segs, cycles, model, layer, model_layer, beats_))
    print("segments, RTL cycles, model, RTL layer, model layer:", [r[:5] for r in rows])
    for segs, cycles, model, layer, model_layer, beats_ in rows:
        assert beats_ == array_beats(config, sum(segs), segs), f"{segs}"
        assert abs(cycles - model) <= tolerance * cycles, f"{segs}: RTL {cycles}, model {model}"
        assert abs(layer - model_layer) <= tolerance * layer, f"{segs}: RTL {layer}, {model_layer}"


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_core_packed_cocotb(tiny_core, tiny_image, simulator, tmp_path):
    """Verilator: segment counts 1..max_segments (lengths 1..max_seq) with random stalls, and
    every malformed table; Icarus: a packed run of 3 segments."""
    if simulator == "verilator":
        params = packed_params(tiny_core, TINY, seed=21, stall=0.2,
                               counts=(1, 2, 3, 5, 8, 16), errors=True)
        tests = ["packed_runs", "protocol_errors"]
    else:
        params = packed_params(tiny_core, TINY, seed=22, stall=0.2, counts=(3,), errors=False)
        tests = ["packed_runs"]
    params["report"] = str(tmp_path / "cycles.json")
    names = run_cocotb(ImageReplayTop(TINY, tiny_image), toplevel="tb_core_top",
                       test_module="tb_core_packed", simulator=simulator, params=params,
                       name="core_tiny", tests=tests)
    assert set(tests) <= set(names)
    check_report(TINY, tmp_path / "cycles.json", params["stall"])


@pytest.mark.slow
def test_core_packed_cocotb_larger(tiny_core, tmp_path):
    """A larger configuration in Verilator: 8 x 8 array, 64-bit bus, max_seq 40 (not a
    multiple of the array), 2 + 2 units, at most 6 segments: packed runs of 1..6 segments and
    the malformed tables."""
    cfg = TINY.replace(array_rows=8, array_cols=8, bus_width=64, max_seq=40, max_segments=6,
                       softmax_units=2, layernorm_units=2)
    image = pack_parameter_image(tiny_core, cfg)
    params = packed_params(tiny_core, cfg, seed=23, stall=0.2, counts=(6, 1, 3, 2, 5, 4),
                           errors=True)
    params["report"] = str(tmp_path / "cycles.json")
    run_cocotb(ImageReplayTop(cfg, image), toplevel="tb_core_top",
               test_module="tb_core_packed", simulator="verilator", params=params,
               name="core_packed_larger", tests=["packed_runs", "protocol_errors"])
    check_report(cfg, tmp_path / "cycles.json", params["stall"])
