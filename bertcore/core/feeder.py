"""The operand feeder of the GEMM job engine: the A and B operand beats of a job.

Per tile of a job it reads ``k`` operand beats: the A operand (``N`` rows) from one row read
of an activation buffer (X, Q, A, H) or of P, the B operand (``N`` columns) from the loader's
panel buffer (weights), from K (``Kᵀ``, scores) or from V (``P·V``); the K and V reads start
at the job's first key block ``kb`` (a packed run skips the key blocks outside a query block's
segments). The words it reads are
picked apart one cycle later (stage ``s1``): an A word registered as read (stage ``r``), its
element picked and registered (``s2``); a B element picked and registered (``r``), then
delayed (``s2``); both multiplexed by the job's source into one register slice before the
array.

Its pipeline holds beats of one job only: the job engine starts the next job once the feeder is
not ``busy`` (every beat issued and out of stages ``s0`` to ``s2``), which may be while the array
still drains the previous job's tiles (:mod:`bertcore.core.gemm`).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bertcore.rtl.stream import RegisterSlice

from .buffers import output_registered
from .common import (A_A, A_H, A_Q, A_X, J_PANEL, J_PV, J_SCORE, element, job_layout, pick,
                     prob_word, read_port, row_read, times)

__all__ = ["OperandFeeder"]


class OperandFeeder(wiring.Component):
    """Feeds the systolic array the operands of the running job.

    Parameters
    ----------
    config : CoreConfig
    a_layout, b_layout : shape-castable
        The payloads of the array's ``a`` and ``b`` streams.

    Members
    -------
    start : ``In(1)``
        A job starts (``desc`` is its descriptor).
    desc : ``In(job_layout(config))``
        The new job (valid with ``start``; the counters load it in every idle cycle).
    job : ``In(job_layout(config))``
        The running job (read while ``active``; the beats still in the stages after its last
        issue do not read it).
    x, q, a, h, k, v, p : ``Out(row_read(...))``
        Reads of the buffers (P: ``prob_bits`` per entry, H: ``gelu_bits``); ``x`` and ``a``
        are enabled only in jobs whose A operand is X / A (they share a port). Without
        ``config.shared_h``, ``h`` is read on every advance and its data pass two registers
        (H's output register, :class:`~bertcore.core.buffers.Buffers`).
    panel : ``Out(read_port(...))``
        The loader's panel buffer (its data pass two registers, both loaded with ``en``).
    o_operands : ``Out(stream.Signature(StructLayout({"a": a_layout, "b": b_layout})))``
        One A and one B beat (registered).
    active : ``Out(1)``
        Beats of the job are left to issue.
    busy : ``Out(1)``
        ``active``, or beats of the job are in the stages before the operand slice.
    """

    def __init__(self, config, a_layout, b_layout):
        self._c = config
        n = config.array_cols
        cwh, cwf = config.hidden // n, config.ffn // n
        grp = -(-config.max_seq // n)
        word = unsigned(8 * n)
        self._kw = max(config.hidden, config.ffn)
        depths = {"x": grp * cwh, "q": grp * cwh, "a": grp * cwh,
                  "k": grp * cwh, "v": grp * cwh}
        self._ops = data.StructLayout({"a": a_layout, "b": b_layout})
        super().__init__({
            "start": In(1),
            "desc": In(job_layout(config)),
            "job": In(job_layout(config)),
            **{name: Out(row_read(depth, word, n)) for name, depth in depths.items()},
            "h": Out(row_read(grp * cwf, unsigned(config.gelu_bits * n), n)),
            "p": Out(row_read(2 * grp, unsigned(config.prob_bits * n), n)),
            "panel": Out(read_port(2 * self._kw, word)),
            "o_operands": Out(stream.Signature(self._ops)),
            "active": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, job = self._c, self.job
        N, KW = c.array_cols, self._kw
        CWH, CWF = c.hidden // N, c.ffn // N
        KMAX = max(c.hidden, c.ffn, c.max_seq)
        GRP = -(-c.max_seq // N)
        f_active = self.active
        f_t = Signal.like(job.tiles)
        f_k = Signal.like(job.k)
        f_kw = Signal(range(KMAX // N + 2))
        f_ke = Signal(range(N))
        f_paddr = Signal(range(2 * KW))     # panel buffer row: slot base + k
        s0_valid = Signal()
        s0_last = Signal()
        s0_ke = Signal(range(N))
        s1_valid = Signal()
        s1_last = Signal()
        s1_ke = Signal(range(N))
        r_valid = Signal()
        r_last = Signal()
        r_ke = Signal(range(N))
        s2_valid = Signal()
        s2_last = Signal()
        # A and B beats reach the array through one register slice (the operand picks of the
        # banks run on into the array's input registers otherwise, across the chip)
        m.submodules.operand_slice = ops = RegisterSlice(self._ops)
        wiring.connect(m, ops.o_stream, wiring.flipped(self.o_operands))
        a_beat, b_beat = ops.i_stream.payload.a, ops.i_stream.payload.b
        m.d.comb += ops.i_stream.valid.eq(s2_valid)
        # stages s0 (the buffers' addresses, registered), s1 (their read data), r (the A
        # sources' read data registered; B's elements picked) and s2 (the A elements picked;
        # B's delayed) advance together; a stalled s1 holds its read data (a read port is
        # enabled only with adv). The address adders, X's and A's port arbiters and the read
        # of the banks do not fit one 10 ns cycle on ECP5 together, nor do a block RAM's
        # clock-to-out (5.8 ns without its output register) and an element pick.
        adv = ~s2_valid | ops.i_stream.ready
        issue = adv & f_active
        # the counters' last-value compares as registers, loaded with the counters' next
        # values: the counters' enables read flip-flops, not a counter compared with a job
        # field minus one (the enables of f_kw and f_t were on the ULX3S's failing paths at
        # 125 MHz)
        k_last = Signal()                   # f_k == job.k - 1
        t_last = Signal()                   # f_t == job.tiles - 1
        with m.If(adv):
            m.d.sync += [s0_valid.eq(f_active), s0_last.eq(k_last), s0_ke.eq(f_ke),
                         s1_valid.eq(s0_valid), s1_last.eq(s0_last), s1_ke.eq(s0_ke),
                         r_valid.eq(s1_valid), r_last.eq(s1_last), r_ke.eq(s1_ke),
                         s2_valid.eq(r_valid), s2_last.eq(r_last)]
        with m.If(issue):
            m.d.sync += [f_k.eq(f_k + 1), f_ke.eq(f_ke + 1), f_paddr.eq(f_paddr + 1),
                         k_last.eq(f_k == job.k - 2)]
            with m.If(f_ke == N - 1):
                m.d.sync += [f_ke.eq(0), f_kw.eq(f_kw + 1)]
            with m.If(k_last):
                m.d.sync += [f_k.eq(0), f_ke.eq(0), f_kw.eq(0), f_t.eq(f_t + 1),
                             f_paddr.eq(Mux(job.slot, KW, 0)), k_last.eq(job.k == 1),
                             t_last.eq(f_t == job.tiles - 2)]
                with m.If(t_last):
                    m.d.sync += f_active.eq(0)
        # addresses
        a_grp = Mux(job.kind == J_PANEL, f_t, job.mb)
        # products by constants as shifts and adds (common.times: yosys puts a `*` on a DSP)
        a_addr = Mux(job.asrc == A_H, times(a_grp, CWF), times(a_grp, CWH)) + job.chw + f_kw

        def stage0(port, value):
            # the read address of s0: registered as the counters stand when it is issued
            reg = Signal.like(port.addr, name=f"s0_{port.addr.name}")
            with m.If(adv):
                m.d.sync += reg.eq(value)
            return reg

        s0_a = stage0(self.h, a_addr)           # (H is the deepest of the A sources)
        # a buffer is read only for an issued beat (s0 valid) of a job that takes an operand
        # from it: X and A share their read port with the residual fetch (and the output
        # pass), and with ``shared_h`` the memories of X, Q, K and V hold H during the FFN
        # (Buffers)
        # (s0 holds beats of the running job only: its source and kind decoded as they are
        # issued, registers beside s0_valid, so each read enable is the advance and one
        # flip-flop; the decode after s0_valid ran on into the read registers' enables, 128
        # flip-flops of X on the ULX3S, 8.0 ns at 125 MHz)
        def s0_reads(name, hit):
            reg = Signal(name=f"s0_{name}")
            with m.If(adv):
                m.d.sync += reg.eq(f_active & hit)
            return adv & reg

        # H in its own memory (no shared_h) is read through its output register, which loads
        # with the read's enable and is the A operand's stage r for H: read on every advance
        # (nothing else reads H; a word read for no beat is not used)
        h_out_reg = output_registered(c, "h")
        for name, src in (("x", A_X), ("q", A_Q), ("a", A_A), ("h", A_H)):
            port = getattr(self, name)
            en = adv if src == A_H and h_out_reg else s0_reads(name, job.asrc == src)
            m.d.comb += [port.addr.eq(s0_a), port.en.eq(en)]
        m.d.comb += [self.p.addr.eq(stage0(self.p, prob_word(job.bank, f_kw, GRP))),
                     self.p.en.eq(adv),
                     self.k.addr.eq(stage0(self.k, times(job.kb + f_t, CWH) + job.chw + f_kw)),
                     self.k.en.eq(s0_reads("k", job.kind == J_SCORE)),
                     self.v.addr.eq(stage0(self.v, times(job.kb + f_kw, CWH) + job.chw + f_t)),
                     self.v.en.eq(s0_reads("v", job.kind == J_PV)),
                     self.panel.addr.eq(stage0(self.panel, f_paddr)), self.panel.en.eq(adv)]
        s2_asrc = Signal.like(job.asrc)
        s2_kind = Signal.like(job.kind)
        # constant during a job, and held after its last issue for the beats still in the
        # stages (the job engine loads the next job while the feeder does not issue)
        with m.If(f_active):
            m.d.sync += [s2_asrc.eq(job.asrc), s2_kind.eq(job.kind)]

        def stage(name, value):
            # a register of stage r or s2 (data: not reset)
            reg = Signal(value.shape(), name=name, reset_less=True)
            with m.If(adv):
                m.d.sync += reg.eq(value)
            return reg

        # A: int8 activations and gelu_bits-bit GELU outputs sign-extended, or a prob_bits-bit
        # probability zero-extended, to the array's operand (gemm.a_operand_shape)
        a_shape = a_beat.data[0].shape()
        B = c.prob_bits
        sources = {A_X: (self.x, 8), A_Q: (self.q, 8), A_A: (self.a, 8),
                   A_H: (self.h, c.gelu_bits)}
        for i in range(N):
            items = [stage(f"s2_a{i}_{src}",
                           element(sources[src][0].data[i] if src == A_H and h_out_reg
                                   else stage(f"r_a{i}_{src}", sources[src][0].data[i]),
                                   r_ke, signed(sources[src][1])))
                     for src in (A_X, A_Q, A_A, A_H)]
            items.append(stage(f"s2_a{i}_p",
                               Cat(element(stage(f"r_a{i}_p", self.p.data[i]), r_ke,
                                           unsigned(B)), Const(0, 1))))
            m.d.comb += a_beat.data[i].eq(pick(items, s2_asrc, a_shape))
        vword = pick([self.v.data[b] for b in range(N)], s1_ke, 8 * N)
        for j in range(N):
            # (the panel buffer's output register is its stage r: it loads with the read's
            # enable, adv)
            items = [self.panel.data[8 * j:8 * j + 8]]
            items += [stage(f"r_b{j}_{name}", value) for name, value in (
                ("k", element(self.k.data[j], s1_ke, unsigned(8))),
                ("v", vword[8 * j:8 * j + 8]))]
            m.d.comb += b_beat.data[j].eq(stage(f"s2_b{j}", pick(items, s2_kind, 8)))
        m.d.comb += [a_beat.last.eq(s2_last), b_beat.last.eq(s2_last),
                     self.busy.eq(f_active | s0_valid | s1_valid | r_valid | s2_valid)]
        # an idle feeder's counters load the descriptor in every cycle, so in the cycle of a
        # start too: their resets and enables are the feeder's own state, not the start (the
        # job engine's ready through the sequencer's start decision ran on into them: the
        # ULX3S's worst path in a placement at 125 MHz, 8.4 ns)
        with m.If(~f_active):
            m.d.sync += [f_t.eq(0), f_k.eq(0), f_kw.eq(0), f_ke.eq(0),
                         f_paddr.eq(Mux(self.desc.slot, KW, 0)),
                         k_last.eq(self.desc.k == 1), t_last.eq(self.desc.tiles == 1)]
            with m.If(self.start):
                m.d.sync += f_active.eq(1)
        return m
