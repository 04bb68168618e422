"""What the encoder core's components share: stream and port signatures, the job descriptor,
and the small multiplexer and stream helpers they are built from.

Port signatures are seen from the side that *uses* a memory port (the side that drives the
address): ``read_port`` and ``write_port`` are :class:`amaranth.lib.memory.ReadPort` /
``WritePort`` signatures flipped, except that ``en`` resets to 0, so a port nobody enables stays
disabled. A *row read* reads one address in every bank of a banked buffer at once; its data is
one word per bank (``data[b]``), one cycle after ``en``.
"""

from amaranth.hdl import (Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Mux, ResetSignal,
                          Shape, Signal, Value, signed, unsigned)
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from bertcore.rtl.common import less
from bertcore.rtl.stream import RegisterSlice

__all__ = [
    "bus_layout", "bus_signature", "act_layout", "act_signature", "out_layout", "out_signature",
    "read_port", "row_read", "write_port", "task", "task_wake", "add_gated",
    "handover", "job_layout", "pick", "times", "fork", "sliced", "feed", "score_word",
    "prob_word",
    "G_Q", "G_K", "G_V", "G_O", "G_FFN1", "G_FFN2",
    "M_Q", "M_K", "M_V", "M_O", "M_FFN1", "M_FFN2", "M_SCORE", "M_CTX",
    "A_X", "A_Q", "A_A", "A_H", "A_P", "J_PANEL", "J_SCORE", "J_PV",
]

# Panel groups (the order of the image) and write-back modes.
G_Q, G_K, G_V, G_O, G_FFN1, G_FFN2 = range(6)
M_Q, M_K, M_V, M_O, M_FFN1, M_FFN2, M_SCORE, M_CTX = range(8)
# Sources of the A operand and kinds of jobs.
A_X, A_Q, A_A, A_H, A_P = range(5)
J_PANEL, J_SCORE, J_PV = range(3)


def bus_layout(bus_width):
    """Payload layout of the core's streams: ``{"data": unsigned(bus_width), "last": 1}``."""
    return data.StructLayout({"data": unsigned(bus_width), "last": unsigned(1)})


def bus_signature(bus_width):
    """``stream.Signature(bus_layout(bus_width))``: one AXI4-Stream word with ``tlast``."""
    return stream.Signature(bus_layout(bus_width))


def act_layout(bus_width):
    """Payload layout of the activation input: :func:`bus_layout` plus ``user`` (``tuser``, one
    bit: the beat belongs to a packed packet's segment table, ``docs/interface.md``)."""
    return data.StructLayout({"data": unsigned(bus_width), "last": unsigned(1),
                              "user": unsigned(1)})


def act_signature(bus_width):
    """``stream.Signature(act_layout(bus_width))``: the activation input's beats."""
    return stream.Signature(act_layout(bus_width))


def out_layout(bus_width):
    """Payload layout of the core's output stream, the shape of :func:`act_layout`; there
    ``user`` (``tuser``) marks a failed run's one-beat failure packet (``data``: its cause
    code, ``docs/interface.md``, "Run outcome")."""
    return act_layout(bus_width)


def out_signature(bus_width):
    """``stream.Signature(out_layout(bus_width))``: one output word with ``tlast``, ``tuser``."""
    return stream.Signature(out_layout(bus_width))


def _addr_width(depth):
    return (depth - 1).bit_length()


def read_port(depth, shape):
    """A synchronous read port of a memory of ``depth`` words (user side): ``addr``, ``en`` out,
    ``data`` in (the word at ``addr`` one cycle after ``en``)."""
    return wiring.Signature({"addr": Out(_addr_width(depth)), "en": Out(1), "data": In(shape)})


def row_read(depth, word_shape, banks):
    """A read port of a banked buffer (user side): one address for all ``banks``, ``data[b]``
    the word of bank ``b``."""
    return read_port(depth, data.ArrayLayout(word_shape, banks))


def write_port(depth, shape):
    """A write port of a memory of ``depth`` words (user side): ``addr``, ``data``, ``en`` out."""
    return wiring.Signature({"addr": Out(_addr_width(depth)), "data": Out(shape), "en": Out(1)})


def task(**params):
    """Control of a pass or job (sequencer side): ``start`` (a one-cycle pulse) and the task's
    ``params`` (shapes, valid with ``start``) out, ``done`` in (sampled only while waiting)."""
    return wiring.Signature({"start": Out(1), **{k: Out(v) for k, v in params.items()},
                             "done": In(1)})


def task_wake(m, ctl):
    """``start``, or a task started and not done yet (``ctl`` seen from the unit): when the
    unit of a :func:`task` member ``ctl`` must run, for :func:`add_gated`."""
    busy = Signal()
    with m.If(ctl.start):
        m.d.sync += busy.eq(1)
    with m.Elif(ctl.done):
        m.d.sync += busy.eq(0)
    return ctl.start | busy


def add_gated(m, name, unit, wake, *, drain):
    """Add ``unit`` as submodule ``name`` on a clock that runs only while ``wake`` is high,
    for ``drain`` cycles after it and while the reset is high.

    For Verilog simulations only (:class:`~bertcore.core.encoder.EncoderCore`'s
    ``gate_idle``): Verilator evaluates a clock domain's logic on that clock's edges only, so a
    stopped unit costs nothing per cycle. FPGA builds keep one clock (a gated clock in the
    fabric is not what the design is timed for), and the Amaranth simulator would race the
    derived clock (as it does ``dp_domain``'s).

    ``wake`` must be high in every cycle in which the unit takes something in (a ``start``, a
    stream beat) or has work of its own (:func:`task_wake`); ``drain`` covers what its
    pipelines still move after that (bubbles, registers that follow their inputs), so that a
    stopped clock changes nothing the unit puts out: its outputs stand still, and any register
    that would have followed an input is loaded again before it is used. The clock is
    ``ClockSignal() & on``, ``on`` the enable latched on the falling edge (a glitch-free gate,
    as a clock-gating cell makes it). The enclosing domain's clock must not be gated itself:
    ``on`` is latched on its falling edges, which a stopped clock does not have.

    The unit's domain resets asynchronously, with the enclosing domain's reset: a synchronous
    reset is a term of every register's next value, which made Verilator evaluate the unit's
    next-value logic on every edge of the reset's own clock (12 % of the time on ``minilm``,
    ``docs/core.md``). So a gated unit resets one cycle before the rest of its domain (as the
    reset rises, not at the next edge). In the core that domain is the datapath's, reset by
    the controller's ``abort``, which also resets everything the gated units talk to; what
    differs in that one cycle is what a unit writes into the buffers (no run's result depends
    on what they held before it) and a unit's error pulse seen by the controller.
    """
    left = Signal(range(drain + 1), name=f"{name}_drain", init=drain)
    with m.If(wake):
        m.d.sync += left.eq(drain)
    with m.Elif(left != 0):
        m.d.sync += left.eq(left - 1)
    on = Signal(name=f"{name}_on")
    cd_neg = ClockDomain(f"{name}_neg", clk_edge="neg", reset_less=True, local=True)
    cd = ClockDomain(f"{name}_clk", async_reset=True, local=True)
    m.domains += [cd_neg, cd]
    m.d.comb += [cd_neg.clk.eq(ClockSignal()), cd.clk.eq(ClockSignal() & on),
                 cd.rst.eq(ResetSignal())]
    m.d[f"{name}_neg"] += on.eq(wake | (left != 0) | ResetSignal())
    m.submodules[name] = DomainRenamer(f"{name}_clk")(unit)


def handover(slots):
    """Records handed from the loader to the sequencer in ``slots`` slots (loader side):
    ``full[i]`` out (slot ``i`` holds a record), ``release`` in (a one-cycle pulse: the
    sequencer has used slot ``index``; ``index`` only with two or more slots)."""
    members = {"full": Out(slots), "release": In(1)}
    if slots > 1:
        members["index"] = In(range(slots))
    return wiring.Signature(members)


def job_layout(config):
    """The descriptor of one GEMM job (:class:`~bertcore.core.gemm.GemmEngine`)."""
    n = config.array_cols
    cwh, cwf = config.hidden // n, config.ffn // n
    grp = -(-config.max_seq // n)
    kmax = max(config.hidden, config.ffn, config.max_seq)
    return data.StructLayout({
        "kind": range(3),                                 # J_PANEL, J_SCORE, J_PV
        "asrc": range(5),                                 # A operand: A_X ... A_P
        "tiles": range(max(grp, cwh, cwf, config.head_dim // n) + 1),
        "k": range(kmax + 1),                             # beats per tile (reduction length)
        "mode": range(8),                                 # write-back: M_Q ... M_CTX
        "mb": range(grp),                                 # query block (scores, P·V)
        "kb": range(grp),                                 # first key block (scores, P·V)
        "chw": range(cwh + 1),                            # first channel word of the head
        "chunk": range(max(cwh, cwf)),                    # output chunk of a panel
        "slot": 1,                                        # panel slot of the loader
        "bias": 1,                                        # add the slot's bias
        "bank": 1,                                        # score bank (scores), P bank (P·V)
    })


def pick(items, index, shape):
    """A value of ``shape`` driven by ``items[index]`` (``items[-1]`` for an index past the
    end): a balanced tree of two-input multiplexers on the bits of ``index``, ``log2(len)``
    levels deep (no ``case``, which Verilator's -Wall flags as incomplete when ``len(items)``
    is not a power of two, and no chain of comparisons)."""
    bits = min((len(items) - 1).bit_length(), len(index))
    level = list(items[:1 << bits])
    level += [items[-1]] * ((1 << bits) - len(level))
    for k in range(bits):
        level = [Mux(index[k], level[2 * i + 1], level[2 * i]) for i in range(len(level) // 2)]
    value = level[0]
    if len(index) > bits:                    # index values past the tree: the last item
        value = Mux(~less(index, len(items)), items[-1], value)
    value = Value.cast(value)
    return value.as_signed() if Shape.cast(shape).signed else value.as_unsigned()


def score_word(bank, q, kb, grp, rps):
    """The word of a score bank holding row ``q`` of its ``rps`` rows of the block, key block
    ``kb``, in half ``bank`` (the write-back writes it, the softmax pass reads it)."""
    return times(q, grp) + kb + Mux(bank, rps * grp, 0)


def prob_word(bank, kb, grp):
    """The word of the P buffer holding key block ``kb`` in half ``bank`` (the softmax pass
    writes it, the feeder reads it)."""
    return kb + Mux(bank, grp, 0)


def times(value, k):
    """``value * k`` for an unsigned ``value`` and a constant ``k >= 0``, as shifted copies of
    ``value`` added and subtracted (the non-adjacent form of ``k``: × 48 = × 64 − × 16), of the
    shape of ``value * k``.

    yosys maps every product by a constant that is not a power of two onto a MULT18X18D on
    ECP5, used combinationally (10–11.5 ns on the -6 part) and followed by the address adders;
    the addresses of the banked buffers (a row group times its channel words) take one adder
    this way and no DSP block.
    """
    value = Value.cast(value)
    if value.shape().signed:
        raise TypeError(f"value must be unsigned, not {value.shape()!r}")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, not {k!r}")
    width = len(value) + len(Const(k))
    add, sub = [], []
    shift = 0
    while k:
        if k & 1:
            digit = 2 - (k & 3)             # +1, or -1 where a run of ones starts
            (add if digit > 0 else sub).append(value << shift)
            k -= digit
        k >>= 1
        shift += 1
    total = sum(add[1:], add[0]) if add else Const(0, width)
    for term in sub:
        total = total - term
    total = total.as_unsigned()[:width]
    return Cat(total, Const(0, width - len(total)))


def fork(m, name, valid, sinks, on):
    """Offer one registered beat (``valid``) to the input streams ``sinks`` at once.

    Sink ``i`` gets the beat when ``on[i]`` is set; a sink that takes it early is not offered it
    again. Returns the signal that is high when the register may advance (it is empty, or
    every sink it is for has taken the beat).
    """
    took = Signal(len(sinks), name=f"{name}_took")
    adv = Signal(name=f"{name}_adv")
    m.d.comb += adv.eq(~valid | Cat(*(took[i] | ~on[i] | sink.ready
                                      for i, sink in enumerate(sinks))).all())
    for i, sink in enumerate(sinks):
        m.d.comb += sink.valid.eq(valid & on[i] & ~took[i])
        with m.If(adv):
            m.d.sync += took[i].eq(0)
        with m.Elif(sink.valid & sink.ready):
            m.d.sync += took[i].eq(1)
    return adv


def sliced(m, name, streams, *, inputs=True):
    """A :class:`RegisterSlice` on each of ``streams`` (the units sit apart from the banks that
    feed them and from the logic that joins their outputs). With ``inputs``, ``streams`` are
    the units' input streams and the slices' inputs are returned; else they are output streams
    and the slices' outputs are returned."""
    ends = []
    for k, s in enumerate(streams):
        m.submodules[f"{name}{k}"] = rs = RegisterSlice(s.payload.shape())
        if inputs:
            connect(m, rs.o_stream, s)
            ends.append(rs.i_stream)
        else:
            connect(m, s, rs.i_stream)
            ends.append(rs.o_stream)
    return ends


def element(word, index, shape):
    """Element ``index`` of ``word`` read as consecutive elements of ``shape``'s width (a
    :func:`pick` of ``shape``)."""
    width = Shape.cast(shape).width
    return pick([word[width * j:width * (j + 1)] for j in range(len(word) // width)], index,
                shape)


def feed(m, port, sinks, addr, adv, lane, width, last):
    """The row read ``port`` reads word ``addr`` (when ``adv``); the ``lane``-th ``width``-bit
    element (signed) of bank ``i``'s word and ``last`` go to the payload of ``sinks[i]``."""
    m.d.comb += [port.addr.eq(addr), port.en.eq(adv)]
    for i, sink in enumerate(sinks):
        m.d.comb += [sink.payload.data.eq(element(port.data[i], lane, signed(width))),
                     sink.payload.last.eq(last)]
