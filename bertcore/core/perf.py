"""Analytic cycle model of the encoder core's schedule (:mod:`bertcore.core.encoder`).

The core runs one job at a time (see the encoder's module docstring); this model adds up, per
layer, the cycles of each job with every stream free-flowing (no backpressure):

* a weight panel (``N`` output channels, ``T = ceil(L/N)`` row tiles of ``K`` beats): the array
  takes one tile per ``max(K, N)`` cycles, then drains (``SystolicArray.latency + N - 1``) through
  the residual fetch and the requantizer(s); the loader streams the next panel meanwhile, so a
  panel takes at least the loader's beats (header vectors plus ``K`` weight rows);
* attention per head and query block: scores (``T`` tiles of ``head_dim`` beats), the softmax
  pass (``N / softmax_units`` rows of ``L`` per unit), ``P·V`` (``head_dim/N`` tiles of ``L``
  beats);
* LayerNorm passes: ``ceil(L / layernorm_units)`` rows per unit at ``IntLayerNorm.row_period``
  plus its latency;
* after the last layer, the output pass: ``N + 2`` cycles per word of ``N`` output bytes.

``tests/test_core.py`` checks the model against cycle counts measured on the RTL.
"""

import math

from bertcore.quant.kernels import RESIDUAL_BITS
from bertcore.rtl.gelu import IntGELU
from bertcore.rtl.layernorm import IntLayerNorm
from bertcore.rtl.requant import Requantizer
from bertcore.rtl.softmax import IntSoftmax
from bertcore.rtl.systolic import SystolicArray

from .image import HEADER_BITS, PANEL_FIELDS, PANEL_ROW, check_core_config, vector_beats

__all__ = ["layer_cycles", "run_cycles", "breakdown", "utilization", "macs_per_layer",
           "array_beats"]

#: Sequencer cycles around a job (start, first operand read, hand-over).
_JOB_OVERHEAD = 3


def _array_latency(n):
    return SystolicArray.PE_LATENCY + (n - 1) + SystolicArray.DRAIN_LATENCY


def _gemm(tiles, k, n, post):
    """Cycles of one job: ``tiles`` tiles of ``k`` beats, then the drain through ``post``."""
    return (_JOB_OVERHEAD + tiles * max(k, n) + _array_latency(n) + (n - 1) + 1 + post)


def _panel_load(config, k):
    bus, n = config.bus_width, config.array_cols
    header = sum(vector_beats(n * f.width, bus) for f in PANEL_FIELDS)
    return header + k * vector_beats(n * PANEL_ROW.width, bus)


def breakdown(config, seq_len):
    """Cycles of one layer by job kind (a dict), for a sequence of ``seq_len`` rows."""
    check_core_config(config)
    n, hid, ffn, hd = config.array_cols, config.hidden, config.ffn, config.head_dim
    L = seq_len
    tiles = math.ceil(L / n)
    rq = Requantizer.LATENCY
    post_ffn1 = rq + IntGELU.latency_for(config.multipliers("gelu")) + rq

    def panels(count, k, post):
        return count * max(_gemm(tiles, k, n, post), _panel_load(config, k) + 1)

    ln = IntLayerNorm(hid, in_width=RESIDUAL_BITS)
    ln._MustUse__silence = True                     # only its timing properties are used
    ln_rows = math.ceil(L / config.layernorm_units)
    ln_pass = 2 + ln_rows * ln.row_period + ln.latency + hid + rq + 2
    smax_row = max(L, IntSoftmax.DIV_CYCLES)
    smax_rows = n // config.softmax_units
    softmax_pass = 3 + (smax_rows - 1) * smax_row + IntSoftmax.latency(L) + L
    attention = config.heads * tiles * (_gemm(tiles, hd, n, 0) + softmax_pass
                                        + _gemm(hd // n, L, n, rq))
    return {
        "qkv": panels(3 * hid // n, hid, rq),
        "attention": attention,
        "o": panels(hid // n, hid, rq),
        "ln": 2 * ln_pass,
        "ffn1": panels(ffn // n, hid, post_ffn1),
        "ffn2": panels(hid // n, ffn, rq),
    }


def layer_cycles(config, seq_len):
    """Modeled cycles of one encoder layer for ``seq_len`` rows."""
    return sum(breakdown(config, seq_len).values())


def run_cycles(config, seq_len):
    """Modeled cycles of a run: header, activation input, all layers, the output pass
    (``EncoderCore.cycles``)."""
    bb = config.bus_width // 8
    beats = math.ceil(seq_len * config.hidden / bb)
    header = vector_beats(HEADER_BITS, config.bus_width)
    output = seq_len * (config.hidden // config.array_cols) * (config.array_cols + 2) + 4
    return (header + 2 + beats * (bb + 1) + config.layers * layer_cycles(config, seq_len)
            + output)


def macs_per_layer(config, seq_len):
    """Multiply-accumulates of one layer (projections, FFN, scores and ``P·V``)."""
    L, hid, ffn = seq_len, config.hidden, config.ffn
    return L * (4 * hid * hid + 2 * hid * ffn) + 2 * L * L * hid


def utilization(config, seq_len):
    """PE utilization of one layer: MACs / (array PEs × modeled cycles)."""
    pes = config.array_rows * config.array_cols
    return macs_per_layer(config, seq_len) / (pes * layer_cycles(config, seq_len))


def array_beats(config, seq_len):
    """Operand beats the array takes in a run (exact; the core's ``array_beats`` output)."""
    check_core_config(config)
    n, hid, ffn, hd = config.array_cols, config.hidden, config.ffn, config.head_dim
    tiles = math.ceil(seq_len / n)
    panels = tiles * (4 * (hid // n) * hid + (ffn // n) * hid + (hid // n) * ffn)
    attention = config.heads * tiles * (tiles * hd + (hd // n) * seq_len)
    return config.layers * (panels + attention)
