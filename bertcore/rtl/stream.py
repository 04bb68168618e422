"""Stream plumbing: :class:`RegisterSlice`, a fully registered stage for a ``lib.stream``.

A register slice cuts every combinational path through a stream connection: its output
``valid`` and ``payload`` come from flip-flops, and so does its input ``ready``. It keeps full
throughput (one beat per cycle) with a second ("skid") register that catches the beat accepted
in the cycle the output stalls. Put one where a stream crosses the chip (the units of the
encoder core sit far apart on an FPGA) or at a block's external ports.

>>> RegisterSlice.latency
1
"""

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisterSlice"]


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

