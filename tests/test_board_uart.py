# amaranth: UnusedElaboratable=no
"""End-to-end tests of the UART link: host code (:mod:`bertcore.board`) ↔ simulated UART lines
↔ board top (:class:`bertcore.boards.top.UARTCoreTop`: UART bridge + core).

* Amaranth simulator, bit-level UART at divisor 4, a small stand-in core with the encoder core's
  members (``EchoCore``: the output is the activation packet XOR the XOR of all parameter
  words): the protocol (chunking, ordering, READ), corrupted frames NAKed and retried with
  nothing reaching the core, lost replies (the repeated frame is not executed twice), timeouts,
  bad lengths and types, STATUS, RESET, a line break, and link failure after bounded retries.
* The real encoder core (``tiny`` preset, quantized tiny model) through the same host code, with
  a corrupted frame on the way: cocotb + Verilator on the emitted Verilog (``sim/tb_board.py``),
  bit-exact against ``IntBert.encode_int``. (The Amaranth simulator runs the whole core at about
  a thousand cycles per second; one run over the UART is about a million cycles.) Marked slow:
  about 2 million simulated cycles plus a Verilator build (``pytest -m slow -k real_core``).
"""

import random
import zlib

import pytest
import torch
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bertcore import uart_protocol as P
from bertcore.board import BoardError, BoardLink, LinkError, load_parameters, run
from bertcore.config import CoreConfig
from bertcore.core.common import act_layout
from bertcore.core.encoder import EncoderCore, bus_layout, out_layout
from bertcore.core.image import FAIL_HEADER, FAIL_NO_IMAGE, image_beats, pack_activations
from bertcore.boards.bridge import ResultGatherer, UARTBridge, WordForwarder
from bertcore.boards.top import UARTCoreTop
from rtl_sim import simulate
from uart_port import SimPort

DIVISOR = 4
#: A small configuration for the stand-in core (only bus_width, hidden and max_seq matter).
ECHO_CFG = CoreConfig(hidden=4, heads=1, ffn=4, layers=1, max_seq=6, array_rows=2,
                      array_cols=2, bus_width=32)


class EchoCore(wiring.Component):
    """Stand-in for :class:`~bertcore.core.encoder.EncoderCore` (same members).

    Takes a parameter packet and an activation packet (in any interleaving, after the first
    parameter word), then sends the activation words XOR the XOR of all parameter words and of
    the packet's segment table words (``user`` = 1: taken, not sent back).
    ``error`` if an activation word arrives while idle (the encoder core's rule), unless
    ``config.resident`` and a run has succeeded: then the stored image is replayed.
    """

    def __init__(self, config, depth=64):
        self._depth = depth
        self._resident = config.resident
        layout = bus_layout(config.bus_width)
        super().__init__({
            "s_param": In(stream.Signature(layout)),
            "s_act": In(stream.Signature(act_layout(config.bus_width))),
            "m_act": Out(stream.Signature(out_layout(config.bus_width))),
            "busy": Out(1), "error": Out(1),
            "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=len(self.s_act.payload.data), depth=self._depth,
                                        init=[])
        w, r = mem.write_port(), mem.read_port(domain="comb")
        acc = Signal.like(self.s_act.payload.data)
        tab = Signal.like(self.s_act.payload.data)     # XOR of the segment table words
        n_act = Signal(range(self._depth + 1))
        i = Signal(range(self._depth + 1))
        p_done, a_done = Signal(), Signal()
        count = Signal(32)
        have = Signal()                 # an image is stored (resident)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.s_act.valid & have):
                    # resident: replay the stored image (its XOR)
                    m.d.sync += [n_act.eq(0), p_done.eq(1), a_done.eq(0), self.error.eq(0),
                                 count.eq(0), tab.eq(0)]
                    m.next = "RUN"
                with m.Elif(self.s_act.valid):
                    m.d.comb += self.s_act.ready.eq(1)
                    m.d.sync += self.error.eq(1)
                with m.If(self.s_param.valid):
                    m.d.sync += [acc.eq(0), n_act.eq(0), p_done.eq(0), a_done.eq(0),
                                 self.error.eq(0), count.eq(0), tab.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += count.eq(count + 1)
                m.d.comb += [self.s_param.ready.eq(~p_done), self.s_act.ready.eq(~a_done)]
                with m.If(self.s_param.valid & ~p_done):
                    m.d.sync += [acc.eq(acc ^ self.s_param.payload.data),
                                 p_done.eq(self.s_param.payload.last)]
                with m.If(self.s_act.valid & ~a_done & self.s_act.payload.user):
                    m.d.sync += tab.eq(tab ^ self.s_act.payload.data)
                with m.Elif(self.s_act.valid & ~a_done):
                    m.d.comb += [w.addr.eq(n_act), w.data.eq(self.s_act.payload.data),
                                 w.en.eq(1)]
                    m.d.sync += [n_act.eq(n_act + 1), a_done.eq(self.s_act.payload.last)]
                with m.If(p_done & a_done):
                    m.d.sync += i.eq(0)
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.busy.eq(1), r.addr.eq(i),
                             self.m_act.valid.eq(1),
                             self.m_act.payload.data.eq(r.data ^ acc ^ tab),
                             self.m_act.payload.last.eq(i == n_act - 1)]
                with m.If(self.m_act.ready):
                    m.d.sync += i.eq(i + 1)
                    with m.If(i == n_act - 1):
                        m.d.sync += [self.cycles.eq(count), have.eq(self._resident)]
                        m.next = "IDLE"
        return m


def echo_port(config=ECHO_CFG, max_payload=64, **kwargs):
    top = UARTCoreTop(config, DIVISOR, core=EchoCore(config), max_payload=max_payload,
                      **kwargs)
    return top, SimPort(top, top.rx, top.tx, DIVISOR)


def echo_image(seed=0):
    rng = random.Random(seed)
    return [rng.randrange(1 << 32) for _ in range(image_beats(ECHO_CFG))]


def echo_expected(image, act, table=()):
    acc = 0
    for w in [*image, *table]:
        acc ^= w
    return [w ^ acc for w in act]


def random_act(length, seed):
    gen = torch.Generator().manual_seed(seed)
    return pack_activations(torch.randint(-128, 128, (length, ECHO_CFG.hidden), generator=gen),
                            ECHO_CFG)


def test_echo_runs_and_status():
    top, port = echo_port()
    image = echo_image()
    link = load_parameters(port, image, ECHO_CFG)
    assert link.status() == {"busy": False, "error": False, "output": False, "lost": False,
                             "tables": True, "cycles": 0, "bus_bytes": 4, "max_payload": 64}
    for n, seed in ((1, 1), (6, 2)):
        act = random_act(n, seed)
        assert run(port, act, n, ECHO_CFG) == echo_expected(image, act)
        assert link.cycles > 0
    assert link.stats["naks"] == 0 and link.stats["timeouts"] == 0


def test_echo_resident():
    """Resident configuration: the first run streams the image, later ones only activations;
    after a reset the image is streamed again."""
    config = ECHO_CFG.replace(resident=True)
    top, port = echo_port(config)
    image = echo_image(8)
    link = load_parameters(port, image, config)
    frames = []
    for n, seed in ((2, 1), (6, 2), (3, 3)):
        before = link.stats["frames"]
        act = random_act(n, seed)
        assert run(port, act, n, config) == echo_expected(image, act)
        frames.append(link.stats["frames"] - before)
    assert frames[1] == frames[2] == 4 < frames[0]   # STATUS, ACT, READ, STATUS
    link.reset()
    act = random_act(1, 4)
    assert run(port, act, 1, config) == echo_expected(image, act)
    assert link.stats["frames"] - before - 4 == frames[0] + 1   # + the RESET


def test_echo_reuse_across_sessions():
    """``load_parameters(reuse=True)`` through the real bridge: on a core without an image the
    activations are rejected and the image is streamed; a later session (a new link, sequence
    bytes from 0 again) on the same board sends activations only."""
    config = ECHO_CFG.replace(resident=True)
    top, port = echo_port(config)
    image = echo_image(9)
    link = load_parameters(BoardLink(port), image, config, reuse=True)
    act = random_act(3, 1)
    assert run(link, act, 3, config) == echo_expected(image, act)
    assert link.streamed
    for seed in (2, 3):
        link = load_parameters(BoardLink(port), image, config, reuse=True)
        act = random_act(2, seed)
        assert run(link, act, 2, config) == echo_expected(image, act)
        assert not link.streamed and link.stats["naks"] == 0
    with pytest.raises(ValueError, match="reuse needs a resident configuration"):
        load_parameters(BoardLink(port), image, ECHO_CFG, reuse=True)


def _segment_cases(config, seed, random_cases=4):
    """Segment lengths of packed runs: one segment, the most segments (one row each), lengths
    adding up to ``max_seq``, then seeded random ones."""
    limit = min(config.max_segments, config.max_seq)
    cases = [[config.max_seq - 1], [1] * limit, [2, config.max_seq - 2]]
    rng = random.Random(seed)
    for _ in range(random_cases):
        count = rng.randint(1, limit)
        lengths = [1] * count
        for _ in range(rng.randint(0, config.max_seq - count)):
            lengths[rng.randrange(count)] += 1
        cases.append(lengths)
    return cases


def _bad_tables(config):
    """Segment tables a buggy host might send (the bridge forwards them as they are; the core
    rejects them): count 0, a count beyond the limit, a zero length, lengths beyond
    ``max_seq``, a non-zero unused lane."""
    def lanes(*values):
        raw = sum(v << (16 * j) for j, v in enumerate(values))
        nbeats = -(-16 * len(values) // config.bus_width)
        return [(raw >> (config.bus_width * b)) & ((1 << config.bus_width) - 1)
                for b in range(nbeats)]
    return [lanes(0, 1, 1), lanes(0xFFFF, 1, 1), lanes(2, 3, 0), lanes(2, config.max_seq, 1),
            lanes(2, 1, 1, 7)]


def test_echo_packed_runs():
    """Packed runs through the host code, the UART and the bridge: the segment table goes in
    ACT_TABLE frames and reaches the core with ``tuser`` set, the rows without (the stand-in
    core folds the table words into its output). Resident (activations only): one segment,
    the most segments, lengths adding up to ``max_seq`` and a seeded random table; streamed
    (the table between the image's header and its rest): the most segments. Tables over
    several frames: :func:`test_bridge_forwards_segment_tables`."""
    from bertcore.core.image import pack_segment_table
    for resident in (True, False):
        config = ECHO_CFG.replace(resident=resident)
        top, port = echo_port(config)
        image = echo_image(20)
        link = load_parameters(port, image, config)
        assert link.tables
        cases = _segment_cases(config, 7, random_cases=1)
        for k, lengths in enumerate(cases if resident else cases[1:2]):
            table = pack_segment_table(lengths, config)
            act = random_act(sum(lengths), 30 + k)
            assert run(link, act, sum(lengths), config, table=table) == \
                echo_expected(image, act, table), lengths
            assert link.streamed == (not resident or k == 0)
        assert link.stats["naks"] == 0 and link.stats["timeouts"] == 0


class _ActRecorder(wiring.Component):
    """A bridge whose ``act`` words are taken under random backpressure and recorded
    (``beats``: ``(data, last, user)``); its ``param`` words are taken and dropped."""

    def __init__(self, seed):
        self.bridge = UARTBridge(32, DIVISOR, max_payload=16)
        self.beats = []
        self._rng = random.Random(seed)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.d.comb += [bridge.rx.eq(self.rx), self.tx.eq(bridge.tx), bridge.param.ready.eq(1)]
        return m

    async def sink(self, ctx):
        act = self.bridge.act
        while True:
            ready = self._rng.random() < 0.5
            ctx.set(act.ready, ready)
            if ready and ctx.get(act.valid):
                self.beats.append((ctx.get(act.payload.data), ctx.get(act.payload.last),
                                   ctx.get(act.payload.user)))
            await ctx.tick()


def test_bridge_forwards_segment_tables():
    """ACT_TABLE frames: each word reaches ``act`` once, in order, with ``user`` = 1 and never
    ``last``; ACT / ACT_LAST words follow with ``user`` = 0. Tables of one segment, the most
    segments (9 words over 3 frames), lengths adding up to ``max_seq``, seeded random ones and
    malformed ones (forwarded as they are: the core judges them); a table frame whose ACK is
    lost is resent and not forwarded twice; STATUS says the bridge carries tables."""
    from bertcore.core.image import ImageError, pack_segment_table, parse_segment_table
    config = ECHO_CFG.replace(max_seq=16)
    dut = _ActRecorder(3)
    port = SimPort(dut, dut.rx, dut.tx, DIVISOR)
    port.sim.add_testbench(dut.sink, background=True)
    link = BoardLink(port)
    assert link.status()["tables"]
    tables = [pack_segment_table(lengths, config) for lengths in _segment_cases(config, 5)]
    assert max(map(len, tables)) == 9
    for table in _bad_tables(config):           # (the core's checks, in Python)
        with pytest.raises(ImageError, match="segment"):
            parse_segment_table(table, config)
    tables += _bad_tables(config)
    for k, table in enumerate(tables):
        data = random_act(3, k)
        if k == 2:                                  # the first table frame's ACK is lost
            original = link.transact

            def transact(ftype, payload=b""):
                if ftype == P.T_ACT_TABLE:
                    port.corrupt_rx(4, 0x02)
                    link.transact = original
                return original(ftype, payload)

            link.transact = transact
        dut.beats.clear()
        link.send_words(P.T_ACT_TABLE, P.T_ACT_TABLE, table, 4)
        link.send_words(P.T_ACT, P.T_ACT_LAST, data, 4)
        for _ in range(200):                        # let the last word pass the sink
            port.sim.advance()
        assert dut.beats == ([(w, 0, 1) for w in table]
                             + [(w, int(i == len(data) - 1), 0) for i, w in enumerate(data)]), k
    assert link.stats["timeouts"] == 1 and link.stats["naks"] == 0


def test_corrupted_frames_are_naked_and_retried():
    """Bit errors in the payload, the CRC, the type and the length: each NAKed (or left
    unanswered), resent, and the output is still exact: nothing of a bad frame was forwarded."""
    top, port = echo_port()
    image = echo_image(3)
    link = load_parameters(port, image, ECHO_CFG)
    act = random_act(6, 4)
    sent = []
    original = link.transact

    def transact(ftype, payload=b""):
        n = len(sent)
        sent.append(ftype)
        if n == 2:
            port.corrupt_tx(P.HEADER_BYTES + 5, 0x01)         # a payload bit (ACT frame)
        elif n == 4:
            port.corrupt_tx(len(payload) + P.HEADER_BYTES, 0x80)   # the CRC
        elif n == 5:
            port.corrupt_tx(3, 0x40)                          # length: too long → timeout NAK
        elif n == 6:
            port.corrupt_tx(1, 0x08)                          # type PARAM → unknown 0x09
        elif n == 7:
            port.corrupt_tx(0, 0xFF)                          # SOF lost: no reply at all
        return original(ftype, payload)

    link.transact = transact
    assert run(port, act, 6, ECHO_CFG) == echo_expected(image, act)
    assert link.stats["naks"] == 4 and link.stats["timeouts"] == 1


def test_lost_reply_is_not_executed_twice():
    """A corrupted ACK or DATA reply: the host resends the frame with the same sequence byte;
    the bridge answers with the stored reply instead of forwarding or reading again."""
    top, port = echo_port()
    image = echo_image(5)
    link = load_parameters(port, image, ECHO_CFG)
    act = random_act(6, 6)
    original = link.transact
    calls = []

    def transact(ftype, payload=b""):
        calls.append(ftype)
        if len(calls) in (3, 4) or ftype == P.T_READ and calls.count(P.T_READ) == 1:
            port.corrupt_rx(4, 0x02)                          # the reply's length byte
        return original(ftype, payload)

    link.transact = transact
    assert run(port, act, 6, ECHO_CFG) == echo_expected(image, act)
    assert link.stats["timeouts"] >= 3 and link.stats["naks"] == 0


def test_reset_break_and_errors():
    top, port = echo_port()
    link = BoardLink(port, retries=2)
    link.status()
    # activations while idle: the stand-in core's error, reported by STATUS
    link.send_words(P.T_ACT, P.T_ACT_LAST, [1, 2], 4)
    assert link.status()["error"]
    # a started run abandoned by the host, then a break: the core is reset
    link.send_words(P.T_PARAM, P.T_PARAM, [7], 4)
    assert link.status()["busy"]
    link.break_reset()
    assert link.status() == {"busy": False, "error": False, "output": False, "lost": False,
                             "tables": True, "cycles": 0, "bus_bytes": 4, "max_payload": 64}
    # a partial word and an unknown type are NAKed (bad length, bad type), after the retries
    with pytest.raises(LinkError, match=r"failed after 3 attempts: NAK \(bad length\)"):
        link.transact(P.T_PARAM, b"\x01\x02\x03")
    with pytest.raises(LinkError, match=r"NAK \(unknown frame type\)"):
        link.transact(0x42)
    assert not link.status()["busy"]
    # run() before load_parameters(), wrong sizes
    with pytest.raises(BoardError, match=r"load_parameters\(\) first"):
        run(link, [0], 1, ECHO_CFG)
    with pytest.raises(ValueError, match=r"the image has 3 words; the configuration needs"):
        load_parameters(link, [1, 2, 3], ECHO_CFG)
    with pytest.raises(BoardError, match=r"the board's bus is 32 bits, the configuration's 16"):
        load_parameters(link, [0] * image_beats(ECHO_CFG.replace(bus_width=16)),
                        ECHO_CFG.replace(bus_width=16))


def test_dead_line_fails_after_bounded_retries():
    import serial
    port = serial.serial_for_url("loop://", timeout=0.01)    # echoes frames: never a reply
    link = BoardLink(port, retries=3)
    with pytest.raises(LinkError, match=r"failed after 4 attempts: a host frame came back"):
        link.status()
    assert link.stats["frames"] == 4


def test_bridge_parameter_errors():
    with pytest.raises(ValueError, match=r"bus_width must be a positive multiple of 8, not 12"):
        UARTBridge(12, 4)
    with pytest.raises(ValueError, match=r"max_payload must be a multiple of 4 bytes"):
        UARTBridge(32, 4, max_payload=30)
    with pytest.raises(ValueError, match=r"divisor must be an integer of at least 4"):
        UARTBridge(32, 2)



def _read_registered(m, mem, addr, data):
    """``data`` = the word of ``mem`` at ``addr`` two cycles later: a read port and a register
    after it, as the bridge's ``BlockRam`` buffers read (address and output register)."""
    port, out = mem.read_port(), Signal(mem.shape)
    m.d.sync += out.eq(port.data)
    m.d.comb += [port.addr.eq(addr), data.eq(out)]


class _Buffered(wiring.Component):
    """A bridge unit with its buffer memory, as :class:`UARTBridge` wires it."""

    def __init__(self, unit, port, shape, depth, init):
        self._unit, self._port = unit, port
        self._mem = Memory(shape=shape, depth=depth, init=init)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit, m.submodules.mem = self._unit, self._mem
        if self._port == "frame":
            _read_registered(m, self._mem, self._unit.frame.addr, self._unit.frame.data)
        else:
            wiring.connect(m, getattr(self._unit, self._port), self._mem.write_port())
        return m


@pytest.mark.parametrize("abort_at", [None] + list(range(1, 30)))
def test_word_forwarder(abort_at):
    """Bytes of the frame buffer become little-endian words (``last`` on the final one of a
    ``*_LAST`` frame) under random backpressure; a line break (``abort``) in any cycle drops the
    frame: ``aborted`` once, no word after it, and the next frame is forwarded whole."""
    payload = bytes(random.Random(1).randrange(256) for _ in range(12))
    fwd = WordForwarder(32, 16)
    dut = _Buffered(fwd, "frame", 8, 16, list(payload))
    words = [int.from_bytes(payload[i:i + 4], "little") for i in range(0, 12, 4)]
    rng = random.Random(abort_at)

    async def forward(ctx, abort_at=None):
        ctx.set(fwd.length, 12)
        ctx.set(fwd.last_frame, 1)
        ctx.set(fwd.start, 1)
        await ctx.tick()
        ctx.set(fwd.start, 0)
        got, dones, aborts, expect = [], 0, 0, 0
        for cycle in range(60):
            expect |= cycle == abort_at and not dones      # abort while busy
            ctx.set(fwd.abort, cycle == abort_at)
            ready = rng.random() < 0.6
            ctx.set(fwd.o_stream.ready, ready)
            if ctx.get(fwd.o_stream.valid) and ready:
                got.append((ctx.get(fwd.o_stream.payload.data),
                            ctx.get(fwd.o_stream.payload.last)))
            dones += ctx.get(fwd.done)
            aborts += ctx.get(fwd.aborted)
            assert aborts == expect, (cycle, aborts, expect)
            await ctx.tick()
        ctx.set(fwd.abort, 0)
        return got, dones, aborts

    async def testbench(ctx):
        got, dones, aborts = await forward(ctx, abort_at)
        if aborts:
            assert aborts == 1 and got == [(w, 0) for w in words[:len(got)]] and len(got) < 3
        else:
            assert got == [(w, int(i == 2)) for i, w in enumerate(words)] and dones == 1
        assert ctx.get(fwd.o_stream.valid) == 0
        got, dones, aborts = await forward(ctx)
        assert got == [(w, int(i == 2)) for i, w in enumerate(words)] and dones == 1

    simulate(dut, testbench, name="word_forwarder")


def test_result_gatherer():
    """Words until ``last``, until the buffer is full, or until a gap of ``gap_cycles``."""
    gather = ResultGatherer(32, 3, 5)
    dut = _Buffered(gather, "buffer", 32, 3, [])

    async def run(ctx, beats):
        """``beats``: per cycle ``(data, last[, user])`` offered, or None.

        Returns (words, last, failed)."""
        ctx.set(gather.start, 1)
        await ctx.tick()
        ctx.set(gather.start, 0)
        for beat in beats + [None] * 10:
            ctx.set(gather.i_stream.valid, beat is not None)
            if beat is not None:
                ctx.set(gather.i_stream.payload.data, beat[0])
                ctx.set(gather.i_stream.payload.last, beat[1])
                ctx.set(gather.i_stream.payload.user, beat[2] if len(beat) > 2 else 0)
            if ctx.get(gather.done):
                ctx.set(gather.i_stream.valid, 0)
                result = ctx.get(gather.words), ctx.get(gather.last), ctx.get(gather.failed)
                await ctx.tick()
                return result
            await ctx.tick()
        raise AssertionError("no done")

    async def testbench(ctx):
        assert await run(ctx, [(1, 0), None, (2, 1), (3, 0)]) == (2, 1, 0)
        assert ctx.get(dut._mem.data[0]) == 1 and ctx.get(dut._mem.data[1]) == 2
        assert await run(ctx, [(4, 0), (5, 0), (6, 0), (7, 0)]) == (3, 0, 0)     # full
        assert await run(ctx, [None] * 4 + [(8, 0)] + [None] * 6 + [(9, 1)]) == (1, 0, 0)  # gap
        assert await run(ctx, []) == (0, 0, 0)
        # a failed run's one-beat failure packet, then a good packet: the flag is not sticky
        assert await run(ctx, [(0x21, 1, 1)]) == (1, 1, 1)
        assert await run(ctx, [(10, 0), (11, 1)]) == (2, 1, 0)

    simulate(dut, testbench, name="result_gatherer")

# -- The real encoder core ---------------------------------------------------------------------

from fixtures_bert import tiny_ckpt, tiny_dir, tiny_int  # noqa: E402,F401
from test_core import TINY, tiny_core, tiny_image  # noqa: E402,F401


def _tiny_runs(tiny_core, config, seed):  # noqa: F811
    """Two sequences (5 rows, then ``max_seq``): activations and ``encode_int``'s output."""
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for n in (5, config.max_seq):
        x = torch.randint(-128, 128, (n, config.hidden), generator=gen)
        runs.append({"length": n, "act": pack_activations(x, config),
                     "out": pack_activations(tiny_core.encode_int(x), config)})
    return runs


#: Texts of the packed runs on the real core (tiny: max_seq 16).
REAL_TEXTS = ["dogs run", "a man is playing a guitar", "hi", "rain falls", "the sun",
              "a child reads", "music"]


def _tiny_packed_runs(tiny_core, config):  # noqa: F811
    """Packed runs of :data:`REAL_TEXTS` (first-fit, :func:`bertcore.packing.plan_runs`): each
    with its segment table, its segments' lengths and as output ``encode_int`` of each text
    alone; then the first run again with a malformed table (its first length one row too
    long: the core fails it with ``FAIL_TOO_LONG``)."""
    from bertcore.core.image import FAIL_TOO_LONG
    from bertcore.packing import plan_runs
    xs = [tiny_core.embed_int(tiny_core.encode_text(t)) for t in REAL_TEXTS]
    runs = []
    for plan in plan_runs(xs, config):
        assert len(plan.indices) > 1
        alone = torch.cat([tiny_core.encode_int(xs[i]) for i in plan.indices])
        runs.append({"length": sum(plan.lengths), "act": plan.data, "table": plan.table,
                     "segments": list(plan.lengths), "indices": list(plan.indices),
                     "out": pack_activations(alone, config)})
    bad = dict(runs[0], table=[runs[0]["table"][0] + (1 << 16), *runs[0]["table"][1:]],
               out={"failed": FAIL_TOO_LONG})
    return runs, bad


@pytest.mark.slow
@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
def test_real_core_uart_cocotb(tiny_core, tiny_image, resident, tmp_path):  # noqa: F811
    """Tiny preset, quantized tiny model: two sequences (5 rows, then max_seq) through the host
    code over the bit-level UART; the fifth frame (the first run's activation frame) has a
    payload bit flipped on the line: it is NAKed and resent. Outputs equal ``encode_int`` bit
    for bit. ``resident``: the second run sends only its activations (the core replays the
    image it kept from the first).

    Then packed runs (the segment table in ACT_TABLE frames, ``tuser`` into the core): each
    segment's output equals ``encode_int`` of its text alone. Streamed: the first packed run
    (its table between the image's header and the rest of the image). Resident: all packed
    runs, a run with a malformed table (the core fails it, cause ``FAIL_TOO_LONG``), then the
    first packed run again (the image streamed again after the failure)."""
    import json

    from bertcore.core.image import unpack_segments
    from sim.runner import run_cocotb
    config = TINY.replace(resident=resident)
    runs = _tiny_runs(tiny_core, config, 21)
    packed, bad = _tiny_packed_runs(tiny_core, config)
    runs += packed + [bad, packed[0]] if resident else packed[:1]
    report = tmp_path / "report.json"
    # frames of the first run: 0 RESET, 1 STATUS (load_parameters), 2 STATUS, 3 PARAM (header),
    # 4 ACT (last), ...
    params = {"divisor": DIVISOR, "config": config.to_dict(), "image": tiny_image,
              "runs": runs, "corrupt": [4, P.HEADER_BYTES + 7, 0x04], "timeout_bits": 4000,
              "report": str(report)}
    run_cocotb(UARTCoreTop(config, DIVISOR, core_domain=True), toplevel="bertcore_uart_top",
               test_module="tb_board", simulator="verilator", params=params,
               name=f"board_uart_tiny{'_resident' if resident else ''}")
    result = json.loads(report.read_text())
    assert result["stats"]["naks"] == 1 and result["stats"]["timeouts"] == 0
    assert len(result["outputs"]) == len(runs)
    for r, got in zip(runs, result["outputs"]):       # (the bench compared the words too)
        if "segments" in r and "failed" not in r["out"]:
            for i, y in zip(r["indices"], unpack_segments(got, r["segments"], config)):
                x = tiny_core.embed_int(tiny_core.encode_text(REAL_TEXTS[i]))
                assert torch.equal(y, tiny_core.encode_int(x)), REAL_TEXTS[i]
        else:
            assert got == r["out"]
    assert all(c > 0 for c in result["cycles"])
    if resident:                     # the replayed run is not bound by the UART
        assert result["cycles"][1] < result["cycles"][0] / 10
    print("board over UART:", result)


def test_host_crc_is_the_gateware_crc():
    """The host's CRC (``binascii.crc_hqx``) is the bridge's ``amaranth.lib.crc`` algorithm;
    a frame's CRC over ``type .. crc_lo`` is the residue (zero)."""
    params = P.CRC16(8)
    assert P.crc16(b"123456789") == params.compute(b"123456789") == 0x29B1
    rng = random.Random(11)
    for n in (0, 1, 2, 7, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert P.crc16(data) == params.compute(data), n
        assert P.crc16(P.encode_frame(P.T_ACT, n, data)[1:]) == params.residue() == 0


def test_bridge_lint():
    from sim.runner import lint
    lint(UARTBridge(32, DIVISOR), toplevel="bertcore_uart_bridge")


def test_core_top_lint():
    """The board tops' structure: the core in its ``core`` domain, its datapath in the ``dp``
    domain (both clocks assigned from ``sync``, each reset by one flip-flop), lint-clean."""
    from sim.runner import lint
    top = UARTCoreTop(TINY, DIVISOR, core_domain=True)
    assert top._core.dp_domain and not EncoderCore(TINY).dp_domain
    lint(top, toplevel="bertcore_uart_top")


@pytest.mark.parametrize("board", ["ulx3s-85f", "ulx3s-85f-sdram", "orangecrab-25f",
                                   "icebreaker"])
def test_board_tops_elaborate(board):
    """Each board top elaborates on its platform (stand-in core: fast) with its PLL; the SDRAM
    board with LiteDRAM's generated core."""
    from bertcore.boards.top import BoardTop, board_spec
    spec = board_spec(board)
    plan = spec.make_platform().build(BoardTop(board, core=EchoCore(spec.config)), name="top",
                                      do_build=False)
    rtlil = plan.files["top.il"]
    assert ("EHXPLLL" if spec.family == "ecp5" else "SB_PLL40_PAD") in rtlil
    if spec.sdram is not None:             # LiteDRAM's board variant and the SDRAM clock pin
        assert "litedram_core" in rtlil and "ODDRX1F" in rtlil


def test_parse_nextpnr_log():
    from bertcore.boards.build import parse_nextpnr_log
    log = """Info: Max frequency for clock '$glbnet$clk': 80.00 MHz (FAIL at 100.00 MHz)
Info: Device utilisation:
Info:             TRELLIS_IO:       5/    365     1%
Info:           TRELLIS_COMB:   12345/  83640    14%
Info:             MULT18X18D:      16/    156    10%

Info: Max frequency for clock '$glbnet$clk': 101.50 MHz (PASS at 100.00 MHz)
"""
    fmax, util = parse_nextpnr_log(log)
    assert fmax == {"$glbnet$clk": 101.5}
    assert util == {"TRELLIS_IO": (5, 365), "TRELLIS_COMB": (12345, 83640),
                    "MULT18X18D": (16, 156)}


def test_failing_endpoints():
    """Endpoints over the period, grouped by register or memory, latest first; logic cells,
    combinational multipliers (products after operands) and clock pins are not endpoints; a
    multiplier with input registers (products from the clock) is, one group per operand."""
    from bertcore.flow.paths import failing_endpoints

    def net(driver, port, *sinks):
        return {"driver": driver, "port": port, "net": driver,
                "endpoints": [{"cell": c, "port": p, "delay": [0.5, d]} for c, p, d in sinks]}

    report = {"detailed_net_timings": [
        net("top.core.a_TRELLIS_FF_Q", "Q", ("top.core.lut_LUT4_Z", "A", 12.0),
            ("top.core.b_TRELLIS_FF_Q_1", "CE", 10.4), ("top.core.b_TRELLIS_FF_Q", "CLK", 99.0)),
        net("top.core.lut_LUT4_Z", "F", ("top.core.b_TRELLIS_FF_Q_2", "DI", 11.0),
            ("top.core.b_TRELLIS_FF_Q_3", "DI", 10.2), ("top.core.k_2.0.15$DPRAM_COMB1", "WD", 10.6),
            ("top.core.k_2.1.3$DPRAM_COMB0", "WD", 9.9), ("top.core.m_MULT18X18D", "A3", 7.0),
            ("top.core.r.mult18x18d", "A5", 10.3), ("top.core.r.mult18x18d", "B0", 9.5)),
        net("top.core.m_MULT18X18D", "P3", ("top.core.p_TRELLIS_FF_Q_7", "M", 10.8)),
        net("top.core.s_TRELLIS_FF_Q", "Q", ("top.core.r.mult18x18d", "A6", 10.1)),
        net("top.core.r.mult18x18d", "P0", ("top.core.y_TRELLIS_FF_Q", "DI", 2.0)),
        net("top.bridge.x_TRELLIS_FF_Q", "Q", ("top.core.b_TRELLIS_FF_Q_2", "LSR", 9.0)),
        # a LUT RAM cell drives its read data too: its write inputs are endpoints all the same
        net("top.core.k_2.0.15$DPRAM_COMB1", "F0", ("top.core.lut2_LUT4_Z", "B", 10.9)),
        net("top.core.lut2_LUT4_Z", "F", ("top.core.k_2.0.15$DPRAM_COMB1", "WAD2", 10.1),
            ("top.core.k_2.0.15$DPRAM_COMB1", "WRE", 9.8)),
    ]}
    assert failing_endpoints(report, 10.0) == [
        {"endpoint": "core.b.DI", "arrival_ns": 11.0, "count": 2},
        {"endpoint": "core.p.M", "arrival_ns": 10.8, "count": 1},
        {"endpoint": "core.k_*.WD", "arrival_ns": 10.6, "count": 1},
        {"endpoint": "core.b.CE", "arrival_ns": 10.4, "count": 1},
        {"endpoint": "core.r.mult18x18d.A", "arrival_ns": 10.3, "count": 2},
        {"endpoint": "core.k_*.WAD2", "arrival_ns": 10.1, "count": 1},
    ]
    assert len(failing_endpoints(report, 10.0, limit=2)) == 2
    assert failing_endpoints(report, 30.0) == []
    with pytest.raises(ValueError, match="detailed-timing-report"):
        failing_endpoints({"fmax": {}}, 10.0)


# -- `bertcore board run` against a host-protocol-level fake board on a pty ------------------------

class FakeBoard:
    """A board at frame level behind a pseudo-terminal: ``FakeBoard(config).port`` is a device
    path (``/dev/pts/N``) that pyserial opens like ``/dev/ttyUSB0``.

    It speaks ``docs/uart-protocol.md`` like :class:`bertcore.boards.bridge.UARTBridge` (CRC
    check and NAK, stored reply for a repeated sequence byte, STATUS, RESET, READ in chunks) and
    computes with :func:`bertcore.core.interp.run_image` on the image it received, so an image
    of another core configuration fails the run as on the board (the error flag and a failure
    packet, cause ``FAIL_HEADER``, flagged ``DATA_FAILED`` in the DATA reply); activations with
    no image fail with ``FAIL_NO_IMAGE``.
    ``config.resident`` keeps the image of a successful run for runs that start with
    activations; :meth:`power_cycle` forgets it. The real core behind the real bridge is covered by
    :func:`test_real_core_uart_cocotb`.

    Packed runs: ACT_TABLE frames carry the segment table; the packet is checked as the core
    does (:func:`~bertcore.core.image.check_activation_packet`: a malformed table fails the
    run with ``FAIL_TOO_LONG``) and run with its segments. ``tables=False`` is a bridge from
    before packed runs: no ``ST_TABLE`` in STATUS, ACT_TABLE NAKed (unknown type).

    ``sdram=True``: a board with an SDRAM image store (LOAD, VERIFY, RUN, the long STATUS; the
    fingerprint is ``zlib.crc32`` of the words, as the store's CRC-32); ``capacity`` words of
    SDRAM; ``init_error`` a DRAM that fails its bring-up. A power cycle empties the SDRAM;
    :meth:`reconfigure` (a new bitstream, the SDRAM powered) forgets only the valid image.
    """

    def __init__(self, config, max_payload=256, *, sdram=False, capacity=1 << 23,
                 init_error=False, tables=True):
        import os
        import pty
        import threading
        self.config = config
        self.max_payload = max_payload
        self._nb = config.bus_width // 8
        self._master, self._slave = pty.openpty()
        self.port = os.ttyname(self._slave)
        self.frames = []                     # types of the frames received
        self.executed = []                   # types of the frames executed, in order
        self.sdram, self.capacity, self.init_error = sdram, capacity, init_error
        self.tables = tables
        self.packets = []                    # segment lengths of each run computed
        self.corrupt = False
        self.power_cycle()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def power_cycle(self):
        self._dram = []                      # what the SDRAM holds
        self.reconfigure()

    def reconfigure(self):
        self._stored = None
        self._sd_image = None                # the verified image in SDRAM
        self._sd_error = False
        self._loading = None                 # words of a load in progress
        self._last = None
        self._reset()

    def _reset(self):
        self._params, self._acts, self._table, self._out = [], [], [], []
        self._failed = False                 # _out is a failure packet
        self._running = self._dropping = self._replay = False
        self._p_done = self._a_done = False
        self._error = False
        self._cycles = 0

    def close(self):
        import os
        self._stop.set()
        self._thread.join()
        os.close(self._master)
        os.close(self._slave)

    # -- line ---------------------------------------------------------------------------------

    def _read(self, n):
        import os
        import select
        data = b""
        while len(data) < n:
            if self._stop.is_set():
                raise EOFError
            if select.select([self._master], [], [], 0.02)[0]:
                data += os.read(self._master, n - len(data))
        return data

    def _serve(self):
        import os
        try:
            while True:
                if self._read(1)[0] != P.SOF:
                    continue
                head = self._read(4)
                n = head[2] | head[3] << 8
                if n > self.max_payload:
                    reply = P.encode_frame(P.R_NAK, head[1], [P.NAK_LENGTH])
                else:
                    rest = self._read(n + P.TRAILER_BYTES)
                    if P.crc16(head + rest):
                        reply = P.encode_frame(P.R_NAK, head[1], [P.NAK_CRC])
                    elif self._last and self._last[0] == head[:2]:
                        reply = self._last[1]        # a repeat: answered, not executed
                    else:
                        self.executed.append(head[0])
                        rtype, body = self._frame(head[0], rest[:n])
                        reply = P.encode_frame(rtype, head[1], body)
                        if rtype != P.R_NAK:
                            self._last = (head[:2], reply)
                os.write(self._master, reply)
        except (EOFError, OSError):
            pass

    # -- frames -------------------------------------------------------------------------------

    def _status(self, accepted=False):
        nb = self._nb
        flags = ((P.ST_BUSY if self._running else 0) | (P.ST_ERROR if self._error else 0)
                 | (P.ST_OUTPUT if self._out else 0) | (P.ST_TABLE if self.tables else 0))
        body = (bytes([flags]) + self._cycles.to_bytes(4, "little") + bytes([nb])
                + self.max_payload.to_bytes(2, "little"))
        if self.sdram:
            img = self._sd_image or []
            sd = (P.SD_INIT_DONE | (P.SD_INIT_ERROR if self.init_error else 0)
                  | (P.SD_VALID if self._sd_image is not None else 0)
                  | (P.SD_ERROR if self._sd_error else 0)
                  | (P.SD_LOADING if self._loading is not None else 0)
                  | (P.SD_ACCEPTED if accepted else 0))
            fp = zlib.crc32(b"".join(w.to_bytes(nb, "little") for w in img)) if img else 0
            body += bytes([sd]) + fp.to_bytes(4, "little") + len(img).to_bytes(4, "little")
        return P.R_STATUS, body

    def _frame(self, ftype, payload):
        nb = self._nb
        if ftype == P.T_STATUS:
            return self._status()
        if ftype == P.T_RESET:
            self._reset()
            self._stored = self._loading = None
            return P.R_ACK, b""
        if self.sdram and ftype == P.T_LOAD:
            if self.init_error or self._running:
                return self._status(False)
            self._loading, self._sd_image, self._sd_error = [], None, False
            return self._status(True)
        if self.sdram and ftype == P.T_VERIFY:
            if len(payload) != P.VERIFY_BYTES:
                return P.R_NAK, bytes([P.NAK_LENGTH])
            if self.init_error or self._running:
                return self._status(False)
            count = int.from_bytes(payload[:4], "little")
            want = int.from_bytes(payload[4:], "little")
            held = self._dram[:count] + [0] * (count - len(self._dram))
            ok = 0 < count <= self.capacity and zlib.crc32(
                b"".join(w.to_bytes(nb, "little") for w in held)) == want
            self._sd_image, self._sd_error = (held if ok else None), not ok
            return self._status(True)
        if self.sdram and ftype == P.T_RUN:
            if self.init_error or self._running or self._sd_image is None:
                return self._status(False)
            self._reset()
            self._running, self._replay = True, True
            self._params, self._p_done = list(self._sd_image), True
            return self._status(True)
        if ftype == P.T_READ:
            per = (self.max_payload - 1) // nb
            words, self._out = self._out[:per], self._out[per:]
            last = bool(words) and not self._out and not self._running
            flags = ((P.DATA_LAST if last else 0) | (P.DATA_ERROR if self._error else 0)
                     | (P.DATA_FAILED if words and self._failed else 0))
            return P.R_DATA, bytes([flags]) + b"".join(w.to_bytes(nb, "little") for w in words)
        acts = (P.T_ACT, P.T_ACT_LAST) + ((P.T_ACT_TABLE,) if self.tables else ())
        if ftype not in (P.T_PARAM, P.T_PARAM_LAST, *acts) or len(payload) % nb:
            return P.R_NAK, bytes([P.NAK_TYPE if len(payload) % nb == 0 else P.NAK_LENGTH])
        words = [int.from_bytes(payload[i:i + nb], "little") for i in range(0, len(payload), nb)]
        last = ftype & 0x10
        if self._loading is not None and ftype in (P.T_PARAM, P.T_PARAM_LAST):
            self._loading += words
            if last:
                if len(self._loading) > self.capacity:
                    self._sd_error = True
                else:
                    self._sd_image = self._loading
                    if self.corrupt:                 # a DRAM that stores a bit wrongly
                        self._sd_image[-1] ^= 1
                    self._dram = list(self._sd_image)
                self._loading = None
            return P.R_ACK, b""
        if ftype in (P.T_PARAM, P.T_PARAM_LAST):
            if not self._running:
                self._reset()
                self._running = True
            self._params += words
            self._p_done = bool(last)
        elif self._dropping or not self._running and self._stored is None:
            if not self._dropping:                           # activations before parameters
                self._out, self._failed = [FAIL_NO_IMAGE], True
            self._error, self._dropping = True, not last
        else:
            if not self._running:                            # resident: replay the image
                self._reset()
                self._running, self._replay = True, True
                self._params, self._p_done = list(self._stored), True
            if ftype == P.T_ACT_TABLE:
                self._table += words
            else:
                self._acts += words
                self._a_done = bool(last)
        if self._running and self._p_done and self._a_done:
            self._compute()
        return P.R_ACK, b""

    def _compute(self):
        from bertcore.core.image import (FAIL_TOO_LONG, ImageError, check_activation_packet,
                                         pack_activations, unpack_activations)
        from bertcore.core.interp import run_image
        cfg = self.config
        self._running = False
        cause = None
        try:
            lengths = check_activation_packet(self._table, self._acts, cfg)
            cause = FAIL_HEADER
            rows = sum(lengths)
            y = run_image(self._params, unpack_activations(self._acts, rows, cfg), cfg,
                          segments=lengths if self._table else None)
        except ImageError:
            self._error, self._stored = True, None
            self._out, self._failed = [FAIL_TOO_LONG if cause is None else cause], True
            return
        self.packets.append(lengths)
        self._out = pack_activations(y, cfg)
        self._cycles = 1000 + rows
        if cfg.resident:
            self._stored = self._params


@pytest.fixture
def fake_board(request):
    boards = []

    def make(config, **kwargs):
        boards.append(FakeBoard(config, **kwargs))
        return boards[-1]
    yield make
    for b in boards:
        b.close()


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, tiny_core):  # noqa: F811
    from bertcore.quant.artifact import save_artifact
    path = tmp_path_factory.mktemp("board") / "tiny.safetensors"
    save_artifact(tiny_core, path)
    return path


BOARD_TEXTS = ["a woman plays music on the beach", "the old car is fast"]


def _board_run(capsys, argv):
    import json

    from bertcore.cli import main
    rc = main(["board", "run", "--json", *argv])
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else None), captured.err


def test_cli_board_run_streamed(fake_board, tiny_artifact, capsys, tmp_path):
    """`bertcore board run` through pyserial on a pty: every run streams the image (not
    resident), the outputs are bit-exact and the cosine to the int backend is 1."""
    board = fake_board(TINY)
    out = tmp_path / "emb.npy"
    rc, rep, err = _board_run(capsys, ["--port", board.port, "--quantized", str(tiny_artifact),
                                       "--preset", "tiny", *BOARD_TEXTS, "-o", str(out)])
    assert rc == 0, err
    assert [r["bit_exact"] for r in rep["runs"]] == [True, True]
    assert all(abs(r["cosine"] - 1) < 1e-9 and r["image_streamed"] for r in rep["runs"])
    assert rep["link"]["naks"] == 0 and board.frames == []
    import numpy as np
    from bertcore.embed import embed_texts
    ref = embed_texts(BOARD_TEXTS, backend="int", quantized=tiny_artifact)
    assert np.allclose(np.load(out), ref, atol=1e-6)


def test_cli_board_run_resident_load_once(fake_board, tiny_artifact, capsys):
    """Resident core: the image goes over the line once; `--no-load` in a later session sends
    activations only; after a power cycle `--no-load` finds no image and streams it."""
    config = TINY.replace(resident=True)
    board = fake_board(config)
    args = ["--port", board.port, "--quantized", str(tiny_artifact), "--preset", "tiny",
            "--set", "resident=true"]
    rc, rep, err = _board_run(capsys, args + ["--no-pack", *BOARD_TEXTS])
    assert rc == 0, err
    assert [r["image_streamed"] for r in rep["runs"]] == [True, False]
    rc, rep, err = _board_run(capsys, args + ["--no-pack", "--no-load", *BOARD_TEXTS])
    assert rc == 0, err
    assert [r["image_streamed"] for r in rep["runs"]] == [False, False]
    assert all(r["bit_exact"] for r in rep["runs"])
    board.power_cycle()
    rc, rep, err = _board_run(capsys, args + ["--no-load", BOARD_TEXTS[0]])
    assert rc == 0, err
    assert rep["runs"][0]["image_streamed"] and rep["runs"][0]["bit_exact"]


def test_cli_board_run_prints_table(fake_board, tiny_artifact, capsys):
    from bertcore.cli import main
    board = fake_board(TINY)
    assert main(["board", "run", "--quiet", "--port", board.port, "--quantized",
                 str(tiny_artifact), BOARD_TEXTS[0]]) == 0      # preset from the model shape
    assert main(["board", "run", "--port", board.port, "--quantized", str(tiny_artifact),
                 BOARD_TEXTS[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["cos(board,", "int)"]
    assert out[1].split()[:2] == ["1.000000", "yes"] and out[-1].startswith("link: ")
    assert main(["board", "status", "--port", board.port]) == 0
    assert "busy=False error=False" in capsys.readouterr().out


PACK_TEXTS = ["a man is playing a guitar", "dogs run", "the quick brown fox jumps over it",
              "hi", "a child reads a book in the park", "rain"]


@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
def test_cli_board_run_packs(fake_board, tiny_artifact, capsys, resident):
    """`board run` packs texts first-fit into runs of up to max_seq rows (the results in input
    order, bit-exact, equal to the int backend's embeddings); --no-pack runs one text per run;
    a board whose bridge does not carry segment tables gets one run per text."""
    import numpy as np
    from bertcore.embed import embed_texts
    from bertcore.packing import first_fit
    config = TINY.replace(resident=resident)
    board = fake_board(config)
    args = ["--port", board.port, "--quantized", str(tiny_artifact), "--preset", "tiny",
            "--set", f"resident={str(resident).lower()}"]
    ref = embed_texts(PACK_TEXTS, backend="int", quantized=tiny_artifact)
    rc, rep, err = _board_run(capsys, args + PACK_TEXTS)
    assert rc == 0, err
    tokens = [r["tokens"] for r in rep["runs"]]
    groups = first_fit(tokens, config.max_seq, config.max_segments)
    assert board.packets == [[tokens[i] for i in g] for g in groups]
    assert len(groups) < len(PACK_TEXTS) and max(map(len, groups)) > 1
    assert [r["text"] for r in rep["runs"]] == PACK_TEXTS
    assert all(r["bit_exact"] and abs(r["cosine"] - 1) < 1e-9 for r in rep["runs"])
    for r, group in enumerate(groups):
        assert {rep["runs"][i]["run"] for i in group} == {r}
        assert all(rep["runs"][i]["texts_in_run"] == len(group) for i in group)
    board.packets.clear()
    rc, rep, err = _board_run(capsys, args + ["--no-pack", *PACK_TEXTS])
    assert rc == 0, err
    assert board.packets == [[n] for n in tokens]
    assert [r["run"] for r in rep["runs"]] == list(range(len(PACK_TEXTS)))
    old = fake_board(config, tables=False)
    from bertcore.cli import main
    assert main(["board", "run", "--port", old.port, *args[2:], "-o",
                 str(tiny_artifact.parent / "old.npy"), *PACK_TEXTS]) == 0
    out = capsys.readouterr().out
    assert "runs: 6 for 6 text(s), not packed: the board's bridge does not carry" in out
    assert old.packets == [[n] for n in tokens]
    assert np.allclose(np.load(tiny_artifact.parent / "old.npy"), ref, atol=1e-6)


def _one_line_error(capsys, argv):
    from bertcore.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bertcore: error: "), err
    return err[0]


def test_cli_board_run_bad_input(fake_board, tiny_artifact, capsys, tmp_path):
    """Missing or unopenable port, a silent line, a board of another configuration or bus
    width, an artifact of another shape, --no-load without residency: one line, exit 2."""
    import os
    import pty
    art = str(tiny_artifact)
    assert "--port" in _one_line_error(capsys, ["board", "run", "--quantized", art, "x"])
    msg = _one_line_error(capsys, ["board", "run", "--port", str(tmp_path / "ttyUSB9"),
                                   "--quantized", art, "x"])
    assert "could not open port" in msg and "ttyUSB9" in msg
    master, slave = pty.openpty()                   # a device nobody answers on
    try:
        msg = _one_line_error(capsys, ["board", "run", "--port", os.ttyname(slave),
                                       "--timeout", "0.02", "--retries", "1", "--quantized",
                                       art, "x"])
        assert "no valid reply from the board" in msg and "failed after 2 attempts" in msg
    finally:
        os.close(master)
        os.close(slave)
    board = fake_board(TINY)
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--quantized", art,
                                   "--preset", "tiny", "--set", "array_rows=2", "--set",
                                   "array_cols=2", "x"])
    assert "the core rejected the run: bad image header" in msg and "configuration" in msg
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--quantized", art,
                                   "--preset", "tiny", "--set", "bus_width=16", "x"])
    assert "the board's bus is 32 bits" in msg
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--quantized", art,
                                   "--preset", "minilm", "x"])
    assert "the model has hidden=32, the core 384" in msg
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--quantized", art,
                                   "--preset", "nope", "x"])
    assert "unknown preset 'nope'" in msg
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--quantized", art,
                                   "--no-load", "x"])
    assert "--no-load needs a resident" in msg
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--quantized", art,
                                   " ".join(["the"] * 40)])
    assert "the core holds at most 16" in msg
    # the board still works after all that
    assert _board_run(capsys, ["--port", board.port, "--quantized", art, "x"])[0] == 0


@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
def test_cli_board_run_bad_segment_table(fake_board, tiny_artifact, capsys, monkeypatch,
                                         resident):
    """A host that packs a malformed segment table (a bug): the core fails the run (cause
    FAIL_TOO_LONG, DATA_FAILED), `board run` prints one line and exits 2, and the next run on
    the same board works (a resident core gets the image streamed again)."""
    from bertcore.core import image
    config = TINY.replace(resident=resident)
    board = fake_board(config)
    args = ["--port", board.port, "--quantized", str(tiny_artifact), "--preset", "tiny",
            "--set", f"resident={str(resident).lower()}"]
    real = image.pack_segments

    def buggy(xs, config):
        table, data = real(xs, config)
        return [table[0] + (1 << 16)] + table[1:], data      # the first length one too long

    if resident:                             # a stored image that the failed run invalidates
        assert _board_run(capsys, args + [PACK_TEXTS[0]])[0] == 0
    monkeypatch.setattr(image, "pack_segments", buggy)
    msg = _one_line_error(capsys, ["board", "run", *args, *PACK_TEXTS])
    assert "the core rejected the run: bad activation packet" in msg and "segment table" in msg
    assert "cause code 3" in msg
    monkeypatch.undo()
    rc, rep, err = _board_run(capsys, args + PACK_TEXTS)
    assert rc == 0, err
    assert all(r["bit_exact"] for r in rep["runs"])
    assert rep["runs"][0]["image_streamed"]


# -- A board with an SDRAM image store (LOAD / RUN, the long STATUS) -----------------------------

class StoreStandIn(wiring.Component):
    """Stand-in for :class:`bertcore.boards.image_store.ImageStore` (same members) for the
    Amaranth simulator, which cannot run LiteDRAM's Verilog: the image in a block RAM of
    ``depth`` words, the fingerprint a CRC-32 (``amaranth.lib.crc``, as the store's) over the
    words taken; ``init_done`` after ``init_cycles``, or ``init_error`` with ``fail_init``. A
    longer image than ``depth`` raises ``error`` (not valid), like the store's overflow.
    ``verify`` reads the first ``expect_words`` words of the memory (``held``: its contents at
    power-up, an image kept from before) with a second CRC-32. The image store itself on
    LiteDRAM's simulation model is tested by ``tests/test_sdram.py``."""

    def __init__(self, bus_width=32, depth=256, init_cycles=50, fail_init=False, held=()):
        from amaranth.lib import data
        self._depth, self._init, self._fail = depth, init_cycles, fail_init
        self._held = list(held)
        layout = data.StructLayout({"data": bus_width, "last": 1})
        self._bus = bus_width
        super().__init__({
            "load": In(1), "verify": In(1), "run": In(1), "cancel": In(1),
            "expect_words": In(32), "expect_fingerprint": In(32),
            "s_load": In(stream.Signature(layout)), "m_param": Out(stream.Signature(layout)),
            "busy": Out(1), "valid": Out(1), "error": Out(1),
            "init_done": Out(1), "init_error": Out(1), "fingerprint": Out(32), "words": Out(16),
        })

    def elaborate(self, platform):
        from amaranth.lib.crc.catalog import CRC32_ETHERNET
        m = Module()
        m.submodules.mem = mem = Memory(shape=self._bus, depth=self._depth, init=self._held)
        w, r = mem.write_port(), mem.read_port(domain="comb")
        m.submodules.crc = crc = CRC32_ETHERNET(data_width=self._bus).create()
        m.submodules.crc_v = crc_v = CRC32_ETHERNET(data_width=self._bus).create()
        count, want = Signal(32), Signal(32)
        t = Signal(range(self._init + 1))
        with m.If(t != self._init):
            m.d.sync += t.eq(t + 1)
        with m.Else():
            m.d.sync += [self.init_done.eq(1), self.init_error.eq(self._fail)]
        n = Signal(16)
        over = Signal()
        m.d.comb += [crc.data.eq(self.s_load.payload.data), w.data.eq(self.s_load.payload.data),
                     w.addr.eq(n), r.addr.eq(n)]
        ready = self.init_done & ~self.init_error
        with m.FSM():
            with m.State("IDLE"):
                with m.If(ready & self.load):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [n.eq(0), over.eq(0), self.valid.eq(0), self.error.eq(0)]
                    m.next = "LOAD"
                with m.Elif(ready & self.verify):
                    bad = (self.expect_words == 0) | (self.expect_words > self._depth)
                    m.d.sync += [n.eq(0), count.eq(self.expect_words), self.valid.eq(0),
                                 want.eq(self.expect_fingerprint), self.error.eq(bad)]
                    with m.If(~bad):
                        m.d.comb += crc_v.start.eq(1)
                        m.next = "VERIFY"
                with m.Elif(ready & self.run & self.valid):
                    m.d.sync += n.eq(0)
                    m.next = "RUN"
            with m.State("VERIFY"):
                m.d.comb += [self.busy.eq(1), crc_v.data.eq(r.data), crc_v.valid.eq(1)]
                m.d.sync += n.eq(n + 1)
                with m.If(self.cancel):
                    m.next = "IDLE"
                with m.Elif(n == count - 1):
                    m.next = "VCHECK"
            with m.State("VCHECK"):
                match = crc_v.crc == want
                m.d.comb += self.busy.eq(1)
                m.d.sync += [self.valid.eq(match), self.error.eq(~match),
                             self.fingerprint.eq(crc_v.crc), self.words.eq(count)]
                m.next = "IDLE"
            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1), self.s_load.ready.eq(1)]
                with m.If(self.cancel):                  # an interrupted load: no image
                    m.next = "IDLE"
                with m.Elif(self.s_load.valid):
                    m.d.comb += [crc.valid.eq(1), w.en.eq(n < self._depth)]
                    m.d.sync += [n.eq(n + 1), over.eq(over | (n >= self._depth))]
                    with m.If(self.s_load.payload.last):
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [self.valid.eq(~over), self.error.eq(over),
                             self.fingerprint.eq(crc.crc), self.words.eq(n)]
                m.next = "IDLE"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), self.m_param.valid.eq(1),
                             self.m_param.payload.data.eq(r.data),
                             self.m_param.payload.last.eq(n == self.words - 1)]
                with m.If(self.cancel):                  # an interrupted run keeps the image
                    m.next = "IDLE"
                with m.Elif(self.m_param.ready):
                    m.d.sync += n.eq(n + 1)
                    with m.If(n == self.words - 1):
                        m.next = "IDLE"
        return m


def sdram_port(**store_args):
    top = UARTCoreTop(ECHO_CFG, DIVISOR, core=EchoCore(ECHO_CFG), max_payload=64,
                      store=StoreStandIn(**store_args))
    return top, SimPort(top, top.rx, top.tx, DIVISOR)


def test_sdram_load_once_run_many():
    """LOAD + PARAM frames into the store, the fingerprint compared; runs send RUN and the
    activations only; a corrupted PARAM frame during the load is NAKed and resent."""
    from bertcore.board import image_fingerprint, load_image
    top, port = sdram_port()
    image = echo_image(12)
    link = BoardLink(port)
    st = link.status()
    assert st["sdram"] and not st["image_valid"] and st["image_words"] == 0
    sent = []
    original = link.transact

    def transact(ftype, payload=b""):
        sent.append(ftype)
        if sent.count(P.T_PARAM) == 1 and ftype == P.T_PARAM:
            port.corrupt_tx(P.HEADER_BYTES + 2, 0x10)
        return original(ftype, payload)

    link.transact = transact
    load_image(link, image, ECHO_CFG)
    assert link.stats["naks"] == 1 and P.T_LOAD in sent
    st = link.status()
    assert st["image_valid"] and not st["image_error"] and st["init_done"]
    assert st["fingerprint"] == image_fingerprint(image, 32) and st["image_words"] == len(image)
    for n, seed in ((2, 1), (6, 2)):
        before = len(sent)
        act = random_act(n, seed)
        assert run(link, act, n, ECHO_CFG) == echo_expected(image, act)
        assert not link.streamed and P.T_PARAM not in sent[before:]
        assert sent[before:].count(P.T_RUN) == 1
    # a RESET (or break) keeps the stored image; another model's image is refused
    link.reset()
    act = random_act(3, 3)
    assert run(link, act, 3, ECHO_CFG) == echo_expected(image, act)
    link.image = echo_image(13)
    with pytest.raises(BoardError, match="holds another image"):
        run(link, act, 3, ECHO_CFG)


def test_sdram_bad_input():
    """No SDRAM on the board, a failed SDRAM bring-up, an image larger than the SDRAM, RUN
    before any load: an ImageStoreError each; the store stays usable."""
    from bertcore.board import ImageStoreError, load_image, load_parameters
    image = echo_image(14)
    _, port = echo_port()
    with pytest.raises(ImageStoreError, match="no SDRAM image store"):
        load_image(port, image, ECHO_CFG)
    _, port = sdram_port(fail_init=True)
    with pytest.raises(ImageStoreError, match="failed its bring-up check"):
        load_image(port, image, ECHO_CFG)
    _, port = sdram_port(depth=len(image) - 1)
    with pytest.raises(ImageStoreError, match="does not verify"):
        load_image(port, image, ECHO_CFG)
    _, port = sdram_port()
    link = load_parameters(port, image, ECHO_CFG)
    with pytest.raises(ImageStoreError, match="holds no image"):
        run(link, random_act(1, 1), 1, ECHO_CFG)
    assert link.store_command(P.T_RUN)["accepted"] is False
    load_image(link, image, ECHO_CFG)
    act = random_act(1, 2)
    assert run(link, act, 1, ECHO_CFG) == echo_expected(image, act)


def test_sdram_verify_only_load():
    """A verify-only load (VERIFY: words and fingerprint; the store reads its memory back):
    the image the store already holds (kept across a reconfiguration) becomes valid without a
    PARAM frame and runs bit-exact; another image's fingerprint, a word count of zero, one
    larger than the SDRAM or a wrong one end as image error with no valid image (a run is
    refused); a VERIFY whose payload is not 8 bytes is NAKed; no SDRAM, a failed bring-up."""
    import struct

    from bertcore.board import ImageStoreError, image_fingerprint, load_image
    image = echo_image(15)
    fp = image_fingerprint(image, 32)
    _, port = sdram_port(held=image)
    link = BoardLink(port)
    sent = []
    original = link.transact

    def transact(ftype, payload=b""):
        sent.append(ftype)
        return original(ftype, payload)

    link.transact = transact
    load_parameters(link, image, ECHO_CFG)
    with pytest.raises(ImageStoreError, match="holds no image"):
        run(link, random_act(1, 1), 1, ECHO_CFG)
    load_image(link, image, ECHO_CFG, verify_only=True)
    assert P.T_VERIFY in sent and P.T_PARAM not in sent and P.T_PARAM_LAST not in sent
    st = link.status()
    assert st["image_valid"] and st["fingerprint"] == fp and st["image_words"] == len(image)
    act = random_act(4, 5)
    assert run(link, act, 4, ECHO_CFG) == echo_expected(image, act)
    # the store does not hold another image: error, no valid image, runs refused
    other = echo_image(16)
    with pytest.raises(ImageStoreError, match="does not hold this image"):
        load_image(link, other, ECHO_CFG, verify_only=True)
    st = link.status()
    assert st["image_error"] and not st["image_valid"]
    load_parameters(link, image, ECHO_CFG)
    with pytest.raises(ImageStoreError, match="holds no image"):
        run(link, act, 4, ECHO_CFG)
    # bad word counts (raw frames): zero, larger than the SDRAM, one word short
    for count, want in ((0, fp), (257, fp), (len(image) - 1, fp)):
        load_image(link, image, ECHO_CFG, verify_only=True)
        assert link.store_command(P.T_VERIFY, struct.pack("<II", count, want))["accepted"]
        st = link.status()
        while st["store_busy"]:
            st = link.status()
        assert st["image_error"] and not st["image_valid"], count
        assert link.store_command(P.T_RUN)["accepted"] is False
    with pytest.raises(LinkError, match="bad length"):
        link.store_command(P.T_VERIFY, struct.pack("<I", len(image)))
    load_image(link, image, ECHO_CFG, verify_only=True)
    assert run(link, act, 4, ECHO_CFG) == echo_expected(image, act)
    # no image store; a DRAM that failed its bring-up
    _, port = echo_port()
    with pytest.raises(ImageStoreError, match="no SDRAM image store"):
        load_image(port, image, ECHO_CFG, verify_only=True)
    _, port = sdram_port(fail_init=True, held=image)
    with pytest.raises(ImageStoreError, match="failed its bring-up check"):
        load_image(port, image, ECHO_CFG, verify_only=True)


def test_cli_board_load_and_run_sdram(fake_board, tiny_artifact, capsys):
    """`bertcore board load` stores and verifies the image; `board run` then sends activations
    only (bit-exact); a run before the load, with another model or after a power cycle is
    refused with one line."""
    from bertcore.cli import main
    board = fake_board(TINY, sdram=True)
    args = ["--port", board.port, "--preset", "tiny", "--quantized", str(tiny_artifact)]
    msg = _one_line_error(capsys, ["board", "run", *args, BOARD_TEXTS[0]])
    assert "holds no image" in msg and "board load" in msg
    assert main(["board", "load", *args]) == 0
    out = capsys.readouterr().out
    assert "loaded 5596 words" in out and "verified" in out
    rc, rep, err = _board_run(capsys, args + BOARD_TEXTS)
    assert rc == 0, err
    assert all(r["bit_exact"] and not r["image_streamed"] for r in rep["runs"])
    assert main(["board", "status", "--port", board.port]) == 0
    assert "image_valid=True" in capsys.readouterr().out
    msg = _one_line_error(capsys, ["board", "run", "--port", board.port, "--preset", "tiny",
                                   "--seed", "5", "x"])
    assert "holds another image" in msg
    board.power_cycle()
    assert "holds no image" in _one_line_error(capsys, ["board", "run", *args, "x"])


def test_cli_board_load_verify_only(fake_board, tiny_artifact, capsys):
    """`bertcore board load --verify-only` after a reconfiguration (the SDRAM kept its
    contents, the bitstream forgot the image): nothing written, the image found by its
    fingerprint, runs bit-exact; after a power cycle, or for another model, one line, exit 2."""
    from bertcore.cli import main
    board = fake_board(TINY, sdram=True)
    args = ["--port", board.port, "--preset", "tiny", "--quantized", str(tiny_artifact)]
    assert main(["board", "load", *args]) == 0
    capsys.readouterr()
    board.reconfigure()
    assert "holds no image" in _one_line_error(capsys, ["board", "run", *args, "x"])
    frames = len(board.executed)
    assert main(["board", "load", *args, "--verify-only"]) == 0
    out = capsys.readouterr().out
    assert "found 5596 words" in out and "verified" in out
    sent = board.executed[frames:]
    assert P.T_VERIFY in sent and P.T_PARAM not in sent and P.T_PARAM_LAST not in sent
    rc, rep, err = _board_run(capsys, args + BOARD_TEXTS[:1])
    assert rc == 0, err
    assert all(r["bit_exact"] and not r["image_streamed"] for r in rep["runs"])
    msg = _one_line_error(capsys, ["board", "load", "--port", board.port, "--preset", "tiny",
                                   "--seed", "5", "--verify-only"])
    assert "the SDRAM does not hold this image" in msg
    board.power_cycle()
    msg = _one_line_error(capsys, ["board", "load", *args, "--verify-only"])
    assert "the SDRAM does not hold this image" in msg and "board load" in msg


def test_cli_board_load_bad_input(fake_board, tiny_artifact, capsys):
    """No SDRAM on the board, a DRAM that fails init, an image larger than the SDRAM, a
    read-back that differs, an artifact of another shape: one line, exit 2."""
    art = ["--preset", "tiny", "--quantized", str(tiny_artifact)]
    cases = [({}, "no SDRAM image store"), ({"sdram": True, "init_error": True},
                                            "failed its bring-up check"),
             ({"sdram": True, "capacity": 1000}, "does not verify (5596 words")]
    for kwargs, want in cases:
        board = fake_board(TINY, **kwargs)
        assert want in _one_line_error(capsys, ["board", "load", "--port", board.port, *art])
    board = fake_board(TINY, sdram=True)
    board.corrupt = True
    msg = _one_line_error(capsys, ["board", "load", "--port", board.port, *art])
    assert "does not verify: the board holds 5596 words with fingerprint" in msg
    msg = _one_line_error(capsys, ["board", "load", "--port", board.port, "--preset", "minilm",
                                   "--quantized", str(tiny_artifact)])
    assert "the model has hidden=32, the core 384" in msg


def test_board_picks_its_core_for_the_model():
    """``board load/run --board NAME --quantized FILE``: the board's own core when the model
    fits it, else the board's build for that shape (``ulx3s-minilm`` on ``ulx3s-85f-sdram``);
    a board with none names the boards that have one; ``--preset`` with ``--board`` is the
    core of that preset at the board's baud rate."""
    import argparse
    from types import SimpleNamespace
    from bertcore.cli import CliError, _board_config, _board_core_for
    from bertcore.config import preset
    minilm = SimpleNamespace(hidden=384, heads=12, ffn=1536, layers=6)
    tiny = SimpleNamespace(hidden=32, heads=4, ffn=64, layers=2)

    def args(board, preset_name=None):
        return argparse.Namespace(board=board, preset=preset_name, config=None, set=None,
                                  baud=None)

    sdram = args("ulx3s-85f-sdram")
    cfg, baud = _board_config(sdram)
    assert cfg == TINY and baud == 1_000_000
    assert _board_core_for(sdram, cfg, minilm) == preset("ulx3s-minilm")
    assert _board_core_for(sdram, cfg, tiny) == TINY
    plain = args("ulx3s-85f")
    with pytest.raises(CliError, match=r"^the ulx3s-85f board runs no core for this model "
                                       r"\(hidden=384, layers=6\); a board that does: "
                                       r"ulx3s-85f-sdram \(--preset ulx3s-minilm\)$"):
        _board_core_for(plain, _board_config(plain)[0], minilm)
    cfg, baud = _board_config(args("ulx3s-85f-sdram", "ulx3s-minilm"))
    assert cfg == preset("ulx3s-minilm") and baud == 1_000_000


#: The Verilator build of the SDRAM board top with the tiny core, shared by the two tests below.
SDRAM_TOP_BUILD = "board_sdram_tiny"


def test_sdram_top_preloaded(tiny_core, tiny_image, tmp_path):  # noqa: F811
    """The SDRAM board top without the board, in ``make test``: the UART bridge, the image
    store on LiteDRAM's simulation core (``litedram.gen --sim``: the controller on its SDRAM
    model) generated for the ULX3S SDRAM board's clock, and the tiny core, in Verilator
    (:mod:`sim.sdram_top`). The tiny image is preloaded into the SDRAM model's banks
    (``$readmemh``, placed by ``GeneratedCore.model_location``); a run before the verify is
    refused; a verify-only load of another image (one bit differs) and one of more words than
    the SDRAM holds end as image error, with no valid image (a run is refused again); the
    verify-only load of the image makes it the store's image (read back over the DRAM, its
    CRC-32 equal to the host's) with no PARAM frame on the line; two sequences then run from
    the SDRAM (RUN + activations only), bit-exact with ``encode_int``, with LiteDRAM
    refreshing during each run."""
    import json

    from sim.sdram_top import run_sdram_top
    config = TINY
    runs = _tiny_runs(tiny_core, config, 23)
    report = tmp_path / "report.json"
    run_sdram_top(config, tiny_image, runs, report=report, name=SDRAM_TOP_BUILD,
                  preload_dir=tmp_path / "preload", bad_verify=True)
    result = json.loads(report.read_text())
    print("SDRAM board, image preloaded:", {k: v for k, v in result.items() if k != "outputs"})
    assert "holds no image" in result["refused"]
    assert "does not hold this image" in result["wrong_fingerprint"]
    assert result["too_large"]["image_error"] and not result["too_large"]["image_valid"]
    assert "holds no image" in result["refused_after_bad_verify"]
    # the verify-only loads sent no image word: VERIFY frames, no PARAM frame
    types = result["frame_types"]
    assert types[f"0x{P.T_VERIFY:02x}"] == 3 and types[f"0x{P.T_RUN:02x}"] == len(runs)
    assert f"0x{P.T_PARAM:02x}" not in types and f"0x{P.T_PARAM_LAST:02x}" not in types
    assert result["stats"]["naks"] == 0 and result["stats"]["timeouts"] == 0
    assert all(c > 0 for c in result["cycles"]) and all(r > 0 for r in result["refreshes"])
    # each run streamed the whole image from the SDRAM (the store's stream, first word to last)
    spans = result["stream_spans"]
    assert len(spans) == len(runs) and all(end > start for start, end in spans)


@pytest.mark.slow
def test_sdram_top_cocotb(tiny_core, tiny_image, tmp_path):  # noqa: F811
    """The SDRAM board top as in :func:`test_sdram_top_preloaded` (the same Verilator build),
    but the image loaded over the simulated UART (not preloaded): a run before the load is
    refused; the load's first PARAM frame has a bit flipped on the line: NAKed and resent; the
    image is verified by its fingerprint; two sequences then run from the SDRAM (RUN +
    activations only), bit-exact with ``encode_int``, with LiteDRAM refreshing during each
    run. Slow-marked: about 1.1 million simulated cycles for the load (measured: 28 s of
    simulation, 50 s in all with the build cached)."""
    import json

    from sim.sdram_top import run_sdram_top
    config = TINY
    runs = _tiny_runs(tiny_core, config, 22)
    report = tmp_path / "report.json"
    run_sdram_top(config, tiny_image, runs, report=report, name=SDRAM_TOP_BUILD,
                  corrupt=[0, P.HEADER_BYTES + 7, 0x04, P.T_PARAM])
    result = json.loads(report.read_text())
    print("SDRAM board over UART:", {k: v for k, v in result.items() if k != "outputs"})
    assert "holds no image" in result["refused"]
    assert result["stats"]["naks"] == 1 and result["stats"]["timeouts"] == 0
    assert all(c > 0 for c in result["cycles"])
    assert all(r > 0 for r in result["refreshes"])


class _Sender(wiring.Component):
    """A ReplySender wired as the bridge wires it: its reply buffer read through two
    registers (the BlockRam's address and output register) and the bridge's CRC unit."""

    def __init__(self, words):
        from bertcore.boards.framing import ReplySender
        self.sender = ReplySender(32, len(words), 4)
        self._mem = Memory(shape=32, depth=len(words), init=words)
        super().__init__({})

    def elaborate(self, platform):
        from amaranth.lib import crc
        m = Module()
        m.submodules.sender, m.submodules.mem = tx, mem = self.sender, self._mem
        _read_registered(m, mem, tx.words.addr, tx.words.data)
        m.submodules.crc = unit = crc.Processor(P.CRC16(8))
        m.d.comb += [unit.start.eq(tx.crc_start), unit.valid.eq(tx.crc_valid),
                     unit.data.eq(tx.crc_data), tx.crc.eq(unit.crc)]
        return m


@pytest.mark.parametrize("sink", ["always", "paced"])
def test_reply_sender_frames(sink):
    """Each reply kind becomes the frame ``uart_protocol.encode_frame`` makes of it: NAK,
    STATUS and ACK for a sink that takes a byte in every cycle (each byte leaves a register
    staged with that byte's counters) and one that takes a byte every 4-12 cycles; DATA (the
    reply buffer's words, read two cycles after their index) for the paced sink only, as the
    sender's contract says (one byte per UART character time)."""
    words = [0x04030201, 0x08070605, 0xC0B0A090, 0x11223344]
    dut = _Sender(words)
    tx = dut.sender
    raw = b"".join(w.to_bytes(4, "little") for w in words)
    status = 0x9A8B7C6D
    cases = [(P.R_NAK, 7, b"\x05", {"reason": 5}),
             (P.R_STATUS, 8, status.to_bytes(4, "little"), {}),
             (P.R_ACK, 9, b"", {}),
             (P.R_STATUS, 10, status.to_bytes(4, "little")[:2], {})]
    if sink == "paced":
        cases += [(P.R_DATA, 11, b"\x42" + raw[:n], {"flags": 0x42}) for n in (1, 4, 5, 9, 16)]
    rng = random.Random(sink)

    async def bench(ctx):
        ctx.set(tx.status, status)
        for kind, seq, payload, extra in cases:
            ctx.set(tx.kind, kind)
            ctx.set(tx.seq, seq)
            ctx.set(tx.length, len(payload))
            ctx.set(tx.reason, extra.get("reason", 0))
            ctx.set(tx.flags, extra.get("flags", 0))
            ctx.set(tx.start, 1)
            await ctx.tick()
            ctx.set(tx.start, 0)
            got, wait = [], 0
            for _ in range(2000):
                ready = sink == "always" or wait == 0
                ctx.set(tx.o_stream.ready, ready)
                take = ready and ctx.get(tx.o_stream.valid)
                if take:
                    got.append(ctx.get(tx.o_stream.payload))
                    wait = rng.randint(3, 11)
                elif wait:
                    wait -= 1
                done = ctx.get(tx.done)
                await ctx.tick()
                if done:
                    break
            assert bytes(got) == P.encode_frame(kind, seq, payload), (kind, payload)

    simulate(dut, bench, name="reply_sender")
