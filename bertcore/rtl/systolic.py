"""Output-stationary integer GEMM systolic array: ``C = A·B + bias`` one tile at a time.

Dataflow
--------
The array has ``rows × cols`` processing elements (PEs). PE ``(i, j)`` owns the output
``C[i, j]`` of the current tile and accumulates it over the reduction index ``k`` (output
stationary). One operand beat carries one ``k``: the A beat is column ``k`` of the A tile
(``rows`` values), the B beat is row ``k`` of the B tile (``cols`` values). A values travel
right along the PE rows and B values down the PE columns; row ``i`` of A is delayed by ``i``
registers and column ``j`` of B by ``j`` registers before the array (the skew), so that
``A[i, k]`` and ``B[k, j]`` meet in PE ``(i, j)``. A 3-bit control word (valid, first, last)
travels with them along the anti-diagonals (PE ``(i, j)`` sees it ``i + j`` cycles after PE
``(0, 0)``, so all PEs of a diagonal share one chain of control registers), so every PE knows
when an operand pair is real, when a tile starts (the accumulator is overwritten instead of
added to) and when it ends.

When a PE has accumulated the last ``k`` of a tile it copies the finished sum into its
*result* register (the second buffer of the accumulator), so the next tile may accumulate in the
same PE from the very next cycle on. Row ``i`` of a tile is complete when PE ``(i, cols-1)``, the
last one of the row that the wavefront reaches, has copied its sum; that PE's capture flag then
selects row ``i`` of result registers into an output queue (one row per cycle, rows in order, a
one-hot AND-OR multiplexer). The bias of the tile is added to each row as it leaves the queue.
The queue space of a tile (``rows`` rows) is reserved when the tile's last operand beat is
accepted, so the drain never has to wait: the array itself never stalls, it only receives
bubbles when an operand stream is not valid, and a tile's last beat waits (``ready`` low) while
the queue is full or the previous tile's result registers are still being read.

Registers: per PE the operands (``a_shape + b_shape`` bits), the product, the accumulator and
the result register (``acc_shape`` each); for the control ``rows + cols`` words of 3 bits and
as many done bits (one of each per anti-diagonal, one more stage each); the skew holds
``rows·(rows-1)/2`` A values and ``cols·(cols-1)/2`` B values. The queue
(:class:`amaranth.lib.fifo.SyncFIFOBuffered`) is a memory of ``queue_depth - 1`` rows of
``cols·acc_shape + 1`` bits (block RAM) plus its read register.

Timing (cycle ``e`` = the cycle in which a tile's last operand beat is transferred)
-----------------------------------------------------------------------------------
* PE ``(i, j)`` holds the last beat in its operand registers at ``e+1+i+j``, in its product
  register at ``e+2+i+j``, the finished sum in its accumulator at ``e+3+i+j`` and in its result
  register from ``e+4+i+j`` (the accumulator may take the next tile's first product then).
* Row ``i`` of the results enters the queue at ``e + cols + 3 + i``; the output beat of row ``i``
  is valid at ``e + cols + 6 + i`` (if the bias beat is there and ``c`` was not stalled).
* Result registers of a tile are read until ``e + cols + 2 + rows``: the next tile may end
  (deliver its last beat) ``max(rows, cols)`` cycles after this one at the earliest, so the
  steady-state period of tiles with ``K`` beats is ``max(K, rows, cols)`` cycles. Beats that do
  not end a tile are never held back.
"""

from amaranth.hdl import Cat, Module, Mux, Shape, ShapeCastable, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .common import check_int, less, rejecting
from .multiplier import Multiplier, mult18x18d_operand_shapes, uses_mult18x18d

__all__ = ["SystolicArray", "operand_layout", "shape_range", "shape_for_range"]


def shape_range(shape):
    """Return ``(lo, hi)``, the range of values of an integer ``shape``."""
    shape = Shape.cast(shape)
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def shape_for_range(lo, hi):
    """Return the narrowest shape holding every integer of ``[lo, hi]``.

    Unsigned when ``lo >= 0``, else signed.
    """
    if lo >= 0:
        return unsigned(max(hi.bit_length(), 1))
    return signed(max((-lo - 1).bit_length(), hi.bit_length()) + 1)


def operand_layout(shape, lanes):
    """Payload layout of a beat of ``lanes`` values of ``shape`` plus a ``last`` flag.

    The layout of :attr:`SystolicArray.a` (``lanes = rows``), :attr:`SystolicArray.b` and
    :attr:`SystolicArray.c` (``lanes = cols``).
    """
    return data.StructLayout({"data": data.ArrayLayout(shape, lanes), "last": unsigned(1)})


def _check_shape(name, value):
    if not isinstance(value, (Shape, ShapeCastable, int, range)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a shape, not {value!r}")
    shape = Shape.cast(value)
    if shape.width < 1:
        raise ValueError(f"{name} must be at least 1 bit wide, not {shape!r}")
    return shape


#: Control word travelling with the operands through the array.
_CONTROL = data.StructLayout({
    "valid": unsigned(1),   # the operand pair is a real beat (not a bubble)
    "first": unsigned(1),   # first k of a tile: the accumulator restarts from the product
    "last":  unsigned(1),   # last k of a tile: the finished sum goes to the result register
})


class _ProcessingElement(wiring.Component):
    """One multiply-accumulate cell of :class:`SystolicArray` (4 pipeline stages).

    Its control arrives from the array's per-diagonal control registers (every PE of an
    anti-diagonal ``i + j`` sees the same control word in the same cycle): ``control`` is the
    word of the beat whose product is in the product register (stage 2), ``done`` says that the
    accumulator holds a finished sum (stage 3).

    Parameters
    ----------
    a_shape, b_shape, product_shape, acc_shape : Shape
        Shapes of the operands, of their product and of the accumulator.

    Members
    -------
    a_in, b_in : In
        Operands from the left (A) and from above (B).
    a_out, b_out : Out
        The same, one cycle later (the stage-1 registers), to the right and below.
    control : In(_CONTROL)
        The control word of the product register's beat.
    done : In(1)
        The accumulator holds the finished sum of a tile (for this cycle only).
    result : Out(acc_shape)
        The sum of the last finished tile.
    """

    #: Cycles from a tile's last beat in ``a_in``/``b_in`` to ``result`` holding the tile.
    LATENCY = 4

    def __init__(self, a_shape, b_shape, product_shape, acc_shape):
        self._product_shape = product_shape
        try:
            mult18x18d_operand_shapes(a_shape, b_shape)
            self._dsp_fits = True
        except ValueError:
            self._dsp_fits = False
        super().__init__({
            "a_in": In(a_shape),
            "b_in": In(b_shape),
            "control": In(_CONTROL),
            "done": In(1),
            "a_out": Out(a_shape),
            "b_out": Out(b_shape),
            "result": Out(acc_shape),
        })

    def elaborate(self, platform):
        m = Module()

        # stage 1: operand registers (also the links to the neighbours)
        a = Signal.like(self.a_in, name="a", reset_less=True)
        b = Signal.like(self.b_in, name="b", reset_less=True)
        m.d.sync += [a.eq(self.a_in), b.eq(self.b_in)]
        m.d.comb += [self.a_out.eq(a), self.b_out.eq(b)]

        # stage 2: product register; the multiplier sits between two registers. On ECP5 they
        # are the input and output registers of its MULT18X18D: the block's input registers
        # load a_in/b_in like the operand registers above, which stay in the fabric as the
        # links to the neighbours, so no fabric path runs through the multiplier. Elsewhere the
        # multiplier reads the operand registers (one copy of them) and registers the product.
        product = Signal(self._product_shape)
        if self._dsp_fits:
            on_dsp = uses_mult18x18d(platform)
            m.submodules.multiplier = multiplier = Multiplier(
                self.a_in.shape(), self.b_in.shape(), input_register=on_dsp,
                output_register=True)
            m.d.comb += [
                multiplier.a.eq(self.a_in if on_dsp else a),
                multiplier.b.eq(self.b_in if on_dsp else b),
                product.eq(multiplier.p),
            ]
        else:
            # operands wider than one DSP: a plain product register (synthesis splits it)
            product_reg = Signal(self._product_shape, reset_less=True)
            m.d.sync += product_reg.eq(a * b)
            m.d.comb += product.eq(product_reg)

        # stage 3: accumulate; the first k of a tile restarts from the product (the adder's
        # accumulator operand gated to 0, which the adder's LUTs absorb, rather than a
        # multiplexer after the adder)
        acc = Signal.like(self.result, name="acc", reset_less=True)
        with m.If(self.control.valid):
            m.d.sync += acc.eq(Mux(self.control.first, 0, acc) + product)

        # stage 4: copy a finished sum to the result register; the next tile may already
        # accumulate in acc during this cycle
        result = Signal.like(self.result, name="result", reset_less=True)
        with m.If(self.done):
            m.d.sync += result.eq(acc)
        m.d.comb += self.result.eq(result)
        return m


class SystolicArray(wiring.Component):
    """Output-stationary ``rows × cols`` systolic array computing ``C = A·B + bias`` per tile.

    A tile is ``C[rows, cols] = A[rows, K] · B[K, cols] + bias[cols]`` for any ``1 <= K <=
    k_max``. The operands arrive as ``K`` beats on ``a`` and ``b`` (accepted together, one ``k``
    per cycle), the bias as one beat per tile on ``bias``, and the result leaves on ``c`` as
    ``rows`` beats, one row of ``cols`` sums each, in row order. Tiles follow each other without
    gaps: the next tile's operands are accepted while the previous tile drains. See the module
    docstring for the dataflow.

    Arithmetic is exact: the accumulator width is derived from ``k_max`` and the operand
    shapes (:attr:`acc_shape` holds ``k_max`` worst-case products) or from the guaranteed
    ``acc_range``, and the output width from the accumulator and the bias (:attr:`out_shape`). The products are
    ``a_shape × b_shape`` (e.g. ``unsigned(8)`` softmax probabilities times ``signed(8)`` values).

    Latency and throughput
    ----------------------
    ``c.valid`` is a register; ``a.ready`` depends combinationally on ``b.valid`` and ``b.ready``
    on ``a.valid`` (the two operand streams are joined), ``bias.ready`` on ``c.ready``.

    * The first output beat of a tile is valid :attr:`latency` ``= cols + 6`` cycles after the
      cycle in which its last operand beat is transferred; the other rows follow one per cycle.
    * A single tile takes ``K + rows + cols + 5`` cycles from its first operand beat to its last
      output beat (streams never stalling), see :meth:`cycles`.
    * Back to back, a tile of ``K`` beats occupies ``max(K, rows, cols)`` cycles
      (:attr:`tile_interval` is the ``max(rows, cols)`` floor): with ``K >= max(rows, cols)``
      the array does ``rows·cols`` multiply-accumulates every cycle.

    Parameters
    ----------
    rows : int
        Rows of the array (rows of the A and C tiles), ``>= 1``.
    cols : int
        Columns of the array (columns of the B and C tiles), ``>= 1``.
    k_max : int
        Longest reduction (beats per tile) the accumulator must hold, ``>= 1``.
    a_shape, b_shape : shape
        Shapes of the A and B operands, ``signed(8)`` by default.
    bias_shape : shape
        Shape of a bias value, ``signed(32)`` by default.
    bias : bool
        ``True`` (default): the ``bias`` stream. ``False``: no ``bias`` member, the rows leave
        without a bias, and ``out_shape`` still holds a ``bias_shape`` value added to them (a
        user that adds the bias downstream: the encoder core's write-back, whose array may
        carry the tiles of two jobs with different biases).
    acc_range : (int, int) or None
        ``(lo, hi)``, ``lo <= 0 <= hi``: the range the sum of every tile is guaranteed to lie
        in, narrower than ``k_max`` worst-case products, for a user whose operands never reach
        that worst case together (the encoder core: int8 projections, and probabilities whose
        row sums to at most ``2**B``). The accumulators add modulo ``2**width``, so partial
        sums (and single products) may leave the range; a final sum outside it wraps.
        ``None`` (default): the ``k_max`` worst case.
    out_shape : shape or None
        Shape of an output value; ``None`` (default) takes the narrowest shape that holds
        every ``A·B + bias`` of a tile of ``k_max`` beats. A given shape must be that wide.

    Members
    -------
    a : In(stream.Signature(StructLayout({"data": ArrayLayout(a_shape, rows), "last": 1})))
        Column ``k`` of the A tile (``data[i] = A[i, k]``); ``last`` on ``k = K-1``.
    b : In(stream.Signature(StructLayout({"data": ArrayLayout(b_shape, cols), "last": 1})))
        Row ``k`` of the B tile (``data[j] = B[k, j]``); ``last`` on ``k = K-1``. A beat of ``a``
        and a beat of ``b`` are transferred together. ``a``'s ``last`` ends the tile; ``b``'s
        must agree with it (a disagreement sets ``error``).
    bias : In(stream.Signature(ArrayLayout(bias_shape, cols)))
        One beat per tile, in tile order: ``data[j]`` is added to column ``j`` of every row.
        It is read while the tile's rows leave (and transferred with its last row), so it may
        arrive after the operands; the array only waits for it once the output queue is full.
    c : Out(stream.Signature(StructLayout({"data": ArrayLayout(out_shape, cols), "last": 1})))
        Row ``i`` of the C tile per beat, ``i = 0 .. rows-1``; ``last`` on row ``rows-1``.
    error : Out(1)
        Sticky (until reset): set when ``a`` and ``b`` disagree on ``last`` or a tile has more
        than ``k_max`` beats (its sums may then have wrapped).

    Raises
    ------
    TypeError
        If ``rows``, ``cols`` or ``k_max`` is not an integer, a shape is not a shape, or
        ``acc_range`` not a pair of integers.
    ValueError
        If ``rows``, ``cols`` or ``k_max`` is below 1, a shape has no bits, ``acc_range`` does
        not contain 0, or ``out_shape`` is too narrow for the sums plus the bias.
    """

    def __init__(self, rows, cols, *, k_max, a_shape=signed(8), b_shape=signed(8),
                 bias_shape=signed(32), bias=True, acc_range=None, out_shape=None):
        with rejecting(self):
            check_int("rows", rows)
            check_int("cols", cols)
            check_int("k_max", k_max)
            a_shape = _check_shape("a_shape", a_shape)
            b_shape = _check_shape("b_shape", b_shape)
            bias_shape = _check_shape("bias_shape", bias_shape)
            product_lo, product_hi, acc_lo, acc_hi = self._sums(k_max, a_shape, b_shape,
                                                                acc_range)
            out_shape = self._check_out_shape(out_shape, k_max, a_shape, b_shape, bias_shape,
                                              (acc_lo, acc_hi))

        self._rows = rows
        self._cols = cols
        self._k_max = k_max
        self._a_shape = a_shape
        self._b_shape = b_shape
        self._bias_shape = bias_shape
        self._product_shape = shape_for_range(product_lo, product_hi)
        self._acc_shape = shape_for_range(acc_lo, acc_hi)
        self._out_shape = out_shape
        self._queue_depth = self._min_queue_depth(rows, cols, self.latency)
        self._has_bias = bool(bias)

        members = {
            "a": In(stream.Signature(operand_layout(a_shape, rows))),
            "b": In(stream.Signature(operand_layout(b_shape, cols))),
            "c": Out(stream.Signature(operand_layout(out_shape, cols))),
            "error": Out(1),
        }
        if bias:
            members["bias"] = In(stream.Signature(data.ArrayLayout(bias_shape, cols)))
        super().__init__(members)

    @staticmethod
    def _sums(k_max, a_shape, b_shape, acc_range=None):
        # Size the arithmetic by the operands: the product range is spanned by the corners of
        # the operand ranges; a tile sums at most k_max products, or stays in acc_range.
        a_lo, a_hi = shape_range(a_shape)
        b_lo, b_hi = shape_range(b_shape)
        corners = [a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi]
        product_lo, product_hi = min(corners), max(corners)
        if acc_range is None:
            return (product_lo, product_hi,
                    k_max * min(product_lo, 0), k_max * max(product_hi, 0))
        if (not isinstance(acc_range, tuple) or len(acc_range) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in acc_range)):
            raise TypeError(f"acc_range must be a pair of integers or None, not {acc_range!r}")
        acc_lo, acc_hi = acc_range
        if not acc_lo <= 0 <= acc_hi:
            raise ValueError(f"acc_range must be (lo, hi) with lo <= 0 <= hi, not {acc_range!r}")
        return product_lo, product_hi, acc_lo, acc_hi

    @classmethod
    def _check_out_shape(cls, out_shape, k_max, a_shape, b_shape, bias_shape, acc):
        # The output holds any accumulator plus any bias.
        acc_lo, acc_hi = acc
        bias_lo, bias_hi = shape_range(bias_shape)
        out_lo, out_hi = acc_lo + bias_lo, acc_hi + bias_hi
        needed = shape_for_range(out_lo, out_hi)
        if out_shape is None:
            return needed
        out_shape = _check_shape("out_shape", out_shape)
        lo, hi = shape_range(out_shape)
        if not (lo <= out_lo and out_hi <= hi):
            raise ValueError(
                f"out_shape {out_shape!r} is too narrow for k_max={k_max} products of "
                f"{a_shape!r} by {b_shape!r} plus a {bias_shape!r} bias: the sums span "
                f"[{out_lo}, {out_hi}], which needs {needed!r}")
        return out_shape

    #: Cycles from a PE's control word to its result register (operand, product, accumulator,
    #: result).
    PE_LATENCY = _ProcessingElement.LATENCY
    #: Cycles from the result row entering the output queue to the output beat being valid
    #: (memory write, registered read, bias adder register).
    DRAIN_LATENCY = 3

    @staticmethod
    def _min_queue_depth(rows, cols, latency):
        # Credits of a tile are taken in its end cycle e; row i gives its slot back when it
        # leaves the queue, which the credit counter shows from e + latency + i on. With tiles
        # ending every max(rows, cols) cycles and a consumer that is always ready, the tile that
        # ended j periods earlier still holds the rows it has not given back; the depth covers
        # all of them plus the new tile's rows, so credits never hold back free-flowing tiles.
        interval = max(rows, cols)
        depth, j = rows, 1
        while j * interval - (latency - 1) < rows:
            depth += rows - max(0, j * interval - (latency - 1))
            j += 1
        return max(depth, 3)          # the queue's memory holds depth - 1 >= 2 rows

    @property
    def rows(self):
        return self._rows

    @property
    def cols(self):
        return self._cols

    @property
    def k_max(self):
        return self._k_max

    @property
    def a_shape(self):
        return self._a_shape

    @property
    def b_shape(self):
        return self._b_shape

    @property
    def bias_shape(self):
        return self._bias_shape

    @property
    def product_shape(self):
        """Shape of one PE product (exact range of ``a_shape × b_shape``)."""
        return self._product_shape

    @property
    def acc_shape(self):
        """Shape of the accumulators: holds any sum of ``k_max`` products."""
        return self._acc_shape

    @property
    def out_shape(self):
        return self._out_shape

    @property
    def queue_depth(self):
        """Rows of results the output queue holds."""
        return self._queue_depth

    @property
    def latency(self):
        """Cycles from the transfer of a tile's last operand beat to its first output beat."""
        # the last beat reaches PE (0, cols-1)'s result register, then the queue and the adder
        return self.PE_LATENCY + (self._cols - 1) + self.DRAIN_LATENCY

    @property
    def tile_interval(self):
        """Fewest cycles between the last operand beats of consecutive tiles."""
        return max(self._rows, self._cols)

    def cycles(self, k, tiles=1):
        """Cycles from the first operand beat to the last output beat of ``tiles`` tiles.

        Each tile has ``k`` beats; no stream stalls. The count is
        ``k + (tiles-1)·max(k, rows, cols) + latency + rows - 1``, i.e.
        ``k + rows + cols + 5`` for one tile.
        """
        check_int("k", k)
        check_int("tiles", tiles)
        return (k + (tiles - 1) * max(k, self.tile_interval) + self.latency + self._rows - 1)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        row_layout = operand_layout(self._acc_shape, cols)
        # The output queue: a memory of queue_depth - 1 rows (block RAM) behind a registered
        # read port, plus that register; a row written into an empty queue is readable two
        # cycles later. Its writer has no `ready`: the credits below reserve a tile's rows
        # before they are written, so `w_rdy` is always high when a row arrives.
        m.submodules.queue = queue = SyncFIFOBuffered(width=row_layout.size,
                                                      depth=self._queue_depth)
        queue_w = queue.w_stream
        queue_r = queue.r_stream
        queue_row = data.View(row_layout, queue_w.payload)
        row = data.View(row_layout, queue_r.payload)

        # -- Input: join the A and B beats; hold a tile's last beat until the array can end it --
        last = self.a.payload.last
        can_end = Signal(init=self._queue_depth >= rows)     # (registered, below)
        fire = Signal()
        m.d.comb += [
            self.a.ready.eq(self.b.valid & (~last | can_end)),
            self.b.ready.eq(self.a.valid & (~last | can_end)),
            fire.eq(self.a.valid & self.a.ready),
        ]
        end = fire & last

        # The result registers of a tile are read for rows cycles after its end wavefront
        # reaches the last column: the next end must come tile_interval cycles later.
        interval = self.tile_interval
        since_end = Signal(range(interval + 1), init=interval)
        since_next = Mux(end, 1, Mux(since_end != interval, since_end + 1, since_end))
        m.d.sync += since_end.eq(since_next)

        # Output queue credits: a tile reserves its rows when it ends, a row gives its slot back
        # when it leaves the queue.
        free = Signal(range(self._queue_depth + 1), init=self._queue_depth)
        released = Signal()
        m.d.sync += free.eq(free - Mux(end, rows, 0) + released)
        # can_end is a register, loaded with what the two compares give for the counters' next
        # values: the operand streams' ready (and through it the enables of the feeder's operand
        # slice, ~140 flip-flops) reads flip-flops, not two counters compared (the slice's
        # enables were over 8 ns in every ULX3S placement at 125 MHz). The credit compare of
        # the next value, free - end*rows + released >= rows, is four compares of free itself
        # picked by end and released (the sum before the compare, behind the operands' valid
        # through end, was 8.2 ns in a placement at 125 MHz)
        room = {(e, r): ~less(free, (1 + e) * rows - r) for e in (0, 1) for r in (0, 1)}
        credit = Mux(end, Mux(released, room[1, 1], room[1, 0]),
                     Mux(released, room[0, 1], room[0, 0]))
        m.d.sync += can_end.eq((since_next == interval) & credit)

        # Tile framing and the control word entering PE (0, 0).
        in_tile = Signal()              # a beat of the current tile was already transferred
        beats = Signal(range(self._k_max + 1))
        with m.If(fire):
            m.d.sync += in_tile.eq(~last)
            with m.If(last):
                m.d.sync += beats.eq(0)
            with m.Elif(beats != self._k_max):
                m.d.sync += beats.eq(beats + 1)
            with m.If((self.b.payload.last != last) | (beats == self._k_max)):
                m.d.sync += self.error.eq(1)
        control = Signal(_CONTROL)
        m.d.comb += [control.valid.eq(fire), control.first.eq(~in_tile), control.last.eq(last)]

        # -- Skew: row i of A waits i cycles, column j of B waits j cycles --------------------
        def skew(value, delay, name):
            for stage in range(delay):
                delayed = Signal.like(value, name=f"{name}_{stage}", reset_less=True)
                m.d.sync += delayed.eq(value)
                value = delayed
            return value

        a_left = [skew(self.a.payload.data[i], i, f"a_skew_{i}") for i in range(rows)]
        b_top = [skew(self.b.payload.data[j], j, f"b_skew_{j}") for j in range(cols)]

        # -- Control: one register chain along the anti-diagonals. The control word reaches
        # PE (i, j) i + j cycles after PE (0, 0), the same cycle for every PE of a diagonal, so
        # the PEs of a diagonal share its registers: ctl[d] is the stage-1 control word of
        # diagonal d (the operands' cycle), ctl[d + 1] its stage-2 word (the product's), done[d]
        # says that diagonal d's accumulators hold finished sums. (Per-PE copies, passed right
        # along the rows, are equal flip-flops with equal inputs: yosys's opt_merge folds them
        # into these chains anyway, while Verilator kept and evaluated all seven bits per PE.)
        diagonals = rows + cols - 1
        ctl = []
        value = control
        for d in range(diagonals + 1):
            reg = Signal(_CONTROL, name=f"ctl_{d}")
            m.d.sync += reg.eq(value)
            ctl.append(reg)
            value = reg
        done = []
        for d in range(diagonals + 1):
            reg = Signal(name=f"done_{d}")
            m.d.sync += reg.eq(ctl[d + 1].valid & ctl[d + 1].last if d < diagonals
                               else done[d - 1])
            done.append(reg)

        # -- The PE grid: A flows right, B flows down ----------------------------------------
        pes = [[None] * cols for _ in range(rows)]
        for i in range(rows):
            for j in range(cols):
                pe = _ProcessingElement(self._a_shape, self._b_shape, self._product_shape,
                                        self._acc_shape)
                m.submodules[f"pe_{i}_{j}"] = pes[i][j] = pe
                m.d.comb += [
                    pe.a_in.eq(a_left[i] if j == 0 else pes[i][j - 1].a_out),
                    pe.b_in.eq(b_top[j] if i == 0 else pes[i - 1][j].b_out),
                    pe.control.eq(ctl[i + j + 1]),
                    pe.done.eq(done[i + j]),
                ]

        # -- Drain: row i of result registers enters the queue in the cycle after PE
        # (i, cols-1) copied its sum (done of its diagonal one cycle later); tile_interval keeps
        # these selects one-hot.
        select = [done[i + cols] for i in range(rows)]
        m.d.comb += [
            queue_w.valid.eq(Cat(select).any()),
            queue_row.last.eq(select[rows - 1]),
        ]
        for j in range(cols):
            chosen = Mux(select[0], pes[0][j].result, 0)
            for i in range(1, rows):
                chosen = chosen | Mux(select[i], pes[i][j].result, 0)
            m.d.comb += queue_row.data[j].eq(chosen)

        # -- Output: add the tile's bias to each row leaving the queue (output register) ------
        advance = ~self.c.valid | self.c.ready
        if self._has_bias:
            bias = self.bias.payload
            m.d.comb += [queue_r.ready.eq(self.bias.valid & advance),
                         self.bias.ready.eq(queue_r.valid & row.last & advance)]
        else:
            bias = [0] * cols
            m.d.comb += queue_r.ready.eq(advance)
        m.d.comb += released.eq(queue_r.valid & queue_r.ready)
        with m.If(released):
            m.d.sync += [
                self.c.valid.eq(1),
                self.c.payload.last.eq(row.last),
                *(self.c.payload.data[j].eq(row.data[j] + bias[j]) for j in range(cols)),
            ]
        with m.Elif(self.c.ready):
            m.d.sync += self.c.valid.eq(0)
        return m
