"""Configuration of an encoder core: one validated dataclass and named presets."""

import dataclasses
from dataclasses import dataclass

from .quant.kernels import GELU_BITS_MAX, GELU_BITS_MIN, PROB_BITS_MAX, PROB_BITS_MIN

__all__ = ["CoreConfig", "PRESETS", "preset", "ConfigError"]


class ConfigError(ValueError):
    """An invalid core configuration (one readable sentence naming the field and value)."""


_INT_FIELDS = ("hidden", "heads", "ffn", "layers", "max_seq", "array_rows", "array_cols",
               "bus_width", "softmax_units", "layernorm_units", "max_segments", "prob_bits",
               "gelu_bits")
_BOOL_FIELDS = ("resident", "shared_h")
#: ``ffn // hidden`` for which ``shared_h`` can hold H in X, Q, K and V (a power of two: the
#: memory of an H word is its address's low bits).
SHARED_H_RATIOS = (1, 2, 4)
#: Largest sequence length a core may be built for (position tables of BERT go to 512).
MAX_SEQ_LIMIT = 4096
#: Upper bounds of the integer fields (``prob_bits`` and ``gelu_bits`` have ranges of their
#: own): far above any core the flow can build (BERT-large is hidden 1024, ffn 4096, 24
#: layers), so that a mistyped value is refused at once instead of elaborating for hours or
#: running out of memory.
INT_LIMITS = {"hidden": 8192, "heads": 256, "ffn": 32768, "layers": 256,
              "max_seq": MAX_SEQ_LIMIT, "array_rows": 256, "array_cols": 256, "bus_width": 4096,
              "softmax_units": 256, "layernorm_units": 256, "max_segments": MAX_SEQ_LIMIT}
#: Units whose multipliers ``lut_multipliers`` may move from DSP blocks into LUT logic.
LUT_MULTIPLIER_UNITS = ("requant", "gelu", "softmax", "layernorm")


@dataclass(frozen=True)
class CoreConfig:
    """Shape of the encoder a core runs and of the hardware that runs it.

    Parameters
    ----------
    hidden, heads, ffn, layers : int
        The BERT encoder: hidden size, attention heads (``hidden % heads == 0``), FFN size, layers.
    max_seq : int
        Longest sequence (tokens) the activation buffers hold.
    array_rows, array_cols : int
        Size of the systolic GEMM array.
    bus_width : int
        Bits of the AXI4-Stream data buses (a multiple of 8).
    resident : bool
        Keep the parameter image in an on-chip memory after the first load (small presets only).
    softmax_units, layernorm_units : int
        ``IntSoftmax`` / ``IntLayerNorm`` instances working side by side (each a divisor of
        ``array_cols``): area for throughput, the array idles less while they run. They do not
        change the results or the parameter image.
    max_segments : int
        Most sequences (segments) one packed run may carry (its activation packet's segment
        table, ``docs/interface.md``); at most ``max_seq`` can occur. Does not change the
        parameter image.
    lut_multipliers : tuple of str
        Units (of :data:`LUT_MULTIPLIER_UNITS`) whose multipliers are built from LUTs instead
        of DSP blocks, for FPGAs with few DSPs (about 400-550 LUTs per 18x18 multiplier moved,
        and a lower Fmax for those units). The systolic array always uses DSPs.
    prob_bits : int
        Width ``B`` of the unsigned attention probabilities (``PROB_BITS_MIN..PROB_BITS_MAX``,
        8..16): the softmax units output ``B`` bits, the P buffer holds them and the ``P·V``
        job multiplies them by int8 V in the array (its A operand is ``B + 1`` bits signed).
        It must equal the ``prob_bits`` the model was quantized with (the image's fingerprint
        covers it). 16 (default, as ``QuantOptions``) costs no DSP block on ECP5 (an 18x18
        multiplier takes a 17-bit operand), only flip-flops along the array's rows; on iCE40
        (16x16 DSPs) it costs LUTs, so the iCE40 board's core states 8.
    gelu_bits : int
        Width ``G`` of the signed GELU outputs (``GELU_BITS_MIN..GELU_BITS_MAX``, 8..16): the
        GELU output requantizer saturates to ``G`` bits, the H buffer holds them and the FFN2
        job multiplies them by int8 weights in the array (its A operand is
        ``max(prob_bits + 1, G)`` bits signed, the accumulators as wide as FFN2's sums need:
        ``gemm.accumulator_range``). It must equal the ``gelu_bits`` the model was quantized
        with (the image's fingerprint covers it). 16 (default, as ``QuantOptions``) costs no
        DSP block with ``prob_bits = 16`` (the A operand is 17 bits either way), the H buffer
        twice the memory and wider accumulators.
    shared_h : bool
        Keep the GELU outputs (``H``) in the memories of ``X``, ``Q``, ``K`` and ``V`` instead
        of memories of their own: the FFN runs while those four hold nothing live (the layer
        input's last reader, the ``O`` job, is done before LayerNorm-1; LayerNorm-2 writes the
        next layer's input after the FFN), so ``H`` word ``a`` goes to the memory ``a mod R``
        of them at ``a // R``, ``R = ffn // hidden`` (1, 2 or 4). It needs ``gelu_bits = 8``
        (an ``H`` word as wide as theirs). It saves ``H``'s block RAM (48 DP16KD on an 8x8
        MiniLM core) for a 4:1 multiplexer on the feeder's ``H`` read data; the results, the
        schedule and the parameter image are the same.

    Raises
    ------
    ConfigError
        If a field has the wrong type or breaks a constraint.
    """
    hidden: int
    heads: int
    ffn: int
    layers: int
    max_seq: int
    array_rows: int
    array_cols: int
    bus_width: int
    resident: bool = False
    softmax_units: int = 1
    layernorm_units: int = 1
    lut_multipliers: tuple = ()
    max_segments: int = 16
    prob_bits: int = 16
    gelu_bits: int = 16
    shared_h: bool = False

    def __post_init__(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an integer, not {v!r}")
            if v < 1:
                raise ConfigError(f"{name} must be at least 1, not {v!r}")
            if v > INT_LIMITS.get(name, v):
                raise ConfigError(f"{name} must be at most {INT_LIMITS[name]}, not {v!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, not {getattr(self, name)!r}")
        units = self.lut_multipliers
        if (not isinstance(units, (tuple, list))
                or not all(isinstance(u, str) for u in units)):
            raise ConfigError(f"lut_multipliers must be a list of unit names, not {units!r}")
        unknown = [u for u in units if u not in LUT_MULTIPLIER_UNITS]
        if unknown:
            raise ConfigError(f"lut_multipliers: unknown unit {unknown[0]!r} "
                              f"(known: {', '.join(LUT_MULTIPLIER_UNITS)})")
        # a canonical, hashable form: the known order, no repeats
        object.__setattr__(self, "lut_multipliers",
                           tuple(u for u in LUT_MULTIPLIER_UNITS if u in units))
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.bus_width % 8:
            raise ConfigError(f"bus_width must be a multiple of 8, not {self.bus_width}")
        if not PROB_BITS_MIN <= self.prob_bits <= PROB_BITS_MAX:
            raise ConfigError(f"prob_bits must lie in {PROB_BITS_MIN}..{PROB_BITS_MAX}, not "
                              f"{self.prob_bits}")
        if not GELU_BITS_MIN <= self.gelu_bits <= GELU_BITS_MAX:
            raise ConfigError(f"gelu_bits must lie in {GELU_BITS_MIN}..{GELU_BITS_MAX}, not "
                              f"{self.gelu_bits}")
        if self.shared_h:
            if self.gelu_bits != 8:
                raise ConfigError(f"shared_h needs gelu_bits 8 (an H word as wide as an X "
                                  f"word), not {self.gelu_bits}")
            if self.ffn % self.hidden or self.ffn // self.hidden not in SHARED_H_RATIOS:
                raise ConfigError(f"shared_h needs ffn to be 1, 2 or 4 times hidden, not "
                                  f"{self.ffn} for hidden {self.hidden}")

    @property
    def head_dim(self):
        return self.hidden // self.heads

    def multipliers(self, unit):
        """``"lut"`` or ``"dsp"``: how the multipliers of ``unit`` are built."""
        return "lut" if unit in self.lut_multipliers else "dsp"

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated); unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ConfigError(f"unknown configuration key {key!r} "
                                  f"(known: {', '.join(sorted(names))})")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    def check_model(self, shape):
        """Raise :class:`ConfigError` unless a model of ``shape`` (a ``BertShape``) fits."""
        for name, want in (("hidden", shape.hidden), ("heads", shape.heads), ("ffn", shape.ffn),
                           ("layers", shape.layers)):
            if getattr(self, name) != want:
                raise ConfigError(f"the model has {name}={want}, the core {getattr(self, name)}")


PRESETS = {
    # matches bertcore.testing.make_tiny_checkpoint(); small enough for Icarus in CI
    "tiny": CoreConfig(hidden=32, heads=4, ffn=64, layers=2, max_seq=16,
                       array_rows=4, array_cols=4, bus_width=32),
    # all-MiniLM-L6-v2 up to its 256 tokens; 8 softmax and 8 LayerNorm units keep the 16x16
    # array 91% busy at 128 tokens (88% at 256, where attention grows: docs/core.md)
    "minilm": CoreConfig(hidden=384, heads=12, ffn=1536, layers=6, max_seq=256,
                         array_rows=16, array_cols=16, bus_width=128,
                         softmax_units=8, layernorm_units=8),
    # all-MiniLM-L6-v2 on the ULX3S-85F (LFE5U-85F: 156 MULT18X18D, 208 DP16KD), the image
    # streamed from the board's SDRAM: a 4x4 array (16 multipliers; the write-back's lanes take
    # 36 more, 67 in all), one softmax and one LayerNorm unit, every multiplier on a DSP block,
    # a 32-bit bus (the SDRAM delivers 2 bytes per cycle), H in the memories of X, Q, K and V
    # (shared_h, which needs gelu_bits 8). Routing decides the array: an 8x8 core fits (151
    # MULT18X18D, 149 DP16KD) but nextpnr's router2 did not route it (twice the wires of this
    # one). Block RAM decides max_seq: 96 tokens take 170 DP16KD with the SDRAM board's
    # bridge, 128 would take 205 of 208 (docs/boards.md, "A MiniLM core for the LFE5U-85F")
    "ulx3s-minilm": CoreConfig(hidden=384, heads=12, ffn=1536, layers=6, max_seq=96,
                               array_rows=4, array_cols=4, bus_width=32, gelu_bits=8,
                               shared_h=True),
    # BERT-base: Verilog generation and estimates only
    "bert-base": CoreConfig(hidden=768, heads=12, ffn=3072, layers=12, max_seq=512,
                            array_rows=16, array_cols=16, bus_width=128,
                            softmax_units=8, layernorm_units=8),
}


def preset(name):
    """The preset ``name``; an unknown name raises :class:`ConfigError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


def _coerce(key, text):
    """Parse the text of ``--set key=text`` by the type of the field."""
    names = {f.name for f in dataclasses.fields(CoreConfig)}
    if key not in names:
        raise ConfigError(f"unknown configuration key {key!r} (known: "
                          f"{', '.join(sorted(names))})")
    if key in _BOOL_FIELDS:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, not {text!r}")
    if key == "lut_multipliers":
        return tuple(u.strip() for u in text.split(",") if u.strip())
    for base in (0, 10):                   # 0x40, 0b1, 64; and 08 (base 0 refuses it)
        try:
            return int(text, base)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be an integer, not {text!r}")


def _read_toml(config_file):
    """The table of a TOML configuration file; every way it can be unreadable is a
    :class:`ConfigError` naming the file."""
    import tomllib
    try:
        with open(config_file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(config_file)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(config_file)!r} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(config_file)!r} is unreadable: "
                          f"{exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(config_file)!r} is not UTF-8 TOML text (byte "
                          f"{raw[exc.start]:#04x} at offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file}: syntax error: {exc}") from None


def _file_values(config_file):
    """``(preset, fields)`` of a TOML configuration file.

    The fields stand at top level or in a ``[core]`` table (or both, each field once); a
    ``preset`` key, at top level or in ``[core]``, names the base. Any other key is an error.
    """
    data = _read_toml(config_file)
    names = {f.name for f in dataclasses.fields(CoreConfig)}
    core = data.pop("core", {})
    if not isinstance(core, dict):
        raise ConfigError(f"{config_file}: core must be a table ([core]), not {core!r}")
    presets = [t.pop("preset") for t in (data, core) if "preset" in t]
    if len(presets) == 2 and presets[0] != presets[1]:
        raise ConfigError(f"{config_file}: preset is given twice ({presets[0]!r} at top level, "
                          f"{presets[1]!r} in [core])")
    for where, table in (("at top level", data), ("in [core]", core)):
        unknown = sorted(set(table) - names)
        if unknown:
            raise ConfigError(f"{config_file}: unknown key {unknown[0]!r} {where} (known: "
                              f"preset, core, {', '.join(sorted(names))})")
    twice = sorted(set(data) & set(core))
    if twice:
        raise ConfigError(f"{config_file}: {twice[0]} is given both at top level and in [core]")
    file_preset = presets[0] if presets else None
    if file_preset is not None and not isinstance(file_preset, str):
        raise ConfigError(f"{config_file}: preset must be a name (a string), not "
                          f"{file_preset!r}")
    return file_preset, {**data, **core}


def load_config(preset_name=None, config_file=None, sets=(), base=None):
    """Build a :class:`CoreConfig` from a preset, a TOML file and ``KEY=VALUE`` overrides.

    The TOML file holds the fields at top level or in a ``[core]`` table, and may name a base
    ``preset`` (at top level or in ``[core]``); unknown keys are errors. Later sources override
    earlier ones: preset (or ``base``, a ``CoreConfig`` used when no preset is named), file,
    then ``sets`` in order.
    """
    values = {}
    if config_file is not None:
        file_preset, file_values = _file_values(config_file)
        if file_preset is not None:
            if preset_name is not None and preset_name != file_preset:
                raise ConfigError(f"--preset {preset_name} contradicts preset = "
                                  f"{file_preset!r} in {config_file}")
            preset_name = file_preset
        values.update(file_values)
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, not {item!r}")
        values[key] = _coerce(key, text)
    if preset_name is not None:
        return preset(preset_name).replace(**values)
    if base is not None:
        return base.replace(**values)
    names = {f.name for f in dataclasses.fields(CoreConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown configuration key {unknown[0]!r} "
                          f"(known: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(CoreConfig)
               if f.name not in values and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"the configuration lacks {', '.join(missing)} (or name a preset)")
    return CoreConfig(**values)
