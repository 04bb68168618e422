"""bertcore: an integer-only BERT encoder accelerator generator (see README.md).

``bertcore.SentenceEncoder`` (:mod:`bertcore.api`) is imported on first use, so that
``import bertcore`` (and the command line) stay fast.
"""

__all__ = ["SentenceEncoder"]


def __getattr__(name):
    if name == "SentenceEncoder":
        from .api import SentenceEncoder
        return SentenceEncoder
    raise AttributeError(f"module 'bertcore' has no attribute {name!r}")
