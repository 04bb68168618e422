"""Integer-only GELU (``bertcore.quant.kernels.int_gelu_int``) as a pipelined unit."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bertcore.quant.kernels import GELU_SHIFT, int_range
from .common import (check_int, check_multipliers, dsp_partial_products, multiply_latency,
                     rejecting, valid_last_pipeline)
from .multiplier import mult18x18d_products, uses_mult18x18d

__all__ = ["IntGELU"]


def _signed_bits(lo, hi):
    """Width of the smallest signed shape holding every integer in ``[lo, hi]``."""
    width = 1
    while not (-(1 << (width - 1)) <= lo and hi <= (1 << (width - 1)) - 1):
        width += 1
    return width


class IntGELU(wiring.Component):
    """i-GELU of ``lanes`` signed values per beat: :func:`bertcore.quant.kernels.int_gelu_int`.

    ``y = x * (floor(sign(x) * ((min(|x|, -b) + b)**2 + c) / 2**GELU_SHIFT) + q1)``, bit for bit,
    computed as ``t = min(|x| + b, 0)`` (the same value), ``w = t*t + c``, ``erf = floor(sign(x)
    * w / 2**GELU_SHIFT)``, ``y = x * (erf + q1)``.

    The constants ``b``, ``c``, ``q1`` (from :func:`~bertcore.quant.kernels.gelu_constants` of
    the input scale) are input ports, shared by all lanes and held stable while the unit runs;
    one bitstream serves any input scale. Their widths follow from ``in_width`` = W:

    * ``b``: signed ``W + 1``, so ``-2**W <= b``: the clip point ``-b`` covers every ``|x|``.
      ``gelu_constants`` gives ``b = floor(-2.5017 / S)``; this holds for input scales
      ``S >= 2.5017 / 2**W`` (``S >= 3.9e-5`` for W = 16), i.e. a real input range of at least
      +-1.25.
    * ``c``: signed ``2W + 2`` (``gelu_constants`` gives ``c ~ -1.107 b**2``, ``|c| < 2**(2W+1)``).
    * ``q1``: signed ``max(2W + 3 - GELU_SHIFT, 2)`` (``q1 ~ b**2 / 14806``).

    Every intermediate is sized by interval arithmetic over all values of ``x`` and of the
    constant ports, so the result is exact for any port values (not only consistent constants).
    The output width :attr:`out_width` is the signed width of the interval product
    ``[x] * [erf + q1]``: ``|y| < 2**(W-1) * 7 * 2**(2W-14)``, so ``3W - 11`` bits for W >= 8
    (37 bits for W = 16). For constants of a realistic scale the values stay far smaller, about
    ``|x| * 2|q1|`` (33 bits at S = 1e-4).

    Parameters
    ----------
    lanes : int
        Elements per beat (``>= 1``).
    in_width : int
        Width W of the signed input (``>= 2``; the encoder feeds 16).
    multipliers : ``"dsp"`` or ``"lut"``
        How the products ``t*t`` and ``x*(erf+q1)`` are built
        (:func:`bertcore.rtl.common.multiply`): ``"dsp"`` (default) with the ``*`` operator,
        which synthesis maps onto DSP blocks, or ``"lut"`` by shift and add in LUT logic, for
        devices short of DSP blocks. Results, latency and throughput are the same.

    Members
    -------
    i_stream : ``In(stream.Signature({"data": [signed(W)] * lanes, "last": 1}))``
    o_stream : ``Out(stream.Signature({"data": [signed(out_width)] * lanes, "last": 1}))``
        ``last`` is passed through.
    b : ``In(signed(b_width))``
    c : ``In(signed(c_width))``
    q1 : ``In(signed(q1_width))``
        The i-GELU constants. They are registered once (not per stage) and used by stages 2, 5
        and 7 (6 and not 7 with ECP5 DSPs): change them only while no beat is in flight; beats
        entering two cycles after a change see the new values.

    Latency and throughput: fully pipelined, one beat per cycle; :attr:`latency` cycles from an
    input transfer to the output transfer of the same beat while ``o_stream.ready`` is high:
    :data:`LATENCY` with DSP multipliers, two more with ``multipliers="lut"``, whose two
    shift-and-add multipliers each have a register stage in the middle of their adder tree.
    The pipeline advances when ``o_stream.valid`` is low or ``o_stream.ready`` is high
    (``i_stream.ready`` is that condition). Both multipliers (``t*t``, ``x*(erf+q1)``) have
    registered operands and registered products, split into 18x18 partial products where an
    operand is wider (``x*(erf+q1)`` is two multiplies for W = 16), each one DSP block or, with
    ``multipliers="lut"``, one shift-and-add multiplier.

    Raises
    ------
    TypeError
        If ``lanes`` or ``in_width`` is not an integer.
    ValueError
        If ``lanes`` is not positive, ``in_width`` is below 2, or ``multipliers`` is not
        ``"dsp"`` or ``"lut"``.
    """

    #: Cycles from an input transfer to the output transfer of that beat (output always ready),
    #: with DSP multipliers (see :meth:`latency_for`).
    LATENCY = 9

    @classmethod
    def latency_for(cls, multipliers):
        """The latency of a unit built with ``multipliers`` (``"dsp"`` or ``"lut"``)."""
        check_multipliers(multipliers)
        return cls.LATENCY + 2 * multiply_latency(multipliers, True)

    def __init__(self, *, lanes, in_width, multipliers="dsp"):
        with rejecting(self):
            check_int("lanes", lanes, 1)
            check_int("in_width", in_width, 2)
            check_multipliers(multipliers)
        self._multipliers = multipliers
        self._lanes = lanes
        self._in_width = in_width
        self._b_width = in_width + 1
        self._c_width = 2 * in_width + 2
        self._q1_width = max(2 * in_width + 3 - GELU_SHIFT, 2)
        self._ranges = self._intervals()
        self._out_width = _signed_bits(*self._ranges["y"])
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(in_width), lanes),
                "last": unsigned(1),
            }))),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(self._out_width), lanes),
                "last": unsigned(1),
            }))),
            "b": In(signed(self._b_width)),
            "c": In(signed(self._c_width)),
            "q1": In(signed(self._q1_width)),
        })

    lanes = property(lambda self: self._lanes, doc="Elements per beat.")
    in_width = property(lambda self: self._in_width, doc="Width of the signed input.")
    multipliers = property(lambda self: self._multipliers,
                           doc="How the multipliers are built: ``'dsp'`` or ``'lut'``.")
    out_width = property(lambda self: self._out_width, doc="Width of the signed output.")
    latency = property(lambda self: self.latency_for(self._multipliers),
                       doc="Cycles from an input transfer to the output of that beat.")
    b_width = property(lambda self: self._b_width, doc="Width of the signed ``b`` port.")
    c_width = property(lambda self: self._c_width, doc="Width of the signed ``c`` port.")
    q1_width = property(lambda self: self._q1_width, doc="Width of the signed ``q1`` port.")

    def _intervals(self):
        """``[lo, hi]`` of every intermediate over all inputs and all constant-port values."""
        x = int_range(self._in_width)
        b = int_range(self._b_width)
        c = int_range(self._c_width)
        q1 = int_range(self._q1_width)
        ax = (0, -x[0])                                   # |x|
        u = (ax[0] + b[0], ax[1] + b[1])                  # |x| + b
        t = (min(u[0], 0), min(u[1], 0))                  # min(|x| + b, 0)
        sq = (0, max(t[0] * t[0], t[1] * t[1]))           # t*t
        w = (sq[0] + c[0], sq[1] + c[1])                  # t*t + c
        w_1 = (w[0] - 1, w[1] - 1)                        # w - 1 (ECP5: for x < 0)
        mag = max(-w[0], w[1])
        e = (-mag, mag)                                   # sign(x) * w
        erf = (e[0] >> GELU_SHIFT, e[1] >> GELU_SHIFT)
        v = (erf[0] + q1[0], erf[1] + q1[1])              # erf + q1
        products = [xx * vv for xx in x for vv in v]
        y = (min(products), max(products))
        return {"u": u, "t": t, "sq": sq, "w": w, "w_1": w_1, "e": e, "erf": erf, "v": v,
                "y": y}

    def _registered_products(self, m, at, a, b, mul_en, prefix, lane):
        """The partial products of ``a * b`` (:func:`dsp_partial_products` in the unit's style),
        each registered (``at``): a list of ``(register, shift)``."""
        partials = []
        for index, (product, shift) in enumerate(dsp_partial_products(
                a, b, style=self._multipliers, m=m, name=f"{prefix}_mul{lane}_", en=mul_en)):
            p = Signal(product.shape(), name=f"{prefix}{index}_{lane}", reset_less=True)
            at(p.eq(product))
            partials.append((p, shift))
        return partials

    def elaborate(self, platform):
        m = Module()
        ranges = self._ranges
        en = Signal()          # the whole pipeline advances
        m.d.comb += [
            en.eq(~self.o_stream.valid | self.o_stream.ready),
            self.i_stream.ready.eq(en),
        ]

        # the constants, registered once (they are stable while the unit runs)
        b = Signal.like(self.b, name="b_reg", reset_less=True)
        c = Signal.like(self.c, name="c_reg", reset_less=True)
        q1 = Signal.like(self.q1, name="q1_reg", reset_less=True)
        m.d.sync += [b.eq(self.b), c.eq(self.c), q1.eq(self.q1)]

        # valid and last, one bit per stage (stage 1 .. latency), are reset; the data registers
        # are not (nothing reads them without their valid bit; Requantizer says why)
        valid_last_pipeline(m, en, self.i_stream, self.o_stream, self.latency)
        # LUT multipliers take one more stage each (a register inside the adder tree)
        mul_en = en if self._multipliers == "lut" else None
        d = multiply_latency(self._multipliers, True)
        on_dsp = self._multipliers == "dsp" and uses_mult18x18d(platform)
        if on_dsp:
            c_1 = Signal(signed(self._c_width + 1), name="c_1_reg", reset_less=True)  # c - 1
            m.d.sync += c_1.eq(self.c - 1)

        def sized(key, name):
            return Signal(signed(_signed_bits(*ranges[key])), name=name, reset_less=True)

        for lane in range(self._lanes):
            def at(*assigns):
                with m.If(en):
                    m.d.sync += assigns

            # x travels along (its sign is used in stage 6, its value in stage 8; each +d)
            xs = [Signal(signed(self._in_width), name=f"x{k}_{lane}", reset_less=True)
                  for k in range(1, 8 + d)]
            at(xs[0].eq(self.i_stream.payload.data[lane]))        # stage 1: input register
            at(*[x.eq(p) for x, p in zip(xs[1:], xs)])

            # stage 2: t = min(|x| + b, 0) = min(|x|, -b) + b, in the fabric: the adder and the
            # two multiplexers end in a flip-flop, not in the DSP's input register
            u = Mux(xs[0] < 0, b - xs[0], b + xs[0])
            t = sized("t", f"t_{lane}")
            at(t.eq(Mux(u < 0, u, 0)))

            # stages 3, 4 (+d): the operand register t3 = t, then the partial products of
            # t3*t3 (DSP output registers); on ECP5 MULT18X18Ds whose input registers are t3
            # (mult18x18d_products: they load t)
            if on_dsp:
                partials = mult18x18d_products(m, t, t, en=en, name=f"tt_dsp{lane}_")
            else:
                t3 = sized("t", f"t3_{lane}")
                at(t3.eq(t))
                partials = self._registered_products(m, at, t3, t3, mul_en, "tt", lane)

            # stage 5: w = t*t + c
            w = sized("w", f"w_{lane}")
            at(w.eq(sum((p << shift for p, shift in partials), c)))

            # stage 6: e = sign(x) * w
            sign_pos, sign_neg = xs[4 + d] > 0, xs[4 + d] < 0

            # stage 7: v = floor(e / 2**GELU_SHIFT) + q1  (DSP operand register)
            v = sized("v", f"v_{lane}")

            # stage 8 (+d): partial products of x * v (DSP output registers); on ECP5 inside
            # MULT18X18Ds, which load v and x from the register before xs[6] (xs[6] loads xs[5]).
            # There v itself is taken in stage 6, into a fabric register in place of e's, which
            # the DSPs' operand registers load as they loaded e's sum before (the same value in
            # the same cycle): no adder between a flip-flop and a DSP input, whose route may be
            # long (e's sum into a DSP placed 4.7 ns of route away, 8.3 ns, was the ULX3S's one
            # failing path in a placement at 125 MHz). So that stage 6 has one carry chain, as
            # e's negation had, stage 5 also takes w - 1 (t*t + (c - 1)): for x < 0,
            # floor(-w / 2**S) + q1 = q1 + ~((w - 1) >> S), as -ceil(w / 2**S) = ~floor((w - 1)
            # / 2**S); for x > 0 (w >> S) + q1; for x = 0 q1.
            if on_dsp:
                w_1 = sized("w_1", f"w_1_{lane}")
                at(w_1.eq(sum((p << shift for p, shift in partials), c_1)))
                at(v.eq(Mux(sign_pos, (w >> GELU_SHIFT) + q1,
                            Mux(sign_neg, q1 + ~(w_1 >> GELU_SHIFT), q1))))
                partials = mult18x18d_products(m, xs[5], v, en=en, name=f"xv_dsp{lane}_")
            else:
                e = sized("e", f"e_{lane}")
                at(e.eq(Mux(sign_pos, w, Mux(sign_neg, -w, 0))))
                at(v.eq((e >> GELU_SHIFT) + q1))
                partials = self._registered_products(m, at, xs[6 + d], v, mul_en, "xv", lane)

            # stage 9: y = x * v (the output register)
            y = Signal(signed(self._out_width), name=f"y_{lane}", reset_less=True)
            at(y.eq(sum((p << shift for p, shift in partials[1:]), partials[0][0] << partials[0][1])))
            m.d.comb += self.o_stream.payload.data[lane].eq(y)
        return m
