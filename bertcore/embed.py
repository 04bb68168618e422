"""Sentence embeddings through the float model, the integer reference, or the simulated RTL."""

from pathlib import Path

import numpy as np
import torch

from .checkpoint import BertError, load_checkpoint
from .quant.floatref import mean_pool

__all__ = ["embed_texts", "float_embeddings", "token_ids"]


def token_ids(tokenizer, texts, warn=None):
    """Token ids (``[CLS] ... [SEP]``) of each of ``texts``, truncated at the tokenizer's
    ``max_length`` as sentence-transformers does (the checkpoint's ``max_seq_length``: 256 for
    all-MiniLM-L6-v2). Every backend tokenizes through here; ``warn`` (a function of one
    message) is called once if any text was truncated, saying how many."""
    ids, cut = [], 0
    for t in texts:
        one, truncated = tokenizer.encode_checked(t)
        ids.append(one)
        cut += truncated
    if cut and warn is not None:
        warn(f"{cut} of {len(texts)} texts {'was' if cut == 1 else 'were'} longer than "
             f"{tokenizer.max_length} tokens and truncated to {tokenizer.max_length} "
             f"(as sentence-transformers does)")
    return ids


def check_texts(texts):
    """``texts`` as a list of strings, each with something to embed; a single string is one
    text. Raises :class:`BertError` for anything else: not an iterable of strings (``None``,
    bytes, numbers), an empty or blank text, a string that is not valid Unicode (a lone
    surrogate)."""
    if isinstance(texts, str):
        return [texts]
    if texts is None or isinstance(texts, (bytes, bytearray)):
        raise BertError(f"texts must be a string or a list of strings, not "
                        f"{type(texts).__name__}")
    try:
        texts = list(texts)
    except TypeError:
        raise BertError(f"texts must be a string or a list of strings, not "
                        f"{type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BertError(f"text {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise BertError(f"empty input text (text {i})")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            # bytes that are not UTF-8 on a command line come as surrogates U+DC80..U+DCFF
            code = ord(t[exc.start])
            what = (f"not UTF-8 (byte 0x{code - 0xDC00:02x} at character {exc.start})"
                    if 0xDC80 <= code <= 0xDCFF
                    else f"U+{code:04X}, a lone surrogate, at character {exc.start}")
            raise BertError(f"text {i} is not valid Unicode: {what}") from None
    return texts


def float_embeddings(ckpt, texts, warn=None):
    """Mean-pooled, L2-normalized embeddings of the transformers ``BertModel`` (float32)."""
    model = ckpt.float_model()
    out = []
    with torch.no_grad():
        for one in token_ids(ckpt.tokenizer, texts, warn):
            out.append(mean_pool(model(torch.tensor([one])).last_hidden_state[0]).numpy())
    return np.stack(out).astype(np.float32)


def embed_texts(texts, *, backend, quantized=None, model=None, simulator="verilator",
                pack=None, warn=None):
    """Embeddings ``[N, hidden]`` (float32, input order kept) of ``texts`` with ``backend``.

    ``backend="float"`` runs the float checkpoint ``model`` (or, with ``quantized``, the float
    model the artifact came from); ``"int"`` runs the integer reference of the artifact.
    ``pack`` (``int`` and ``rtl``) packs several texts per run of the core
    (:mod:`bertcore.packing`; the ``int`` backend then runs the packets through the integer
    reference, as the core would): the embeddings do not change. Default (``None``): on for
    ``rtl`` (the core reads segment tables), off for ``int``. Texts longer than the model's
    limit are truncated (:func:`token_ids`); ``warn`` is then told how many. ``texts``: a list
    of strings, or one string (one text); bad texts raise :class:`BertError`
    (:func:`check_texts`).
    """
    texts = check_texts(texts)
    if not texts:
        raise BertError("no input texts")
    if warn is not None and not callable(warn):
        raise BertError(f"warn must be a function of one message, not {type(warn).__name__}")
    if backend == "float" and model is None and quantized is None:
        raise BertError("backend 'float' needs model= (a model directory) or quantized= (an "
                        "artifact of bertcore quantize)")
    if backend in ("int", "rtl") and quantized is None:
        raise BertError(f"backend {backend!r} needs quantized= (an artifact of bertcore "
                        "quantize)")
    if backend == "float":
        if model is None:
            from .quant.artifact import load_artifact
            model = load_artifact(quantized).source
            if not Path(model).is_dir():
                raise BertError(f"the float backend runs the model {quantized} was quantized "
                                f"from, {model!r}, which is no longer there: give the model "
                                "directory (--model DIR, model=)")
        return float_embeddings(load_checkpoint(model), texts, warn)
    if backend not in ("int", "rtl"):
        raise BertError(f"unknown backend {backend!r}")
    from .quant.artifact import load_artifact
    qm = load_artifact(quantized)
    if backend == "rtl":
        return rtl_embeddings(qm, texts, simulator=simulator, pack=pack is not False,
                              warn=warn)[0]
    if pack:
        from .packing import reference_runner
        config = core_for(qm)
        return rtl_embeddings(qm, texts, config=config, pack=True,
                              runner=reference_runner(qm, config), warn=warn)[0]
    out = [qm.sentence_embedding(ids).numpy() for ids in _model_ids(qm, texts, warn)]
    return np.stack(out).astype(np.float32)


def _model_ids(qm, texts, warn):
    """:func:`token_ids` with the tokenizer stored in the artifact ``qm``."""
    if qm.tokenizer is None:
        raise BertError("this integer model has no tokenizer")
    return token_ids(qm.tokenizer, texts, warn)


def preset_for(shape):
    """The name and config of the core preset that runs a model of ``shape``."""
    from .config import PRESETS
    for name, cfg in PRESETS.items():
        if (cfg.hidden, cfg.heads, cfg.ffn, cfg.layers) == (shape.hidden, shape.heads, shape.ffn,
                                                            shape.layers):
            return name, cfg
    raise BertError(f"no core preset runs this model (hidden={shape.hidden}, heads={shape.heads}, "
                    f"ffn={shape.ffn}, layers={shape.layers})")


def core_for(qm):
    """The configuration of the simulated core that runs the quantized model ``qm``: the preset
    of its shape (:func:`preset_for`), built for the model's probability and GELU output widths
    (``prob_bits``, ``gelu_bits``; a simulation builds the core it needs, a board's core is
    fixed and checked instead)."""
    _, config = preset_for(qm.shape)
    widths = {name: getattr(qm.opts, name) for name in ("prob_bits", "gelu_bits")
              if getattr(qm.opts, name) != getattr(config, name)}
    return config.replace(**widths) if widths else config


def rtl_embeddings(qm, texts, *, simulator="verilator", config=None, progress=lambda m: None,
                   pack=False, runner=None, warn=None):
    """Embeddings through the simulated encoder core (the host embeds, pools and normalizes).

    Returns ``(embeddings, info)``: ``info`` has the core's cycles per run, the build and
    simulation wall times, and the int8 outputs of the core per sentence. ``pack`` packs
    several sentences per run (:func:`bertcore.packing.plan_runs`); ``runner`` (a function
    ``runs -> output words per run``, e.g. :func:`bertcore.packing.reference_runner`) replaces
    the simulator. Texts are truncated as for the other backends (:func:`token_ids`, ``warn``);
    one that is still longer than the core's ``max_seq`` is an error.
    """
    from .core.image import check_model, pack_parameter_image
    from .packing import plan_runs, split_outputs
    from .rtlsim import CoreSimulator
    if config is None:
        config = core_for(qm)
    check_model(qm, config)
    xs = []
    for ids in _model_ids(qm, texts, warn):
        if len(ids) > config.max_seq:
            raise BertError(f"a text has {len(ids)} tokens; the core holds at most "
                            f"{config.max_seq}")
        xs.append(qm.embed_int(ids))
    runs = plan_runs(xs, config, pack=pack)
    info = {"cycles": None, "build_s": 0.0, "sim_s": 0.0, "sim_cycles": None, "runs": len(runs)}
    if runner is not None:
        words = runner(runs)
    else:
        image = pack_parameter_image(qm, config)
        sim = CoreSimulator(config, simulator)
        res = sim.run(image, [(run.data, sum(run.lengths), run.table) for run in runs],
                      progress=progress).check()
        if any(r["error"] for r in res.runs):
            raise BertError("the simulated core raised its error flag")
        words = [r["out"] for r in res.runs]
        info.update(cycles=[r["cycles"] for r in res.runs], build_s=res.build_s,
                    sim_s=res.sim_s, sim_cycles=res.total_cycles)
    outs = split_outputs(runs, words, config)
    emb = [mean_pool(qm.dequantize(y)).numpy() for y in outs]
    info["outputs"] = outs
    return np.stack(emb).astype(np.float32), info
