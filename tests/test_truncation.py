"""Truncation and pooling: the float backend is sentence-transformers' ``encode``, the integer
reference truncates the same way, and the stored artifact keeps the truncation length."""

import numpy as np
import pytest
import torch

from bertcore.checkpoint import BertError, load_checkpoint
from bertcore.quant.artifact import load_artifact, save_artifact
from bertcore.quant.model import quantize

from fixtures_bert import TINY_CALIBRATION, minilm_ckpt, minilm_int, tiny_dir  # noqa: F401

PARAGRAPH = (
    "The committee met on Tuesday to review the budget, and after a long debate about the cost of "
    "the new bridge it agreed to postpone the decision until the engineers have finished their "
    "survey of the riverbed. Meanwhile the old ferry keeps running twice an hour, although the "
    "ferryman says the engine will not last another winter. ")
TEXTS = [
    "A man is riding a horse along the beach.",
    "Set the timeout to thirty seconds before retrying the request.",
    PARAGRAPH,
    PARAGRAPH * 6,    # about 450 tokens: longer than all-MiniLM-L6-v2's max_seq_length (256)
]


def test_minilm_truncates_like_sentence_transformers(minilm_ckpt):
    assert minilm_ckpt.max_seq_length == 256      # sentence_bert_config.json of the checkpoint
    ids = minilm_ckpt.tokenizer.encode(TEXTS[-1])
    assert len(ids) == 256
    assert ids[0] == minilm_ckpt.tokenizer._tok.token_to_id("[CLS]")
    assert ids[-1] == minilm_ckpt.tokenizer._tok.token_to_id("[SEP]")


def test_float_backend_equals_sentence_transformers(minilm_ckpt):
    """``embed --backend float`` is sentence-transformers' ``encode`` (truncation, mean pooling,
    normalization), on every text including one longer than 256 tokens."""
    import sentence_transformers as st      # pinned in the dev extras: never a skip
    from bertcore.embed import embed_texts
    ref = st.SentenceTransformer(str(minilm_ckpt.path), device="cpu", local_files_only=True)
    assert ref.max_seq_length == minilm_ckpt.max_seq_length
    with torch.no_grad():
        want = ref.encode(TEXTS, batch_size=1, convert_to_numpy=True, normalize_embeddings=False)
    got = embed_texts(TEXTS, backend="float", model=minilm_ckpt.path)
    cos = (want.astype(np.float64) * got.astype(np.float64)).sum(1) / (
        np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() >= 0.99999, cos
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_int_backend_truncates_like_the_float_backend(tmp_path, minilm_int):
    ids = minilm_int.encode_text(TEXTS[-1])
    assert len(ids) == 256
    back = load_artifact(save_artifact(minilm_int, tmp_path / "m.safetensors"))
    assert back.encode_text(TEXTS[-1]) == ids
    assert back.tokenizer.max_length == 256


def test_sentence_bert_config_sets_the_truncation(tmp_path, tiny_dir):
    import shutil
    d = tmp_path / "tiny"
    shutil.copytree(tiny_dir, d)
    assert load_checkpoint(d).max_seq_length == 64          # max_position_embeddings
    (d / "sentence_bert_config.json").write_text('{"max_seq_length": 8}')
    ckpt = load_checkpoint(d)
    assert ckpt.max_seq_length == 8
    assert len(ckpt.tokenizer.encode("the dog runs in the park with a red ball")) == 8
    qm = quantize(ckpt, TINY_CALIBRATION + ["the dog runs", "a red car"])   # 2 texts fit
    back = load_artifact(save_artifact(qm, tmp_path / "t.safetensors"))
    assert len(back.encode_text("the dog runs in the park with a red ball")) == 8
    (d / "sentence_bert_config.json").write_text('{"max_seq_len": 8}')
    with pytest.raises(BertError, match="sentence-transformers config"):
        load_checkpoint(d)


def test_every_backend_truncates_with_one_line(capsys, tmp_path, tiny_dir):  # noqa: F811
    """``embed`` truncates a text longer than the model's limit the same way on every backend
    (``bertcore.embed.token_ids``) and says so in one line on stderr; the simulated core then
    runs the truncated text bit-identically to the integer reference."""
    import shutil
    from bertcore.cli import main
    d = tmp_path / "tiny16"
    shutil.copytree(tiny_dir, d)
    (d / "sentence_bert_config.json").write_text('{"max_seq_length": 16}')   # the tiny core's
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(TINY_CALIBRATION) + "\n")
    art = tmp_path / "t.safetensors"
    assert main(["quantize", "--model", str(d), "--calibration", str(cal), "-o", str(art)]) == 0
    capsys.readouterr()
    texts = ["the dog runs", " ".join(["the dog runs in the park with a red ball"] * 3),
             "a man is playing a guitar on the street"]
    out = {}
    for backend in ("float", "int", "rtl"):
        path = tmp_path / f"{backend}.npy"
        assert main(["embed", "--quantized", str(art), "--backend", backend, *texts,
                     "-o", str(path)]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["bertcore: 1 of 3 texts was longer than 16 tokens and truncated to 16 "
                       "(as sentence-transformers does)"], (backend, err)
        out[backend] = np.load(path)
    assert np.array_equal(out["rtl"], out["int"])
    assert ((out["int"] * out["float"]).sum(1) > 0.95).all()
