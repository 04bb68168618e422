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
    ({"layers": 2.5}, "layers must be an integer, not 2.5"),
    ({"heads": True}, "heads must be an integer, not True"),
    ({"resident": "yes"}, "resident must be true or false, not 'yes'"),
    ({"max_seq": 100000}, "max_seq must be at most 4096"),
    ({"colour": 3}, "unknown configuration key 'colour'"),
])
def test_bad_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny").replace(**changes)


def test_replace_keeps_valid_values():
    c = preset("tiny").replace(array_rows=3, array_cols=5, resident=True)
    assert (c.array_rows, c.array_cols, c.resident) == (3, 5, True)
    assert CoreConfig(**c.to_dict()) == c
