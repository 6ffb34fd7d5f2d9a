"""docs/hostile-inputs.md matches the tests: a user reads its table to know what is safe.

Each row of the table names the tests behind it (last column). Here: every named test
exists; a row marked **bug** names a strict xfail (the better behaviour, asserted); every
strict xfail in tests/ is named by a row marked **bug** or *by design*.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hostile-inputs.md"
NAMED = re.compile(r"`(?:(tests/\w+\.py)::)?(test_\w+)`")
DEFAULT_FILE = "tests/test_hostile.py"


def table_rows(doc: str) -> list[tuple[str, set[tuple[str, str]]]]:
    """(row text, {(test file, test name)} its last column names) for each table row."""
    rows = []
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 2 or set(cells[0]) <= {"-", " ", ":"}:
            continue
        named = {(f or DEFAULT_FILE, t) for f, t in NAMED.findall(cells[-1])}
        if cells[-1] == "Test":  # a header
            continue
        rows.append((line, named))
    return rows


def _is_strict_xfail(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("mark.xfail")
            and any(k.arg == "strict" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords))


def functions_and_strict_xfails(source: str) -> tuple[set[str], set[str]]:
    """(every function defined, the tests carrying a strict xfail: as a decorator, or on one
    of their parameters through ``pytest.param(..., marks=...)``)."""
    tree = ast.parse(source)
    defined, strict = set(), set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            defined.add(fn.name)
            if any(_is_strict_xfail(n) for d in fn.decorator_list for n in ast.walk(d)):
                strict.add(fn.name)
    return defined, strict


def disagreements(doc: str, sources: dict[str, str]) -> list[str]:
    """What the page says that the tests (``{"tests/x.py": source}``) do not back, and the reverse."""
    defined, strict = {}, set()
    for path, src in sources.items():
        names, xfails = functions_and_strict_xfails(src)
        defined[path] = names
        strict |= {(path, n) for n in xfails}
    problems = []
    named_by: dict[tuple[str, str], list[str]] = {}
    for row, named in table_rows(doc):
        for test in named:
            named_by.setdefault(test, []).append(row)
            if test[1] not in defined.get(test[0], set()):
                problems.append(f"{test[0]}::{test[1]} is named by the page but does not exist")
        if "**bug" in row and not named & strict:
            problems.append(f"a row marked bug names no strict xfail: {row[:100]}")
    for test in sorted(strict):
        rows = named_by.get(test, [])
        if not any("**bug" in r or "by design" in r for r in rows):
            problems.append(f"strict xfail {test[0]}::{test[1]} has no row marked bug or by design")
    return problems


def _tests_sources() -> dict[str, str]:
    return {f"tests/{p.name}": p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("test_*.py"))}


def test_the_page_and_the_tests_agree():
    doc = DOC.read_text(encoding="utf-8")
    assert len(table_rows(doc)) > 30
    problems = disagreements(doc, _tests_sources())
    assert not problems, "\n".join(problems)


def test_the_agreement_check_finds_each_kind_of_disagreement():
    doc = """
| Input tried | What the user sees | Test |
|---|---|---|
| a | **bug**: wrong | `test_a` |
| b | works | `tests/test_other.py::test_b` |
| c | works | `test_gone` |
| d | *was* fixed, **bug** no more | `test_d` |
"""
    src = """
import pytest

def test_a(): pass

@pytest.mark.xfail(strict=True, reason="bug")
def test_b(): pass

@pytest.mark.parametrize("x", [pytest.param(1, marks=pytest.mark.xfail(strict=True))])
def test_c(x): pass

@pytest.mark.xfail(reason="not strict: not checked")
def test_d(): pass
"""
    problems = disagreements(doc, {DEFAULT_FILE: src, "tests/test_other.py": src})
    assert any("row marked bug names no strict xfail" in p and "| a |" in p for p in problems)
    assert any("test_gone is named by the page but does not exist" in p for p in problems)
    # test_b's row is not marked bug; test_c (a parameter's xfail) and the copy of test_b in
    # tests/test_hostile.py have no row at all
    assert "strict xfail tests/test_other.py::test_b has no row marked bug or by design" in problems
    assert f"strict xfail {DEFAULT_FILE}::test_c has no row marked bug or by design" in problems
    assert f"strict xfail {DEFAULT_FILE}::test_b has no row marked bug or by design" in problems
    assert any("row marked bug names no strict xfail" in p and "| d |" in p for p in problems)
    ok_doc = doc.replace("| b | works |", "| b | **bug** |")
    assert "strict xfail tests/test_other.py::test_b has no row marked bug or by design" not in disagreements(
        ok_doc, {DEFAULT_FILE: src, "tests/test_other.py": src})
