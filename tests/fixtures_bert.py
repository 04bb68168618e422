"""Shared fixtures of the model and CLI tests: a tiny random BERT and the real MiniLM."""

import pytest

from bertcore.testing import make_tiny_checkpoint

TINY_CALIBRATION = [
    "the quick brown fox jumps over the lazy dog .",
    "a man is playing a guitar on the street .",
    "the dog runs in the park with a red ball",
    "she is reading a new book in the house",
    "they eat food and drink water at night",
    "it was a big happy city by the river",
]
TINY_EVAL = ["a woman plays music on the beach", "the old car is fast", "we walk in the rain"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dir):
    from bertcore.checkpoint import load_checkpoint
    return load_checkpoint(tiny_dir)


@pytest.fixture(scope="session")
def tiny_int(tiny_ckpt):
    from bertcore.quant.model import quantize
    return quantize(tiny_ckpt, TINY_CALIBRATION)


@pytest.fixture(scope="session")
def minilm_ckpt():
    from bertcore.checkpoint import load_checkpoint
    return load_checkpoint()


@pytest.fixture(scope="session")
def minilm_int(minilm_ckpt):
    from bertcore.cli import default_calibration_texts
    from bertcore.quant.model import quantize
    return quantize(minilm_ckpt, default_calibration_texts())
