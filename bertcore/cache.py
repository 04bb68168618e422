"""Where bertcore keeps what it builds at run time (the simulators of :mod:`bertcore.rtlsim`).

``$BERTCORE_CACHE`` when set, else the user's cache directory (``platformdirs``:
``~/.cache/bertcore`` on Linux, ``~/Library/Caches/bertcore`` on macOS,
``%LOCALAPPDATA%\\bertcore\\Cache`` on Windows) — never the directory the user stands in.
Entries are keyed by everything that defines them, so the cache may be shared and deleted at any
time.
"""

import contextlib
import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "entry_lock"]

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


@contextlib.contextmanager
def entry_lock(path):
    """Hold an exclusive lock on the cache entry ``path`` (a directory, which need not exist).

    Two processes that build the same entry at once (two ``embed --backend rtl`` runs, or the
    workers of a parallel test run) would otherwise write into one directory together: the
    second waits here until the first is done, then finds the entry built. The lock is an
    ``flock`` on ``<path>.lock`` next to the entry, released when the holder exits, even by a
    crash. Where ``fcntl`` is missing (Windows) it does not lock.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with entry_lock(Path(tmp) / "x"):
    ...         (Path(tmp) / "x.lock").exists()
    True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:                     # pragma: no cover (Windows)
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
