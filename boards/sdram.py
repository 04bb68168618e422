"""LiteDRAM cores for bertcore's boards, generated at build time and cached.

:class:`SDRAMConfig` describes a LiteDRAM standalone core (PHY, SDRAM chip, clock, one native user
port; no CPU) and writes it as the YAML that LiteDRAM's generator reads. :func:`generate` runs the
generator (:mod:`bertcore.boards.litedram_gen`, LiteDRAM's ``litedram.gen`` core and builder) in a
subprocess into ``build/litedram/<key>/``, keyed by the YAML, the variant (board or ``sim``) and
the LiteDRAM/LiteX/Migen versions, and returns a :class:`GeneratedCore`: the Verilog file, the
init sequence, the CSR addresses, the refresh interval. The Verilog is a build product, never
committed; a second call with the same key reuses it.

* the board variant (``sim=False``): the core with LiteDRAM's ``GENSDRPHY`` on ECP5 I/O primitives
  (``TRELLIS_IO``, ``OFS1P3BX``, ...), for yosys / nextpnr only;
* the simulation variant (``sim=True``, ``litedram.gen --sim``): the PHY replaced by LiteDRAM's
  ``SDRAMPHYModel`` (a DFI-level model of the chip whose contents are four
  ``reg [15:0] mem[0:4194303]`` arrays, 32 MB), for Verilator.
"""

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .litedram_gen import PRELOAD_PLUSARG

__all__ = ["SDRAMConfig", "GeneratedCore", "generate", "ULX3S_SDRAM",
           "LiteDRAMError"]



def _cache_dir():
    """Where generated cores are cached (one directory per key): ``litedram/`` of the package's
    cache directory (:func:`bertcore.cache.cache_dir`)."""
    from bertcore.cache import cache_dir
    return cache_dir("litedram")


class LiteDRAMError(RuntimeError):
    """LiteDRAM is not installed, or its generator failed (the message names its log)."""


@dataclass(frozen=True)
class SDRAMConfig:
    """A LiteDRAM standalone core (the keys of LiteDRAM's YAML configurations).

    Parameters
    ----------
    module : str
        SDRAM chip, a class of ``litedram.modules`` (ULX3S: ``MT48LC16M16``, 32 MB, 16 bits).
    module_nb : int
        Byte groups of the data bus (2: 16 bits).
    phy : str
        A PHY class of ``litedram.phy`` (``GENSDRPHY``: single data rate, any FPGA's I/O).
    memtype : str
    clock : float
        The controller's clock in Hz (``sys_clk_freq``; the core runs on the clock it is given).
    device : str
        The FPGA, for the board variant's I/O primitives.
    port_width : int
        Data width of the native user port in bits: a multiple of the DRAM's (LiteDRAM's
        crossbar then converts). Default the DRAM's own width: LiteDRAM's down-converter costs
        a cycle per user command, so the DRAM reader and writer split wider stream words into
        port words themselves (:mod:`boards.dram_stream`).
    cmd_buffer_depth : int
        Commands each bank machine queues.
    """
    module: str = "MT48LC16M16"
    module_nb: int = 2
    phy: str = "GENSDRPHY"
    memtype: str = "SDR"
    clock: float = 50e6
    device: str = "LFE5U-85F-6BG381C"
    port_width: int = 16
    cmd_buffer_depth: int = 16

    def __post_init__(self):
        dram_width = 8 * self.module_nb
        if self.port_width < dram_width or self.port_width % dram_width:
            raise ValueError(f"port_width must be a multiple of the DRAM's {dram_width} bits, "
                             f"not {self.port_width!r}")
        if self.clock <= 0:
            raise ValueError(f"clock must be positive, not {self.clock!r}")

    def replace(self, **changes):
        return SDRAMConfig(**{**asdict(self), **changes})

    def yaml(self):
        """The configuration as LiteDRAM's generator reads it (its ``examples/ulx3s.yml`` with
        ``cpu: None`` and one native user port ``native_0``)."""
        import yaml
        return yaml.safe_dump({
            "device": self.device,
            "cpu": "None",
            "memtype": self.memtype,
            "sdram_module": self.module,
            "sdram_module_nb": self.module_nb,
            "sdram_phy": self.phy,
            "input_clk_freq": float(self.clock),
            "sys_clk_freq": float(self.clock),
            "cmd_buffer_depth": self.cmd_buffer_depth,
            "user_ports": {"native_0": {"type": "native", "data_width": self.port_width}},
        }, sort_keys=True)


#: The ULX3S's SDRAM (one MT48LC16M16, 16 bits, 32 MB) at 50 MHz, as LiteX's own ULX3S target
#: runs it by default.
ULX3S_SDRAM = SDRAMConfig()


@dataclass(frozen=True)
class GeneratedCore:
    """A generated LiteDRAM core (read from the generator's ``bertcore-litedram.json``).

    Attributes
    ----------
    verilog : Path
        The Verilog file (module :attr:`name`).
    sim : bool
        The simulation variant (SDRAMPHYModel).
    init_sequence : list of dict
        LiteDRAM's SDRAM init steps: ``kind`` (``"control"``: a write of the DFII control
        register; ``"command"``: a DFII command), ``address``, ``bank``, ``bits``, ``delay``
        (clock cycles after the step), ``comment``.
    dfii : dict
        The DFII control and command bits (``dfii_control_cke``, ``dfii_command_ras``, ...).
    csr : dict
        Byte addresses of the control registers on the ``wb_ctrl`` bus.
    trefi, trfc : int
        Refresh interval and refresh cycle time in clock cycles.
    size : int
        Bytes of DRAM.
    address_width, data_width : int
        Geometry of the native user port (address in words of ``data_width`` bits).
    geom : dict
        ``bankbits``, ``rowbits``, ``colbits`` of the chip.
    address_mapping : str
        LiteDRAM's mapping of port addresses onto bank, row and column.
    bank_arrays : list of str
        (simulation variant) The model's per-bank memory arrays, bank 0 first.
    """
    verilog: Path
    name: str
    sim: bool
    config: SDRAMConfig
    init_sequence: list
    dfii: dict
    csr: dict
    trefi: int
    trfc: int
    size: int
    databits: int
    address_width: int
    data_width: int
    geom: dict
    address_mapping: str
    bank_arrays: tuple = ()

    def model_location(self, address):
        """Where the simulation model keeps the port word at ``address``: ``(bank, index)`` into
        the SDRAMPHYModel's per-bank memory array (``mem``, ``mem_1``, ... in the Verilog).

        LiteDRAM's ``ROW_BANK_COL`` mapping of a single-phase SDR controller: the column in the
        low bits, then the bank, then the row; a bank model keeps ``row * ncols + column``.
        ``address`` may be a NumPy array of addresses (then two arrays are returned).
        """
        import numpy as np
        if self.address_mapping != "ROW_BANK_COL" or self.data_width != self.databits:
            raise ValueError("only the ROW_BANK_COL mapping of a port of the DRAM's width")
        if not np.all((0 <= np.asarray(address)) & (np.asarray(address)
                                                     < 1 << self.address_width)):
            raise ValueError(f"address must be in 0..{(1 << self.address_width) - 1}, "
                             f"not {address!r}")
        col_bits, bank_bits = self.geom["colbits"], self.geom["bankbits"]
        column = address & ((1 << col_bits) - 1)
        bank = (address >> col_bits) & ((1 << bank_bits) - 1)
        row = address >> (col_bits + bank_bits)
        return bank, (row << col_bits) | column

    def write_preload(self, words, word_width, directory):
        """Write an image as the simulation model's bank contents, for the preload of the
        ``--sim`` core: ``words`` (stream words of ``word_width`` bits) stored from port address
        0 as :class:`~boards.image_store.ImageStore` writes them (each word split into port
        words, low half first), placed with :meth:`model_location`.

        Writes ``directory/bank<N>.hex`` (``$readmemh``: ``@index`` where the indices jump, one
        hexadecimal port word a line) for each bank and returns the simulator's plusargs
        (``+sdram_bank<N>=FILE``) that the core's preload block reads.

        Raises
        ------
        ValueError
            Not the simulation variant, a word width that is not a multiple of the port's, or
            more words than the DRAM holds.
        """
        import numpy as np
        if not self.sim or not self.bank_arrays:
            raise ValueError("only the simulation variant (generate(..., sim=True)) preloads")
        ratio, rest = divmod(word_width, self.data_width)
        if rest or ratio < 1:
            raise ValueError(f"word_width must be a multiple of the port's {self.data_width} "
                             f"bits, not {word_width!r}")
        lanes = np.asarray(words, dtype=np.uint64)[:, None] >> (
            self.data_width * np.arange(ratio, dtype=np.uint64))
        port = (lanes & np.uint64((1 << self.data_width) - 1)).reshape(-1)
        if len(port) > 1 << self.address_width:
            raise ValueError(f"{len(words)} words of {word_width} bits do not fit in "
                             f"{self.size} bytes of DRAM")
        banks, indices = self.model_location(np.arange(len(port), dtype=np.int64))
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        digits = (self.data_width + 3) // 4
        plusargs = []
        for bank in range(len(self.bank_arrays)):
            sel = banks == bank
            index, value = indices[sel], port[sel]
            if not len(index):
                continue                        # a small image leaves later banks alone
            jumps = np.flatnonzero(np.diff(index, prepend=-2) != 1)
            ends = list(jumps[1:]) + [len(index)]
            lines = []
            for start, end in zip(jumps, ends):
                lines.append(f"@{int(index[start]):x}")
                lines.extend(f"{v:0{digits}x}" for v in value[start:end].tolist())
            path = directory / f"bank{bank}.hex"
            path.write_text("\n".join(lines) + "\n")
            plusargs.append(f"+{PRELOAD_PLUSARG.format(bank=bank)}={path}")
        return plusargs

    @property
    def verilator_sources(self):
        """Sources for a Verilator build: a control file that waives lint warnings in LiteDRAM's
        generated Verilog (Migen writes ``<=`` in combinational blocks and leaves signals
        unused: not bertcore's code, which stays under ``-Wall``), then the Verilog."""
        control = self.verilog.with_suffix(".vlt")
        text = "`verilator_config\n// LiteDRAM's generated Verilog: its warnings are waived\n"
        text += f'lint_off -file "{self.verilog}"\n'
        for rule in ("COMBDLY", "CASEINCOMPLETE", "WIDTHEXPAND", "WIDTHTRUNC"):
            text += f'lint_off -rule {rule} -file "{self.verilog}"\n'

        if not control.exists() or control.read_text() != text:
            control.write_text(text)
        return [control, self.verilog]


def _versions():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return {name: version(name) for name in ("litedram", "litex", "migen")}
    except PackageNotFoundError as exc:
        raise LiteDRAMError(f"LiteDRAM is not installed ({exc.name}): pip install "
                            "'litedram==2024.12' 'litex==2024.12' 'migen==0.10.0'") from None


def _load(directory, config):
    meta = json.loads((directory / "bertcore-litedram.json").read_text())
    port = meta["user_ports"]["native_0"]
    return GeneratedCore(
        verilog=Path(meta["verilog"]), name=meta["name"], sim=meta["sim"], config=config,
        init_sequence=meta["init_sequence"], dfii=meta["dfii"], csr=meta["csr"],
        trefi=meta["trefi"], trfc=meta["trfc"], size=meta["size"], databits=meta["databits"],
        address_width=port["address_width"], data_width=port["data_width"],
        geom=meta["geom"], address_mapping=meta["address_mapping"],
        bank_arrays=tuple(meta.get("bank_arrays", ())))


def generate(config=ULX3S_SDRAM, *, sim=False, cache_dir=None):
    """Generate (or reuse) the LiteDRAM core of ``config``.

    Parameters
    ----------
    config : SDRAMConfig
    sim : bool
        The simulation variant (``litedram.gen --sim``) instead of the board's.
    cache_dir : Path, optional
        Default: ``litedram/`` of the package's cache directory (``$BERTCORE_CACHE`` or the
        user's cache directory).

    Returns
    -------
    GeneratedCore

    Raises
    ------
    LiteDRAMError
        LiteDRAM missing, or the generator failed (its log is named).
    """
    if not isinstance(config, SDRAMConfig):
        raise TypeError(f"config must be an SDRAMConfig, not {config!r}")
    text = config.yaml()
    driver = Path(__file__).with_name("litedram_gen.py").read_text()
    key = hashlib.sha256("\0".join(
        [text, str(sim), json.dumps(_versions(), sort_keys=True), driver]).encode()).hexdigest()
    directory = Path(cache_dir or _cache_dir()) / f"{'sim' if sim else 'board'}-{key[:16]}"
    if (directory / "bertcore-litedram.json").exists():
        return _load(directory, config)
    staging = directory.with_name(f"{directory.name}.{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "config.yml").write_text(text)
    # the driver runs as a module of the installed package (as a script, its folder would come
    # first on sys.path and boards/litedram.py would shadow LiteDRAM's own `litedram`)
    cmd = [sys.executable, "-m", "bertcore.boards.litedram_gen", "config.yml", "--output-dir", "."]
    if sim:
        cmd.append("--sim")
    with open(staging / "generate.log", "w") as log:
        proc = subprocess.run(cmd, cwd=staging, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise LiteDRAMError(f"LiteDRAM's generator failed (exit {proc.returncode}); "
                            f"see {staging / 'generate.log'}")
    # the paths in the metadata point into the staging directory: rewrite them, then move the
    # directory into place (atomic: concurrent generations race safely)
    meta_path = staging / "bertcore-litedram.json"
    meta = json.loads(meta_path.read_text())
    meta["verilog"] = str(directory / Path(meta["verilog"]).relative_to(staging.resolve()))
    meta_path.write_text(json.dumps(meta, indent=1))
    try:
        staging.rename(directory)
    except OSError:
        import shutil
        shutil.rmtree(staging, ignore_errors=True)
    return _load(directory, config)
