"""The write-back of the GEMM job engine: the array's results -> residual fetch ->
Requantizer(s) and IntGELU -> the buffers.

::

    array.c -> c1 -+-> score banks (scores)
                   +-> c2 -> Requantizer (22 bit, residual X or A) -+-> sat8 -> Q, K, V, context
                                                                    +-> sat16 -> IntGELU
                                                                    |     -> Requantizer -> H
                                                                    +-> R (22 bit)

A result row enters register ``c1`` (with the panel's bias added) as its residual word is read
(X for O panels, A for FFN2: the read port is enabled through the job's whole intake); register
``c2`` takes the row with its residual word one cycle later, the Requantizer takes it from
``c2``. Every write goes through one register stage (``v_*``) before the buffers' write ports.
The write-back takes the ``tiles * N`` result rows of its job and no more.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from bertcore.quant.kernels import GELU_IN_BITS, RESIDUAL_BITS
from bertcore.rtl.common import saturate
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.requant import Requantizer
from bertcore.rtl.softmax import IntSoftmax

from .common import (M_CTX, M_FFN1, M_FFN2, M_K, M_O, M_Q, M_SCORE, M_V, job_layout, pick,
                     row_read, score_word, times, write_port)
from .loader import panel_layout, scalar_layout

__all__ = ["WriteBack"]


class WriteBack(wiring.Component):
    """Writes the results of the running job.

    Parameters
    ----------
    config : CoreConfig
    acc_layout : shape-castable
        The payload of the array's ``c`` stream (``N`` accumulators).

    Members
    -------
    start : ``In(1)``
        A job starts: its first result row is the next one on ``i_acc``.
    job : ``In(job_layout(config))``
        The running job, from the cycle of ``start`` on (the job engine loads it a cycle
        before it starts the write-back).
    i_acc : ``In(stream.Signature(acc_layout))``
        The array's result rows.
    res_x, res_a : ``Out(row_read(...))``
        The residual reads (X and A; their one read port is shared with the feeder).
    panel : ``In(panel_layout(N))``
        The bias and requantization of the job's panel slot.
    scalars : ``In(scalar_layout())``
        The layer's scalars (the context requantization, the GELU constants).
    q, k, v, h : ``Out(write_port(...)).array(N)``
        The int8 results; H: the ``gelu_bits``-bit GELU outputs.
    r : ``Out(write_port(...)).array(U)``
        The residual sums.
    s : ``Out(write_port(...)).array(S)``
        The scores.
    written : ``Out(1)``
        Every result row of the job has been written (or is in the write register); low in
        the cycle of ``start`` (the job is the new one then).
    """

    #: Register stages from ``c1`` to the requantizer's input (``c2``); the drain of a job
    #: that goes through the requantizer is this longer (:mod:`bertcore.core.perf`).
    RQ_STAGES = 1

    def __init__(self, config, acc_layout):
        self._c = config
        n, s, u = config.array_cols, config.softmax_units, config.layernorm_units
        cwh, cwf = config.hidden // n, config.ffn // n
        self._grp = grp = -(-config.max_seq // n)
        word = unsigned(8 * n)
        self._sw = IntSoftmax.score_width(config.head_dim)
        super().__init__({
            "start": In(1),
            "job": In(job_layout(config)),
            "i_acc": In(stream.Signature(acc_layout)),
            "res_x": Out(row_read(grp * cwh, word, n)),
            "res_a": Out(row_read(grp * cwh, word, n)),
            "panel": In(panel_layout(n)),
            "scalars": In(scalar_layout()),
            **{b: Out(write_port(grp * cwh, word)).array(n) for b in "qkv"},
            "h": Out(write_port(grp * cwf, unsigned(config.gelu_bits * n))).array(n),
            "r": Out(write_port(grp * (n // u) * cwh, unsigned(RESIDUAL_BITS * n))).array(u),
            "s": Out(write_port(2 * (n // s) * grp, unsigned(self._sw * n))).array(s),
            "written": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, job = self._c, self.job
        N, S, GRP = c.array_cols, c.softmax_units, self._grp
        CWH, HPW = c.hidden // N, c.head_dim // N
        RPS = N // S
        acc_w = len(self.i_acc.payload.data[0])
        mul_rq = c.multipliers("requant")
        m.submodules.rq = rq = Requantizer(lanes=N, in_width=acc_w, out_bits=RESIDUAL_BITS,
                                           residual=True, residual_width=8, multipliers=mul_rq)
        m.submodules.gelu = gelu = IntGELU(lanes=N, in_width=GELU_IN_BITS,
                                           multipliers=c.multipliers("gelu"))
        m.submodules.rq2 = rq2 = Requantizer(lanes=N, in_width=gelu.out_width,
                                             out_bits=c.gelu_bits, multipliers=mul_rq)
        sc = self.scalars
        m.d.comb += [gelu.b.eq(sc.gelu_b), gelu.c.eq(sc.gelu_c), gelu.q1.eq(sc.gelu_q1)]
        st = {"rq": rq, "rq2": rq2, "gelu": gelu, "wb_fire": Signal(),
              "is_score": job.mode == M_SCORE, "is_ffn1": job.mode == M_FFN1,
              "has_res": (job.mode == M_O) | (job.mode == M_FFN2)}
        # stage c1: a result row, its position (row c_i of tile c_t; c_i = c_q * S + c_k)
        c1_valid = Signal()
        c1_data = [Signal(signed(acc_w), name=f"c1_{j}") for j in range(N)]
        c1_scores = Signal(self._sw * N)          # the low bits of c1_data: a score row
        c_i = Signal(range(N))
        c_t = Signal.like(job.tiles)
        c1_i = Signal(range(N))
        c1_t = Signal.like(job.tiles)
        # (at least one bit: Verilog has no zero-width vectors)
        c_k, c1_k = Signal(range(max(S, 2))), Signal(range(max(S, 2)))
        c_q, c1_q = Signal(range(max(RPS, 2))), Signal(range(max(RPS, 2)))
        wb_count = Signal(range(max(GRP, CWH, c.ffn // N, HPW) * N + 1))
        down_ready = Signal()
        # the job's rows only (tiles * N): the next job's rows wait in the array's output queue
        # until this job is written and the engine restarts the write-back with it. ``open_``
        # is a register, closed as the last row is taken (a compare of the tile counter in the
        # array's ready ran on through the residual fetch into X's read port: an ECP5 critical
        # path at 95 MHz)
        open_ = Signal()
        # c2: the row and its picked residual word, registered once more before the
        # requantizer (the residual pick, N words by c1_i, ran on into the DSPs' operand
        # registers across the chip: the ULX3S's worst path at 125 MHz, 9.57 ns)
        c2_valid = Signal()
        c2_data = [Signal(signed(acc_w), name=f"c2_{j}") for j in range(N)]
        c2_res = Signal(8 * N)
        c2_take = ~c2_valid | rq.i_stream.ready
        m.d.comb += [down_ready.eq(Mux(st["is_score"], 1, c2_take)),
                     self.i_acc.ready.eq((~c1_valid | down_ready) & open_)]
        c_take = self.i_acc.valid & self.i_acc.ready
        with m.If(~c1_valid | down_ready):
            m.d.sync += c1_valid.eq(self.i_acc.valid & open_)
        with m.If(c_take):
            # the panel's bias is added here, not in the array: the array may already carry
            # the next job's tiles, of another panel slot
            m.d.sync += [c1_data[j].eq(self.i_acc.payload.data[j]
                                       + Mux(job.bias, self.panel.bias[j], 0))
                         for j in range(N)]
            m.d.sync += c1_scores.eq(Cat(*(self.i_acc.payload.data[j][:self._sw]
                                           for j in range(N))))
            m.d.sync += [c1_i.eq(c_i), c1_t.eq(c_t), c_i.eq(c_i + 1),
                         c1_k.eq(c_k), c1_q.eq(c_q), c_k.eq(c_k + 1)]
            with m.If(c_k == S - 1):
                m.d.sync += [c_k.eq(0), c_q.eq(c_q + 1)]
            with m.If(c_i == N - 1):
                m.d.sync += [c_i.eq(0), c_t.eq(c_t + 1), c_k.eq(0), c_q.eq(0)]
        # residual read (X for O, A for FFN2): the word of tile c_t, read on every cycle of the
        # job's intake, so the word of a beat taken in one cycle is on the port in the next,
        # beside the beat in c1. Those jobs never stall c1 (the requantizer's output is always
        # ready outside FFN1), so c1 holds a beat one cycle only. The enable is of registers
        # alone: with the take (the array's valid and ready) in it, it ran on through X's
        # arbiter into the LUT-RAM read (an ECP5 critical path at 95 MHz). Each port is
        # enabled only in its own jobs: X and A share their read port with the feeder. Each
        # enable is one register, open_ & (job.mode == mode) as it stands (set with open_ from
        # the starting job's mode, cleared with it): the AND ran on through X's arbiter into
        # the LUT-RAM read (the ULX3S's worst path at 125 MHz, 9.18 ns).
        res_on = {M_O: Signal(name="res_on_x"), M_FFN2: Signal(name="res_on_a")}
        for port, mode in ((self.res_x, M_O), (self.res_a, M_FFN2)):
            m.d.comb += [port.addr.eq(times(c_t, CWH) + job.chunk), port.en.eq(res_on[mode])]
        res_x = pick([self.res_x.data[b] for b in range(N)], c1_i, 8 * N)
        res_a = pick([self.res_a.data[b] for b in range(N)], c1_i, 8 * N)
        # zero in jobs without a residual (it is multiplied by m_r = 0 then): their read port
        # may hold another user's word, or none yet, which a 4-state simulator sees as X
        res_word = Mux(job.mode == M_O, res_x, Mux(job.mode == M_FFN2, res_a, 0))
        with m.If(c2_take):
            m.d.sync += [c2_valid.eq(c1_valid & ~st["is_score"]), c2_res.eq(res_word),
                         *(c2_data[j].eq(c1_data[j]) for j in range(N))]
        # score write (directly from c1)
        for k, port in enumerate(self.s):
            m.d.comb += [port.addr.eq(score_word(job.bank, c1_q, c1_t, GRP, RPS)),
                         port.data.eq(c1_scores)]
            with m.If(c1_valid & st["is_score"] & (c1_k == k)):
                m.d.comb += port.en.eq(1)
        with m.If(c1_valid & st["is_score"]):
            m.d.comb += st["wb_fire"].eq(1)
        # requantizer input
        m.d.comb += [rq.i_stream.valid.eq(c2_valid), rq.i_stream.payload.last.eq(0)]
        # its parameters per lane, picked by the job's mode and panel slot, are registered in
        # every cycle (that decode and pick ran on into the requantizer's first adder and DSP
        # operands: the ULX3S's worst path at 125 MHz, 8.35 ns). They are constant during a
        # job and stand one cycle after it starts, before its first row reaches c2 (the row
        # passes c1 first), and a job starts only once the last one's rows are all written
        # (GemmEngine: wjob waits for ``written``), so no row meets another job's parameters
        pan = self.panel
        for j in range(N):
            lane = rq.i_stream.payload.data[j]
            params = {"m": Mux(job.mode == M_CTX, sc.ctx_m, pan.m[j]),
                      "e": Mux(job.mode == M_CTX, sc.ctx_e, pan.e[j]),
                      "m_r": Mux(st["has_res"], pan.m2[j], 0),
                      "e_r": Mux(st["has_res"], pan.e2[j], 1)}
            for name, value in params.items():
                reg = Signal.like(getattr(lane, name), name=f"c2_{name}{j}", reset_less=True)
                m.d.sync += reg.eq(value)
                m.d.comb += getattr(lane, name).eq(reg)
            m.d.comb += [lane.x.eq(c2_data[j]), lane.r.eq(c2_res[8 * j:8 * j + 8].as_signed())]
        self._write(m, st)
        # ``written`` is a register, wb_count == tiles * N as it stands after this cycle's
        # write (the compare ran on into the sequencer's state across the chip: an ECP5
        # critical path at 100 MHz); cleared at the start (a job has N or more rows)
        written = Signal()
        total = times(job.tiles, N)
        # (the register still counts the job before in the start cycle)
        m.d.comb += self.written.eq(written & ~self.start)
        m.d.sync += written.eq(Mux(st["wb_fire"], wb_count + 1 == total, wb_count == total))
        with m.If(st["wb_fire"]):
            m.d.sync += wb_count.eq(wb_count + 1)
        with m.If(c_take & (c_i == N - 1) & (c_t + 1 == job.tiles)):
            m.d.sync += [open_.eq(0), *(on.eq(0) for on in res_on.values())]
        with m.If(self.start):
            m.d.sync += [c_i.eq(0), c_t.eq(0), c_k.eq(0), c_q.eq(0), wb_count.eq(0),
                         written.eq(0), open_.eq(1),
                         *(on.eq(self.job.mode == mode) for mode, on in res_on.items())]
        return m

    def _write(self, m, st):
        """The requantizers' outputs (through GELU for FFN1) -> the write register -> the
        buffers."""
        c, job = self._c, self.job
        N, U, G = c.array_cols, c.layernorm_units, c.gelu_bits
        CWH, CWF, PPB = c.hidden // N, c.ffn // N, N // U
        rq, rq2, gelu = st["rq"], st["rq2"], st["gelu"]
        is_ffn1, is_score = st["is_ffn1"], st["is_score"]
        # requantizer output: saturate by mode; FFN1 goes on through GELU and rq2
        m.d.comb += [rq.o_stream.ready.eq(Mux(is_ffn1, gelu.i_stream.ready, 1)),
                     gelu.i_stream.valid.eq(rq.o_stream.valid & is_ffn1),
                     gelu.i_stream.payload.last.eq(0)]
        for j in range(N):
            m.d.comb += gelu.i_stream.payload.data[j].eq(
                saturate(rq.o_stream.payload.data[j], GELU_IN_BITS))
        # Nothing stalls the write-back behind the requantizers: the write register below
        # takes a beat in every cycle, and rq2 (fed by GELU in FFN1 jobs only) holds nothing
        # when a job starts or ends (a job ends once its last row is written). So rq2's output
        # ready is a constant 1, and with it every pipeline enable of rq2, GELU and rq and the
        # down-stream ready of c1 fold to 1 in synthesis: a variable ready ran through those
        # enables into the GELU's DSP clock enables and the array's ready, ECP5 critical
        # paths at 105 MHz (the ready was the job's mode decode, then a register of it).
        m.d.comb += [rq2.i_stream.valid.eq(gelu.o_stream.valid),
                     gelu.o_stream.ready.eq(rq2.i_stream.ready),
                     rq2.i_stream.payload.last.eq(0), rq2.o_stream.ready.eq(1)]
        for j in range(N):
            lane = rq2.i_stream.payload.data[j]
            m.d.comb += [lane.x.eq(gelu.o_stream.payload.data[j]),
                         lane.m.eq(self.panel.m2[j]), lane.e.eq(self.panel.e2[j])]
        w_i = Signal(range(N))
        w_t = Signal.like(job.tiles)
        w_u = Signal(range(max(U, 2)))         # position w_t*N + w_i = (w_t*PPB + w_g)*U + w_u
        w_g = Signal(range(max(PPB, 2)))
        wr_valid = Signal()
        m.d.comb += wr_valid.eq(Mux(is_ffn1, rq2.o_stream.valid,
                                    rq.o_stream.valid & ~is_score))
        w8 = Cat(*(saturate(rq.o_stream.payload.data[j], 8)[:8] for j in range(N)))
        wh = Cat(*(rq2.o_stream.payload.data[j][:G] for j in range(N)))
        w22 = Cat(*(rq.o_stream.payload.data[j] for j in range(N)))
        with m.If(wr_valid):
            m.d.comb += st["wb_fire"].eq(1)
            m.d.sync += [w_i.eq(w_i + 1), w_u.eq(w_u + 1)]
            with m.If(w_u == U - 1):
                m.d.sync += [w_u.eq(0), w_g.eq(w_g + 1)]
            with m.If(w_i == N - 1):
                m.d.sync += [w_i.eq(0), w_t.eq(w_t + 1), w_u.eq(0), w_g.eq(0)]
        with m.If(self.start):
            m.d.sync += [w_i.eq(0), w_t.eq(0), w_u.eq(0), w_g.eq(0)]
        # One register stage before the buffers' write ports (they sit far from the
        # requantizers; this was the ECP5 critical path). A job ends when its last write is in
        # that register; the next job reads two or more cycles later, after the write landed.
        v_valid = Signal()
        v_res = Signal()
        v_mode = Signal.like(job.mode)
        v_bank = Signal.like(w_i)
        v_u = Signal.like(w_u)
        v_addr = Signal(range(self._grp * max(CWH, CWF)))
        v_raddr = Signal(range(self._grp * PPB * CWH))
        v_w8 = Signal(8 * N)
        v_wh = Signal(G * N)
        v_w22 = Signal(RESIDUAL_BITS * N)
        m.d.sync += [v_valid.eq(wr_valid), v_res.eq(st["has_res"]), v_mode.eq(job.mode),
                     v_bank.eq(w_i), v_u.eq(w_u), v_w8.eq(w8), v_wh.eq(wh), v_w22.eq(w22),
                     v_raddr.eq(times(w_t * PPB + w_g, CWH) + job.chunk)]

        # The bank row of tile w_t, from registers: the row for w_t and the one for w_t + 1
        # are computed a cycle ahead (the products by constants and two additions after the
        # counter were an ECP5 critical path at 100 MHz), the cycle after w_t steps takes the
        # second. They read the job's fields from the j_* registers (the job's fan-out before
        # the products was the worst path at 100 MHz, 9.7 ns): all stand for the job by its
        # first write, which comes through c1 and the requantizer, several cycles after its
        # start.
        j_ctx, j_ffn1 = Signal(), Signal()
        j_mb, j_chw, j_chunk = Signal.like(job.mb), Signal.like(job.chw), Signal.like(job.chunk)
        m.d.sync += [j_ctx.eq(job.mode == M_CTX), j_ffn1.eq(is_ffn1), j_mb.eq(job.mb),
                     j_chw.eq(job.chw), j_chunk.eq(job.chunk)]

        def tile_row(t):
            grp = Mux(j_ctx, j_mb, t)
            chunk = Mux(j_ctx, j_chw + t, j_chunk)
            return Mux(j_ffn1, times(grp, CWF), times(grp, CWH)) + chunk

        row_cur, row_next = Signal.like(v_addr), Signal.like(v_addr)
        stepped = Signal()
        m.d.sync += [row_cur.eq(tile_row(w_t)), row_next.eq(tile_row(w_t + 1)),
                     stepped.eq(wr_valid & (w_i == N - 1) & ~self.start),
                     v_addr.eq(Mux(stepped, row_next, row_cur))]
        for mode, banks, word in ((M_Q, self.q, v_w8), (M_CTX, self.q, v_w8),
                                  (M_K, self.k, v_w8), (M_V, self.v, v_w8),
                                  (M_FFN1, self.h, v_wh)):
            for b, port in enumerate(banks):
                with m.If(v_valid & (v_mode == mode) & (v_bank == b)):
                    m.d.comb += [port.addr.eq(v_addr), port.data.eq(word), port.en.eq(1)]
        for u, port in enumerate(self.r):
            m.d.comb += [port.addr.eq(v_raddr), port.data.eq(v_w22)]
            with m.If(v_valid & v_res & (v_u == u)):
                m.d.comb += port.en.eq(1)
