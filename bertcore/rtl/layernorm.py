"""Integer LayerNorm normalization (without gamma and beta): :class:`IntLayerNorm`.

The unit implements :func:`bertcore.quant.kernels.layernorm_int` (``shift=0``) row by row, bit for
bit::

    mean = round_half_even(sum(x) / N)          y = x - mean
    var  = sum(y * y)                           std = max(isqrt(var), 1)
    f    = floor(2**(31 + F) / std)             out = floor(y * f / 2**(1 + F))

How it is computed
------------------
Three components, joined by streams and sharing the row buffer (one
:class:`~bertcore.rtl.blockram.BlockRam`, a block RAM read through its output register, whose
write port belongs to the first, its read port to the third)::

    i_stream --> _RowIntake --sums--> _Statistics --params--> _Normalizer --> o_stream
                   |    ^                                        |    |
             write |    +----------------- freed ----------------+    | read
                   v                                                  |
               row buffer (BlockRam) <------------------------------+

* :class:`_RowIntake` (pass 1) collects, per row, ``S1 = sum(u)`` and ``S2 = sum(u*u)`` of the
  offset values ``u = x + 2**(W-1)`` (the input with its sign bit inverted: unsigned,
  ``0 <= u < 2**W``), while it writes the row into the row buffer. The sums of a complete row
  wait in a hold register (the ``sums`` stream's output register) while the engine is busy, so
  the next row can stream in.
* :class:`_Statistics`, a serial engine, derives everything exactly from ``S1`` and ``S2``,
  because the offset cancels in ``x - mean``:

  * ``S1 = N*q + r`` by restoring division (one quotient bit per cycle), ``mu = q + up`` with
    ``up`` the tie-to-even rounding (``2r > N``, or ``2r == N`` and ``q`` odd):
    ``mu = mean + 2**(W-1)``;
  * ``var = sum((u - mu)**2) = S2 - mu*(2*S1 - N*mu) = S2 - mu*A`` with
    ``A = S1 + d`` and ``d = S1 - N*mu = r - N*up`` (no multiplication by ``N``); ``mu*A`` by
    shift-and-add (one bit of ``mu`` per cycle); ``A >= 0`` always;
  * ``isqrt(var)`` digit by digit (restoring, one root bit per cycle), which is exactly
    ``floor(sqrt(var))``;
  * ``f = floor(2**(31+F) / std)`` by restoring division (one quotient bit per cycle).

* :class:`_Normalizer` (pass 2) reads the row back from the buffer and streams
  ``out = (y*f) >> (1+F)`` through a pipelined multiplier into a small output queue (reads are
  issued only against free room in the queue, so the pipeline never stalls); each read frees
  its buffer entry at once (``freed``, counted by the intake).

The buffer is a circular queue of elements a little over two rows deep
(:attr:`IntLayerNorm.buffer_depth`): row ``n+1`` is written while the statistics of row ``n``
are computed and row ``n-1`` is normalized. Because ``|y| <= isqrt(var)`` for every element of a
row (``y*y <= var``), ``|y*f| <= 2**(31+F)`` and ``out`` lies in ``[-2**30, 2**30]``: 32 signed
bits.

Only the kernel's ``shift=0`` (the encoder's setting) is supported: ``var = sum(floor(y/2**s)**2)``
with ``s > 0`` cannot be derived from ``S1`` and ``S2`` and would need a second pass over the row.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bertcore.quant.kernels import LN_FRAC_BITS, RESIDUAL_BITS
from bertcore.rtl.blockram import BlockRam
from bertcore.rtl.common import (check_multipliers, delay, dsp_partial_products, dsp_tiles,
                                 less, multiply, trial_subtract)
from bertcore.rtl.multiplier import Multiplier, uses_mult18x18d

__all__ = ["IntLayerNorm"]


def _product_terms(a, b, width, *, style="dsp", m=None, name="pp"):
    """DSP-sized partial products of ``a * b`` needed modulo ``2**width``: ``(product, shift)``.

    ``a is b`` builds a square: the symmetric cross products are shared (``2*ai*aj``). ``style``,
    ``m`` and ``name`` are those of :func:`~bertcore.rtl.common.multiply`.
    """
    if a is not b:
        return dsp_partial_products(a, b, width=width, style=style, m=m, name=name)
    tiles = dsp_tiles(a)
    terms = []
    for i, (ai, si) in enumerate(tiles):
        for aj, sj in tiles[i:]:
            shift = si + sj + (1 if sj > si else 0)
            if shift < width:
                terms.append((multiply(ai, aj, style=style, m=m, name=f"{name}{len(terms)}"),
                              shift))
    return terms


def _product_latency(a_shape, b_shape, width, *, square=False):
    """Latency of :func:`_pipelined_product` for operands of these shapes."""
    a = Signal(a_shape)
    terms = _product_terms(a, a if square else Signal(b_shape), width)
    return 1 + (len(terms) - 1).bit_length()


def _dsp_product_terms(m, a, b, width, *, name):
    """The terms of :func:`_product_terms` (same pieces, order and shifts) as
    :class:`~bertcore.rtl.multiplier.Multiplier` instances with input and output registers:
    ``a`` and ``b`` are the values the operand registers would load, each product is valid two
    cycles later (it is the registered term)."""
    tiles_a = dsp_tiles(a)
    if a is b:
        pairs = []
        for i, (ai, si) in enumerate(tiles_a):
            for aj, sj in tiles_a[i:]:
                shift = si + sj + (1 if sj > si else 0)
                if shift < width:
                    pairs.append((ai, aj, shift))
    else:
        pairs = [(pa, pb, sa + sb) for pa, sa in tiles_a for pb, sb in dsp_tiles(b)
                 if sa + sb < width]
    terms = []
    for k, (x, y, shift) in enumerate(pairs):
        m.submodules[f"{name}_dsp{k}"] = mul = Multiplier(x.shape(), y.shape(), target="ecp5")
        m.d.comb += [mul.a.eq(x), mul.b.eq(y)]
        terms.append((mul.p, shift))
    return terms


def _pipelined_product(m, a, b, *, width, drop=0, name, style="dsp", dsp_operands=None):
    """Build bits ``drop .. width-1`` of ``a * b`` as registered partial products and a registered
    adder tree; returns ``(product, latency)`` with ``product`` an unsigned ``width - drop``-bit
    value (the caller reinterprets it) valid ``latency`` cycles after ``a`` and ``b``.

    The caller guarantees that the true product fits ``width`` bits (two's complement when it can
    be negative), so dropping the bits above ``width`` is exact. Each partial product multiplies
    two operands of at most 18 bits (one DSP block, :func:`~bertcore.rtl.common.dsp_tiles`);
    partial products of weight ``>= 2**width`` are not built.

    Pipeline: stage 1 registers the partial products (the operands must come from registers:
    DSP input and output registers), each further stage registers pairwise sums of the previous
    one, so that no adder chain is longer than one ``width``-bit addition. ``style`` is that of
    :func:`~bertcore.rtl.common.multiply` (the partial products as DSP blocks or in LUTs).

    With ``dsp_operands = (a_next, b_next)``, the values the registers ``a`` and ``b`` load
    (``a_next is b_next`` for a square), stage 1 is built of MULT18X18Ds instead
    (:func:`_dsp_product_terms`: the operand registers and the partial-product registers inside
    the blocks); ``a`` and ``b`` are then not used. Same terms, latency and result.
    """
    if dsp_operands is not None:
        terms = _dsp_product_terms(m, *dsp_operands, width, name=name)
    else:
        terms = []
        for k, (product, shift) in enumerate(_product_terms(a, b, width, style=style, m=m,
                                                            name=f"{name}_mul")):
            term = Signal.like(product, name=f"{name}_pp{k}")
            m.d.sync += term.eq(product)
            terms.append((term, shift))
    latency = 1
    while len(terms) > 1:
        paired = []
        for k in range(0, len(terms), 2):
            group = terms[k:k + 2]
            base = min(shift for _, shift in group)
            total = sum(value << (shift - base) for value, shift in group)
            if len(terms) <= 2 and base <= drop:
                # the root of the tree keeps only the bits the caller uses
                node = Signal(width - drop, name=f"{name}_s{latency}")
                m.d.sync += node.eq(total[drop - base:])
                base = drop
            else:
                node = Signal(width - base, name=f"{name}_s{latency}_{k // 2}")
                m.d.sync += node.eq(total)
            paired.append((node, base))
        terms = paired
        latency += 1
    (value, shift), = terms
    return (value << shift)[drop:width], latency


class _Stage(enum.Enum, shape=3):
    """States of the statistics engine."""
    IDLE = 0          # wait for the sums of a row
    DIVIDE = 1        # S1 / N, one quotient bit per cycle
    ROUND = 2         # mean rounded half to even; A = S1 + d
    MULTIPLY = 3      # mu * A, one bit of mu per cycle
    VARIANCE = 4      # var = S2 - mu*A
    SQRT = 5          # isqrt(var), one root bit per cycle
    RECIPROCAL = 6    # floor(2**(31+F) / std), one quotient bit per cycle
    DONE = 7          # hand (mean, f) over to the normalizer


def _check_int(name, value, minimum, maximum=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        if maximum is None:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        else:
            what = f"an integer in {minimum}..{maximum}"
        raise ValueError(f"{name} must be {what}, not {value!r}")


def _sums_layout(sum_width, sq_sum_width):
    """Payload of :class:`_RowIntake`'s ``sums`` stream: the two sums of one row."""
    return data.StructLayout({"s1": unsigned(sum_width), "s2": unsigned(sq_sum_width)})


def _params_layout(in_width, recip_width):
    """Payload of :class:`_Statistics`' ``params`` stream: what the normalizer needs of a row."""
    return data.StructLayout({"mean": signed(in_width), "recip": unsigned(recip_width)})


class _RowIntake(wiring.Component):
    """Pass 1 of :class:`IntLayerNorm`: accept rows, write them into the row buffer, and sum
    ``u = x + 2**(W-1)`` and ``u*u`` per row.

    Parameters
    ----------
    hidden, in_width : int
        Row length ``N`` and input width ``W``.
    depth : int
        Entries of the row buffer (a circular queue of elements).
    sum_width, sq_sum_width : int
        Widths of ``S1 = sum(u)`` and ``S2 = sum(u*u)``.
    multipliers : str
        Style of the squarer's partial products (:func:`~bertcore.rtl.common.multiply`).

    Members
    -------
    i_stream : In(stream.Signature(StructLayout({"data": signed(W), "last": 1})))
        The unit's input.
    buffer : In(WritePort.Signature(...))
        The row buffer's write port (driven here).
    freed : In(1)
        The normalizer read (and so freed) one buffer entry this cycle.
    sums : Out(stream.Signature(_sums_layout(...)))
        ``S1, S2`` of each well-formed row, in order. A hold register is the stream's
        output register, so that the next row can stream in while the consumer is busy.
    error : Out(1)
        One-cycle pulse on a malformed row (dropped whole, see :class:`IntLayerNorm`).

    The sums of a row's last element are valid on ``sums`` ``square latency + 3`` cycles after
    its handshake (input register, squarer, accumulator, hold register).
    """

    def __init__(self, *, hidden, in_width, depth, sum_width, sq_sum_width, multipliers):
        self._hidden = hidden
        self._in_width = in_width
        self._depth = depth
        self._multipliers = multipliers
        self._sum_width = sum_width
        self._sq_sum_width = sq_sum_width
        super().__init__({
            "i_stream": In(stream.Signature(
                data.StructLayout({"data": signed(in_width), "last": 1}))),
            "buffer": In(WritePort.Signature(addr_width=ceil_log2(depth),
                                             shape=signed(in_width))),
            "freed": In(1),
            "sums": Out(stream.Signature(_sums_layout(sum_width, sq_sum_width))),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        N, W, depth = self._hidden, self._in_width, self._depth

        # Bookkeeping. The buffer is a circular queue of elements: the normalizer frees each
        # entry as it reads it, so the writer may run up to `depth` entries ahead of the reader.
        free = Signal(range(depth + 1), init=depth)   # entries neither unread nor being filled
        pending = Signal(range(3))            # complete rows whose sums are not yet taken
        commit = Signal()                     # a well-formed row's last element is accepted
        drop = Signal()                       # a malformed row ends (see below)
        take_sums = Signal()                  # the consumer takes a row's sums

        # -- accept the row, write it to the buffer --------------------------------------------
        w_index = Signal(range(N))            # position within the row
        w_addr = Signal(range(depth))
        w_base = Signal(range(depth))         # buffer address of the row's first element
        discard = Signal()                    # skipping the tail of a too long row
        beat = Signal()

        x = self.i_stream.payload.data
        last = self.i_stream.payload.last
        # A row may start when the buffer has room for its next entry and when at most one
        # complete row waits for the consumer: that one leaves the accumulators for the hold
        # register (empty then) as soon as its sums land, before this row's first element does.
        # has_room: free != 0 as a register, loaded with the compare of free's next value
        # (the compare sat in the loop free -> ready -> beat -> free's adder: 7.8-8.0 ns in
        # three of eight ULX3S placements at 125 MHz). free's next value and that compare
        # are computed from flip-flops (free + dropped) and picked by freed and the beat: the
        # beat, which reads has_room, and the normalizer's freed (its read enable) stay out of
        # the adders and the compares (through them: 9.8 ns, and 8.2 ns into free)
        has_room = Signal(init=depth != 0)
        may_start = pending < 2
        m.d.comb += [
            self.i_stream.ready.eq(discard | (has_room & ((w_index != 0) | may_start))),
            beat.eq(self.i_stream.valid & self.i_stream.ready & ~discard),
            self.buffer.addr.eq(w_addr),
            self.buffer.data.eq(x),
            self.buffer.en.eq(beat),
            take_sums.eq(self.sums.valid & self.sums.ready),
        ]
        next_addr = Mux(w_addr == depth - 1, 0, w_addr + 1)
        at_end = w_index == N - 1
        m.d.sync += self.error.eq(0)
        with m.If(self.i_stream.valid & self.i_stream.ready & discard):
            with m.If(last):
                m.d.sync += discard.eq(0)
        # (comb signals are plain expressions, not set inside an If: in Verilog they become
        # continuous assignments, which event-driven simulators evaluate at time 0)
        m.d.comb += [
            commit.eq(beat & at_end & last),
            drop.eq(beat & (at_end ^ last)),
        ]
        # a written element takes an entry, a read one frees one, a dropped row frees its own
        # a cycle later (`dropped`: the row's length and the compare that finds it malformed
        # stay out of the adder into `free`, among the ULX3S's worst paths at 125 MHz; one
        # cycle of fewer free entries only delays the writer)
        dropped = Signal(range(N + 1))
        m.d.sync += dropped.eq(Mux(drop, w_index + 1, 0))
        base = free + dropped
        same = self.freed == beat                 # free moves by freed - beat
        m.d.sync += [free.eq(Mux(same, base, Mux(beat, base - 1, base + 1))),
                     has_room.eq(Mux(same, base != 0, ~beat | (base != 1)))]
        m.d.sync += pending.eq(pending + commit - take_sums)
        with m.If(beat):
            with m.If(at_end & last):
                m.d.sync += [w_index.eq(0), w_addr.eq(next_addr), w_base.eq(next_addr)]
            with m.Elif(last | at_end):
                # Too short (early last) or too long (no last on the N-th element): drop it.
                m.d.sync += [w_index.eq(0), w_addr.eq(w_base), self.error.eq(1)]
                m.d.sync += discard.eq(~last)
            with m.Else():
                m.d.sync += [w_index.eq(w_index + 1), w_addr.eq(next_addr)]

        # -- sum u and u*u ---------------------------------------------------------------------
        # stage a1: register the offset value u = x + 2**(W-1) (sign bit inverted)
        u = Cat(x[:W - 1], ~x[W - 1])
        a1_u = Signal(W)
        a1_valid = Signal()
        a1_first = Signal()
        a1_commit = Signal()
        m.d.sync += [
            a1_u.eq(u),
            a1_valid.eq(beat),
            a1_first.eq(w_index == 0),
            a1_commit.eq(commit),
        ]
        # stages a2..: u*u (partial products, adder tree); on ECP5 the partial products are
        # MULT18X18Ds whose input registers load u beside a1_u
        on_dsp = self._multipliers == "dsp" and uses_mult18x18d(platform)
        square, square_latency = _pipelined_product(m, a1_u, a1_u, width=2 * W, name="square",
                                                     style=self._multipliers,
                                                     dsp_operands=(u, u) if on_dsp else None)
        acc_u = delay(m, a1_u, square_latency, name="acc_u")
        acc_valid = delay(m, a1_valid, square_latency, name="acc_valid")
        acc_first = delay(m, a1_first, square_latency, name="acc_first")
        acc_commit = delay(m, a1_commit, square_latency, name="acc_commit")
        # accumulate stage: the first element of a row restarts the sums
        s1 = Signal(self._sum_width)
        s2 = Signal(self._sq_sum_width)
        sums_valid = Signal()                 # s1, s2 hold a complete row not yet moved on
        # hold register (the output register of `sums`): a second landing place, so that the
        # next row can stream in while the consumer is busy
        hold = self.sums
        move = sums_valid & (~hold.valid | take_sums)
        with m.If(take_sums):
            m.d.sync += hold.valid.eq(0)
        with m.If(move):
            m.d.sync += [hold.payload.s1.eq(s1), hold.payload.s2.eq(s2), hold.valid.eq(1),
                         sums_valid.eq(0)]
        with m.If(acc_valid):
            m.d.sync += [
                s1.eq(Mux(acc_first, 0, s1) + acc_u),
                s2.eq(Mux(acc_first, 0, s2) + square),
            ]
            with m.If(acc_commit):
                m.d.sync += sums_valid.eq(1)
        return m


class _Statistics(wiring.Component):
    """The serial statistics engine of :class:`IntLayerNorm`: from a row's ``S1``, ``S2`` to its
    ``mean`` and ``recip = floor(2**(31+F) / std)``, exactly, one bit per cycle (see the module
    docstring for the arithmetic).

    Parameters
    ----------
    hidden, in_width, frac_bits : int
        ``N``, ``W``, ``F`` of the unit.
    sum_width, sq_sum_width, var_width, root_width : int
        Widths of ``S1``, ``S2``, ``var`` and ``isqrt(var)``.

    Members
    -------
    sums : In(stream.Signature(_sums_layout(...)))
        The sums of a row; taken (``ready``) only while the engine is idle.
    params : Out(stream.Signature(_params_layout(...)))
        ``mean`` and ``recip`` of the row, valid ``2*W + root_width + F + 36`` cycles after its
        sums were taken (:attr:`IntLayerNorm.stats_cycles` counts the hand-over cycle too); held
        until taken, the engine then returns to idle.
    """

    def __init__(self, *, hidden, in_width, frac_bits, sum_width, sq_sum_width, var_width,
                 root_width):
        self._hidden = hidden
        self._in_width = in_width
        self._sum_width = sum_width
        self._sq_sum_width = sq_sum_width
        self._var_width = var_width
        self._root_width = root_width
        self._recip_width = 32 + frac_bits
        super().__init__({
            "sums": In(stream.Signature(_sums_layout(sum_width, sq_sum_width))),
            "params": Out(stream.Signature(_params_layout(in_width, self._recip_width))),
        })

    def elaborate(self, platform):
        m = Module()
        N, W = self._hidden, self._in_width
        root_width, recip_width = self._root_width, self._recip_width

        n_width = N.bit_length()
        steps = Signal(range(max(W, root_width, recip_width) + 1))
        # division S1 / N: remainder (< N) and quotient shift register
        div_rem = Signal(n_width)
        div_quo = Signal(W)
        sum1 = Signal(self._sum_width)        # S1 kept for A
        sum2 = Signal(self._sq_sum_width)     # S2 kept for var
        mu = Signal(W)                        # mean + 2**(W-1)
        mu_bits = Signal(W)                   # mu shifted out MSB first by the multiplication
        up = Signal()                         # the mean rounds up
        a_val = Signal(self._sum_width + 1)   # A = S1 + r - N*up <= S1 + N - 1
        prod = Signal(self._sq_sum_width)     # mu*A = S2 - var <= S2
        radicand = Signal(2 * root_width)
        root = Signal(root_width)
        root_rem = Signal(root_width + 2)     # var - root**2 <= 2*root
        rec_rem = Signal(root_width + 1)      # < std
        recip = self.params.payload.recip
        mean = self.params.payload.mean
        # (an explicit state register and an If/Elif chain rather than m.FSM: the latter emits a
        # Verilog `case` per signal covering only the states that assign it, which Verilator's
        # -Wall rejects as incomplete)
        stage = Signal(_Stage)

        # combinational step of each serial operation
        div_trial = Cat(div_quo[W - 1], div_rem)                 # 2*rem + next dividend bit
        div_fits, div_diff = trial_subtract(div_trial, N)
        twice_rem = Cat(Const(0, 1), div_rem)
        round_up = less(N, twice_rem) | ((twice_rem == N) & div_quo[0])
        sqrt_trial = Cat(radicand[-2:], root_rem)                # 4*rem + next two bits
        sqrt_sub = Cat(Const(1, 2), root)                        # 4*root + 1
        sqrt_fits, sqrt_diff = trial_subtract(sqrt_trial, sqrt_sub)
        # std = max(root, 1): root == 0 is kept in a register as the root's bits are found
        # (the reduction of root ran on into the reciprocal step's subtraction: an ECP5
        # critical path at 100 MHz). Each step's compare is the sign of its one subtraction
        # (trial_subtract), as in the division and the square root above
        root_zero = Signal()
        std = Cat(root[0] | root_zero, root[1:])
        # 2*rem + next bit of 2**(31+F) (1 in the first step only: rec_first, a register, not
        # steps == 0, whose compare ran on into the subtraction's carry chain and its sign into
        # rec_rem and recip, 7.8-8.1 ns in five of eight ULX3S placements at 125 MHz)
        rec_first = Signal()
        rec_trial = Cat(rec_first, rec_rem)
        rec_fits, rec_diff = trial_subtract(rec_trial, std)

        with m.If(stage == _Stage.IDLE):
            with m.If(self.sums.valid):
                s1 = self.sums.payload.s1
                m.d.sync += [
                    sum1.eq(s1), sum2.eq(self.sums.payload.s2),
                    div_rem.eq(s1[W:]), div_quo.eq(s1[:W]),     # S1 >> W < N
                    steps.eq(0),
                    stage.eq(_Stage.DIVIDE),
                ]
        with m.Elif(stage == _Stage.DIVIDE):
            # W cycles: one quotient bit of S1 / N per cycle, MSB first
            m.d.sync += [
                div_rem.eq(Mux(div_fits, div_diff, div_trial)),
                div_quo.eq(Cat(div_fits, div_quo[:W - 1])),
                steps.eq(steps + 1),
            ]
            with m.If(steps == W - 1):
                m.d.sync += [stage.eq(_Stage.ROUND), steps.eq(0)]
        with m.Elif(stage == _Stage.ROUND):
            # two cycles: the rounding decision (two compares of the remainder) registered
            # first, then mean rounded half to even and A = S1 + d with d = r - N*up (the
            # compares ran on into the adders of mu and A: the ULX3S's worst path, 8.4 ns)
            with m.If(steps == 0):
                m.d.sync += [up.eq(round_up), steps.eq(1)]
            with m.Else():
                mu_next = div_quo + up
                m.d.sync += [
                    mu.eq(mu_next), mu_bits.eq(mu_next),
                    a_val.eq(sum1 + div_rem - Mux(up, N, 0)),
                    prod.eq(0), steps.eq(0),
                    stage.eq(_Stage.MULTIPLY),
                ]
        with m.Elif(stage == _Stage.MULTIPLY):
            # W cycles: prod = 2*prod + bit*A over the bits of mu, MSB first
            m.d.sync += [
                prod.eq((prod << 1) + Mux(mu_bits[W - 1], a_val, 0)),
                mu_bits.eq(mu_bits << 1),
                steps.eq(steps + 1),
            ]
            with m.If(steps == W - 1):
                m.d.sync += stage.eq(_Stage.VARIANCE)
        with m.Elif(stage == _Stage.VARIANCE):
            # var = S2 - mu*A, which fits var_width bits
            m.d.sync += [
                radicand.eq((sum2 - prod)[:self._var_width]),
                root.eq(0), root_rem.eq(0), steps.eq(0),
                stage.eq(_Stage.SQRT),
            ]
        with m.Elif(stage == _Stage.SQRT):
            # root_width cycles: one root bit per cycle (restoring digit-by-digit)
            m.d.sync += [
                root_rem.eq(Mux(sqrt_fits, sqrt_diff, sqrt_trial)),
                root.eq(Cat(sqrt_fits, root[:-1])),
                root_zero.eq(~sqrt_fits & (root[:-1] == 0)),
                radicand.eq(radicand << 2),
                steps.eq(steps + 1),
            ]
            with m.If(steps == root_width - 1):
                m.d.sync += [rec_rem.eq(0), steps.eq(0), rec_first.eq(1)]
                m.d.sync += stage.eq(_Stage.RECIPROCAL)
        with m.Elif(stage == _Stage.RECIPROCAL):
            # 32+F cycles: one bit of floor(2**(31+F) / std) per cycle, MSB first
            m.d.sync += [
                rec_rem.eq(Mux(rec_fits, rec_diff, rec_trial)),
                recip.eq(Cat(rec_fits, recip[:-1])),
                steps.eq(steps + 1), rec_first.eq(0),
            ]
            with m.If(steps == recip_width - 1):
                m.d.sync += mean.eq(Cat(mu[:W - 1], ~mu[W - 1]).as_signed())
                m.d.sync += stage.eq(_Stage.DONE)
        with m.Elif(stage == _Stage.DONE):
            with m.If(self.params.ready):
                m.d.sync += stage.eq(_Stage.IDLE)

        m.d.comb += [
            self.sums.ready.eq(stage == _Stage.IDLE),
            self.params.valid.eq(stage == _Stage.DONE),
        ]
        return m


class _Normalizer(wiring.Component):
    """Pass 2 of :class:`IntLayerNorm`: read a row back from the row buffer and stream
    ``out = (x - mean) * recip >> (1 + F)`` through a pipelined multiplier and an output queue.

    Parameters
    ----------
    hidden, in_width, frac_bits : int
        ``N``, ``W``, ``F`` of the unit.
    depth : int
        Entries of the row buffer.
    product_width : int
        Width in which ``y * recip`` is exact (two's complement).
    multipliers : str
        Style of the partial products (:func:`~bertcore.rtl.common.multiply`).

    Members
    -------
    params : In(stream.Signature(_params_layout(...)))
        ``mean`` and ``recip`` of the next row; taken when the previous row's last element is
        read (or at once when idle).
    buffer : In(ReadPort.Signature(...))
        The row buffer's read port, driven here: ``data`` is the word addressed with ``en``
        two cycles before (a :class:`~bertcore.rtl.blockram.BlockRam`'s read register and its
        output register, which loads every cycle and is the pipeline's stage n2).
    freed : Out(1)
        High in each cycle in which an element is read (its buffer entry is free again).
    o_stream : Out(stream.Signature(StructLayout({"data": signed(32), "last": 1})))
        The unit's output.
    """

    def __init__(self, *, hidden, in_width, frac_bits, depth, product_width, multipliers):
        self._hidden = hidden
        self._in_width = in_width
        self._frac_bits = frac_bits
        self._depth = depth
        self._product_width = product_width
        self._multipliers = multipliers
        self._o_layout = data.StructLayout({"data": signed(IntLayerNorm.OUT_WIDTH), "last": 1})
        super().__init__({
            "params": In(stream.Signature(_params_layout(in_width, 32 + frac_bits))),
            "buffer": In(ReadPort.Signature(addr_width=ceil_log2(depth),
                                            shape=signed(in_width))),
            "freed": Out(1),
            "o_stream": Out(stream.Signature(self._o_layout)),
        })

    @property
    def product_latency(self):
        """Latency of the pipelined ``y * recip``."""
        return _product_latency(signed(self._in_width + 1), unsigned(32 + self._frac_bits),
                                self._product_width)

    def elaborate(self, platform):
        m = Module()
        N, W, F, depth = self._hidden, self._in_width, self._frac_bits, self._depth
        recip_width = 32 + F
        product_latency = self.product_latency
        # The output queue: a small memory and the output register. A read is issued only when
        # the queue has room for its result (credits), so the pipeline never stalls; an issued
        # read reaches the output register product_latency + 5 cycles later, and a queue of that
        # many entries plus the output register lets an always-ready sink see no bubble.
        # (Not a SyncFIFOBuffered: that one reads its memory through a register, one cycle
        # later, which a queue this small in distributed RAM does not need.)
        queue_depth = product_latency + 5
        m.submodules.queue = queue = Memory(shape=self._o_layout, depth=queue_depth, init=[])
        q_wr = queue.write_port()
        q_rd = queue.read_port(domain="comb")
        q_head = Signal(range(queue_depth))
        q_tail = Signal(range(queue_depth))
        q_count = Signal(range(queue_depth + 1))
        credits = Signal(range(queue_depth + 2), init=queue_depth + 1)   # room not yet claimed
        active = Signal()
        r_index = Signal(range(N))
        r_addr = Signal(range(depth))
        r_mean = Signal(signed(W))
        r_recip = Signal(recip_width)
        issue = Signal()                      # read one entry
        release = Signal()                    # read a row's last element
        handover = Signal()                   # take the next row's parameters
        pop = Signal()

        m.d.comb += [
            issue.eq(active & (credits != 0)),
            release.eq(issue & (r_index == N - 1)),
            self.params.ready.eq(~active | release),
            handover.eq(self.params.valid & self.params.ready),
            self.freed.eq(issue),
            self.buffer.addr.eq(r_addr),
            self.buffer.en.eq(issue),
            pop.eq(self.o_stream.valid & self.o_stream.ready),
        ]
        m.d.sync += credits.eq(credits - issue + pop)
        with m.If(issue):
            m.d.sync += [
                r_addr.eq(Mux(r_addr == depth - 1, 0, r_addr + 1)),
                r_index.eq(Mux(r_index == N - 1, 0, r_index + 1)),
            ]
            with m.If(r_index == N - 1):
                m.d.sync += active.eq(0)
        with m.If(handover):
            m.d.sync += [active.eq(1), r_mean.eq(self.params.payload.mean),
                         r_recip.eq(self.params.payload.recip)]

        # stage n1: the buffer's data arrives (parameters of its row travel along)
        n1_valid = Signal()
        n1_last = Signal()
        n1_mean = Signal(signed(W))
        n1_recip = Signal(recip_width)
        m.d.sync += [
            n1_valid.eq(issue),
            n1_last.eq(r_index == N - 1),
            n1_mean.eq(r_mean),
            n1_recip.eq(r_recip),
        ]
        # stage n2: the buffer's data, registered in the block RAM's output register (a block
        # RAM's clock-to-output is ~6 ns on ECP5 without it, which ran on into a fabric register
        # here: among the ULX3S's worst paths at 125 MHz)
        n2_x = self.buffer.data
        n2_mean = delay(m, n1_mean, 1, name="n2_mean")
        # stage n3: y = x - mean (|y| < 2**W)
        y = n2_x - n2_mean
        n3_y = Signal(signed(W + 1))
        m.d.sync += n3_y.eq(y)
        n2_recip = delay(m, n1_recip, 1, name="n2_recip")
        n3_recip = delay(m, n2_recip, 1, name="n3_recip")
        n3_valid = delay(m, n1_valid, 2, name="n3_valid")
        n3_last = delay(m, n1_last, 2, name="n3_last")
        # stages n4..: y*f (partial products, adder tree), exact in 33+F bits; floor(y*f / 2**(1+F))
        # is the arithmetic shift, i.e. bits 1+F and up. On ECP5 the partial products are
        # MULT18X18Ds whose input registers load y and f beside n3_y and n3_recip.
        on_dsp = self._multipliers == "dsp" and uses_mult18x18d(platform)
        product, latency = _pipelined_product(m, n3_y, n3_recip, width=self._product_width,
                                              drop=1 + F, name="scaled",
                                              style=self._multipliers,
                                              dsp_operands=(y, n2_recip) if on_dsp else None)
        assert latency == product_latency
        out_valid = delay(m, n3_valid, latency, name="out_valid")
        out_last = delay(m, n3_last, latency, name="out_last")

        # queue: written by the pipeline, read into the output register when it is empty or
        # being emptied
        load = (q_count != 0) & (~self.o_stream.valid | self.o_stream.ready)
        result = Signal(self._o_layout)
        m.d.comb += [
            result.data.eq(product),
            result.last.eq(out_last),
            q_wr.addr.eq(q_tail),
            q_wr.data.eq(result),
            q_wr.en.eq(out_valid),
            q_rd.addr.eq(q_head),
        ]
        m.d.sync += q_count.eq(q_count + out_valid - load)
        with m.If(out_valid):
            m.d.sync += q_tail.eq(Mux(q_tail == queue_depth - 1, 0, q_tail + 1))
        with m.If(load):
            m.d.sync += [
                q_head.eq(Mux(q_head == queue_depth - 1, 0, q_head + 1)),
                self.o_stream.payload.eq(q_rd.data),
                self.o_stream.valid.eq(1),
            ]
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        return m


class IntLayerNorm(wiring.Component):
    """Integer LayerNorm normalization of rows of ``hidden`` elements (``layernorm_int``,
    ``shift=0``), streaming, one element per beat.

    Parameters
    ----------
    hidden : int
        Row length ``N`` (>= 1): every row of the input stream has exactly ``N`` elements.
    in_width : int
        Width of the signed input elements (default ``RESIDUAL_BITS``), at least 2; the row
        statistics must stay within the reference's range (``var < 2**62``).
    frac_bits : int
        Extra fractional bits ``F`` of the reciprocal ``floor(2**(31+F)/std)`` (default
        ``LN_FRAC_BITS``), 0..31.
    multipliers : ``"dsp"`` or ``"lut"``
        How the partial products of ``u*u`` and ``y*f`` are built
        (:func:`bertcore.rtl.common.multiply`): ``"dsp"`` (default) with the ``*`` operator,
        which synthesis maps onto DSP blocks, or ``"lut"`` by shift and add in LUT logic, for
        devices short of DSP blocks. Results, latency and throughput are the same.

    Members
    -------
    i_stream : ``In(stream.Signature(StructLayout({"data": signed(in_width), "last": 1})))``
        Input elements, row by row; ``last`` marks the ``N``-th element of each row.
    o_stream : ``Out(stream.Signature(StructLayout({"data": signed(32), "last": 1})))``
        Normalized elements ``out`` in ``[-2**30, 2**30]``, in input order; ``last`` on the
        ``N``-th element of each row.
    error : ``Out(1)``
        One-cycle pulse when a malformed row is detected (see below).

    Protocol errors
    ---------------
    A row is the run of beats up to and including one with ``last`` set. A row of the wrong length
    is dropped whole (nothing of it is output) and ``error`` pulses once, the cycle after the beat
    that reveals it: an early ``last`` (row shorter than ``N``), or an ``N``-th beat without
    ``last`` (row longer than ``N``). In the latter case the following beats, up to and including
    the next one with ``last``, are accepted and discarded; the unit then continues with the next
    row. Rows before and after a dropped row are unaffected.

    Latency and throughput
    ----------------------
    :attr:`stats_cycles` ``= 2*in_width + root_width + frac_bits + 37`` is the time the serial
    statistics engine spends on one row: division ``in_width`` cycles, multiplication
    ``in_width``, square root ``root_width = ceil(var_width/2)``, reciprocal ``32 + frac_bits``,
    plus 5 (latching, rounding (two cycles), the variance subtraction, the hand-over). With an
    always-valid input and an always-ready output:

    * throughput: exactly one row per :attr:`row_period` ``= max(N, stats_cycles)`` cycles in
      steady state, each row's ``N`` outputs on consecutive cycles. So one element per cycle when
      ``N >= stats_cycles`` (with 22-bit inputs and ``F = 16``, ``stats_cycles`` is 120 at
      ``N = 8..16`` and 123 at ``N = 384``, where the unit streams at full rate); for smaller
      ``N`` the statistics engine limits the rate to ``N`` elements per ``stats_cycles`` cycles
      (the input then stalls once the buffer is full);
    * latency :attr:`latency` ``= stats_cycles + square latency + product latency + 8`` (135 at
      ``N = 8..16`` and 138 at ``N = 384`` with 22-bit inputs and ``F = 16``): cycles from the
      handshake of a row's last input element to the handshake of its first output element, when
      the unit was idle.

    The row buffer holds :attr:`buffer_depth` elements (774 at ``N = 384``).

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range, or ``multipliers`` is not ``"dsp"`` or ``"lut"``.
    """

    #: Width of the signed output: ``-2**30 <= out <= 2**30`` needs 31 bits and a sign.
    OUT_WIDTH = (1 << 30).bit_length() + 1

    def __init__(self, hidden, *, in_width=RESIDUAL_BITS, frac_bits=LN_FRAC_BITS,
                 multipliers="dsp"):
        _check_int("hidden", hidden, 1)
        _check_int("in_width", in_width, 2)
        _check_int("frac_bits", frac_bits, 0, 31)
        check_multipliers(multipliers)
        self._multipliers = multipliers
        self._hidden = hidden
        self._in_width = in_width
        self._frac_bits = frac_bits

        span = (1 << in_width) - 1                       # max(x) - min(x) within a row
        # S1 = sum(u) <= N*span; S2 = sum(u*u) <= N*span**2.
        self._sum_width = (hidden * span).bit_length()
        self._sq_sum_width = (hidden * span * span).bit_length()
        # var = sum((x - mean_real)**2) + N*(mean_real - mean)**2 <= N*span**2/4 + N/4
        # (Popoviciu's bound on the variance of values within a range, and |mean rounding| <= 1/2).
        var_max = hidden * (span * span + 1) // 4
        if var_max >= 1 << 62:
            raise ValueError(
                f"in_width {in_width} with hidden {hidden} allows a variance up to {var_max}, "
                f"beyond the 2**62 the reference kernel handles")
        self._var_width = var_max.bit_length()
        self._root_width = (self._var_width + 1) // 2
        # f = floor(2**(31+F) / std) <= 2**(31+F) (std >= 1)
        self._recip_width = 32 + frac_bits

        self._i_layout = data.StructLayout({"data": signed(in_width), "last": 1})
        self._o_layout = data.StructLayout({"data": signed(self.OUT_WIDTH), "last": 1})
        super().__init__({
            "i_stream": In(stream.Signature(self._i_layout)),
            "o_stream": Out(stream.Signature(self._o_layout)),
            "error": Out(1),
        })

    @property
    def hidden(self):
        return self._hidden

    @property
    def in_width(self):
        return self._in_width

    @property
    def frac_bits(self):
        return self._frac_bits

    @property
    def multipliers(self):
        """How the multipliers are built: ``"dsp"`` or ``"lut"``."""
        return self._multipliers

    @property
    def var_width(self):
        """Width of ``var = sum(y*y)`` (derived from ``hidden`` and ``in_width``)."""
        return self._var_width

    @property
    def root_width(self):
        """Width of ``isqrt(var)``: the number of square-root cycles."""
        return self._root_width

    @property
    def stats_cycles(self):
        """Cycles the statistics engine spends per row (see the class documentation)."""
        return 2 * self._in_width + self._root_width + self._frac_bits + 37

    @property
    def latency(self):
        """Cycles from the last input handshake of a row to its first output handshake (idle unit,
        ready output)."""
        # input register, squarer, accumulator, hold register; the statistics engine (latch to
        # hand-over); buffer read and its register, subtraction, multiplier, output queue and
        # output register
        return (1 + self._square_latency() + 2) + self.stats_cycles \
            + (3 + self._product_latency() + 2)

    @property
    def buffer_depth(self):
        """Entries of the row buffer (a circular queue of elements).

        The first element of a row is read ``3 + square latency + stats_cycles`` cycles after
        the row's last one was written (input register, squarer, accumulator, hold register, the
        statistics engine), while the next rows stream in at one element per cycle at most every
        ``max(N, stats_cycles)`` cycles per row: ``N + max(N, stats_cycles) + square latency + 3``
        entries let the input run without a bubble (one fewer does not, at ``N == stats_cycles``).
        """
        return self._hidden + max(self._hidden, self.stats_cycles) + self._square_latency() + 3

    @property
    def row_period(self):
        """Cycles per row in steady state (always-valid input, always-ready output)."""
        return max(self._hidden, self.stats_cycles)

    def _square_latency(self):
        # u*u, u unsigned in_width bits
        return _product_latency(unsigned(self._in_width), None, 2 * self._in_width, square=True)

    def _product_latency(self):
        # y*f, y = x - mean signed in_width+1 bits, f unsigned 32+F bits
        return _product_latency(signed(self._in_width + 1), unsigned(self._recip_width),
                                self._product_width())

    def _product_width(self):
        # |y*f| <= 2**(31+F): two's complement in 33+F bits
        return 33 + self._frac_bits

    def elaborate(self, platform):
        m = Module()

        # The row buffer, a circular queue of elements: pass 1 writes a row into it while the
        # statistics of the previous row are computed and the one before is read back by pass 2.
        m.submodules.buffer = buffer = BlockRam(self._in_width, self.buffer_depth)
        m.submodules.intake = intake = _RowIntake(
            hidden=self._hidden, in_width=self._in_width, depth=self.buffer_depth,
            sum_width=self._sum_width, sq_sum_width=self._sq_sum_width,
            multipliers=self._multipliers)
        m.submodules.statistics = statistics = _Statistics(
            hidden=self._hidden, in_width=self._in_width, frac_bits=self._frac_bits,
            sum_width=self._sum_width, sq_sum_width=self._sq_sum_width,
            var_width=self._var_width, root_width=self._root_width)
        m.submodules.normalizer = normalizer = _Normalizer(
            hidden=self._hidden, in_width=self._in_width, frac_bits=self._frac_bits,
            depth=self.buffer_depth, product_width=self._product_width(),
            multipliers=self._multipliers)
        assert normalizer.product_latency == self._product_latency()

        wiring.connect(m, wiring.flipped(self.i_stream), intake.i_stream)
        m.d.comb += [buffer.w_addr.eq(intake.buffer.addr), buffer.w_data.eq(intake.buffer.data),
                     buffer.w_en.eq(intake.buffer.en)]
        wiring.connect(m, intake.sums, statistics.sums)
        wiring.connect(m, statistics.params, normalizer.params)
        # (the normalizer reads a row only after its statistics, long after its last write)
        m.d.comb += [buffer.r_addr.eq(normalizer.buffer.addr),
                     buffer.r_en.eq(normalizer.buffer.en), buffer.o_en.eq(1),
                     normalizer.buffer.data.eq(buffer.r_data)]
        wiring.connect(m, normalizer.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [
            intake.freed.eq(normalizer.freed),
            self.error.eq(intake.error),
        ]
        return m
