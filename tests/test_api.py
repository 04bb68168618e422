"""`bertcore.SentenceEncoder`: the Python API routes to the code of `bertcore embed`."""

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
    finally:
        board.close()


@pytest.mark.slow
def test_rtl_backend(artifact):
    """The emitted Verilog in Verilator (builds the tiny core: about a minute)."""
    enc = bertcore.SentenceEncoder(artifact, backend="rtl")
    ref = bertcore.SentenceEncoder(artifact).encode(TINY_EVAL[:2])
    assert np.array_equal(enc.encode(TINY_EVAL[:2]), ref)
