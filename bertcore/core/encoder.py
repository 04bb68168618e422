"""The encoder core: all layers of an integer BERT encoder on one systolic array.

Architecture
------------
One :class:`~bertcore.rtl.systolic.SystolicArray` (``N × N``, ``N = array_cols``) computes every
product of a layer; the units around it are the finished RTL units of :mod:`bertcore.rtl`::

    s_axis_param -> loader -> panel slots (2) ---------------------------------+ B
                         -> layer scalars, LayerNorm parameters                 |
    s_axis_act -> bytes -> X, Q/ctx, K, V, A, H buffers, P buffer -> feeder ---+-> array
    array -> residual fetch (X or A) -> Requantizer (22 bit) -+-> sat8 -> Q, K, V, ctx
                                                               +-> sat16 -> IntGELU
                                                               |     -> Requantizer -> H
                                                               +-> R (22 bit)
    array (scores) -> score banks -> IntSoftmax x S -> P buffer
    R banks -> IntLayerNorm x U -> Requantizer (U lanes, per channel, bias) -> bytes -> A or X
    X (after the last layer) -> output pass -> m_axis_act

Components (one per file of :mod:`bertcore.core`, composed by :class:`EncoderCore`)
-----------------------------------------------------------------------------------
* :mod:`~bertcore.core.control` (``RunControl``): runs, protocol errors, the registered
  ``abort`` that resets the datapath, the counters, the resident image store;
* :mod:`~bertcore.core.datapath` (``Datapath``): wires the components below;
* :mod:`~bertcore.core.loader` (``ParameterLoader``): image -> panel slots, layer scalars,
  LayerNorm parameters (states generated from :mod:`~bertcore.core.image`'s records);
* :mod:`~bertcore.core.buffers` (``Buffers``): the banked X, Q, K, V, A, H, P, R and score
  memories, one owner per port (and a fixed-priority arbiter on the two shared ports of X);
* :mod:`~bertcore.core.gemm` (``GemmEngine``): the array with :mod:`~bertcore.core.feeder`
  (``OperandFeeder``) and :mod:`~bertcore.core.writeback` (``WriteBack``);
* :mod:`~bertcore.core.attention` (``SoftmaxPass``) and :mod:`~bertcore.core.norm`
  (``LayerNormPass``);
* :mod:`~bertcore.core.streamio` (``ActivationInput``, ``ActivationOutput``);
* :mod:`~bertcore.core.sequencer` (``Sequencer``): the schedule below.

:mod:`~bertcore.core.buffers` describes the buffers' layout (banked by position, so one read
of every bank gives the ``N`` rows of an A operand beat); the array's A operand is
``signed(prob_bits + 1)`` so both int8 activations and the ``prob_bits``-bit probabilities fit
(``gemm.accumulator_range`` sizes its accumulators).

Schedule (the sequencer starts one job at a time; the loader runs ahead)
-------------------------------------------------------------------------
* Per weight panel (``N`` output channels): the loader streams the panel's bias, requantization
  vectors and ``K`` weight rows into a free slot of the double-buffered panel buffer while the
  array computes the previous panel; the array then runs the panel over all ``ceil(L/N)`` row
  blocks (each weight enters once per inference and is reused for every row block).
* Q, K, V panels → Requantizer → int8 buffers.
* Per head, per block of ``N`` query rows: scores ``Q_h·K_hᵀ`` (tiles over key blocks) → score
  banks → the ``S`` IntSoftmax units, ``N / S`` rows each, side by side → P buffer → ``P·V_h``
  → Requantizer (ctx scalars) → Q buffer. The softmax pass of a block runs beside the next
  block's scores and the previous block's ``P·V`` (double-buffered score banks and P buffer).
* O panels (A = context) → Requantizer with the residual ``X`` → R; LayerNorm pass R → the
  ``U`` IntLayerNorm units (``U`` positions at a time, in lockstep: a fork feeds them the same
  channel, a join hands their outputs to one ``U``-lane Requantizer with that channel's
  parameters) → ``U`` gatherers → A.
* FFN1 panels → Requantizer (16 bit) → IntGELU → Requantizer → H; FFN2 panels (A = H, residual
  A) → R; LayerNorm pass → X.
* After the last layer, the output pass streams X row-major to ``m_axis_act``.

The job engine takes a panel while it drains the panel before (and a block's scores while it
drains the previous ``P·V``); the first job after the V, O, FFN1 and FFN2 panels waits until
they are written. The LayerNorm units are replicated (``layernorm_units``) so that the array
waits little for them, and so are the softmax units (``softmax_units``), so that a softmax pass
fits beside the array's next two jobs. :mod:`bertcore.core.perf` models the cycles of this
schedule.
"""

from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetInserter
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from bertcore.config import CoreConfig
from bertcore.rtl.common import rejecting
from bertcore.rtl.stream import RegisterSlice

from .common import act_layout, bus_layout, out_layout
from .control import RunControl
from .datapath import Datapath
from .image import check_core_config

__all__ = ["EncoderCore", "EncoderTop", "bus_layout", "out_layout", "STATUS"]

#: The core's status outputs (beside its three streams), all ``Out``.
STATUS = ("busy", "error", "cycles", "array_beats", "layer_cycles", "failed_runs")


class EncoderCore(wiring.Component):
    """The encoder core: all layers of one sequence per run (see the module docstring).

    Parameters
    ----------
    config : CoreConfig
        A configuration the core supports (:func:`bertcore.core.image.check_core_config`).
    dp_domain : bool
        Put the datapath in a local clock domain ``dp`` on the same clock, whose reset is the
        controller's registered ``abort`` alone (it is 1 in and right after the core's reset), so
        that one flip-flop, not an OR of the two resets, drives the datapath's reset inputs: an
        ECP5 critical path otherwise. The board tops use it (with ``core_domain``,
        :class:`boards.top.UARTCoreTop`). The Amaranth simulator sees a clock assigned from
        ``sync`` one delta cycle late (a race), so Amaranth simulations keep the default (the
        datapath in ``sync`` with ``abort`` inserted as a reset); Verilog simulators do not
        have that race.
    gate_idle : bool
        For Verilog simulations (Verilator) only, with ``dp_domain``: the softmax pass, the
        LayerNorm pass and the GEMM write-back run on clocks that stop while they are idle
        (:func:`bertcore.core.common.add_gated`), which Verilator then does not evaluate:
        about twice the simulated cycles per second, the same outputs and cycles. Not for
        FPGA builds (the design is timed for one clock) nor the Amaranth simulator (it races
        derived clocks).

    Members
    -------
    s_param : ``In(stream.Signature(bus_layout(bus_width)))``
        The parameter image (:func:`bertcore.core.image.pack_parameter_image`), once per run.
    s_act : ``In(stream.Signature(act_layout(bus_width)))``
        The int8 input of one sequence (:func:`bertcore.core.image.pack_activations`) or of
        several (a packed packet: ``user`` on the beats of its segment table,
        :func:`bertcore.core.image.pack_segments`).
    m_act : ``Out(stream.Signature(out_layout(bus_width)))``
        One packet per run: the int8 output of the last layer (``user`` = 0 on every beat),
        or, for a failed run, one beat with ``last`` = 1, ``user`` = 1 and the cause code
        (:data:`~bertcore.core.image.FAIL_CAUSES`) in ``data``.
    busy : ``Out(1)``
        A run is in progress, or a failed run is still settling (its image being dropped, its
        activation packet awaited or being dropped, its failure packet not yet taken).
    error : ``Out(1)``
        A protocol error was seen (or an internal unit flagged one, sticky until reset); a
        protocol error is cleared when the next run starts.
    cycles : ``Out(32)``
        Cycles of the last successful run (first image beat to last output beat).
    array_beats : ``Out(32)``
        Operand beats the systolic array took in the last successful run (cycles in which its
        ``N x N`` PEs were fed; :func:`bertcore.core.perf.array_beats`).
    layer_cycles : ``Out(32)``
        Cycles of the last layer of the last successful run (from the end of the previous
        layer to the end of its second LayerNorm; :func:`bertcore.core.perf.layer_cycles`).
    failed_runs : ``Out(32)``
        Runs that ended with a failure packet since reset (saturating at ``2**32 - 1``).

    Every run pairs with exactly one activation packet and ends with exactly one packet on
    ``m_act``. Protocol errors (bad image header or length, activations with no image, a
    sequence of 0 or more than ``max_seq`` rows, a malformed segment table or rows that differ
    from it) raise ``error``, abort the run, send its failure packet, drop the rest of its
    image and its whole activation packet (whenever that arrives: before, during or after the
    failure) and return to idle; the next run starts once the failed run's packet is dropped.

    With ``config.resident`` the image of a successful run is kept in an on-chip memory
    (``image_beats(config)`` words of ``bus_width + 1`` bits): a run that starts with an
    activation beat replays it (no image on ``s_param``); a new image on ``s_param`` replaces it.
    An activation beat while idle is an error only when no image is stored.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~bertcore.config.CoreConfig` or ``dp_domain`` not a bool.
    ImageError
        If the core does not support ``config``.
    """

    def __init__(self, config, *, dp_domain=False, gate_idle=False):
        with rejecting(self):
            if not isinstance(config, CoreConfig):
                raise TypeError(f"config must be a CoreConfig, not {config!r}")
            if not isinstance(dp_domain, bool):
                raise TypeError(f"dp_domain must be a bool, not {dp_domain!r}")
            if not isinstance(gate_idle, bool):
                raise TypeError(f"gate_idle must be a bool, not {gate_idle!r}")
            if gate_idle and not dp_domain:
                # the gated units reset with the datapath's domain (ResetInserter's abort
                # would not reach their domains)
                raise ValueError("gate_idle needs dp_domain")
            check_core_config(config)
        self._config = config
        self._dp_domain = dp_domain
        self._gate_idle = gate_idle
        layout = bus_layout(config.bus_width)
        super().__init__({
            "s_param": In(stream.Signature(layout)),
            "s_act": In(stream.Signature(act_layout(config.bus_width))),
            "m_act": Out(stream.Signature(out_layout(config.bus_width))),
            "busy": Out(1),
            "error": Out(1),
            "cycles": Out(32),
            "array_beats": Out(32),
            "layer_cycles": Out(32),
            "failed_runs": Out(32),
        })

    @property
    def config(self):
        return self._config

    @property
    def dp_domain(self):
        """Whether the datapath has a clock domain of its own (the ``dp_domain`` parameter)."""
        return self._dp_domain

    def elaborate(self, platform):
        m = Module()
        # Register slices on all three stream ports: every port signal (valid, ready, payload)
        # comes from or ends in a flip-flop, so no path runs from a neighbour's logic into the
        # controller or the datapath (they are the ECP5 critical paths otherwise).
        m.submodules.s_param_slice = p_slice = RegisterSlice(self.s_param.payload.shape())
        m.submodules.s_act_slice = a_slice = RegisterSlice(self.s_act.payload.shape())
        m.submodules.m_act_slice = o_slice = RegisterSlice(self.m_act.payload.shape())
        connect(m, flipped(self.s_param), p_slice.i_stream)
        connect(m, flipped(self.s_act), a_slice.i_stream)
        connect(m, o_slice.o_stream, flipped(self.m_act))
        m.submodules.control = ctl = RunControl(self._config)
        connect(m, p_slice.o_stream, ctl.s_param)
        connect(m, a_slice.o_stream, ctl.s_act)
        connect(m, ctl.m_act, o_slice.i_stream)
        # the datapath is reset by the controller's (registered) abort after every run
        dp = Datapath(self._config, gate_idle=self._gate_idle)
        if self._dp_domain:
            # its own domain on the same clock, reset by that one flip-flop alone (abort is 1
            # in and right after the domain's reset): no OR of the two resets in front of the
            # datapath's ~4k reset inputs (board builds: docs/boards.md, "Toward 100 MHz")
            m.domains.dp = cd_dp = ClockDomain("dp", local=True)
            m.d.comb += [cd_dp.clk.eq(ClockSignal("sync")), cd_dp.rst.eq(ctl.abort)]
            m.submodules.dp = DomainRenamer("dp")(dp)
        else:
            m.submodules.dp = ResetInserter(ctl.abort)(dp)
        connect(m, ctl.dp_param, dp.param)
        connect(m, ctl.dp_act, dp.act)
        connect(m, dp.out, ctl.dp_out)
        m.d.comb += [dp.start.eq(ctl.dp_start),
                     *(getattr(ctl, f"dp_{name}").eq(getattr(dp, name))
                       for name in ("done", "fail", "cause", "fault", "beat", "layer_mark")),
                     *(getattr(self, name).eq(getattr(ctl, name)) for name in STATUS)]
        return m


class EncoderTop(wiring.Component):
    """:class:`EncoderCore` with flat AXI4-Stream port names (``s_axis_param_tdata`` ...).

    ``verilog.convert(EncoderTop(config), name="bertcore_encoder")`` emits ``clk``, ``rst``,
    ``s_axis_param_tdata/tvalid/tready/tlast``, ``s_axis_act_tdata/tvalid/tready/tlast/tuser``,
    ``m_axis_act_tdata/tvalid/tready/tlast/tuser`` and the :data:`STATUS` outputs ``busy``,
    ``error``, ``cycles``, ``array_beats``, ``layer_cycles`` and ``failed_runs``.
    """

    def __init__(self, config, **core_options):
        # core_options: EncoderCore's keyword arguments (dp_domain, gate_idle)
        self._core = EncoderCore(config, **core_options)
        bus = config.bus_width
        super().__init__({
            "s_axis_param_tdata": In(bus), "s_axis_param_tvalid": In(1),
            "s_axis_param_tready": Out(1), "s_axis_param_tlast": In(1),
            "s_axis_act_tdata": In(bus), "s_axis_act_tvalid": In(1),
            "s_axis_act_tready": Out(1), "s_axis_act_tlast": In(1), "s_axis_act_tuser": In(1),
            "m_axis_act_tdata": Out(bus), "m_axis_act_tvalid": Out(1),
            "m_axis_act_tready": In(1), "m_axis_act_tlast": Out(1), "m_axis_act_tuser": Out(1),
            **{name: Out(self._core.signature.members[name].shape) for name in STATUS},
        })

    @property
    def core(self):
        return self._core

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._core
        for name, s in (("s_axis_param", core.s_param), ("s_axis_act", core.s_act)):
            m.d.comb += [s.payload.data.eq(getattr(self, f"{name}_tdata")),
                         s.payload.last.eq(getattr(self, f"{name}_tlast")),
                         s.valid.eq(getattr(self, f"{name}_tvalid")),
                         getattr(self, f"{name}_tready").eq(s.ready)]
        m.d.comb += core.s_act.payload.user.eq(self.s_axis_act_tuser)
        m.d.comb += [self.m_axis_act_tdata.eq(core.m_act.payload.data),
                     self.m_axis_act_tlast.eq(core.m_act.payload.last),
                     self.m_axis_act_tuser.eq(core.m_act.payload.user),
                     self.m_axis_act_tvalid.eq(core.m_act.valid),
                     core.m_act.ready.eq(self.m_axis_act_tready),
                     *(getattr(self, name).eq(getattr(core, name)) for name in STATUS)]
        return m
