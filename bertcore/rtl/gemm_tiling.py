"""Tiling of an ``M×K`` by ``K×N`` integer product onto a :class:`SystolicArray`.

The product ``C = A·B + bias`` (``bias`` per output column) is cut into output tiles of
``rows × cols``. The tiles are taken **row-major over the output**::

    for m0 in range(0, M, rows):        # a block of rows of A (reused by consecutive tiles)
        for n0 in range(0, N, cols):    # a block of columns of B and of the bias
            tile (m0, n0)

Each tile is streamed as ``K`` operand beats (beat ``k``: ``A[m0:m0+rows, k]`` on ``a``,
``B[k, n0:n0+cols]`` on ``b``, ``last`` on ``k = K-1``) and one bias beat
(``bias[n0:n0+cols]``), and comes back as ``rows`` output beats (rows ``m0 .. m0+rows-1`` of
``C[:, n0:n0+cols]``). Edge tiles are padded with zeros (A rows past ``M``, B columns and bias
past ``N``); :func:`gemm_assemble` drops the padded rows and columns.

The encoder's sequencer and the tests use these functions, so both follow the same order.
Payloads are Python values as :func:`bertcore.rtl.common.pack` takes them (``dict`` for the
struct payloads, ``list`` for the arrays).
"""

from dataclasses import dataclass

import numpy as np

from .common import check_int
from .systolic import SystolicArray

__all__ = ["GemmTile", "tile_origins", "gemm_tiles", "gemm_beats", "gemm_assemble",
           "gemm_reference", "gemm_cycles"]


def _as_int_array(name, value, ndim):
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, not {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, not shape {array.shape}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class GemmTile:
    """The beats of one output tile.

    Attributes
    ----------
    m0, n0 : int
        Position of the tile's first row and column in ``C``.
    a_beats : list of dict
        ``K`` payloads of :attr:`SystolicArray.a`: ``{"data": [rows ints], "last": 0 or 1}``.
    b_beats : list of dict
        ``K`` payloads of :attr:`SystolicArray.b`: ``{"data": [cols ints], "last": 0 or 1}``.
    bias_beat : list of int
        The payload of :attr:`SystolicArray.bias` (``cols`` ints).
    """
    m0: int
    n0: int
    a_beats: list
    b_beats: list
    bias_beat: list


def tile_origins(m, n, *, rows, cols):
    """Return the ``(m0, n0)`` of the output tiles of an ``m × n`` result, in stream order."""
    for name, value in (("m", m), ("n", n), ("rows", rows), ("cols", cols)):
        check_int(name, value)
    return [(m0, n0) for m0 in range(0, m, rows) for n0 in range(0, n, cols)]


def gemm_tiles(a, b, bias=None, *, rows, cols):
    """Cut ``C = a·b + bias`` into :class:`GemmTile` s for a ``rows × cols`` array.

    Parameters
    ----------
    a : integer array ``M × K``
    b : integer array ``K × N``
    bias : integer array ``N``, optional (zeros when omitted)
    rows, cols : int
        Size of the array.

    Raises
    ------
    TypeError, ValueError
        If an operand is not a 2-D (bias: 1-D) integer array, or the sizes do not agree.
    """
    a = _as_int_array("a", a, 2)
    b = _as_int_array("b", b, 2)
    m, k = a.shape
    k_b, n = b.shape
    if k != k_b:
        raise ValueError(f"a is {m}×{k} but b is {k_b}×{n}: the reductions differ")
    if k < 1:
        raise ValueError("the reduction length must be at least 1, not 0")
    bias = np.zeros(n, np.int64) if bias is None else _as_int_array("bias", bias, 1)
    if bias.shape != (n,):
        raise ValueError(f"bias must have {n} elements, not {bias.shape[0]}")
    a_pad = np.zeros((-(-m // rows) * rows, k), np.int64)
    a_pad[:m] = a
    b_pad = np.zeros((k, -(-n // cols) * cols), np.int64)
    b_pad[:, :n] = b
    bias_pad = np.zeros(b_pad.shape[1], np.int64)
    bias_pad[:n] = bias
    tiles = []
    for m0, n0 in tile_origins(m, n, rows=rows, cols=cols):
        a_tile = a_pad[m0:m0 + rows]
        b_tile = b_pad[:, n0:n0 + cols]
        tiles.append(GemmTile(
            m0=m0, n0=n0,
            a_beats=[{"data": [int(x) for x in a_tile[:, kk]], "last": int(kk == k - 1)}
                     for kk in range(k)],
            b_beats=[{"data": [int(x) for x in b_tile[kk]], "last": int(kk == k - 1)}
                     for kk in range(k)],
            bias_beat=[int(x) for x in bias_pad[n0:n0 + cols]]))
    return tiles


def gemm_beats(tiles):
    """Flatten tiles into the three input streams: ``(a_beats, b_beats, bias_beats)``."""
    a_beats, b_beats, bias_beats = [], [], []
    for tile in tiles:
        a_beats += tile.a_beats
        b_beats += tile.b_beats
        bias_beats.append(tile.bias_beat)
    return a_beats, b_beats, bias_beats


def gemm_assemble(c_beats, *, m, n, rows, cols):
    """Reassemble the output beats of all tiles (in stream order) into the ``m × n`` result.

    ``c_beats`` are :attr:`SystolicArray.c` payloads (``{"data": [...], "last": ...}``).

    Raises
    ------
    ValueError
        If the number of beats or their ``last`` flags do not match the tiling.
    """
    origins = tile_origins(m, n, rows=rows, cols=cols)
    if len(c_beats) != len(origins) * rows:
        raise ValueError(f"{len(origins)} tiles of {rows} rows need {len(origins) * rows} "
                         f"output beats, not {len(c_beats)}")
    c = np.zeros((m, n), np.int64)
    for t, (m0, n0) in enumerate(origins):
        for i in range(rows):
            beat = c_beats[t * rows + i]
            if beat["last"] != int(i == rows - 1):
                raise ValueError(f"output beat {t * rows + i} (tile {t}, row {i}) has "
                                 f"last={beat['last']}")
            if m0 + i < m:
                width = min(cols, n - n0)
                c[m0 + i, n0:n0 + width] = beat["data"][:width]
    return c


def gemm_reference(a, b, bias=None):
    """``a·b + bias`` in exact int64 (the golden model of the array)."""
    a = _as_int_array("a", a, 2)
    b = _as_int_array("b", b, 2)
    c = a @ b
    if bias is not None:
        c = c + _as_int_array("bias", bias, 1)[None, :]
    return c


def gemm_cycles(m, k, n, *, rows, cols):
    """Cycles from the first operand beat to the last output beat of the whole product.

    With ``T = ceil(m/rows)·ceil(n/cols)`` tiles and streams that never stall, this is
    ``k + (T-1)·max(k, rows, cols) + rows + cols + 5`` (see :class:`SystolicArray`): in the
    steady state one tile every ``max(k, rows, cols)`` cycles, plus the fill and drain of the
    array once. The array's utilization is ``m·k·n / (rows·cols·cycles)`` before padding losses.
    """
    check_int("k", k)
    tiles = len(tile_origins(m, n, rows=rows, cols=cols))
    latency = SystolicArray.PE_LATENCY + (cols - 1) + SystolicArray.DRAIN_LATENCY
    return k + (tiles - 1) * max(k, rows, cols) + latency + rows - 1
