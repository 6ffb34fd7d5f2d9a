"""binder/ builds the environment the notebooks need: a fresh virtual environment made the way
Binder (repo2docker) makes it, from binder/requirements.txt and binder/postBuild, runs notebook 1.

Slow (minutes: it installs torch and JupyterLab). Where PyTorch's CPU index is unreachable, the
index line is dropped and the same pins from constraints.txt stand in (pip then finds torch
2.13.0's CPU wheel where the Makefile's install finds it: the local wheel cache / find-links).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
PIN = re.compile(r"^(torch|triton)==([\w.+]+)$")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def test_binder_pins_agree_with_constraints():
    binder, constraints = _pins(BINDER / "requirements.txt"), _pins(ROOT / "constraints.txt")
    assert set(binder) == {"torch", "triton"}
    for name, version in binder.items():
        assert version.split("+")[0] == constraints[name].split("+")[0], (name, version, constraints[name])
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime


def _index_reachable(url: str, timeout: float = 3.0) -> bool:
    host = re.match(r"https?://([^/]+)", url).group(1)
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _requirements_for_here(tmp: Path) -> tuple[Path, str]:
    """binder/requirements.txt, or (index unreachable) the same without the index, pins from constraints."""
    req = BINDER / "requirements.txt"
    lines = req.read_text().splitlines()
    index = next((ln.split(None, 1)[1] for ln in lines if ln.startswith("--extra-index-url")), None)
    if index is None or _index_reachable(index):
        return req, "binder/requirements.txt as it is"
    constraints = _pins(ROOT / "constraints.txt")
    out = []
    for ln in lines:
        if ln.startswith("--extra-index-url"):
            continue
        m = PIN.match(ln.strip())
        out.append(f"{m.group(1)}=={constraints[m.group(1)]}" if m else ln)
    path = tmp / "requirements.txt"
    path.write_text("\n".join(out) + "\n")
    return path, f"{index} unreachable: constraints.txt pins instead"


def _run(cmd, env, cwd, timeout=1500):
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_binder_environment_runs_notebook_1(tmp_path):
    runtime = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    if f"{sys.version_info.major}.{sys.version_info.minor}" != runtime:
        pytest.skip(f"binder/runtime.txt asks for Python {runtime}; this is {sys.version.split()[0]}")
    # repo2docker copies the repository: take the files git tracks (the notebooks without outputs)
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    venv = tmp_path / "venv"
    try:
        _install_and_run_notebook_1(tmp_path, repo, venv)
    finally:  # the venv is gigabytes (torch, triton, JupyterLab): a disk of test runs fills up
        shutil.rmtree(venv, ignore_errors=True)


def _install_and_run_notebook_1(tmp_path: Path, repo: Path, venv: Path) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)], os.environ.copy(), tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["FUSIONLAB_CACHE_DIR"] = str(tmp_path / "cache")
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "jupyter")  # no kernelspec of the user's own
    py = str(venv / "bin" / "python")
    req, how = _requirements_for_here(tmp_path)
    print("requirements:", how)
    _run([py, "-m", "pip", "install", "-q", "-r", str(req)], env, repo)
    _run(["bash", str(repo / "binder" / "postBuild")], env, repo)
    r = _run([py, "-c", "import fusionlab, torch, triton; print(fusionlab.__file__, torch.__version__, "
                        "triton.__version__)"], env, repo)
    assert str(repo) in r.stdout, r.stdout  # the venv's own fusionlab, not this checkout's
    out = tmp_path / "out.ipynb"
    _run([py, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=600",
          "--output", str(out), str(repo / "notebooks" / "01_why_fusion.ipynb")], env, repo)
    import nbformat

    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
