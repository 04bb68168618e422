"""The SDRAM board top in Verilator under cocotb, its image preloaded into the SDRAM model.

Shared by ``tests/test_board_uart.py`` (the ``tiny`` core: the run in ``make test`` and the slow
test that loads the image over the UART) and ``bench/board_minilm.py`` (the ``ulx3s-minilm``
core with the real all-MiniLM-L6-v2 image). The design is the board's own
:class:`~boards.top.UARTCoreTop` (UART bridge, :class:`~boards.image_store.ImageStore` on
LiteDRAM's ``--sim`` core, the encoder core in its ``core`` domain) for the board's LiteDRAM
configuration, under a small Verilog wrapper (:data:`WRAPPER`) that registers the reset input.

The build is made for speed (``docs/boards.md``, "SDRAM path"): only the wrapper's ports and the
few signals the bench watches are VPI-visible (:data:`PUBLIC`; cocotb's default makes every net
public, which keeps Verilator from inlining anything), and the reset reaches the design through
a flip-flop (Amaranth writes every register's reset as logic of ``rst``, which Verilator
re-evaluates on every call while ``rst`` is a top-level input).
"""

from pathlib import Path

__all__ = ["TOP", "SIM_TOP", "WRAPPER", "PUBLIC", "DIVISOR", "sdram_top", "run_sdram_top"]

#: The board top's module and the simulated wrapper's.
TOP = "bertcore_sdram_top"
SIM_TOP = "bertcore_sdram_sim"
#: Clock cycles per UART bit in these simulations (the receiver's minimum is 4).
DIVISOR = 4

WRAPPER = f"""\
// the SDRAM board top for cocotb: the reset registered (see sim/sdram_top.py)
module {SIM_TOP} (input clk, input rst, input rx, output tx);
    reg rst_q = 1'b1;
    always @(posedge clk) rst_q <= rst;
    {TOP} top (.clk(clk), .rst(rst_q), .rx(rx), .tx(tx), .busy(), .error(), .nak());
endmodule
"""

#: The signals cocotb sees: the wrapper's ports; LiteDRAM's refresher state (refreshes are
#: counted); the store's ``busy`` and ``m_param.valid`` (the image stream's span, for its
#: bytes per cycle).
PUBLIC = ([(SIM_TOP, port) for port in ("clk", "rst", "rx", "tx")]
          + [("litedram_core", "*refresher_state"),
             (f"{TOP}.store", "busy"), (f"{TOP}.store", "m_param__valid")])

#: Where the bench finds them (below the wrapper).
PROBES = {"refresher": [f"top.store.dram.dram.core.{prefix}refresher_state"
                        for prefix in ("", "litedramcore_", "soc_litedramcore_")],
          "store_busy": ["top.store.busy"], "param_valid": ["top.store.m_param__valid"]}


def sdram_top(config, board="ulx3s-85f-sdram"):
    """``(top, core)``: the board's :class:`~boards.top.UARTCoreTop` with ``config``'s core and
    an :class:`~boards.image_store.ImageStore` on the board's LiteDRAM configuration for
    ``config`` (:func:`~boards.top.board_spec`: its core clock) generated as the simulation
    variant (:class:`~boards.sdram.GeneratedCore`)."""
    from bertcore.boards.image_store import ImageStore
    from bertcore.boards.sdram import generate
    from bertcore.boards.top import UARTCoreTop, board_spec
    # LiteDRAM generated for the clock the board runs this configuration at (its refresh
    # interval and timings in cycles)
    core = generate(board_spec(board, config).sdram, sim=True)
    top = UARTCoreTop(config, DIVISOR, core_domain=True,
                      store=ImageStore(core, config.bus_width))
    return top, core


def run_sdram_top(config, image, runs, *, report, name, preload_dir=None, bad_verify=False,
                  corrupt=None, polls=10000, poll_gap=1000, check=True,
                  waves_on_failure=True, board="ulx3s-85f-sdram"):
    """Run ``sim/tb_board.py`` on the SDRAM board top with ``config``'s core.

    Parameters
    ----------
    config : CoreConfig
    image : list of int
        The parameter image (bus words).
    runs : list of dict
        ``{"length", "act", "out"}`` per run (``tb_board``'s ``runs``).
    report : Path
        The bench's JSON report (written by the bench).
    name : str
        Names the build: the same ``config`` and ``name`` share one Verilator build.
    preload_dir : Path or None
        Preload the image into the SDRAM model (its bank files written here) and make it the
        store's image with a verify-only load; ``None``: load it over the simulated UART.
    bad_verify : bool
        With ``preload_dir``: first a verify-only load of another image (refused) and one of
        more words than the SDRAM holds (image error).
    corrupt : list or None
        ``tb_board``'s ``corrupt`` (a frame bit flipped on the line).
    polls : int
        STATUS polls the host allows while the store reads the image back.
    poll_gap : int
        Clock cycles the host waits before each STATUS or READ poll (``tb_board``'s
        ``poll_gap``): at 4 cycles per UART bit a poll every few hundred cycles would make the
        simulation one cocotb callback per bit of polls; a real host at 1 Mbaud polls a
        75 MHz board about every 23 000 cycles (31 bytes of STATUS frame and reply).
    check : bool
        The bench asserts that each run's output is its ``out`` (a failure makes
        :func:`~sim.runner.run_cocotb` raise); without, the caller compares the report's
        outputs.
    waves_on_failure : bool
        :func:`~sim.runner.run_cocotb`'s (off for a large core: a second, traced build).

    Returns
    -------
    list of str
        The cocotb tests that ran (:func:`sim.runner.run_cocotb`).
    """
    from sim.runner import run_cocotb
    top, core = sdram_top(config, board)
    sdram = {**PROBES, "capacity": core.size // (config.bus_width // 8), "polls": polls,
             "preload": preload_dir is not None, "bad_verify": bad_verify}
    plusargs = []
    if preload_dir is not None:
        plusargs = core.write_preload(image, config.bus_width, Path(preload_dir))
    params = {"divisor": DIVISOR, "config": config.to_dict(), "image": image, "runs": runs,
              "corrupt": corrupt, "timeout_bits": 4000, "report": str(report), "sdram": sdram,
              "check": check, "poll_gap": poll_gap}
    return run_cocotb(top, toplevel=TOP, wrapper=(SIM_TOP, WRAPPER), public=PUBLIC,
                      test_module="tb_board", simulator="verilator", params=params,
                      extra_sources=core.verilator_sources, name=name, plusargs=plusargs,
                      waves_on_failure=waves_on_failure)
