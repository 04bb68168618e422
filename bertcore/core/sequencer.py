"""The sequencer: the schedule of a run, one job or pass at a time.

::

    IDLE -> INPUT -> per layer: LAYER -> Q, K, V panels (PWAIT/PRUN)
        -> per head, per query block: [packed: BOUNDS -> BSPAN] SCORES/SRUN [-> SWAIT]
           [-> PVRUN: P·V of the previous block] -> FLUSH -> PVLAST: P·V of the last block
        -> O panels -> LN (LN-1) -> FFN1, FFN2 panels -> LN (LN-2)
    -> OUT (after the last layer) -> IDLE

Attention overlaps the softmax pass of a query block with the array's next jobs: once the
scores of block ``b`` are in (and the softmax pass of block ``b - 1`` is done, ``SWAIT``), the
softmax pass of ``b`` starts, and with it the ``P·V`` job of ``b - 1``; then the scores job of
``b + 1``. So the array computes ``S(b+1)`` and ``P·V(b-1)`` while the softmax units work on
``b``, and the order of its jobs is ``S(0) S(1) PV(0) S(2) PV(1) ... S(n-1) PV(n-2) PV(n-1)``
over all heads and blocks. The score banks and the P buffer are double-buffered (the job's and
the softmax pass's ``bank`` bit, toggled per block): ``S(b+1)`` writes the half that the
softmax pass of ``b - 1`` has finished reading, the softmax pass of ``b`` writes the P half
that ``P·V(b-2)`` has finished reading. The ``P·V`` job of a block is started from the
registers ``pv_*``, taken when its softmax pass started: the sequencer has moved on to the
next block's span by then.

It starts the units through their ``task`` interfaces (:func:`~bertcore.core.common.task`)
and waits for their ``done`` (the job engine's ``ready`` for the next panel of a group and
the next scores job); it waits for the loader's panel slots, scalar record and LayerNorm
records (``full``) and releases the records once used (the job engine releases a panel slot
once its job is written).

In a packed run (the packet began with a segment table) it reads, per head and query block,
the segment bounds of the block's ``N`` rows (``BOUNDS``, ``N + 1`` cycles) and derives the key
blocks the block's segments reach (``BSPAN``, one cycle): the scores job computes only those
key tiles, the softmax pass masks each row to its segment, ``P·V`` reduces over those keys
(:func:`bertcore.core.perf.key_spans`). A plain run spans all keys and skips both states.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bertcore.rtl.common import less
from bertcore.rtl.fsm import Fsm

from .common import (A_A, A_H, A_P, A_Q, A_X, G_FFN1, G_FFN2, G_K, G_O, G_Q, G_V, J_PANEL,
                     J_PV, J_SCORE, M_CTX, M_FFN1, M_FFN2, M_K, M_O, M_Q, M_SCORE, M_V,
                     handover, job_layout, pick, task)

__all__ = ["Sequencer"]


def _div(value, n):
    """``value // n`` (a shift for a power of two)."""
    return value >> (n.bit_length() - 1) if n & (n - 1) == 0 else value // n


def _to_block(m, fsm, packed):
    """Go on to the next query block: read its segment bounds first in a packed run."""
    with m.If(packed):
        fsm.next("BOUNDS")
    with m.Else():
        fsm.next("SCORES")


class Sequencer(wiring.Component):
    """Runs the schedule of the encoder core (see the module docstring).

    Members
    -------
    ctl : ``In(task())``
        ``start`` starts a run; ``done`` is a one-cycle pulse at its end.
    fail : ``Out(1)``
        The input packet held no position (a one-cycle pulse).
    layer_mark : ``Out(1)``
        The input is in (layer 0 starts) or a layer ended (a one-cycle pulse).
    seq_len : ``Out(range(max_seq + 1))``
        The sequence length of the run.
    inp : ``Out(task())``
        The activation input; ``in_length`` and ``in_blocks`` its positions and blocks.
    slots_full : ``In(2)``
        The loader's panel slots hold a panel (the job engine releases them).
    scalars_ho, ln_slots : ``In(handover(...))``
        The loader's scalar record and LayerNorm records.
    job : ``Out(task(desc=job_layout(config)))``
        The GEMM job engine. ``desc`` is the job the state waits to start, driven in every
        cycle of that state, not only with ``start``.
    job_ready : ``In(1)``
        The job engine takes a job (it may still be writing the one before).
    smax : ``Out(task())``
        The softmax pass.
    smax_bank : ``Out(1)``
        The half of the score banks and of the P buffer of the block whose scores run (the
        softmax pass takes it with ``key0``, ``keys``, ``row_lo`` and ``row_hi`` at its start).
    ln : ``Out(task(which=1))``
        The LayerNorm pass (0: LN-1, 1: LN-2).
    out : ``Out(task())``
        The output pass.
    in_packed : ``In(1)``
        The input packet was packed (valid with ``inp.done``).
    seg_addr : ``Out(range(max_seq))``, seg_start, seg_end : ``In(range(max_seq + 1))``
        The segment bounds of row ``seg_addr`` (one cycle later).
    key0, keys : ``Out(range(max_seq + 1))``
        The key span of the current query block: its first key (a multiple of ``N``) and its
        number of keys.
    row_lo, row_hi : ``Out(ArrayLayout(range(max_seq + 1), N))``
        The keys ``[row_lo[i], row_hi[i])`` row ``i`` of the query block attends to (all keys
        in a plain run and for rows past the last segment).
    """

    #: Cycles from the softmax pass's ``done`` to the sequencer acting on it: it decides from
    #: ``sm_busy``, the register ``done`` clears. The pass's ``done`` (its units' flags, by the
    #: array) had run through the start decision into the job engine (the ULX3S's worst path
    #: in a placement at 125 MHz, 8.60 ns, 2.97 of them the route into the sequencer).
    SMAX_SEEN_LAG = 1

    def __init__(self, config):
        self._c = config
        grp = -(-config.max_seq // config.array_cols)
        super().__init__({
            "ctl": In(task()),
            "fail": Out(1),
            "layer_mark": Out(1),
            "seq_len": Out(range(config.max_seq + 1)),
            "inp": Out(task()),
            "in_length": In(range(config.max_seq + 2)),
            "in_blocks": In(range(grp + 1)),
            "slots_full": In(2),
            "scalars_ho": In(handover(1)),
            "ln_slots": In(handover(2)),
            "job": Out(task(desc=job_layout(config))),
            "job_ready": In(1),
            "smax": Out(task()),
            "smax_bank": Out(1),
            "ln": Out(task(which=1)),
            "out": Out(task()),
            "in_packed": In(1),
            "seg_addr": Out(range(config.max_seq)),
            "seg_start": In(range(config.max_seq + 1)),
            "seg_end": In(range(config.max_seq + 1)),
            "key0": Out(range(config.max_seq + 1)),
            "keys": Out(range(config.max_seq + 1)),
            "row_lo": Out(data.ArrayLayout(range(config.max_seq + 1), config.array_cols)),
            "row_hi": Out(data.ArrayLayout(range(config.max_seq + 1), config.array_cols)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N, hid, ffn, hd = c.array_cols, c.hidden, c.ffn, c.head_dim
        CWH, CWF, HPW = hid // N, ffn // N, hd // N
        GRP = -(-c.max_seq // N)
        seq_len, job = self.seq_len, self.job
        n_blk = Signal(range(GRP + 1))                    # ceil(L / N)
        layer = Signal(range(c.layers + 1))
        s_group = Signal(range(6))
        s_panel = Signal(range(max(CWH, CWF) + 1))
        s_slot = Signal()
        s_head = Signal(range(c.heads + 1))
        s_mb = Signal(range(GRP + 1))
        s_ln = Signal()               # the LayerNorm to run (0: LN-1, 1: LN-2)
        # the key span of the query block: first key block, key tiles, keys
        packed = Signal()
        s_kb = Signal(range(GRP))
        s_ktiles = Signal(range(GRP + 1))
        # the span's key blocks end at block kb1 (BSPAN), its keys at k_end = min(kb1 * N,
        # seq_len) (SCORES); the key count follows in SRUN: one step per cycle (the three
        # in one cycle were a path of 9.2 ns on the ULX3S)
        s_kb1 = Signal(range(GRP + 1))
        k_end = Signal(range(c.max_seq + 1))
        # attention: the bank of the running block; the softmax pass is busy; the P·V job of
        # the block whose softmax pass runs or ran last
        s_bank = Signal()
        sm_busy = Signal()
        pv_pending = Signal()
        pv_mb = Signal.like(s_mb)
        pv_kb = Signal.like(s_kb)
        pv_keys = Signal.like(self.keys)
        pv_chw = Signal(range(c.heads * HPW + 1))
        pv_bank = Signal()
        with m.If(self.smax.start):
            m.d.sync += sm_busy.eq(1)
        with m.Elif(self.smax.done):
            m.d.sync += sm_busy.eq(0)
        sm_idle = ~sm_busy                                  # (SMAX_SEEN_LAG)
        m.d.comb += self.smax_bank.eq(s_bank)
        m.d.comb += self.key0.eq(s_kb * N)
        m.d.comb += [self.ln_slots.index.eq(s_ln),
                     self.ln.which.eq(s_ln)]

        def job_desc(kind, asrc, tiles, k, mode, *, mb=0, kb=0, chw=0, chunk=0, bias=0,
                     bank=0):
            # the job of the state, driven in all of its cycles; job.start only once the
            # engine takes it. The engine's feeder loads its counters from the descriptor in
            # every idle cycle: a descriptor multiplexed by the start's condition (the engine's
            # own ready) ran on from the engine's state into those counters (the ULX3S's worst
            # path in a placement at 125 MHz, 8.4 ns)
            d = job.desc
            # (every field here: a field driven alone from a register would be an `always @*`
            # of its own in the Verilog, which a 4-state simulator leaves X until that register
            # first changes)
            m.d.comb += [d.kind.eq(kind), d.asrc.eq(asrc), d.tiles.eq(tiles),
                         d.k.eq(k), d.mode.eq(mode), d.mb.eq(mb), d.kb.eq(kb), d.chw.eq(chw),
                         d.chunk.eq(chunk), d.slot.eq(s_slot), d.bias.eq(bias),
                         d.bank.eq(bank)]

        def pv_desc():
            # the P·V job of the block in pv_*
            job_desc(J_PV, A_P, HPW, pv_keys, M_CTX, mb=pv_mb, kb=pv_kb, chw=pv_chw,
                     bank=pv_bank)

        def next_block():
            # on to the scores of the next query block (of this head or the next), or to the
            # last P·V job once every block's scores are done
            with m.If((s_mb == n_blk - 1) & (s_head == c.heads - 1)):
                fsm.next("FLUSH")
            with m.Else():
                m.d.sync += s_mb.eq(s_mb + 1)
                with m.If(s_mb == n_blk - 1):
                    m.d.sync += [s_mb.eq(0), s_head.eq(s_head + 1)]
                _to_block(m, fsm, packed)

        def after_scores():
            # the scores of the block are in and the softmax units are free: its softmax pass
            # starts, and the P·V job of the previous block (whose pass is done)
            m.d.comb += self.smax.start.eq(1)
            m.d.sync += [pv_pending.eq(1), pv_mb.eq(s_mb), pv_kb.eq(s_kb), pv_keys.eq(self.keys),
                         pv_chw.eq(s_head * HPW), pv_bank.eq(s_bank), s_bank.eq(~s_bank)]
            with m.If(pv_pending):
                m.d.comb += job.start.eq(1)
                fsm.next("PVRUN")
            with m.Else():
                next_block()

        g_panels = Mux(s_group == G_FFN1, CWF, CWH)
        with Fsm(m, "seq") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.ctl.start):
                    m.d.comb += self.inp.start.eq(1)
                    m.d.sync += layer.eq(0)
                    fsm.next("INPUT")
            with fsm.State("INPUT"):
                with m.If(self.inp.done):
                    m.d.sync += [seq_len.eq(self.in_length), n_blk.eq(self.in_blocks),
                                 packed.eq(self.in_packed), s_kb.eq(0),
                                 s_ktiles.eq(self.in_blocks), self.keys.eq(self.in_length)]
                    m.d.sync += [b.eq(c.max_seq) for b in self.row_hi]
                    with m.If(self.in_length == 0):
                        m.d.comb += self.fail.eq(1)
                    with m.Else():
                        m.d.comb += self.layer_mark.eq(1)
                        fsm.next("LAYER")
            with fsm.State("LAYER"):
                with m.If(self.scalars_ho.full):
                    m.d.sync += [s_group.eq(G_Q), s_panel.eq(0)]
                    fsm.next("PWAIT")
            with fsm.State("PWAIT"):
                asrc = pick([A_X, A_X, A_X, A_Q, A_A, A_H], s_group, 3)
                mode = pick([M_Q, M_K, M_V, M_O, M_FFN1, M_FFN2], s_group, 3)
                job_desc(J_PANEL, asrc, n_blk, Mux(s_group == G_FFN2, ffn, hid), mode,
                         chunk=s_panel, bias=1)
                with m.If(self.slots_full.bit_select(s_slot, 1) & self.job_ready):
                    m.d.comb += job.start.eq(1)
                    fsm.next("PRUN")
            with fsm.State("PRUN"):
                # the next panel may start as soon as the engine takes it, but the first job
                # after the V, O, FFN1 and FFN2 panels reads what they write (and FFN1's
                # write-back needs the layer's scalars): those wait until every job is written
                group_end = s_panel == g_panels - 1
                with m.If(Mux(group_end & (s_group != G_Q) & (s_group != G_K), job.done,
                              self.job_ready)):
                    m.d.sync += [s_slot.eq(~s_slot), s_panel.eq(s_panel + 1)]
                    fsm.next("PWAIT")
                    with m.If(group_end):
                        m.d.sync += [s_panel.eq(0), s_group.eq(s_group + 1)]
                        with m.If(s_group == G_V):
                            m.d.sync += [s_head.eq(0), s_mb.eq(0)]
                            _to_block(m, fsm, packed)
                        with m.Elif(s_group == G_O):
                            m.d.sync += s_ln.eq(0)
                            fsm.next("LN")
                        with m.Elif(s_group == G_FFN1):
                            m.d.comb += self.scalars_ho.release.eq(1)
                        with m.Elif(s_group == G_FFN2):
                            m.d.sync += s_ln.eq(1)
                            fsm.next("LN")
            self._bounds(m, fsm, s_mb, s_kb, s_ktiles, s_kb1)
            with fsm.State("SCORES"):
                with m.If(packed):
                    m.d.sync += k_end.eq(Mux(less(seq_len, s_kb1 * N), seq_len, s_kb1 * N))
                job_desc(J_SCORE, A_Q, s_ktiles, hd, M_SCORE, mb=s_mb, kb=s_kb,
                         chw=s_head * HPW, bank=s_bank)
                with m.If(self.job_ready):
                    m.d.comb += job.start.eq(1)
                    fsm.next("SRUN")
            with fsm.State("SRUN"):
                pv_desc()                    # (after_scores may start it)
                with m.If(packed):
                    # the span's key count; the softmax pass takes it when the scores are done
                    m.d.sync += self.keys.eq(k_end - s_kb * N)
                with m.If(job.done):
                    with m.If(sm_idle):
                        after_scores()
                    with m.Else():
                        fsm.next("SWAIT")
            with fsm.State("SWAIT"):
                pv_desc()
                with m.If(sm_idle):
                    after_scores()
            with fsm.State("PVRUN"):
                # the next scores job reads nothing P·V writes
                with m.If(self.job_ready):
                    next_block()
            with fsm.State("FLUSH"):
                pv_desc()
                with m.If(sm_idle & self.job_ready):
                    m.d.comb += job.start.eq(1)
                    m.d.sync += [pv_pending.eq(0), s_mb.eq(0), s_head.eq(0)]
                    fsm.next("PVLAST")
            with fsm.State("PVLAST"):
                with m.If(job.done):
                    fsm.next("PWAIT")                  # s_group is G_O
            with fsm.State("LN"):
                with m.If(self.ln_slots.full.bit_select(s_ln, 1)):
                    m.d.comb += self.ln.start.eq(1)
                    fsm.next("LNRUN")
            with fsm.State("LNRUN"):
                with m.If(self.ln.done):
                    m.d.comb += [self.ln_slots.release.eq(1), self.layer_mark.eq(s_ln)]
                    with m.If(s_ln == 0):
                        m.d.sync += s_group.eq(G_FFN1)
                        fsm.next("PWAIT")
                    with m.Elif(layer == c.layers - 1):
                        m.d.comb += self.out.start.eq(1)
                        fsm.next("OUT")
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        fsm.next("LAYER")
            with fsm.State("OUT"):
                with m.If(self.out.done):
                    m.d.comb += self.ctl.done.eq(1)
                    fsm.next("IDLE")
        return m

    def _bounds(self, m, fsm, s_mb, s_kb, s_ktiles, s_kb1):
        """The states of a packed run that read the segment bounds of the query block's rows
        (``BOUNDS``) and derive its key span (``BSPAN``): its key blocks ``s_kb`` to
        ``s_kb1 - 1``, ``s_ktiles`` of them."""
        c, N, seq_len = self._c, self._c.array_cols, self.seq_len
        b_i = Signal(range(N + 1))    # BOUNDS: the row read this cycle
        k_lo = Signal(range(c.max_seq + 1))
        k_hi = Signal(range(c.max_seq + 1))
        # BOUNDS: row b_i - 1 (whose bounds arrive) is inside the run (else: all keys); compared
        # as its row is addressed, the cycle before
        here = Signal()
        with fsm.State("BOUNDS"):
            # row b_i of the block is addressed; the bounds of row b_i - 1 arrive
            m.d.comb += self.seg_addr.eq(s_mb * N + b_i)
            m.d.sync += [b_i.eq(b_i + 1), here.eq(s_mb * N + b_i < seq_len)]
            for i in range(N):
                with m.If(b_i == i + 1):
                    m.d.sync += [self.row_lo[i].eq(Mux(here, self.seg_start, 0)),
                                 self.row_hi[i].eq(Mux(here, self.seg_end, c.max_seq))]
            with m.If(b_i == 1):
                m.d.sync += k_lo.eq(self.seg_start)
            with m.If((b_i != 0) & here):
                m.d.sync += k_hi.eq(self.seg_end)    # rows ascend: the last row's end
            with m.If(b_i == N):
                m.d.sync += b_i.eq(0)
                fsm.next("BSPAN")
        with fsm.State("BSPAN"):
            # key blocks kb0 .. kb1 - 1 hold the keys [k_lo, k_hi)
            kb0 = _div(k_lo, N)
            kb1 = _div(k_hi + N - 1, N)
            m.d.sync += [s_kb.eq(kb0), s_ktiles.eq(kb1 - kb0), s_kb1.eq(kb1)]
            fsm.next("SCORES")
