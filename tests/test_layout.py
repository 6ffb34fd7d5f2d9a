"""The package's shape, checked: no private name crosses a module, modules stay small.

A name that starts with one underscore belongs to the module that defines it. When a
second module needs it, it is a shared idea: it gets a public name in the module that owns
it. Private *modules* (``fusionlab/_env.py``) are the package's own and may be imported by
any module of it; what they define without an underscore is their interface.

A module over ``MAX_LINES`` lines must say why it is one piece in its first lines
(a docstring line starting with ``One piece:``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fusionlab"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "static" not in p.parts)


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    pkg = _dotted(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    base = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    root = PACKAGE.parent
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path) -> list[str]:
    """Every ``from fusionlab.x import _y`` (and ``x._y`` on an imported fusionlab module)
    in one file, where ``_y`` is defined in a module other than this one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _dotted(path)
    found, module_names = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _resolve(path, node)
            if not src.startswith("fusionlab"):
                continue
            for alias in node.names:
                full = f"{src}.{alias.name}"
                if _is_module(full):
                    module_names[alias.asname or alias.name] = full
                    continue
                if _private(alias.name) and src != here:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
                                 f"from {src} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fusionlab") and alias.asname:
                    module_names[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_names and _private(node.attr)
                and not _is_module(f"{module_names[node.value.id]}.{node.attr}")):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
                         f"{node.value.id}.{node.attr} ({module_names[node.value.id]})")
    return found


def test_no_private_name_crosses_a_module():
    found = [line for p in _modules() for line in private_imports(p)]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_the_private_import_check_can_fail(tmp_path, monkeypatch):
    """The walker sees both forms it forbids (and allows a private module)."""
    pkg = tmp_path / "fusionlab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_env.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("def _helper():\n    pass\n")
    (pkg / "b.py").write_text("from . import _env\nfrom .a import _helper\nfrom . import a\na._helper()\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    found = private_imports(pkg / "b.py")
    assert len(found) == 2 and "import _helper" in found[0] and "a._helper" in found[1], found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_or_says_why(path: Path):
    lines = path.read_text().count("\n")
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    head = doc.splitlines()[:20]
    assert any(line.strip().startswith("One piece:") for line in head), (
        f"{path.relative_to(PACKAGE.parent)} has {lines} lines (> {MAX_LINES}); split it by job, "
        "or say in its docstring's first lines why it is one piece ('One piece: ...')"
    )


def test_every_import_in_the_package_resolves():
    """Imports inside functions included (lazy imports are how the UI stays optional, and
    a module move leaves them broken where no linter looks)."""
    import importlib

    bad = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            src = _resolve(path, node)
            if not src.startswith("fusionlab"):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if not _is_module(src):
                bad.append(f"{where}: no module {src}")
                continue
            mod = importlib.import_module(src)
            bad += [f"{where}: {src} has no {a.name}" for a in node.names
                    if a.name != "*" and not hasattr(mod, a.name) and not _is_module(f"{src}.{a.name}")]
    assert not bad, "\n".join(bad)
