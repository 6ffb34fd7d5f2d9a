"""Do the notebooks' profile verdicts hold when a student reruns them? Three reruns, side by side.

    .venv/bin/python bench/verdict_reruns.py [--notebooks 04_profile_a_training_step.ipynb ...]
                                             [--reruns 3] [--json PATH] [--fresh-caches]
                                             [--magic "zoo:mlp --steps 3 --warmup 1 --compare eager,fusionlab"]

Finds every profile cell in ``notebooks/*.ipynb`` (``%fusionlab profile`` magics and
``fl.profile(...)`` / ``fusionlab.profile(...)`` / ``profile_steps`` calls), then for each
notebook that has one runs its code cells from the top through its last profile cell, in a
fresh process (an IPython shell, so the magics run as in Jupyter), ``--reruns`` times, one
after another, as a student rerunning the notebook would. Every ``ProfileResult`` those cells
make is recorded (``fusionlab.profiler.profile`` is wrapped; the magic and ``fl.profile`` both
call it), with each comparison's verdict: every variant against the profile's baseline, and
fusionlab against unfused where both ran (the comparison the notebooks print). ``--magic ARGS``
reruns ``%fusionlab profile ARGS`` as a notebook of its own (the magic's defaults, or a cell a
user typed; given alone, only those run).

Printed: per profile and comparison, the call of each rerun (faster / slower / no measurable
difference, with the ratio of medians and the steps measured), and whether the call held on
every rerun. Exit status 1 when one flipped. Times and verdicts are measured on this machine's
CPU (fusionlab's variant: Inductor's C++ code, fusing only inside the selected groups).

Caches: one temporary ``FUSIONLAB_CACHE_DIR`` and ``TORCHINDUCTOR_CACHE_DIR`` for all reruns,
as a student's own caches persist between reruns (``--fresh-caches``: new ones each rerun).
Verdicts must not depend on them: caches change compile times, never the timed rounds.
``FUSIONLAB_PROFILE_BUDGET`` is removed from the children's environment: the notebooks'
defaults are what is under test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PROFILE_CELL = re.compile(r"%fusionlab\s+profile\b|\bfl\.profile\(|\bfusionlab\.profile\(|\bprofile_steps\b")


def code_cells(path: Path) -> list[tuple[int, str]]:
    """(cell index, source) of each code cell."""
    nb = json.loads(path.read_text())
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def profile_cells(path: Path) -> list[int]:
    """Indices of the notebook's cells that profile (a magic or a call; not ``%%fusionlab profile``)."""
    return [i for i, src in code_cells(path)
            if any(PROFILE_CELL.search(ln) and not ln.lstrip().startswith(("#", "%%")) for ln in src.splitlines())]


# --------------------------------------------------------------------------- the child: one rerun


def summarize(res, cell: int, n: int) -> dict:
    """A ProfileResult as plain data: its label, how measuring went, each comparison's verdict."""
    from fusionlab.verdict import UNDECIDED

    names = [v.name for v in res.variants]
    plan = res.plan
    label = f"{res.model_name} [{','.join(names)}]"
    if plan is not None:
        label += f" {len(plan.selected)} groups"
    comps = [(v, res.baseline) for v in names if v != res.baseline]
    if "fusionlab" in names and "unfused" in names and res.baseline != "unfused":
        comps.append(("fusionlab", "unfused"))
    verdicts = []
    for name, base in comps:
        vd = res.verdict(name, base)
        verdicts.append({"comparison": f"{name} vs {base}", "call": vd.call, "short": vd.short,
                         "ratio": vd.ratio, "low": vd.low, "high": vd.high, "steps": vd.steps,
                         "text": str(vd), "decided": vd.call != UNDECIDED})
    return {"cell": cell, "n": n, "label": label, "measured_steps": res.measured_steps,
            "requested_steps": res.steps, "stopped": res.stopped, "budget_s": res.budget_s,
            "medians_ms": {v.name: (v.median_ms if v.ok else None) for v in res.variants},
            "verdicts": verdicts}


def child(path: Path) -> dict:
    """Run the notebook's code cells through its last profile cell; the verdicts of each profile."""
    sys.path.insert(0, str(ROOT))
    os.chdir(path.parent)  # a notebook runs in its own folder
    from IPython.core.interactiveshell import InteractiveShell

    import fusionlab.profiler

    made: list = []
    real = fusionlab.profiler.profile

    def recording_profile(*args, **kwargs):
        res = real(*args, **kwargs)
        made.append(res)
        return res

    fusionlab.profiler.profile = recording_profile  # what fl.profile and the magic look up
    shell = InteractiveShell.instance()
    last = profile_cells(path)[-1]
    out, seconds = [], {}
    for i, src in code_cells(path):
        if i > last:
            break
        before = len(made)
        start = time.perf_counter()
        shell.run_cell(src, store_history=True).raise_error()
        seconds[i] = time.perf_counter() - start
        out += [summarize(res, i, k) for k, res in enumerate(made[before:], 1)]
    return {"profiles": out, "cell_seconds": seconds}


def run_child(path: Path, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not line:
        raise RuntimeError(f"{path.name}: the rerun failed\n{(res.stderr or res.stdout)[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


# --------------------------------------------------------------------------- the parent


def rerun_notebook(path: Path, reruns: int, cache_root: Path, fresh_caches: bool) -> list[dict]:
    runs = []
    for r in range(reruns):
        caches = cache_root / (f"rerun{r}" if fresh_caches else "shared")
        env = {k: v for k, v in os.environ.items() if k != "FUSIONLAB_PROFILE_BUDGET"}
        env.update(TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), FUSIONLAB_CACHE_DIR=str(caches / "fusionlab"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   MPLBACKEND="Agg")
        start = time.perf_counter()
        runs.append(run_child(path, env))
        runs[-1]["seconds"] = time.perf_counter() - start
        print(f"  {path.name} rerun {r + 1}/{reruns}: {runs[-1]['seconds']:.0f} s", flush=True)
    return runs


def cell_text(v: dict) -> str:
    call = {"faster": "faster", "slower": "slower"}.get(v["call"], "no difference")
    return f"{call} {v['ratio']:.2f}x/{v['steps']}"


def report(name: str, runs: list[dict]) -> list[dict]:
    """Print the verdicts of each rerun side by side; returns one row per comparison."""
    rows = []
    keys = [(p["cell"], p["n"], p["label"]) for p in runs[0]["profiles"]]
    for cell, n, label in keys:
        profs = [next(p for p in run["profiles"] if (p["cell"], p["n"]) == (cell, n)) for run in runs]
        print(f"{name} cell {cell} profile {n}: {label}; steps measured per rerun: "
              + ", ".join(f"{p['measured_steps']} ({p['stopped']})" for p in profs))
        print(f"  {'median ms':<22} " + "  ".join(
            f"{', '.join(f'{v} {ms:.2f}' for v, ms in p['medians_ms'].items() if ms is not None):<26}"
            for p in profs))
        for j, comp in enumerate(profs[0]["verdicts"]):
            verdicts = [p["verdicts"][j] for p in profs]
            calls = {v["call"] for v in verdicts}
            holds = len(calls) == 1
            print(f"  {comp['comparison']:<22} " + "  ".join(f"{cell_text(v):<26}" for v in verdicts)
                  + ("  holds" if holds else "  FLIPS"))
            rows.append({"notebook": name, "cell": cell, "profile": n, "label": label,
                         "comparison": comp["comparison"], "calls": [v["call"] for v in verdicts],
                         "holds": holds, "verdicts": verdicts,
                         "stopped": [p["stopped"] for p in profs], "steps": [p["measured_steps"] for p in profs],
                         "medians_ms": [p["medians_ms"] for p in profs]})
    return rows


def magic_notebook(path: Path, magic: str) -> Path:
    """A notebook that loads the extension and runs ``%fusionlab profile <magic>``."""
    cells = ["%load_ext fusionlab", f"result = %fusionlab profile {magic}\nresult"]
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [],
                                           "execution_count": None} for c in cells],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    print(f"{path.name}: %fusionlab profile {magic}")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--notebooks", nargs="+", default=None, help="notebook file names (default: every one "
                   "with a profile cell)")
    p.add_argument("--reruns", type=int, default=3)
    p.add_argument("--json", default=None, metavar="PATH", help="write every verdict here")
    p.add_argument("--fresh-caches", action="store_true", help="new fusionlab/Inductor caches each rerun")
    p.add_argument("--magic", nargs="+", default=[], metavar="ARGS",
                   help="also rerun '%%fusionlab profile ARGS' as a notebook of its own (after '%%load_ext "
                        "fusionlab'), e.g. \"zoo:mlp --steps 3 --warmup 1 --compare eager,fusionlab\"")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(Path(args.child))))
        return 0
    if args.reruns < 1:
        p.error(f"--reruns must be >= 1, got {args.reruns}")
    paths = [NOTEBOOKS / n for n in args.notebooks] if args.notebooks else sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            p.error(f"no notebook {path}")
    paths = [path for path in paths if profile_cells(path)] if (args.notebooks or not args.magic) else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="fusionlab-reruns-") as d:
        for i, magic in enumerate(args.magic, 1):  # a notebook of one magic, as a user would type it
            paths.append(magic_notebook(Path(d) / f"magic{i}.ipynb", magic))
        print("profile cells: " + "; ".join(f"{path.name} {profile_cells(path)}" for path in paths))
        print(f"each notebook rerun {args.reruns}x in fresh processes, top to bottom through its last profile "
              "cell; verdicts measured on this CPU. Cells: call ratio-of-medians/steps measured")
        for path in paths:
            runs = rerun_notebook(path, args.reruns, Path(d) / path.stem, args.fresh_caches)
            rows += report(path.name, runs)
    flipped = [r for r in rows if not r["holds"]]
    print(f"{len(rows) - len(flipped)} of {len(rows)} verdicts held on {args.reruns} reruns"
          + (": flipped: " + "; ".join(f"{r['notebook']} cell {r['cell']} {r['comparison']}" for r in flipped)
             if flipped else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if flipped else 0


if __name__ == "__main__":
    sys.exit(main())
