"""Where bertcore keeps what it builds at run time (the simulators of :mod:`bertcore.rtlsim`).

``$BERTCORE_CACHE`` when set, else the user's cache directory (``platformdirs``:
``~/.cache/bertcore`` on Linux, ``~/Library/Caches/bertcore`` on macOS,
``%LOCALAPPDATA%\\bertcore\\Cache`` on Windows) — never the directory the user stands in.
Entries are keyed by everything that defines them, so the cache may be shared and deleted at any
time.
"""

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

#: Environment variable that overrides the cache directory.
CACHE_ENV = "BERTCORE_CACHE"


def cache_dir(*parts):
    """The cache directory (joined with ``parts``); not created.

    >>> import os
    >>> os.environ[CACHE_ENV] = "/tmp/bc"
    >>> cache_dir("rtlsim").as_posix()
    '/tmp/bc/rtlsim'
    >>> del os.environ[CACHE_ENV]
    """
    base = os.environ.get(CACHE_ENV)
    if not base:
        from platformdirs import user_cache_dir
        base = user_cache_dir("bertcore", appauthor=False)
    return Path(base).joinpath(*parts)
