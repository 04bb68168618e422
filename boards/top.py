"""Board top-levels: the encoder core behind the UART bridge, with a PLL and status LEDs.

* :class:`UARTCoreTop`: the platform-independent part (core + :class:`~boards.bridge.UARTBridge`,
  the core reset by the bridge), with ports ``rx``, ``tx``, ``busy``, ``error``, ``nak``. The
  simulation tests use it directly.
* :class:`BoardTop`: a :class:`UARTCoreTop` on a board of :data:`BOARDS` (ULX3S-85F,
  OrangeCrab r0.2 25F, iCEBreaker): the board clock through a PLL to the core clock, the UART
  pins, LEDs for busy / error / NAK / heartbeat.

Per board (see :data:`BOARDS`): ``clock`` is the core clock the PLL makes, ``config`` the core
configuration (the largest that could fit, with the reason), ``baud`` the UART rate.

Where the configuration is ``resident`` (ULX3S) the core keeps the image of the first run on
chip and the host sends only activations afterwards; elsewhere the host streams the image with
every run (:mod:`bertcore.board`).
"""

import dataclasses
from dataclasses import dataclass

from amaranth.hdl import (Cat, ClockDomain, ClockSignal, DomainRenamer, Instance, Module, Mux,
                          ResetInserter, ResetSignal, Signal)
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out, connect

from bertcore.config import CoreConfig, preset
from bertcore.core.encoder import EncoderCore

from .bridge import UARTBridge
from .sdram import ULX3S_SDRAM
from .uart import uart_divisor

__all__ = ["UARTCoreTop", "BoardTop", "BoardSpec", "BOARDS", "board_spec"]


class UARTCoreTop(wiring.Component):
    """The encoder core behind a UART bridge.

    Parameters
    ----------
    config : CoreConfig
        The core's configuration.
    divisor : int
        Clock cycles per UART bit.
    core : wiring.Component or None
        A component with the members of :class:`~bertcore.core.encoder.EncoderCore` (``s_param``,
        ``s_act`` with ``user``: a segment table beat, ``m_act`` with ``user``: a failure
        packet, ``busy``, ``error``, ``cycles``);
        default ``EncoderCore(config)``.
    max_payload, timeout, gather
        Passed to :class:`~boards.bridge.UARTBridge`.
    core_domain : bool
        Put the core in a local clock domain ``core`` on the same clock whose reset is one
        flip-flop (the ``sync`` reset or the bridge's ``core_reset``, registered), so that the
        reset reaching the core's flip-flops is not a chain of OR gates across the chip (the
        ECP5 critical path otherwise); the default core then puts its datapath in a domain of
        its own the same way (``EncoderCore(dp_domain=True)``), and the bridge is in a local
        domain ``bridge`` whose reset is the ``sync`` reset registered. The board tops use it.
        The Amaranth simulator sees the ``core`` clock, assigned from ``sync``, one delta cycle
        late (a race), so Amaranth simulations keep the default (the core in ``sync`` with the
        bridge's reset inserted); Verilog simulators do not have that race.
    store : wiring.Component or None
        A parameter image store (:class:`~boards.image_store.ImageStore`, or a component with
        its members) on a board with SDRAM: the bridge gets the LOAD / RUN frames and the long
        STATUS (``docs/uart-protocol.md``); the core's ``s_param`` takes the store's
        ``m_param`` or, outside a stored-image run, the bridge's PARAM frames; the bridge's
        core reset (RESET, a break) also cancels the store's load or run.

    Members
    -------
    rx : ``In(1, init=1)``, tx : ``Out(1, init=1)``
        The UART lines.
    busy, error : ``Out(1)``
        The core's status.
    nak : ``Out(1)``
        One-cycle pulse per NAK sent.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)
    error: Out(1)
    nak: Out(1)

    def __init__(self, config, divisor, *, core=None, max_payload=256, timeout=None,
                 gather=None, core_domain=False, store=None):
        self._core = EncoderCore(config, dp_domain=core_domain) if core is None else core
        self._core_domain = core_domain
        self._store = store
        self._bridge = UARTBridge(config.bus_width, divisor, max_payload=max_payload,
                                  timeout=timeout, gather=gather, sdram=store is not None)
        self._config = config
        super().__init__()

    @property
    def config(self):
        return self._config

    @property
    def bridge(self):
        return self._bridge

    def elaborate(self, platform):
        m = Module()
        bridge = self._bridge
        if self._core_domain:
            # the bridge too, in a local domain whose reset is the sync reset registered: the
            # reset synchronizer's output reached every reset of the design, and a 4.95 ns
            # route of it into the frame receiver's next state was the ULX3S's worst path at
            # 125 MHz (build lw125); the bridge leaves reset a cycle after the rest
            m.domains.bridge = cd_bridge = ClockDomain("bridge", local=True)
            bridge_rst = Signal(init=1)
            m.d.sync += bridge_rst.eq(ResetSignal("sync"))
            m.d.comb += [cd_bridge.clk.eq(ClockSignal("sync")), cd_bridge.rst.eq(bridge_rst)]
            m.submodules.bridge = DomainRenamer("bridge")(bridge)
        else:
            m.submodules.bridge = bridge
        core = self._core
        if self._core_domain:
            m.domains.core = cd_core = ClockDomain("core", local=True)
            core_rst = Signal(init=1)           # 1 in and right after the sync reset
            m.d.sync += core_rst.eq(bridge.core_reset)
            m.d.comb += [cd_core.clk.eq(ClockSignal("sync")), cd_core.rst.eq(core_rst)]
            m.submodules.core = DomainRenamer("core")(core)
        else:
            m.submodules.core = ResetInserter(bridge.core_reset)(core)
        if self._store is None:
            connect(m, bridge.param, core.s_param)
        else:
            self._connect_store(m, bridge, core)
        # tuser: the segment table of a packed packet (ACT_TABLE frames)
        connect(m, bridge.act, core.s_act)
        connect(m, core.m_act, bridge.result)
        m.d.comb += [
            bridge.rx.eq(self.rx), self.tx.eq(bridge.tx),
            bridge.core_busy.eq(core.busy), bridge.core_error.eq(core.error),
            bridge.core_cycles.eq(core.cycles),
            self.busy.eq(core.busy), self.error.eq(core.error), self.nak.eq(bridge.nak),
        ]
        return m

    def _connect_store(self, m, bridge, core):
        m.submodules.store = store = self._store
        # the parameter stream: the stored image while the store runs, else the bridge's
        # PARAM frames (the two are never valid together: the host sends PARAM frames only
        # outside a stored-image run)
        from_store = store.m_param.valid
        m.d.comb += [
            core.s_param.valid.eq(store.m_param.valid | bridge.param.valid),
            core.s_param.payload.eq(Mux(from_store, store.m_param.payload,
                                        bridge.param.payload)),
            store.m_param.ready.eq(core.s_param.ready & from_store),
            bridge.param.ready.eq(core.s_param.ready & ~from_store),
            store.s_load.valid.eq(bridge.store_load.valid),
            store.s_load.payload.data.eq(bridge.store_load.payload.data),
            store.s_load.payload.last.eq(bridge.store_load.payload.last),
            bridge.store_load.ready.eq(store.s_load.ready),
            store.load.eq(bridge.store_start), store.run.eq(bridge.store_run),
            store.verify.eq(bridge.store_verify),
            store.expect_words.eq(bridge.store_expect_words),
            store.expect_fingerprint.eq(bridge.store_expect_fingerprint),
            store.cancel.eq(bridge.core_reset),
            bridge.store_ready.eq(store.init_done & ~store.busy),
            bridge.store_flags.eq(Cat(store.init_done, store.init_error, store.valid,
                                      store.error, store.busy)),
            bridge.store_fingerprint.eq(store.fingerprint),
            bridge.store_words.eq(store.words),
        ]


@dataclass(frozen=True)
class BoardSpec:
    """How bertcore runs on one board."""
    name: str
    platform: str        # "module:Class" in amaranth_boards
    family: str          # "ecp5" or "ice40"
    board_clock: float   # Hz
    clock: float         # core clock (PLL output), Hz
    config: CoreConfig
    why: str
    baud: int = 1_000_000
    uart_pins: tuple = None  # (connector, rx, tx) when the board has no UART resource
    sdram: object = None     # SDRAMConfig: the parameter image in SDRAM (LiteDRAM at `clock`)
    #: nextpnr's router (``--router``; None: nextpnr's default, router1)
    router: str = None
    #: ``((preset name, core clock Hz, router), ...)``: how this board builds a configuration
    #: other than ``config`` (the one equal to that preset), e.g. a larger core whose build does
    #: not meet ``clock``
    preset_builds: tuple = ()

    def with_clock(self, clock):
        """This board with the core clock ``clock`` (Hz): the PLL, the UART divisor, the timing
        target and the SDRAM controller (generated for the core clock) follow."""
        sdram = self.sdram and self.sdram.replace(clock=clock)
        return dataclasses.replace(self, clock=clock, sdram=sdram)

    def for_config(self, config):
        """This board as it runs ``config``: at the core clock and with the router that
        :attr:`preset_builds` gives for the preset equal to ``config``, else unchanged."""
        for name, clock, router in self.preset_builds:
            if preset(name) == config:
                return dataclasses.replace(self.with_clock(clock), router=router)
        return self

    def make_platform(self):
        import importlib
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(module), cls)()


#: The iCE40 UP5K has 8 DSPs (16x16), 30 block RAMs (4 kbit) and 5280 LUTs: the smallest core
#: the generator accepts (a 2x2 array, hidden 16 in 2 heads, 1 layer, 8 tokens), with 8-bit
#: attention probabilities (a 16x16 SB_MAC16 takes the array's int8/uint8 operands; 16-bit ones
#: cost LUTs per PE: docs/core.md, "Attention probabilities"; quantize with --prob-bits 8) and
#: int8 GELU outputs (16-bit ones widen every accumulator by 8 bits in LUT logic and double
#: the H buffer, on a part whose 5280 LUTs the core already fills; --gelu-bits 8).
ICE40_CONFIG = CoreConfig(hidden=16, heads=2, ffn=32, layers=1, max_seq=8, array_rows=2,
                          array_cols=2, bus_width=16, prob_bits=8, gelu_bits=8)

#: The tiny model's shape on a 2x2 array (the same quantized tiny model runs on it), with the
#: GELU and softmax multipliers in LUTs: 27 of the LFE5U-25F's 28 MULT18X18D.
ORANGECRAB_CONFIG = preset("tiny").replace(array_rows=2, array_cols=2,
                                           lut_multipliers=("gelu", "softmax"))

BOARDS = {
    "ulx3s-85f": BoardSpec(
        # 125 MHz: at this target the tiny core's final RTL routes at 129.2 MHz with nextpnr's
        # default seed (the board's build; the yowasp tools pinned in pyproject.toml, so every
        # checkout places it alike), 125.3-128.7 with seeds 2-6 (seed 1 did not route within
        # 25 min); the RTL before it 101.3-129.6 over seeds 1-6; a build that misses it can
        # sweep seeds (`bertcore build --seed 1,2,3`) or ask for --clock 100 (the lowest
        # placement of the last rounds: 101.3 MHz;
        # docs/boards.md, "Toward 100 MHz"; the slow build test holds 125)
        "ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", 25e6, 125e6,
        preset("tiny").replace(resident=True),
        "tiny, resident: a 4x4 array (16 of 156 multipliers), small banked memories and the "
        "5596 x 33-bit resident image (12 of 208 EBRs); minilm (16x16, hidden 384, 6 "
        "layers) needs 256 multipliers, more than the LFE5U-85F's 156, and buffers beyond its "
        "EBRs"),
    "ulx3s-85f-sdram": BoardSpec(
        # one clock domain: LiteDRAM generated for the core clock (docs/boards.md, SDRAM path)
        "ulx3s-85f-sdram", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", 25e6, 75e6,
        preset("tiny"),
        "tiny, image in the 32 MB SDRAM (LiteDRAM, GENSDRPHY, at the core clock): loaded once "
        "with `bertcore board load`, streamed from the DRAM into the core for every run",
        sdram=ULX3S_SDRAM.replace(clock=75e6),
        # the MiniLM core at 50 MHz, as LiteX's own ULX3S target runs its SDRAM (docs/boards.md,
        # "A MiniLM core for the LFE5U-85F"); router2 routes it where router1 did not finish
        preset_builds=(("ulx3s-minilm", 50e6, "router2"),)),
    "orangecrab-25f": BoardSpec(
        # 100 MHz: routed with this target the core reaches 100.7-110.0 MHz (docs/boards.md)
        "orangecrab-25f", "amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform", "ecp5",
        48e6, 100e6, ORANGECRAB_CONFIG,
        "the tiny model on a 2x2 array with GELU and softmax multipliers in LUTs, streamed "
        "image: the 4x4 tiny core takes 68 MULT18X18D where the LFE5U-25F has 28; on a 2x2 "
        "array with all units on DSPs it still needs 38; moving GELU and softmax into LUTs "
        "leaves 26 (routed: 77 % of the LUTs, 22/56 EBRs, 100 MHz)",
        uart_pins=("io", "0", "1")),
    "icebreaker": BoardSpec(
        "icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", 12e6, 24e6,
        ICE40_CONFIG,
        "no preset fits the UP5K (8 DSPs, 30 EBRs, 5280 LUTs; tiny synthesizes to 68 "
        "multipliers, ~14k LUT4 and ~60 memories): the smallest configuration the core "
        "accepts; this core most likely does not fit either (its per-lane units alone exceed "
        "8 DSPs and the LUTs), the top is there for a smaller future core",
        baud=115200),
}


def board_spec(name, config=None):
    """The :class:`BoardSpec` of board ``name``; with ``config``, as it runs that configuration
    (:meth:`BoardSpec.for_config`: its core clock). ``ValueError`` for an unknown board."""
    try:
        spec = BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r} (known: {', '.join(BOARDS)})") from None
    return spec if config is None else spec.for_config(config)


def _ecp5_pll(m, clk_in, clk_out, locked, f_in, f_out):
    """EHXPLLL: ``f_in`` → ``f_out`` with a VCO in 400..800 MHz (CLKOP feedback)."""
    for op_div in range(1, 129):
        vco = f_out * op_div
        if vco < 400e6:
            continue
        if vco > 800e6:
            break
        for in_div in range(1, 129):
            fb = f_out * in_div / f_in
            if abs(fb - round(fb)) < 1e-9 and 1 <= round(fb) <= 80:
                break
        else:
            continue
        break
    else:
        raise ValueError(f"no EHXPLLL setting for {f_in / 1e6:g} -> {f_out / 1e6:g} MHz")
    m.submodules.pll = Instance(
        "EHXPLLL",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=in_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=op_div,
        p_CLKOP_CPHASE=op_div // 2 - 1 if op_div > 1 else 0, p_CLKOP_FPHASE=0,
        p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=round(fb),
        a_FREQUENCY_PIN_CLKI=f"{f_in / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{f_out / 1e6:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        i_RST=0, i_STDBY=0, i_CLKI=clk_in, i_CLKFB=clk_out, i_PHASESEL0=0, i_PHASESEL1=0,
        i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
        o_CLKOP=clk_out, o_LOCK=locked)


def _ice40_pll(m, pad, clk_out, locked, f_in, f_out):
    """SB_PLL40_PAD (the iCEBreaker's 12 MHz oscillator is on a PLL input pad)."""
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divq in range(1, 7):
            divf = round(f_out * (1 << divq) / f_pfd) - 1
            if not 0 <= divf < 128:
                continue
            vco = f_pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            err = abs(vco / (1 << divq) - f_out)
            if best is None or err < best[0]:
                best = (err, divr, divf, divq)
    if best is None:
        raise ValueError(f"no SB_PLL40 setting for {f_in / 1e6:g} -> {f_out / 1e6:g} MHz")
    _, divr, divf, divq = best
    m.submodules.pll = Instance(
        "SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE", p_DIVR=divr, p_DIVF=divf, p_DIVQ=divq, p_FILTER_RANGE=1,
        i_PACKAGEPIN=pad, i_RESETB=1, i_BYPASS=0,
        o_PLLOUTGLOBAL=clk_out, o_LOCK=locked)


class BoardTop(wiring.Component):
    """:class:`UARTCoreTop` on a board (see :data:`BOARDS`).

    LEDs (as many as the board has): 0 busy, 1 error, 2 NAK (stretched), 3 heartbeat; with
    SDRAM (``spec.sdram``) also 4 ``init_done``, 5 ``init_error``, 6 image valid, 7 image
    error. The SDRAM board's LiteDRAM core (board variant, :func:`boards.sdram.generate`)
    runs in the core clock's domain; the SDRAM clock pin is that clock inverted
    (:func:`boards.litedram.sdram_pads`).
    """

    def __init__(self, board, config=None, *, core=None):
        self._spec = board_spec(board, config) if isinstance(board, str) else board
        self._config = self._spec.config if config is None else config
        self._core = core
        self._divisor = uart_divisor(self._spec.clock, self._spec.baud)
        super().__init__({})

    @property
    def spec(self):
        return self._spec

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        spec = self._spec
        m.domains.sync = cd_sync = ClockDomain("sync")
        locked = Signal()
        if spec.family == "ecp5":
            clk = platform.request(platform.default_clk, dir="-")
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
            _ecp5_pll(m, clk_buf.i, cd_sync.clk, locked, spec.board_clock, spec.clock)
        else:
            clk = platform.request(platform.default_clk, dir="-")
            _ice40_pll(m, clk.io, cd_sync.clk, locked, spec.board_clock, spec.clock)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        platform.add_clock_constraint(cd_sync.clk, spec.clock)

        if spec.uart_pins is None:
            uart = platform.request("uart", 0, dir="-")
        else:
            from amaranth.build import Attrs, Resource, Pins, Subsignal
            conn, rx, tx = spec.uart_pins
            platform.add_resources([Resource(
                "uart", 0, Subsignal("rx", Pins(rx, dir="i", conn=(conn, 0))),
                Subsignal("tx", Pins(tx, dir="o", conn=(conn, 0))),
                Attrs(IO_TYPE="LVCMOS33"))])
            uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)

        store = None
        if spec.sdram is not None:
            from .image_store import ImageStore
            from .litedram import sdram_pads
            from .sdram import generate
            store = ImageStore(generate(spec.sdram), self._config.bus_width,
                               pads=sdram_pads(m, platform))
        m.submodules.top = top = UARTCoreTop(self._config, self._divisor, core=self._core,
                                             core_domain=True, store=store)
        m.d.comb += [top.rx.eq(rx_buf.i), tx_buf.o.eq(top.tx)]

        stretch = Signal(range(int(spec.clock // 10) + 1))   # 100 ms
        with m.If(top.nak):
            m.d.sync += stretch.eq(int(spec.clock // 10))
        with m.Elif(stretch != 0):
            m.d.sync += stretch.eq(stretch - 1)
        beat = Signal(range(int(spec.clock)))
        m.d.sync += beat.eq(beat + 1)
        heartbeat = beat[-1]
        flags = [top.busy, top.error, stretch != 0, heartbeat]
        if store is not None:
            flags += [store.init_done, store.init_error, store.valid, store.error]
        leds = []
        for n in range(8):
            try:
                leds.append(platform.request("led", n, dir="-"))
            except Exception:
                break
        if not leds:                                 # OrangeCrab: one RGB LED
            rgb = platform.request("rgb_led", 0, dir="-")
            leds = [rgb.b, rgb.r, rgb.g]
        for n, (led, flag) in enumerate(zip(leds, flags)):
            # registered in the I/O cell: the pin is not at the end of the core's logic paths
            m.submodules[f"led_{n}"] = buf = io.FFBuffer("o", led)
            m.d.comb += buf.o.eq(flag)
        return m
