# amaranth: UnusedElaboratable=no
"""Tests of the encoder core: the parameter image, its interpreter and the EncoderCore RTL.

The reference is :meth:`bertcore.quant.model.IntBert.encode_int` on the quantized tiny random
BERT of ``tests/fixtures_bert.py``. The tiny model's score scales (about 4e-6) are finer than
:class:`~bertcore.rtl.softmax.IntSoftmax` accepts (``x0`` is a 16-bit port, scales from about
2.1e-5), so :func:`core_model` re-derives the softmax constants of such layers at a legal scale;
the reference then runs on the same constants, so the comparison stays exact.
"""

import copy

import pytest
import torch

from bertcore.config import preset
from bertcore.core.image import (ImageError, MAGIC, image_beats, image_schedule,
                                 pack_activations, pack_parameter_image, unpack_activations)
from bertcore.core.interp import run_image
from bertcore.quant.kernels import softmax_constants
from bertcore.rtl.softmax import IntSoftmax
from fixtures_bert import TINY_EVAL, tiny_ckpt, tiny_dir, tiny_int  # noqa: F401

TINY = preset("tiny")
#: Finest score scale used for the core tests (IntSoftmax's x0 port: 16 bits).
SOFTMAX_MIN_SCALE = 4e-5


def core_model(int_model):
    """A copy of ``int_model`` whose softmax constants fit IntSoftmax (coarser score scale)."""
    model = copy.copy(int_model)
    model.consts = copy.deepcopy(int_model.consts)
    for lc in model.consts["layers"]:
        try:
            IntSoftmax.check_constants(lc["softmax"])
        except ValueError:
            lc["softmax"] = softmax_constants(max(lc["scales"]["scores"], SOFTMAX_MIN_SCALE))
    return model


@pytest.fixture(scope="module")
def tiny_core(tiny_int):  # noqa: F811
    return core_model(tiny_int)


@pytest.fixture(scope="module")
def tiny_image(tiny_core):
    return pack_parameter_image(tiny_core, TINY)


def tiny_inputs(model, ckpt):
    """Sequence inputs: real sentences plus random int8 rows of lengths 1, 5 and max_seq."""
    gen = torch.Generator().manual_seed(7)
    xs = [model.embed_int(ckpt.tokenizer.encode(s)) for s in TINY_EVAL]
    xs += [torch.randint(-128, 128, (n, TINY.hidden), generator=gen) for n in (1, 5, 16)]
    return xs


# -- Image format and interpreter ----------------------------------------------------------------

def test_image_size_and_header(tiny_image):
    assert len(tiny_image) == image_beats(TINY)
    assert tiny_image[0] == MAGIC                      # 32-bit bus: one header word per beat
    assert tiny_image[3] == len(tiny_image)
    kinds = [v.kind for v in image_schedule(TINY)]
    assert kinds[:2] == ["header", "scalars"] and kinds[-1] == "ln_bias"


def test_interpreter_matches_encode_int(tiny_core, tiny_image, tiny_ckpt):  # noqa: F811
    for x in tiny_inputs(tiny_core, tiny_ckpt):
        assert torch.equal(run_image(tiny_image, x, TINY), tiny_core.encode_int(x))


def test_interpreter_rejects_bad_images(tiny_core, tiny_image):
    x = torch.zeros((2, TINY.hidden), dtype=torch.int64)
    with pytest.raises(ImageError, match="beats"):
        run_image(tiny_image[:-1], x, TINY)
    with pytest.raises(ImageError, match="another core configuration"):
        run_image(tiny_image, x, TINY.replace(layers=1))
    bad = list(tiny_image)
    bad[0] ^= 1
    with pytest.raises(ImageError, match="bad image header"):
        run_image(bad, x, TINY)


def test_packer_rejects_unfit_models(tiny_int):  # noqa: F811
    with pytest.raises(ImageError, match=r"softmax constant x0"):
        pack_parameter_image(tiny_int, TINY)            # the tiny model's own score scale
    with pytest.raises(ImageError, match=r"the model has hidden=32, the core 64"):
        pack_parameter_image(core_model(tiny_int), TINY.replace(hidden=64))
    with pytest.raises(ImageError, match=r"square array"):
        image_schedule(TINY.replace(array_rows=2))


def test_activation_packing_round_trip():
    gen = torch.Generator().manual_seed(3)
    for n in (1, 3, 16):
        x = torch.randint(-128, 128, (n, TINY.hidden), generator=gen)
        words = pack_activations(x, TINY)
        assert len(words) == n * TINY.hidden // 4
        assert torch.equal(unpack_activations(words, n, TINY), x)
    assert pack_activations(torch.tensor([[1, -1] + [0] * 30]), TINY)[0] == 0xFF01
    with pytest.raises(ImageError, match=r"sequence length must lie in 1\.\.16, not 17"):
        pack_activations(torch.zeros((17, 32), dtype=torch.int64), TINY)
