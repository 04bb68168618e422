# amaranth: UnusedElaboratable=no
"""SegmentTable: the segment table of a packed packet parsed and checked in hardware, against
``bertcore.core.image.parse_segment_table`` (the Python statement of the same checks)."""

import random

import pytest

from bertcore.config import preset
from bertcore.core.image import ImageError, pack_segment_table, parse_segment_table
from bertcore.core.segments import SegmentTable
from rtl_sim import simulate

TINY = preset("tiny")


def packet_bytes(table, data_beats, bus_width):
    """The bytes of a packet: ``table`` words (tuser 1) then ``data_beats`` zero beats."""
    nb = bus_width // 8
    beats = [(w, 1) for w in table] + [(0, 0)] * data_beats
    out = []
    for i, (word, user) in enumerate(beats):
        for j in range(nb):
            out.append({"data": (word >> (8 * j)) & 0xFF, "user": user, "end": int(j == nb - 1),
                        "last": int(i == len(beats) - 1)})
    return out


def run_packets(dut, packets, *, seed=0):
    """Feed each packet's bytes (random gaps); return per packet (table, done, total, error,
    bounds of rows 0..total-1)."""
    results = []
    rng = random.Random(seed)

    async def bench(ctx):
        for stream_bytes in packets:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for byte in stream_bytes:
                while rng.random() < 0.3:
                    ctx.set(dut.i_byte.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i_byte.valid, 1)
                for name, value in byte.items():
                    ctx.set(getattr(dut.i_byte.payload, name), value)
                await ctx.tick()
            ctx.set(dut.i_byte.valid, 0)
            for _ in range(dut.max_seq + 2):
                await ctx.tick()
            res = {k: ctx.get(getattr(dut, k)) for k in ("table", "done", "total", "error",
                                                         "bounds_ready")}
            bounds = []
            if res["done"]:
                for p in range(res["total"]):
                    ctx.set(dut.r_addr, p)
                    await ctx.tick()
                    bounds.append((ctx.get(dut.r_start), ctx.get(dut.r_end)))
            res["bounds"] = bounds
            results.append(res)

    simulate(dut, bench, name="segment_table", deadline=1e-2)
    return results


def expected_bounds(lengths):
    out, start = [], 0
    for n in lengths:
        out += [(start, start + n)] * n
        start += n
    return out


@pytest.mark.parametrize("bus_width", [32, 8, 24, 128])
def test_tables_good_and_bad(bus_width):
    cfg = TINY.replace(bus_width=bus_width) if bus_width <= 8 * TINY.hidden else TINY
    dut = SegmentTable(max_seq=cfg.max_seq, max_segments=cfg.max_segments)
    rng = random.Random(bus_width)
    cases = []
    for _ in range(12):                                   # well-formed
        count = rng.randint(1, 16)
        total = rng.randint(count, 16)
        cuts = sorted(rng.sample(range(1, total), count - 1))
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
        cases.append(("ok", pack_segment_table(lengths, cfg), 1, lengths))
    cases += [("plain", [], 3, None)]                      # no table: a plain packet

    def raw(lanes):
        word = sum(v << (16 * i) for i, v in enumerate(lanes))
        beats = -(-16 * len(lanes) // bus_width)
        return [(word >> (bus_width * i)) & ((1 << bus_width) - 1) for i in range(beats)]

    for lanes in ([0], [17] + [1] * 17, [2, 3, 0], [2, 9, 9], [1, 0]):
        cases.append(("bad", raw(lanes), 1, None))
    good = pack_segment_table([3, 4], cfg)
    cases.append(("bad", good[:-1] if len(good) > 1 else [], 1, None) if len(good) > 1
                 else ("bad", [good[0] | (5 << 48)] if bus_width >= 64 else raw([2, 3, 4, 5]),
                       1, None))
    cases.append(("bad", good + [0], 1, None))             # a further table beat
    packets = [packet_bytes(table, beats, cfg.bus_width) for _, table, beats, _ in cases]
    # a table beat after the rows began
    late = packet_bytes([], 1, cfg.bus_width) + packet_bytes(good, 0, cfg.bus_width)
    packets.append(late)
    # tlast on the table's last beat
    packets.append(packet_bytes(good, 0, cfg.bus_width))
    results = run_packets(dut, packets, seed=bus_width)
    for (kind, table, _, lengths), res in zip(cases, results):
        if kind == "ok":
            assert parse_segment_table(table, cfg) == lengths
            assert (res["table"], res["done"], res["error"]) == (1, 1, 0), (lengths, res)
            assert res["total"] == sum(lengths) and res["bounds_ready"]
            assert res["bounds"] == expected_bounds(lengths)
        elif kind == "plain":
            assert (res["table"], res["done"], res["error"]) == (0, 0, 0)
        else:
            with pytest.raises(ImageError):
                parse_segment_table(table, cfg)
            assert res["error"] == 1 and res["done"] == 0, (table, res)
    assert results[-2]["error"] == 1 and results[-1]["error"] == 1


@pytest.mark.parametrize("max_seq, max_segments", [(200, 16), (255, 16), (256, 16),
                                                   (1000, 16), (1000, 300)])
def test_long_runs(max_seq, max_segments):
    """Lengths and counts past one byte (the sum and checks begun with a lane's first byte):
    tables that fill ``max_seq`` exactly, overflow it by one, lengths of 256 (low byte 0),
    lanes with a bit at or above ``bits_for(max_seq)``, counts at and past a limit above
    255, each against ``parse_segment_table``."""
    cfg = TINY.replace(max_seq=max_seq, max_segments=max_segments)
    dut = SegmentTable(max_seq=max_seq, max_segments=max_segments)
    pb = max_seq.bit_length()
    rng = random.Random(max_seq)

    def raw(lanes):
        word = sum(v << (16 * i) for i, v in enumerate(lanes))
        beats = -(-16 * len(lanes) // cfg.bus_width)
        return [(word >> (cfg.bus_width * i)) & ((1 << cfg.bus_width) - 1)
                for i in range(beats)]

    tables = []
    for _ in range(6):
        count = rng.randint(1, 6)
        total = rng.randint(count, max_seq)
        cuts = sorted(rng.sample(range(1, total), count - 1))
        tables.append([count] + [b - a for a, b in zip([0, *cuts], [*cuts, total])])
    tables += [[1, max_seq], [1, max_seq + 1], [2, max_seq - 1, 1], [2, max_seq - 1, 2],
               [2, 1, 256], [1, 256], [1, 1 << pb], [1, (1 << pb) | 1], [1, 0x100 | 0],
               [0x100 | 1, 1], [2, 0x8000, 1], [3, 255, 1, 1], [1, 0]]
    if max_segments > 255:
        tables += [[n] + [1] * n for n in (255, 256, 257, max_segments, max_segments + 1)]
        tables += [[256 + 44] + [1] * 299 + [2], [0x1FF] + [1] * 0x1FF]
    packets = [packet_bytes(raw(t), 1, cfg.bus_width) for t in tables]
    results = run_packets(dut, packets, seed=max_seq)
    checked_ok = checked_bad = 0
    for lanes, res in zip(tables, results):
        try:
            lengths = parse_segment_table(raw(lanes), cfg)
        except ImageError:
            assert res["error"] == 1 and res["done"] == 0, (lanes, res)
            checked_bad += 1
        else:
            assert (res["table"], res["done"], res["error"]) == (1, 1, 0), (lanes, res)
            assert res["total"] == sum(lengths) and res["bounds_ready"]
            assert res["bounds"] == expected_bounds(lengths)
            checked_ok += 1
    assert checked_ok >= 8 and checked_bad >= 5


def test_bad_parameters():
    with pytest.raises(TypeError, match="max_seq must be an integer"):
        SegmentTable(max_seq=1.5, max_segments=2)
    with pytest.raises(ValueError, match="max_segments must be a positive integer, not 0"):
        SegmentTable(max_seq=8, max_segments=0)
    assert SegmentTable(max_seq=8, max_segments=16).limit == 8


@pytest.mark.parametrize("max_segments", [1, 16])
def test_lint(max_segments):
    from sim.runner import lint
    lint(SegmentTable(max_seq=16, max_segments=max_segments), toplevel="segment_table")
