"""A Python interpreter of the parameter image: the core's schedule in software.

:func:`run_image` reads the bus words of a parameter image strictly in stream order (one vector
after the other, as the core's loader does), and computes the encoder layers with
:mod:`bertcore.quant.kernels` panel by panel, in the order the core's sequencer does. Its result
equals :meth:`bertcore.quant.model.IntBert.encode_int` bit for bit; this validates the image
format and the schedule independently of the RTL.
"""

import torch

from bertcore.quant import kernels as K
from bertcore.quant.model import segment_mask
from .image import (FORMAT_VERSION, HEADER_FIELDS, LN_FIELDS, MAGIC, PANEL_FIELDS, PANEL_ROW,
                    SCALAR_WORDS, ImageError, check_core_config, config_fingerprint,
                    image_beats, panel_count, panel_k, scalar_slices, vector_beats)

__all__ = ["ImageReader", "run_image"]


class ImageReader:
    """Reads vectors and records (:mod:`bertcore.core.image`'s field lists) from a list of bus
    words, in order."""

    def __init__(self, words, config):
        self.words = list(words)
        self.bus = config.bus_width
        self.pos = 0

    def vector(self, lanes, width, signed=True):
        beats = vector_beats(lanes * width, self.bus)
        if self.pos + beats > len(self.words):
            raise ImageError(f"the image ends at beat {len(self.words)} inside a vector")
        raw = 0
        for b in range(beats):
            raw |= int(self.words[self.pos + b]) << (b * self.bus)
        self.pos += beats
        values = []
        for j in range(lanes):
            v = (raw >> (j * width)) & ((1 << width) - 1)
            if signed and v >> (width - 1):
                v -= 1 << width
            values.append(v)
        return values

    def record(self, fields, lanes):
        """The vectors of ``fields`` (:class:`~bertcore.core.image.Field`), ``lanes`` values
        each, as ``{name: list}``."""
        return {f.name: self.vector(lanes, f.width, f.signed) for f in fields}

    def header(self):
        """The header vector as ``{name: value}`` (:data:`~bertcore.core.image.HEADER_FIELDS`)."""
        widths = {f.width for f in HEADER_FIELDS}
        assert len(widths) == 1 and not any(f.signed for f in HEADER_FIELDS)
        values = self.vector(len(HEADER_FIELDS), widths.pop(), signed=False)
        return {f.name: v for f, v in zip(HEADER_FIELDS, values)}

    def scalars(self):
        """A scalar record as ``{name: value}`` (signed;
        :func:`~bertcore.core.image.scalar_slices`)."""
        raw = self.vector(1, 32 * SCALAR_WORDS, signed=False)[0]
        values = {}
        for name, (offset, width) in scalar_slices().items():
            v = (raw >> offset) & ((1 << width) - 1)
            values[name] = v - (1 << width) if v >> (width - 1) else v
        return values


def _t(values):
    return torch.tensor(values, dtype=torch.int64)


def run_image(words, x, config, segments=None):
    """Run the encoder described by the image ``words`` on int8 ``x`` ``[L, hidden]``.

    ``segments`` (optional): the lengths of the sequences of a packed run, adding up to ``L``;
    each query attends only to the keys of its own segment, as in the core (the score and
    ``P·V`` tiles it skips hold only masked keys, whose probabilities are 0).

    Raises
    ------
    ImageError
        If the header does not match ``config`` or the image has the wrong length.
    """
    check_core_config(config)
    r = ImageReader(words, config)
    h = r.header()
    magic, version, fingerprint, total = h["magic"], h["version"], h["fingerprint"], h["beats"]
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ImageError(f"bad image header (magic {magic:#x}, version {version})")
    if fingerprint != config_fingerprint(config):
        raise ImageError("the image was packed for another core configuration")
    if total != image_beats(config) or total != len(words):
        raise ImageError(f"the image has {len(words)} beats, its header says {total}, "
                         f"the core expects {image_beats(config)}")
    n = config.array_cols
    hd = config.head_dim
    x = torch.as_tensor(x).to(torch.int64)
    seq = x.shape[0]
    mask = None if segments is None else segment_mask(segments, seq)
    for _ in range(config.layers):
        sc = r.scalars()
        smk = {"x0": sc["sm_x0"], "b": sc["sm_b"], "c": sc["sm_c"], "m": sc["sm_m"],
               "e": sc["sm_e"], "exp_bits": K.SOFTMAX_EXP_BITS}

        def panels(group, a, residual=None):
            """All panels of ``group`` on the activation ``a``; returns the outputs."""
            outs = []
            for _ in range(panel_count(config, group)):
                rec = {k: _t(v) for k, v in r.record(PANEL_FIELDS, n).items()}
                m, e, m2, e2 = rec["m"], rec["e"], rec["m2"], rec["e2"]
                wp = _t([r.vector(n, PANEL_ROW.width, PANEL_ROW.signed)
                         for _ in range(panel_k(config, group))])                   # [K, n]
                acc = a @ wp + rec["bias"]
                if group in ("q", "k", "v"):
                    outs.append(K.requantize(acc, m, e, 8))
                elif group == "ffn1":
                    g_in = K.requantize(acc, m, e, K.GELU_IN_BITS)
                    g = K.int_gelu_int(g_in, sc["gelu_b"], sc["gelu_c"], sc["gelu_q1"])
                    outs.append(K.requantize(g, m2, e2, config.gelu_bits))
                else:
                    outs.append(K.saturate(K.requantize(acc, m, e) + K.requantize(
                        residual[:, len(outs) * n:(len(outs) + 1) * n], m2, e2),
                        K.RESIDUAL_BITS))
            return torch.cat(outs, dim=1)

        def layernorm(res):
            chunks = [r.record(LN_FIELDS, n) for _ in range(config.hidden // n)]
            v = {f.name: _t(sum((c[f.name] for c in chunks), [])) for f in LN_FIELDS}
            return K.requantize(K.layernorm_int(res), v["ln_m"], v["ln_e"], 8, bias=v["ln_bias"])

        q = panels("q", x)
        k = panels("k", x)
        v = panels("v", x)
        ctx = torch.zeros_like(q)
        for h in range(config.heads):
            ch = slice(h * hd, (h + 1) * hd)
            scores = q[:, ch] @ k[:, ch].T
            p = K.int_softmax_int(scores, smk, output_bits=config.prob_bits,
                                  saturate_output=True, mask=mask)
            ctx[:, ch] = K.requantize(p @ v[:, ch], sc["ctx_m"], sc["ctx_e"], 8)
        r1 = panels("o", ctx, residual=x)
        a = layernorm(r1)
        hmid = panels("ffn1", a)
        r2 = panels("ffn2", hmid, residual=a)
        x = layernorm(r2)
    if r.pos != len(words):
        raise ImageError(f"the image has {len(words) - r.pos} beats beyond its last record")
    assert x.shape[0] == seq
    return x
