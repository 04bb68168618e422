"""The package is self-contained: every source directory is a listed package (the board tops as
``bertcore.boards``), the data it reads at run time is package data, and run-time builds go to
the cache directory. (``.ci/wheel-smoke`` installs the built wheel and runs it; these are the
fast checks of the same rules.)"""

import tomllib
from pathlib import Path

import pytest

from bertcore.cache import CACHE_ENV, cache_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setuptools_config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_dir(package, package_dir):
    for name, path in package_dir.items():
        if package == name or package.startswith(name + "."):
            return ROOT / path / Path(*package[len(name):].split(".")[1:])
    return ROOT / Path(*package.split("."))


def test_every_source_directory_is_a_listed_package(setuptools_config):
    """The explicit package list (package-dir rules out ``packages.find``) covers every
    directory of ``bertcore/`` and ``boards/`` that holds files (code or data), and each listed
    package has an ``__init__.py``."""
    packages = setuptools_config["packages"]
    package_dir = setuptools_config["package-dir"]
    assert package_dir["bertcore.boards"] == "boards"
    listed = {_source_dir(p, package_dir).resolve() for p in packages}
    for package in packages:
        assert (_source_dir(package, package_dir) / "__init__.py").is_file(), package
    found = {f.parent.resolve() for top in ("bertcore", "boards")
             for f in (ROOT / top).rglob("*") if f.is_file() and "__pycache__" not in f.parts}
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"


def test_package_data_holds_what_the_code_reads(setuptools_config):
    """Every file beside the code is package data (in the wheel), e.g. the calibration set."""
    package_dir = setuptools_config["package-dir"]
    shipped = {f.resolve() for package, patterns in setuptools_config["package-data"].items()
               for pattern in patterns for f in _source_dir(package, package_dir).glob(pattern)}
    data = {f.resolve() for top in ("bertcore", "boards") for f in (ROOT / top).rglob("*")
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts}
    assert ROOT / "bertcore" / "data" / "calibration.txt" in shipped
    assert data <= shipped, f"not in [tool.setuptools.package-data]: {sorted(data - shipped)}"
    from bertcore.cli import default_calibration_texts
    assert len(default_calibration_texts()) == 64


def test_board_tops_import_from_the_package():
    import bertcore.boards.top as top
    assert Path(top.__file__).resolve().parent == (ROOT / "boards").resolve()
    assert top.board_spec("ulx3s-85f").name == "ulx3s-85f"


def test_cache_dir(monkeypatch, tmp_path):
    """``$BERTCORE_CACHE``, else the user cache directory; never the current directory."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir("rtlsim", "x") == tmp_path / "c" / "rtlsim" / "x"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert cache_dir("rtlsim") == tmp_path / "xdg" / "bertcore" / "rtlsim"
