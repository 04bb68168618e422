"""Fixed-point requantization (``bertcore.quant.kernels.requantize``) as a pipelined unit."""

from amaranth.hdl import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bertcore.quant.kernels import REQ_M_BITS, REQ_MAX_SHIFT
from .common import (check_int, check_multipliers, dsp_partial_products, rejecting,
                     saturate, saturate_fits, saturate_pick, valid_last_pipeline)
from .multiplier import fabric_copies, mult18x18d_products, uses_mult18x18d

__all__ = ["Requantizer", "REQ_E_BITS"]

#: Width of the shift ``e`` (``1 <= e <= REQ_MAX_SHIFT`` as
#: :func:`~bertcore.quant.kernels.requantize`): 6 bits for 62.
REQ_E_BITS = REQ_MAX_SHIFT.bit_length()


class Requantizer(wiring.Component):
    """Requantize ``lanes`` values per beat: ``y = sat(floor((x*m + bias + 2**(e-1)) / 2**e))``.

    This is :func:`bertcore.quant.kernels.requantize` with ``bits=out_bits`` (round half up,
    signed saturation), bit for bit. ``m`` (signed ``REQ_M_BITS``) and ``e`` (``1..62``, unsigned
    ``REQ_E_BITS``) travel with each element, so per-channel multipliers come from the upstream
    unit's memory and one bitstream serves any calibrated model. With ``residual`` each lane also
    carries ``(r, m_r, e_r)`` and the output is the residual add of the encoder::

        sat(requantize(x, m, e, bias=bias) + requantize(r, m_r, e_r), out_bits)

    with no saturation of either term before the sum.

    The rounding shift is computed as ``floor((floor(acc / 2**(e-1)) + 1) / 2)``, which equals
    ``floor((acc + 2**(e-1)) / 2**e)`` and needs neither a 63-bit rounding constant nor an adder
    wider than ``acc``.

    Parameters
    ----------
    lanes : int
        Elements per beat (``>= 1``).
    in_width : int
        Width of the signed input ``x``.
    out_bits : int
        Width of the signed, saturated output.
    bias_width : int
        Width of the signed pre-shift ``bias`` of each element; 0 (default) means no bias field.
    residual : bool
        Add a second requantized term ``(r, m_r, e_r)`` per element (the residual add).
    residual_width : int or None
        Width of the signed residual ``r``; ``None`` (default) means ``in_width``. Only with
        ``residual``.
    multipliers : ``"dsp"`` or ``"lut"``
        How the products ``x*m`` (and ``r*m_r``) are built (:func:`bertcore.rtl.common.multiply`):
        ``"dsp"`` (default) with the ``*`` operator, which synthesis maps onto DSP blocks, or
        ``"lut"`` by shift and add in LUT logic, for devices short of DSP blocks. Results,
        latency and throughput are the same.

    Members
    -------
    i_stream : ``In(stream.Signature(i_layout))``
        ``{"data": [lane] * lanes, "last": 1}``, each lane
        ``{"x": signed(in_width), "m": signed(REQ_M_BITS), "e": unsigned(REQ_E_BITS)}`` plus
        ``"bias": signed(bias_width)`` when ``bias_width > 0`` and ``"r": signed(residual_width),
        "m_r": signed(REQ_M_BITS), "e_r": unsigned(REQ_E_BITS)`` with ``residual``.
    o_stream : ``Out(stream.Signature(o_layout))``
        ``{"data": [signed(out_bits)] * lanes, "last": 1}``; ``last`` is passed through.

    An ``e`` (or ``e_r``) of 0 is outside the specification; the unit then outputs 0 for that term.

    Latency and throughput: fully pipelined, one beat per cycle; :data:`LATENCY` cycles from an
    input transfer to the output transfer of the same beat while ``o_stream.ready`` is high.
    The whole pipeline advances when ``o_stream.valid`` is low or ``o_stream.ready`` is high
    (``i_stream.ready`` is that condition, so it depends combinationally on ``o_stream.ready``).
    Every multiplier has registered operands and a registered product; operands wider than
    18 bits are split into 18x18 partial products (see :func:`bertcore.rtl.common.dsp_tiles`),
    each one DSP block or, with ``multipliers="lut"``, one shift-and-add multiplier.

    Raises
    ------
    TypeError
        If a width or ``lanes`` is not an integer, or ``residual`` is not a bool.
    ValueError
        If ``lanes``, ``in_width``, ``out_bits`` or ``residual_width`` is not positive, or
        ``bias_width`` is negative, or ``residual_width`` is given without ``residual``, or
        ``multipliers`` is not ``"dsp"`` or ``"lut"``.
    """

    #: Cycles from an input transfer to the output transfer of that beat (output always ready).
    LATENCY = 9

    def __init__(self, *, lanes, in_width, out_bits, bias_width=0, residual=False,
                 residual_width=None, multipliers="dsp"):
        with rejecting(self):
            check_int("lanes", lanes, 1)
            check_int("in_width", in_width, 1)
            check_int("out_bits", out_bits, 1)
            check_int("bias_width", bias_width, 0)
            if not isinstance(residual, bool):
                raise TypeError(f"residual must be a bool, not {residual!r}")
            if residual_width is not None:
                if not residual:
                    raise ValueError(
                        f"residual_width must be None without residual, not {residual_width!r}")
                check_int("residual_width", residual_width, 1)
            elif residual:
                residual_width = in_width
            check_multipliers(multipliers)
        self._lanes = lanes
        self._in_width = in_width
        self._out_bits = out_bits
        self._bias_width = bias_width
        self._residual = residual
        self._residual_width = residual_width
        self._multipliers = multipliers

        fields = {"x": signed(in_width), "m": signed(REQ_M_BITS), "e": unsigned(REQ_E_BITS)}
        if bias_width:
            fields["bias"] = signed(bias_width)
        if residual:
            fields.update({"r": signed(residual_width), "m_r": signed(REQ_M_BITS),
                           "e_r": unsigned(REQ_E_BITS)})
        self._lane_layout = data.StructLayout(fields)
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(self._lane_layout, lanes),
                "last": unsigned(1),
            }))),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(out_bits), lanes),
                "last": unsigned(1),
            }))),
        })

    lanes = property(lambda self: self._lanes, doc="Elements per beat.")
    in_width = property(lambda self: self._in_width, doc="Width of the signed input ``x``.")
    out_bits = property(lambda self: self._out_bits, doc="Width of the signed output.")
    bias_width = property(lambda self: self._bias_width, doc="Width of the bias, 0 if none.")
    residual = property(lambda self: self._residual, doc="Whether a residual term is added.")
    residual_width = property(lambda self: self._residual_width,
                              doc="Width of the residual ``r`` (``None`` without residual).")
    multipliers = property(lambda self: self._multipliers,
                           doc="How the multipliers are built: ``'dsp'`` or ``'lut'``.")
    lane_layout = property(lambda self: self._lane_layout, doc="Layout of one input element.")

    @staticmethod
    def _acc_width(x_width, bias_width):
        # |x*m| <= 2**(x_width-1) * 2**(REQ_M_BITS-1): x_width + REQ_M_BITS signed bits
        width = x_width + REQ_M_BITS
        return max(width, bias_width) + 1 if bias_width else width

    def elaborate(self, platform):
        m = Module()
        en = Signal()          # the whole pipeline advances
        m.d.comb += [
            en.eq(~self.o_stream.valid | self.o_stream.ready),
            self.i_stream.ready.eq(en),
        ]

        # valid and last, one bit per stage (stage 1 .. LATENCY), are reset; the data
        # registers are not (nothing reads them without their valid bit): a reset that reaches
        # every data flip-flop is a net of thousands of sinks across the chip (on the
        # ulx3s-minilm board the datapath's reset reached 16k, 7k of them in the write-back's
        # requantizers and GELU)
        valid_last_pipeline(m, en, self.i_stream, self.o_stream, self.LATENCY)

        for lane in range(self._lanes):
            elem = self.i_stream.payload.data[lane]
            terms = [self._term(m, en, lane, "", elem.x, elem.m, elem.e,
                                elem.bias if self._bias_width else None, platform)]
            if self._residual:
                terms.append(self._term(m, en, lane, "r_", elem.r, elem.m_r, elem.e_r, None,
                                        platform))

            out = Signal(signed(self._out_bits), name=f"out_{lane}", reset_less=True)
            if len(terms) == 1 and len(terms[0]) > self._out_bits:
                # one term: stage 8 has no sum to take, so it takes the saturation's test
                # (``fits``, a reduction in LUTs) and its sign, and stage 9 only picks
                # (rq2's saturation into its output register was on the ULX3S's failing
                # paths at 125 MHz)
                low = Signal(signed(self._out_bits), name=f"low_{lane}", reset_less=True)
                fits = Signal(name=f"fits_{lane}", reset_less=True)
                neg = Signal(name=f"neg_{lane}", reset_less=True)
                with m.If(en):
                    m.d.sync += [low.eq(terms[0][:self._out_bits].as_signed()),
                                 fits.eq(saturate_fits(terms[0], self._out_bits)),
                                 neg.eq(terms[0][-1])]
                with m.If(en):
                    m.d.sync += out.eq(saturate_pick(fits, low, neg, self._out_bits))
            else:
                # stage 8: sum of the terms
                total = Signal(signed(max(len(t) for t in terms) + len(terms) - 1),
                               name=f"total_{lane}", reset_less=True)
                with m.If(en):
                    m.d.sync += total.eq(sum(terms[1:], terms[0]))

                # stage 9: saturated to out_bits (the output register; rtl.common.saturate:
                # a reduction in LUTs, no carry chain)
                with m.If(en):
                    m.d.sync += out.eq(saturate(total, self._out_bits))
            m.d.comb += self.o_stream.payload.data[lane].eq(out)
        return m

    def _term(self, m, en, lane, prefix, x_in, m_in, e_in, bias_in, platform=None):
        """Stages 1-7 of one requantized term; returns its (unsaturated) stage-7 register."""
        def reg(shape, name):
            # data registers: no reset (see elaborate)
            return Signal(shape, name=f"{prefix}{name}_{lane}", reset_less=True)

        def at(stage, *assigns):
            with m.If(en):
                m.d.sync += assigns

        x_width = len(x_in)
        bias_width = len(bias_in) if bias_in is not None else 0
        acc_width = self._acc_width(x_width, bias_width)

        # stages 1 and 2: the operand registers x, m and the partial products x*m, each at
        # most 18x18 (DSP input and output registers). On ECP5 each partial product is a
        # MULT18X18D with both registers inside it (mult18x18d_products).
        if self._multipliers == "dsp" and uses_mult18x18d(platform):
            partials = mult18x18d_products(m, x_in, m_in, en=en, name=f"{prefix}dsp{lane}_")
        else:
            x = reg(signed(x_width), "x")
            mul = reg(signed(REQ_M_BITS), "m")
            at(1, x.eq(x_in), mul.eq(m_in))
            partials = []
            for index, (product, shift) in enumerate(dsp_partial_products(
                    x, mul, style=self._multipliers, m=m, name=f"{prefix}mul{lane}_")):
                p = reg(product.shape(), f"p{index}")
                at(2, p.eq(product))
                partials.append((p, shift))
        # stage 1: s = e - 1 is the first shift; the bias waits for the products
        s1 = reg(unsigned(REQ_E_BITS), "s1")
        at(1, s1.eq(e_in - 1))
        if bias_in is not None:
            bias1 = reg(signed(bias_width), "bias1")
            at(1, bias1.eq(bias_in))

        s2 = reg(unsigned(REQ_E_BITS), "s2")
        at(2, s2.eq(s1))
        if bias_in is not None:
            bias2 = reg(signed(bias_width), "bias2")
            at(2, bias2.eq(bias1))

        # stage 3: the partial products copied into fabric registers (fabric_copies: the
        # route from a DSP to the adder below was on the ULX3S's failing paths at 125 MHz).
        # (Folding the fine shift and the rounding into one stage to keep the latency was
        # tried: that stage, an 8-way multiplexer into a carry chain, became the worst path,
        # 8.56 ns.)
        copies = fabric_copies(m, partials, en=en, name=f"{prefix}pf_{lane}_")
        s3 = reg(unsigned(REQ_E_BITS), "s3")
        at(3, s3.eq(s2))
        if bias_in is not None:
            bias3 = reg(signed(bias_width), "bias3")
            at(3, bias3.eq(bias2))

        # stage 4: acc = x*m + bias (exact in acc_width bits)
        acc = reg(signed(acc_width), "acc")
        total = sum((p << shift for p, shift in copies[1:]), copies[0][0] << copies[0][1])
        if bias_in is not None:
            total = total + bias3
        s4 = reg(unsigned(REQ_E_BITS), "s4")
        at(4, acc.eq(total), s4.eq(s3))

        # stage 5: coarse arithmetic shift by the multiple-of-8 part of s = e - 1
        coarse = reg(signed(acc_width), "coarse")
        s5 = reg(unsigned(3), "s5")
        at(5, coarse.eq(acc >> Cat(Const(0, 3), s4[3:])), s5.eq(s4[:3]))

        # stage 6: fine shift by s mod 8: floor(acc / 2**(e-1))
        fine = reg(signed(acc_width), "fine")
        at(6, fine.eq(coarse >> s5))

        # stage 7: round half up: floor((floor(acc / 2**(e-1)) + 1) / 2)
        rounded = reg(signed(acc_width), "rounded")
        at(7, rounded.eq((fine + 1) >> 1))
        return rounded
