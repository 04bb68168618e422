"""Sentence embeddings through the float model, the integer reference, or the simulated RTL."""

import numpy as np
import torch

from .checkpoint import BertError, load_checkpoint
from .quant.floatref import mean_pool

__all__ = ["embed_texts", "float_embeddings"]


def float_embeddings(ckpt, texts):
    """Mean-pooled, L2-normalized embeddings of the transformers ``BertModel`` (float32)."""
    model = ckpt.float_model()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([ckpt.tokenizer.encode(t)])
            out.append(mean_pool(model(ids).last_hidden_state[0]).numpy())
    return np.stack(out).astype(np.float32)


def embed_texts(texts, *, backend, quantized=None, model=None, simulator="verilator"):
    """Embeddings ``[N, hidden]`` (float32, input order kept) of ``texts`` with ``backend``.

    ``backend="float"`` runs the float checkpoint ``model`` (or, with ``quantized``, the float
    model the artifact came from); ``"int"`` runs the integer reference of the artifact.
    """
    if not texts:
        raise BertError("no input texts")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise BertError("empty input text")
    if backend == "float":
        if model is None:
            from .quant.artifact import load_artifact
            model = load_artifact(quantized).source
        return float_embeddings(load_checkpoint(model), texts)
    if backend not in ("int", "rtl"):
        raise BertError(f"unknown backend {backend!r}")
    from .quant.artifact import load_artifact
    qm = load_artifact(quantized)
    if backend == "rtl":
        return rtl_embeddings(qm, texts, simulator=simulator)[0]
    out = [qm.sentence_embedding(qm.encode_text(t)).numpy() for t in texts]
    return np.stack(out).astype(np.float32)


def preset_for(shape):
    """The name and config of the core preset that runs a model of ``shape``."""
    from .config import PRESETS
    for name, cfg in PRESETS.items():
        if (cfg.hidden, cfg.heads, cfg.ffn, cfg.layers) == (shape.hidden, shape.heads, shape.ffn,
                                                            shape.layers):
            return name, cfg
    raise BertError(f"no core preset runs this model (hidden={shape.hidden}, heads={shape.heads}, "
                    f"ffn={shape.ffn}, layers={shape.layers})")


def rtl_embeddings(qm, texts, *, simulator="verilator", config=None, progress=lambda m: None):
    """Embeddings through the simulated encoder core (the host embeds, pools and normalizes).

    Returns ``(embeddings, info)``: ``info`` has the core's cycles per sentence, the build and
    simulation wall times, and the int8 outputs of the core per sentence.
    """
    from .core.image import pack_activations, pack_parameter_image, unpack_activations
    from .rtlsim import CoreSimulator
    if (qm.opts.prob_bits, qm.opts.prob_scale) != (8, "fixed"):
        raise BertError(f"the core computes uint8 attention probabilities at scale 2**-8; this "
                        f"model was quantized with prob_bits={qm.opts.prob_bits}, "
                        f"prob_scale={qm.opts.prob_scale!r} (use --backend int)")
    if config is None:
        _, config = preset_for(qm.shape)
    xs = []
    for t in texts:
        ids = qm.encode_text(t)
        if len(ids) > config.max_seq:
            raise BertError(f"a text has {len(ids)} tokens; the core holds at most "
                            f"{config.max_seq}")
        xs.append(qm.embed_int(ids))
    image = pack_parameter_image(qm, config)
    packets = [(pack_activations(x, config), x.shape[0]) for x in xs]
    sim = CoreSimulator(config, simulator)
    res = sim.run(image, packets, progress=progress)
    outs, emb = [], []
    for x, run in zip(xs, res.runs):
        if run["error"]:
            raise BertError("the simulated core raised its error flag")
        y = unpack_activations(run["out"], x.shape[0], config)
        outs.append(y)
        emb.append(mean_pool(qm.dequantize(y)).numpy())
    info = {"cycles": [r["cycles"] for r in res.runs], "build_s": res.build_s,
            "sim_s": res.sim_s, "outputs": outs, "sim_cycles": res.total_cycles}
    return np.stack(emb).astype(np.float32), info
