"""The tutorial notebooks: stored without outputs, each with its badges, install cell, what the
student will learn and checked exercises; and each runs top to bottom on a CPU (slow).

The notebooks are plain .ipynb files, edited in Jupyter and committed without outputs
(clear them before committing: Edit > Clear Outputs of All Cells, or
``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import time
from pathlib import Path

import pytest

from fusionlab import exercises, tutorials

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

nbformat = pytest.importorskip("nbformat")

NAMES = list(tutorials.NOTEBOOKS)


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_notebooks_are_the_listed_ones():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    assert not list(NOTEBOOKS.glob("*.py")), "notebooks are stored as .ipynb, not generated from Python"


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"


@pytest.mark.parametrize("name", NAMES)
def test_opening_badges_and_install_cell(name):
    nb = _read(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert tutorials.NOTEBOOKS[name].split(":")[0] in first.source.splitlines()[0]
    assert tutorials.badges(name) in first.source
    colab = re.findall(r"\((https://colab\.research\.google\.com/github/[^)\s]+)\)", first.source)
    assert colab == [tutorials.colab_url(name)], "the Colab badge must point at this notebook"
    assert "**What you will learn**" in first.source
    assert "Where this runs" in first.source or "On a CUDA" in first.source, "say what changes on a GPU"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == tutorials.INSTALL_CELL


@pytest.mark.parametrize("name", NAMES)
def test_ends_with_checked_exercises(name):
    nb = _read(name)
    heads = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source]
    assert heads, f"{name} has no '## Exercises' section"
    after = [c for c in nb.cells[heads[-1]:] if c.cell_type == "code"]
    calls = []
    for c in after:
        for node in ast.walk(ast.parse(c.source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ex"):
                calls.append(node.func.attr)
    assert len(calls) >= 2, f"{name}: every exercise needs a checker call (ex.<checker>(answer, ...))"
    for attr in calls:
        assert attr in exercises.__all__, f"{name} calls ex.{attr}, which fusionlab.exercises does not have"
    # the answers are left for the student: every answer_... variable starts as ...
    answers = re.findall(r"^(answer_\w+) = (.+?)(?:  #.*)?$", "\n".join(c.source for c in after), re.M)
    assert answers and all(v == "..." for _, v in answers), answers


def test_readme_badges_and_notebook_list():
    readme = (ROOT / "README.md").read_text()
    assert tutorials.badges() in readme
    for name in NAMES:
        assert f"notebooks/{name}" in readme, f"the README's notebook section does not list {name}"


# --------------------------------------------------------------------------- running them


@pytest.fixture(scope="session")
def kernel_name():
    """A Jupyter kernel that runs this interpreter (the venv's python, with fusionlab installed)."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec("python3")
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve() or spec.argv[0] == "python":
            return "python3"
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(prefix=sys.prefix, kernel_name="python3")  # = python -m ipykernel install --sys-prefix
    return "python3"


def execute(path: Path, kernel_name: str, timeout: int = 600):
    """Run a notebook top to bottom in a fresh kernel (in its own folder); returns it executed."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def _one_cpu() -> set[int] | None:
    """One CPU for this test process: pytest-xdist worker gwN gets the N-th allowed CPU."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    return {allowed[n % len(allowed)]}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_name, tmp_path, monkeypatch, record_property):
    """Every cell runs without an error (nbclient raises CellExecutionError on the first that fails).

    The notebook's kernel is pinned to one CPU (the issue's budget: 3 minutes on one core) and
    its time is reported in the run's summary (``conftest.pytest_terminal_summary``), never asserted."""
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cpus = _one_cpu()
    before = os.sched_getaffinity(0) if cpus else None
    t = time.perf_counter()
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)  # the kernel process inherits it
        nb = execute(NOTEBOOKS / name, kernel_name)
    finally:
        if before:
            os.sched_setaffinity(0, before)
    seconds = time.perf_counter() - t
    record_property("notebook_seconds", (name, round(seconds, 1), sorted(cpus) if cpus else "all CPUs"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for c in code
                     for o in c.outputs)
    assert "not answered yet" in text  # the exercise cells ran their checkers
