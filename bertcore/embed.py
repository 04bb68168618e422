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


def embed_texts(texts, *, backend, quantized=None, model=None, simulator="verilator",
                pack=False):
    """Embeddings ``[N, hidden]`` (float32, input order kept) of ``texts`` with ``backend``.

    ``backend="float"`` runs the float checkpoint ``model`` (or, with ``quantized``, the float
    model the artifact came from); ``"int"`` runs the integer reference of the artifact.
    ``pack`` (``int`` and ``rtl``) packs several texts per run of the core
    (:mod:`bertcore.packing`; the ``int`` backend then runs the packets through the integer
    reference, as the core would): the embeddings do not change.
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
        return rtl_embeddings(qm, texts, simulator=simulator, pack=pack)[0]
    if pack:
        from .packing import reference_runner
        _, config = preset_for(qm.shape)
        return rtl_embeddings(qm, texts, config=config, pack=True,
                              runner=reference_runner(qm, config))[0]
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


def rtl_embeddings(qm, texts, *, simulator="verilator", config=None, progress=lambda m: None,
                   pack=False, runner=None):
    """Embeddings through the simulated encoder core (the host embeds, pools and normalizes).

    Returns ``(embeddings, info)``: ``info`` has the core's cycles per run, the build and
    simulation wall times, and the int8 outputs of the core per sentence. ``pack`` packs
    several sentences per run (:func:`bertcore.packing.plan_runs`); ``runner`` (a function
    ``runs -> output words per run``, e.g. :func:`bertcore.packing.reference_runner`) replaces
    the simulator.
    """
    from .core.image import pack_parameter_image
    from .packing import plan_runs, split_outputs
    from .rtlsim import CoreSimulator
    if (qm.opts.prob_bits, qm.opts.prob_scale) != (8, "fixed"):
        raise BertError(f"the core computes uint8 attention probabilities at scale 2**-8; this "
                        f"model was quantized with prob_bits={qm.opts.prob_bits}, "
                        f"prob_scale={qm.opts.prob_scale!r} (use --backend int)")
    if (qm.opts.gelu_bits, qm.opts.gelu_zero_point) != (8, False):
        raise BertError(f"the core computes int8 GELU outputs without an offset; this model was "
                        f"quantized with gelu_bits={qm.opts.gelu_bits}, "
                        f"gelu_zero_point={qm.opts.gelu_zero_point} (use --backend int)")
    if config is None:
        _, config = preset_for(qm.shape)
    xs = []
    for t in texts:
        ids = qm.encode_text(t)
        if len(ids) > config.max_seq:
            raise BertError(f"a text has {len(ids)} tokens; the core holds at most "
                            f"{config.max_seq}")
        xs.append(qm.embed_int(ids))
    runs = plan_runs(xs, config, pack=pack)
    info = {"cycles": None, "build_s": 0.0, "sim_s": 0.0, "sim_cycles": None, "runs": len(runs)}
    if runner is not None:
        words = runner(runs)
    elif any(run.table for run in runs):
        raise BertError("packed runs need a core that reads segment tables, which the RTL "
                        "does not do yet: run without packing")
    else:
        image = pack_parameter_image(qm, config)
        sim = CoreSimulator(config, simulator)
        res = sim.run(image, [(run.data, sum(run.lengths)) for run in runs], progress=progress)
        if any(r["error"] for r in res.runs):
            raise BertError("the simulated core raised its error flag")
        words = [r["out"] for r in res.runs]
        info.update(cycles=[r["cycles"] for r in res.runs], build_s=res.build_s,
                    sim_s=res.sim_s, sim_cycles=res.total_cycles)
    outs = split_outputs(runs, words, config)
    emb = [mean_pool(qm.dequantize(y)).numpy() for y in outs]
    info["outputs"] = outs
    return np.stack(emb).astype(np.float32), info
