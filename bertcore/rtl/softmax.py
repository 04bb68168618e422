"""Integer softmax along a row of attention scores: :class:`IntSoftmax`.

The unit implements :func:`bertcore.quant.kernels.int_softmax_int` row by row, bit for bit::

    d     = max(x - rowmax, 30*x0)                 z = floor(d / x0)  (0..30)
    p     = d - x0*z                               poly = max((p + b)*p + c, 0)
    exp16 = min(floor((poly*m + 2**(s-1)) / 2**s), 2**16 - 1)        s = e - 30 + z
    f     = floor(2**32 / sum(exp16))              y = floor(exp16 * f / 2**(32 - output_bits))

(``y`` saturated to ``2**output_bits - 1`` when ``saturate_output``).

How it is computed
------------------
Every row passes through four engines, each working on a different row at the same time:

* **A, input**: accepts the scores of a row (one per cycle), writes them to a row buffer and keeps
  the running maximum;
* **B, exponential**: reads the row back, computes ``exp16`` in an 18-stage pipeline (a five-step
  restoring division ladder gives ``z`` and ``p``; the multipliers have registered inputs and
  outputs), writes ``exp16`` to a second buffer and sums the row;
* **V, divider**: ``f = floor(2**32 / sum)`` by restoring division, one quotient bit per cycle;
* **D, normalization**: reads ``exp16`` back and streams ``y`` out through a pipelined multiplier.

Each engine is built by its own method of :class:`IntSoftmax` (``_build_input``,
``_build_exponential``, ``_build_divider``, ``_build_normalization``); they share only the
slot table (:class:`_SlotTable`) and the two row buffers, each buffer port driven by one engine.
They are methods rather than components because all four write the table's slot states.

The rows rotate through :data:`IntSoftmax.SLOTS` slots. A slot is a row of
``2**ceil(log2(max_seq))`` entries in each of two memories (one write and one read port each,
nothing but a register behind the read port): the scores (written by A, read by B; a
:class:`~bertcore.rtl.blockram.BlockRam`, read through its output register) and the exp16s
(written by B, read by D; a :class:`~amaranth.lib.memory.Memory`). A slot is in one of four states:
``FREE`` (engine A may fill it), ``SCORES`` (waiting for or being read by engine B), ``EXPS``
(waiting for the divider) and ``NORM`` (waiting for or being read by engine D, which frees it).
Each engine visits the slots in order.

The divider needs ``sum >= 2**(SOFTMAX_EXP_BITS - 2)``: the row maximum alone contributes
``exp16(0) = round(c*m / 2**(e-30))``, which the legal constants keep near ``2**15`` (see
:meth:`IntSoftmax.check_constants`). Then ``f <= 2**18`` has :data:`IntSoftmax.QUOTIENT_BITS`
bits and the division takes that many cycles.
"""

import math
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from bertcore.quant.kernels import (
    EXP_N, EXP_X0, EXP_ZMAX, REQ_M_BITS, REQ_MAX_SHIFT, SOFTMAX_EXP_BITS, SOFTMAX_MAX_BIT,
    SOFTMAX_X0_BITS, softmax_constants,
)
from bertcore.rtl.blockram import BlockRam
from bertcore.rtl.common import check_multipliers, dsp_partial_products, less, trial_subtract
from bertcore.rtl.multiplier import fabric_copies, mult18x18d_products, uses_mult18x18d

__all__ = ["IntSoftmax"]

# Width of the constant x0 (signed): x0 = floor(EXP_X0 / S) >= -2**15, i.e. S >= 0.6931 / 2**15
# (kernels.SOFTMAX_MIN_SCALE; quantization never goes finer).
_X0_BITS = SOFTMAX_X0_BITS
# The constants b and c grow as the scale shrinks: their widths are those at the smallest scale.
_K_WIDEST = softmax_constants(-EXP_X0 / 2 ** (_X0_BITS - 1))
assert _K_WIDEST["x0"] == -(1 << (_X0_BITS - 1))


def _pick(items, index):
    """``items[index]`` as a tree of multiplexers on the bits of ``index`` (no case statement
    over the unused codes of ``index`` when ``len(items)`` is not a power of two)."""
    level, bit = list(items), 0
    while len(level) > 1:
        level = [Mux(index[bit], level[i + 1], level[i]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
        bit += 1
    return level[0]


def _put(m, items, index, value):
    """Register ``items[index] <- value`` (a write to one of several registers)."""
    for i, item in enumerate(items):
        with m.If(index == i):
            m.d.sync += item.eq(value)


class _SlotState(enum.Enum, shape=2):
    FREE = 0
    SCORES = 1
    EXPS = 2
    NORM = 3


class _SlotTable:
    """The slots of :class:`IntSoftmax`: per slot its state and the per-row registers the engines
    hand a row over with (each engine writes the fields of the slot it works on; the
    row buffers themselves are two memories addressed ``Cat(index, slot)``).

    Attributes
    ----------
    state : list of Signal(_SlotState)
        FREE -> SCORES (engine A) -> EXPS (engine B) -> NORM (divider V) -> FREE (engine D).
    last_idx : list of Signal
        Index of the row's last element (written by A).
    row_max : list of Signal
        The row's maximum score (written by A, read by B).
    row_sum : list of Signal
        ``sum(exp16)`` of the row (written by B, read by V).
    row_f : list of Signal
        ``f = floor(2**32 / sum)`` (written by V, read by D).
    """

    def __init__(self, n_slots, *, idx_bits, in_width, sum_bits, quotient_bits):
        self.n_slots = n_slots
        self.idx_bits = idx_bits
        self.slot_bits = max(1, ceil_log2(n_slots))
        self.sum_bits = sum_bits
        self.state = [Signal(_SlotState, name=f"state{i}") for i in range(n_slots)]
        self.last_idx = [Signal(idx_bits, name=f"last_idx{i}") for i in range(n_slots)]
        self.row_max = [Signal(signed(in_width), name=f"row_max{i}") for i in range(n_slots)]
        self.row_sum = [Signal(sum_bits, name=f"row_sum{i}") for i in range(n_slots)]
        self.row_f = [Signal(quotient_bits, name=f"row_f{i}") for i in range(n_slots)]

    def next(self, ptr):
        """The slot after ``ptr`` (every engine visits the slots in order)."""
        return Mux(ptr == self.n_slots - 1, 0, ptr + 1)

    def is_state(self, index, value):
        """Whether slot ``index`` is in state ``value``."""
        return _pick([slot == value for slot in self.state], index)


class IntSoftmax(wiring.Component):
    """Integer softmax of rows of scores, streaming, bit-exact with ``int_softmax_int``.

    Throughput and latency: engines A, B and D process one element per cycle, the divider takes
    :data:`DIV_CYCLES` (20) cycles per row. With the input always valid and the output always
    ready, back-to-back rows of ``L`` elements stream at exactly one row per
    ``max(L, DIV_CYCLES)`` cycles (one element per cycle once ``L >= 20``) and the elements of a
    row leave on consecutive cycles. The first probability of a row is valid
    ``latency(L) = 2*L + LATENCY`` cycles (``LATENCY = 44``) after its first score is accepted,
    when the unit holds no earlier row. :data:`SLOTS` (5) slots are exactly enough for this
    throughput; under backpressure the unit holds up to :data:`SLOTS` rows in its slots (and a
    first row's probabilities, if it has at most ``NORM_STAGES - 1``, in its output pipeline),
    then deasserts ``i_stream.ready``. Resources: two memories of
    ``SLOTS * 2**ceil(log2(max_seq))`` words, of ``in_width`` and of 16 bits, four 18x18
    multipliers (one for ``(p+b)*p``, two for ``poly*m``, one for ``exp16*f``) and a 16x2 one,
    one restoring divider.

    Parameters
    ----------
    max_seq : int
        Longest row (``>= 1``); each of the :data:`SLOTS` slots holds this many elements.
    in_width : int
        Width of the signed scores (``>= 2``). The encoder's scores are int8 x int8 dot products
        over the head dimension: see :meth:`score_width`.
    output_bits : int
        Width of the probabilities, ``1..SOFTMAX_MAX_BIT`` (the kernel's ``output_bits``).
    saturate_output : bool
        The kernel's ``saturate_output``: clamp ``y`` to ``2**output_bits - 1``. The output then
        has ``output_bits`` bits, otherwise ``output_bits + 1`` (``y`` can be ``2**output_bits``).
    head_dim : int or None
        When given, ``in_width`` must hold every int8 x int8 dot product over ``head_dim``
        elements (``in_width >= score_width(head_dim)``).
    multipliers : ``"dsp"`` or ``"lut"``
        How the products ``(p+b)*p``, ``poly*m`` and ``exp16*f`` are built
        (:func:`bertcore.rtl.common.multiply`): ``"dsp"`` (default) with the ``*`` operator,
        which synthesis maps onto DSP blocks, or ``"lut"`` by shift and add in LUT logic, for
        devices short of DSP blocks. Results, latency and throughput are the same.
    masking : bool
        Add the ``skip`` bit to the input (the key mask of packed sequences); one more bit per
        entry of the score buffer, latency and throughput unchanged.

    Members
    -------
    i_stream : ``In(stream.Signature(in_layout))``
        Scores, one per beat: ``data`` (``signed(in_width)``) and ``last`` (final element of a
        row). A row has 1 to ``max_seq`` elements. A row that is longer keeps its first
        ``max_seq`` elements (normalized among themselves, ``last`` on the ``max_seq``-th
        output); the excess beats are accepted and dropped and ``error`` pulses. With
        ``masking`` a third field, ``skip``: a skipped element takes no part in the row (not in
        its maximum, its exp16 is 0, so not in the sum) and its probability is 0, exactly as
        the kernel's ``mask``; every row needs at least one element that is not skipped.
    o_stream : ``Out(stream.Signature(out_layout))``
        Probabilities in the same order, ``data`` (``unsigned(out_bits)``) and ``last``.
    x0, b, c, m, e : ``In(...)``
        The constants of :func:`bertcore.quant.kernels.softmax_constants`, with the widths
        :data:`CONSTANT_SHAPES`: ``x0`` ``signed(16)``, ``b`` ``unsigned(17)``, ``c``
        ``unsigned(33)``, ``m`` ``unsigned(15)``, ``e`` ``unsigned(6)``. Legal values are those
        :meth:`check_constants` accepts; ``softmax_constants(S)`` gives such values for every
        score scale ``0.6931 / 2**15 <= S <= 1`` (about 2.1e-5 to 1). They are read at run time
        and must be stable from the cycle the first score of a row is accepted until the last
        probability of that row is delivered. With illegal constants the outputs are undefined
        (the unit still streams and loses nothing).
    error : ``Out(1)``
        One-cycle pulse, one cycle after the first dropped beat of a row longer than ``max_seq``.

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If a parameter is out of range, ``in_width`` cannot hold the scores of ``head_dim``, or
        ``multipliers`` is not ``"dsp"`` or ``"lut"``.
    """

    #: Shapes of the constant ports (see :meth:`check_constants`).
    CONSTANT_SHAPES = {
        "x0": signed(_X0_BITS),
        "b": unsigned(_K_WIDEST["b"].bit_length()),
        "c": unsigned(_K_WIDEST["c"].bit_length()),
        "m": unsigned(REQ_M_BITS - 1),               # positive requantization multiplier
        "e": unsigned(bits_for(REQ_MAX_SHIFT)),      # requant_params' largest shift
    }
    #: ``sum(exp16) >= 2**MIN_SUM_LOG2`` for legal constants (the row maximum's exp16 alone).
    MIN_SUM_LOG2 = SOFTMAX_EXP_BITS - 2
    #: Width of ``f = floor(2**32 / sum) <= 2**(32 - MIN_SUM_LOG2)``.
    QUOTIENT_BITS = SOFTMAX_MAX_BIT - MIN_SUM_LOG2 + 1
    #: Cycles the divider spends on a row: a load cycle and one cycle per quotient bit.
    DIV_CYCLES = QUOTIENT_BITS + 1
    #: Pipeline of engine B: cycles from reading a score to writing its exp16 back.
    EXP_STAGES = 18
    #: Pipeline of engine D: cycles from reading an exp16 to its probability being valid.
    NORM_STAGES = 5
    #: Engine A: cycles from a row's last score to its slot turning SCORES (the row's maximum
    #: is kept from a register of each score).
    INPUT_STAGES = 1
    #: ``latency(L) - 2*L``: engine A takes ``L`` cycles and INPUT_STAGES, engine B ``L - 1``
    #: more to read the row and EXP_STAGES to write its last exp16 back, the sum is handed
    #: over (1), divided (DIV_CYCLES), and the first probability is valid NORM_STAGES cycles
    #: after D reads it.
    LATENCY = INPUT_STAGES + EXP_STAGES + 1 + DIV_CYCLES + NORM_STAGES - 1
    #: Cycles a slot stays busy beyond ``3*L`` (A, B and D each read or write ``L`` elements):
    #: A's stage, B's pipeline, the divider and the cycle that frees the slot.
    _OCCUPANCY = INPUT_STAGES + EXP_STAGES + DIV_CYCLES + 1
    #: Row buffers: enough that no engine waits for a free slot at the full throughput,
    #: ``SLOTS * max(L, DIV_CYCLES) >= 3*L + _OCCUPANCY`` for every ``L`` (worst at
    #: ``L = DIV_CYCLES``).
    SLOTS = math.ceil((3 * DIV_CYCLES + _OCCUPANCY) / DIV_CYCLES)

    def __init__(self, *, max_seq, in_width, output_bits=8, saturate_output=True,
                 head_dim=None, multipliers="dsp", masking=False):
        for name, value in (("max_seq", max_seq), ("in_width", in_width),
                            ("output_bits", output_bits)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if max_seq < 1:
            raise ValueError(f"max_seq must be a positive integer, not {max_seq!r}")
        if in_width < 2:
            raise ValueError(f"in_width must be at least 2, not {in_width!r}")
        if not 1 <= output_bits <= SOFTMAX_MAX_BIT:
            raise ValueError(
                f"output_bits must lie in 1..{SOFTMAX_MAX_BIT}, not {output_bits!r}")
        if not isinstance(saturate_output, bool):
            raise TypeError(f"saturate_output must be a bool, not {saturate_output!r}")
        if head_dim is not None:
            if not isinstance(head_dim, int) or isinstance(head_dim, bool):
                raise TypeError(f"head_dim must be an integer or None, not {head_dim!r}")
            if head_dim < 1:
                raise ValueError(f"head_dim must be a positive integer, not {head_dim!r}")
            if in_width < self.score_width(head_dim):
                raise ValueError(
                    f"in_width must be at least {self.score_width(head_dim)} to hold int8 dot "
                    f"products over head_dim={head_dim}, not {in_width!r}")
        check_multipliers(multipliers)
        if not isinstance(masking, bool):
            raise TypeError(f"masking must be a bool, not {masking!r}")
        self._masking = masking
        self._max_seq = max_seq
        self._multipliers = multipliers
        self._in_width = in_width
        self._output_bits = output_bits
        self._saturate_output = saturate_output
        self._head_dim = head_dim

        in_fields = {"data": signed(in_width), "last": 1}
        if masking:
            in_fields["skip"] = 1
        in_layout = data.StructLayout(in_fields)
        out_layout = data.StructLayout({"data": unsigned(self.out_bits), "last": 1})
        super().__init__({
            "i_stream": In(stream.Signature(in_layout)),
            "o_stream": Out(stream.Signature(out_layout)),
            **{name: In(shape) for name, shape in self.CONSTANT_SHAPES.items()},
            "error": Out(1),
        })

    @property
    def max_seq(self):
        return self._max_seq

    @property
    def in_width(self):
        return self._in_width

    @property
    def output_bits(self):
        return self._output_bits

    @property
    def saturate_output(self):
        return self._saturate_output

    @property
    def head_dim(self):
        return self._head_dim

    @property
    def masking(self):
        """Whether the input has a ``skip`` bit (masked elements: see ``i_stream``)."""
        return self._masking

    @property
    def multipliers(self):
        """How the multipliers are built: ``"dsp"`` or ``"lut"``."""
        return self._multipliers

    @property
    def out_bits(self):
        """Width of the output ``data``: ``output_bits``, plus one without saturation."""
        return self._output_bits + (0 if self._saturate_output else 1)

    @staticmethod
    def score_width(head_dim):
        """Signed width of an int8 x int8 dot product over ``head_dim`` elements.

        The products lie in ``[-128*127, 128*128]``, so the sums in
        ``[-head_dim*128*127, head_dim*2**14]``.
        """
        return bits_for(head_dim * (1 << 14), require_sign_bit=True)

    @classmethod
    def latency(cls, length):
        """Cycles from the first score of a row of ``length`` elements being accepted to its
        first probability being valid, when the unit holds no earlier row."""
        return 2 * length + cls.LATENCY

    @classmethod
    def check_constants(cls, k):
        """Check that the constants ``k`` (a dict with ``x0, b, c, m, e``, as
        :func:`~bertcore.quant.kernels.softmax_constants` returns) are legal for the unit.

        Legal: each fits its port (:data:`CONSTANT_SHAPES`), ``x0 <= -1``,
        ``EXP_N < e <= REQ_MAX_SHIFT`` (62), and the exp16 of the row maximum,
        ``min(floor((c*m + 2**(e-31)) / 2**(e-30)), 2**16 - 1)``, is at least
        ``2**MIN_SUM_LOG2`` (so the quotient fits :data:`QUOTIENT_BITS`).

        Raises
        ------
        ValueError
            Naming the first constant that is not legal.
        """
        values = {}
        for name, shape in cls.CONSTANT_SHAPES.items():
            value = int(k[name])
            lo = -(1 << (shape.width - 1)) if shape.signed else 0
            hi = (1 << (shape.width - 1 if shape.signed else shape.width)) - 1
            if not lo <= value <= hi:
                raise ValueError(f"softmax constant {name} must lie in {lo}..{hi}, not {value!r}")
            values[name] = value
        if "exp_bits" in k and int(k["exp_bits"]) != SOFTMAX_EXP_BITS:
            raise ValueError(
                f"softmax constant exp_bits must be {SOFTMAX_EXP_BITS}, not {k['exp_bits']!r}")
        if values["x0"] > -1:
            raise ValueError(f"softmax constant x0 must be negative, not {values['x0']!r}")
        if not EXP_N < values["e"] <= REQ_MAX_SHIFT:
            raise ValueError(f"softmax constant e must lie in {EXP_N + 1}..{REQ_MAX_SHIFT}, "
                             f"not {values['e']!r}")
        shift = values["e"] - EXP_N
        exp0 = (values["c"] * values["m"] + (1 << (shift - 1))) >> shift
        exp0 = min(exp0, (1 << SOFTMAX_EXP_BITS) - 1)
        if exp0 < 1 << cls.MIN_SUM_LOG2:
            raise ValueError(
                f"softmax constants c and m give exp(0) = {exp0}, below "
                f"2**{cls.MIN_SUM_LOG2}")

    def elaborate(self, platform):
        m = Module()
        idx_bits = max(1, ceil_log2(self._max_seq))        # element index 0..max_seq-1
        slots = _SlotTable(self.SLOTS, idx_bits=idx_bits, in_width=self._in_width,
                           sum_bits=bits_for(self._max_seq * ((1 << SOFTMAX_EXP_BITS) - 1)),
                           quotient_bits=self.QUOTIENT_BITS)

        # Two memories, each with one write and one read port and no multiplexer behind its
        # read port (a block RAM's clock-to-output time leaves no room for one at 100 MHz):
        # the scores (written by A, read by B) and the exp16s (written by B, read by D). Slot s
        # holds its row at the addresses Cat(index, s).
        # with masking, each score carries its skip bit on top. The scores are read through
        # the block's output register, engine B's stage 1 (a BlockRam: the block RAM's 5.8 ns
        # clock-to-output into a fabric register was among the ULX3S's worst paths at 125
        # MHz); A never writes the slot B reads.
        m.submodules.scores = scores = BlockRam(self._in_width + self._masking,
                                                self.SLOTS << idx_bits)
        m.d.comb += [scores.r_en.eq(1), scores.o_en.eq(1)]
        m.submodules.exps = exps = Memory(
            shape=unsigned(SOFTMAX_EXP_BITS), depth=self.SLOTS << idx_bits, init=[])

        # The engines, each on its own row (the order of their slot-state writes does not
        # matter: no two engines ever write the state of the same slot in the same cycle).
        self._build_input(m, slots, SimpleNamespace(addr=scores.w_addr, data=scores.w_data,
                                                    en=scores.w_en))
        # on ECP5 the multipliers are MULT18X18Ds holding their operand and product registers
        on_dsp = self._multipliers == "dsp" and uses_mult18x18d(platform)
        self._build_exponential(m, slots, SimpleNamespace(addr=scores.r_addr, data=scores.r_data),
                                exps.write_port(), on_dsp)
        self._build_divider(m, slots)
        self._build_normalization(m, slots, exps.read_port(), on_dsp)
        return m

    def _build_input(self, m, slots, scores_w):
        """Engine A: fills the FREE slot ``a_ptr``, one score per accepted beat, and keeps the
        row's maximum; at the row's end the slot holds SCORES."""
        in_width = self._in_width
        a_ptr = Signal(slots.slot_bits)
        a_cnt = Signal(bits_for(self._max_seq))   # elements stored so far in this row
        a_max = Signal(signed(in_width))
        a_over = Signal()                       # this row has overflowed (error already sent)
        a_x = self.i_stream.payload.data
        a_store = Signal()                      # the beat is stored (not beyond max_seq)
        a_fire = self.i_stream.valid & self.i_stream.ready
        if self._masking:
            a_skip = self.i_stream.payload.skip
            a_word = Cat(a_x, a_skip)
        else:
            a_skip = Const(0, 1)
            a_word = a_x
        m.d.comb += [
            self.i_stream.ready.eq(slots.is_state(a_ptr, _SlotState.FREE)),
            a_store.eq(a_cnt != self._max_seq),
        ]
        m.d.sync += self.error.eq(0)
        m.d.comb += [
            scores_w.en.eq(a_fire & a_store),
            scores_w.addr.eq(Cat(a_cnt[:slots.idx_bits], a_ptr)),
            scores_w.data.eq(a_word),
        ]
        with m.If(a_fire):
            with m.If(a_store):
                m.d.sync += a_cnt.eq(a_cnt + 1)
            with m.Elif(~a_over):
                m.d.sync += [a_over.eq(1), self.error.eq(1)]
            with m.If(self.i_stream.payload.last):
                m.d.sync += [a_cnt.eq(0), a_over.eq(0), a_ptr.eq(slots.next(a_ptr))]

        # The row's maximum (over its kept elements) is kept a cycle behind the beats, from
        # registers (INPUT_STAGES): the compare with the running maximum of a beat straight
        # from the input, through the enables of a_max, was the ULX3S's worst path in this unit
        # at 125 MHz (9.21 ns). The slot turns SCORES as the maximum of its last beat is taken,
        # and the maximum goes to the slot the cycle after (the compare of the last beat ran
        # on into the slots' multiplexers otherwise: an ECP5 critical path at 100 MHz); engine
        # B reads it from the cycle after the slot turns SCORES on.
        a1_x = Signal(signed(in_width))
        a1_keep = Signal()                      # a stored, kept element
        a1_last = Signal()
        a1_ptr = Signal.like(a_ptr)
        a1_idx = Signal.like(slots.last_idx[0])  # with a1_last: the row's last index
        m.d.sync += [a1_x.eq(a_x), a1_keep.eq(a_fire & a_store & ~a_skip),
                     a1_last.eq(a_fire & self.i_stream.payload.last), a1_ptr.eq(a_ptr),
                     a1_idx.eq(Mux(a_store, a_cnt, a_cnt - 1))]
        a_max = Signal(signed(in_width))
        a_have = Signal()                       # a kept element of this row is in a_max
        with m.If(a1_keep & (~a_have | less(a_max, a1_x))):
            m.d.sync += a_max.eq(a1_x)
        with m.If(a1_keep):
            m.d.sync += a_have.eq(1)
        put_max = Signal()
        put_ptr = Signal.like(a_ptr)
        m.d.sync += put_max.eq(0)
        with m.If(put_max):
            _put(m, slots.row_max, put_ptr, a_max)
        with m.If(a1_last):
            m.d.sync += [a_have.eq(0), put_max.eq(1), put_ptr.eq(a1_ptr)]
            _put(m, slots.state, a1_ptr, _SlotState.SCORES)
            _put(m, slots.last_idx, a1_ptr, a1_idx)

    def _constants(self, m):
        """The run-time constants as engine B uses them, registered (they are stable while a row
        is in flight, and no engine uses them within two cycles of a row's first score):
        ``(-x0, -30*x0, b, c, m, e - 31)``."""
        x0_bits = len(self.x0)
        k_nx0 = Signal(x0_bits)                 # -x0, 1..2**15
        k_lim = Signal(bits_for(EXP_ZMAX << (x0_bits - 1)))  # -30*x0: |d| is clamped to this
        k_b = Signal.like(self.b)
        k_c = Signal.like(self.c)
        k_m = Signal.like(self.m)
        k_sh0 = Signal(range(REQ_MAX_SHIFT - EXP_N))   # e - 31: the shift s - 1 = e - 31 + z
        m.d.sync += [
            k_nx0.eq(-self.x0),
            k_lim.eq((self.x0 << 1) - (self.x0 << 5)),
            k_b.eq(self.b),
            k_c.eq(self.c),
            k_m.eq(self.m),
            k_sh0.eq(self.e - (EXP_N + 1)),
        ]
        return k_nx0, k_lim, k_b, k_c, k_m, k_sh0

    def _build_exponential(self, m, slots, scores_r, exps_w, on_dsp):
        """Engine B: reads a SCORES slot, computes ``exp16`` of each score in an
        :data:`EXP_STAGES`-stage pipeline without stalls, writes it to the exps buffer and sums
        the row; at the row's end the slot holds EXPS. Stage registers are named
        ``<field><stage>``; the tag (valid, slot, address, first, last) travels along."""
        in_width = self._in_width
        idx_bits, slot_bits = slots.idx_bits, slots.slot_bits
        k_nx0, k_lim, k_b, k_c, k_m, k_sh0 = self._constants(m)
        x0_bits, lim_bits = len(k_nx0), len(k_lim)
        z_bits = bits_for(EXP_ZMAX)
        exp_max = (1 << SOFTMAX_EXP_BITS) - 1
        tag_layout = data.StructLayout({
            "valid": 1, "slot": slot_bits, "addr": idx_bits, "first": 1, "last": 1, "skip": 1,
        })
        tags = [Signal(tag_layout, name=f"b_tag{i}") for i in range(self.EXP_STAGES + 1)]
        for i in range(self.EXP_STAGES):
            m.d.sync += tags[i + 1].eq(tags[i])

        # stage 0: read score b_idx of slot b_ptr (while that slot holds SCORES).
        b_pos = Signal(idx_bits + slot_bits)    # read address: Cat(b_idx, b_ptr)
        b_idx, b_ptr = b_pos[:idx_bits], b_pos[idx_bits:]
        b_go = Signal()
        b_last = Signal()
        # the slots B has read wholly but whose last exp16 is not written yet (they still hold
        # SCORES until stage 18): after a few short rows (five of 1-3 scores) B's pointer comes
        # round to such a slot within EXP_STAGES cycles, and must not read it again (it did:
        # the row's first scores went through twice, and the next row in the slot started at
        # the index where B had stopped)
        b_read = Signal(self.SLOTS)
        m.d.comb += [
            b_go.eq(slots.is_state(b_ptr, _SlotState.SCORES) & ~b_read.bit_select(b_ptr, 1)),
            b_last.eq(b_idx == _pick(slots.last_idx, b_ptr)),
            tags[0].valid.eq(b_go),
            tags[0].slot.eq(b_ptr),
            tags[0].addr.eq(b_idx),
            tags[0].first.eq(b_idx == 0),
            tags[0].last.eq(b_last),
        ]
        with m.If(b_go):
            m.d.sync += b_idx.eq(Mux(b_last, 0, b_idx + 1))
            with m.If(b_last):
                m.d.sync += b_ptr.eq(slots.next(b_ptr))
                _put(m, b_read, b_ptr, 1)

        m.d.comb += scores_r.addr.eq(b_pos)

        # stage 1: the score, read through the block's output register (a block RAM's
        # clock-to-output time leaves no room for a subtraction), and the row maximum.
        x1 = scores_r.data[:in_width].as_signed()
        max1 = Signal(signed(in_width))
        m.d.sync += max1.eq(_pick(slots.row_max, tags[1].slot))
        if self._masking:                       # a masked element's exp16 will be 0
            m.d.sync += tags[3].skip.eq(scores_r.data[in_width])

        # stage 2: a = rowmax - x >= 0 (the negated d).
        a2 = Signal(in_width)
        m.d.sync += a2.eq(max1 - x1)

        # stage 3: clamp |d| to 30*|x0| (d = max(d, 30*x0)).
        r = [Signal(lim_bits, name="r3")]
        m.d.sync += r[0].eq(Mux(less(k_lim, a2), k_lim, a2))

        # stages 4..8: restoring division ladder |d| = z*|x0| + rem, one quotient bit per stage
        # (z <= 30 < 2**5), so z = floor(d/x0) and p = d - x0*z = -rem. Each stage one
        # subtraction whose sign is the compare (trial_subtract; a `>=` beside it: r8 8.18 ns
        # in a ULX3S placement at 125 MHz).
        z = [Const(0, z_bits)]
        for stage, bit in enumerate(reversed(range(z_bits)), start=4):
            r_next = Signal(lim_bits, name=f"r{stage}")
            z_next = Signal(z_bits, name=f"z{stage}")
            step = k_nx0 << bit
            take, diff = trial_subtract(r[-1], step)
            m.d.sync += [
                r_next.eq(Mux(take, diff, r[-1])),
                z_next.eq(z[-1] | (take << bit)),
            ]
            r.append(r_next)
            z.append(z_next)
        rem8 = r[-1]                            # 0 <= rem < |x0| <= 2**15

        # stage 9: multiplier inputs p = -rem and p + b.
        p9 = Signal(signed(x0_bits))
        pb9 = Signal(signed(len(k_b) + 1))

        # stage 10: (p + b) * p, one 18x18 DSP with registered output. On ECP5 its input
        # registers are the stage-9 registers (p9, pb9 are then what they load).
        prod10 = Signal(signed(len(pb9) + len(p9)))
        if on_dsp:
            m.d.comb += [p9.eq(-rem8), pb9.eq(k_b - rem8)]
            (product, _), = mult18x18d_products(m, pb9, p9, name="pb_dsp")
            m.d.comb += prod10.eq(product)
        else:
            m.d.sync += [p9.eq(-rem8), pb9.eq(k_b - rem8)]
            (product, _), = dsp_partial_products(
                pb9, p9, style=self._multipliers, m=m, name="pb_mul")
            m.d.sync += prod10.eq(product)

        # stage 11: poly = max(prod + c, 0), in the fabric (the adder and the clamp end in a
        # flip-flop, not in the DSP's input register). When p + b < 0 the product is positive
        # but below 2**30, so poly < c + 2**30.
        poly_bits = bits_for((1 << len(k_c)) - 1 + (1 << 2 * (x0_bits - 1)))
        poly11 = Signal(poly_bits)
        poly_sum = prod10 + k_c
        m.d.sync += poly11.eq(Mux(poly_sum < 0, 0, poly_sum))

        # stages 12, 13: the operand registers poly12 = poly11 and k_m, then poly12 * m as
        # registered partial products (two 17x15 DSP multiplies). On ECP5 MULT18X18Ds whose
        # input registers are poly12 and k_m (which load poly11 and m).
        if on_dsp:
            parts13 = mult18x18d_products(m, poly11, self.m, name="pm_dsp")
        else:
            poly12 = Signal(poly_bits)
            m.d.sync += poly12.eq(poly11)
            parts13 = []
            for product, offset in dsp_partial_products(
                    poly12, k_m, style=self._multipliers, m=m, name="pm_mul"):
                part = Signal.like(product, name=f"pm{offset}_13")
                m.d.sync += part.eq(product)
                parts13.append((part, offset))

        # stage 14: P = poly * m.
        prod_bits = poly_bits + len(k_m)
        big14 = Signal(prod_bits)
        m.d.sync += big14.eq(sum(part << offset for part, offset in parts13))

        # stages 15, 16: T = P >> (s - 1) with s - 1 = (e - 31) + z, in two barrel shifts.
        big15 = Signal(prod_bits)
        big16 = Signal(prod_bits)
        z_now = z[-1]                           # z of the element in stage 9, then 10, ...
        for stage in range(9, 16):
            z_next = Signal(z_bits, name=f"z{stage}")
            m.d.sync += z_next.eq(z_now)
            z_now = z_next
        m.d.sync += [big15.eq(big14 >> k_sh0), big16.eq(big15 >> z_now)]

        # stage 17: exp16 = min((T + 1) >> 1, 2**16 - 1), i.e. round half up of P / 2**s.
        exp16 = Signal(SOFTMAX_EXP_BITS)
        round_bits = SOFTMAX_EXP_BITS + 1
        saturated = big16 >= (1 << round_bits) - 1
        m.d.sync += exp16.eq(Mux(saturated, exp_max, (big16[:round_bits] + 1) >> 1))

        # stage 18: write exp16 over the score; sum the row; at its end hand the sum over.
        wb = tags[self.EXP_STAGES]
        wb_exp = Mux(wb.skip, 0, exp16) if self._masking else exp16
        m.d.comb += [
            exps_w.en.eq(wb.valid),
            exps_w.addr.eq(Cat(wb.addr, wb.slot)),
            exps_w.data.eq(wb_exp),
        ]
        b_acc = Signal(slots.sum_bits)
        b_acc_next = Mux(wb.first, wb_exp, b_acc + wb_exp)
        with m.If(wb.valid):
            m.d.sync += b_acc.eq(b_acc_next)
            with m.If(wb.last):
                _put(m, slots.row_sum, wb.slot, b_acc_next)
                _put(m, slots.state, wb.slot, _SlotState.EXPS)
                _put(m, b_read, wb.slot, 0)

    def _build_divider(self, m, slots):
        """Divider V: ``f = floor(2**32 / sum)`` of the EXPS slot ``v_ptr``, restoring, one
        quotient bit per cycle; the slot then holds NORM. The quotient has
        :data:`QUOTIENT_BITS` bits because ``sum >= 2**MIN_SUM_LOG2``, so the division starts
        from the remainder ``2**32 >> QUOTIENT_BITS`` (< sum) and shifts in zeros."""
        v_ptr = Signal(slots.slot_bits)
        v_busy = Signal()
        v_count = Signal(range(self.QUOTIENT_BITS + 1))
        v_den = Signal(slots.sum_bits)
        v_rem = Signal(slots.sum_bits + 1)
        v_quo = Signal(self.QUOTIENT_BITS)
        v_rem2 = Cat(Const(0, 1), v_rem)                     # 2*rem, shifting in a zero
        v_take, v_diff = trial_subtract(v_rem2, v_den)
        v_quo_next = Cat(v_take, v_quo)[:self.QUOTIENT_BITS]
        with m.If(~v_busy):
            with m.If(slots.is_state(v_ptr, _SlotState.EXPS)):
                m.d.sync += [
                    v_busy.eq(1),
                    v_count.eq(self.QUOTIENT_BITS),
                    v_den.eq(_pick(slots.row_sum, v_ptr)),
                    v_rem.eq(1 << (SOFTMAX_MAX_BIT - self.QUOTIENT_BITS)),
                    v_quo.eq(0),
                ]
        with m.Else():
            m.d.sync += [
                v_rem.eq(Mux(v_take, v_diff, v_rem2)),
                v_quo.eq(v_quo_next),
                v_count.eq(v_count - 1),
            ]
            with m.If(v_count == 1):
                m.d.sync += [v_busy.eq(0), v_ptr.eq(slots.next(v_ptr))]
                _put(m, slots.row_f, v_ptr, v_quo_next)
                _put(m, slots.state, v_ptr, _SlotState.NORM)

    def _build_normalization(self, m, slots, exps_r, on_dsp):
        """Engine D: reads the NORM slot ``d_ptr`` and streams ``y = exp16 * f >> (32 -
        output_bits)`` out; the slot is FREE again once its last exp16 has been read. The
        pipeline (read, multiplier inputs, partial products, their fabric copies, output
        register) advances whenever the output register is empty or being taken."""
        idx_bits, slot_bits = slots.idx_bits, slots.slot_bits
        advance = Signal()
        m.d.comb += advance.eq(~self.o_stream.valid | self.o_stream.ready)

        # stage 0: read exp16 d_idx of slot d_ptr (while that slot holds NORM).
        d_pos = Signal(idx_bits + slot_bits)    # read address: Cat(d_idx, d_ptr)
        d_idx, d_ptr = d_pos[:idx_bits], d_pos[idx_bits:]
        d_go = Signal()
        d_last = Signal()
        m.d.comb += [
            d_go.eq(advance & slots.is_state(d_ptr, _SlotState.NORM)),
            d_last.eq(d_idx == _pick(slots.last_idx, d_ptr)),
        ]
        m.d.comb += [exps_r.addr.eq(d_pos), exps_r.en.eq(advance)]
        d_valid1, d_slot1, d_last1 = Signal(), Signal(slot_bits), Signal()
        with m.If(advance):
            m.d.sync += [d_valid1.eq(d_go), d_slot1.eq(d_ptr), d_last1.eq(d_last)]
        with m.If(d_go):
            m.d.sync += d_idx.eq(Mux(d_last, 0, d_idx + 1))
            with m.If(d_last):
                m.d.sync += d_ptr.eq(slots.next(d_ptr))

        # stage 1: register the multiplier inputs exp16 and f. Once the row's last exp16 has
        # left the slot's read port, the slot is free.
        d_valid2, d_last2 = Signal(), Signal()
        e2 = Signal(SOFTMAX_EXP_BITS)
        f2 = Signal(self.QUOTIENT_BITS)
        operands = [e2.eq(exps_r.data), f2.eq(_pick(slots.row_f, d_slot1))]
        with m.If(advance):
            m.d.sync += [d_valid2.eq(d_valid1), d_last2.eq(d_last1)]
            if not on_dsp:
                m.d.sync += operands
            with m.If(d_valid1 & d_last1):
                _put(m, slots.state, d_slot1, _SlotState.FREE)

        # stage 2: exp16 * f as registered partial products (a 16x17 DSP and a 16x2 multiply).
        # On ECP5 MULT18X18Ds (enabled by advance) whose input registers are e2 and f2.
        d_valid3, d_last3 = Signal(), Signal()
        with m.If(advance):
            m.d.sync += [d_valid3.eq(d_valid2), d_last3.eq(d_last2)]
        if on_dsp:
            m.d.comb += operands
            parts3 = mult18x18d_products(m, e2, f2, en=advance, name="ef_dsp")
        else:
            parts3 = []
            for product, offset in dsp_partial_products(e2, f2, style=self._multipliers, m=m,
                                                        name="ef_mul"):
                part = Signal.like(product, name=f"ef{offset}_3")
                with m.If(advance):
                    m.d.sync += part.eq(product)
                parts3.append((part, offset))

        # stage 3: the partial products copied into fabric registers (fabric_copies: the
        # route from the DSP to the adder below was 5.1 ns of an 8.45 ns path on the ULX3S at
        # 125 MHz)
        d_valid4, d_last4 = Signal(), Signal()
        with m.If(advance):
            m.d.sync += [d_valid4.eq(d_valid3), d_last4.eq(d_last3)]
        parts4 = fabric_copies(m, parts3, en=advance, name="ef_copy")

        # stage 4: y = (exp16 * f) >> (32 - output_bits) <= 2**output_bits, saturated if asked.
        y = (sum(part << offset for part, offset in parts4)
             >> (SOFTMAX_MAX_BIT - self._output_bits))[:self._output_bits + 1]
        y_out = y
        if self._saturate_output:
            y_out = Mux(y[-1], (1 << self._output_bits) - 1, y[:self._output_bits])
        with m.If(advance):
            m.d.sync += [
                self.o_stream.valid.eq(d_valid4),
                self.o_stream.payload.data.eq(y_out),
                self.o_stream.payload.last.eq(d_last4),
            ]
