"""The softmax pass of attention: score banks -> ``S`` IntSoftmax units -> P buffer.

It runs after the scores job of a query block, beside the array's next jobs (the previous
block's ``P·V``, the next block's scores); this block's ``P·V`` starts once it is done (the
sequencer's module docstring). The score banks and the P buffer are double-buffered: the pass
reads and writes the half ``bank``, and it takes its inputs (``keys``, ``key0``, ``row_lo``,
``row_hi``, ``bank``) when it starts, since the sequencer moves on to the next block meanwhile. Unit ``k`` takes the
rows ``q*S + k`` of the block (``N / S`` rows each, side by side); all units read the same word
of their score bank each cycle (a fork: a beat advances once every unit has taken it).

Each row streams the block's key span (``keys`` keys from ``key0``: all keys in a plain run,
the key blocks the block's segments reach in a packed one); a key outside the row's own
segment ``[row_lo, row_hi)`` carries the ``skip`` bit of ``IntSoftmax(masking=True)``: it takes
no part in the row's maximum or sum and its probability is 0, as in
``IntBert.encode_int(segments=)``.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bertcore.rtl.common import less
from bertcore.rtl.softmax import IntSoftmax

from .common import (feed, fork, pick, prob_word, row_read, score_word, sliced, task,
                     write_port)

__all__ = ["SoftmaxPass"]


class SoftmaxPass(wiring.Component):
    """The probabilities of one block of ``N`` query rows.

    Members
    -------
    ctl : ``In(task())``
        ``start`` starts the pass; ``done`` is high once every row's probabilities are in P.
        The inputs below are taken at ``start``.
    bank : ``In(1)``
        The half of the score banks to read and of the P buffer to write.
    keys : ``In(range(max_seq + 1))``
        Key positions per row (the block's key span).
    key0 : ``In(range(max_seq + 1))``
        The key of the span's first position.
    row_lo, row_hi : ``In(ArrayLayout(range(max_seq + 1), N))``
        Row ``i`` of the block attends to the keys ``[row_lo[i], row_hi[i])`` (the others are
        skipped).
    consts : ``In(StructLayout(IntSoftmax.CONSTANT_SHAPES))``
        The layer's softmax constants.
    scores : ``Out(row_read(...))``
        The score banks (bank ``k``: rows ``q*S + k``, word ``(bank*N/S + q)*GRP + key
        block`` with ``GRP = ceil(max_seq/N)``).
    p : ``Out(write_port(...)).array(N)``
        The P buffer (bank ``i``: query row ``i`` of the block, word ``bank*GRP + key
        block``; ``N`` probabilities of ``config.prob_bits`` bits).
    error : ``Out(1)``
        A unit flagged an error.
    """

    def __init__(self, config):
        self._c = config
        n, s = config.array_cols, config.softmax_units
        self._grp = -(-config.max_seq // n)
        self._sw = IntSoftmax.score_width(config.head_dim)
        super().__init__({
            "ctl": In(task()),
            "bank": In(1),
            "keys": In(range(config.max_seq + 1)),
            "key0": In(range(config.max_seq + 1)),
            "row_lo": In(data.ArrayLayout(range(config.max_seq + 1), n)),
            "row_hi": In(data.ArrayLayout(range(config.max_seq + 1), n)),
            "consts": In(data.StructLayout(IntSoftmax.CONSTANT_SHAPES)),
            "scores": Out(row_read(2 * (n // s) * self._grp, unsigned(self._sw * n), s)),
            "p": Out(write_port(2 * self._grp, unsigned(config.prob_bits * n))).array(n),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N, S, GRP = c.array_cols, c.softmax_units, self._grp
        RPS = N // S                        # rows per unit
        B = c.prob_bits                     # bits per probability
        smaxes = []
        for k in range(S):
            m.submodules[f"softmax_{k}"] = unit = IntSoftmax(
                max_seq=c.max_seq, in_width=self._sw, output_bits=B, saturate_output=True,
                head_dim=c.head_dim, multipliers=c.multipliers("softmax"), masking=True)
            m.d.comb += [getattr(unit, name).eq(getattr(self.consts, name))
                         for name in IntSoftmax.CONSTANT_SHAPES]
            smaxes.append(unit)
        m.d.comb += self.error.eq(Cat(*(unit.error for unit in smaxes)).any())
        # the inputs, taken at the start
        keys = Signal.like(self.keys)
        key0 = Signal.like(self.key0)
        bank = Signal()
        row_lo = Signal.like(self.row_lo)
        row_hi = Signal.like(self.row_hi)
        with m.If(self.ctl.start):
            m.d.sync += [keys.eq(self.keys), key0.eq(self.key0), bank.eq(self.bank),
                         row_lo.eq(self.row_lo), row_hi.eq(self.row_hi)]
        # score row x_q, its word x_addr, element x_l -> every unit
        x_active = Signal()
        x_q = Signal(range(RPS + 1))
        x_e = Signal(range(c.max_seq + 1))
        x_l = Signal(range(N))
        x1_valid = Signal()
        x1_l = Signal(range(N))
        x1_last = Signal()
        sinks = sliced(m, "softmax_in", [unit.i_stream for unit in smaxes])
        x_adv = fork(m, "x", x1_valid, sinks, Const((1 << S) - 1, S))
        # the word read, score_word(bank, x_q, key block), kept as a register stepping with
        # x_l and x_q (x_row: the word of the row's first key block): the address adders
        # before the scores' LUT-RAM read ran on into its read register (7.8-8.2 ns in five of
        # eight ULX3S placements at 125 MHz)
        x_addr = Signal(range(2 * RPS * GRP + 1), name="x_addr")
        x_row = Signal.like(x_addr, name="x_row")
        feed(m, self.scores, sinks, x_addr, x_adv, x1_l, self._sw, x1_last)
        # the key of element x_e, key0 + x_e, kept as a register stepping with x_e (the adder
        # before the segment compares was the ULX3S's worst path into x1_skip at 125 MHz)
        key = Signal(range(2 * c.max_seq + 1), name="x_key")
        # x_e_end: x_e == keys - 1 while the pass is active, a register set as x_e steps and
        # cleared as the pass ends (the compare sat in the enables of x_e, the key, x_q and
        # the bounds below, behind the fork's advance; and with x_active beside it in x_row_end
        # the bounds' enables were four LUTs behind the fork's flip-flops: 7.8-8.3 ns in three
        # of six ULX3S placements at 125 MHz and the slow build's worst at 100 MHz)
        x_e_end = Signal()
        x_row_end = Signal()            # the row's last element advances
        m.d.comb += x_row_end.eq(x_adv & x_e_end)
        # the segment bounds of each unit's row q*S + k as registers, loaded as x_q moves to the
        # row (the pick by x_q before the compares ran on into x1_skip: the ULX3S's worst path
        # at 125 MHz, 8.98 ns)
        x_next_q = Mux(x_q == RPS - 1, 0, x_q + 1)
        bounds = []
        for k in range(S):
            lo = Signal(len(key), name=f"x_lo{k}")
            hi = Signal(len(key), name=f"x_hi{k}")
            with m.If(self.ctl.start):
                m.d.sync += [lo.eq(self.row_lo[k]), hi.eq(self.row_hi[k])]
            with m.Elif(x_row_end):
                m.d.sync += [lo.eq(pick([row_lo[q * S + k] for q in range(RPS)], x_next_q,
                                        unsigned(len(key)))),
                             hi.eq(pick([row_hi[q * S + k] for q in range(RPS)], x_next_q,
                                        unsigned(len(key))))]
            bounds.append((lo, hi))
        for k, sink in enumerate(sinks):
            # the key is outside the segment of the unit's row q*S + k
            x1_skip = Signal(name=f"x1_skip{k}")
            lo, hi = bounds[k]
            with m.If(x_adv):
                m.d.sync += x1_skip.eq(less(key, lo) | ~less(key, hi))
            m.d.comb += sink.payload.skip.eq(x1_skip)
        with m.If(x_adv):
            m.d.sync += [x1_valid.eq(x_active), x1_l.eq(x_l), x1_last.eq(x_e_end)]
        with m.If(x_adv & x_active):
            m.d.sync += [x_e.eq(x_e + 1), key.eq(key + 1), x_l.eq(x_l + 1),
                         x_e_end.eq(x_e + 2 == keys)]
            with m.If(x_l == N - 1):
                m.d.sync += [x_l.eq(0), x_addr.eq(x_addr + 1)]
            with m.If(x_row_end):
                m.d.sync += [x_e.eq(0), key.eq(key0), x_l.eq(0), x_q.eq(x_q + 1),
                             x_e_end.eq(keys == 1), x_row.eq(x_row + GRP),
                             x_addr.eq(x_row + GRP)]
                with m.If(x_q == RPS - 1):
                    m.d.sync += [x_active.eq(0), x_e_end.eq(0)]
        # each unit's probabilities -> words of N -> the P bank of its row
        y_regs, y_done = [], []
        for k, unit in enumerate(smaxes):
            y_q = Signal(range(RPS + 1), name=f"y_q{k}")
            y_w = Signal(range(GRP + 1), name=f"y_w{k}")
            y_l = Signal(range(N), name=f"y_l{k}")
            y_word = Signal(B * N, name=f"y_word{k}")
            # the unit's rows are all written (y_q == RPS), a flag set with y_q's last step:
            # the pass's done is the units' flags, not their counters' compares, on its way
            # into the sequencer's next state (the softmax units sit far from it: a ULX3S
            # placement's worst path at 125 MHz, 8.58 ns into s_head)
            y_fin = Signal(name=f"y_fin{k}")
            y_regs += [y_q, y_w, y_l, y_fin]
            y_done.append(y_fin)
            # always ready: a unit gets exactly RPS rows a pass and puts out as many, each
            # written as it comes (a constant ready folds the units' output-stage enables
            # away in synthesis and in Verilator)
            m.d.comb += unit.o_stream.ready.eq(1)
            y_full = Cat(*(Mux(y_l == j, unit.o_stream.payload.data, y_word[B * j:B * (j + 1)])
                           for j in range(N)))
            with m.If(unit.o_stream.valid & unit.o_stream.ready):
                m.d.sync += [y_word.eq(y_full), y_l.eq(y_l + 1)]
                ylast = unit.o_stream.payload.last
                with m.If((y_l == N - 1) | ylast):
                    m.d.sync += [y_l.eq(0), y_w.eq(y_w + 1)]
                    for q in range(RPS):
                        port = self.p[q * S + k]
                        with m.If(y_q == q):
                            m.d.comb += [port.addr.eq(prob_word(bank, y_w, GRP)),
                                         port.data.eq(y_full),
                                         port.en.eq(1)]
                with m.If(ylast):
                    m.d.sync += [y_w.eq(0), y_q.eq(y_q + 1), y_fin.eq(y_q == RPS - 1)]
        m.d.comb += self.ctl.done.eq(Cat(*y_done).all())
        with m.If(self.ctl.start):
            m.d.sync += [x_active.eq(1), x_q.eq(0), x_e.eq(0), key.eq(self.key0),
                         x_l.eq(0), x_e_end.eq(self.keys == 1)]
            first = score_word(self.bank, 0, 0, GRP, RPS)
            m.d.sync += [x_row.eq(first), x_addr.eq(first)]
            m.d.sync += [r.eq(0) for r in y_regs]
        return m
