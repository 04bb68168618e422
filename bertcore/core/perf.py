"""Cycle model of the encoder core's schedule (:mod:`bertcore.core.encoder`).

The sequencer starts one job at a time, and the job engine takes the next job while it drains
the one before (:mod:`bertcore.core.gemm`); this model follows them job by job with the
activation streams free-flowing (no backpressure):

* the activation input, beside the image header: one byte per cycle and one cycle per beat;
* a weight panel (``N`` output channels, ``T = ceil(L/N)`` row tiles of ``K`` beats): one cycle
  of the sequencer to start it and one of the start's register, the array takes a tile's last
  beat ``max(K, N)`` cycles after the previous one's, then drains (``SystolicArray`` latency
  ``+ N - 1``) through the residual fetch and the requantizer(s); the next panel of the group
  starts once the feeder has issued this one's beats (:class:`_Engine`), during the drain; the
  first job after the V, O, FFN1 and FFN2 panels waits until they are written; the loader
  streams the next panel meanwhile (header vectors plus ``K`` weight rows), and a panel waits
  for it when it is slower;
* attention per head and query block (packed: after ``N + 2`` cycles that read the block's
  segment bounds): scores (``T`` tiles of ``head_dim`` beats), the softmax
  pass (``N / softmax_units`` rows of ``L`` per unit), ``P·V`` (``head_dim/N`` tiles of ``L``
  beats), the softmax pass of a block beside the scores of the next block and the ``P·V``
  of the one before (:func:`_attention`);
* LayerNorm passes: ``ceil(L / layernorm_units)`` groups of rows, one per
  ``IntLayerNorm.row_period``, the first one's input and the last one's output of ``hidden``
  cycles each, plus the unit's latency;
* after the last layer, the output pass: one word of ``N`` output bytes per cycle (in chunks of
  ``gcd(N, bus_width/8)`` bytes, one per cycle).

A packed run (``segments``: the lengths of the sequences in its rows, ``docs/interface.md``)
computes the projections, FFN and LayerNorm over all rows and, per query block, only the
score and ``P·V`` tiles of the key blocks its segments reach (:func:`key_spans`). With
``param_rate`` (bytes of the parameter stream per cycle, e.g. 2 for a 16-bit SDRAM; default
one beat per cycle) the run is modeled as the loader and the sequencer in step
(:func:`run_cycles`): a panel's job starts when its slot is loaded, the loader fills a
slot once the job two panels back has released it, so the slower of the stream and the array
sets the pace panel by panel (even at the full rate a short sequence's panels wait for their
weights). :func:`layer_cycles` and :func:`breakdown` are the last layer of that schedule.

``tests/test_core.py`` and ``tests/test_core_packed.py`` check the model against cycle counts
measured on the RTL (``docs/core.md``, "Cycles").
"""

import math

from bertcore.quant.kernels import RESIDUAL_BITS
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.layernorm import IntLayerNorm
from bertcore.rtl.requant import Requantizer
from bertcore.rtl.softmax import IntSoftmax
from bertcore.rtl.stream import RegisterSlice
from bertcore.rtl.systolic import SystolicArray

from bertcore.quant.model import check_segments

from .image import (HEADER_BITS, LN_FIELDS, PANEL_FIELDS, PANEL_ROW, SCALAR_BITS,
                    check_core_config, segment_table_beats, vector_beats)
from .datapath import Datapath
from .gemm import GemmEngine
from .loader import ParameterLoader
from .sequencer import Sequencer
from .writeback import WriteBack

__all__ = ["layer_cycles", "run_cycles", "breakdown", "utilization", "macs_per_layer",
           "array_beats", "key_spans"]

#: Cycles of a job around its beats and the array's drain (start, the feeder's registered
#: read addresses, first operand read, its registered read data, its registered element
#: picks, hand-over).
_JOB_OVERHEAD = 6
#: A job through the write-back's requantizer drains this much longer than the array: the
#: write-back's register stages before it and its pipeline.
_RQ_DRAIN = WriteBack.RQ_STAGES + Requantizer.LATENCY
#: The sequencer's cycle that starts a panel or a scores job (its ``PWAIT`` and ``SCORES``
#: states), and the one that starts a layer (``LAYER``).
_START = 1
#: The datapath registers the start of the job engine and of the softmax, LayerNorm and
#: output passes (``Datapath._start_late``): each starts this much after the sequencer's start.
_LATE_START = Datapath.START_STAGES
#: A LayerNorm record's flag shows this long after its last beat is taken (the loader
#: registers the record's writes into the parameter memory, and the flag with them).
_LN_FLAG = ParameterLoader.LN_WRITE_STAGES
#: The job engine's ``ready`` and ``done`` are registers, set a cycle after the engine is free
#: (``GemmEngine.FLAG_LAG``): the sequencer's start of a job, or its next state after the last
#: job of a group, follows that much later.
_ENGINE_LAG = GemmEngine.FLAG_LAG
#: The sequencer acts on the softmax pass's ``done`` a cycle late (``Sequencer.SMAX_SEEN_LAG``).
_SMAX_SEEN = Sequencer.SMAX_SEEN_LAG
#: The scalar record's flag likewise (its registers are written a cycle after its last beat).
_SCAL_FLAG = ParameterLoader.SCALAR_WRITE_STAGES


def _array_latency(n):
    # the array, then the register slice before the write-back (GemmEngine)
    return SystolicArray.PE_LATENCY + (n - 1) + SystolicArray.DRAIN_LATENCY + RegisterSlice.latency


#: Cycles from the last operand beat's issue to the engine's ``ready``: the feeder's stages
#: empty (``OperandFeeder.busy``).
_FEED_TAIL = 5


def _feed(tiles, k, n):
    """Cycles from a job's start until the engine takes the next job (its beats issued)."""
    return k + (tiles - 1) * max(k, n) + _FEED_TAIL


class _Engine:
    """The job engine's timing (:mod:`bertcore.core.gemm`): a job started while the write-back
    still writes the one before waits for it (``queued``): the engine takes no further job until
    then, and the write-back takes the job's rows only from then on. The sequencer sees the
    engine's ``ready`` and ``done`` ``_ENGINE_LAG`` cycles late (``seen_ready``,
    ``seen_done``); the slot a panel job frees is released as it is written (``done``)."""

    def __init__(self):
        self.ready = 0          # the cycle from which the engine takes a job
        self.done = 0           # the cycle in which the last job taken is written

    @property
    def seen_ready(self):
        return self.ready + _ENGINE_LAG

    @property
    def seen_done(self):
        return self.done + _ENGINE_LAG

    def run(self, start, tiles, k, n, post):
        start += _LATE_START              # the sequencer's start, registered
        queued = start < self.done
        ready = start + _feed(tiles, k, n)
        done = start + _gemm(tiles, k, n, post)
        if queued:
            # restarted when the job before is written, then one result row per cycle
            ready = max(ready, self.done + 1)
            done = max(done, self.done + 2 + tiles * n + post)
        self.ready, self.done = ready, done


def _gemm(tiles, k, n, post):
    """Cycles of one job: ``tiles`` tiles of ``k`` beats, then the drain through ``post``.

    The array takes a tile's last beat ``max(k, N)`` cycles after the previous tile's at the
    earliest (:class:`~bertcore.rtl.systolic.SystolicArray`), the first tile's after ``k``
    beats."""
    return (_JOB_OVERHEAD + k + (tiles - 1) * max(k, n) + _array_latency(n) + (n - 1) + 1
            + post)


def _panel_load(config, k):
    bus, n = config.bus_width, config.array_cols
    header = sum(vector_beats(n * f.width, bus) for f in PANEL_FIELDS)
    return header + k * vector_beats(n * PANEL_ROW.width, bus)


def key_spans(config, seq_len, segments=None):
    """Per block of ``N`` query rows, ``(key_tiles, keys)``: the key blocks (tiles of ``N``
    keys) that some segment of the block reaches, and the keys they span.

    Without ``segments`` every block spans all ``ceil(L/N)`` tiles and ``L`` keys; in a packed
    run a query block attends only to the key blocks of its segments (a contiguous range): the
    score tiles, the softmax rows and the ``P·V`` reduction cover that range only.
    """
    n, L = config.array_cols, seq_len
    lengths = check_segments(segments, L)
    ends = [sum(lengths[:s + 1]) for s in range(len(lengths))]
    starts = [e - ln for e, ln in zip(ends, lengths)]
    spans = []
    for q0 in range(0, L, n):
        q1 = min(L, q0 + n)
        lo = max(st for st in starts if st <= q0)
        hi = min(e for e in ends if e >= q1)
        kb0, kb1 = lo // n, (hi - 1) // n
        spans.append((kb1 - kb0 + 1, min(L, (kb1 + 1) * n) - kb0 * n))
    return spans


def _softmax_pass(config, keys):
    smax_row = max(keys, IntSoftmax.DIV_CYCLES)
    smax_rows = config.array_cols // config.softmax_units
    return (_LATE_START + 3 + (smax_rows - 1) * smax_row + IntSoftmax.latency(keys)
            + keys)


def _ln_pass(config, seq_len):
    """The LayerNorm pass: the ``U`` units take the first group of ``U`` positions in
    ``hidden`` cycles and every further group ``row_period`` later; the last group's
    outputs start ``latency`` after its last input and take ``hidden`` cycles, then the
    requantizer; 7 cycles of hand-over (the sequencer's ``LN`` state, the R read, the
    register of its read data and of the element pick, the fork, the join and the
    gatherers)."""
    hid = config.hidden
    ln = IntLayerNorm(hid, in_width=RESIDUAL_BITS)
    ln._MustUse__silence = True                     # only its timing properties are used
    groups = math.ceil(seq_len / config.layernorm_units)
    return (_LATE_START + 7 + hid + (groups - 1) * ln.row_period + ln.latency + hid
            + Requantizer.LATENCY)


def _panel_jobs(config, seq_len):
    """``(group, panels, K, tiles, drain stages)`` per panel group, in image order."""
    n, hid, ffn = config.array_cols, config.hidden, config.ffn
    tiles = math.ceil(seq_len / n)
    rq = _RQ_DRAIN
    post_ffn1 = rq + IntGELU.latency_for(config.multipliers("gelu")) + Requantizer.LATENCY
    return [("qkv", 3 * hid // n, hid, tiles, rq),
            ("o", hid // n, hid, tiles, rq),
            ("ffn1", ffn // n, hid, tiles, post_ffn1),
            ("ffn2", hid // n, ffn, tiles, rq)]


def _attention(config, seq_len, segments, eng, t):
    """Attention of a layer from cycle ``t`` (the V panels written) on ``eng``; returns the
    cycle in which the last ``P·V`` job is written.

    The sequencer overlaps the softmax pass of a block with the array's next jobs: once a
    block's scores are written and the softmax pass of the block before is done, its pass and
    the previous block's ``P·V`` start together; the next block's scores start once the
    engine takes them; the last block's ``P·V`` waits for its pass (the ``FLUSH`` state)."""
    n, hd = config.array_cols, config.head_dim
    rq = _RQ_DRAIN
    # a packed run reads the segment bounds of each query block's rows first (the
    # sequencer's BOUNDS and BSPAN states: N + 2 cycles)
    bounds = 0 if segments is None else n + 2
    sm_end = 0
    pending = None                      # the keys of the block whose P·V is still to run
    for kt, keys in key_spans(config, seq_len, segments) * config.heads:
        eng.run(t + bounds + _START, kt, hd, n, 0)
        t = max(eng.seen_done, sm_end)
        sm_end = t + _softmax_pass(config, keys) + _SMAX_SEEN
        if pending is not None:
            eng.run(t, hd // n, pending, n, rq)
            t = eng.seen_ready
        pending = keys
    eng.run(max(t + 1, sm_end, eng.seen_ready), hd // n, pending, n, rq)
    return eng.seen_done


def breakdown(config, seq_len, segments=None, param_rate=None):
    """Cycles of the last layer of a run by job kind (a dict: ``qkv``, ``attention``, ``o``,
    ``ln`` (both passes), ``ffn1``, ``ffn2``), for a sequence of ``seq_len`` rows (or a packed
    run of ``segments`` adding up to ``seq_len``) with the image at ``param_rate``
    (:func:`run_cycles`); a job's wait for its parameters counts with the job, the
    layer's start (the sequencer's ``LAYER`` state) with the QKV panels."""
    return {k: round(v) for k, v in _schedule(config, seq_len, segments, param_rate)[1].items()}


def layer_cycles(config, seq_len, segments=None, param_rate=None):
    """Modeled cycles of the last encoder layer of a run of ``seq_len`` rows (``segments``:
    packed; ``param_rate``: the image's bytes per cycle, default the full rate): the core's
    ``layer_cycles`` output."""
    return math.ceil(sum(_schedule(config, seq_len, segments, param_rate)[1].values()))


def _input_cycles(config, seq_len, segments):
    """Cycles from the start of a run to the end of its activation input (which runs beside
    the image header): one byte per cycle and one more per beat, segment table too. The
    packet follows the start (the harnesses send it once the run is ``busy``); the input pass
    takes beats from the second cycle after the start (it registers its start), which such a
    packet does not reach earlier."""
    bb = config.bus_width // 8
    beats = math.ceil(seq_len * config.hidden / bb)
    table = 0 if segments is None else segment_table_beats(len(segments), config)
    return 3 + (table + beats) * (bb + 1)


def _output_cycles(config, seq_len):
    """The output pass (``ActivationOutput``): one chunk of ``gcd(N, bus bytes)`` bytes per
    cycle after the first read, the last beat sent 4 cycles after the last chunk was read,
    then through the pass's output register slice."""
    n = config.array_cols
    chunks_per_word = n // math.gcd(n, config.bus_width // 8)
    return (_LATE_START + seq_len * (config.hidden // n) * chunks_per_word + 4
            + RegisterSlice.latency)


def run_cycles(config, seq_len, segments=None, param_rate=None):
    """Modeled cycles of a run: activation input, all layers, the output pass
    (``EncoderCore.cycles``). ``segments``: a packed run; ``param_rate``: the parameter
    stream's bytes per cycle (default: one beat per cycle).

    The loader (one image beat per ``bus_width / 8 / param_rate`` cycles, at most one per
    cycle) and the sequencer are modeled in step: a panel's job starts when the sequencer is
    free and the panel is loaded; the loader starts a panel once its slot (two slots,
    alternating) has been released by the job two panels back, the next layer's scalars once
    FFN1 of this layer is done, LayerNorm parameters once the previous pass using them ended;
    each LayerNorm pass waits for its parameters; the activation input runs beside the image
    header. So the few cycles a job waits for its parameters even at the full rate (short
    sequences) are counted.
    """
    return math.ceil(_schedule(config, seq_len, segments, param_rate)[0])


def _schedule(config, seq_len, segments, param_rate):
    """The loader and the sequencer in step (:func:`run_cycles`): the cycles of the
    run and the :func:`breakdown` of its last layer."""
    check_core_config(config)
    bus, n, hid = config.bus_width, config.array_cols, config.hidden
    bb = bus // 8
    if param_rate is not None and not param_rate > 0:
        raise ValueError(f"param_rate must be positive, not {param_rate!r}")
    cpb = 1.0 if param_rate is None else max(1.0, bb / float(param_rate))
    header = vector_beats(HEADER_BITS, bus)
    scalars = vector_beats(SCALAR_BITS, bus)
    ln_beats = (hid // n) * sum(vector_beats(n * f.width, bus) for f in LN_FIELDS)
    jobs = _panel_jobs(config, seq_len)
    ln_pass = _ln_pass(config, seq_len)

    def record(beats):
        # the loader's cycles for a record of ``beats``: one more than its beats at the full
        # rate (its registered ready is cleared for a cycle after each record, and is a cycle
        # late after the start), hidden in the gaps of a throttled stream
        return max(beats * cpb, beats + 1)

    t_load = record(header)
    t_seq = _input_cycles(config, seq_len, segments)
    slot_free = [0.0, 0.0]
    ln_free = [0.0, 0.0]
    scal_free = 0.0
    panel = 0
    eng = _Engine()
    for _ in range(config.layers):
        parts = dict.fromkeys(("qkv", "attention", "o", "ln", "ffn1", "ffn2"), 0.0)
        t0 = t_seq
        t_load = max(t_load, scal_free) + record(scalars)
        t_seq = max(t_seq, t_load + _SCAL_FLAG) + _START
        for group, count, k, tiles, post in jobs:
            load = record(_panel_load(config, k))
            for _ in range(count):
                t_load = max(t_load, slot_free[panel % 2]) + load
                eng.run(max(t_seq, t_load) + _START, tiles, k, n, post)
                slot_free[panel % 2] = eng.done
                # the next panel of the group starts once the engine takes it, the first job
                # after the group once every job is written
                t_seq = eng.seen_ready
                panel += 1
            t_seq = eng.seen_done
            parts[group] += t_seq - t0
            t0 = t_seq
            if group == "qkv":
                t_seq = _attention(config, seq_len, segments, eng, t_seq)
                parts["attention"] = t_seq - t0
            elif group in ("o", "ffn2"):
                i = int(group == "ffn2")
                t_load = max(t_load, ln_free[i]) + record(ln_beats)
                t_seq = max(t_seq, t_load + _LN_FLAG) + ln_pass
                ln_free[i] = t_seq
                parts["ln"] += t_seq - t0
            else:
                scal_free = t_seq
            t0 = t_seq
    return t_seq + _output_cycles(config, seq_len), parts


def macs_per_layer(config, seq_len, segments=None):
    """Multiply-accumulates of one layer (projections, FFN, scores and ``P·V``; in a packed
    run only the scores and ``P·V`` within each segment)."""
    L, hid, ffn = seq_len, config.hidden, config.ffn
    return (L * (4 * hid * hid + 2 * hid * ffn)
            + 2 * hid * sum(ln * ln for ln in check_segments(segments, L)))


def utilization(config, seq_len, segments=None):
    """PE utilization of one layer: MACs / (array PEs × modeled cycles)."""
    pes = config.array_rows * config.array_cols
    return (macs_per_layer(config, seq_len, segments)
            / (pes * layer_cycles(config, seq_len, segments)))


def array_beats(config, seq_len, segments=None):
    """Operand beats the array takes in a run (exact; the core's ``array_beats`` output)."""
    check_core_config(config)
    n, hid, ffn, hd = config.array_cols, config.hidden, config.ffn, config.head_dim
    tiles = math.ceil(seq_len / n)
    panels = tiles * (4 * (hid // n) * hid + (ffn // n) * hid + (hid // n) * ffn)
    attention = config.heads * sum(kt * hd + (hd // n) * keys
                                   for kt, keys in key_spans(config, seq_len, segments))
    return config.layers * (panels + attention)
