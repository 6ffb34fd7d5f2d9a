"""The notebooks' profile verdicts hold on rerun (issue 15): ``bench/verdict_reruns.py`` finds
every profile cell and reruns each notebook through it in fresh processes.

The finder is checked on the real notebooks and on a made-up one. The slow test reruns
notebook 5 (its profile cell is the one that fits in a couple of minutes: about 30-50 s a
rerun on a shared 2-core CPU) three times and requires every comparison's call (faster /
slower / no measurable difference) to be the same on each. Notebook 4's gpt2-block profiles
take minutes a rerun (three compiles of the block); they run in the bench only:
``python bench/verdict_reruns.py``. No assertion reads a time, but whether a verdict holds
depends on the machine's noise: on a CI machine running a second pytest worker beside it,
a 0.97x effect (next to the ±3 % a verdict needs) was called "slower" in one rerun of three.
So that test is marked ``timing``: not part of ``make test``; ``make timing`` runs it alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "verdict_reruns.py"


@pytest.fixture(scope="module")
def reruns():
    spec = importlib.util.spec_from_file_location("verdict_reruns", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _notebook(path: Path, cells: list[str]) -> Path:
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [],
                                            "execution_count": None} for src in cells]
                                + [{"cell_type": "markdown", "source": "fl.profile(model) in prose", "metadata": {}}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_finds_magics_and_calls_not_comments_or_cell_magics(reruns, tmp_path):
    nb = _notebook(tmp_path / "t.ipynb", [
        "import fusionlab as fl",
        "result = %fusionlab profile model inputs --steps 10",
        "# fl.profile(model) is what the magic calls",
        "%%fusionlab profile --steps 3\nstep()",
        "r = fl.profile(model, inputs,\n               budget_s=2)",
        "r = fusionlab.profile(model, inputs)",
        "print(profile_steps)",
    ])
    assert reruns.profile_cells(nb) == [1, 4, 5, 6]


def test_every_profile_cell_of_the_notebooks_is_found(reruns):
    found = {p.name: reruns.profile_cells(p) for p in sorted(reruns.NOTEBOOKS.glob("*.ipynb"))}
    for name, cells in found.items():
        sources = dict(reruns.code_cells(reruns.NOTEBOOKS / name))
        calling = [i for i, src in sources.items() if "%fusionlab profile" in src or "fl.profile(" in src]
        assert cells == calling, name
    assert found["04_profile_a_training_step.ipynb"] and found["05_your_own_fusion.ipynb"]


@pytest.mark.timing
def test_notebook_5_profile_verdicts_hold_on_three_reruns(tmp_path):
    out = tmp_path / "verdicts.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, str(SCRIPT), "--notebooks", "05_your_own_fusion.ipynb",
                          "--reruns", "3", "--json", str(out)], env=env, capture_output=True, text=True,
                         check=False, timeout=900)
    assert out.exists(), res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["comparison"] for r in rows} == {"unfused vs eager", "fusionlab vs eager", "fusionlab vs unfused"}
    assert all(len(r["calls"]) == 3 for r in rows)
    flipped = [(r["comparison"], [v["text"] for v in r["verdicts"]]) for r in rows if not r["holds"]]
    assert not flipped, res.stdout
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
