"""The encoder core's on-chip buffers: banked activation, score, probability and residual
memories, with one owner per port.

Activation buffers hold one sequence, banked by position: bank ``b`` holds the positions
``p ≡ b (mod N)``, one word of ``N`` channels (int8) per position and channel chunk, so that one
read of every bank gives the ``N`` rows of an A operand beat (or the ``N`` key positions of a
``Kᵀ`` beat). ``X`` holds the layer input (and the residual of the attention output), ``Q`` the
queries and then, in place, the attention context, ``K`` and ``V`` the keys and values, ``A``
the LayerNorm-1 output (the FFN input and residual), ``H`` the GELU output. ``R`` holds the
22-bit residual sums before each LayerNorm in ``U = layernorm_units`` banks (bank ``u`` holds
the positions ``p ≡ u (mod U)``). The score banks hold the scores of one block of ``N`` query
rows (bank ``k`` of ``S = softmax_units`` the rows ``≡ k (mod S)``), the P buffer their
probabilities (bank ``i`` = query row ``i`` of the block). Both are double-buffered (two
halves, the job's ``bank`` bit): the scores of the next query block are written while the
softmax pass reads this block's, and the softmax pass writes its probabilities while ``P·V``
reads the previous block's (the sequencer's module docstring).

Port owners (each member of :class:`Buffers` is connected to exactly one component)::

    buffer  write port                        read port
    X       input gatherer | LN-2 gatherers   output pass | residual fetch | feeder
    Q       write-back (queries, context)     feeder
    K, V    write-back                        feeder
    A       LN-1 gatherers                    residual fetch | feeder
    H       write-back (GELU output)          feeder
            (with ``shared_h``: no memory of its own, see below)
    P       softmax pass                      feeder
    R       write-back                        LayerNorm pass
    S       write-back (scores)               softmax pass

The shared ports of ``X`` and ``A`` have an explicit fixed-priority arbiter (:func:`_arbitrate`,
the users in the order above): their users never run at the same time, and each enables its
port only in its own phase (X: the input before the first layer, the LN-2 gatherers at the end
of each layer; the feeder during Q/K/V panels, the residual fetch during O panels, the output
pass after the last layer. A: the feeder during FFN1 panels, the residual fetch during FFN2
panels). One read port each keeps X and A at one copy of the memory: block RAM has two ports,
and a second read port doubled them (32 more DP16KD on an 8 x 8 MiniLM core).

With ``config.shared_h`` H is kept in the memories of X, Q, K and V (the first ``ffn //
hidden`` of them), which hold nothing live while the FFN runs: X's last reader (the residual
fetch of the O job) and Q's (the O job's feeder) are done before LayerNorm-1, and LayerNorm-2
writes X only after FFN2. The write-back's H writes and the feeder's H reads join those
memories' ports as their last users (:meth:`Buffers._share_h`).
"""

from types import SimpleNamespace

from amaranth.hdl import Module, Shape, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, flipped

from bertcore.quant.kernels import RESIDUAL_BITS
from bertcore.rtl.blockram import BlockRam
from bertcore.rtl.softmax import IntSoftmax

from .common import pick, row_read, write_port

__all__ = ["Buffers", "output_registered"]

#: The buffers read through their block's output register (``_banked``'s ``out_reg``).
_OUT_REG = ("h", "r")


def output_registered(config, name):
    """Whether buffer ``name`` of ``config`` is read through its output register, so that its
    data pass two registers loaded with ``en`` (with ``shared_h`` H has no memory of its own
    and is read from X, Q, K and V's)."""
    return name in _OUT_REG and not (name == "h" and config.shared_h)


def _banked(m, name, banks, depth, shape, read_ports, late, out_reg=False):
    """``banks`` memories of ``depth`` words of ``shape`` (submodules ``{name}_{b}`` of ``m``).

    Returns the user-side ports: the write port of each bank (a list) and the row reads (a
    list of ``read_ports``), as interfaces of :func:`~bertcore.core.common.write_port` /
    :func:`~bertcore.core.common.row_read` that ``m`` drives.

    With ``late``, each bank's write request (``addr``, ``data``, ``en``) is registered before
    its write port: the port's signals come from flip-flops (the writers' multiplexers do not
    run on across the chip into every LUT-RAM cell), and a write lands one cycle after its
    request. The writers of X and A are the input gatherer and the LayerNorm gatherers, of P
    the softmax pass; the sequencer reads those buffers two or more cycles after their last
    request.

    With ``out_reg`` (one read port), each bank is a :class:`~bertcore.rtl.blockram.BlockRam`
    whose output register loads with the read's ``en``: the word addressed with one ``en`` is
    on ``data`` after the next ``en`` (a reader that registers the read data with the enable
    of its read gets that register inside the block RAM, on ECP5 the DP16KD's own, ~1 ns
    clock-to-output instead of 5.8 ns).
    """
    writes = [write_port(depth, shape).flip().create(path=(f"{name}_{b}_w",))
              for b in range(banks)]
    rows = [row_read(depth, shape, banks).flip().create(path=(f"{name}_r{i}",))
            for i in range(read_ports)]
    for b in range(banks):
        req = writes[b]
        if out_reg:
            assert read_ports == 1 and not late
            m.submodules[f"{name}_{b}"] = ram = BlockRam(Shape.cast(shape).width, depth)
            row = rows[0]
            m.d.comb += [ram.w_addr.eq(req.addr), ram.w_data.eq(req.data), ram.w_en.eq(req.en),
                         ram.r_addr.eq(row.addr), ram.r_en.eq(row.en), ram.o_en.eq(row.en),
                         row.data[b].eq(ram.r_data)]
            continue
        m.submodules[f"{name}_{b}"] = mem = Memory(shape=shape, depth=depth, init=[])
        wp = mem.write_port()
        if late:
            # (the address and data registers are not reset: en says whether they hold one)
            addr = Signal.like(req.addr, name=f"{name}_{b}_waddr", reset_less=True)
            data = Signal.like(req.data, name=f"{name}_{b}_wdata", reset_less=True)
            en = Signal(name=f"{name}_{b}_wen")
            m.d.sync += [addr.eq(req.addr), data.eq(req.data), en.eq(req.en)]
        else:
            addr, data, en = req.addr, req.data, req.en
        m.d.comb += [wp.addr.eq(addr), wp.data.eq(data), wp.en.eq(en)]
        for row in rows:
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(row.addr), rp.en.eq(row.en), row.data[b].eq(rp.data)]
    return writes, rows


def _arbitrate(m, port, users, names):
    """Drive the fields ``names`` of ``port`` from ``users``: the first user whose ``en`` is
    high, else the last user (a fixed-priority arbiter)."""
    m.d.comb += [getattr(port, name).eq(getattr(users[-1], name)) for name in names]
    for user in reversed(users[:-1]):           # the statement made last wins
        with m.If(user.en):
            m.d.comb += [getattr(port, name).eq(getattr(user, name)) for name in names]


class Buffers(wiring.Component):
    """All activation, score, probability and residual buffers of the core (see the module
    docstring for their contents and the owner of each port).

    Members
    -------
    feed_x, feed_q, feed_a, feed_h, feed_k, feed_v, feed_p : ``In(row_read(...))``
        The feeder's operand reads (``feed_x`` / ``feed_a`` enabled only while the running
        job's A operand is X / A: they share their buffer's read port). Without ``shared_h``,
        ``feed_h`` reads through H's output register, loaded with ``en`` too: the word
        addressed with one ``en`` is on ``data`` after the next ``en``.
    res_x, res_a : ``In(row_read(...))``
        The write-back's residual fetch (enabled only in O / FFN2 jobs; above the feeder).
    out_x : ``In(row_read(...))``
        The output pass (shares X's read port with ``res_x`` and ``feed_x``).
    out_owns : ``In(1)``
        A flip-flop, high while the output pass may read X and nothing else does: X's read
        port is then ``out_x``'s (its address, not only its read data, is selected by a
        register: ``out_x.en``'s logic ran on through the port's address multiplexer into
        every LUT-RAM cell of X, the ULX3S's worst endpoints at 125 MHz, 8.5-8.7 ns).
    wb_q, wb_k, wb_v, wb_h : ``In(write_port(...)).array(N)``
        The write-back's int8 results (Q also takes the attention context; H: the
        ``gelu_bits``-bit GELU outputs).
    wb_r : ``In(write_port(...)).array(U)``
        The write-back's residual sums.
    wb_s : ``In(write_port(...)).array(S)``
        The write-back's scores.
    in_x : ``In(write_port(...)).array(N)``
        The input gatherer (shares X's write port with ``ln_x``, which has priority).
    ln_x, ln_a : ``In(write_port(...)).array(N)``
        The LayerNorm gatherers (LN-2 into X, LN-1 into A).
    ln_r : ``In(row_read(...))``
        The LayerNorm pass's reads of R, through R's output register (loaded with ``en``
        too: the word addressed with one ``en`` is on ``data`` after the next ``en``).
    smax_s : ``In(row_read(...))``
        The softmax pass's reads of the scores.
    smax_p : ``In(write_port(...)).array(N)``
        The softmax pass's probabilities.
    """

    def __init__(self, config):
        c = self._c = config
        n = c.array_cols
        cwh, cwf = c.hidden // n, c.ffn // n
        grp = -(-c.max_seq // n)
        s, u = c.softmax_units, c.layernorm_units
        word = unsigned(8 * n)
        # name: banks, depth, word, read ports, late (see _banked), output register
        self._geometry = {
            "x": (n, grp * cwh, word, 1, True, False),     # A operand; residual of O; output
            "q": (n, grp * cwh, word, 1, False, False),    # queries, then the context
            "a": (n, grp * cwh, word, 1, True, False),     # A operand; residual of FFN2
            # gelu_bits per entry; read through the block's output register (the feeder
            # reads H on every advance of its stages, which load the output register: the
            # block RAM's 5.8 ns clock-to-output ran on into its operand registers, one of the
            # ULX3S's worst paths at 125 MHz). With shared_h H has no memory of its own.
            "h": (n, grp * cwf, unsigned(c.gelu_bits * n), 1, False, "h" in _OUT_REG),
            "k": (n, grp * cwh, word, 1, False, False),
            "v": (n, grp * cwh, word, 1, False, False),
            # P: half ``bank`` at words bank*GRP + key block; prob_bits per entry; its writes
            # registered (the softmax pass's output valid through its bank and word decode
            # into the write data and addresses of every LUT-RAM cell: the ULX3S's worst path
            # in two placements at 115 MHz, 8.98 ns). The pass is done a cycle after its last
            # request, and ``P·V`` reads P two cycles after it starts at the earliest
            "p": (n, 2 * grp, unsigned(c.prob_bits * n), 1, True, False),
            # R: bank u holds the positions p = g*U + u (word g*CWH + chunk); the LayerNorm
            # units read U positions at once, through the block's output register (its
            # read register into the LayerNorm pass's element pick was the ULX3S's worst path
            # at 125 MHz: 5.8 ns clock-to-output and the route)
            "r": (u, grp * (n // u) * cwh, unsigned(RESIDUAL_BITS * n), 1, False,
                  "r" in _OUT_REG),
            # scores: bank k holds the query rows q*S + k of the block, half ``bank`` at words
            # (bank*N/S + q)*GRP + key block
            "s": (s, 2 * (n // s) * grp,
                  unsigned(IntSoftmax.score_width(c.head_dim) * n), 1, False, False),
        }

        def rd(name):
            banks, depth, shape, *_ = self._geometry[name]
            return In(row_read(depth, shape, banks))

        def wr(name):
            banks, depth, shape, *_ = self._geometry[name]
            return In(write_port(depth, shape)).array(banks)

        super().__init__({
            **{f"feed_{b}": rd(b) for b in "xqahkvp"},
            "res_x": rd("x"), "res_a": rd("a"), "out_x": rd("x"), "out_owns": In(1),
            **{f"wb_{b}": wr(b) for b in "qkvhrs"},
            "in_x": wr("x"), "ln_x": wr("x"), "ln_a": wr("a"),
            "ln_r": rd("r"), "smax_s": rd("s"), "smax_p": wr("p"),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._c
        shared = ("x", "q", "k", "v")[:c.ffn // c.hidden] if c.shared_h else ()
        mems = {}
        for name, (banks, depth, shape, reads, late, out_reg) in self._geometry.items():
            if name == "h" and shared:
                continue
            w, r = _banked(m, name, banks, depth, shape, reads, late, out_reg)
            mems[name] = SimpleNamespace(w=w, r=r)
        # the users of each memory port, in priority order (only X and A share a port between
        # their own users; with shared_h the H users join the ports of X, Q, K and V)
        writes = {"x": [self.ln_x, self.in_x], "q": [self.wb_q], "k": [self.wb_k],
                  "v": [self.wb_v], "h": [self.wb_h], "r": [self.wb_r], "s": [self.wb_s],
                  "p": [self.smax_p], "a": [self.ln_a]}
        reads = {"x": [self.res_x, self.feed_x], "a": [self.res_a, self.feed_a],
                 "r": [self.ln_r], "s": [self.smax_s],
                 **{b: [getattr(self, f"feed_{b}")] for b in "qhkvp"}}
        if shared:
            self._share_h(m, shared, mems, writes, reads)
        for name, users in writes.items():
            for b, port in enumerate(mems[name].w):
                if len(users) == 1:
                    wiring.connect(m, flipped(users[0][b]), port)
                else:
                    _arbitrate(m, port, [user[b] for user in users], ("addr", "data", "en"))
        for name, users in reads.items():
            port = mems[name].r[0]
            if name == "x":
                # X's port: the output pass's while it owns it, else the arbiter's choice
                shared = SimpleNamespace(addr=Signal.like(port.addr, name="x_shared_addr"),
                                         en=Signal(name="x_shared_en"))
                _arbitrate(m, shared, users, ("addr", "en"))
                with m.If(self.out_owns):
                    m.d.comb += [port.addr.eq(self.out_x.addr), port.en.eq(self.out_x.en)]
                with m.Else():
                    m.d.comb += [port.addr.eq(shared.addr), port.en.eq(shared.en)]
                users = [self.out_x, *users]
            elif len(users) == 1:
                wiring.connect(m, flipped(users[0]), port)
                continue
            else:
                _arbitrate(m, port, users, ("addr", "en"))
            m.d.comb += [user.data.eq(port.data) for user in users if hasattr(user, "data")]
        return m

    def _share_h(self, m, shared, mems, writes, reads):
        """``shared_h``: H word ``a`` lives in the memory ``shared[a mod R]`` at ``a // R``
        (``R = len(shared)``, a power of two: the memory is the address's low bits). The
        write-back's H writes join each memory's write users, the feeder's H reads its read
        users; the read data is picked by the low bits of the last H read's address (a
        register: the data follows one cycle after ``en``, and holds while ``en`` is low, as
        nothing else reads these memories during the FFN)."""
        lo = (len(shared) - 1).bit_length()
        del writes["h"], reads["h"]
        for r, name in enumerate(shared):
            writes[name].append([SimpleNamespace(addr=w.addr[lo:], data=w.data,
                                                 en=w.en & (w.addr[:lo] == r))
                                 for w in self.wb_h])
            reads[name].append(SimpleNamespace(addr=self.feed_h.addr[lo:], en=self.feed_h.en))
        sel = Signal(range(len(shared)), name="h_sel")
        with m.If(self.feed_h.en):
            m.d.sync += sel.eq(self.feed_h.addr[:lo])
        for b in range(len(self.feed_h.data)):
            words = [mems[name].r[0].data[b] for name in shared]
            m.d.comb += self.feed_h.data[b].eq(pick(words, sel, unsigned(len(words[0]))))
