"""The encoder core: all layers of an integer BERT encoder on one systolic array.

Architecture
------------
One :class:`~bertcore.rtl.systolic.SystolicArray` (``N × N``, ``N = array_cols``) computes every
product of a layer; the units around it are the finished RTL units of :mod:`bertcore.rtl`::

    s_axis_param -> loader -> panel slots (2) ---------------------------------+ B
                         -> layer scalars, LayerNorm parameters                 |
    s_axis_act -> bytes -> X, Q/ctx, K, V, A, H buffers, P buffer -> feeder ---+-> array
    array -> residual fetch (X or A) -> Requantizer (22 bit) -+-> sat8 -> Q, K, V, ctx
                                                               +-> sat16 -> IntGELU
                                                               |     -> Requantizer -> H
                                                               +-> R (22 bit)
    array (scores) -> score banks -> IntSoftmax x S -> P buffer
    R banks -> IntLayerNorm x U -> Requantizer (U lanes, per channel, bias) -> bytes -> A or X
    X (after the last layer) -> output pass -> m_axis_act

Activation buffers hold one sequence. They are banked by position: bank ``b`` of a buffer holds
positions ``p ≡ b (mod N)``, one word of ``N`` channels (int8) per position and channel chunk,
so that one read of every bank gives the ``N`` rows of an A operand beat (or the ``N`` key
positions of a ``Kᵀ`` beat). ``X`` holds the layer input (and the residual of the attention
output), ``Q`` the queries and then, in place, the attention context, ``K`` and ``V`` the keys
and values, ``A`` the LayerNorm-1 output (the FFN input and residual), ``H`` the GELU output.
``R`` holds the 22-bit residual sums before each LayerNorm, in ``U = layernorm_units`` banks
(bank ``u`` holds the positions ``p ≡ u (mod U)``). The score banks hold the scores of one
block of ``N`` query rows (bank ``k`` of ``S = softmax_units`` the rows ``≡ k (mod S)``), the P
buffer their probabilities (uint8, the array's A operand of ``P·V``; the array's A operand is
``signed(9)`` so both int8 and uint8 fit).

Schedule (sequential, one job at a time; the loader runs ahead)
----------------------------------------------------------------
* Per weight panel (``N`` output channels): the loader streams the panel's bias, requantization
  vectors and ``K`` weight rows into a free slot of the double-buffered panel buffer while the
  array computes the previous panel; the array then runs the panel over all ``ceil(L/N)`` row
  blocks (each weight enters once per inference and is reused for every row block).
* Q, K, V panels → Requantizer → int8 buffers.
* Per head, per block of ``N`` query rows: scores ``Q_h·K_hᵀ`` (tiles over key blocks) → score
  banks → the ``S`` IntSoftmax units, ``N / S`` rows each, side by side → P buffer → ``P·V_h``
  → Requantizer (ctx scalars) → Q buffer.
* O panels (A = context) → Requantizer with the residual ``X`` → R; LayerNorm pass R → the
  ``U`` IntLayerNorm units (``U`` positions at a time, in lockstep: a fork feeds them the same
  channel, a join hands their outputs to one ``U``-lane Requantizer with that channel's
  parameters) → ``U`` gatherers → A.
* FFN1 panels → Requantizer (16 bit) → IntGELU → Requantizer → H; FFN2 panels (A = H, residual
  A) → R; LayerNorm pass → X.
* After the last layer, the output pass streams X row-major to ``m_axis_act``.

Jobs do not overlap (the array drains between jobs); the softmax and LayerNorm units are
replicated instead (``softmax_units``, ``layernorm_units``) so that the array waits little for
them. :mod:`bertcore.core.perf` models the cycles of this schedule.
"""

from types import SimpleNamespace

from amaranth.hdl import (Cat, Const, Module, Mux, ResetInserter, Shape, Signal, Value,
                          signed, unsigned)
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect, flipped

from bertcore.config import CoreConfig
from bertcore.quant.kernels import REQ_M_BITS, RESIDUAL_BITS
from bertcore.rtl.common import rejecting
from bertcore.rtl.fsm import Fsm
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.layernorm import IntLayerNorm
from bertcore.rtl.requant import REQ_E_BITS, Requantizer
from bertcore.rtl.softmax import IntSoftmax
from bertcore.rtl.stream import RegisterSlice
from bertcore.rtl.systolic import SystolicArray

from .image import HEADER_BITS, LN_BIAS_BITS, check_core_config, header_words, image_beats

__all__ = ["EncoderCore", "EncoderTop", "bus_layout"]

# Panel groups (the order of the image) and write-back modes.
G_Q, G_K, G_V, G_O, G_FFN1, G_FFN2 = range(6)
M_Q, M_K, M_V, M_O, M_FFN1, M_FFN2, M_SCORE, M_CTX = range(8)
# Sources of the A operand and kinds of jobs.
A_X, A_Q, A_A, A_H, A_P = range(5)
J_PANEL, J_SCORE, J_PV = range(3)
#: Bits of one lane of the LayerNorm parameter memory: m, e, bias.
_LN_LANE = REQ_M_BITS + REQ_E_BITS + LN_BIAS_BITS


def bus_layout(bus_width):
    """Payload layout of the core's streams: ``{"data": unsigned(bus_width), "last": 1}``."""
    return data.StructLayout({"data": unsigned(bus_width), "last": unsigned(1)})


def _beats(bits, bus):
    return -(-bits // bus)


def _pick(m, name, items, index, shape):
    """A signal of ``shape`` driven by ``items[index]`` (``items[-1]`` for an index past the
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
        value = Mux(index >= len(items), items[-1], value)
    value = Value.cast(value)
    return value.as_signed() if Shape.cast(shape).signed else value.as_unsigned()


def _fork(m, name, valid, sinks, on):
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


def _sliced(m, name, streams, *, inputs=True):
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


def _feed(m, name, ports, sinks, addr, adv, lane, width, last):
    """Each read port of ``ports`` reads word ``addr`` (when ``adv``); its ``lane``-th
    ``width``-bit element (signed) and ``last`` go to the payload of the matching sink."""
    n = len(ports[0].data) // width
    for i, (port, sink) in enumerate(zip(ports, sinks)):
        m.d.comb += [port.addr.eq(addr), port.en.eq(adv),
                     sink.payload.data.eq(_pick(
                         m, f"{name}{i}", [port.data[width * j:width * (j + 1)]
                                           for j in range(n)], lane, signed(width))),
                     sink.payload.last.eq(last)]


class _Datapath(wiring.Component):
    """Loader, sequencer, buffers and units of one run (reset by :class:`EncoderCore` on abort)."""

    def __init__(self, config):
        self._c = config
        layout = bus_layout(config.bus_width)
        super().__init__({
            "param": In(stream.Signature(layout)),
            "act": In(stream.Signature(layout)),
            "out": Out(stream.Signature(layout)),
            "start": In(1),
            "done": Out(1),
            "fail": Out(1),
            "fault": Out(1),
            "beat": Out(1),
            "layer_mark": Out(1),      # the input is in (layer 0 starts) or a layer ended
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        N = c.array_cols
        BUS = c.bus_width
        BB = BUS // 8
        hid, ffn, hd = c.hidden, c.ffn, c.head_dim
        CWH, CWF = hid // N, ffn // N
        GRP = -(-c.max_seq // N)
        KW = max(hid, ffn)
        KMAX = max(hid, ffn, c.max_seq)
        HPW = hd // N                                   # words per head

        # -- Units ---------------------------------------------------------------------------
        m.submodules.array = array = SystolicArray(N, N, k_max=KMAX, a_shape=signed(9))
        acc_w = array.out_shape.width
        mul_rq = c.multipliers("requant")
        m.submodules.rq = rq = Requantizer(lanes=N, in_width=acc_w, out_bits=RESIDUAL_BITS,
                                           residual=True, residual_width=8, multipliers=mul_rq)
        m.submodules.gelu = gelu = IntGELU(lanes=N, in_width=16,
                                           multipliers=c.multipliers("gelu"))
        m.submodules.rq2 = rq2 = Requantizer(lanes=N, in_width=gelu.out_width, out_bits=8,
                                             multipliers=mul_rq)
        SW = IntSoftmax.score_width(hd)
        S, U = c.softmax_units, c.layernorm_units
        RPS, PPB = N // S, N // U          # rows per softmax unit; position groups per block
        smaxes, lns = [], []
        for k in range(S):
            m.submodules[f"softmax_{k}"] = unit = IntSoftmax(
                max_seq=c.max_seq, in_width=SW, output_bits=8, saturate_output=True,
                head_dim=hd, multipliers=c.multipliers("softmax"))
            smaxes.append(unit)
        for u in range(U):
            m.submodules[f"ln_{u}"] = unit = IntLayerNorm(hid, in_width=RESIDUAL_BITS,
                                                          multipliers=c.multipliers("layernorm"))
            lns.append(unit)
        m.submodules.rq_ln = rq_ln = Requantizer(lanes=U, in_width=IntLayerNorm.OUT_WIDTH,
                                                 out_bits=8, bias_width=LN_BIAS_BITS,
                                                 multipliers=mul_rq)

        # -- Memories ------------------------------------------------------------------------
        def banked(name, words, read_ports, *, late=False):
            """``N`` memories of ``words`` words. With ``late``, ``"w"`` is a write request
            (``addr``, ``data``, ``en``) registered before the write port: the port's signals
            come from flip-flops (the writers' multiplexers do not run on across the chip
            into every LUT-RAM cell), and a write lands one cycle after its request. The
            writers of X and A are the input gatherer and the LayerNorm gatherers; the
            sequencer reads those buffers two or more cycles after their last request."""
            banks = []
            for b in range(N):
                mem = Memory(shape=unsigned(8 * N), depth=words, init=[])
                m.submodules[f"{name}_{b}"] = mem
                port = mem.write_port()
                if late:
                    req = SimpleNamespace(addr=Signal.like(port.addr, name=f"{name}_{b}_wa"),
                                          data=Signal.like(port.data, name=f"{name}_{b}_wd"),
                                          en=Signal(name=f"{name}_{b}_we"))
                    m.d.sync += [port.addr.eq(req.addr), port.data.eq(req.data),
                                 port.en.eq(req.en)]
                    port = req
                banks.append({"w": port, "r": [mem.read_port() for _ in range(read_ports)]})
            return banks

        buf = {
            A_X: banked("x", GRP * CWH, 2, late=True),   # A operand; residual of O
            A_Q: banked("q", GRP * CWH, 1),              # queries, then the context
            A_A: banked("a", GRP * CWH, 2, late=True),   # A operand; residual of FFN2
            A_H: banked("h", GRP * CWF, 1),
        }
        kbuf = banked("k", GRP * CWH, 1)
        vbuf = banked("v", GRP * CWH, 1)
        pbuf = banked("p", GRP, 1)               # bank i = query row i of the block
        # R: bank u holds the positions p = g*U + u (word g*CWH + chunk); the LayerNorm units
        # read U positions at once
        r_banks = []
        for u in range(U):
            mem = Memory(shape=unsigned(RESIDUAL_BITS * N), depth=GRP * PPB * CWH, init=[])
            m.submodules[f"r_mem_{u}"] = mem
            r_banks.append((mem.write_port(), mem.read_port()))
        # scores: bank k holds the query rows q*S + k of the block (word q*GRP + key block)
        s_banks = []
        for k in range(S):
            mem = Memory(shape=unsigned(SW * N), depth=RPS * GRP, init=[])
            m.submodules[f"s_mem_{k}"] = mem
            s_banks.append((mem.write_port(), mem.read_port()))
        m.submodules.panel = panel = Memory(shape=unsigned(8 * N), depth=2 * KW, init=[])
        pw_w, pw_r = panel.write_port(), panel.read_port()
        m.submodules.ln_mem = ln_mem = Memory(shape=unsigned(_LN_LANE * N), depth=2 * CWH,
                                              init=[])
        lp_w, lp_r = ln_mem.write_port(), ln_mem.read_port()
        for banks in (*buf.values(), kbuf, vbuf, pbuf):
            for bank in banks:
                for port in bank["r"]:
                    m.d.comb += port.en.eq(0)
                m.d.comb += bank["w"].en.eq(0)

        # -- Run state ---------------------------------------------------------------------
        seq_len = Signal(range(c.max_seq + 1))           # L
        n_blk = Signal(range(GRP + 1))                    # ceil(L / N)
        layer = Signal(range(c.layers + 1))

        # slot / record hand-over flags (loader sets, sequencer clears)
        slot_full = Signal(2)
        scal_full = Signal()
        ln_full = Signal(2)
        set_slot, clr_slot = Signal(), Signal()
        set_slot_i, clr_slot_i = Signal(), Signal()
        set_scal, clr_scal = Signal(), Signal()
        set_ln, clr_ln = Signal(), Signal()
        set_ln_i, clr_ln_i = Signal(), Signal()
        for i in range(2):
            with m.If(set_slot & (set_slot_i == i)):
                m.d.sync += slot_full[i].eq(1)
            with m.Elif(clr_slot & (clr_slot_i == i)):
                m.d.sync += slot_full[i].eq(0)
            with m.If(set_ln & (set_ln_i == i)):
                m.d.sync += ln_full[i].eq(1)
            with m.Elif(clr_ln & (clr_ln_i == i)):
                m.d.sync += ln_full[i].eq(0)
        with m.If(set_scal):
            m.d.sync += scal_full.eq(1)
        with m.Elif(clr_scal):
            m.d.sync += scal_full.eq(0)

        # per-slot panel header registers
        s_bias = [[Signal(signed(32), name=f"s{s}_bias{j}") for j in range(N)] for s in range(2)]
        s_m = [[Signal(signed(REQ_M_BITS), name=f"s{s}_m{j}") for j in range(N)] for s in range(2)]
        s_e = [[Signal(REQ_E_BITS, name=f"s{s}_e{j}") for j in range(N)] for s in range(2)]
        s_m2 = [[Signal(signed(REQ_M_BITS), name=f"s{s}_m2_{j}") for j in range(N)]
                for s in range(2)]
        s_e2 = [[Signal(REQ_E_BITS, name=f"s{s}_e2_{j}") for j in range(N)] for s in range(2)]

        # layer scalars
        shapes = IntSoftmax.CONSTANT_SHAPES
        sm = {k: Signal(v, name=f"sm_{k}") for k, v in shapes.items()}
        ctx_m = Signal(signed(REQ_M_BITS))
        ctx_e = Signal(REQ_E_BITS)
        g_b = Signal(signed(gelu.b_width))
        g_c = Signal(signed(gelu.c_width))
        g_q1 = Signal(signed(gelu.q1_width))
        for unit in smaxes:
            m.d.comb += [getattr(unit, k).eq(v) for k, v in sm.items()]
        m.d.comb += [gelu.b.eq(g_b), gelu.c.eq(g_c), gelu.q1.eq(g_q1)]

        # -- Parameter loader --------------------------------------------------------------
        total = image_beats(c)
        pbeat = Signal(range(total + 1))
        vec_bits = max(128, 384, N * 64)
        VB = _beats(vec_bits, BUS)
        vec = Signal(VB * BUS)
        vb = Signal(range(VB + 1))
        p_fire = self.param.valid & self.param.ready
        merged = Cat(*(Mux(vb == b, self.param.payload.data, vec[b * BUS:(b + 1) * BUS])
                       for b in range(VB)))
        l_layer = Signal(range(c.layers + 1))
        l_group = Signal(range(6))
        l_panel = Signal(range(max(CWH, CWF) + 1))
        l_row = Signal(range(KW + 1))
        l_slot = Signal()
        l_chunk = Signal(range(CWH + 1))
        l_ln = Signal()
        ln_m_reg = Signal(16 * N)
        ln_e_reg = Signal(8 * N)
        param_ok = Signal()            # the loader may take a beat in its current state
        fail_hdr = Signal()
        vdone = Signal()                # this beat completes the current vector
        m.d.comb += self.param.ready.eq(param_ok)
        with m.If(p_fire):
            m.d.sync += pbeat.eq(pbeat + 1)
            with m.If(vdone):
                m.d.sync += vb.eq(0)
            with m.Else():
                m.d.sync += [vb.eq(vb + 1), vec.eq(merged)]
        # length checks: tlast exactly on beat total-1
        fail_len = Signal()
        m.d.comb += fail_len.eq(p_fire & (self.param.payload.last != (pbeat == total - 1)))

        def lanes(width, j, src=merged):
            return src[j * width:(j + 1) * width]

        n_panels = Mux(l_group == G_FFN1, CWF, CWH)
        k_rows = Mux(l_group == G_FFN2, ffn, hid)
        # header (image.header_words, 32 bits each): each beat is compared with its part of
        # the expected header as it arrives (a compare with constants, not a multiplexer of the
        # assembled vector), the results kept in hdr_ok
        expected = sum(word << (32 * i) for i, word in enumerate(header_words(c)))
        hdr_checks = []
        for b in range(_beats(HEADER_BITS, BUS)):
            width = min(BUS, HEADER_BITS - b * BUS)
            part = (expected >> (b * BUS)) & ((1 << width) - 1)
            hdr_checks.append(self.param.payload.data[:width] == part)
        hdr_ok = Signal()               # the header's beats so far were as expected
        beat_ok = Signal()              # and so is this one
        m.d.comb += beat_ok.eq(Cat(*hdr_checks).bit_select(vb, 1))
        with Fsm(m, "loader") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += hdr_ok.eq(1)
                    fsm.next("HDR")

            def vector_state(name, bits, ok=1):
                nb = _beats(bits, BUS)
                m.d.comb += [param_ok.eq(ok), vdone.eq(vb == nb - 1)]
                return p_fire & (vb == nb - 1)

            with fsm.State("HDR"):
                with m.If(vector_state("HDR", HEADER_BITS)):
                    with m.If(hdr_ok & beat_ok):
                        fsm.next("SCAL")
                    with m.Else():
                        m.d.comb += fail_hdr.eq(1)
                        fsm.next("IDLE")
                with m.Elif(p_fire):
                    m.d.sync += hdr_ok.eq(hdr_ok & beat_ok)
            with fsm.State("SCAL"):
                with m.If(vector_state("SCAL", 384, ~scal_full)):
                    w = [merged[32 * i:32 * (i + 1)] for i in range(12)]
                    c64 = Cat(w[2], w[3])
                    gc64 = Cat(w[9], w[10])
                    m.d.sync += [
                        sm["x0"].eq(w[0]), sm["b"].eq(w[1]), sm["c"].eq(c64),
                        sm["m"].eq(w[4]), sm["e"].eq(w[5]),
                        ctx_m.eq(w[6]), ctx_e.eq(w[7]),
                        g_b.eq(w[8]), g_c.eq(gc64), g_q1.eq(w[11]),
                        l_group.eq(G_Q), l_panel.eq(0),
                    ]
                    m.d.comb += set_scal.eq(1)
                    fsm.next("BIAS")
            free = ~slot_full.bit_select(l_slot, 1)
            for name, width, regs, nxt in (("BIAS", 32, s_bias, "M"), ("M", 16, s_m, "E"),
                                           ("E", 8, s_e, "M2"), ("M2", 16, s_m2, "E2"),
                                           ("E2", 8, s_e2, "W")):
                with fsm.State(name):
                    with m.If(vector_state(name, N * width, free)):
                        for s in range(2):
                            with m.If(l_slot == s):
                                m.d.sync += [regs[s][j].eq(lanes(width, j)) for j in range(N)]
                        m.d.sync += l_row.eq(0)
                        fsm.next(nxt)
            with fsm.State("W"):
                m.d.comb += [pw_w.addr.eq(Mux(l_slot, KW, 0) + l_row),
                             pw_w.data.eq(merged[:8 * N])]
                with m.If(vector_state("W", N * 8, free)):
                    m.d.comb += pw_w.en.eq(1)
                    m.d.sync += l_row.eq(l_row + 1)
                    with m.If(l_row == k_rows - 1):
                        m.d.comb += [set_slot.eq(1), set_slot_i.eq(l_slot)]
                        m.d.sync += [l_slot.eq(~l_slot), l_panel.eq(l_panel + 1)]
                        with m.If(l_panel == n_panels - 1):
                            m.d.sync += [l_panel.eq(0), l_group.eq(l_group + 1), l_chunk.eq(0)]
                            with m.If(l_group == G_O):
                                m.d.sync += l_ln.eq(0)
                                fsm.next("LNM")
                            with m.Elif(l_group == G_FFN2):
                                m.d.sync += l_ln.eq(1)
                                fsm.next("LNM")
                            with m.Else():
                                fsm.next("BIAS")
                        with m.Else():
                            fsm.next("BIAS")
            ln_free = ~ln_full.bit_select(l_ln, 1)
            with fsm.State("LNM"):
                with m.If(vector_state("LNM", N * 16, ln_free)):
                    m.d.sync += ln_m_reg.eq(merged[:16 * N])
                    fsm.next("LNE")
            with fsm.State("LNE"):
                with m.If(vector_state("LNE", N * 8, ln_free)):
                    m.d.sync += ln_e_reg.eq(merged[:8 * N])
                    fsm.next("LNB")
            with fsm.State("LNB"):
                word = Cat(*(Cat(lanes(16, j, ln_m_reg), lanes(8, j, ln_e_reg)[:REQ_E_BITS],
                                 lanes(64, j)[:LN_BIAS_BITS]) for j in range(N)))
                m.d.comb += [lp_w.addr.eq(Mux(l_ln, CWH, 0) + l_chunk), lp_w.data.eq(word)]
                with m.If(vector_state("LNB", N * 64, ln_free)):
                    m.d.comb += lp_w.en.eq(1)
                    m.d.sync += l_chunk.eq(l_chunk + 1)
                    fsm.next("LNM")
                    with m.If(l_chunk == CWH - 1):
                        m.d.comb += [set_ln.eq(1), set_ln_i.eq(l_ln)]
                        with m.If(l_ln == 0):
                            fsm.next("BIAS")
                        with m.Elif(l_layer == c.layers - 1):
                            fsm.next("END")
                        with m.Else():
                            m.d.sync += l_layer.eq(l_layer + 1)
                            fsm.next("SCAL")
            with fsm.State("END"):
                pass

        # -- Activation input: beats -> bytes -> gatherer ----------------------------------
        # The gatherer collects bytes (row-major) into words of N channels and writes them into
        # the X buffer.
        g_valid = Signal()
        g_byte = Signal(8)
        g_elem = Signal(range(N))
        g_chunk = Signal(range(CWH))
        g_bank = Signal(range(N))
        g_grp = Signal(range(GRP + 1))
        g_pos = Signal(range(c.max_seq + 2))
        g_word = Signal(8 * N)
        g_reset = Signal()
        g_full = Cat(*(Mux(g_elem == j, g_byte, g_word[8 * j:8 * j + 8]) for j in range(N)))
        row_end = Signal()
        m.d.comb += row_end.eq(g_valid & (g_elem == N - 1) & (g_chunk == CWH - 1))
        with m.If(g_reset):
            m.d.sync += [g_elem.eq(0), g_chunk.eq(0), g_bank.eq(0), g_grp.eq(0), g_pos.eq(0)]
        with m.Elif(g_valid):
            m.d.sync += [g_word.eq(g_full), g_elem.eq(g_elem + 1)]
            with m.If(g_elem == N - 1):
                m.d.sync += [g_elem.eq(0), g_chunk.eq(g_chunk + 1)]
                with m.If(g_chunk == CWH - 1):
                    m.d.sync += [g_chunk.eq(0), g_pos.eq(g_pos + 1), g_bank.eq(g_bank + 1)]
                    with m.If(g_bank == N - 1):
                        m.d.sync += [g_bank.eq(0), g_grp.eq(g_grp + 1)]
                for b in range(N):
                    port = buf[A_X][b]["w"]
                    m.d.comb += [port.addr.eq(g_grp * CWH + g_chunk), port.data.eq(g_full)]
                    with m.If((g_bank == b) & (g_pos < c.max_seq)):
                        m.d.comb += port.en.eq(1)

        ib = Signal(BUS)
        ib_valid = Signal()
        ib_last = Signal()
        ib_idx = Signal(range(BB))
        in_active = Signal()
        in_done = Signal()
        fail_seq = Signal()
        m.d.comb += self.act.ready.eq(in_active & ~ib_valid)
        with m.If(self.act.valid & self.act.ready):
            m.d.sync += [ib.eq(self.act.payload.data), ib_valid.eq(1),
                         ib_last.eq(self.act.payload.last), ib_idx.eq(0)]
        with m.If(ib_valid & in_active):
            m.d.comb += [g_valid.eq(1), g_byte.eq(ib.word_select(ib_idx, 8))]
            m.d.sync += ib_idx.eq(ib_idx + 1)
            with m.If(row_end & (g_pos == c.max_seq)):
                m.d.comb += fail_seq.eq(1)
            with m.If(ib_idx == BB - 1):
                m.d.sync += ib_valid.eq(0)
                with m.If(ib_last):
                    m.d.sync += [in_active.eq(0), in_done.eq(1)]

        # -- Output packer: bytes -> beats -------------------------------------------------
        o_acc = Signal(BUS)
        o_idx = Signal(range(BB))
        o_in_valid = Signal()
        o_in_byte = Signal(8)
        o_in_final = Signal()
        o_ready = Signal()
        o_pending = Signal()           # the last beat has not been delivered yet
        m.d.comb += o_ready.eq(~self.out.valid | self.out.ready)
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.valid.eq(0)
            with m.If(self.out.payload.last):
                m.d.sync += o_pending.eq(0)
        o_full = Cat(*(Mux(o_idx == j, o_in_byte, o_acc[8 * j:8 * j + 8]) for j in range(BB)))
        with m.If(o_in_valid & o_ready):
            m.d.sync += [o_acc.eq(o_full), o_idx.eq(o_idx + 1)]
            with m.If((o_idx == BB - 1) | o_in_final):
                m.d.sync += [self.out.valid.eq(1), self.out.payload.data.eq(o_full),
                             self.out.payload.last.eq(o_in_final), o_acc.eq(0), o_idx.eq(0)]

        # -- GEMM feeder: A and B operand beats and the bias --------------------------------
        j_kind = Signal(range(3))
        j_asrc = Signal(range(5))
        j_tiles = Signal(range(max(GRP, CWH, CWF, HPW) + 1))
        j_k = Signal(range(KMAX + 1))
        j_mb = Signal(range(GRP))          # query block (scores, PV)
        j_chw = Signal(range(CWH + 1))    # first channel word of the head
        j_slot = Signal()
        j_mode = Signal(range(8))
        j_chunk = Signal(range(max(CWH, CWF)))   # output chunk of a panel
        f_active = Signal()
        f_t = Signal.like(j_tiles)
        f_k = Signal.like(j_k)
        f_kw = Signal(range(KMAX // N + 2))
        f_ke = Signal(range(N))
        f_paddr = Signal(range(2 * KW))     # panel buffer row: slot base + k
        s1_valid = Signal()
        s1_last = Signal()
        s1_ke = Signal(range(N))
        # A and B beats reach the array through one register slice (the operand picks of the
        # banks run on into the array's input registers otherwise, across the chip)
        m.submodules.operand_slice = ops = RegisterSlice(data.StructLayout({
            "a": array.a.payload.shape(), "b": array.b.payload.shape()}))
        a_beat, b_beat = ops.i_stream.payload.a, ops.i_stream.payload.b
        m.d.comb += [ops.i_stream.valid.eq(s1_valid),
                     array.a.valid.eq(ops.o_stream.valid), array.b.valid.eq(ops.o_stream.valid),
                     array.a.payload.eq(ops.o_stream.payload.a),
                     array.b.payload.eq(ops.o_stream.payload.b),
                     ops.o_stream.ready.eq(array.a.ready & array.b.ready)]
        adv = ~s1_valid | ops.i_stream.ready
        issue = adv & f_active
        with m.If(adv):
            m.d.sync += [s1_valid.eq(f_active), s1_last.eq(f_k == j_k - 1), s1_ke.eq(f_ke)]
        with m.If(issue):
            m.d.sync += [f_k.eq(f_k + 1), f_ke.eq(f_ke + 1), f_paddr.eq(f_paddr + 1)]
            with m.If(f_ke == N - 1):
                m.d.sync += [f_ke.eq(0), f_kw.eq(f_kw + 1)]
            with m.If(f_k == j_k - 1):
                m.d.sync += [f_k.eq(0), f_ke.eq(0), f_kw.eq(0), f_t.eq(f_t + 1),
                             f_paddr.eq(Mux(j_slot, KW, 0))]
                with m.If(f_t == j_tiles - 1):
                    m.d.sync += f_active.eq(0)
        # addresses
        a_grp = Mux(j_kind == J_PANEL, f_t, j_mb)
        # products by constants (LUT logic; a product by a multiplexed constant became a DSP)
        a_addr = Mux(j_asrc == A_H, a_grp * CWF, a_grp * CWH) + j_chw + f_kw
        for src, banks in buf.items():
            for b in range(N):
                port = banks[b]["r"][0]
                m.d.comb += [port.addr.eq(a_addr), port.en.eq(adv)]
        for b in range(N):
            m.d.comb += [pbuf[b]["r"][0].addr.eq(f_kw), pbuf[b]["r"][0].en.eq(adv),
                         kbuf[b]["r"][0].addr.eq(f_t * CWH + j_chw + f_kw),
                         kbuf[b]["r"][0].en.eq(adv),
                         vbuf[b]["r"][0].addr.eq(f_kw * CWH + j_chw + f_t),
                         vbuf[b]["r"][0].en.eq(adv)]
        m.d.comb += [pw_r.addr.eq(f_paddr), pw_r.en.eq(adv)]
        s1_asrc = Signal.like(j_asrc)
        s1_kind = Signal.like(j_kind)
        m.d.sync += [s1_asrc.eq(j_asrc), s1_kind.eq(j_kind)]

        def elem(word, idx, name):
            return _pick(m, name, [word[8 * j:8 * j + 8] for j in range(N)], idx, 8)

        for i in range(N):
            items = [elem(buf[src][i]["r"][0].data, s1_ke, f"a{src}_{i}").as_signed()
                     for src in (A_X, A_Q, A_A, A_H)]
            items.append(Cat(elem(pbuf[i]["r"][0].data, s1_ke, f"ap_{i}"), Const(0, 1)))
            m.d.comb += a_beat.data[i].eq(_pick(m, f"a_lane{i}", items, s1_asrc, signed(9)))
        vword = _pick(m, "vword", [vbuf[b]["r"][0].data for b in range(N)], s1_ke, 8 * N)
        for j in range(N):
            items = [pw_r.data[8 * j:8 * j + 8], elem(kbuf[j]["r"][0].data, s1_ke, f"bk_{j}"),
                     vword[8 * j:8 * j + 8]]
            m.d.comb += b_beat.data[j].eq(_pick(m, f"b_lane{j}", items, s1_kind, 8))
        m.d.comb += [a_beat.last.eq(s1_last), b_beat.last.eq(s1_last),
                     self.beat.eq(ops.o_stream.valid & array.a.ready & array.b.ready)]
        # bias: one beat per tile
        bias_cnt = Signal.like(j_tiles)
        j_bias_on = Signal()
        bias_left = Signal()
        m.d.comb += array.bias.valid.eq(bias_left)
        for j in range(N):
            m.d.comb += array.bias.payload[j].eq(
                Mux(j_bias_on, Mux(j_slot, s_bias[1][j], s_bias[0][j]), 0))
        with m.If(array.bias.valid & array.bias.ready):
            m.d.sync += bias_cnt.eq(bias_cnt + 1)
            with m.If(bias_cnt == j_tiles - 1):
                m.d.sync += bias_left.eq(0)

        # -- Array output: residual fetch, requantization, write-back -------------------------
        c1_valid = Signal()
        c1_data = [Signal(signed(acc_w), name=f"c1_{j}") for j in range(N)]
        c_i = Signal(range(N))
        c_t = Signal.like(j_tiles)
        c1_i = Signal(range(N))
        c1_t = Signal.like(j_tiles)
        # row c_i = c_q * S + c_k (at least one bit: Verilog has no zero-width vectors)
        c_k, c1_k = Signal(range(max(S, 2))), Signal(range(max(S, 2)))
        c_q, c1_q = Signal(range(max(RPS, 2))), Signal(range(max(RPS, 2)))
        wb_count = Signal(range(max(GRP, CWH, CWF, HPW) * N + 1))
        is_score = j_mode == M_SCORE
        is_ffn1 = j_mode == M_FFN1
        down_ready = Signal()
        m.d.comb += down_ready.eq(Mux(is_score, 1, rq.i_stream.ready))
        m.d.comb += array.c.ready.eq(~c1_valid | down_ready)
        c_take = array.c.valid & array.c.ready
        with m.If(~c1_valid | down_ready):
            m.d.sync += c1_valid.eq(array.c.valid)
        with m.If(c_take):
            m.d.sync += [c1_data[j].eq(array.c.payload.data[j]) for j in range(N)]
            m.d.sync += [c1_i.eq(c_i), c1_t.eq(c_t), c_i.eq(c_i + 1),
                         c1_k.eq(c_k), c1_q.eq(c_q), c_k.eq(c_k + 1)]
            with m.If(c_k == S - 1):
                m.d.sync += [c_k.eq(0), c_q.eq(c_q + 1)]
            with m.If(c_i == N - 1):
                m.d.sync += [c_i.eq(0), c_t.eq(c_t + 1), c_k.eq(0), c_q.eq(0)]
        # residual read (X for O, A for FFN2) issued as the beat enters c1
        res_addr = c_t * CWH + j_chunk
        for src in (A_X, A_A):
            for b in range(N):
                port = buf[src][b]["r"][1]
                m.d.comb += [port.addr.eq(res_addr), port.en.eq(c_take)]
        res_x = _pick(m, "res_x", [buf[A_X][b]["r"][1].data for b in range(N)], c1_i, 8 * N)
        res_a = _pick(m, "res_a", [buf[A_A][b]["r"][1].data for b in range(N)], c1_i, 8 * N)
        res_word = Mux(j_mode == M_O, res_x, res_a)
        has_res = (j_mode == M_O) | (j_mode == M_FFN2)
        # score write (directly from c1)
        for k, (s_w, _) in enumerate(s_banks):
            m.d.comb += [s_w.addr.eq(c1_q * GRP + c1_t),
                         s_w.data.eq(Cat(*(d[:SW] for d in c1_data)))]
            with m.If(c1_valid & is_score & (c1_k == k)):
                m.d.comb += s_w.en.eq(1)
        wb_fire = Signal()
        with m.If(c1_valid & is_score):
            m.d.comb += wb_fire.eq(1)
        # requantizer input
        m.d.comb += [rq.i_stream.valid.eq(c1_valid & ~is_score), rq.i_stream.payload.last.eq(0)]
        for j in range(N):
            lane = rq.i_stream.payload.data[j]
            slot_m = Mux(j_slot, s_m[1][j], s_m[0][j])
            slot_e = Mux(j_slot, s_e[1][j], s_e[0][j])
            slot_m2 = Mux(j_slot, s_m2[1][j], s_m2[0][j])
            slot_e2 = Mux(j_slot, s_e2[1][j], s_e2[0][j])
            m.d.comb += [
                lane.x.eq(c1_data[j]),
                lane.m.eq(Mux(j_mode == M_CTX, ctx_m, slot_m)),
                lane.e.eq(Mux(j_mode == M_CTX, ctx_e, slot_e)),
                lane.r.eq(res_word[8 * j:8 * j + 8].as_signed()),
                lane.m_r.eq(Mux(has_res, slot_m2, 0)),
                lane.e_r.eq(Mux(has_res, slot_e2, 1)),
            ]
        # requantizer output: saturate by mode; FFN1 goes on through GELU and rq2
        def sat(value, bits):
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            return Mux(value > hi, hi, Mux(value < lo, lo, value))

        m.d.comb += [rq.o_stream.ready.eq(Mux(is_ffn1, gelu.i_stream.ready, 1)),
                     gelu.i_stream.valid.eq(rq.o_stream.valid & is_ffn1),
                     gelu.i_stream.payload.last.eq(0)]
        for j in range(N):
            m.d.comb += gelu.i_stream.payload.data[j].eq(sat(rq.o_stream.payload.data[j], 16))
        connect_g = [rq2.i_stream.valid.eq(gelu.o_stream.valid),
                     gelu.o_stream.ready.eq(rq2.i_stream.ready),
                     rq2.i_stream.payload.last.eq(0), rq2.o_stream.ready.eq(is_ffn1)]
        m.d.comb += connect_g
        for j in range(N):
            lane = rq2.i_stream.payload.data[j]
            m.d.comb += [lane.x.eq(gelu.o_stream.payload.data[j]),
                         lane.m.eq(Mux(j_slot, s_m2[1][j], s_m2[0][j])),
                         lane.e.eq(Mux(j_slot, s_e2[1][j], s_e2[0][j]))]
        w_i = Signal(range(N))
        w_t = Signal.like(j_tiles)
        w_u = Signal(range(max(U, 2)))         # position w_t*N + w_i = (w_t*PPB + w_g)*U + w_u
        w_g = Signal(range(max(PPB, 2)))
        wr_valid = Signal()
        m.d.comb += wr_valid.eq(Mux(is_ffn1, rq2.o_stream.valid,
                                    rq.o_stream.valid & ~is_score))
        w8 = Cat(*(Mux(is_ffn1, rq2.o_stream.payload.data[j],
                       sat(rq.o_stream.payload.data[j], 8))[:8] for j in range(N)))
        w22 = Cat(*(rq.o_stream.payload.data[j] for j in range(N)))
        w_grp = Mux(j_mode == M_CTX, j_mb, w_t)
        w_chunk = Mux(j_mode == M_CTX, j_chw + w_t, j_chunk)
        with m.If(wr_valid):
            m.d.comb += wb_fire.eq(1)
            m.d.sync += [w_i.eq(w_i + 1), w_u.eq(w_u + 1)]
            with m.If(w_u == U - 1):
                m.d.sync += [w_u.eq(0), w_g.eq(w_g + 1)]
            with m.If(w_i == N - 1):
                m.d.sync += [w_i.eq(0), w_t.eq(w_t + 1), w_u.eq(0), w_g.eq(0)]
        # One register stage before the buffers' write ports (they sit far from the
        # requantizers; this was the ECP5 critical path). A job ends when its last write is in
        # that register; the next job reads two or more cycles later, after the write landed.
        v_valid = Signal()
        v_res = Signal()
        v_mode = Signal.like(j_mode)
        v_bank = Signal.like(w_i)
        v_u = Signal.like(w_u)
        v_addr = Signal(range(GRP * max(CWH, CWF)))
        v_raddr = Signal(range(GRP * PPB * CWH))
        v_w8 = Signal(8 * N)
        v_w22 = Signal(RESIDUAL_BITS * N)
        m.d.sync += [v_valid.eq(wr_valid), v_res.eq(has_res), v_mode.eq(j_mode), v_bank.eq(w_i),
                     v_u.eq(w_u), v_w8.eq(w8), v_w22.eq(w22),
                     v_addr.eq(Mux(is_ffn1, w_grp * CWF, w_grp * CWH) + w_chunk),
                     v_raddr.eq((w_t * PPB + w_g) * CWH + j_chunk)]
        for mode, banks in ((M_Q, buf[A_Q]), (M_CTX, buf[A_Q]), (M_K, kbuf), (M_V, vbuf),
                            (M_FFN1, buf[A_H])):
            for b in range(N):
                port = banks[b]["w"]
                with m.If(v_valid & (v_mode == mode) & (v_bank == b)):
                    m.d.comb += [port.addr.eq(v_addr), port.data.eq(v_w8), port.en.eq(1)]
        for u, (r_w, _) in enumerate(r_banks):
            m.d.comb += [r_w.addr.eq(v_raddr), r_w.data.eq(v_w22)]
            with m.If(v_valid & v_res & (v_u == u)):
                m.d.comb += r_w.en.eq(1)
        with m.If(wb_fire):
            m.d.sync += wb_count.eq(wb_count + 1)
        job_done = Signal()
        m.d.comb += job_done.eq(~f_active & (wb_count == j_tiles * N))

        # -- Softmax pass: score banks -> S IntSoftmax units -> P buffer ----------------------
        # Unit k takes the rows q*S + k of the block; all units read the same word of their
        # bank each cycle (a fork: a beat advances once every unit has taken it).
        x_active = Signal()
        x_q = Signal(range(RPS + 1))
        x_e = Signal(range(c.max_seq + 1))
        x_w = Signal(range(GRP + 1))
        x_l = Signal(range(N))
        x1_valid = Signal()
        x1_l = Signal(range(N))
        x1_last = Signal()
        sinks = _sliced(m, "softmax_in", [unit.i_stream for unit in smaxes])
        x_adv = _fork(m, "x", x1_valid, sinks, Const((1 << S) - 1, S))
        _feed(m, "score", [r for _, r in s_banks], sinks, x_q * GRP + x_w, x_adv, x1_l, SW,
              x1_last)
        with m.If(x_adv):
            m.d.sync += [x1_valid.eq(x_active), x1_l.eq(x_l), x1_last.eq(x_e == seq_len - 1)]
        with m.If(x_adv & x_active):
            m.d.sync += [x_e.eq(x_e + 1), x_l.eq(x_l + 1)]
            with m.If(x_l == N - 1):
                m.d.sync += [x_l.eq(0), x_w.eq(x_w + 1)]
            with m.If(x_e == seq_len - 1):
                m.d.sync += [x_e.eq(0), x_l.eq(0), x_w.eq(0), x_q.eq(x_q + 1)]
                with m.If(x_q == RPS - 1):
                    m.d.sync += x_active.eq(0)
        # each unit's probabilities -> words of N -> the P bank of its row
        y_regs, y_done = [], []
        for k, unit in enumerate(smaxes):
            y_q = Signal(range(RPS + 1), name=f"y_q{k}")
            y_w = Signal(range(GRP + 1), name=f"y_w{k}")
            y_l = Signal(range(N), name=f"y_l{k}")
            y_word = Signal(8 * N, name=f"y_word{k}")
            y_regs += [y_q, y_w, y_l]
            y_done.append(y_q == RPS)
            m.d.comb += unit.o_stream.ready.eq(y_q != RPS)
            y_full = Cat(*(Mux(y_l == j, unit.o_stream.payload.data, y_word[8 * j:8 * j + 8])
                           for j in range(N)))
            with m.If(unit.o_stream.valid & unit.o_stream.ready):
                m.d.sync += [y_word.eq(y_full), y_l.eq(y_l + 1)]
                ylast = unit.o_stream.payload.last
                with m.If((y_l == N - 1) | ylast):
                    m.d.sync += [y_l.eq(0), y_w.eq(y_w + 1)]
                    for q in range(RPS):
                        port = pbuf[q * S + k]["w"]
                        with m.If(y_q == q):
                            m.d.comb += [port.addr.eq(y_w), port.data.eq(y_full),
                                         port.en.eq(1)]
                with m.If(ylast):
                    m.d.sync += [y_w.eq(0), y_q.eq(y_q + 1)]
        smax_done = Cat(*y_done).all()

        # -- LayerNorm pass: R banks -> U IntLayerNorm units -> requant -> gatherers ----------
        # Unit u normalizes the positions g*U + u; the units take the same channel of their
        # rows each cycle (a fork), their outputs are joined into one U-lane Requantizer beat
        # (the channel's m, e, bias are shared) and U gatherers write the words to A or X.
        RW = RESIDUAL_BITS
        n_which = Signal()            # 0: LN1 (R -> A), 1: LN2 (R -> X)
        n_active = Signal()
        n_g = Signal(range(GRP * PPB + 1))
        n_c = Signal(range(CWH))
        n_l = Signal(range(N))
        n1_valid = Signal()
        n1_l = Signal(range(N))
        n1_last = Signal()
        n1_on = Signal(U)             # the unit's position is inside the sequence
        sinks = _sliced(m, "ln_in", [unit.i_stream for unit in lns])
        ln_outs = _sliced(m, "ln_out", [unit.o_stream for unit in lns], inputs=False)
        n_adv = _fork(m, "n", n1_valid, sinks, n1_on)
        _feed(m, "ln_in", [r for _, r in r_banks], sinks, n_g * CWH + n_c, n_adv, n1_l, RW,
              n1_last)
        with m.If(n_adv):
            m.d.sync += [n1_valid.eq(n_active), n1_l.eq(n_l),
                         n1_last.eq((n_c == CWH - 1) & (n_l == N - 1)),
                         n1_on.eq(Cat(*(n_g * U + u < seq_len for u in range(U))))]
        with m.If(n_adv & n_active):
            m.d.sync += n_l.eq(n_l + 1)
            with m.If(n_l == N - 1):
                m.d.sync += [n_l.eq(0), n_c.eq(n_c + 1)]
                with m.If(n_c == CWH - 1):
                    m.d.sync += [n_c.eq(0), n_g.eq(n_g + 1)]
                    with m.If((n_g + 1) * U >= seq_len):
                        m.d.sync += n_active.eq(0)
        # join the units' outputs (same channel) and fetch the channel's parameters
        q_g = Signal(range(GRP * PPB + 1))
        q_c = Signal(range(CWH))
        q_l = Signal(range(N))
        q_on = Cat(*(q_g * U + u < seq_len for u in range(U)))
        q_join = q_on[0] & Cat(*(~q_on[u] | unit.valid
                                 for u, unit in enumerate(ln_outs))).all()
        q1_valid = Signal()
        q1_data = [Signal(signed(IntLayerNorm.OUT_WIDTH), name=f"q1_data{u}") for u in range(U)]
        q1_l = Signal(range(N))
        q_adv = Signal()
        q_fire = Signal()
        m.d.comb += [q_adv.eq(~q1_valid | rq_ln.i_stream.ready), q_fire.eq(q_join & q_adv),
                     lp_r.addr.eq(Mux(n_which, CWH, 0) + q_c), lp_r.en.eq(q_fire)]
        for u, unit in enumerate(ln_outs):
            m.d.comb += unit.ready.eq(q_fire & q_on[u])
        with m.If(q_adv):
            m.d.sync += q1_valid.eq(q_join)
        with m.If(q_fire):
            m.d.sync += [q1_data[u].eq(unit.payload.data) for u, unit in enumerate(ln_outs)]
            m.d.sync += [q1_l.eq(q_l), q_l.eq(q_l + 1)]
            with m.If(q_l == N - 1):
                m.d.sync += [q_l.eq(0), q_c.eq(q_c + 1)]
                with m.If(q_c == CWH - 1):
                    m.d.sync += [q_c.eq(0), q_g.eq(q_g + 1)]
        lp_lane = _pick(m, "lp_lane", [lp_r.data[_LN_LANE * j:_LN_LANE * (j + 1)]
                                       for j in range(N)], q1_l, _LN_LANE)
        m.d.comb += [rq_ln.i_stream.valid.eq(q1_valid), rq_ln.i_stream.payload.last.eq(0)]
        for u in range(U):
            lane = rq_ln.i_stream.payload.data[u]
            m.d.comb += [lane.x.eq(q1_data[u]),
                         lane.m.eq(lp_lane[:REQ_M_BITS]),
                         lane.e.eq(lp_lane[REQ_M_BITS:REQ_M_BITS + REQ_E_BITS]),
                         lane.bias.eq(lp_lane[REQ_M_BITS + REQ_E_BITS:])]
        # gatherers: position (n_blk_g * PPB + n_sub) * U + u, channel chunk n_gc, element n_ge
        ga_blk = Signal(range(GRP + 1))
        ga_sub = Signal(range(max(PPB, 2)))
        ga_c = Signal(range(CWH))
        ga_l = Signal(range(N))
        ga_words = [Signal(8 * N, name=f"ga_word{u}") for u in range(U)]
        ln_done = Signal()
        m.d.comb += ln_done.eq(ga_blk * N + ga_sub * U >= seq_len)
        with m.If(rq_ln.o_stream.valid & rq_ln.o_stream.ready):      # ready in LNRUN
            m.d.sync += ga_l.eq(ga_l + 1)
            with m.If(ga_l == N - 1):
                m.d.sync += [ga_l.eq(0), ga_c.eq(ga_c + 1)]
                with m.If(ga_c == CWH - 1):
                    m.d.sync += [ga_c.eq(0), ga_sub.eq(ga_sub + 1)]
                    with m.If(ga_sub == PPB - 1):
                        m.d.sync += [ga_sub.eq(0), ga_blk.eq(ga_blk + 1)]
            for u in range(U):
                byte = rq_ln.o_stream.payload.data[u][:8]
                full = Cat(*(Mux(ga_l == j, byte, ga_words[u][8 * j:8 * j + 8])
                             for j in range(N)))
                m.d.sync += ga_words[u].eq(full)
                on = ga_blk * N + ga_sub * U + u < seq_len
                with m.If((ga_l == N - 1) & on):
                    for g in range(PPB):
                        for dest, banks in ((0, buf[A_A]), (1, buf[A_X])):
                            port = banks[g * U + u]["w"]
                            with m.If((ga_sub == g) & (n_which == dest)):
                                m.d.comb += [port.addr.eq(ga_blk * CWH + ga_c),
                                             port.data.eq(full), port.en.eq(1)]

        # -- Output pass (after the last layer): X -> bytes -> output packer -----------------
        u_active = Signal()
        u_blk = Signal(range(GRP + 1))
        u_bank = Signal(range(N))
        u_c = Signal(range(CWH))
        u_l = Signal(range(N))
        u_word = Signal(8 * N)
        u_have = Signal()                 # u_word holds the word (u_blk, u_bank, u_c)
        u_wait = Signal()                 # its read was issued last cycle
        u_final = ((u_blk * N + u_bank == seq_len - 1) & (u_c == CWH - 1) & (u_l == N - 1))
        with m.If(u_active & ~u_have & ~u_wait):
            m.d.sync += u_wait.eq(1)
            for b in range(N):
                port = buf[A_X][b]["r"][1]
                m.d.comb += [port.addr.eq(u_blk * CWH + u_c), port.en.eq(1)]
        with m.If(u_wait):
            m.d.sync += [u_wait.eq(0), u_have.eq(1),
                         u_word.eq(_pick(m, "u_word", [buf[A_X][b]["r"][1].data
                                                       for b in range(N)], u_bank, 8 * N))]
        with m.If(u_have):
            m.d.comb += [o_in_valid.eq(1), o_in_byte.eq(u_word.word_select(u_l, 8)),
                         o_in_final.eq(u_final)]
            with m.If(o_ready):
                m.d.sync += u_l.eq(u_l + 1)
                with m.If(u_l == N - 1):
                    m.d.sync += [u_l.eq(0), u_have.eq(0), u_c.eq(u_c + 1)]
                    with m.If(u_c == CWH - 1):
                        m.d.sync += [u_c.eq(0), u_bank.eq(u_bank + 1)]
                        with m.If(u_bank == N - 1):
                            m.d.sync += [u_bank.eq(0), u_blk.eq(u_blk + 1)]
                    with m.If(u_final):
                        m.d.sync += u_active.eq(0)

        # -- Sequencer -----------------------------------------------------------------------
        s_group = Signal(range(6))
        s_panel = Signal(range(max(CWH, CWF) + 1))
        s_slot = Signal()
        s_head = Signal(range(c.heads + 1))
        s_mb = Signal(range(GRP + 1))

        def start_job(kind, asrc, tiles, k, mode, *, mb=0, chw=0, chunk=0, bias=0):
            m.d.sync += [j_kind.eq(kind), j_asrc.eq(asrc), j_tiles.eq(tiles), j_k.eq(k),
                         j_mode.eq(mode), j_mb.eq(mb), j_chw.eq(chw), j_chunk.eq(chunk),
                         j_slot.eq(s_slot), j_bias_on.eq(bias), bias_left.eq(1),
                         bias_cnt.eq(0), f_active.eq(1), f_t.eq(0), f_k.eq(0), f_kw.eq(0),
                         f_ke.eq(0), f_paddr.eq(Mux(s_slot, KW, 0)), c_i.eq(0), c_t.eq(0),
                         c_k.eq(0), c_q.eq(0), w_i.eq(0), w_t.eq(0), w_u.eq(0), w_g.eq(0),
                         wb_count.eq(0)]

        g_panels = Mux(s_group == G_FFN1, CWF, CWH)
        with Fsm(m, "seq") as fsm:
            with fsm.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += g_reset.eq(1)
                    m.d.sync += [in_active.eq(1), in_done.eq(0), layer.eq(0), o_pending.eq(0)]
                    fsm.next("INPUT")
            with fsm.State("INPUT"):
                with m.If(in_done):
                    m.d.sync += [seq_len.eq(g_pos), n_blk.eq(g_grp + (g_bank != 0))]
                    with m.If(g_pos == 0):
                        m.d.comb += fail_seq.eq(1)
                    with m.Else():
                        m.d.comb += self.layer_mark.eq(1)
                        fsm.next("LAYER")
            with fsm.State("LAYER"):
                with m.If(scal_full):
                    m.d.sync += [s_group.eq(G_Q), s_panel.eq(0)]
                    fsm.next("PWAIT")
            with fsm.State("PWAIT"):
                with m.If(slot_full.bit_select(s_slot, 1)):
                    asrc = _pick(m, "asrc", [A_X, A_X, A_X, A_Q, A_A, A_H], s_group, 3)
                    mode = _pick(m, "mode", [M_Q, M_K, M_V, M_O, M_FFN1, M_FFN2], s_group, 3)
                    start_job(J_PANEL, asrc, n_blk, Mux(s_group == G_FFN2, ffn, hid), mode,
                              chunk=s_panel, bias=1)
                    fsm.next("PRUN")
            with fsm.State("PRUN"):
                with m.If(job_done):
                    m.d.comb += [clr_slot.eq(1), clr_slot_i.eq(s_slot)]
                    m.d.sync += [s_slot.eq(~s_slot), s_panel.eq(s_panel + 1)]
                    fsm.next("PWAIT")
                    with m.If(s_panel == g_panels - 1):
                        m.d.sync += [s_panel.eq(0), s_group.eq(s_group + 1)]
                        with m.If(s_group == G_V):
                            m.d.sync += [s_head.eq(0), s_mb.eq(0)]
                            fsm.next("SCORES")
                        with m.Elif(s_group == G_O):
                            m.d.sync += n_which.eq(0)
                            fsm.next("LN")
                        with m.Elif(s_group == G_FFN1):
                            m.d.comb += clr_scal.eq(1)
                        with m.Elif(s_group == G_FFN2):
                            m.d.sync += n_which.eq(1)
                            fsm.next("LN")
            with fsm.State("SCORES"):
                start_job(J_SCORE, A_Q, n_blk, hd, M_SCORE, mb=s_mb, chw=s_head * HPW)
                fsm.next("SRUN")
            with fsm.State("SRUN"):
                with m.If(job_done):
                    m.d.sync += [x_active.eq(1), x_q.eq(0), x_e.eq(0), x_w.eq(0), x_l.eq(0)]
                    m.d.sync += [r.eq(0) for r in y_regs]
                    fsm.next("SMAX")
            with fsm.State("SMAX"):
                with m.If(smax_done):
                    start_job(J_PV, A_P, HPW, seq_len, M_CTX, mb=s_mb, chw=s_head * HPW)
                    fsm.next("PVRUN")
            with fsm.State("PVRUN"):
                with m.If(job_done):
                    m.d.sync += s_mb.eq(s_mb + 1)
                    fsm.next("SCORES")
                    with m.If(s_mb == n_blk - 1):
                        m.d.sync += [s_mb.eq(0), s_head.eq(s_head + 1)]
                        with m.If(s_head == c.heads - 1):
                            fsm.next("PWAIT")          # s_group is G_O
            with fsm.State("LN"):
                with m.If(ln_full.bit_select(n_which, 1)):
                    m.d.sync += [n_active.eq(1), n_g.eq(0), n_c.eq(0), n_l.eq(0),
                                 q_g.eq(0), q_c.eq(0), q_l.eq(0),
                                 ga_blk.eq(0), ga_sub.eq(0), ga_c.eq(0), ga_l.eq(0)]
                    fsm.next("LNRUN")
            with fsm.State("LNRUN"):
                m.d.comb += rq_ln.o_stream.ready.eq(1)
                with m.If(ln_done):
                    m.d.comb += [clr_ln.eq(1), clr_ln_i.eq(n_which), self.layer_mark.eq(n_which)]
                    with m.If(n_which == 0):
                        m.d.sync += s_group.eq(G_FFN1)
                        fsm.next("PWAIT")
                    with m.Elif(layer == c.layers - 1):
                        m.d.sync += [u_active.eq(1), u_blk.eq(0), u_bank.eq(0), u_c.eq(0),
                                     u_l.eq(0), u_have.eq(0), u_wait.eq(0), o_pending.eq(1)]
                        fsm.next("OUT")
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        fsm.next("LAYER")
            with fsm.State("OUT"):
                with m.If(~u_active & ~o_pending):
                    m.d.comb += self.done.eq(1)
                    fsm.next("IDLE")

        units = [array, *smaxes, *lns]
        m.d.comb += [self.fail.eq(fail_hdr | fail_len | fail_seq),
                     self.fault.eq(Cat(*(unit.error for unit in units)).any())]
        return m


class EncoderCore(wiring.Component):
    """The encoder core: all layers of one sequence per run (see the module docstring).

    Parameters
    ----------
    config : CoreConfig
        A configuration the core supports (:func:`bertcore.core.image.check_core_config`).

    Members
    -------
    s_param : ``In(stream.Signature(bus_layout(bus_width)))``
        The parameter image (:func:`bertcore.core.image.pack_parameter_image`), once per run.
    s_act : ``In(stream.Signature(bus_layout(bus_width)))``
        The int8 input of one sequence (:func:`bertcore.core.image.pack_activations`).
    m_act : ``Out(stream.Signature(bus_layout(bus_width)))``
        The int8 output of the last layer, same layout.
    busy : ``Out(1)``
        A run (or the draining of a bad packet) is in progress.
    error : ``Out(1)``
        Sticky: a protocol error was seen; cleared when the next image header is accepted.
    cycles : ``Out(32)``
        Cycles of the last successful run (first image beat to last output beat).
    array_beats : ``Out(32)``
        Operand beats the systolic array took in the last successful run (cycles in which its
        ``N x N`` PEs were fed; :func:`bertcore.core.perf.array_beats`).
    layer_cycles : ``Out(32)``
        Cycles of the last layer of the last successful run (from the end of the previous
        layer to the end of its second LayerNorm; :func:`bertcore.core.perf.layer_cycles`).

    Protocol errors (bad image header or length, an activation beat while idle, a sequence of
    0 or more than ``max_seq`` rows) raise ``error``, abort the run, drop the open packets up to
    their ``tlast`` and return to idle.

    With ``config.resident`` the image of a successful run is kept in an on-chip memory
    (``image_beats(config)`` words of ``bus_width + 1`` bits): a run that starts with an
    activation beat replays it (no image on ``s_param``); a new image on ``s_param`` replaces it.
    An activation beat while idle is an error only when no image is stored.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~bertcore.config.CoreConfig`.
    ImageError
        If the core does not support ``config``.
    """

    def __init__(self, config):
        with rejecting(self):
            if not isinstance(config, CoreConfig):
                raise TypeError(f"config must be a CoreConfig, not {config!r}")
            check_core_config(config)
        self._config = config
        layout = bus_layout(config.bus_width)
        super().__init__({
            "s_param": In(stream.Signature(layout)),
            "s_act": In(stream.Signature(layout)),
            "m_act": Out(stream.Signature(layout)),
            "busy": Out(1),
            "error": Out(1),
            "cycles": Out(32),
            "array_beats": Out(32),
            "layer_cycles": Out(32),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        # Register slices on all three stream ports: every port signal (valid, ready, payload)
        # comes from or ends in a flip-flop, so no path runs from a neighbour's logic into the
        # controller or the datapath (they are the ECP5 critical paths otherwise).
        m.submodules.s_param_slice = p_slice = RegisterSlice(self.s_param.payload.shape())
        m.submodules.s_act_slice = a_slice = RegisterSlice(self.s_act.payload.shape())
        m.submodules.m_act_slice = o_slice = RegisterSlice(self.m_act.payload.shape())
        connect(m, flipped(self.s_param), p_slice.i_stream)
        connect(m, flipped(self.s_act), a_slice.i_stream)
        connect(m, o_slice.o_stream, flipped(self.m_act))
        s_param, s_act, m_act = p_slice.o_stream, a_slice.o_stream, o_slice.i_stream
        # ``abort`` resets the whole datapath; it is registered (one cycle late) so that the
        # decisions behind it (header/length checks, the end of a run) are not on the same
        # path as the reset fan-out. The controller waits in IDLE while it is high.
        abort = Signal()
        abort_q = Signal()
        m.d.sync += abort_q.eq(abort)
        fail_q = Signal()
        dp = _Datapath(self._config)
        m.submodules.dp = ResetInserter(abort_q)(dp)
        err = Signal()             # a protocol error (sticky until the next run starts)
        fault = Signal()           # an internal unit flagged an error (sticky until reset)
        with m.If(dp.fault):
            m.d.sync += fault.eq(1)
        m.d.comb += self.error.eq(err | fault)

        p_fire = s_param.valid & s_param.ready
        a_fire = s_act.valid & s_act.ready
        p_open = Signal()          # a parameter packet has started and not ended
        a_open = Signal()
        with m.If(p_fire):
            m.d.sync += p_open.eq(~s_param.payload.last)
        with m.If(a_fire):
            m.d.sync += a_open.eq(~s_act.payload.last)
        count = Signal(32)
        m.d.sync += count.eq(count + 1)
        beats = Signal(32)
        with m.If(dp.beat):
            m.d.sync += beats.eq(beats + 1)
        mark_at = Signal(32)       # ``count`` at the last layer mark
        last_layer = Signal(32)
        with m.If(dp.layer_mark):
            m.d.sync += [mark_at.eq(count), last_layer.eq(count - mark_at)]

        # resident: the image of a successful run is kept in a memory and replayed by runs
        # that start with activations
        resident = self._config.resident
        total = image_beats(self._config)
        bus = self._config.bus_width
        replay = Signal()
        stored = Signal()
        cap_addr = Signal(range(total + 1))
        r_addr = Signal(range(total + 1))
        r_valid = Signal()             # the memory's output holds a beat
        q_valid = Signal()             # the register after it (the replayed stream) holds one
        q_payload = Signal(bus + 1)
        if resident:
            m.submodules.image = image = Memory(shape=unsigned(bus + 1), depth=total, init=[])
            wp, rp = image.write_port(), image.read_port()
            with m.If(p_fire & ~replay & (cap_addr != total)):
                m.d.comb += [wp.addr.eq(cap_addr), wp.en.eq(1),
                             wp.data.eq(s_param.payload.as_value())]
                m.d.sync += cap_addr.eq(cap_addr + 1)
            # memory -> register -> datapath: the block RAM's slow clock-to-out ends in a
            # flip-flop instead of running on into the header checks
            q_load = ~q_valid | dp.param.ready
            r_en = ~r_valid | q_load
            m.d.comb += [rp.addr.eq(r_addr), rp.en.eq(r_en)]
            with m.If(q_load):
                m.d.sync += [q_valid.eq(r_valid & replay), q_payload.eq(rp.data)]
            with m.If(r_en & replay):
                m.d.sync += r_valid.eq(r_addr != total)
                with m.If(r_addr != total):
                    m.d.sync += r_addr.eq(r_addr + 1)

        with Fsm(m, "ctrl") as fsm:
            with fsm.State("IDLE"):
                with m.If(abort_q):
                    pass                      # the datapath is being reset
                with m.Elif(s_param.valid):
                    m.d.comb += dp.start.eq(1)
                    m.d.sync += [err.eq(0), count.eq(1), beats.eq(0)]
                    if resident:
                        m.d.sync += [replay.eq(0), stored.eq(0), cap_addr.eq(0)]
                    fsm.next("RUN")
                if resident:
                    with m.Elif(s_act.valid & stored):
                        # replay the stored image
                        m.d.comb += dp.start.eq(1)
                        m.d.sync += [err.eq(0), count.eq(1), beats.eq(0), replay.eq(1),
                                     r_addr.eq(0), r_valid.eq(0), q_valid.eq(0)]
                        fsm.next("RUN")
                with m.Elif(s_act.valid):
                    m.d.sync += err.eq(1)
                    fsm.next("DROP")
            with fsm.State("DROP"):
                # activations before parameters: drop that packet
                m.d.comb += [self.busy.eq(1), s_act.ready.eq(1)]
                with m.If(a_fire & s_act.payload.last):
                    fsm.next("IDLE")
            with fsm.State("RUN"):
                # a failure is acted on one cycle late (``fail_q``, off the header-check path);
                # in that cycle no beat is taken, so nothing of the next packet is swallowed
                m.d.sync += fail_q.eq(dp.fail)
                m.d.comb += [
                    self.busy.eq(1),
                    dp.param.valid.eq(s_param.valid & ~fail_q),
                    dp.param.payload.eq(s_param.payload),
                    s_param.ready.eq(dp.param.ready & ~fail_q),
                    dp.act.valid.eq(s_act.valid & ~fail_q),
                    dp.act.payload.eq(s_act.payload),
                    s_act.ready.eq(dp.act.ready & ~fail_q),
                    m_act.valid.eq(dp.out.valid),
                    m_act.payload.eq(dp.out.payload),
                    dp.out.ready.eq(m_act.ready),
                ]
                if resident:
                    with m.If(replay):
                        m.d.comb += [dp.param.valid.eq(q_valid & ~fail_q),
                                     dp.param.payload.eq(q_payload), s_param.ready.eq(0)]
                with m.If(fail_q):
                    m.d.comb += abort.eq(1)
                    m.d.sync += err.eq(1)
                    fsm.next("DRAIN")
                with m.Elif(dp.done):
                    # the datapath restarts from its reset state for the next run
                    m.d.comb += abort.eq(1)
                    m.d.sync += [self.cycles.eq(count), self.array_beats.eq(beats),
                                 self.layer_cycles.eq(last_layer)]
                    if resident:
                        m.d.sync += stored.eq(1)
                    fsm.next("IDLE")
            with fsm.State("DRAIN"):
                m.d.sync += fail_q.eq(0)
                # drop what is left of the open packets (the failing beat itself was taken)
                m.d.comb += [self.busy.eq(1), abort.eq(1),
                             s_param.ready.eq(p_open), s_act.ready.eq(a_open)]
                with m.If((~p_open | (p_fire & s_param.payload.last))
                          & (~a_open | (a_fire & s_act.payload.last))):
                    fsm.next("IDLE")
        return m


class EncoderTop(wiring.Component):
    """:class:`EncoderCore` with flat AXI4-Stream port names (``s_axis_param_tdata`` ...).

    ``verilog.convert(EncoderTop(config), name="bertcore_encoder")`` emits ``clk``, ``rst``,
    ``s_axis_param_tdata/tvalid/tready/tlast``, ``s_axis_act_tdata/tvalid/tready/tlast``,
    ``m_axis_act_tdata/tvalid/tready/tlast``, ``busy``, ``error``, ``cycles``, ``array_beats``
    and ``layer_cycles``.
    """

    def __init__(self, config):
        self._core = EncoderCore(config)
        bus = config.bus_width
        super().__init__({
            "s_axis_param_tdata": In(bus), "s_axis_param_tvalid": In(1),
            "s_axis_param_tready": Out(1), "s_axis_param_tlast": In(1),
            "s_axis_act_tdata": In(bus), "s_axis_act_tvalid": In(1),
            "s_axis_act_tready": Out(1), "s_axis_act_tlast": In(1),
            "m_axis_act_tdata": Out(bus), "m_axis_act_tvalid": Out(1),
            "m_axis_act_tready": In(1), "m_axis_act_tlast": Out(1),
            "busy": Out(1), "error": Out(1), "cycles": Out(32), "array_beats": Out(32),
            "layer_cycles": Out(32),
        })

    @property
    def core(self):
        return self._core

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._core
        for name, s in (("s_axis_param", core.s_param), ("s_axis_act", core.s_act)):
            m.d.comb += [s.payload.data.eq(getattr(self, f"{name}_tdata")),
                         s.payload.last.eq(getattr(self, f"{name}_tlast")),
                         s.valid.eq(getattr(self, f"{name}_tvalid")),
                         getattr(self, f"{name}_tready").eq(s.ready)]
        m.d.comb += [self.m_axis_act_tdata.eq(core.m_act.payload.data),
                     self.m_axis_act_tlast.eq(core.m_act.payload.last),
                     self.m_axis_act_tvalid.eq(core.m_act.valid),
                     core.m_act.ready.eq(self.m_axis_act_tready),
                     self.busy.eq(core.busy), self.error.eq(core.error),
                     self.cycles.eq(core.cycles), self.array_beats.eq(core.array_beats),
                     self.layer_cycles.eq(core.layer_cycles)]
        return m
