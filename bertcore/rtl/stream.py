"""Stream plumbing: :class:`RegisterSlice`, a fully registered stage for a ``lib.stream``.

A register slice cuts every combinational path through a stream connection: its output
``valid`` and ``payload`` come from flip-flops, and so does its input ``ready``. It keeps full
throughput (one beat per cycle) with a second ("skid") register that catches the beat accepted
in the cycle the output stalls. Put one where a stream crosses the chip (the units of the
encoder core sit far apart on an FPGA) or at a block's external ports.

>>> RegisterSlice.latency
1

:class:`StreamBuffer` is the same stage with room for more beats: its skid register is a queue
in memory (LUT RAM on an FPGA). A producer that counts the beats it has in flight against the
buffer's ``depth`` (credits) never needs its ``ready``, so a pipeline in front of it advances
every cycle, with no enable fanned out to its registers.

>>> StreamBuffer.latency
1
"""

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .common import check_int, rejecting

__all__ = ["RegisterSlice", "StreamBuffer"]


class RegisterSlice(wiring.Component):
    """One registered stage of a stream (a two-entry skid buffer).

    Parameters
    ----------
    payload_shape : shape-castable
        The payload of both streams.

    Members
    -------
    i_stream : ``In(stream.Signature(payload_shape))``
        Input. ``i_stream.ready`` is a flip-flop (high while the skid register is empty).
    o_stream : ``Out(stream.Signature(payload_shape))``
        Output. ``o_stream.valid`` and ``o_stream.payload`` are flip-flops; a beat taken on
        ``i_stream`` appears on ``o_stream`` one cycle later, and every beat passes in order, none lost or repeated, under any
        pattern of ``i.valid`` and ``o.ready``.
    """

    latency = 1

    def __init__(self, payload_shape):
        super().__init__({"i_stream": In(stream.Signature(payload_shape)),
                          "o_stream": Out(stream.Signature(payload_shape))})

    def elaborate(self, platform):
        m = Module()
        skid_valid = Signal()
        i_data = Value.cast(self.i_stream.payload)
        o_data = Value.cast(self.o_stream.payload)
        # the payload registers are not reset (valid says whether they hold a beat): a reset
        # of every data flip-flop is a net of thousands of sinks across a chip
        skid = Signal.like(i_data, name="skid", reset_less=True)
        o_reg = Signal.like(o_data, name="o_payload", reset_less=True)
        m.d.comb += [self.i_stream.ready.eq(~skid_valid), o_data.eq(o_reg)]
        with m.If(~self.o_stream.valid | self.o_stream.ready):
            # the output register loads: from the skid register first (the input is not ready
            # then), else from the input
            m.d.sync += [self.o_stream.valid.eq(skid_valid | self.i_stream.valid),
                         o_reg.eq(Mux(skid_valid, skid, i_data)),
                         skid_valid.eq(0)]
        with m.Elif(self.i_stream.valid & ~skid_valid):
            # the output holds: the beat taken now waits in the skid register
            m.d.sync += [skid_valid.eq(1), skid.eq(i_data)]
        return m



class StreamBuffer(wiring.Component):
    """A registered stage of a stream that holds up to ``depth`` beats.

    Like :class:`RegisterSlice` (``o_stream.valid``/``payload`` and ``i_stream.ready`` are
    flip-flops, a beat taken while the buffer is empty appears on ``o_stream`` one cycle later,
    one beat per cycle in and out), with a queue of ``depth - 1`` beats behind the output
    register instead of one skid register. The queue is a memory with an asynchronous read
    (LUT RAM on an FPGA): the output register loads from the queue's head, or from the input
    when the queue is empty.

    Parameters
    ----------
    payload_shape : shape-castable
        The payload of both streams.
    depth : int
        Beats held at most (at least 2).

    Members
    -------
    i_stream : ``In(stream.Signature(payload_shape))``
        Input; ``ready`` is high while fewer than ``depth`` beats are held. A producer that
        never has more than ``depth`` beats issued and not yet taken from ``o_stream`` may
        ignore it.
    o_stream : ``Out(stream.Signature(payload_shape))``
        Output: every beat in order, none lost or repeated, under any pattern of ``i.valid``
        and ``o.ready``.
    """

    latency = 1

    def __init__(self, payload_shape, depth):
        with rejecting(self):
            check_int("depth", depth, 2)
        self._depth = depth
        super().__init__({"i_stream": In(stream.Signature(payload_shape)),
                          "o_stream": Out(stream.Signature(payload_shape))})

    depth = property(lambda self: self._depth, doc="Beats held at most.")

    def elaborate(self, platform):
        m = Module()
        q = self._depth - 1                     # beats in the queue behind the output register
        i_data = Value.cast(self.i_stream.payload)
        o_data = Value.cast(self.o_stream.payload)
        # (two words at least: a one-word memory has a zero-width address, which Verilog has
        # not; with depth 2 the second word is never used)
        m.submodules.queue = queue = Memory(shape=len(i_data), depth=max(q, 2), init=[])
        w, r = queue.write_port(), queue.read_port(domain="comb")
        w_ptr, r_ptr = Signal(range(max(q, 2))), Signal(range(max(q, 2)))
        n = Signal(range(q + 1))                # beats in the queue
        ready = Signal(init=1)
        # the output register is not reset (valid says whether it holds a beat)
        o_reg = Signal.like(o_data, name="o_payload", reset_less=True)
        m.d.comb += [self.i_stream.ready.eq(ready), o_data.eq(o_reg), r.addr.eq(r_ptr)]

        def step(ptr):
            return Mux(ptr == q - 1, 0, ptr + 1)

        i_fire = self.i_stream.valid & ready
        o_load = ~self.o_stream.valid | self.o_stream.ready
        from_queue = o_load & (n != 0)
        bypass = o_load & (n == 0)              # the input (if any) goes straight out
        to_queue = i_fire & ~bypass
        o_valid_next = Mux(o_load, (n != 0) | i_fire, self.o_stream.valid)
        n_next = n + to_queue - from_queue
        with m.If(o_load):
            m.d.sync += [self.o_stream.valid.eq((n != 0) | i_fire),
                         o_reg.eq(Mux(n != 0, r.data, i_data))]
        with m.If(from_queue):
            m.d.sync += r_ptr.eq(step(r_ptr))
        m.d.comb += [w.addr.eq(w_ptr), w.data.eq(i_data), w.en.eq(to_queue)]
        with m.If(to_queue):
            m.d.sync += w_ptr.eq(step(w_ptr))
        m.d.sync += [n.eq(n_next), ready.eq(n_next + o_valid_next < self._depth)]
        return m
