"""The structure of the package's source: no function in ``bertcore/`` (``bertcore.boards``
included) over 200 lines (the encoder core and the UART bridge are sets of components, each
elaborate short enough to read)."""

import ast
from pathlib import Path

import bertcore.boards
import bertcore.core

#: Longest function (lines, decorators and docstring included) allowed in ``bertcore/``.
MAX_FUNCTION_LINES = 200


def _functions(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node.name, first, node.end_lineno - first + 1


def test_no_long_functions_in_core():
    root = Path(bertcore.core.__file__).parent
    files = sorted(root.glob("*.py"))
    assert files, root
    long = [f"{path.name}:{line} {name}() has {length} lines"
            for path in files for name, line, length in _functions(path)
            if length > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def _package_files():
    """Every module of the installed package: ``bertcore/`` and, wherever it lives, the
    ``bertcore.boards`` subpackage (the repository's ``boards/`` folder in an editable install,
    ``bertcore/boards/`` in a wheel)."""
    roots = {Path(bertcore.core.__file__).parent.parent, Path(bertcore.boards.__file__).parent}
    files = {path.resolve() for root in roots for path in root.rglob("*.py")}
    return sorted(files)


def test_no_long_functions_in_package():
    """Every module under ``bertcore/``, the board tops of ``bertcore.boards`` included."""
    files = _package_files()
    boards = Path(bertcore.boards.__file__).resolve().parent
    assert len(files) > 20 and boards / "bridge.py" in files, files
    long = [f"{path}:{line} {name}() has {length} lines"
            for path in files for name, line, length in _functions(path)
            if length > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_core_components_importable_from_encoder():
    """Code outside the core imports these names from ``bertcore.core.encoder``."""
    from bertcore.core.encoder import EncoderCore, EncoderTop, bus_layout  # noqa: F401
