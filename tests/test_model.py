"""The integer BERT reference: float path, quantization, integer-only forward, artifact."""

import math

import numpy as np
import pytest
import torch

from bertcore.checkpoint import BertError, load_checkpoint
from bertcore.quant import kernels as K
from bertcore.quant.artifact import ARTIFACT_VERSION, load_artifact, save_artifact
from bertcore.quant.floatref import float_forward, mean_pool
from bertcore.quant.model import QuantOptions, quantize

from fixtures_bert import TINY_CALIBRATION, TINY_EVAL, minilm_ckpt, minilm_int  # noqa: F401
from fixtures_bert import tiny_ckpt, tiny_dir, tiny_int  # noqa: F401

EVAL_MINILM = [
    "A man is riding a horse along the beach.",
    "The central bank kept interest rates unchanged this quarter.",
    "Where is the nearest train station?",
    "The programmer fixed a bug that crashed the server.",
]


def test_float_forward_matches_transformers(tiny_ckpt):
    model = tiny_ckpt.float_model()
    ids = tiny_ckpt.tokenizer.encode(TINY_EVAL[0])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).last_hidden_state[0].double()
    assert torch.allclose(float_forward(tiny_ckpt, ids), ref, atol=1e-5)


def test_tokenizer_from_vocab_adds_special_tokens(tiny_ckpt):
    ids = tiny_ckpt.tokenizer.encode("the dog")
    assert ids[0] == tiny_ckpt.tokenizer._tok.token_to_id("[CLS]")
    assert ids[-1] == tiny_ckpt.tokenizer._tok.token_to_id("[SEP]")
    assert len(ids) == 4


def test_parameters_are_integers(tiny_int):
    host_floats = {"emb.out_scale", "out_scale"}
    for name, t in tiny_int.t.items():
        if name in host_floats or name.endswith(".out_scale"):
            assert t.dtype == torch.float64, name
            continue
        assert not t.dtype.is_floating_point, f"{name} is {t.dtype}"
    s = tiny_int.shape
    for i in range(s.layers):
        assert tiny_int.t[f"layer.{i}.q.w"].dtype == torch.int8
        assert tiny_int.t[f"layer.{i}.q.w"].abs().max() <= 127
        assert tiny_int.t[f"layer.{i}.ffn2.b"].dtype == torch.int32
        for key in ("q", "o", "ffn1", "ffn2", "res1", "res2", "ln1", "ln2", "gelu"):
            m, e = tiny_int.t[f"layer.{i}.{key}.m"], tiny_int.t[f"layer.{i}.{key}.e"]
            nz = m != 0
            assert ((m[nz].abs() >= 1 << (K.REQ_M_BITS - 2)) & (m.abs() < 1 << (K.REQ_M_BITS - 1))[nz]).all()
            assert ((e >= 1) & (e <= 62)).all(), key


def test_forward_is_int8_and_stateless(tiny_int):
    """int8 outputs that use the range; a forward pass writes no parameter in place and carries
    no state into the next one (the same input after another gives the same output)."""
    params = {name: t.clone() for name, t in tiny_int.t.items()}
    ids = tiny_int.encode_text(TINY_EVAL[1])
    a = tiny_int.forward_ids(ids)
    assert a.dtype == torch.int64
    assert a.shape == (len(ids), tiny_int.shape.hidden)
    assert a.min() >= -128 and a.max() <= 127
    assert a.abs().max() > 8    # the output uses the int8 range, it is not all zeros
    other = tiny_int.forward_ids(tiny_int.encode_text(TINY_EVAL[0]))
    assert other.shape[0] != a.shape[0] or not torch.equal(other, a)
    assert all(torch.equal(tiny_int.t[name], t) for name, t in params.items())
    assert torch.equal(tiny_int.forward_ids(ids), a)


def test_layer_trace_matches_documented_dataflow(tiny_int):
    """The traced intermediates have the widths the hardware is built for."""
    ids = tiny_int.encode_text(TINY_EVAL[0])
    x = tiny_int.embed_int(ids)
    seen = {}
    tiny_int.layer(0, x, trace=lambda n, v: seen.__setitem__(n, v))
    assert seen["probs"].min() >= 0 and seen["probs"].max() < 1 << tiny_int.opts.prob_bits
    for n in ("q", "k", "v", "ctx", "ln1_out", "ln2_out"):
        assert seen[n].min() >= -128 and seen[n].max() <= 127, n
    lo, hi = K.int_range(tiny_int.opts.gelu_bits)
    assert seen["gelu"].min() >= lo and seen["gelu"].max() <= hi
    for n in ("ln1_in", "ln2_in"):
        lo, hi = K.int_range(K.RESIDUAL_BITS)
        assert seen[n].min() >= lo and seen[n].max() <= hi, n
    assert seen["ffn1"].abs().max() <= 1 << 15


def test_tiny_int_tracks_float(tiny_ckpt, tiny_int):
    cos = []
    for t in TINY_EVAL:
        ids = tiny_ckpt.tokenizer.encode(t)
        cos.append(float(mean_pool(float_forward(tiny_ckpt, ids)) @ tiny_int.sentence_embedding(ids)))
    assert min(cos) > 0.98, cos


def test_artifact_roundtrip(tmp_path, tiny_int):
    path = save_artifact(tiny_int, tmp_path / "tiny.safetensors")
    back = load_artifact(path)
    ids = back.encode_text(TINY_EVAL[2])
    assert ids == tiny_int.encode_text(TINY_EVAL[2])
    assert torch.equal(back.forward_ids(ids), tiny_int.forward_ids(ids))
    assert back.shape == tiny_int.shape and back.opts == tiny_int.opts


def test_artifact_of_another_version(tmp_path, tiny_int):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    path = save_artifact(tiny_int, tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["version"] = str(ARTIFACT_VERSION + 1)
    save_file(load_file(str(path)), str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(BertError, match="version"):
        load_artifact(tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BertError, match="unreadable"):
        load_artifact(tmp_path / "c.safetensors")
    with pytest.raises(BertError, match="does not exist"):
        load_artifact(tmp_path / "missing.safetensors")


def test_bad_model_directories(tmp_path, tiny_dir):
    with pytest.raises(BertError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(BertError, match="no config.json"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    with pytest.raises(BertError, match="malformed config.json"):
        load_checkpoint(bad)
    import shutil
    notok = tmp_path / "notok"
    shutil.copytree(tiny_dir, notok)
    (notok / "vocab.txt").unlink()
    with pytest.raises(BertError, match="tokenizer"):
        load_checkpoint(notok)
    weird = tmp_path / "weird"
    shutil.copytree(tiny_dir, weird)
    (weird / "vocab.txt").write_text("hello\nworld\n")
    with pytest.raises(BertError, match="unknown tokenizer"):
        load_checkpoint(weird)
    noweights = tmp_path / "noweights"
    shutil.copytree(tiny_dir, noweights)
    (noweights / "model.safetensors").unlink()
    with pytest.raises(BertError, match="no weights"):
        load_checkpoint(noweights)


def test_empty_calibration(tiny_ckpt):
    with pytest.raises(BertError, match="calibration set is empty"):
        quantize(tiny_ckpt, ["", "   "])


def test_bad_options():
    with pytest.raises(ValueError, match="act_granularity must be"):
        QuantOptions(act_granularity="row")
    with pytest.raises(ValueError, match="percentile must lie"):
        QuantOptions(percentile=10)


def test_per_channel_scales_fold_into_weights(tiny_ckpt):
    """Both granularities give a working integer model (folding per-channel scales into the
    weights keeps the GEMM integer). The tiny random model has no outlier channels, so per-tensor
    is as good here; per-channel's gain on MiniLM (0.977 -> 0.994 mean cosine) is measured by
    bench/fidelity.py."""
    ids = tiny_ckpt.tokenizer.encode(TINY_EVAL[0])
    ref = mean_pool(float_forward(tiny_ckpt, ids))
    cos = {}
    for g in ("tensor", "channel"):
        m = quantize(tiny_ckpt, TINY_CALIBRATION, QuantOptions(act_granularity=g))
        cos[g] = float(ref @ m.sentence_embedding(ids))
    assert cos["channel"] > 0.98 and cos["tensor"] > 0.95, cos


def test_minilm_int_agrees_with_float(minilm_ckpt, minilm_int):
    """The real model: int embeddings of unseen sentences stay close to the float ones."""
    cos = []
    for t in EVAL_MINILM:
        ids = minilm_ckpt.tokenizer.encode(t)
        cos.append(float(mean_pool(float_forward(minilm_ckpt, ids, dtype=torch.float32))
                         @ minilm_int.sentence_embedding(ids)))
    assert np.mean(cos) >= 0.99 and min(cos) >= 0.97, cos


def test_gelu_input_scale_fits_the_hardware(tiny_ckpt):
    """A layer with tiny FFN1 outputs still gets a GELU constant b that fits GELU_IN_BITS + 1."""
    import dataclasses
    from bertcore.quant.model import GELU_IN_BITS, GELU_MIN_SCALE
    w = dict(tiny_ckpt.weights)
    for key in ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.intermediate.dense.bias"):
        w[key] = w[key] * 1e-4
    small = dataclasses.replace(tiny_ckpt, weights=w)
    m = quantize(small, TINY_CALIBRATION)
    lc = m.consts["layers"][0]
    assert lc["scales"]["gelu_in"] == GELU_MIN_SCALE
    for layer in m.consts["layers"]:
        assert -(1 << GELU_IN_BITS) <= layer["gelu"]["b"] < 0
    ids = m.encode_text(TINY_EVAL[0])
    assert m.forward_ids(ids).abs().max() > 8


def test_score_scale_fits_the_softmax_hardware(tiny_int):
    """Tiny random Q/K ranges would give x0 below -2**15: Q and K are coarsened to fit."""
    from bertcore.rtl.softmax import IntSoftmax
    for i, lc in enumerate(tiny_int.consts["layers"]):
        assert lc["scales"]["scores"] >= K.SOFTMAX_MIN_SCALE
        assert lc["softmax"]["x0"] >= -(1 << (K.SOFTMAX_X0_BITS - 1))
        IntSoftmax.check_constants(lc["softmax"])


def test_probability_options_change_only_the_attention(tiny_ckpt):
    """prob_bits / prob_scale: integer-only forward, probabilities within their width, close to
    the float model, and recorded in the artifact's options."""
    ids = tiny_ckpt.tokenizer.encode(TINY_EVAL[0])
    ref = mean_pool(float_forward(tiny_ckpt, ids))
    for opts in (QuantOptions(prob_bits=16), QuantOptions(prob_scale="row")):
        m = quantize(tiny_ckpt, TINY_CALIBRATION, opts)
        seen = {}
        x = m.embed_int(ids)
        m.layer(0, x, trace=lambda n, v: seen.__setitem__(n, v))
        assert 0 <= int(seen["probs"].min()) and int(seen["probs"].max()) < 1 << opts.prob_bits
        assert float(ref @ m.sentence_embedding(ids)) > 0.98
        assert m.manifest()["options"]["prob_bits"] == opts.prob_bits
    with pytest.raises(ValueError):
        QuantOptions(prob_bits=7)
    with pytest.raises(ValueError):
        QuantOptions(prob_scale="float")


def test_gelu_output_range_is_floored_by_its_input_range(tiny_ckpt):
    """gelu_floor: every GELU output channel's range is at least gelu_floor x the channel's
    calibrated GELU-input range (so channels silent on the calibration texts do not clip)."""
    from bertcore.quant.model import _qmax, calibrate
    opts = QuantOptions(gelu_granularity="channel")
    cal = calibrate(tiny_ckpt, TINY_CALIBRATION, opts.pack_tokens, opts.pack_rounds)
    m = quantize(tiny_ckpt, TINY_CALIBRATION, opts)
    off = quantize(tiny_ckpt, TINY_CALIBRATION,
                   QuantOptions(gelu_floor=0.0, gelu_granularity="channel"))
    for i in range(tiny_ckpt.shape.layers):
        rng = m.t[f"layer.{i}.gelu.out_scale"] * _qmax(opts.gelu_bits)
        want = opts.act_margin * torch.maximum(cal.chan_max[f"{i}.gelu"].double(),
                                               opts.gelu_floor * cal.chan_max[f"{i}.ffn1"].double())
        assert torch.allclose(rng, want.clamp_min(float(want.max()) * 1e-3), rtol=1e-6)
        assert bool((rng >= off.t[f"layer.{i}.gelu.out_scale"] * _qmax(opts.gelu_bits)
                     * (1 - 1e-9)).all())
    with pytest.raises(ValueError, match="gelu_floor"):
        QuantOptions(gelu_floor=-1)


def test_gelu_output_granularity(tiny_ckpt):
    """gelu_granularity: "tensor" gives every GELU output channel the widest channel's scale
    (the one "channel" gives that channel); "auto" is "tensor" from 12 bits up and follows
    act_granularity below. The arithmetic is unchanged, so both forward passes stay integer."""
    from bertcore.quant.model import _qmax
    ids = tiny_ckpt.tokenizer.encode(TINY_EVAL[0])
    ref = mean_pool(float_forward(tiny_ckpt, ids))
    chan = quantize(tiny_ckpt, TINY_CALIBRATION, QuantOptions(gelu_granularity="channel"))
    tens = quantize(tiny_ckpt, TINY_CALIBRATION, QuantOptions(gelu_granularity="tensor"))
    for i in range(tiny_ckpt.shape.layers):
        sc, st = chan.t[f"layer.{i}.gelu.out_scale"], tens.t[f"layer.{i}.gelu.out_scale"]
        assert not torch.equal(sc, sc.max().expand_as(sc))     # the channels differ
        assert torch.equal(st, sc.max().expand_as(st))
        assert len(set(tens.t[f"layer.{i}.gelu.e"].tolist())) == 1
        assert torch.equal(tens.t[f"layer.{i}.ln1.out_scale"], chan.t[f"layer.{i}.ln1.out_scale"])
        seen = {}
        tens.layer(i, tens.embed_int(ids), trace=lambda n, v: seen.__setitem__(n, v))
        assert int(seen["gelu"].abs().max()) <= _qmax(16)
    for m in (chan, tens):
        assert float(ref @ m.sentence_embedding(ids)) > 0.98
    assert QuantOptions().gelu_scale_granularity() == "tensor"
    assert QuantOptions(gelu_bits=8).gelu_scale_granularity() == "channel"
    assert QuantOptions(gelu_bits=8, act_granularity="tensor").gelu_scale_granularity() == "tensor"
    assert QuantOptions(gelu_bits=16, gelu_granularity="channel").gelu_scale_granularity() == \
        "channel"
    with pytest.raises(ValueError, match="gelu_granularity must be"):
        QuantOptions(gelu_granularity="row")


def test_activation_scale_ratio(tiny_ckpt):
    """act_scale_ratio: no per-channel activation scale is finer than the widest one's divided
    by the ratio."""
    m = quantize(tiny_ckpt, TINY_CALIBRATION, QuantOptions(act_scale_ratio=2.0))
    for key in ["emb.out_scale"] + [f"layer.{i}.{n}.out_scale"
                                    for i in range(tiny_ckpt.shape.layers) for n in ("ln1", "ln2")]:
        s = m.t[key]
        assert float(s.min()) >= float(s.max()) / 2.0 * (1 - 1e-12), key
    with pytest.raises(ValueError, match="act_scale_ratio"):
        QuantOptions(act_scale_ratio=0.5)


def test_gelu_output_options(tiny_ckpt):
    """gelu_bits / gelu_zero_point: GELU outputs within their width, the offset folded into FFN2's
    bias exactly, embeddings close to float."""
    from bertcore.quant.model import GELU_OUT_MIN, _quant_linear
    ids = tiny_ckpt.tokenizer.encode(TINY_EVAL[0])
    ref = mean_pool(float_forward(tiny_ckpt, ids))
    assert QuantOptions().gelu_bits == 16                  # the default
    for opts in (QuantOptions(gelu_bits=8), QuantOptions(gelu_zero_point=True),
                 QuantOptions(gelu_bits=12, gelu_zero_point=True)):
        m = quantize(tiny_ckpt, TINY_CALIBRATION, opts)
        seen = {}
        x = m.embed_int(ids)
        m.layer(0, x, trace=lambda n, v: seen.__setitem__(n, v))
        h, lo, hi = seen["gelu"], *K.int_range(opts.gelu_bits)
        assert lo <= int(h.min()) and int(h.max()) <= hi
        z = m.t.get("layer.0.gelu.z")
        assert (z is not None) == opts.gelu_zero_point
        if z is not None:
            # GELU's lowest value (-0.171) sits at the bottom code: the negative codes are used
            s = m.t["layer.0.gelu.out_scale"]
            assert bool(((z - torch.round(GELU_OUT_MIN / s)) - lo).abs().le(1).all())
            # FFN2's bias is the plain int32 bias minus sum_c W[j, c] * z[c], so the GEMM on h
            # accumulates what it would on h - z
            p = "encoder.layer.0.output.dense."
            wi, bi, _ = _quant_linear(tiny_ckpt.weights[p + "weight"],
                                      tiny_ckpt.weights[p + "bias"], s)
            assert torch.equal(m.t["layer.0.ffn2.w"], wi)
            assert torch.equal(m.t["layer.0.ffn2.b"].to(torch.int64),
                               bi.to(torch.int64) - wi.to(torch.int64) @ z)
            assert bool((z > lo).all())
            # the symmetric range [-hi, hi] becomes [-0.171, hi] over all 2**bits codes
            sym = quantize(tiny_ckpt, TINY_CALIBRATION, QuantOptions(gelu_bits=opts.gelu_bits))
            top = sym.t["layer.0.gelu.out_scale"] * hi
            assert torch.allclose(s, (top + GELU_OUT_MIN) / ((1 << opts.gelu_bits) - 1))
        assert float(ref @ m.sentence_embedding(ids)) > 0.98
        assert m.manifest()["options"]["gelu_bits"] == opts.gelu_bits
    with pytest.raises(ValueError, match="gelu_bits"):
        QuantOptions(gelu_bits=17)
    from bertcore.core.image import ImageError
    from bertcore.embed import rtl_embeddings
    with pytest.raises(ImageError, match="gelu_zero_point=True; the core computes GELU outputs "
                       "without an offset"):                # the core does not run it
        rtl_embeddings(m, [TINY_EVAL[0]])


def test_length_aware_calibration_packs_the_texts(tiny_ckpt):
    """pack_tokens joins the calibration texts into longer sequences (in pack_rounds orders)."""
    from bertcore.quant.model import _packed, calibrate
    seqs = [tiny_ckpt.tokenizer.encode(t) for t in TINY_CALIBRATION]
    packs = _packed(seqs, 24, rounds=2)
    assert packs and all(len(p) <= 24 and len(p) > max(map(len, seqs)) for p in packs)
    assert all(p[0] == seqs[0][0] and p[-1] == seqs[0][-1] for p in packs)
    one = calibrate(tiny_ckpt, TINY_CALIBRATION)
    packed = calibrate(tiny_ckpt, TINY_CALIBRATION, pack_tokens=64, pack_rounds=3)
    assert packed.texts == one.texts == len(TINY_CALIBRATION)
    assert packed.tokens > one.tokens
    assert all(bool((packed.chan_max[k] >= one.chan_max[k]).all()) for k in one.chan_max)
