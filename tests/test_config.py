"""CoreConfig validation and presets."""

import pytest

from bertcore.config import PRESETS, ConfigError, CoreConfig, preset
from bertcore.testing import make_tiny_checkpoint


def test_presets():
    assert preset("minilm").hidden == 384 and preset("minilm").head_dim == 32
    assert preset("minilm").array_rows == preset("minilm").array_cols == 16
    assert preset("bert-base").max_seq == 512 and preset("bert-base").layers == 12
    assert set(PRESETS) >= {"tiny", "minilm", "bert-base"}
    with pytest.raises(ConfigError, match=r"unknown preset 'huge' \(known: tiny"):
        preset("huge")


def test_tiny_preset_matches_tiny_checkpoint(tmp_path):
    from bertcore.checkpoint import load_checkpoint
    ck = load_checkpoint(make_tiny_checkpoint(tmp_path / "t"))
    preset("tiny").check_model(ck.shape)
    with pytest.raises(ConfigError, match="the model has hidden=32, the core 384"):
        preset("minilm").check_model(ck.shape)


@pytest.mark.parametrize("changes, message", [
    ({"hidden": 30}, r"hidden \(30\) must be divisible by heads \(4\)"),
    ({"bus_width": 12}, "bus_width must be a multiple of 8, not 12"),
    ({"array_rows": 0}, "array_rows must be at least 1, not 0"),
    ({"max_seq": -3}, "max_seq must be at least 1, not -3"),
    ({"softmax_units": 0}, "softmax_units must be at least 1, not 0"),
    ({"layers": 2.5}, "layers must be an integer, not 2.5"),
    ({"heads": True}, "heads must be an integer, not True"),
    ({"resident": "yes"}, "resident must be true or false, not 'yes'"),
    ({"shared_h": 1}, "shared_h must be true or false, not 1"),
    ({"shared_h": True}, "^shared_h needs gelu_bits 8 \\(an H word as wide as an X word\\), "
                         "not 16$"),
    ({"shared_h": True, "gelu_bits": 8, "ffn": 96},
     "^shared_h needs ffn to be 1, 2 or 4 times hidden, not 96 for hidden 32$"),
    ({"shared_h": True, "gelu_bits": 8, "ffn": 48},
     "^shared_h needs ffn to be 1, 2 or 4 times hidden, not 48 for hidden 32$"),
    ({"max_seq": 100000}, "max_seq must be at most 4096"),
    ({"colour": 3}, "unknown configuration key 'colour'"),
    ({"lut_multipliers": ("gelu", "array")},
     r"lut_multipliers: unknown unit 'array' \(known: requant, gelu, softmax, layernorm\)"),
    ({"lut_multipliers": "gelu"}, "lut_multipliers must be a list of unit names, not 'gelu'"),
    ({"lut_multipliers": 3}, "lut_multipliers must be a list of unit names, not 3"),
    ({"prob_bits": 7}, r"^prob_bits must lie in 8\.\.16, not 7$"),
    ({"prob_bits": 17}, r"^prob_bits must lie in 8\.\.16, not 17$"),
    ({"prob_bits": "16"}, "prob_bits must be an integer, not '16'"),
    ({"gelu_bits": 7}, r"^gelu_bits must lie in 8\.\.16, not 7$"),
    ({"gelu_bits": 17}, r"^gelu_bits must lie in 8\.\.16, not 17$"),
])
def test_bad_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny").replace(**changes)


def test_replace_keeps_valid_values():
    c = preset("tiny").replace(array_rows=3, array_cols=5, resident=True)
    assert (c.array_rows, c.array_cols, c.resident) == (3, 5, True)
    assert CoreConfig(**c.to_dict()) == c


def test_load_config_sources(tmp_path):
    from bertcore.config import load_config
    assert load_config("tiny") == preset("tiny")
    f = tmp_path / "c.toml"
    f.write_text('[core]\npreset = "tiny"\narray_rows = 2\n')
    assert load_config(config_file=f).array_rows == 2
    c = load_config(config_file=f, sets=["array_rows=3", "resident=true", "bus_width=0x40"])
    assert (c.array_rows, c.resident, c.bus_width) == (3, True, 64)
    g = tmp_path / "g.toml"
    g.write_text("\n".join(f"{k} = {list(v) if isinstance(v, tuple) else v}"
                           for k, v in preset("minilm").to_dict().items()
                           if k not in ("resident", "shared_h")) + "\n")
    assert load_config(config_file=g) == preset("minilm")
    h = tmp_path / "h.toml"
    h.write_text('preset = "tiny"\nlut_multipliers = ["softmax", "gelu", "gelu"]\n')
    assert load_config(config_file=h).lut_multipliers == ("gelu", "softmax")
    c = load_config("tiny", sets=["lut_multipliers=softmax, requant"])
    assert c.lut_multipliers == ("requant", "softmax")
    assert (c.multipliers("softmax"), c.multipliers("layernorm")) == ("lut", "dsp")


@pytest.mark.parametrize("kwargs, message", [
    ({"preset_name": "tiny", "sets": ["array_rows"]}, "--set takes KEY=VALUE"),
    ({"preset_name": "tiny", "sets": ["array_rows=four"]}, "array_rows must be an integer, not 'four'"),
    ({"preset_name": "tiny", "sets": ["frequency=100"]}, "unknown configuration key 'frequency'"),
    ({"preset_name": "tiny", "sets": ["heads=5"]}, r"hidden \(32\) must be divisible by heads \(5\)"),
    ({"preset_name": "tiny", "sets": ["resident=maybe"]}, "resident must be true or false"),
    ({"sets": ["hidden=32"]}, "the configuration lacks heads"),
    ({"preset_name": "nano"}, "unknown preset 'nano'"),
])
def test_load_config_errors(kwargs, message):
    from bertcore.config import load_config
    with pytest.raises(ConfigError, match=message):
        load_config(**kwargs)


def test_load_config_file_errors(tmp_path):
    from bertcore.config import load_config
    bad = tmp_path / "bad.toml"
    bad.write_text("array_rows = = 3\n")
    with pytest.raises(ConfigError, match="syntax error"):
        load_config(config_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "none.toml")
    other = tmp_path / "o.toml"
    other.write_text('preset = "minilm"\n')
    with pytest.raises(ConfigError, match="contradicts"):
        load_config("tiny", config_file=other)


def test_board_clock_follows_the_configuration():
    """The SDRAM board builds ``ulx3s-minilm`` at 50 MHz with router2 (its LiteDRAM generated
    for 50 MHz); its default configuration keeps the board's clock;
    ``with_clock`` (``bertcore build --clock``) overrides either."""
    from bertcore.boards.top import BoardTop, board_spec
    board = board_spec("ulx3s-85f-sdram")
    minilm = board_spec("ulx3s-85f-sdram", preset("ulx3s-minilm"))
    assert (board.clock, board.sdram.clock, board.router) == (75e6, 75e6, None)
    assert (minilm.clock, minilm.sdram.clock, minilm.router) == (50e6, 50e6, "router2")
    assert board_spec("ulx3s-85f-sdram", board.config) == board
    assert board_spec("ulx3s-85f-sdram", preset("ulx3s-minilm").replace(max_seq=32)) == board
    top = BoardTop("ulx3s-85f-sdram", preset("ulx3s-minilm"))
    top._MustUse__silence = True            # built only for its spec, never elaborated
    assert top.spec == minilm
    faster = minilm.with_clock(60e6)
    assert (faster.clock, faster.sdram.clock, faster.router) == (60e6, 60e6, "router2")
    assert board_spec("ulx3s-85f", preset("ulx3s-minilm")).clock == 125e6


@pytest.mark.parametrize("field", ["prob_bits", "gelu_bits"])
def test_width_defaults_and_boards(field):
    """16-bit attention probabilities and GELU outputs by default, in the reference and the
    cores; the iCE40 board (16x16 DSPs, 5280 LUTs) states 8 for both, the ``ulx3s-minilm``
    preset 8-bit GELU outputs (its H buffer at 16 bits exceeds the LFE5U-85F's block RAM)."""
    from bertcore.boards.top import BOARDS
    from bertcore.quant.model import QuantOptions
    assert getattr(QuantOptions(), field) == 16
    stated = {("ulx3s-minilm", "gelu_bits"): 8}
    for name, cfg in PRESETS.items():
        assert getattr(cfg, field) == stated.get((name, field), 16), name
    for name, spec in BOARDS.items():
        assert getattr(spec.config, field) == (8 if spec.family == "ice40" else 16), name
