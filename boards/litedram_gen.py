"""Run LiteDRAM's standalone generator on a YAML configuration (a subprocess of :mod:`boards.sdram`).

``python -m bertcore.boards.litedram_gen CONFIG.yml --output-dir DIR [--sim] [--name NAME]``

This does what ``python -m litedram.gen`` does (``litedram.gen.main``: read the YAML, build
``litedram.gen.LiteDRAMCore`` on a Lattice or simulation platform, run LiteX's ``Builder`` without
compiling gateware), with two differences that are why it exists:

* ``--sim``: LiteX's simulation toolchain writes the Verilog and then prepares its own Verilator
  harness, which needs ``pythondata-misc-tapcfg`` (not on PyPI) and would build a C++ simulator
  bertcore does not use. Here the simulation platform's toolchain writes the Verilog only.
* ``--sim``: the Verilog gets an ``initial`` block that preloads the SDRAM model's bank arrays
  from files named by plusargs (``+sdram_bank<N>=FILE``, ``$readmemh``; see
  :meth:`boards.sdram.GeneratedCore.write_preload`): an image of megabytes cannot be written
  through a simulated UART or bus.
* It writes ``DIR/bertcore-litedram.json``: the SDRAM init sequence that LiteDRAM's BIOS would run
  (``litedram.init.get_sdram_phy_init_sequence`` on the PHY settings of *this* core, its DFII
  bits from LiteDRAM's Python header), the CSR
  addresses of the control bus, the refresh interval in clock cycles and the user port's geometry.
  :class:`boards.sdram_init.SDRAMInit` bakes that sequence into hardware.

It runs in its own process: Migen/LiteX change the working directory while building, and their
import is kept out of the caller.
"""

import argparse
import json
import os
import re
import sys

__all__ = ["main"]

META = "bertcore-litedram.json"


class _VerilogOnly:
    """A LiteX simulation toolchain that writes the design's Verilog and stops there (the steps
    of ``litex.build.sim.verilator.SimVerilatorToolchain.build`` up to ``v_output.write``)."""

    def build(self, platform, fragment, build_dir="build", build_name="sim", regular_comb=False,
              **_):
        from migen.fhdl.structure import _Fragment
        os.makedirs(build_dir, exist_ok=True)
        if not isinstance(fragment, _Fragment):
            fragment = fragment.get_fragment()
        platform.finalize(fragment)
        output = platform.get_verilog(fragment, name=build_name, regular_comb=regular_comb)
        output.write(os.path.join(build_dir, build_name + ".v"))
        return output.ns


#: The plusarg naming the preload file of a bank: ``+sdram_bank0=FILE``.
PRELOAD_PLUSARG = "sdram_bank{bank}"


def _add_preload(verilog):
    """Add to the simulation core's Verilog an ``initial`` block that reads each bank model's
    array (LiteDRAM's ``SDRAMPHYModel``: one ``reg [15:0] mem..[...]`` per bank) from the file
    of its plusarg, if given. Returns the bank arrays' names, bank 0 first."""
    with open(verilog) as f:
        text = f.read()
    # each bank model's read port names its array
    banks = dict(re.findall(r"assign \w*bankmodel(\d+)_read_port_dat_r = (\w+)\[", text))
    names = [banks[str(bank)] for bank in range(len(banks))]
    lines = ["", "// bertcore: the SDRAM model's banks preloaded from files given as plusargs",
             "// (+sdram_bank<N>=FILE, $readmemh with @index lines; simulation only)",
             "initial begin : bertcore_sdram_preload",
             "\treg [8*1024-1:0] path;"]
    for bank, name in enumerate(names):
        plusarg = PRELOAD_PLUSARG.format(bank=bank)
        lines.append(f'\tif ($value$plusargs("{plusarg}=%s", path)) $readmemh(path, {name});')
    lines += ["end", ""]
    end = text.rindex("endmodule")
    with open(verilog, "w") as f:
        f.write(text[:end] + "\n".join(lines) + "\n" + text[end:])
    return names


def _load_config(path):
    """The YAML configuration, converted the way ``litedram.gen.main`` converts it."""
    import yaml
    from litedram import modules, phy
    with open(path) as f:
        config = yaml.safe_load(f)
    for key, value in config.items():
        if value in ("False", "True", "None"):
            config[key] = {"False": False, "True": True, "None": None}[value]
        if "clk_freq" in key:
            config[key] = float(value)
        if key == "sdram_module":
            config[key] = getattr(modules, value)
        if key == "sdram_phy":
            config[key] = getattr(phy, value)
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sim", action="store_true")
    parser.add_argument("--name", default="litedram_core")
    args = parser.parse_args(argv)

    from litedram import gen
    from litedram.init import get_sdram_phy_init_sequence, get_sdram_phy_py_header
    from litex.build.lattice import LatticePlatform
    from litex.build.sim import SimPlatform
    from litex.soc.integration.builder import Builder

    config = _load_config(args.config)
    if config.get("cpu") is not None:
        raise SystemExit("litedram_gen: the configuration must have cpu: None")
    output_dir = os.path.abspath(args.output_dir)
    if args.sim:
        platform = SimPlatform("", io=[])
        platform.toolchain = _VerilogOnly()
    else:
        platform = LatticePlatform(config["device"], io=[], toolchain="trellis")
    soc = gen.LiteDRAMCore(platform, config, integrated_rom_size=0xC000)
    csr_json = os.path.join(output_dir, "csr.json")
    builder = Builder(soc, output_dir=output_dir, compile_gateware=False,
                      compile_software=False, csr_json=csr_json)
    builder.build(build_name=args.name, regular_comb=False)

    phy = getattr(soc, "ddrphy", None) or soc.sdrphy
    timing = soc.sdram.controller.settings.timing
    # LiteDRAM's own Python header of this PHY gives the DFII control/command bits; a step of
    # the init sequence is a control register write (CKE, ...) or a DFII command (as in the C
    # header LiteDRAM writes for its BIOS)
    header = {}
    exec(get_sdram_phy_py_header(phy.settings, timing), header)
    steps = []
    for comment, address, bank, command, delay in get_sdram_phy_init_sequence(
            phy.settings, timing)[0]:
        bits = sum(header[flag.lower()] for flag in command.split("|"))
        kind = "control" if command.startswith("DFII_CONTROL") else "command"
        steps.append({"comment": comment, "kind": kind, "address": address, "bank": bank,
                      "bits": bits, "delay": delay})
    verilog = os.path.join(output_dir, "gateware", args.name + ".v")
    bank_arrays = _add_preload(verilog) if args.sim else []
    module = config["sdram_module"]
    size = module.nbanks * module.nrows * module.ncols * phy.settings.databits // 8
    with open(csr_json) as f:
        registers = {name: reg["addr"] for name, reg in json.load(f)["csr_registers"].items()}
    ports = {}
    for name, port in config["user_ports"].items():
        width = port.get("data_width", phy.settings.dfi_databits * phy.settings.nphases)
        ports[name] = {"address_width": (size // (width // 8)).bit_length() - 1,
                       "data_width": width}
    meta = {
        "verilog": verilog,
        "bank_arrays": bank_arrays,
        "name": args.name,
        "sim": args.sim,
        "memtype": phy.settings.memtype,
        "nphases": phy.settings.nphases,
        "cl": phy.settings.cl,
        "databits": phy.settings.dfi_databits,
        "size": size,
        "dfii": {name: value for name, value in header.items() if name.startswith("dfii_")},
        "init_sequence": steps,
        "csr": registers,
        "geom": {"bankbits": soc.sdram.controller.settings.geom.bankbits,
                 "rowbits": soc.sdram.controller.settings.geom.rowbits,
                 "colbits": soc.sdram.controller.settings.geom.colbits},
        "address_mapping": soc.sdram.controller.settings.address_mapping,
        "trefi": timing.tREFI,
        "trfc": timing.tRFC,
        "user_ports": ports,
    }
    with open(os.path.join(output_dir, META), "w") as f:
        json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    # run as a script, Python puts this file's directory first on the path, where boards/
    # litedram.py would shadow LiteDRAM's own package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.exit(main())
