"""The parameter image and the activation packets of the encoder core (bus words).

Everything the core receives travels as AXI4-Stream words of ``config.bus_width`` bits. This
module defines, for a :class:`~bertcore.config.CoreConfig`, the exact word layout (see
``docs/interface.md``):

* :func:`pack_parameter_image` turns an :class:`~bertcore.quant.model.IntBert` into the list of
  bus words of the parameter image, in the order the core's schedule consumes them;
* :func:`pack_activations` / :func:`unpack_activations` convert int8 hidden states
  ``[L, hidden]`` to and from the activation packets;
* :func:`pack_segments` / :func:`unpack_segments` do the same for a packed run (several
  sequences in one packet, announced by a segment table: :func:`pack_segment_table`), and
  :func:`check_activation_packet` applies the core's protocol checks to a packet.

The image is a sequence of *vectors*. A vector of ``n`` bits (``lanes`` values of ``w`` bits,
value ``j`` at bits ``j*w .. j*w+w-1``, two's complement, little-endian) occupies
``ceil(n / bus_width)`` whole beats, beat 0 holding the lowest bits; unused high bits are zero.
Records are vectors in a fixed order. The records are described once, here
(:data:`HEADER_FIELDS`, :data:`SCALAR_FIELDS`, :data:`PANEL_FIELDS`, :data:`PANEL_ROW`,
:data:`LN_FIELDS`), and :func:`image_schedule` orders them; the packer below, the core's loader
(:mod:`bertcore.core.loader` generates its states from the records) and the Python
interpreter (:mod:`bertcore.core.interp` reads by them) all follow this description.
"""

import operator
import zlib
from dataclasses import dataclass, replace

import torch

from bertcore.quant import kernels as K

__all__ = [
    "FORMAT_VERSION", "MAGIC", "Field", "HEADER_FIELDS", "HEADER_BITS", "SCALAR_FIELDS",
    "SCALAR_WORDS", "SCALAR_BITS", "PANEL_FIELDS", "PANEL_ROW", "LN_FIELDS", "LN_BIAS_BITS",
    "PANEL_GROUPS", "LN_AFTER", "ImageError", "Vector", "image_schedule", "image_beats",
    "header_words", "vector_beats", "scalar_slices", "max_vector_bits",
    "config_fingerprint",
    "check_core_config", "check_model",
    "pack_parameter_image", "image_to_hex", "pack_activations",
    "unpack_activations", "activation_beats", "scalar_fields",
    "SEGMENT_LANE_BITS", "segment_table_beats", "pack_segment_table", "parse_segment_table",
    "pack_segments", "unpack_segments", "check_activation_packet",
    "FAIL_HEADER", "FAIL_IMAGE_LENGTH", "FAIL_TOO_LONG", "FAIL_EMPTY", "FAIL_NO_IMAGE",
    "FAIL_CAUSES", "FAIL_CAUSE_BITS", "RunFailed",
]

#: ``"BERT"`` as a little-endian 32-bit word.
MAGIC = int.from_bytes(b"BERT", "little")
#: Version of the image format (bumped on any layout change).
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Field:
    """One field of a record: a value of ``width`` bits, two's complement unless not ``signed``.

    In a record of per-channel vectors (:data:`PANEL_FIELDS`, :data:`LN_FIELDS`) each field is
    one vector of ``array_cols`` such values; in the header and the scalar record each field
    is one value.
    """
    name: str
    width: int
    signed: bool = True


# -- The image layout: one description for the packer, the core's loader and the interpreter ------

#: The header (one vector): magic, version, config fingerprint, total beats.
HEADER_FIELDS = (Field("magic", 32, False), Field("version", 32, False),
                 Field("fingerprint", 32, False), Field("beats", 32, False))
HEADER_BITS = sum(f.width for f in HEADER_FIELDS)
#: A layer's scalar record (one vector of 32-bit words; 64-bit values take two words, low first).
SCALAR_FIELDS = (
    ("sm_x0", 32), ("sm_b", 32), ("sm_c", 64), ("sm_m", 32), ("sm_e", 32),
    ("ctx_m", 32), ("ctx_e", 32), ("gelu_b", 32), ("gelu_c", 64), ("gelu_q1", 32),
)
SCALAR_WORDS = sum(width for _, width in SCALAR_FIELDS) // 32
SCALAR_BITS = 32 * SCALAR_WORDS
#: A weight panel's header, one vector of ``array_cols`` lanes each (lane ``j``: output channel
#: ``p*n + j``): bias, requantization ``(m, e)`` of the product and ``(m2, e2)`` of the second
#: term (the residual for O/FFN2, the GELU output for FFN1; ``(0, 1)`` otherwise).
PANEL_FIELDS = (Field("bias", 32), Field("m", 16), Field("e", 8, False), Field("m2", 16),
                Field("e2", 8, False))
#: The ``K`` weight rows that follow a panel's header (row ``k`` holds ``W[p*n + j, k]`` in
#: lane ``j``).
PANEL_ROW = Field("w", 8)
#: A LayerNorm record, per chunk of ``array_cols`` channels: output requantization and bias.
LN_FIELDS = (Field("ln_m", 16), Field("ln_e", 8, False), Field("ln_bias", 64))
#: Width (in the core) of the LayerNorm output bias; the image carries it in 64 bits.
LN_BIAS_BITS = 48
#: Panel groups of a layer, in stream order, with the activation they multiply.
PANEL_GROUPS = ("q", "k", "v", "o", "ffn1", "ffn2")
#: The LayerNorm record that follows a panel group.
LN_AFTER = {"o": "ln1", "ffn2": "ln2"}


def scalar_slices():
    """``{name: (bit offset, width)}`` of the fields of the scalar record
    (:data:`SCALAR_FIELDS`)."""
    slices, offset = {}, 0
    for name, width in SCALAR_FIELDS:
        slices[name] = (offset, width)
        offset += width
    return slices


def max_vector_bits(config):
    """Bits of the largest vector of the image of ``config`` (the loader's assembly register)."""
    lane = max(f.width for f in (*PANEL_FIELDS, PANEL_ROW, *LN_FIELDS))
    return max(HEADER_BITS, SCALAR_BITS, config.array_cols * lane)


class ImageError(ValueError):
    """A model or image that does not fit the core's parameter image format."""


# -- The outcome of a run ---------------------------------------------------------------------------

#: Cause codes of a failed run: the ``tdata`` of its one-beat failure packet on ``m_axis_act``
#: (``tuser`` = 1, ``tlast`` = 1; docs/interface.md, "Run outcome").
FAIL_HEADER, FAIL_IMAGE_LENGTH, FAIL_TOO_LONG, FAIL_EMPTY, FAIL_NO_IMAGE = range(1, 6)
#: What each cause code means.
FAIL_CAUSES = {
    FAIL_HEADER: "bad image header (magic, format version, configuration or beat count)",
    FAIL_IMAGE_LENGTH: "bad image length (tlast not on the image's last beat)",
    FAIL_TOO_LONG: "bad activation packet (more than max_seq rows, or a packed packet's "
                   "segment table malformed or its rows differing from it)",
    FAIL_EMPTY: "activation packet shorter than one row",
    FAIL_NO_IMAGE: "activation packet with no parameter image (none sent, none stored)",
}
#: Bits of a cause code.
FAIL_CAUSE_BITS = 3


class RunFailed(ImageError):
    """The core ended a run with a failure packet whose cause code is ``code``
    (:data:`FAIL_CAUSES`)."""

    def __init__(self, code):
        self.code = code
        cause = FAIL_CAUSES.get(code, "unknown cause")
        super().__init__(f"the core rejected the run: {cause} (cause code {code})")


@dataclass(frozen=True)
class Vector:
    """One vector of the image: ``lanes`` values of ``width`` bits.

    ``kind`` names it (``"header"``, ``"scalars"``, ``"bias"``, ``"m"``, ``"e"``, ``"m2"``,
    ``"e2"``, ``"w"``, ``"ln_m"``, ``"ln_e"``, ``"ln_bias"``); ``layer``, ``group``, ``index``
    (panel or chunk) and ``row`` (weight row ``k``) place it.
    """
    kind: str
    lanes: int
    width: int
    layer: int = -1
    group: str = ""
    index: int = 0
    row: int = 0

    @property
    def bits(self):
        return self.lanes * self.width


def vector_beats(bits, bus_width):
    """Beats of a vector of ``bits`` bits on a ``bus_width``-bit bus."""
    return -(-bits // bus_width)


def _check_config(config):
    from bertcore.config import CoreConfig
    if not isinstance(config, CoreConfig):
        raise ImageError(f"config must be a CoreConfig (bertcore.config.preset(name)), not "
                         f"{type(config).__name__}")


def check_core_config(config):
    """Raise :class:`ImageError` unless the encoder core supports ``config``.

    The core needs a square array (``array_rows == array_cols``), channel counts (hidden,
    head dimension, FFN size) that are multiples of ``array_cols`` and softmax / LayerNorm unit
    counts that divide it.
    """
    _check_config(config)
    n = config.array_cols
    if config.array_rows != n:
        raise ImageError(f"the encoder core needs a square array, not "
                         f"{config.array_rows}x{config.array_cols}")
    for name, value in (("hidden", config.hidden), ("head_dim", config.head_dim),
                        ("ffn", config.ffn)):
        if value % n:
            raise ImageError(f"{name} ({value}) must be a multiple of array_cols ({n})")
    for name in ("softmax_units", "layernorm_units"):
        if n % getattr(config, name):
            raise ImageError(f"{name} ({getattr(config, name)}) must divide array_cols ({n})")
    if config.bus_width // 8 > config.hidden:
        raise ImageError(f"bus_width ({config.bus_width}) must not exceed hidden*8 "
                         f"({config.hidden * 8}): a sequence length is read from its packet")


def config_fingerprint(config):
    """32-bit CRC of the fields that define the image layout and the arithmetic its values are
    made for (not ``max_seq``/``resident``/unit counts): a core refuses an image packed for a
    core with other probability or GELU output widths (``prob_bits``, ``gelu_bits``), whose
    ``ctx_e`` or GELU/FFN2 requantization differ."""
    text = (f"bertcore-image v{FORMAT_VERSION} hidden={config.hidden} heads={config.heads} "
            f"ffn={config.ffn} layers={config.layers} array={config.array_rows}x"
            f"{config.array_cols} bus={config.bus_width}")
    if config.prob_bits != 8:        # (images of 8-bit cores keep their earlier fingerprint)
        text += f" prob_bits={config.prob_bits}"
    if config.gelu_bits != 8:        # (likewise for int8 GELU outputs)
        text += f" gelu_bits={config.gelu_bits}"
    return zlib.crc32(text.encode())


def check_model(int_model, config):
    """Raise :class:`ImageError` unless a core of ``config`` runs ``int_model``: the same
    encoder shape and the same arithmetic (the width ``prob_bits`` of the attention
    probabilities, at a fixed scale; the width ``gelu_bits`` of the GELU outputs, without an
    offset)."""
    from bertcore.quant.model import IntBert
    if not isinstance(int_model, IntBert):
        raise ImageError(f"the model must be an IntBert (bertcore.quant.artifact.load_artifact), "
                         f"not {type(int_model).__name__}")
    _check_config(config)
    s = int_model.shape
    for name, want in (("hidden", s.hidden), ("heads", s.heads), ("ffn", s.ffn),
                       ("layers", s.layers)):
        if getattr(config, name) != want:
            raise ImageError(f"the model has {name}={want}, the core {getattr(config, name)}")
    opts = int_model.opts
    if opts.prob_scale != "fixed":
        raise ImageError(f"the model was quantized with prob_scale={opts.prob_scale!r}; the "
                         f"core computes probabilities at a fixed scale (prob_scale='fixed')")
    if opts.prob_bits != config.prob_bits:
        raise ImageError(f"the model was quantized with prob_bits={opts.prob_bits}, the core "
                         f"computes {config.prob_bits}-bit attention probabilities (quantize "
                         f"with --prob-bits {config.prob_bits}, or use a core with "
                         f"prob_bits={opts.prob_bits})")
    if opts.gelu_bits != config.gelu_bits:
        raise ImageError(f"the model was quantized with gelu_bits={opts.gelu_bits}, the core "
                         f"computes {config.gelu_bits}-bit GELU outputs (quantize with "
                         f"--gelu-bits {config.gelu_bits}, or use a core with "
                         f"gelu_bits={opts.gelu_bits})")
    if opts.gelu_zero_point:
        raise ImageError("the model was quantized with gelu_zero_point=True; the core computes "
                         "GELU outputs without an offset (use --backend int)")


def panel_k(config, group):
    """Reduction length (weight rows) of a panel of ``group``."""
    return config.ffn if group == "ffn2" else config.hidden


def panel_count(config, group):
    """Output panels of ``group`` (``array_cols`` channels each)."""
    return (config.ffn if group == "ffn1" else config.hidden) // config.array_cols


def image_schedule(config):
    """The vectors of the image, in stream order (a list of :class:`Vector`).

    ::

        header (HEADER_FIELDS, 128 bits)
        per layer:
            scalars (SCALAR_FIELDS: SCALAR_WORDS x 32 bits)
            for group in q, k, v, o, [ln1], ffn1, ffn2, [ln2]:
                per panel p (array_cols output channels p*n .. p*n+n-1):
                    PANEL_FIELDS: bias (n x 32), m (n x 16), e (n x 8), m2 (n x 16), e2 (n x 8),
                    K weight rows (PANEL_ROW, n x 8 each; row k holds W[p*n + j, k] in lane j)
                ln1 / ln2, per chunk c of n channels: LN_FIELDS: ln_m (n x 16), ln_e (n x 8),
                    ln_bias (n x 64)
    """
    vectors = []
    for vec, count in _schedule_runs(config):
        vectors += [vec] if count == 1 else [replace(vec, row=k) for k in range(count)]
    return vectors


def _schedule_runs(config):
    """:func:`image_schedule` with each panel's weight rows as one entry: a list of
    ``(vector, count)``, ``count`` vectors like ``vector`` in a row (rows ``0..count-1`` for
    the weight rows, 1 otherwise). MiniLM's image has 670k vectors, almost all of them weight
    rows: the beat count and the packer walk this list, about 8k entries, instead."""
    check_core_config(config)
    n = config.array_cols
    runs = [(Vector("header", len(HEADER_FIELDS), 32), 1)]
    for layer in range(config.layers):
        runs.append((Vector("scalars", SCALAR_WORDS, 32, layer), 1))
        for group in PANEL_GROUPS:
            for p in range(panel_count(config, group)):
                for f in PANEL_FIELDS:
                    runs.append((Vector(f.name, n, f.width, layer, group, p), 1))
                runs.append((Vector(PANEL_ROW.name, n, PANEL_ROW.width, layer, group, p),
                             panel_k(config, group)))
            if group in LN_AFTER:
                for c in range(config.hidden // n):
                    for f in LN_FIELDS:
                        runs.append((Vector(f.name, n, f.width, layer, LN_AFTER[group], c), 1))
    return runs


def image_beats(config):
    """Total beats of the parameter image of ``config`` (header included)."""
    return sum(count * vector_beats(v.bits, config.bus_width)
               for v, count in _schedule_runs(config))


def header_words(config):
    """The 32-bit words of the image header of ``config`` (:data:`HEADER_FIELDS`): magic,
    version, fingerprint, total beats."""
    values = {"magic": MAGIC, "version": FORMAT_VERSION,
              "fingerprint": config_fingerprint(config), "beats": image_beats(config)}
    return [values[f.name] for f in HEADER_FIELDS]


def _fits(name, value, bits, signed=True):
    lo, hi = K.int_range(bits, signed)
    if not lo <= value <= hi:
        raise ImageError(f"{name} = {value} does not fit {'signed' if signed else 'unsigned'} "
                         f"{bits} bits")
    return value


def _vector_words(values, width, bus_width):
    """Pack ``values`` (ints, ``width`` bits each, two's complement) into bus words."""
    raw = 0
    mask = (1 << width) - 1
    for j, value in enumerate(values):
        raw |= (int(value) & mask) << (j * width)
    beats = vector_beats(len(values) * width, bus_width)
    bus_mask = (1 << bus_width) - 1
    return [(raw >> (b * bus_width)) & bus_mask for b in range(beats)]


def _row_words(w, bus_width):
    """The weight rows of a panel as bus words: ``w`` is ``[n, K]`` (lane ``j``, row ``k``);
    row ``k`` is one vector of ``n`` 8-bit lanes (:data:`PANEL_ROW`), lane ``j`` in bits
    ``8j .. 8j+7``, padded to whole beats: :func:`_vector_words` of each row, done on bytes
    (values keep their low 8 bits, as there)."""
    assert PANEL_ROW.width == 8
    rows = (torch.as_tensor(w, dtype=torch.int64) & 0xFF).to(torch.uint8).T
    lanes = rows.shape[1]
    beat_bytes = bus_width // 8
    padded = torch.zeros((rows.shape[0], vector_beats(8 * lanes, bus_width) * beat_bytes),
                         dtype=torch.uint8)
    padded[:, :lanes] = rows
    data = padded.numpy().tobytes()
    return [int.from_bytes(data[i:i + beat_bytes], "little")
            for i in range(0, len(data), beat_bytes)]


def scalar_fields(int_model, layer):
    """The scalar record of ``layer`` as a dict (checked against the core's port widths)."""
    from bertcore.rtl.gelu import IntGELU
    from bertcore.rtl.softmax import IntSoftmax
    lc = int_model.consts["layers"][layer]
    sm = lc["softmax"]
    try:
        IntSoftmax.check_constants(sm)
    except ValueError as exc:
        raise ImageError(f"layer {layer}: {exc}") from None
    gelu = IntGELU(lanes=1, in_width=K.GELU_IN_BITS)
    gelu._MustUse__silence = True
    g = lc["gelu"]
    values = {
        "sm_x0": int(sm["x0"]), "sm_b": int(sm["b"]), "sm_c": int(sm["c"]),
        "sm_m": int(sm["m"]), "sm_e": int(sm["e"]),
        "ctx_m": _fits(f"layer {layer} ctx_m", int(lc["ctx_m"]), K.REQ_M_BITS),
        "ctx_e": int(lc["ctx_e"]),
        "gelu_b": _fits(f"layer {layer} gelu b", int(g["b"]), gelu.b_width),
        "gelu_c": _fits(f"layer {layer} gelu c", int(g["c"]), gelu.c_width),
        "gelu_q1": _fits(f"layer {layer} gelu q1", int(g["q1"]), gelu.q1_width),
    }
    if not 1 <= values["ctx_e"] <= K.REQ_MAX_SHIFT:
        raise ImageError(f"layer {layer} ctx_e = {values['ctx_e']} is outside "
                         f"1..{K.REQ_MAX_SHIFT}")
    return values


def _requant_vectors(name, m, e):
    m = [int(v) for v in m]
    e = [int(v) for v in e]
    for v in m:
        _fits(f"{name} m", v, K.REQ_M_BITS)
    for v in e:
        if not 1 <= v <= K.REQ_MAX_SHIFT:
            raise ImageError(f"{name} e = {v} is outside 1..{K.REQ_MAX_SHIFT}")
    return m, e


_PANEL_KINDS = {f.name for f in PANEL_FIELDS} | {PANEL_ROW.name}


def pack_parameter_image(int_model, config):
    """The parameter image of ``int_model`` for a core of ``config``: a list of bus words.

    Raises
    ------
    ImageError
        If the model's shape or arithmetic does not match ``config`` (:func:`check_model`) or
        a value does not fit its field.
    """
    check_model(int_model, config)
    t = int_model.t
    bus = config.bus_width
    n = config.array_cols
    total = image_beats(config)
    words = []
    cache = {}
    for vec, count in _schedule_runs(config):
        L = f"layer.{vec.layer}."
        if vec.kind == "header":
            values = header_words(config)
        elif vec.kind == "scalars":
            f = scalar_fields(int_model, vec.layer)
            values = []
            for name, width in SCALAR_FIELDS:
                v = f[name] & ((1 << width) - 1)
                values += [v & 0xFFFFFFFF] + ([v >> 32] if width == 64 else [])
        elif vec.kind in _PANEL_KINDS:
            g = vec.group
            ch = slice(vec.index * n, (vec.index + 1) * n)
            key = (vec.layer, g, vec.index)
            if key not in cache:
                m, e = _requant_vectors(f"{L}{g}", t[L + g + ".m"][ch], t[L + g + ".e"][ch])
                if g in ("o", "ffn2"):
                    r = "res1" if g == "o" else "res2"
                    m2, e2 = _requant_vectors(L + r, t[L + r + ".m"][ch], t[L + r + ".e"][ch])
                elif g == "ffn1":
                    m2, e2 = _requant_vectors(L + "gelu", t[L + "gelu.m"][ch],
                                              t[L + "gelu.e"][ch])
                else:
                    m2, e2 = [0] * n, [1] * n
                bias = [int(v) for v in t[L + g + ".b"][ch]]
                rec = dict(zip((f.name for f in PANEL_FIELDS), (bias, m, e, m2, e2), strict=True))
                rec[PANEL_ROW.name] = t[L + g + ".w"][ch].to(torch.int64)
                cache = {key: rec}
            rec = cache[key]
            if vec.kind == PANEL_ROW.name:          # all K rows of the panel at once
                words += _row_words(rec["w"][:, :count], bus)
                continue
            values = rec[vec.kind]
        else:                               # a LayerNorm record (LN_FIELDS)
            ln = vec.group
            ch = slice(vec.index * n, (vec.index + 1) * n)
            key = (vec.layer, ln, vec.index)
            if key not in cache:
                m, e = _requant_vectors(L + ln, t[L + ln + ".m"][ch], t[L + ln + ".e"][ch])
                bias = [_fits(f"{L}{ln} bias", int(v), LN_BIAS_BITS)
                        for v in t[L + ln + ".bias"][ch]]
                cache = {key: dict(zip((f.name for f in LN_FIELDS), (m, e, bias), strict=True))}
            values = cache[key][vec.kind]
        words += _vector_words(values, vec.width, bus)
    assert len(words) == total
    return words


def image_to_hex(words, config):
    """The image as ``$readmemh`` text: one bus word per line, plus a ``last`` flag bit on top.

    Line ``i`` is ``{last, word}`` in hexadecimal (``bus_width + 1`` bits).
    """
    digits = -(-(config.bus_width + 1) // 4)
    lines = []
    for i, word in enumerate(words):
        last = int(i == len(words) - 1)
        lines.append(f"{(last << config.bus_width) | word:0{digits}x}")
    return "\n".join(lines) + "\n"


# -- Activations ----------------------------------------------------------------------------------

def activation_beats(length, config):
    """Beats of an activation packet of ``length`` rows."""
    return -(-length * config.hidden * 8 // config.bus_width)


def pack_activations(x, config):
    """Int8 hidden states ``x`` ``[L, hidden]`` → bus words (row-major bytes, little-endian).

    The last beat is padded with zero bytes; it carries ``tlast``. ``L`` must lie in
    ``1..config.max_seq``.
    """
    _check_config(config)
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ImageError(f"activations must be an int8 tensor [L, {config.hidden}]: "
                         f"{' '.join(str(exc).split())}") from None
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        # a float would be cut to an integer without a word
        raise ImageError(f"activations must be integers (int8 values), not {x.dtype}")
    x = x.to(torch.int64)
    if x.ndim != 2 or x.shape[1] != config.hidden:
        raise ImageError(f"activations must have shape [L, {config.hidden}], not "
                         f"{list(x.shape)}")
    if not 1 <= x.shape[0] <= config.max_seq:
        raise ImageError(f"sequence length must lie in 1..{config.max_seq}, not {x.shape[0]}")
    if bool((x < -128).any()) or bool((x > 127).any()):
        raise ImageError("activations must be int8")
    data = bytes((x.reshape(-1) & 0xFF).tolist())
    nb = config.bus_width // 8
    data += bytes(-len(data) % nb)
    return [int.from_bytes(data[i:i + nb], "little") for i in range(0, len(data), nb)]


def unpack_activations(words, length, config):
    """Bus words of an activation packet → int64 tensor ``[length, hidden]``."""
    _check_config(config)
    try:
        rows = operator.index(length)         # any integer type (numpy's too), not a float
    except TypeError:
        rows = 0
    if isinstance(length, bool) or rows < 1:
        raise ImageError(f"length must be a positive number of rows, not {length!r}")
    length = rows
    if any(int(w) < 0 or int(w) >> config.bus_width for w in words):
        raise ImageError(f"bus words must lie in 0 .. 2**{config.bus_width} - 1")
    nb = config.bus_width // 8
    data = b"".join(int(w).to_bytes(nb, "little") for w in words)
    need = length * config.hidden
    if len(data) < need:
        raise ImageError(f"{len(words)} beats hold {len(data)} bytes, fewer than the {need} of "
                         f"{length} rows")
    x = torch.tensor(list(data[:need]), dtype=torch.int64)
    x = torch.where(x >= 128, x - 256, x)
    return x.reshape(length, config.hidden)


# -- Packed runs: the segment table ---------------------------------------------------------------

#: Width of a segment table lane: the segment count, then one length (rows) per segment.
SEGMENT_LANE_BITS = 16


def segment_table_beats(count, config):
    """Beats of the segment table of ``count`` segments (``tuser`` set on each)."""
    return vector_beats((1 + count) * SEGMENT_LANE_BITS, config.bus_width)


def pack_segment_table(lengths, config):
    """The segment table of a packed run: bus words, sent with ``s_axis_act_tuser = 1``.

    A vector of 16-bit lanes (the image's vector rule: lane ``j`` at bits ``16j ..``, whole
    beats, unused lanes zero): lane 0 the segment count ``S``, lanes ``1..S`` the lengths in
    rows, in packet order. Raises :class:`ImageError` for a table the core would reject.
    """
    lengths = [int(n) for n in lengths]
    _check_segments(lengths, config)
    return _vector_words([len(lengths), *lengths], SEGMENT_LANE_BITS, config.bus_width)


def _check_segments(lengths, config):
    limit = min(config.max_segments, config.max_seq)
    if not 1 <= len(lengths) <= limit:
        raise ImageError(f"a packed run carries 1..{limit} segments, not {len(lengths)}")
    if any(n < 1 for n in lengths):
        raise ImageError(f"segment lengths must be positive, not {lengths}")
    if sum(lengths) > config.max_seq:
        raise ImageError(f"segments of {sum(lengths)} rows exceed max_seq ({config.max_seq})")


def parse_segment_table(words, config):
    """Segment lengths from the table beats ``words`` (the checks of the core, in its order).

    Raises :class:`ImageError` naming the protocol error: a count outside
    ``1..min(max_segments, max_seq)``, a table of the wrong number of beats, a zero length,
    non-zero unused lanes, lengths adding up to more than ``max_seq`` rows.
    """
    words = [int(w) for w in words]
    if not words:
        raise ImageError("empty segment table")
    lane_mask = (1 << SEGMENT_LANE_BITS) - 1
    raw = 0
    for b, w in enumerate(words):
        raw |= w << (b * config.bus_width)
    count = raw & lane_mask
    limit = min(config.max_segments, config.max_seq)
    if not 1 <= count <= limit:
        raise ImageError(f"segment table: count {count} is outside 1..{limit}")
    if len(words) != segment_table_beats(count, config):
        raise ImageError(f"segment table of {count} segments takes "
                         f"{segment_table_beats(count, config)} beats, not {len(words)}")
    lengths = [(raw >> (SEGMENT_LANE_BITS * (1 + s))) & lane_mask for s in range(count)]
    if raw >> (SEGMENT_LANE_BITS * (1 + count)):
        raise ImageError("segment table: unused lanes are not zero")
    _check_segments(lengths, config)
    return lengths


def pack_segments(xs, config):
    """Sequences ``xs`` (int8 ``[L_s, hidden]`` each) as one packed run: ``(table, data)``.

    ``table`` are the segment table's words (``tuser = 1``), ``data`` the rows of all
    sequences one after the other, as :func:`pack_activations` packs one sequence (the last beat
    padded, ``tlast`` on it).
    """
    xs = [torch.as_tensor(x).to(torch.int64) for x in xs]
    for x in xs:
        if x.ndim != 2 or x.shape[1] != config.hidden:
            raise ImageError(f"activations must have shape [L, {config.hidden}], not "
                             f"{list(x.shape)}")
    lengths = [x.shape[0] for x in xs]
    table = pack_segment_table(lengths, config)
    return table, pack_activations(torch.cat(xs), config)


def unpack_segments(words, lengths, config):
    """Output words of a packed run → one tensor per segment (the rows in packet order)."""
    x = unpack_activations(words, sum(lengths), config)
    return list(torch.split(x, [int(n) for n in lengths]))


def check_activation_packet(table, data, config):
    """The segment lengths of an activation packet, or :class:`ImageError` as the core flags it.

    ``table`` are the beats with ``tuser = 1`` (empty: a single sequence), ``data`` the beats
    after them. The rows (complete rows of ``data``) must lie in ``1..max_seq`` and, with a
    table, add up to its lengths; the data must fill exactly the beats of those rows.
    """
    nb = config.bus_width // 8
    rows = len(data) * nb // config.hidden
    if table:
        lengths = parse_segment_table(table, config)
        if sum(lengths) != rows or len(data) != activation_beats(rows, config):
            raise ImageError(f"segment lengths add up to {sum(lengths)} rows, the packet "
                             f"holds {len(data)} beats")
        return lengths
    if not 1 <= rows <= config.max_seq:
        raise ImageError(f"sequence length must lie in 1..{config.max_seq}, not {rows}")
    return [rows]
