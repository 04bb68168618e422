"""`bertcore.SentenceEncoder`: the Python API routes to the code of `bertcore embed`."""

import re

import numpy as np
import pytest

import bertcore
from bertcore.checkpoint import BertError
from bertcore.embed import embed_texts

from fixtures_bert import TINY_EVAL, tiny_ckpt, tiny_dir, tiny_int  # noqa: F401


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_int):
    from bertcore.quant.artifact import save_artifact
    path = tmp_path_factory.mktemp("api") / "tiny.safetensors"
    save_artifact(tiny_int, path)
    return path


@pytest.mark.parametrize("backend", ["int", "float"])
def test_encode_equals_embed(artifact, backend):
    enc = bertcore.SentenceEncoder(artifact, backend=backend)
    emb = enc.encode(TINY_EVAL)
    assert emb.dtype == np.float32 and emb.shape == (len(TINY_EVAL), 32)
    assert enc.get_sentence_embedding_dimension() == enc.dimension == 32
    assert np.array_equal(emb, embed_texts(TINY_EVAL, backend=backend, quantized=artifact))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
    # one string gives one vector, as sentence-transformers; a tuple or generator works too
    assert np.array_equal(enc.encode(TINY_EVAL[1]), emb[1])
    assert np.array_equal(enc.encode(t for t in TINY_EVAL), emb)
    assert enc.encode([]).shape == (0, 32)


def test_int_close_to_float(artifact):
    a = bertcore.SentenceEncoder(artifact, backend="int").encode(TINY_EVAL)
    b = bertcore.SentenceEncoder(artifact, backend="float").encode(TINY_EVAL)
    assert (a * b).sum(1).min() > 0.98


def test_bad_input(artifact, tmp_path):
    with pytest.raises(BertError, match="unknown backend 'gpu'"):
        bertcore.SentenceEncoder(artifact, backend="gpu")
    with pytest.raises(BertError, match="does not exist"):
        bertcore.SentenceEncoder(tmp_path / "none.safetensors")
    with pytest.raises(BertError, match="needs port="):
        bertcore.SentenceEncoder(artifact, backend="board")
    with pytest.raises(BertError, match="empty input text"):
        bertcore.SentenceEncoder(artifact).encode(["ok", " "])


def test_board_backend_against_fake_board(artifact):
    """The board backend over pyserial on a pty (the frame-level fake board of
    test_board_uart.py): bit-identical to the int backend."""
    from bertcore.config import preset
    from test_board_uart import FakeBoard
    board = FakeBoard(preset("tiny"))
    try:
        enc = bertcore.SentenceEncoder(artifact, backend="board", port=board.port)
        emb = enc.encode(TINY_EVAL[:2])
        assert np.array_equal(emb, bertcore.SentenceEncoder(artifact).encode(TINY_EVAL[:2]))
        # close() releases the port it opened; the next call opens it again
        port = enc._link.port
        enc.close()
        assert not port.is_open and enc._link is None
        with enc:
            assert np.array_equal(enc.encode(TINY_EVAL[:2]), emb)
            port = enc._link.port
        assert not port.is_open
    finally:
        board.close()


@pytest.mark.slow
def test_rtl_backend(artifact):
    """The emitted Verilog in Verilator (builds the tiny core: about a minute)."""
    enc = bertcore.SentenceEncoder(artifact, backend="rtl")
    ref = bertcore.SentenceEncoder(artifact).encode(TINY_EVAL[:2])
    assert np.array_equal(enc.encode(TINY_EVAL[:2]), ref)


@pytest.mark.parametrize("call, message", [
    (lambda a: bertcore.SentenceEncoder(None), "artifact must be the path"),
    (lambda a: bertcore.SentenceEncoder(5), "artifact must be the path"),
    (lambda a: bertcore.SentenceEncoder(""), "artifact must be the path"),
    (lambda a: bertcore.SentenceEncoder(a, config="tiny"), "config must be a CoreConfig"),
    (lambda a: bertcore.SentenceEncoder(a, backend="board", port=5), "port must be"),
    (lambda a: bertcore.SentenceEncoder(a, backend="board", port="loop://", baud=-1),
     "baud must be a positive integer"),
    (lambda a: bertcore.SentenceEncoder(a).encode(None), "not NoneType"),
    (lambda a: bertcore.SentenceEncoder(a).encode(5), "not int"),
    (lambda a: bertcore.SentenceEncoder(a).encode(b"bytes"), "not bytes"),
    (lambda a: bertcore.SentenceEncoder(a).encode(np.array("x")), "not ndarray"),
    (lambda a: bertcore.SentenceEncoder(a).encode(["ok", None]), "text 1 is NoneType"),
    (lambda a: bertcore.SentenceEncoder(a).encode(["ok", "\udcff"]),
     "text 1 is not valid Unicode"),
    (lambda a: bertcore.SentenceEncoder(a, backend="float").encode(["\ud800"]),
     "not valid Unicode"),
    (lambda a: bertcore.SentenceEncoder(a, backend="board", port="socket://nohost")
     .encode(["a dog"]), "a socket URL is socket://HOST:PORT"),
    (lambda a: bertcore.SentenceEncoder(a, backend="board", port="loop://",
                                        config=bertcore.config.preset("minilm"))
     .encode(["a dog"]), "the model has hidden=32"),
    (lambda a: embed_texts(["a dog"], backend="int"), "backend 'int' needs quantized="),
    (lambda a: embed_texts(["a dog"], backend="float"), "backend 'float' needs model="),
    (lambda a: embed_texts(["a " * 500], backend="int", quantized=a, warn=5),
     "warn must be a function"),
], ids=["artifact-None", "artifact-int", "artifact-empty", "config-str", "port-int",
        "baud-negative", "texts-None", "texts-int", "texts-bytes", "texts-0d-array",
        "text-None", "text-escaped-byte", "text-lone-surrogate", "board-bad-url",
        "board-config-mismatch", "int-without-artifact", "float-without-model", "warn-int"])
def test_bad_arguments_raise_bert_error(artifact, call, message):
    """Found by an independent probe of the API: each was a TypeError, AttributeError,
    ValueError, ImageError or SerialException from deep inside."""
    with pytest.raises(BertError, match=re.escape(message)):
        call(artifact)


def test_embed_texts_takes_a_string_generator_or_array(artifact):
    """One string is one text (it was one text per character); a generator is read once (it
    was used up by the checks); a numpy array of strings works."""
    emb = embed_texts(TINY_EVAL, backend="int", quantized=artifact)
    assert np.array_equal(embed_texts(TINY_EVAL[0], backend="int", quantized=artifact),
                          emb[:1])
    assert np.array_equal(embed_texts((t for t in TINY_EVAL), backend="int",
                                      quantized=artifact), emb)
    assert np.array_equal(embed_texts(np.array(TINY_EVAL), backend="int", quantized=artifact),
                          emb)


def _edited_checkpoint(src, dst, **config):
    import json
    import shutil
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("config, message", [
    ({"num_hidden_layers": 1}, "the weights hold 2 layers, config.json's num_hidden_layers "
                               "says 1"),
    ({"num_hidden_layers": 0}, "num_hidden_layers is 0, not a positive size"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0"),
    ({"layer_norm_eps": float("nan")}, "layer_norm_eps nan is not a small positive number"),
])
def test_checkpoint_config_against_weights(tmp_path, tiny_dir, config, message):
    """A config.json that contradicts the weights: a layer fewer was loaded and run without
    it, NaN eps gave NaN embeddings, 0 heads a ZeroDivisionError."""
    from bertcore.checkpoint import load_checkpoint
    bad = _edited_checkpoint(tiny_dir, tmp_path / "m", **config)
    with pytest.raises(BertError, match=message):
        load_checkpoint(bad)


@pytest.mark.parametrize("max_length, message", [
    (-5, "max_length must be a positive integer"), ("x", "max_length must be"),
    (2.5, "max_length must be"), (0, "max_length must be"),
    (10 ** 6, "past the model's 64 positions"),
])
def test_checkpoint_max_length_checked(tiny_dir, max_length, message):
    from bertcore.checkpoint import load_checkpoint
    with pytest.raises(BertError, match=message):
        load_checkpoint(tiny_dir, max_length=max_length)


def test_pack_activations_refuses_floats():
    """Float activations were cut to integers without a word."""
    import torch
    from bertcore.config import preset
    from bertcore.core.image import ImageError, pack_activations
    with pytest.raises(ImageError, match="must be integers"):
        pack_activations(torch.zeros(2, 32) + 0.5, preset("tiny"))
    with pytest.raises(ImageError, match="must be an int8 tensor"):
        pack_activations(None, preset("tiny"))


def test_image_functions_check_their_arguments():
    """pack_parameter_image, pack_activations and unpack_activations raised AttributeError,
    RuntimeError or OverflowError for arguments of the wrong kind."""
    from bertcore.config import preset
    from bertcore.core.image import (ImageError, pack_activations, pack_parameter_image,
                                     unpack_activations)
    cfg = preset("tiny")
    for call, message in (
            (lambda: pack_parameter_image(None, cfg), "must be an IntBert"),
            (lambda: pack_parameter_image("tiny.safetensors", cfg), "must be an IntBert"),
            (lambda: pack_activations([[0] * 32], None), "config must be a CoreConfig"),
            (lambda: unpack_activations([0] * 16, -1, cfg), "positive number of rows"),
            (lambda: unpack_activations([0] * 16, 1.5, cfg), "positive number of rows"),
            (lambda: unpack_activations([-1] * 16, 1, cfg), "bus words must lie in")):
        with pytest.raises(ImageError, match=message):
            call()
    words = pack_activations([[1] * 32], cfg)
    assert unpack_activations(words, np.int64(1), cfg).tolist() == [[1] * 32]
