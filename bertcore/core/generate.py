"""Write the Verilog of an encoder core and its JSON manifest."""

import json
from pathlib import Path

from amaranth.back import verilog

from .encoder import EncoderTop
from .image import FORMAT_VERSION, config_fingerprint, image_beats

__all__ = ["generate", "manifest"]


def _ports(config):
    bus = config.bus_width
    ports = [("clk", "in", 1), ("rst", "in", 1)]
    for prefix, direction in (("s_axis_param", "in"), ("s_axis_act", "in"),
                              ("m_axis_act", "out")):
        back = "out" if direction == "in" else "in"
        ports += [(f"{prefix}_tdata", direction, bus), (f"{prefix}_tvalid", direction, 1),
                  (f"{prefix}_tready", back, 1), (f"{prefix}_tlast", direction, 1)]
    ports += [("busy", "out", 1), ("error", "out", 1), ("cycles", "out", 32),
              ("array_beats", "out", 32)]
    return [{"name": n, "direction": d, "width": w} for n, d, w in ports]


def manifest(config, name="bertcore_encoder"):
    """The manifest of a core: configuration, ports and parameter-image size."""
    return {
        "module": name,
        "config": config.to_dict(),
        "ports": _ports(config),
        "parameter_image": {
            "format_version": FORMAT_VERSION,
            "fingerprint": f"{config_fingerprint(config):#010x}",
            "beats": image_beats(config),
            "bytes": image_beats(config) * config.bus_width // 8,
        },
        "activations": {"layout": "row-major int8, little-endian within a beat, tlast on the "
                                  "last beat", "max_seq": config.max_seq,
                        "hidden": config.hidden},
        "reset": "synchronous, active high",
    }


def generate(config, outdir, name="bertcore_encoder"):
    """Write ``<outdir>/<name>.v`` and ``<outdir>/<name>.json``; returns both paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(EncoderTop(config), name=name, emit_src=False)
    v_path = outdir / f"{name}.v"
    j_path = outdir / f"{name}.json"
    v_path.write_text(text)
    j_path.write_text(json.dumps(manifest(config, name), indent=2) + "\n")
    return v_path, j_path
