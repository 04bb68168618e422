"""Run control of the encoder core: starts and ends runs, handles protocol errors, keeps the
performance counters and (``resident``) the stored parameter image.

It sits between the core's (registered) stream ports and the :class:`~bertcore.core.datapath.
Datapath`, which it resets (``abort``) after every run and on every error.
"""

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bertcore.rtl.blockram import BlockRam
from bertcore.rtl.fsm import Fsm

from .common import act_signature, bus_signature, out_signature, pick
from .image import FAIL_CAUSE_BITS, FAIL_NO_IMAGE, image_beats

__all__ = ["RunControl"]

# the resident image memory's blocks: 2**10 = 1024 words, a BlockRam's depth on ECP5 (its
# DP16KDs in their 1024 x 18 mode, side by side for the bus_width + 1 bits); 512-word blocks
# (the depth of yosys's 512 x 36 mapping of a Memory) left half of each DP16KD empty and
# doubled the multiplexer over the blocks, a path of 8.2 ns into the replay register q on the
# ULX3S at 125 MHz
IMAGE_BLOCK_BITS = 10


class RunControl(wiring.Component):
    """The controller of :class:`~bertcore.core.encoder.EncoderCore`.

    Members
    -------
    s_param, s_act : ``In(bus_signature(bus_width))``, ``In(act_signature(bus_width))``
        The core's input streams (after their port register slices).
    m_act : ``Out(out_signature(bus_width))``
        The core's output stream (before its port register slice): the result packet of a
        successful run (``user`` = 0), or the one-beat failure packet of a failed one
        (``user`` = 1, ``data`` the cause code).
    dp_param, dp_act : ``Out(bus_signature(bus_width))``, ``Out(act_signature(bus_width))``
        The datapath's input streams (the image replayed from memory with ``resident``).
    dp_out : ``In(bus_signature(bus_width))``
        The datapath's output stream.
    dp_start : ``Out(1)``
        Start the datapath.
    dp_done, dp_fail, dp_fault, dp_beat, dp_layer_mark : ``In(1)``, dp_cause : ``In(3)``
        The datapath's status (:class:`~bertcore.core.datapath.Datapath`).
    abort : ``Out(1, init=1)``
        Reset the datapath (registered: one cycle after the decision; 1 in and right after the
        reset).
    busy, error, cycles, array_beats, layer_cycles, failed_runs : ``Out``
        The core's status outputs (:class:`~bertcore.core.encoder.EncoderCore`).
    """

    def __init__(self, config):
        self._c = config
        bus = bus_signature(config.bus_width)
        act = act_signature(config.bus_width)         # tuser: segment-table beats
        super().__init__({
            "s_param": In(bus), "s_act": In(act), "m_act": Out(out_signature(config.bus_width)),
            "dp_param": Out(bus), "dp_act": Out(act), "dp_out": In(bus),
            "dp_start": Out(1), "dp_done": In(1), "dp_fail": In(1),
            "dp_cause": In(FAIL_CAUSE_BITS), "dp_fault": In(1),
            "dp_beat": In(1), "dp_layer_mark": In(1), "abort": Out(1, init=1),
            "busy": Out(1), "error": Out(1), "cycles": Out(32), "array_beats": Out(32),
            "layer_cycles": Out(32), "failed_runs": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        s_param, s_act, m_act = self.s_param, self.s_act, self.m_act
        # ``abort`` resets the whole datapath; it is registered (one cycle late) so that the
        # decisions behind it (header/length checks, the end of a run) are not on the same
        # path as the reset fan-out. The controller waits in IDLE while it is high. It is 1 in
        # and right after the reset (init 1): alone it can reset the datapath (``dp_domain``).
        abort = Signal()
        abort_q = self.abort
        m.d.sync += abort_q.eq(abort)
        fail_q = Signal()
        cause_q = Signal(FAIL_CAUSE_BITS)
        err = Signal()             # a protocol error (sticky until the next run starts)
        fault = Signal()           # an internal unit flagged an error (sticky until reset)
        with m.If(self.dp_fault):
            m.d.sync += fault.eq(1)
        m.d.comb += self.error.eq(err | fault)

        p_fire = s_param.valid & s_param.ready
        a_fire = s_act.valid & s_act.ready
        p_open = Signal()          # a parameter packet has started and not ended
        with m.If(p_fire):
            m.d.sync += p_open.eq(~s_param.payload.last)
        count = Signal(32)
        m.d.sync += count.eq(count + 1)
        beats = Signal(32)
        with m.If(self.dp_beat):
            m.d.sync += beats.eq(beats + 1)
        mark_at = Signal(32)       # ``count`` at the last layer mark
        last_layer = Signal(32)
        with m.If(self.dp_layer_mark):
            m.d.sync += [mark_at.eq(count), last_layer.eq(count - mark_at)]
        store = self._image_store(m, p_fire) if self._c.resident else None
        act_in = Signal()          # the run's activation packet has ended (its tlast is in)
        # the run's image has ended (its tlast went to the datapath): nothing more is passed, so
        # the datapath's input slice never holds a beat of the next packet
        image_in = Signal()
        restart = [err.eq(0), count.eq(1), beats.eq(0), act_in.eq(0), image_in.eq(0)]
        owed = Signal()            # the activation packet of a failed run is still to drop
        report = self._failure_report(m)

        def fail(cause, *, packet_in):
            """End a run (or an activation packet without one) as failed: raise ``error``,
            report ``cause`` on ``m_act``, and drop the run's activation packet unless it is
            already in (``packet_in``)."""
            m.d.sync += [err.eq(1), owed.eq(~packet_in), *report.send(cause)]

        with Fsm(m, "ctrl") as fsm:
            with fsm.State("IDLE"):
                with m.If(abort_q | owed | report.pending):
                    pass                      # datapath reset, failed run not yet settled
                with m.Elif(s_param.valid):
                    m.d.comb += self.dp_start.eq(1)
                    m.d.sync += restart
                    if store:
                        m.d.sync += store.record
                    fsm.next("RUN")
                if store:
                    with m.Elif(s_act.valid & store.stored):
                        # replay the stored image
                        m.d.comb += self.dp_start.eq(1)
                        m.d.sync += restart + store.play
                        fsm.next("RUN")
                with m.Elif(s_act.valid):
                    # activations with no image: a failed run of their own, dropped to tlast
                    fail(FAIL_NO_IMAGE, packet_in=0)
            with fsm.State("RUN"):
                # a failure is acted on one cycle late (``fail_q``, off the header-check path);
                # in that cycle no beat is taken, so nothing of the next packet is swallowed
                m.d.sync += [fail_q.eq(self.dp_fail), cause_q.eq(self.dp_cause)]
                p_pass = ~fail_q & ~image_in
                m.d.comb += [
                    self.busy.eq(1),
                    self.dp_param.valid.eq(s_param.valid & p_pass),
                    self.dp_param.payload.eq(s_param.payload),
                    s_param.ready.eq(self.dp_param.ready & p_pass),
                    self.dp_act.valid.eq(s_act.valid & ~fail_q),
                    self.dp_act.payload.eq(s_act.payload),
                    s_act.ready.eq(self.dp_act.ready & ~fail_q),
                    m_act.valid.eq(self.dp_out.valid),
                    m_act.payload.data.eq(self.dp_out.payload.data),
                    m_act.payload.last.eq(self.dp_out.payload.last),
                    m_act.payload.user.eq(0),
                    self.dp_out.ready.eq(m_act.ready),
                ]
                with m.If(a_fire & s_act.payload.last):
                    m.d.sync += act_in.eq(1)
                with m.If(self.dp_param.valid & self.dp_param.ready
                          & self.dp_param.payload.last):
                    m.d.sync += image_in.eq(1)
                if store:
                    with m.If(store.replay):
                        m.d.comb += [self.dp_param.valid.eq(store.q_valid & p_pass),
                                     self.dp_param.payload.eq(store.q_payload),
                                     s_param.ready.eq(0)]
                with m.If(fail_q):
                    m.d.comb += abort.eq(1)
                    fail(cause_q, packet_in=act_in)
                    fsm.next("DRAIN")
                with m.Elif(self.dp_done):
                    # the datapath restarts from its reset state for the next run
                    m.d.comb += abort.eq(1)
                    m.d.sync += [self.cycles.eq(count), self.array_beats.eq(beats),
                                 self.layer_cycles.eq(last_layer)]
                    if store:
                        m.d.sync += store.keep
                    fsm.next("IDLE")
            with fsm.State("DRAIN"):
                m.d.sync += fail_q.eq(0)
                # drop what is left of the image (the failing beat itself was taken); the
                # activation packet is the drop gate's
                m.d.comb += [self.busy.eq(1), abort.eq(1), s_param.ready.eq(p_open)]
                with m.If(~p_open | (p_fire & s_param.payload.last)):
                    fsm.next("IDLE")
        self._drop_gate(m, owed)
        with m.If(owed | report.pending):
            m.d.comb += self.busy.eq(1)
        return m

    def _drop_gate(self, m, owed):
        """The activation packet of a failed run is dropped whenever it arrives.

        Every run pairs with exactly one activation packet. A run that fails before its
        packet's ``tlast`` is in sets ``owed``: from then on (in any state) ``s_act`` beats are
        taken and discarded up to the next ``tlast`` -- the rest of the packet, or the whole
        packet if it has not started yet. No run starts while ``owed`` is set, so the next
        run's packet is never touched. Added after the FSM: it overrides ``s_act.ready``
        (``owed`` is set only on the way out of ``RUN``, so no run sees the gate).
        """
        with m.If(owed):
            m.d.comb += [self.s_act.ready.eq(1), self.dp_act.valid.eq(0)]
            with m.If(self.s_act.valid & self.s_act.payload.last):
                m.d.sync += owed.eq(0)

    def _failure_report(self, m):
        """The failure packet: one beat, ``last`` = 1, ``user`` = 1, ``data`` = the cause code.

        ``send(cause)`` arms it (statements for ``m.d.sync``); it waits on ``m_act`` until
        taken (``pending``), and counts the failed run in ``failed_runs``. Outside ``RUN``
        nothing else drives ``m_act``, and no run starts while it is pending.
        """
        pending = Signal()
        code = Signal(FAIL_CAUSE_BITS)
        m.d.comb += [self.m_act.valid.eq(pending), self.m_act.payload.data.eq(code),
                     self.m_act.payload.last.eq(1), self.m_act.payload.user.eq(1)]
        with m.If(pending & self.m_act.ready):
            m.d.sync += pending.eq(0)
        failed = self.failed_runs
        return SimpleNamespace(
            pending=pending,
            send=lambda cause: [pending.eq(1), code.eq(cause),
                                failed.eq(failed + (failed != (1 << len(failed)) - 1))])

    def _image_store(self, m, p_fire):
        """``resident``: the image of a successful run is kept in a memory and replayed by runs
        that start with activations. Returns its signals and the statements that start a
        recording (``record``), start a replay (``play``) and keep the recorded image
        (``keep``)."""
        total = image_beats(self._c)
        bus = self._c.bus_width
        replay = Signal()
        stored = Signal()
        cap_addr = Signal(range(total + 1))
        # cap_addr != total and the block cap_addr is in (one-hot), as registers stepping with
        # cap_addr: the compares of cap_addr sat in the blocks' write enables behind the
        # stream's fire (7.7-8.2 ns into a DP16KD's WEA in three of ten ULX3S placements at
        # 125 MHz)
        cap_open = Signal(init=1)
        r_addr = Signal(range(total + 1))
        r_valid = Signal()             # the blocks' outputs hold a beat (of block r_blk)
        # The memory in blocks of 2**IMAGE_BLOCK_BITS words, each block's read data registered
        # before the multiplexer over the blocks (b): a block RAM's clock-to-out (5.8 ns on ECP5
        # without its output register) and that multiplexer do not fit one 10 ns cycle; b is
        # the block's output register (rtl.blockram), a block RAM's clock-to-out plus a
        # route into a fabric register did not fit 8 ns (ULX3S at 125 MHz). Then
        # one more register (q) before the datapath, so the header checks start from a
        # flip-flop. Memory -> b -> q, each stage moving when the one after it can take.
        block = 1 << IMAGE_BLOCK_BITS
        sizes = [min(block, total - base) for base in range(0, total, block)]
        r_blk = Signal(range(len(sizes)))
        b_valid = Signal()
        b_blk = Signal(range(len(sizes)))
        b_data = []
        q_valid = Signal()             # the register after it (the replayed stream) holds one
        q_payload = Signal(bus + 1)
        q_load = ~q_valid | self.dp_param.ready
        b_load = ~b_valid | q_load
        r_en = ~r_valid | b_load
        rd_blk = r_addr[IMAGE_BLOCK_BITS:]
        cap_sel = Signal(len(sizes), init=1)
        # a captured beat is written a cycle later, from registers (the block's write enable,
        # the address, the data): the capture's fire, behind the stream's valid and the
        # control's failure flag, ran on into the DP16KDs' write enables (8.0-8.3 ns into WEA
        # in two ULX3S placements at 125 MHz). A replay reads from address 0 on, so no beat is
        # read before its late write has landed.
        w_sel = Signal(len(sizes))
        w_addr = Signal.like(cap_addr, reset_less=True)
        w_data = Signal(bus + 1, reset_less=True)
        capture = p_fire & ~replay & cap_open
        m.d.sync += [w_sel.eq(Mux(capture, cap_sel, 0)),
                     w_addr.eq(cap_addr), w_data.eq(self.s_param.payload.as_value())]
        for i, depth in enumerate(sizes):
            # the block's read data register b is the block RAM's own output register
            # (rtl.blockram: on ECP5 a DP16KD's, whose clock-to-out is ~1 ns instead of 5.8)
            m.submodules[f"image_{i}"] = image = BlockRam(bus + 1, depth)
            # (the ports' addresses are as wide as their block: the low bits of the address)
            m.d.comb += [image.w_en.eq(w_sel[i]), image.w_data.eq(w_data),
                         image.w_addr.eq(w_addr), image.r_addr.eq(r_addr),
                         image.r_en.eq(r_en), image.o_en.eq(b_load)]
            b_data.append(image.r_data)
        with m.If(capture):
            m.d.sync += [cap_addr.eq(cap_addr + 1), cap_open.eq(cap_addr != total - 1)]
            with m.If(cap_addr[:IMAGE_BLOCK_BITS] == block - 1):
                m.d.sync += cap_sel.eq(cap_sel << 1)
        with m.If(q_load):
            m.d.sync += [q_valid.eq(b_valid & replay), q_payload.eq(pick(b_data, b_blk, bus + 1))]
        with m.If(b_load):
            m.d.sync += [b_valid.eq(r_valid & replay), b_blk.eq(r_blk)]
        with m.If(r_en & replay):
            m.d.sync += r_valid.eq(r_addr != total)
            with m.If(r_addr != total):
                m.d.sync += [r_addr.eq(r_addr + 1), r_blk.eq(rd_blk)]

        return SimpleNamespace(
            replay=replay, stored=stored, q_valid=q_valid, q_payload=q_payload,
            record=[replay.eq(0), stored.eq(0), cap_addr.eq(0), cap_open.eq(1), cap_sel.eq(1)],
            play=[replay.eq(1), r_addr.eq(0), r_valid.eq(0), b_valid.eq(0), q_valid.eq(0)],
            keep=[stored.eq(1)])
