"""The GEMM job engine: the jobs of the sequencer on the systolic array.

A job (:func:`~bertcore.core.common.job_layout`) is ``tiles`` tiles of ``k`` operand beats:
a weight panel over all row blocks (``J_PANEL``), the scores of a query block over all key
blocks (``J_SCORE``) or ``P·V`` of a query block (``J_PV``). The engine latches the
descriptor, the :class:`~bertcore.core.feeder.OperandFeeder` feeds the array, the
:class:`~bertcore.core.writeback.WriteBack` writes its results::

    buffers, panel slot -> feeder -> operand slice -> SystolicArray -> write-back -> buffers

Jobs overlap by one: the engine takes the next job (``ready``) once the feeder has issued
every beat of this one (and its pipeline is empty) and the write-back has no job waiting, so the
array computes the next job's first tiles while it drains this one's. The feeder and the
write-back each hold their job's descriptor; the write-back takes exactly its job's result rows
(the next job's wait in the array's output queue) and is restarted with the waiting job once it
has written them. The write-back adds the panel's bias, from the header of its job's slot (the
array is built without a bias input), and the engine releases a panel slot once its job is
written (``slot_release``). ``done`` is high once every job taken has been written.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from bertcore.quant.kernels import RESIDUAL_BITS
from bertcore.rtl.softmax import IntSoftmax
from bertcore.rtl.stream import RegisterSlice
from bertcore.rtl.systolic import SystolicArray

from .common import J_PANEL, add_gated, job_layout, read_port, row_read, task, write_port
from .feeder import OperandFeeder
from .loader import panel_layout, scalar_layout
from .writeback import WriteBack

__all__ = ["GemmEngine", "a_operand_shape", "accumulator_range"]

#: Cycles the gated write-back's clock runs on after its last start or result row
#: (:func:`~.common.add_gated`): it covers a row's way through c1, c2, the requantizer, GELU
#: (``IntGELU.LATENCY`` = 9), rq2 and the write register, with room to spare.
WB_DRAIN = 64


def a_operand_shape(config):
    """The array's A operand: ``signed(max(prob_bits + 1, gelu_bits))``, wide enough for the
    int8 activations (sign-extended), the unsigned ``prob_bits``-bit probabilities
    (zero-extended) and the signed ``gelu_bits``-bit GELU outputs (sign-extended)."""
    return signed(max(config.prob_bits + 1, config.gelu_bits))


def accumulator_range(config):
    """``(lo, hi)``: the sums any job of a core of ``config`` can reach in the array.

    The array's A operand (:func:`a_operand_shape`) takes the int8 activations, the unsigned
    ``prob_bits``-bit probabilities and the signed ``gelu_bits``-bit GELU outputs; its
    accumulators need not hold ``k_max`` products of that width, because each job multiplies
    one kind of A operand by int8 B operands (weights, keys or values, ``|b| <= 128``):

    * projections and scores multiply int8 activations over at most ``max(hidden, ffn)``
      beats: ``|sum| <= k * 2**14``;
    * FFN2 multiplies ``G = gelu_bits``-bit GELU outputs (``|h| <= 2**(G-1)``) by int8
      weights over ``ffn`` beats: ``|sum| <= ffn * 2**(G+6)`` (``ffn * 2**14`` for ``G = 8``);
    * ``P·V`` multiplies probabilities ``y`` by int8 values; ``y_j <= exp16_j * f / 2**(32-B)``
      with ``f = floor(2**32 / sum(exp16))``, so a row's probabilities sum to at most ``2**B``
      and ``-2**B * 128 <= sum <= 2**B * 127`` (``kernels.int_softmax_int``; checked in
      ``tests/test_core.py``).
    """
    proj = max(config.hidden, config.ffn) << 14
    ffn2 = config.ffn << (config.gelu_bits + 6)
    pv = 1 << config.prob_bits
    return min(-proj, -ffn2, -pv * 128), max(proj, ffn2, pv * 127)


class GemmEngine(wiring.Component):
    """The systolic array with its operand feeder and write-back.

    Members
    -------
    ctl : ``In(task(desc=job_layout(config)))``
        ``start`` starts the job ``desc`` (only while ``ready``); ``done`` is high once every
        job started has finished.
    ready : ``Out(1)``
        The engine takes a job (the feeder is free and no job waits for the write-back): a
        register, a cycle after the engine's state (as ``done``).
    feed_x, feed_q, feed_a, feed_h, feed_k, feed_v, feed_p : ``Out(row_read(...))``
        The feeder's reads (read port 0 of the buffers).
    panel_rd : ``Out(read_port(...))``
        The loader's panel buffer.
    panels : ``In(panel_layout(N)).array(2)``
        The headers (bias, requantization) of the loader's two panel slots.
    slot_release : ``Out(1)``
        A panel job has been written: its slot (``slot_index``) is free (a one-cycle pulse).
    slot_index : ``Out(1)``
        The slot of ``slot_release``.
    scalars : ``In(scalar_layout())``
        The layer's scalars.
    res_x, res_a : ``Out(row_read(...))``
        The residual reads (X and A; their one read port is shared with the feeder).
    wb_q, wb_k, wb_v, wb_h, wb_r, wb_s : ``Out(write_port(...)).array(...)``
        The write-back's writes.
    beat : ``Out(1)``
        The array takes an operand beat.
    error : ``Out(1)``
        The array flagged an error.

    ``gate_idle``: the write-back on a clock that runs from a job's start or a result row until
    :data:`WB_DRAIN` cycles after (Verilog simulations, :func:`~.common.add_gated`).
    """

    #: Cycles from the engine becoming free (its feeder idle, no job queued; for ``done`` also
    #: every job written) to ``ready`` / ``done`` showing it (both are registers).
    FLAG_LAG = 1

    def __init__(self, config, *, gate_idle=False):
        self._c = config
        self._gate = gate_idle
        n, s, u = config.array_cols, config.softmax_units, config.layernorm_units
        cwh, cwf = config.hidden // n, config.ffn // n
        grp = -(-config.max_seq // n)
        word = unsigned(8 * n)
        kmax = max(config.hidden, config.ffn, config.max_seq)
        # prob_bits-wide probabilities enter the array as a wider A operand, chosen by
        # measurement over splitting them into two uint8 digits (two P·V passes, partial sums
        # combined; docs/core.md "Attention probabilities"): a signed(17) x signed(8) product
        # is still one MULT18X18D and the accumulators keep their width (accumulator_range);
        # the cost is flip-flops along the array rows (minilm's 16x16 array: +17% FF, no DSP,
        # no LUT) and no cycle, where two passes cost 2.8% (L=128) to 4.8% (L=256) of a
        # minilm layer plus a partial-sum buffer. On iCE40 (16x16 DSPs) 17-bit operands cost
        # LUTs, so its board keeps prob_bits=8. The gelu_bits-wide GELU outputs take the same
        # path for FFN2 (a_operand_shape): signed(16) fits the signed(17) operand the
        # probabilities already need, and accumulator_range grows by FFN2's wider sums.
        # (the panel's bias is added in the write-back: bias=False)
        self._array = SystolicArray(n, n, k_max=kmax, a_shape=a_operand_shape(config),
                                    bias=False, acc_range=accumulator_range(config))
        arr = self._array
        self._feeder = OperandFeeder(config, arr.a.payload.shape(), arr.b.payload.shape())
        self._wb = WriteBack(config, arr.c.payload.shape())
        depths = {"x": grp * cwh, "q": grp * cwh, "a": grp * cwh,
                  "k": grp * cwh, "v": grp * cwh}
        hword = unsigned(config.gelu_bits * n)
        sw = IntSoftmax.score_width(config.head_dim)
        super().__init__({
            "ctl": In(task(desc=job_layout(config))),
            "ready": Out(1),
            **{f"feed_{b}": Out(row_read(d, word, n)) for b, d in depths.items()},
            "feed_h": Out(row_read(grp * cwf, hword, n)),
            "feed_p": Out(row_read(2 * grp, unsigned(config.prob_bits * n), n)),
            "panel_rd": Out(read_port(2 * max(config.hidden, config.ffn), word)),
            "panels": In(panel_layout(n)).array(2),
            "slot_release": Out(1),
            "slot_index": Out(1),
            "scalars": In(scalar_layout()),
            "res_x": Out(row_read(grp * cwh, word, n)),
            "res_a": Out(row_read(grp * cwh, word, n)),
            **{f"wb_{b}": Out(write_port(grp * cwh, word)).array(n) for b in "qkv"},
            "wb_h": Out(write_port(grp * cwf, hword)).array(n),
            "wb_r": Out(write_port(grp * (n // u) * cwh,
                                   unsigned(RESIDUAL_BITS * n))).array(u),
            "wb_s": Out(write_port(2 * (n // s) * grp, unsigned(sw * n))).array(s),
            "beat": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = array = self._array
        m.submodules.feeder = feeder = self._feeder
        wb = self._wb
        if self._gate:
            # the write-back's clock runs for a job's start and the array's result rows, the
            # only inputs that move it on; the job, the panel header and the scalars it reads
            # in the cycles its rows move, or registers in every cycle (so again as a row
            # enters, before the row reaches those registers)
            add_gated(m, "writeback", wb, wb.start | wb.i_acc.valid, drain=WB_DRAIN)
        else:
            m.submodules.writeback = wb
        fjob = Signal(job_layout(self._c))         # the feeder's job
        wjob = Signal(job_layout(self._c))         # the write-back's job
        queued = Signal()                          # fjob waits for the write-back
        wb_busy = Signal()                         # wjob is not written yet
        wb_start = Signal()                        # the write-back takes wjob
        # ... and starts a cycle later, on a register: its start resets its counters and
        # opens its intake, and deciding it (from the feeder's state through the sequencer's
        # start and descriptor multiplexers) ran on into those counters' resets (the ULX3S's
        # worst path in a placement at 125 MHz, 8.7 ns). wjob stands by then (the write-back
        # reads its mode at the start; its ``written`` is low then).
        wb_started = Signal()
        m.d.sync += wb_started.eq(wb_start)
        wb_free = ~wb_busy | wb.written
        # ``ready`` and ``done`` are registers, the engine's state a cycle late, cleared by a
        # start: the feeder's five stage flags had run through their OR and two long routes
        # (the feeder sits by the array, the sequencer elsewhere) into the sequencer's start
        # decision and next state and on into ``queued`` (the ULX3S's worst path in two of
        # three placements at 125 MHz, 8.17-8.52 ns). Neither is ever high where the engine's
        # own state is not: only a start makes the feeder busy, queues a job or starts the
        # write-back, and the cycle after a start both are low. The sequencer sees the engine
        # free a cycle later (FLAG_LAG).
        assert self.FLAG_LAG == 1
        idle = ~feeder.busy & ~queued
        ready = Signal(init=1)
        done = Signal(init=1)
        m.d.sync += [ready.eq(idle & ~self.ctl.start),
                     done.eq(idle & wb_free & ~self.ctl.start)]
        m.d.comb += [self.ready.eq(ready), self.ctl.done.eq(done)]
        # fjob takes the descriptor in every cycle the feeder issues nothing and no job is
        # queued, so in the cycle of a start too: its enable is two flip-flops, not the
        # sequencer's start decision (from the feeder's state through the sequencer's
        # descriptor multiplexers into the enables of fjob's flip-flops: the ULX3S's worst path
        # at 125 MHz, 8.20 ns), nor the engine's ready (the feeder's five stage flags: 8.07
        # ns in a placement at 125 MHz). Then nothing reads fjob: the feeder issues no beat,
        # the beats still in its stages carry what they need of their job (the operand
        # picks' source and kind are registered while it issues), and nothing is queued.
        with m.If(~feeder.active & ~queued):
            m.d.sync += fjob.eq(self.ctl.desc)
        # wjob likewise takes, in every cycle the write-back is free, the job it would start
        # with: fjob if one is queued (queued holds only while the write-back is busy, so then
        # it is free only as its job is written), else the descriptor. Its enable is the
        # write-back's two flip-flops, not the start decision (a softmax pass's start through
        # the sequencer's start decision and ``queued`` into the enables of wjob's flip-flops:
        # the worst path of a placement at 125 MHz, 8.12 ns). Nothing reads wjob while the
        # write-back is free: it has written its job (``written``, the buffers' write register
        # holds what it needs) and starts a register after the engine's decision, when wjob
        # stands; the slot release reads it in the cycle of ``written``, before it changes.
        with m.If(wb_free):
            m.d.sync += wjob.eq(Mux(queued, fjob, self.ctl.desc))
        with m.If(self.ctl.start):
            with m.If(wb_free):
                m.d.comb += wb_start.eq(1)
            with m.Else():
                m.d.sync += queued.eq(1)
        with m.If(queued & wb.written):
            m.d.comb += wb_start.eq(1)
            m.d.sync += queued.eq(0)
        with m.If(wb_start):
            m.d.sync += wb_busy.eq(1)
        with m.Elif(wb.written):
            m.d.sync += wb_busy.eq(0)
        m.d.comb += [self.slot_release.eq(wb_busy & wb.written & (wjob.kind == J_PANEL)),
                     self.slot_index.eq(wjob.slot)]
        m.d.comb += [feeder.start.eq(self.ctl.start), feeder.desc.eq(self.ctl.desc),
                     feeder.job.eq(fjob), wb.start.eq(wb_started), wb.job.eq(wjob),
                     wb.panel.eq(Mux(wjob.slot, self.panels[1], self.panels[0])),
                     wb.scalars.eq(self.scalars), self.error.eq(array.error)]
        # operands: one registered beat drives both of the array's operand streams
        ops = feeder.o_operands
        m.d.comb += [array.a.valid.eq(ops.valid), array.b.valid.eq(ops.valid),
                     array.a.payload.eq(ops.payload.a), array.b.payload.eq(ops.payload.b),
                     ops.ready.eq(array.a.ready & array.b.ready),
                     self.beat.eq(ops.valid & array.a.ready & array.b.ready)]
        # the array's result rows reach the write-back through a register slice: the write-back's
        # ready (its ``open_`` and c1's state) fanned out into the array's output-register and
        # queue-read enables, and the array's valid back into the write-back's counters and
        # ``open_`` (a loop of two 2.9 ns routes between the two: the ULX3S's worst path at
        # 115 MHz, 9.24 ns); each side now sees flip-flops of the slice (a cycle per job)
        m.submodules.result_slice = result_slice = RegisterSlice(array.c.payload.shape())
        connect(m, array.c, result_slice.i_stream)
        connect(m, result_slice.o_stream, wb.i_acc)
        for b in "xqahkvp":
            connect(m, getattr(feeder, b), flipped(getattr(self, f"feed_{b}")))
        connect(m, feeder.panel, flipped(self.panel_rd))
        for name in ("res_x", "res_a"):
            connect(m, getattr(wb, name), flipped(getattr(self, name)))
        for b in "qkvhrs":
            for mine, theirs in zip(getattr(wb, b), getattr(self, f"wb_{b}")):
                connect(m, mine, flipped(theirs))
        return m
