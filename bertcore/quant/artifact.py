"""The quantized-model artifact: one safetensors file whose metadata holds a JSON manifest.

Layout: every integer tensor of :class:`~bertcore.quant.model.IntBert` under its name, and the
metadata keys ``format`` (``"bertcore-int"``), ``version`` (:data:`ARTIFACT_VERSION`) and
``manifest`` (config, options, scalar constants, calibration summary, source model path).
Writing goes through a temporary file and a rename, so a failed write leaves nothing behind.
"""

import json
import os
import tempfile
from pathlib import Path

from ..checkpoint import BertError
from .model import IntBert

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "save_artifact", "load_artifact"]

ARTIFACT_FORMAT = "bertcore-int"
ARTIFACT_VERSION = 1


def save_artifact(model, path):
    """Write ``model`` to ``path`` atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise BertError(f"output directory {str(path.parent)!r} does not exist")
    meta = {"format": ARTIFACT_FORMAT, "version": str(ARTIFACT_VERSION),
            "manifest": model.manifest_json()}
    tensors = {k: v.contiguous() for k, v in model.t.items()}
    fd, tmp = tempfile.mkstemp(prefix=".bertcore-", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_artifact(path):
    """Read an artifact written by :func:`save_artifact`; bad files raise :class:`BertError`."""
    from safetensors import safe_open
    path = Path(path)
    if path.is_dir():
        raise BertError(f"quantized model {str(path)!r} is a directory, not a .safetensors "
                        "file (a model directory goes to --model)")
    if not path.is_file():
        raise BertError(f"quantized model {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != ARTIFACT_FORMAT:
                raise BertError(f"{path}: not a bertcore quantized model")
            if meta.get("version") != str(ARTIFACT_VERSION):
                raise BertError(f"{path}: artifact version {meta.get('version')!r} is not supported "
                                f"(this bertcore reads version {ARTIFACT_VERSION}); re-run "
                                f"`bertcore quantize`")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        manifest = json.loads(meta["manifest"])
        return IntBert.from_manifest(manifest, tensors)
    except BertError:
        raise
    except Exception as exc:
        raise BertError(f"{path}: unreadable quantized model: {exc}") from None
