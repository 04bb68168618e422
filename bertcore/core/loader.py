"""The parameter loader: the parameter image stream -> panel slots, layer scalars, LayerNorm
parameters.

The loader reads the image (:mod:`bertcore.core.image`) vector by vector; its states are
generated from the image's record descriptions (:data:`~bertcore.core.image.HEADER_FIELDS`,
:data:`~bertcore.core.image.SCALAR_FIELDS`, :data:`~bertcore.core.image.PANEL_FIELDS`,
:data:`~bertcore.core.image.PANEL_ROW`, :data:`~bertcore.core.image.LN_FIELDS`), so a record
changed there changes the loader with it. It runs ahead of the sequencer: a panel goes into a
free slot of the double-buffered panel buffer while the array computes the previous panel.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bertcore.quant.kernels import GELU_IN_BITS, REQ_M_BITS
from bertcore.rtl.blockram import BlockRam
from bertcore.rtl.common import delay
from bertcore.rtl.fsm import Fsm
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.requant import REQ_E_BITS
from bertcore.rtl.softmax import IntSoftmax
from bertcore.rtl.stream import RegisterSlice

from .common import G_FFN1, G_FFN2, G_O, G_Q, bus_signature, handover, read_port
from .image import (HEADER_BITS, LN_BIAS_BITS, LN_FIELDS, PANEL_FIELDS, PANEL_ROW, SCALAR_BITS,
                    header_words, image_beats, max_vector_bits, scalar_slices, vector_beats)

__all__ = ["ParameterLoader", "LN_LANE", "panel_layout", "scalar_layout"]

#: One lane (channel) of the LayerNorm parameter memory, from the fields of
#: :data:`~bertcore.core.image.LN_FIELDS` in order (cut to the widths the core uses).
LN_LANE = data.StructLayout({"m": signed(REQ_M_BITS), "e": unsigned(REQ_E_BITS),
                             "bias": signed(LN_BIAS_BITS)})
#: The core's width of each field of :data:`~bertcore.core.image.PANEL_FIELDS`.
_PANEL_SHAPES = {"bias": signed(32), "m": signed(REQ_M_BITS), "e": unsigned(REQ_E_BITS),
                 "m2": signed(REQ_M_BITS), "e2": unsigned(REQ_E_BITS)}


def panel_layout(n):
    """A panel's header in the core: each field of ``PANEL_FIELDS``, ``n`` lanes."""
    return data.StructLayout({f.name: data.ArrayLayout(_PANEL_SHAPES[f.name], n)
                              for f in PANEL_FIELDS})


def scalar_layout():
    """A layer's scalars in the core: each field of ``SCALAR_FIELDS`` at the width of the port
    it drives (the softmax units' constants, the context requantization, the GELU constants)."""
    gelu = IntGELU(lanes=1, in_width=GELU_IN_BITS)
    gelu._MustUse__silence = True                   # only its port widths are used
    sm = IntSoftmax.CONSTANT_SHAPES
    shapes = {**{f"sm_{k}": v for k, v in sm.items()},
              "ctx_m": signed(REQ_M_BITS), "ctx_e": unsigned(REQ_E_BITS),
              "gelu_b": signed(gelu.b_width), "gelu_c": signed(gelu.c_width),
              "gelu_q1": signed(gelu.q1_width)}
    return data.StructLayout({name: shapes[name] for name in scalar_slices()})


class ParameterLoader(wiring.Component):
    """Reads the parameter image into the panel slots, the layer scalars and the LayerNorm
    parameter memory.

    Vectors arrive in whole beats (:func:`~bertcore.core.image.vector_beats`); a vector's beats
    are assembled in a register of :func:`~bertcore.core.image.max_vector_bits` bits, the last
    beat is used as it arrives. The loader holds a record until its slot is free: two panel
    slots, one scalar record, two LayerNorm records (LN-1, LN-2), each handed over to the
    sequencer (``full``) and released by it.

    Members
    -------
    param : ``In(bus_signature(bus_width))``
        The parameter image (taken through a register slice: a beat is acted on a cycle after
        its transfer).
    start : ``In(1)``
        A run starts: expect a header.
    fail : ``Out(1)``
        The header is wrong, or ``last`` is not on the image's last beat (a one-cycle pulse).
    bad_length : ``Out(1)``
        With ``fail``: ``last`` is not on the image's last beat.
    slots, scalars_ho, ln_slots : ``Out(handover(...))``
        The panel slots (2), the scalar record (1) and the LayerNorm records (2).
    panels : ``Out(panel_layout(N)).array(2)``
        The headers (bias, requantization) of the two panel slots.
    panel_rd : ``In(read_port(2*K, unsigned(8*N)))``
        The weight rows of both slots (slot ``s``, row ``k`` at ``s*K + k``; ``K`` the largest
        reduction length of a panel), read through two registers that both load with ``en``
        (a :class:`~bertcore.rtl.blockram.BlockRam`): the row addressed with one ``en`` is on
        ``data`` after the next ``en``.
    scalars : ``Out(scalar_layout())``
        The current layer's scalars.
    ln_rd : ``In(read_port(2*hidden/N, ArrayLayout(LN_LANE, N)))``
        The LayerNorm parameters: LN-1 chunk ``c`` at ``c``, LN-2 at ``hidden/N + c``.
    """

    #: Cycles from a LayerNorm record's last beat to its write into the LayerNorm parameter
    #: memory; the record's flag (``ln_slots.full``) is set as many cycles after that beat, once
    #: the write has landed.
    LN_WRITE_STAGES = 1
    #: Likewise for the scalar record's registers and its flag (``scalars_ho.full``).
    SCALAR_WRITE_STAGES = 1

    def __init__(self, config):
        self._c = config
        n = config.array_cols
        self._kw = max(config.hidden, config.ffn)
        self._cwh = config.hidden // n
        super().__init__({
            "param": In(bus_signature(config.bus_width)),
            "start": In(1),
            "fail": Out(1),
            "bad_length": Out(1),
            "slots": Out(handover(2)),
            "scalars_ho": Out(handover(1)),
            "ln_slots": Out(handover(2)),
            "panels": Out(panel_layout(n)).array(2),
            "panel_rd": In(read_port(2 * self._kw, unsigned(8 * n))),
            "scalars": Out(scalar_layout()),
            "ln_rd": In(read_port(2 * self._cwh, unsigned(LN_LANE.size * n))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N, BUS = c.array_cols, c.bus_width
        # the panel buffer's reader (the feeder) registers the read data with the read's own
        # enable: that register is the block RAM's output register (on ECP5 the DP16KD's, ~1
        # ns clock-to-output instead of 5.8 ns into the feeder's operand registers)
        m.submodules.panel = panel = BlockRam(8 * N, 2 * self._kw)
        m.d.comb += [panel.r_addr.eq(self.panel_rd.addr), panel.r_en.eq(self.panel_rd.en),
                     panel.o_en.eq(self.panel_rd.en), self.panel_rd.data.eq(panel.r_data)]
        m.submodules.ln_mem = ln_mem = Memory(shape=unsigned(LN_LANE.size * N),
                                              depth=2 * self._cwh, init=[])
        rp = ln_mem.read_port()
        m.d.comb += [rp.addr.eq(self.ln_rd.addr), rp.en.eq(self.ln_rd.en),
                     self.ln_rd.data.eq(rp.data)]
        pw = SimpleNamespace(addr=panel.w_addr, data=panel.w_data, en=panel.w_en)
        # the LayerNorm parameter memory is written by registers a cycle after a record's last
        # beat (its enable, address and data: ``_fsm``)
        assert self.LN_WRITE_STAGES == self.SCALAR_WRITE_STAGES == 1   # those registers
        lw = ln_mem.write_port()
        st = {"pw": pw,
              "lw": SimpleNamespace(addr=Signal.like(lw.addr, name="lw_addr_q"), data=lw.data,
                                    en=Signal(name="lw_we"))}
        m.d.comb += [lw.en.eq(st["lw"].en), lw.addr.eq(st["lw"].addr)]
        # slot / record hand-over flags (the loader sets, the sequencer releases), each set
        # ``lag`` cycles after its record's last beat: in step with the record's writes
        # (the scalars' and the LayerNorm records' are a cycle late, below)
        for name, ho, slots, lag in (("slot", self.slots, 2, 0),
                                     ("scal", self.scalars_ho, 1, self.SCALAR_WRITE_STAGES),
                                     ("ln", self.ln_slots, 2, self.LN_WRITE_STAGES)):
            st[f"set_{name}"], st[f"set_{name}_i"] = Signal(name=f"set_{name}"), Signal()
            full = Signal(slots, name=f"{name}_full")
            set_ = delay(m, st[f"set_{name}"], lag, name=f"set_{name}")
            set_i = delay(m, st[f"set_{name}_i"], lag, name=f"set_{name}_i")
            for i in range(slots):
                with m.If(set_ & (set_i == i)):
                    m.d.sync += full[i].eq(1)
                with m.Elif(ho.release & ((ho.index == i) if slots > 1 else 1)):
                    m.d.sync += full[i].eq(0)
            m.d.comb += ho.full.eq(full)
        # the panel slots' headers
        # (the records' registers are data, not reset: each is loaded before the sequencer
        # takes it; Requantizer says why)
        slots = [Signal(panel_layout(N), name=f"slot{s}", reset_less=True) for s in range(2)]
        m.d.comb += [self.panels[s].eq(slots[s]) for s in range(2)]
        scalars = Signal(scalar_layout(), reset_less=True)
        m.d.comb += self.scalars.eq(scalars)

        # the image arrives through a register slice that also carries, for each beat, its
        # compare with every beat of the expected header (image.header_words): computed on the
        # slice's input, so that the header check is a register, not a 32-bit compare on the
        # path into the run controller's failure flag (the ULX3S's worst path at 125 MHz).
        # The slice also keeps the loader's ready (its slot and state flags) out of the run
        # controller's stream multiplexers (the ECP5 critical path at 100 MHz). The controller
        # passes no beat beyond the image's tlast, so the slice holds only beats of the running
        # image; the datapath's reset (abort) empties it.
        expected = sum(word << (32 * i) for i, word in enumerate(header_words(c)))
        hdr_beats = vector_beats(HEADER_BITS, BUS)
        m.submodules.param_slice = p_slice = RegisterSlice(data.StructLayout({
            "data": BUS, "last": 1, "hdr": hdr_beats}))
        hdr_checks = []
        for b in range(hdr_beats):
            width = min(BUS, HEADER_BITS - b * BUS)
            part = (expected >> (b * BUS)) & ((1 << width) - 1)
            hdr_checks.append(self.param.payload.data[:width] == part)
        m.d.comb += [p_slice.i_stream.valid.eq(self.param.valid),
                     p_slice.i_stream.payload.data.eq(self.param.payload.data),
                     p_slice.i_stream.payload.last.eq(self.param.payload.last),
                     p_slice.i_stream.payload.hdr.eq(Cat(*hdr_checks)),
                     self.param.ready.eq(p_slice.i_stream.ready)]
        param = p_slice.o_stream

        # vector assembly: the beats of a vector so far, and the current beat merged in
        total = image_beats(c)
        pbeat = Signal(range(total + 1))
        VB = vector_beats(max_vector_bits(c), BUS)
        vec = Signal(VB * BUS, reset_less=True)
        st["vb"] = vb = Signal(range(VB + 1))
        st["fire"] = p_fire = param.valid & param.ready
        st["payload"] = param.payload.data
        st["merged"] = merged = Cat(*(Mux(vb == b, param.payload.data,
                                          vec[b * BUS:(b + 1) * BUS]) for b in range(VB)))
        st["ok"] = param_ok = Signal()     # the loader may take a beat in its current state
        st["vdone"] = vdone = Signal()     # this beat completes the current vector
        st["hdr_end"] = Signal()           # the header's last beat is taken
        # ``ready`` is a register: ``ok`` a cycle late. ``ok`` falls only when the loader
        # itself hands a record over (a slot or record flag set, a new slot or record to fill)
        # or leaves the header; those cycles clear the register, so it is never set where
        # ``ok`` is not. A release by the sequencer shows a cycle later. This keeps the slot
        # flags and the state multiplexer out of the path into the loader's state (the ECP5
        # critical path at 100 MHz), for one idle cycle after each record.
        ready = Signal()
        m.d.sync += ready.eq(param_ok & ~(st["set_slot"] | st["set_scal"] | st["set_ln"]
                                          | st["hdr_end"]))
        m.d.comb += param.ready.eq(ready)
        # vec takes ``merged`` on every cycle, without an enable: only its beat ``vb`` changes,
        # and a beat below ``vb`` keeps what it took on the cycle it was fired (the last cycle
        # ``vb`` pointed at it); what is written at ``vb`` before its beat fires (a beat not
        # yet taken, or none) is overwritten by the beat itself. So neither the state decode
        # (the ULX3S's worst path at 100 MHz) nor the fire (at 125 MHz) fans out to these
        # VB * BUS flip-flops.
        m.d.sync += vec.eq(merged)
        st["vec"] = vec
        with m.If(p_fire):
            m.d.sync += pbeat.eq(pbeat + 1)
            with m.If(vdone):
                m.d.sync += vb.eq(0)
            with m.Else():
                m.d.sync += vb.eq(vb + 1)
        # length checks: tlast exactly on beat total-1 (``at_end``: pbeat == total - 1, a
        # register beside the counter, for the same reason as the header checks)
        at_end = Signal(init=total == 1)
        with m.If(p_fire):
            m.d.sync += at_end.eq(pbeat == total - 2)
        fail_len = Signal()
        m.d.comb += fail_len.eq(p_fire & (param.payload.last != at_end))
        # header: each beat's compare with its part of the expected header (from the slice),
        # the results kept in hdr_ok
        st["beat_ok"] = Signal()        # this header beat is as expected
        m.d.comb += st["beat_ok"].eq(param.payload.hdr.bit_select(vb, 1))
        fail_hdr = self._fsm(m, st, slots, scalars)
        m.d.comb += [self.fail.eq(fail_hdr | fail_len), self.bad_length.eq(fail_len)]
        return m

    def _fsm(self, m, st, slots, scalars):
        """The loader's states: one per record field, generated from the image's records.
        Returns the header-failure pulse."""
        c = self._c
        N, BUS, KW, CWH = c.array_cols, c.bus_width, self._kw, self._cwh
        merged, p_fire, vb = st["merged"], st["fire"], st["vb"]
        l_layer = Signal(range(c.layers + 1))
        l_group = Signal(range(6))
        l_panel = Signal(range(max(CWH, c.ffn // N) + 1))
        l_row = Signal(range(KW + 1))
        l_slot = Signal()
        l_chunk = Signal(range(CWH + 1))
        l_ln = Signal()
        hdr_ok = Signal()               # the header's beats so far were as expected
        fail_hdr = Signal()
        n_panels = Mux(l_group == G_FFN1, c.ffn // N, CWH)
        k_rows = Mux(l_group == G_FFN2, c.ffn, c.hidden)
        # the counters' last-value compares as registers, loaded with the counters' next
        # values (each counter is loaded in a few places only): the state's next value reads
        # flip-flops, not a counter compared with a multiplexed bound (part of the ULX3S's
        # worst paths at 125 MHz, the parameter fire into ``loader_state``)
        row_last = Signal(init=c.hidden == 1)             # l_row == k_rows - 1
        panel_last = Signal(init=CWH == 1)                # l_panel == n_panels - 1
        chunk_last = Signal(init=CWH == 1)                # l_chunk == CWH - 1
        layer_last = Signal(init=c.layers == 1)           # l_layer == layers - 1

        def lanes(width, j, src=merged):
            return src[j * width:(j + 1) * width]

        def vector_state(bits, ok=1):
            nb = vector_beats(bits, BUS)
            m.d.comb += [st["ok"].eq(ok), st["vdone"].eq(vb == nb - 1)]
            return p_fire & (vb == nb - 1)

        free = ~self.slots.full.bit_select(l_slot, 1)
        ln_free = ~self.ln_slots.full.bit_select(l_ln, 1)
        ln_regs = {f.name: Signal(f.width * N, name=f"{f.name}_reg", reset_less=True)
                   for f in LN_FIELDS[:-1]}
        # Records are written a cycle after their last beat, from ``vec`` (which holds the
        # merged vector then), by registered enables (set by the states below, cleared here):
        # a panel header field per slot, the scalars, a LayerNorm field's register, a
        # LayerNorm record's word into the parameter memory. The registers' enables (the
        # scalars' 180 flip-flops on ``tiny``, a header field's 120-180, the LUT-RAM cells) had
        # been the state decode, the beat index and the fire, each a net pulled across the
        # chip, on the paths into the loader's state and ``ready`` (the ULX3S's worst paths in
        # several placements at 125 MHz, routes of 2.5-2.9 ns). A slot's header is read only
        # after its last weight row, a beat later at the earliest; the scalars' and the
        # LayerNorm records' flags are set a cycle late with their writes (SCALAR_WRITE_STAGES,
        # LN_WRITE_STAGES); a LayerNorm field's register is read by the record's word a cycle
        # after the next field's last beat at the earliest, once it has been written.
        vec = st["vec"]
        hdr_we = {f.name: [Signal(name=f"hdr_we_{f.name}{s}") for s in range(2)]
                  for f in PANEL_FIELDS}
        ln_we = {f.name: Signal(name=f"ln_we_{f.name}") for f in LN_FIELDS[:-1]}
        scal_we = Signal()
        for we in [*(w for pair in hdr_we.values() for w in pair), *ln_we.values(), scal_we,
                   st["lw"].en]:
            m.d.sync += we.eq(0)
        for f in PANEL_FIELDS:
            for s in range(2):
                with m.If(hdr_we[f.name][s]):
                    m.d.sync += [getattr(slots[s], f.name)[j].eq(lanes(f.width, j, vec))
                                 for j in range(N)]
        for f in LN_FIELDS[:-1]:
            with m.If(ln_we[f.name]):
                m.d.sync += ln_regs[f.name].eq(vec[:f.width * N])
        with m.If(scal_we):
            m.d.sync += [getattr(scalars, name).eq(vec[off:off + width])
                         for name, (off, width) in scalar_slices().items()]
        # the LayerNorm word: the record's earlier fields from their registers, the last one
        # from ``vec``; its address registered in every cycle (the chunk's, while it is read)
        widths = [field.width for _, field in LN_LANE]
        m.d.comb += st["lw"].data.eq(Cat(*(
            Cat(*(lanes(f.width, j, ln_regs.get(f.name, vec))[:w]
                  for f, w in zip(LN_FIELDS, widths, strict=True)))
            for j in range(N))))
        m.d.sync += st["lw"].addr.eq(Mux(l_ln, CWH, 0) + l_chunk)
        with Fsm(m, "loader") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += hdr_ok.eq(1)
                    fsm.next("HDR")
            with fsm.State("HDR"):
                with m.If(vector_state(HEADER_BITS)):
                    m.d.comb += st["hdr_end"].eq(1)
                    with m.If(hdr_ok & st["beat_ok"]):
                        fsm.next("SCAL")
                    with m.Else():
                        m.d.comb += fail_hdr.eq(1)
                        fsm.next("IDLE")
                with m.Elif(p_fire):
                    m.d.sync += hdr_ok.eq(hdr_ok & st["beat_ok"])
            with fsm.State("SCAL"):
                with m.If(vector_state(SCALAR_BITS, ~self.scalars_ho.full)):
                    m.d.sync += scal_we.eq(1)
                    m.d.sync += [l_group.eq(G_Q), l_panel.eq(0), panel_last.eq(CWH == 1)]
                    m.d.comb += st["set_scal"].eq(1)
                    fsm.next(PANEL_FIELDS[0].name)
            # a panel's header vectors, one state each, into the free slot. A field is
            # written a cycle after its last beat, from ``vec`` (which holds the merged vector
            # then), by a registered enable per field and slot: the slot registers' enables
            # (120-180 flip-flops a field) were the state decode, the beat index and the fire
            # (the ULX3S's worst path in four placements at 125 MHz, a 2.9 ns route). The
            # sequencer reads a slot's header only after the slot's last weight row, a beat
            # (a cycle) after its last field at the earliest: the write has landed by then.
            for f, nxt in zip(PANEL_FIELDS, [g.name for g in PANEL_FIELDS[1:]] + ["W"]):
                with fsm.State(f.name):
                    with m.If(vector_state(N * f.width, free)):
                        m.d.sync += [hdr_we[f.name][s].eq(l_slot == s) for s in range(2)]
                        m.d.sync += [l_row.eq(0), row_last.eq(k_rows == 1)]
                        fsm.next(nxt)
            # its weight rows, into the slot's half of the panel buffer
            with fsm.State("W"):
                # a row of one beat is that beat: the panel buffer's write data straight from
                # the slice's register, not through the vector multiplexer (its beat index
                # ``vb`` on the ULX3S's failing paths at 125 MHz, into the block RAM's data)
                row_bits = PANEL_ROW.width * N
                row = (st["payload"][:row_bits] if vector_beats(row_bits, BUS) == 1
                       else merged[:row_bits])
                m.d.comb += [st["pw"].addr.eq(Mux(l_slot, KW, 0) + l_row),
                             st["pw"].data.eq(row)]
                with m.If(vector_state(N * PANEL_ROW.width, free)):
                    m.d.comb += st["pw"].en.eq(1)
                    m.d.sync += [l_row.eq(l_row + 1), row_last.eq(l_row == k_rows - 2)]
                    with m.If(row_last):
                        m.d.comb += [st["set_slot"].eq(1), st["set_slot_i"].eq(l_slot)]
                        m.d.sync += [l_slot.eq(~l_slot), l_panel.eq(l_panel + 1),
                                     panel_last.eq(l_panel == n_panels - 2)]
                        with m.If(panel_last):
                            m.d.sync += [l_panel.eq(0), l_group.eq(l_group + 1), l_chunk.eq(0),
                                         panel_last.eq(Mux(l_group + 1 == G_FFN1,
                                                           c.ffn // N == 1, CWH == 1)),
                                         chunk_last.eq(CWH == 1)]
                            with m.If(l_group == G_O):                # LN-1 follows
                                m.d.sync += l_ln.eq(0)
                                fsm.next(LN_FIELDS[0].name)
                            with m.Elif(l_group == G_FFN2):           # LN-2 follows
                                m.d.sync += l_ln.eq(1)
                                fsm.next(LN_FIELDS[0].name)
                            with m.Else():
                                fsm.next(PANEL_FIELDS[0].name)
                        with m.Else():
                            fsm.next(PANEL_FIELDS[0].name)
            # a LayerNorm record: all but its last vector into registers, the last one writes
            # the record's word (one lane per channel, LN_LANE) into the LN parameter memory
            for f, nxt in zip(LN_FIELDS[:-1], [g.name for g in LN_FIELDS[1:]]):
                with fsm.State(f.name):
                    with m.If(vector_state(N * f.width, ln_free)):
                        m.d.sync += ln_we[f.name].eq(1)
                        fsm.next(nxt)
            last = LN_FIELDS[-1]
            with fsm.State(last.name):
                with m.If(vector_state(N * last.width, ln_free)):
                    m.d.sync += st["lw"].en.eq(1)
                    m.d.sync += [l_chunk.eq(l_chunk + 1), chunk_last.eq(l_chunk == CWH - 2)]
                    fsm.next(LN_FIELDS[0].name)
                    with m.If(chunk_last):
                        m.d.comb += [st["set_ln"].eq(1), st["set_ln_i"].eq(l_ln)]
                        with m.If(l_ln == 0):
                            fsm.next(PANEL_FIELDS[0].name)
                        with m.Elif(layer_last):
                            fsm.next("END")
                        with m.Else():
                            m.d.sync += [l_layer.eq(l_layer + 1),
                                         layer_last.eq(l_layer == c.layers - 2)]
                            fsm.next("SCAL")
            with fsm.State("END"):
                pass
        return fail_hdr
