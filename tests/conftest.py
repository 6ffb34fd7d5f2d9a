"""Fixtures shared by the test modules: zoo models, their captures, candidates and plans.

Each is a session-scoped factory, ``fixture(name)``, that builds a zoo model's object the
first time a test asks for it and hands the same object to every later test:

- ``zoo_model(name)``: the ``ZooModel`` (``zoo.get(name)``). Tests train, mutate or call a
  copy (``copy.deepcopy(zm.model)``), never ``zm.model`` itself.
- ``zoo_capture(name)``: the capture of its training step. Read-only: nothing in fusionlab
  changes a Capture or its graphs once made.
- ``zoo_candidates(name)``: ``find_candidates`` of that capture (read-only too).
- ``zoo_plan(name, select="all")``: a new ``FusionPlan`` on each call, over the shared
  capture and candidates: a plan's selection is the one thing tests change, so no test
  sees another's selection. ``select=None`` gives a plan with nothing selected.

Profiles measure exactly the steps a test asks for: ``FUSIONLAB_PROFILE_BUDGET=0`` (no
measuring on until a verdict is decided) unless a test passes ``budget_s`` itself, as
tests/test_profile_verdicts.py does.

fusionlab's disk cache (inspect reports, group checks, loop listings, generated modules) is a
fresh temporary folder per test process, removed when the process ends, so no test reads what
an earlier run or the user left there (``FUSIONLAB_TEST_CACHE_DIR`` names a folder to keep
instead).

``ipython_shell`` is the one IPython shell of the test process (IPython's test shell can be
started once a process: a second ``globalipapp.get_ipython`` bound before the first call ran
returns None, so every test that needs a shell takes it from here).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

import fusionlab as fl  # noqa: I001  (imported before anything imports triton)
from fusionlab import zoo

os.environ.setdefault("FUSIONLAB_PROFILE_BUDGET", "0")
if os.environ.get("FUSIONLAB_TEST_CACHE_DIR"):
    os.environ["FUSIONLAB_CACHE_DIR"] = os.environ["FUSIONLAB_TEST_CACHE_DIR"]
else:
    os.environ["FUSIONLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusionlab-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FUSIONLAB_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def ipython_shell():
    """The process's IPython test shell (started by whichever test asks first)."""
    pytest.importorskip("IPython")
    from IPython.testing import globalipapp

    globalipapp.start_ipython()  # once a process; later calls return None
    return globalipapp.get_ipython()  # after the start, the started shell


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """Empty Inductor and fusionlab caches of this test's own (tmp dirs), and nothing this
    process compiled or checked remembered: no test reads or writes the user's caches or
    depends on another test's."""
    import torch

    from fusionlab.executors import clear_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "fusionlab"))
    clear_cache()
    torch._dynamo.reset()
    yield tmp_path
    clear_cache()


@pytest.fixture(scope="session")
def zoo_model():
    models: dict[str, zoo.ZooModel] = {}

    def get(name: str) -> zoo.ZooModel:
        if name not in models:
            models[name] = zoo.get(name)
        return models[name]

    return get


@pytest.fixture(scope="session")
def zoo_capture(zoo_model):
    captures: dict[str, fl.Capture] = {}

    def get(name: str) -> fl.Capture:
        if name not in captures:
            zm = zoo_model(name)
            captures[name] = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
        return captures[name]

    return get


@pytest.fixture(scope="session")
def zoo_candidates(zoo_capture):
    found: dict[str, fl.Candidates] = {}

    def get(name: str) -> fl.Candidates:
        if name not in found:
            found[name] = fl.find_candidates(zoo_capture(name))
        return found[name]

    return get


@pytest.fixture(scope="session")
def zoo_plan(zoo_capture, zoo_candidates):
    def get(name: str, select: str | None = "all") -> fl.FusionPlan:
        plan = fl.FusionPlan(zoo_capture(name), zoo_candidates(name))
        return plan.select_all() if select == "all" else plan.select(select) if select else plan

    return get


def pytest_terminal_summary(terminalreporter):
    """The notebooks' run times (tests/test_notebooks.py, each pinned to one CPU), after the run."""
    rows = [v for r in terminalreporter.stats.get("passed", []) for k, v in getattr(r, "user_properties", ())
            if k == "notebook_seconds"]
    if rows:
        terminalreporter.write_sep("-", "notebook run times (measured, one CPU each)")
        for name, seconds, cpus in sorted(rows):
            terminalreporter.write_line(f"{name}: {seconds:.1f} s on CPU {cpus}")
