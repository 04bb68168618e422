"""The sequencer: the schedule of a run, one job or pass at a time.

::

    IDLE -> INPUT -> per layer: LAYER -> Q, K, V panels (PWAIT/PRUN)
        -> per head, per query block: [packed: BOUNDS -> BSPAN] SCORES/SRUN -> SMAX -> PVRUN
        -> O panels -> LN (LN-1) -> FFN1, FFN2 panels -> LN (LN-2)
    -> OUT (after the last layer) -> IDLE

It starts the units through their ``task`` interfaces (:func:`~bertcore.core.common.task`)
and waits for their ``done``; it waits for the loader's panel slots, scalar record and
LayerNorm records (``full``) and releases each once used.

In a packed run (the packet began with a segment table) it reads, per head and query block,
the segment bounds of the block's ``N`` rows (``BOUNDS``, ``N + 1`` cycles) and derives the key
blocks the block's segments reach (``BSPAN``, one cycle): the scores job computes only those
key tiles, the softmax pass masks each row to its segment, ``P·V`` reduces over those keys
(:func:`bertcore.core.perf.key_spans`). A plain run spans all keys and skips both states.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bertcore.rtl.fsm import Fsm

from .common import (A_A, A_H, A_P, A_Q, A_X, G_FFN1, G_FFN2, G_O, G_Q, G_V, J_PANEL,
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
    slots, scalars_ho, ln_slots : ``In(handover(...))``
        The loader's panel slots, scalar record and LayerNorm records.
    job : ``Out(task(desc=job_layout(config)))``
        The GEMM job engine.
    smax : ``Out(task())``
        The softmax pass.
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
            "slots": In(handover(2)),
            "scalars_ho": In(handover(1)),
            "ln_slots": In(handover(2)),
            "job": Out(task(desc=job_layout(config))),
            "smax": Out(task()),
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
        b_i = Signal(range(N + 1))    # BOUNDS: the row read this cycle
        k_lo = Signal(range(c.max_seq + 1))
        k_hi = Signal(range(c.max_seq + 1))
        k_end = Signal(range(c.max_seq + 1))    # BSPAN: the span's last key block's end
        # BOUNDS: row b_i - 1 (whose bounds arrive) is inside the run (else: all keys); compared
        # as its row is addressed, the cycle before
        here = Signal()
        m.d.comb += self.key0.eq(s_kb * N)
        m.d.comb += [self.slots.index.eq(s_slot), self.ln_slots.index.eq(s_ln),
                     self.ln.which.eq(s_ln)]

        def start_job(kind, asrc, tiles, k, mode, *, mb=0, kb=0, chw=0, chunk=0, bias=0):
            d = job.desc
            # (every field here: a field driven alone from a register would be an `always @*`
            # of its own in the Verilog, which a 4-state simulator leaves X until that register
            # first changes)
            m.d.comb += [job.start.eq(1), d.kind.eq(kind), d.asrc.eq(asrc), d.tiles.eq(tiles),
                         d.k.eq(k), d.mode.eq(mode), d.mb.eq(mb), d.kb.eq(kb), d.chw.eq(chw),
                         d.chunk.eq(chunk), d.slot.eq(s_slot), d.bias.eq(bias)]

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
                with m.If(self.slots.full.bit_select(s_slot, 1)):
                    asrc = pick([A_X, A_X, A_X, A_Q, A_A, A_H], s_group, 3)
                    mode = pick([M_Q, M_K, M_V, M_O, M_FFN1, M_FFN2], s_group, 3)
                    start_job(J_PANEL, asrc, n_blk, Mux(s_group == G_FFN2, ffn, hid), mode,
                              chunk=s_panel, bias=1)
                    fsm.next("PRUN")
            with fsm.State("PRUN"):
                with m.If(job.done):
                    m.d.comb += self.slots.release.eq(1)
                    m.d.sync += [s_slot.eq(~s_slot), s_panel.eq(s_panel + 1)]
                    fsm.next("PWAIT")
                    with m.If(s_panel == g_panels - 1):
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
                m.d.sync += [s_kb.eq(kb0), s_ktiles.eq(kb1 - kb0),
                             k_end.eq(Mux(kb1 * N > seq_len, seq_len, kb1 * N))]
                fsm.next("SCORES")
            with fsm.State("SCORES"):
                with m.If(packed):
                    # the span's key count, from BSPAN's registers (one compare-and-subtract
                    # chain per cycle); the softmax pass takes it when the scores are done
                    m.d.sync += self.keys.eq(k_end - s_kb * N)
                start_job(J_SCORE, A_Q, s_ktiles, hd, M_SCORE, mb=s_mb, kb=s_kb,
                          chw=s_head * HPW)
                fsm.next("SRUN")
            with fsm.State("SRUN"):
                with m.If(job.done):
                    m.d.comb += self.smax.start.eq(1)
                    fsm.next("SMAX")
            with fsm.State("SMAX"):
                with m.If(self.smax.done):
                    start_job(J_PV, A_P, HPW, self.keys, M_CTX, mb=s_mb, kb=s_kb,
                              chw=s_head * HPW)
                    fsm.next("PVRUN")
            with fsm.State("PVRUN"):
                with m.If(job.done):
                    m.d.sync += s_mb.eq(s_mb + 1)
                    _to_block(m, fsm, packed)
                    with m.If(s_mb == n_blk - 1):
                        m.d.sync += [s_mb.eq(0), s_head.eq(s_head + 1)]
                        with m.If(s_head == c.heads - 1):
                            fsm.next("PWAIT")          # s_group is G_O
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
