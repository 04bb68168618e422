"""The datapath of one run: the core's components, wired (reset by
:class:`~bertcore.core.encoder.EncoderCore` between runs).

::

    param ─> ParameterLoader ─(panel slots, scalars, LN parameters)─┐
    act ──> ActivationInput ─> Buffers <─> GemmEngine, SoftmaxPass, LayerNormPass
    out <── ActivationOutput <─ Buffers
                       Sequencer: start/done of each of them (task interfaces)
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from .attention import SoftmaxPass
from .buffers import Buffers
from .common import act_signature, add_gated, bus_signature, task_wake
from .gemm import GemmEngine
from .image import (FAIL_CAUSE_BITS, FAIL_EMPTY, FAIL_HEADER, FAIL_IMAGE_LENGTH,
                    FAIL_TOO_LONG)
from .loader import ParameterLoader
from .norm import LayerNormPass
from .sequencer import Sequencer
from .streamio import ActivationInput, ActivationOutput

__all__ = ["Datapath"]

#: Cycles a gated pass's clock runs on after its ``done`` (:func:`~.common.add_gated`): its
#: units' pipelines are empty by ``done`` (every row is out, every word written); this covers
#: the registers that follow their inputs, with room to spare.
GATE_DRAIN = 64


class Datapath(wiring.Component):
    """Loader, buffers, GEMM job engine, softmax and LayerNorm passes, stream I/O and sequencer.

    ``gate_idle``: the softmax and LayerNorm passes and the job engine's write-back on clocks
    that stop while they are idle, for Verilog simulations (:func:`~.common.add_gated`;
    :class:`~bertcore.core.encoder.EncoderCore`'s ``gate_idle``).

    Members
    -------
    param : ``In(bus_signature(bus_width))``
        The parameter image of the run.
    act : ``In(act_signature(bus_width))``
        The activation packet of the run (``user``: segment-table beats of a packed packet).
    out : ``Out(bus_signature(bus_width))``
        The output packet.
    start : ``In(1)``
        Start a run.
    done : ``Out(1)``
        The run ended (a one-cycle pulse after the output's last beat was delivered).
    fail : ``Out(1)``
        A protocol error: a bad image header or length, a sequence of 0 or more than
        ``max_seq`` positions, a malformed segment table or rows that differ from it.
    cause : ``Out(FAIL_CAUSE_BITS)``
        With ``fail``: its cause code (:data:`~bertcore.core.image.FAIL_CAUSES`).
    fault : ``Out(1)``
        An internal unit flagged an error.
    beat : ``Out(1)``
        The array takes an operand beat.
    layer_mark : ``Out(1)``
        The input is in (layer 0 starts) or a layer ended.
    """

    #: Cycles from the sequencer's start of a pass or a job to the unit's (:meth:`_start_late`).
    START_STAGES = 1

    def __init__(self, config, *, gate_idle=False):
        self._c = config
        self._gate = gate_idle
        bus = bus_signature(config.bus_width)
        super().__init__({
            "param": In(bus), "act": In(act_signature(config.bus_width)), "out": Out(bus),
            "start": In(1), "done": Out(1), "fail": Out(1), "cause": Out(FAIL_CAUSE_BITS),
            "fault": Out(1),
            "beat": Out(1), "layer_mark": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        m.submodules.loader = loader = ParameterLoader(c)
        m.submodules.buffers = buf = Buffers(c)
        m.submodules.inp = inp = ActivationInput(c)
        m.submodules.outp = outp = ActivationOutput(c)
        m.submodules.gemm = gemm = GemmEngine(c, gate_idle=self._gate)
        smax = SoftmaxPass(c)
        ln = LayerNormPass(c)
        for name, unit in (("smax", smax), ("ln", ln)):
            if self._gate:
                add_gated(m, name, unit, task_wake(m, unit.ctl), drain=GATE_DRAIN)
            else:
                m.submodules[name] = unit
        m.submodules.seq = seq = Sequencer(c)
        # streams and run control (the image reaches the loader through the loader's own
        # register slice)
        connect(m, flipped(self.param), loader.param)
        connect(m, flipped(self.act), inp.act)
        connect(m, outp.out, flipped(self.out))
        m.d.comb += [loader.start.eq(self.start), seq.ctl.start.eq(self.start),
                     self.done.eq(seq.ctl.done),
                     self.fail.eq(loader.fail | inp.overflow | seq.fail),
                     self.cause.eq(Mux(loader.fail,
                                       Mux(loader.bad_length, FAIL_IMAGE_LENGTH, FAIL_HEADER),
                                       Mux(inp.overflow, FAIL_TOO_LONG, FAIL_EMPTY))),
                     self.fault.eq(gemm.error | smax.error | ln.error),
                     self.beat.eq(gemm.beat), self.layer_mark.eq(seq.layer_mark)]
        # the sequencer starts everything; the job engine and the softmax, LayerNorm and
        # output passes a cycle after its start (below)
        connect(m, seq.inp, inp.ctl)
        # the engine's start and descriptor a register later as well: the sequencer's start
        # decision (its state, the softmax pass's done, the loader's slot flags) ran on into
        # the feeder's state and counters, across the chip (the ULX3S's worst path of a
        # placement at 125 MHz, 8.60 ns from the softmax pass's done flag into the feeder's
        # ``active``). Its ``ready``, a register cleared by the start it sees, is hidden in
        # that cycle as its ``done`` is.
        job_start = self._start_late(m, "job", seq.job, gemm.ctl, {})
        smax_inputs = {"keys": (seq.keys, smax.keys), "key0": (seq.key0, smax.key0),
                       "bank": (seq.smax_bank, smax.bank),
                       "row_lo": (seq.row_lo, smax.row_lo), "row_hi": (seq.row_hi, smax.row_hi)}
        for name, ctl, unit, inputs in (
                ("smax", seq.smax, smax.ctl, smax_inputs),
                ("ln", seq.ln, ln.ctl, {"seq_len": (seq.seq_len, ln.seq_len)}),
                ("out", seq.out, outp.ctl, {"seq_len": (seq.seq_len, outp.seq_len)})):
            self._start_late(m, name, ctl, unit, inputs)
        for ho in ("scalars_ho", "ln_slots"):
            connect(m, getattr(loader, ho), getattr(seq, ho))
        # the panel slots: the sequencer waits for them, the job engine releases each once its
        # job is written (it may take the next job before)
        m.d.comb += [seq.slots_full.eq(loader.slots.full),
                     seq.job_ready.eq(gemm.ready & ~job_start),
                     loader.slots.release.eq(gemm.slot_release),
                     loader.slots.index.eq(gemm.slot_index)]
        m.d.comb += [seq.in_length.eq(inp.length), seq.in_blocks.eq(inp.blocks),
                     seq.in_packed.eq(inp.packed), inp.r_addr.eq(seq.seg_addr),
                     seq.seg_start.eq(inp.r_start), seq.seg_end.eq(inp.r_end)]
        # parameters: loader -> job engine, softmax pass, LayerNorm pass
        m.d.comb += [*(gemm.panels[i].eq(loader.panels[i]) for i in range(2)),
                     gemm.scalars.eq(loader.scalars)]
        m.d.comb += [getattr(smax.consts, k).eq(getattr(loader.scalars, f"sm_{k}"))
                     for k, _ in smax.consts.shape()]
        connect(m, gemm.panel_rd, loader.panel_rd)
        connect(m, ln.params, loader.ln_rd)
        # buffers: each port to its one owner
        for b in "xqahkvp":
            connect(m, getattr(gemm, f"feed_{b}"), getattr(buf, f"feed_{b}"))
        connect(m, gemm.res_x, buf.res_x)
        connect(m, gemm.res_a, buf.res_a)
        connect(m, outp.x, buf.out_x)
        m.d.comb += buf.out_owns.eq(outp.x_owned)
        connect(m, ln.r, buf.ln_r)
        connect(m, smax.scores, buf.smax_s)
        writers = [(getattr(gemm, f"wb_{b}"), getattr(buf, f"wb_{b}")) for b in "qkvhrs"]
        writers += [(inp.x, buf.in_x), (ln.x, buf.ln_x), (ln.a, buf.ln_a), (smax.p, buf.smax_p)]
        for ports, members in writers:
            for port, member in zip(ports, members, strict=True):
                connect(m, port, member)
        return m

    @staticmethod
    def _start_late(m, name, ctl, unit, inputs):
        """Connect the sequencer's task ``ctl`` to a ``unit`` (a pass or the job engine) with
        the start a register later. The start pulse is registered; the task's parameters (the
        engine's job descriptor) and the unit's other ``inputs`` (a name -> ``(sequencer
        output, unit input)``, which the unit takes at its start) are registered in every
        cycle, so that at the late start they hold what they held at the sequencer's. The
        sequencer's start decision (its state, the job engine's and the passes' ``done``) ran
        on into the resets and enables of the unit's counters and input registers: the
        ULX3S's worst paths at 125 MHz in several placements (8.36 ns into the softmax pass's
        key counter). The unit's ``done`` is hidden in the cycle its start reaches it (it may
        still stand from the unit's last task). Returns the registered start."""
        assert Datapath.START_STAGES == 1           # the one register stage below
        start = Signal(name=f"{name}_start")
        m.d.sync += start.eq(ctl.start)
        m.d.comb += [unit.start.eq(start), ctl.done.eq(unit.done & ~start)]
        params = {key: (getattr(ctl, key), getattr(unit, key))
                  for key in ctl.signature.members if key not in ("start", "done")}
        for key, (src, dst) in {**params, **inputs}.items():
            reg = Signal.like(src, name=f"{name}_{key}", reset_less=True)
            m.d.sync += reg.eq(src)
            m.d.comb += dst.eq(reg)
        return start
