"""The LayerNorm pass: R banks -> ``U`` IntLayerNorm units -> a ``U``-lane Requantizer ->
``U`` gatherers -> A (LN-1) or X (LN-2).

Unit ``u`` normalizes the positions ``g*U + u``; the units take the same channel of their rows
each cycle (a fork), their outputs are joined into one Requantizer beat (the channel's ``m``,
``e`` and bias, from the loader's LayerNorm parameter memory, are shared) and ``U`` gatherers
write the words into the banks of their positions.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bertcore.quant.kernels import RESIDUAL_BITS
from bertcore.rtl.common import less
from bertcore.rtl.layernorm import IntLayerNorm
from bertcore.rtl.requant import Requantizer

from .common import element, fork, read_port, row_read, sliced, task, times, write_port
from .image import LN_BIAS_BITS
from .loader import LN_LANE

__all__ = ["LayerNormPass"]


class LayerNormPass(wiring.Component):
    """One LayerNorm of a layer over the whole sequence.

    Members
    -------
    ctl : ``In(task(which=1))``
        ``start`` starts the pass, ``which`` (0: LN-1 into A, 1: LN-2 into X) is taken with it;
        ``done`` is a one-cycle pulse when the last word has been written.
    seq_len : ``In(range(max_seq + 1))``
        Positions to normalize.
    r : ``Out(row_read(...))``
        The R banks (the residual sums), read through two registers that both load with
        ``en``: the word addressed with one ``en`` is on ``data`` after the next ``en``.
    params : ``Out(read_port(...))``
        The loader's LayerNorm parameter memory (``LN_LANE`` per channel).
    a, x : ``Out(write_port(...)).array(N)``
        The A and X buffers.
    error : ``Out(1)``
        A unit flagged an error.
    """

    def __init__(self, config):
        self._c = config
        n, u = config.array_cols, config.layernorm_units
        self._grp = -(-config.max_seq // n)
        cwh = config.hidden // n
        word = unsigned(8 * n)
        super().__init__({
            "ctl": In(task(which=1)),
            "seq_len": In(range(config.max_seq + 1)),
            "r": Out(row_read(self._grp * (n // u) * cwh, unsigned(RESIDUAL_BITS * n), u)),
            "params": Out(read_port(2 * cwh, unsigned(LN_LANE.size * n))),
            "a": Out(write_port(self._grp * cwh, word)).array(n),
            "x": Out(write_port(self._grp * cwh, word)).array(n),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N, U, GRP, CWH = c.array_cols, c.layernorm_units, self._grp, c.hidden // c.array_cols
        PPB = N // U                      # position groups per block
        lns = []
        for u in range(U):
            m.submodules[f"ln_{u}"] = unit = IntLayerNorm(c.hidden, in_width=RESIDUAL_BITS,
                                                          multipliers=c.multipliers("layernorm"))
            lns.append(unit)
        m.d.comb += self.error.eq(Cat(*(unit.error for unit in lns)).any())
        m.submodules.rq_ln = rq_ln = Requantizer(lanes=U, in_width=IntLayerNorm.OUT_WIDTH,
                                                 out_bits=8, bias_width=LN_BIAS_BITS,
                                                 multipliers=c.multipliers("requant"))
        which = Signal()                # 0: LN1 (R -> A), 1: LN2 (R -> X)
        running = Signal()              # a pass runs until every position is written
        st = {"which": which, "start": self.ctl.start}
        # R -> units: position group n_g (positions n_g*U + u), chunk n_c, element n_l
        n_active = Signal()
        n_g = Signal(range(GRP * PPB + 1))
        n_c = Signal(range(CWH))
        n_l = Signal(range(N))
        n1_valid = Signal()
        n1_l = Signal(range(N))
        n1_last = Signal()
        n1_on = Signal(U)             # the unit's position is inside the sequence
        sinks = sliced(m, "ln_in", [unit.i_stream for unit in lns])
        ln_outs = sliced(m, "ln_out", [unit.o_stream for unit in lns], inputs=False)
        # stage n1: R's read register; stage r: R's output register (the buffer's BlockRam
        # loads it with the read's enable: the block RAM's clock-to-out, 5.8 ns on ECP5 from
        # its read register, and the element pick do not fit one cycle together). Stage n2:
        # the element picked from it, registered, offered to the units (the pick runs into the
        # slices across the chip otherwise). All stages move with n_adv.
        r_valid = Signal()
        r_l = Signal(range(N))
        r_last = Signal()
        r_on = Signal(U)
        n2_valid = Signal()
        n2_last = Signal()
        n2_on = Signal(U)
        n_adv = fork(m, "n", n2_valid, sinks, n2_on)
        m.d.comb += [self.r.addr.eq(times(n_g, CWH) + n_c), self.r.en.eq(n_adv)]
        for i, sink in enumerate(sinks):
            n2_data = Signal(signed(RESIDUAL_BITS), name=f"n2_data{i}")
            with m.If(n_adv):
                m.d.sync += n2_data.eq(element(self.r.data[i], r_l, signed(RESIDUAL_BITS)))
            m.d.comb += [sink.payload.data.eq(n2_data), sink.payload.last.eq(n2_last)]
        with m.If(n_adv):
            m.d.sync += [n2_valid.eq(r_valid), n2_last.eq(r_last), n2_on.eq(r_on)]
            m.d.sync += [r_valid.eq(n1_valid), r_l.eq(n1_l), r_last.eq(n1_last), r_on.eq(n1_on)]
            m.d.sync += [n1_valid.eq(n_active), n1_l.eq(n_l),
                         n1_last.eq((n_c == CWH - 1) & (n_l == N - 1)),
                         n1_on.eq(Cat(*(n_g * U + u < self.seq_len for u in range(U))))]
        with m.If(n_adv & n_active):
            m.d.sync += n_l.eq(n_l + 1)
            with m.If(n_l == N - 1):
                m.d.sync += [n_l.eq(0), n_c.eq(n_c + 1)]
                with m.If(n_c == CWH - 1):
                    m.d.sync += [n_c.eq(0), n_g.eq(n_g + 1)]
                    with m.If(~less((n_g + 1) * U, self.seq_len)):
                        m.d.sync += n_active.eq(0)
        self._join(m, st, ln_outs, rq_ln)
        ln_done = self._gather(m, st, rq_ln)
        # rq_ln's output is always taken (the gatherers never stall, and rq_ln is empty when
        # a pass starts or ends): its constant ready folds its pipeline enable and the join's
        # advance (q_adv) to 1, off the join's path into q_on (the ULX3S's worst at 110 MHz)
        m.d.comb += [rq_ln.o_stream.ready.eq(1), self.ctl.done.eq(running & ln_done)]
        with m.If(running & ln_done):
            m.d.sync += running.eq(0)
        with m.If(self.ctl.start):
            m.d.sync += [which.eq(self.ctl.which), running.eq(1),
                         n_active.eq(1), n_g.eq(0), n_c.eq(0), n_l.eq(0)]
        return m

    def _join(self, m, st, ln_outs, rq_ln):
        """Join the units' outputs (same channel), fetch the channel's parameters, and feed the
        requantizer."""
        c = self._c
        N, U, CWH = c.array_cols, c.layernorm_units, c.hidden // c.array_cols
        PPB = N // U
        q_g = Signal(range(self._grp * PPB + 1))
        q_c = Signal(range(CWH))
        q_l = Signal(range(N))
        # the units whose position of group q_g is inside the sequence: a register, set as q_g
        # is (a compare of q_g before the outputs' ready and the parameter read is too long),
        # from q_on_next, the same for group q_g + 1, a register of the compare (q_g steps
        # once in N * CWH joins, q_on_next follows a cycle later; behind the join's enable
        # the compare was the ULX3S's worst path at 95 MHz)
        q_on = Signal(U)
        q_on_next = Signal(U)
        m.d.sync += q_on_next.eq(Cat(*((q_g + 1) * U + u < self.seq_len for u in range(U))))
        q_join = q_on[0] & Cat(*(~q_on[u] | unit.valid
                                 for u, unit in enumerate(ln_outs))).all()
        q1_valid = Signal()
        q1_data = [Signal(signed(IntLayerNorm.OUT_WIDTH), name=f"q1_data{u}") for u in range(U)]
        q1_l = Signal(range(N))
        q_adv = Signal()
        q_fire = Signal()
        m.d.comb += [q_adv.eq(~q1_valid | rq_ln.i_stream.ready), q_fire.eq(q_join & q_adv),
                     self.params.addr.eq(Mux(st["which"], CWH, 0) + q_c),
                     self.params.en.eq(q_fire)]
        for u, unit in enumerate(ln_outs):
            m.d.comb += unit.ready.eq(q_fire & q_on[u])
        with m.If(q_adv):
            m.d.sync += q1_valid.eq(q_join)
        # q_end: this join is the group's last (q_l and q_c at their ends), a register set
        # with the counters, so that only q_fire gates the group's registers
        q_end = Signal()
        l_wrap, c_wrap = q_l == N - 1, q_c == CWH - 1
        next_l = Mux(l_wrap, 0, q_l + 1)
        next_c = Mux(l_wrap, Mux(c_wrap, 0, q_c + 1), q_c)
        with m.If(q_fire):
            m.d.sync += [q1_data[u].eq(unit.payload.data) for u, unit in enumerate(ln_outs)]
            m.d.sync += [q1_l.eq(q_l), q_l.eq(next_l), q_c.eq(next_c),
                         q_end.eq((next_l == N - 1) & (next_c == CWH - 1))]
            with m.If(q_end):
                m.d.sync += [q_g.eq(q_g + 1), q_on.eq(q_on_next)]
        with m.If(st["start"]):
            m.d.sync += [q_g.eq(0), q_c.eq(0), q_l.eq(0), q_end.eq((N == 1) & (CWH == 1)),
                         q_on.eq(Cat(*(u < self.seq_len for u in range(U))))]
        w = LN_LANE.size
        lane = data.View(LN_LANE, element(self.params.data, q1_l, unsigned(w)))
        m.d.comb += [rq_ln.i_stream.valid.eq(q1_valid), rq_ln.i_stream.payload.last.eq(0)]
        for u in range(U):
            rq_lane = rq_ln.i_stream.payload.data[u]
            m.d.comb += [rq_lane.x.eq(q1_data[u]), rq_lane.m.eq(lane.m), rq_lane.e.eq(lane.e),
                         rq_lane.bias.eq(lane.bias)]

    def _gather(self, m, st, rq_ln):
        """The gatherers: position ``(ga_blk * PPB + ga_sub) * U + u``, channel chunk ``ga_c``,
        element ``ga_l``; each full word goes to bank ``position mod N`` of A or X. Returns the
        signal that is high once every position has been written."""
        c = self._c
        N, U, CWH = c.array_cols, c.layernorm_units, c.hidden // c.array_cols
        PPB = N // U
        ga_blk = Signal(range(self._grp + 1))
        ga_sub = Signal(range(max(PPB, 2)))
        ga_c = Signal(range(CWH))
        ga_l = Signal(range(N))
        ga_words = [Signal(8 * N, name=f"ga_word{u}") for u in range(U)]
        # ln_done: every position written, pos = ga_blk * N + ga_sub * U >= seq_len, a
        # register that follows pos: set with a pass's start (pos 0) and with each step of pos
        # (by U). Read only while the pass runs (the pass's done), when seq_len is stable. The
        # compare ran on through the sequencer into the next pass's start otherwise (7.8 ns
        # on the ULX3S at 125 MHz).
        pos = ga_blk * N + ga_sub * U
        ln_done = Signal()
        # whether position u of the gatherers' row is in the sequence, registered every cycle:
        # a word is written on the row's element N - 1, and the position registers change
        # only on element N - 1's transfer, so with N >= 2 the cycle before a write saw the
        # write's position (and seq_len is stable through a pass). The compare with seq_len ran
        # on into X's write enables otherwise (8.1 ns on the ULX3S at 125 MHz).
        ons = []
        for u in range(U):
            on_now = less(pos + u, self.seq_len)
            if N >= 2:
                on = Signal(name=f"ga_on{u}")
                m.d.sync += on.eq(on_now)
                ons.append(on)
            else:
                ons.append(on_now)
        with m.If(rq_ln.o_stream.valid & rq_ln.o_stream.ready):
            m.d.sync += ga_l.eq(ga_l + 1)
            with m.If(ga_l == N - 1):
                m.d.sync += [ga_l.eq(0), ga_c.eq(ga_c + 1)]
                with m.If(ga_c == CWH - 1):
                    m.d.sync += [ga_c.eq(0), ga_sub.eq(ga_sub + 1),
                                 ln_done.eq(~less(pos + U, self.seq_len))]
                    with m.If(ga_sub == PPB - 1):
                        m.d.sync += [ga_sub.eq(0), ga_blk.eq(ga_blk + 1)]
            for u in range(U):
                byte = rq_ln.o_stream.payload.data[u][:8]
                full = Cat(*(Mux(ga_l == j, byte, ga_words[u][8 * j:8 * j + 8])
                             for j in range(N)))
                m.d.sync += ga_words[u].eq(full)
                with m.If((ga_l == N - 1) & ons[u]):
                    for g in range(PPB):
                        for dest, banks in ((0, self.a), (1, self.x)):
                            port = banks[g * U + u]
                            with m.If((ga_sub == g) & (st["which"] == dest)):
                                m.d.comb += [port.addr.eq(times(ga_blk, CWH) + ga_c),
                                             port.data.eq(full), port.en.eq(1)]
        with m.If(st["start"]):
            m.d.sync += [ga_blk.eq(0), ga_sub.eq(0), ga_c.eq(0), ga_l.eq(0),
                         ln_done.eq(self.seq_len == 0)]
        return ln_done
