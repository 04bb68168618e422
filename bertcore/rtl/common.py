"""Helpers shared by the RTL units and their benches.

* :func:`pack` / :func:`unpack`: stream payloads as Python values (used by the cocotb benches),
* :func:`dsp_tiles` / :func:`dsp_partial_products`: multiplies split into 18x18 DSP pieces,
* :func:`multiply` / :func:`check_multipliers`: one product as a DSP (``*``) or in LUT logic,
* :func:`check_int` / :func:`rejecting`: parameter validation in component constructors,
* :func:`less`: a comparison that synthesis maps onto a carry chain alone.

Stream payloads are :class:`amaranth.lib.data.StructLayout` (or ``ArrayLayout``) values. On the
emitted Verilog they are one flat bit vector (``<prefix>__payload``); :func:`pack` and
:func:`unpack` convert between that integer and a Python value:

* a struct becomes a ``dict`` of its fields,
* an array becomes a ``list`` of its elements,
* a plain (possibly signed) shape becomes an ``int``, sign-extended when the shape is signed,
* an enum shape becomes the ``int`` of its value.

>>> from amaranth.hdl import signed, unsigned
>>> from amaranth.lib import data
>>> layout = data.StructLayout({"x": signed(4), "last": unsigned(1)})
>>> pack(layout, {"x": -1, "last": 1})
31
>>> unpack(layout, 31)
{'x': -1, 'last': 1}
"""

import contextlib
import enum

from amaranth.hdl import Const, Mux, Shape, ShapeCastable, Signal, Value
from amaranth.lib import data

__all__ = ["pack", "unpack", "payload_width", "DSP_WIDTH", "dsp_tiles", "dsp_partial_products",
           "MULTIPLIER_STYLES", "check_multipliers", "multiply", "multiply_latency", "check_int",
           "rejecting", "saturate", "saturate_fits", "saturate_pick", "PRIMITIVE_TARGETS",
           "check_target",
           "check_domain", "targets_ecp5", "delay", "less", "trial_subtract"]


def payload_width(layout):
    """Width in bits of a layout or shape-castable object."""
    if isinstance(layout, data.Layout):
        return layout.size
    return Shape.cast(layout).width


def _plain_shape(shape):
    if isinstance(shape, (data.Layout, Shape)):
        return shape
    if isinstance(shape, ShapeCastable):
        return Shape.cast(shape)
    return Shape.cast(shape)


def pack(layout, value):
    """Pack ``value`` into the integer bit pattern of ``layout``.

    Parameters
    ----------
    layout : :class:`data.Layout` or shape-castable
        Layout (struct, array) or plain shape of the payload.
    value : dict, list or int
        A ``dict`` with every field of a struct, a ``list`` with every element of an array, an
        ``int`` (or enum member) for a plain shape. An ``int`` is also accepted for a whole
        struct or array (taken as its raw bit pattern).

    Raises
    ------
    ValueError
        If a field is missing, unknown, or its value does not fit its shape.
    """
    shape = _plain_shape(layout)
    if isinstance(shape, data.Layout):
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < (1 << shape.size):
                raise ValueError(f"raw payload {value!r} does not fit {shape.size} bits")
            return value
        if isinstance(shape, data.ArrayLayout):
            value = list(value)
            if len(value) != shape.length:
                raise ValueError(
                    f"array payload needs {shape.length} elements, not {len(value)}")
            items = enumerate(value)
            fields = {index: field for index, field in shape}
        else:
            if not isinstance(value, dict):
                raise ValueError(f"struct payload must be a dict, not {value!r}")
            fields = {name: field for name, field in shape}
            missing = set(fields) - set(value)
            unknown = set(value) - set(fields)
            if missing or unknown:
                raise ValueError(
                    f"struct payload fields mismatch: missing {sorted(missing)}, "
                    f"unknown {sorted(unknown)}")
            items = value.items()
        raw = 0
        for key, item in items:
            field = fields[key]
            raw |= pack(field.shape, item) << field.offset
        return raw
    if isinstance(value, enum.Enum):
        value = value.value
    value = int(value)
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    if shape.width == 0:
        lo = hi = 0
    if not lo <= value <= hi:
        raise ValueError(f"value {value!r} does not fit {shape!r}")
    return value & ((1 << shape.width) - 1)


def unpack(layout, raw):
    """Unpack the integer bit pattern ``raw`` of ``layout`` (inverse of :func:`pack`).

    Signed fields are sign-extended; structs give dicts, arrays lists, plain shapes ints.
    """
    raw = int(raw)
    shape = _plain_shape(layout)
    if isinstance(shape, data.Layout):
        if not 0 <= raw < (1 << shape.size):
            raise ValueError(f"raw payload {raw!r} does not fit {shape.size} bits")
        def sub(field):
            return unpack(field.shape, (raw >> field.offset) & ((1 << field.width) - 1))
        if isinstance(shape, data.ArrayLayout):
            return [sub(field) for _, field in shape]
        return {name: sub(field) for name, field in shape}
    raw &= (1 << shape.width) - 1
    if shape.signed and shape.width and raw >> (shape.width - 1):
        raw -= 1 << shape.width
    return raw


# -- Multipliers sized for 18x18 DSP blocks --------------------------------------------------------

#: Operand width of one DSP multiplier (ECP5 MULT18X18D, iCE40 and most FPGA DSPs are 18x18 signed).
DSP_WIDTH = 18


def dsp_tiles(value):
    """Split a signed or unsigned value into pieces that each fit one signed 18-bit DSP operand.

    Returns a list of ``(piece, shift)`` with ``value == sum(piece << shift)``: the low pieces are
    unsigned 17-bit slices, the top piece keeps the sign of ``value`` (at most 18 bits signed, 17
    unsigned). A value that already fits is returned whole, as ``[(value, 0)]``.
    """
    from amaranth.hdl import Value
    value = Value.cast(value)
    shape = value.shape()
    if len(value) <= (DSP_WIDTH if shape.signed else DSP_WIDTH - 1):
        return [(value, 0)]
    low = DSP_WIDTH - 1
    pieces = []
    offset = 0
    top = DSP_WIDTH if shape.signed else DSP_WIDTH - 1
    while len(value) - offset > top:
        pieces.append((value[offset:offset + low], offset))       # unsigned 17-bit slice
        offset += low
    rest = value[offset:]
    pieces.append((rest.as_signed() if shape.signed else rest, offset))
    return pieces


def dsp_partial_products(a, b, *, width=None, style="dsp", m=None, name="pp", en=None):
    """Partial products of ``a * b`` split into DSP-sized multiplies.

    Returns a list of ``(product, shift)``, ``a * b == sum(product << shift)``, where every
    ``product`` multiplies two operands of at most 18 bits (signed). The caller registers the
    products (DSP output register) and sums them in a later pipeline stage. With ``width``, the
    products of weight ``2**width`` or more are left out (the caller needs ``a * b`` modulo
    ``2**width`` only). ``style``, ``m``, ``name`` and ``en`` are those of :func:`multiply`, which
    builds each product: the pieces, their shapes and shifts are the same in both styles.
    """
    pairs = [((pa, sa), (pb, sb)) for pa, sa in dsp_tiles(a) for pb, sb in dsp_tiles(b)
             if width is None or sa + sb < width]
    return [(multiply(pa, pb, style=style, m=m, name=f"{name}{index}", en=en), sa + sb)
            for index, ((pa, sa), (pb, sb)) in enumerate(pairs)]


#: How a unit builds its multipliers: ``"dsp"`` (the ``*`` operator, which synthesis maps onto
#: DSP blocks) or ``"lut"`` (shift-and-add in LUT logic, which synthesis cannot map onto them).
MULTIPLIER_STYLES = ("dsp", "lut")


def check_multipliers(value, name="multipliers"):
    """Raise ``ValueError`` unless ``value`` is one of :data:`MULTIPLIER_STYLES`.

    Message: ``"multipliers must be 'dsp' or 'lut', not 'x'"``.
    """
    if not isinstance(value, str) or value not in MULTIPLIER_STYLES:
        choices = " or ".join(repr(style) for style in MULTIPLIER_STYLES)
        raise ValueError(f"{name} must be {choices}, not {value!r}")


def multiply(a, b, *, style="dsp", m=None, name="product", en=None):
    """The product ``a * b``, of the shape Amaranth gives ``a * b``, in the chosen ``style``.

    * ``"dsp"``: the ``*`` operator itself; yosys maps it onto a DSP block (a MULT18X18D on
      ECP5) when the operands fit one. ``m`` and ``name`` are not used.
    * ``"lut"``: shift and add, with no ``*`` operator, so synthesis cannot infer a DSP block:
      one row per bit of the narrower operand (the wider one or 0; the sign bit of a signed
      operand has weight ``-2**i``), summed by a balanced tree of two-input adders
      (``ceil(log2(rows))`` levels) whose inner nodes are ``keep`` signals added to ``m`` as
      ``<name>_l<level>_<index>``. The ``keep`` stops yosys from merging the tree into one
      multi-operand adder (``$macc``, mapped to a carry-save tree of full adders in LUTs: about
      three times larger than ripple adders on carry chains). On ECP5 a 17x16 signed product
      takes about 270 LUT4 and 150 CCU2C (yosys ``synth_ecp5``).

    Both styles are combinational and exact for every operand value (the sums wrap modulo
    ``2**width`` of the result, where the true product fits). With ``en`` (a signal) the
    ``"lut"`` tree is cut by one register stage, loaded while ``en`` is high, after its middle
    level (after the tree of a product of one or two rows): the product then belongs to the
    operands of the previous ``en`` cycle (:func:`multiply_latency`). The ``"dsp"`` style
    ignores ``en``: its product stays combinational.

    Raises
    ------
    ValueError
        If ``style`` is not one of :data:`MULTIPLIER_STYLES`.
    TypeError
        If ``style`` is ``"lut"`` and ``m`` is not given.
    """
    from amaranth.hdl import Cat, Const, Mux, Signal, Value
    check_multipliers(style, "style")
    a, b = Value.cast(a), Value.cast(b)
    if style == "dsp":
        return a * b
    if m is None:
        raise TypeError("multiply(style='lut') needs the module m for its adder tree")
    shape = (a * b).shape()                  # the result's shape only; this `*` is not used
    if len(b) > len(a):
        a, b = b, a                          # one row per bit of the narrower operand
    if len(b) == 0:
        return Const(0, shape)
    # The rows (value, shift, negative): row i is a or 0, weighs 2**i, the top row of a signed
    # b weighs -2**i. An adder tree sums neighbouring nodes level by level; only the top node
    # can be negative, always the right-hand one of its pair.
    nodes = [(Mux(b[i], a, 0), i, b.shape().signed and i == len(b) - 1) for i in range(len(b))]
    levels = (len(nodes) - 1).bit_length()
    cut = (levels + 1) // 2 if en is not None else None
    level = 0
    while len(nodes) > 1:
        if level == cut:
            cut = None
            # the pipeline register: every node of this level (values, not their tree)
            staged = []
            for k, (x, shift, negative) in enumerate(nodes):
                reg = Signal(x.shape(), name=f"{name}_r{k}")
                with m.If(en):
                    m.d.sync += reg.eq(x)
                staged.append((reg, shift, negative))
            nodes = staged
        pairs = []
        for k in range(0, len(nodes) - 1, 2):
            (x, x_shift, _), (y, y_shift, y_negative) = nodes[k], nodes[k + 1]
            y = y.shift_left(y_shift - x_shift)
            total = x - y if y_negative else x + y
            if len(nodes) > 2:
                # a node of the shape of its adder's output (no truncation between adders, so
                # that the next adder reads this signal, not an unnamed wider net)
                node = Signal(total.shape(), name=f"{name}_l{level}_{k // 2}", attrs={"keep": 1})
                m.d.comb += node.eq(total)
                total = node
            pairs.append((total, x_shift, False))
        if len(nodes) % 2:
            pairs.append(nodes[-1])
        nodes = pairs
        level += 1
    (total, _, negative), = nodes
    if cut is not None:                      # a tree too small to cut: register its output
        reg = Signal(total.shape(), name=f"{name}_r")
        with m.If(en):
            m.d.sync += reg.eq(total)
        total = reg
    if negative:                             # a one-bit signed b: the product is -a or 0
        total = -total
    if len(total) < shape.width:             # a single row (one-bit operand): extend it
        pad = total[-1] if total.shape().signed else Const(0, 1)
        total = Cat(total, pad.replicate(shape.width - len(total)))
    total = total[:shape.width]
    return total.as_signed() if shape.signed else total


def multiply_latency(style, pipelined):
    """Register stages inside :func:`multiply`: 1 for a ``"lut"`` product with ``en``
    (``pipelined``), else 0."""
    return int(style == "lut" and pipelined)


def saturate(value, bits):
    """The signed ``value`` clamped to the signed ``bits``-bit range, as ``signed(bits)`` (a
    value of ``bits`` bits or fewer is returned as it is).

    It fits when its bits from ``bits - 1`` up are all equal: a reduction in LUTs, where two
    compares with the bounds are two carry chains (on the ECP5 critical path at 100 MHz, into
    the write-back's int8 and GELU-input registers).
    """
    value = Value.cast(value)
    if not value.shape().signed:
        raise TypeError(f"saturate takes a signed value, not {value.shape()!r}")
    if len(value) <= bits:
        return value
    return saturate_pick(saturate_fits(value, bits), value[:bits].as_signed(), value[-1], bits)


def saturate_fits(value, bits):
    """Whether the signed ``value`` fits in signed ``bits`` bits (:func:`saturate`'s test,
    for a pipeline that registers it apart from the pick, :func:`saturate_pick`): its bits
    from ``bits - 1`` up are all equal."""
    value = Value.cast(value)
    if not value.shape().signed:
        raise TypeError(f"saturate_fits takes a signed value, not {value.shape()!r}")
    if len(value) <= bits:
        return Const(1)
    high = value[bits - 1:]
    return (high == 0) | (high == (1 << len(high)) - 1)


def saturate_pick(fits, low, negative, bits):
    """:func:`saturate`'s result from its parts: ``low`` (the value's low ``bits`` bits, signed)
    when it ``fits`` (:func:`saturate_fits`), else the signed ``bits``-bit bound on the side of
    its sign (``negative``: the value's top bit)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(fits, low, Mux(negative, lo, hi))


# -- Parameter validation ---------------------------------------------------------------------------

def check_int(name, value, minimum=1):
    """Raise unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``.

    Messages name the parameter and the value: ``"lanes must be a positive integer, not 0"``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        if minimum == 1:
            kind = "a positive integer"
        elif minimum == 0:
            kind = "a non-negative integer"
        else:
            kind = f"an integer of at least {minimum}"
        raise ValueError(f"{name} must be {kind}, not {value!r}")


#: Values of a vendor-primitive wrapper's ``target`` (``rtl.multiplier.Multiplier``,
#: ``rtl.blockram.BlockRam``): ``None`` (from the platform), ``"ecp5"`` (the ECP5 primitive),
#: ``"generic"`` (behavioural).
PRIMITIVE_TARGETS = (None, "ecp5", "generic")


def check_target(target):
    """Raise unless ``target`` is one of :data:`PRIMITIVE_TARGETS`."""
    if target not in PRIMITIVE_TARGETS:
        raise ValueError(f"target must be None, 'ecp5' or 'generic', not {target!r}")


def check_domain(domain):
    """Raise unless ``domain`` (a clock domain's name) is a str."""
    if not isinstance(domain, str):
        raise TypeError(f"domain must be a str, not {domain!r}")


def targets_ecp5(platform, target=None):
    """Whether a wrapper with this ``target`` builds its ECP5 primitive when elaborated for
    ``platform``: ``target="ecp5"``, or ``target=None`` and a platform of the ``"ecp5"``
    family (every ECP5 board of amaranth-boards)."""
    if target is not None:
        return target == "ecp5"
    return getattr(platform, "family", None) == "ecp5"


@contextlib.contextmanager
def rejecting(component):
    """Validate a component's parameters: ``with rejecting(self): check_int(...)``.

    An Amaranth ``Elaboratable`` whose constructor raises would still warn, when collected, that
    it was "created but never used"; this marks such a rejected object as silent and re-raises.
    """
    try:
        yield
    except Exception:
        component._MustUse__silence = True
        raise


def valid_last_pipeline(m, en, i_stream, o_stream, latency):
    """Carry ``valid`` and ``payload.last`` through a ``latency``-stage pipeline advancing on ``en``.

    For fully pipelined units whose data stages also advance on ``en`` (``en`` is typically
    ``~o_stream.valid | o_stream.ready``): stage 1 samples ``i_stream``, stage ``latency`` drives
    ``o_stream.valid`` and ``o_stream.payload.last``.
    """
    from amaranth.hdl import Signal
    valid = [Signal(name=f"valid_{k}") for k in range(1, latency + 1)]
    last = [Signal(name=f"last_{k}") for k in range(1, latency + 1)]
    with m.If(en):
        m.d.sync += [valid[0].eq(i_stream.valid), last[0].eq(i_stream.payload.last)]
        m.d.sync += [v.eq(p) for v, p in zip(valid[1:], valid)]
        m.d.sync += [v.eq(p) for v, p in zip(last[1:], last)]
    m.d.comb += [o_stream.valid.eq(valid[-1]), o_stream.payload.last.eq(last[-1])]
    return valid, last


def delay(m, value, cycles, *, name):
    """``value`` delayed by ``cycles`` registers (a shift register in ``m``'s ``sync``
    domain), named ``{name}_d1`` .. ``{name}_d{cycles}``; ``value`` itself for 0 cycles."""
    for stage in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{stage + 1}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def less(a, b):
    """``a < b``, for the ordered comparisons of the RTL: ``a > b`` is ``less(b, a)``,
    ``a >= b`` is ``~less(a, b)``, ``a <= b`` is ``~less(b, a)`` (GELU's sign tests of one
    value against 0, off every critical path, are left as written).

    Yosys (0.70, ``synth_ecp5``) maps a ``<`` onto a carry chain, but a ``>``, ``>=`` or
    ``<=`` onto a carry chain plus an equality tree of LUTs and a LUT joining the two
    (measured on a 16-bit compare of two registers: 16 XOR and 15 AND gates more, the same
    with a constant); behind a register's enable that tree was seven logic levels, the
    softmax's running maximum at 7.6-7.9 ns on the ULX3S at 125 MHz. An integer ``a``
    becomes a :class:`~amaranth.hdl.Const`: Amaranth turns ``K < b`` into ``b > K``.
    """
    if isinstance(a, int) and not isinstance(a, bool):
        a = Const(a)
    return Value.cast(a) < b


def trial_subtract(a, b):
    """``(a >= b, a - b)`` from one subtraction: the compare is its sign bit.

    The step of a restoring division or square root (take ``a - b`` when it fits, else keep
    ``a``) written as a ``>=`` beside the subtraction is two carry chains and, for the ``>=``,
    an equality tree (see :func:`less`); the sign of the one difference is the compare (the
    difference is one bit wider than either operand, so it never wraps). The LayerNorm's
    division, square root and reciprocal and the softmax's division ladder and divider use it.
    """
    diff = Value.cast(a) - b
    return ~diff[-1], diff
