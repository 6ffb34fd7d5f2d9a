"""Time to the first fused step: cold, warm (a new process, caches kept) and after a toggle.

    .venv/bin/python bench/warm_start.py [--models gpt2-block gpt2-tiny llama-block] [--threads 1]

For each zoo model, with empty caches of its own (``TORCHINDUCTOR_CACHE_DIR`` and
``FUSIONLAB_CACHE_DIR`` in a temporary directory):

  cold       a new process: fusionlab's first measured step of the select-all plan
             (``plan.compile(model, executor=InductorGraphExecutor())``, one forward and
             backward): every group compiled alone and checked, each graph compiled whole
  warm       the same plan again in a new process: Inductor's cache serves the graphs (the
             fusion policy is in its key), fusionlab's the verified loop listings and the
             group checks
  toggle fw  in that process, the plan with one forward candidate deselected
  toggle bw  then also one backward candidate deselected

Each process imports Inductor before timing (a one-off per process that torch.compile pays
too). Printed per row: seconds, and which graphs were served from the cache. Goals (from
the issue): warm <= 3 s, one toggle <= 3 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(name: str, toggles: bool, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import fusionlab  # noqa: I001  (first: decides the Triton interpreter before triton is imported)
    import torch
    import torch._inductor.compile_fx  # noqa: F401  (the one-off import, outside the timings)
    from fusionlab import zoo
    from fusionlab.executors import InductorGraphExecutor
    from fusionlab.plan import plan_for

    torch.set_num_threads(threads)
    zm = zoo.get(name)
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")

    def first_step(plan) -> dict:
        ex = InductorGraphExecutor()
        start = time.perf_counter()
        fused = plan.compile(copy.deepcopy(zm.model), executor=ex)
        fused(*zm.inputs).backward()
        return {"s": time.perf_counter() - start,
                "graphs": [(g.kind, g.cached) for g in ex.graphs],
                "checked": len(ex.statuses) - len(ex.reused_checks), "reused": len(ex.reused_checks),
                "fallbacks": len(fused.report.fallbacks)}

    out = {"first": first_step(plan)}
    if toggles:
        fw = next(c.id for c in plan.selected if c.graph.startswith("fw"))
        bw = next(c.id for c in plan.selected if c.graph.startswith("bw"))
        out["toggle fw"] = first_step(plan.deselect(fw))
        out["toggle bw"] = first_step(plan.deselect(bw))
    return out


def run(name: str, toggles: bool, env: dict, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(threads)] + (["--toggles"] if toggles else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not line:
        raise RuntimeError(f"{name}: child failed\n{res.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def fmt(r: dict) -> str:
    hits = ",".join(f"{k[:2]}{'+' if c else '-'}" for k, c in r["graphs"])
    return f"{r['s']:7.2f} s  [{hits}; checked {r['checked']}, reused {r['reused']}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gpt2-block", "gpt2-tiny", "llama-block"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child")
    p.add_argument("--toggles", action="store_true")
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.toggles, args.threads)))
        return
    print("fusionlab first measured step (s), InductorGraphExecutor, select-all; "
          "[graph +: served from cache, -: compiled; checked/reused group checks]")
    print(f"{'model':<12} {'cold':<44} {'warm (new process)':<44} {'toggle one fw':<44} {'toggle one bw':<44}")
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="fusionlab-bench-") as d:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(d) / "inductor"),
                   "FUSIONLAB_CACHE_DIR": str(Path(d) / "fusionlab")}
            cold = run(name, False, env, args.threads)
            warm = run(name, True, env, args.threads)
        print(f"{name:<12} {fmt(cold['first']):<44} {fmt(warm['first']):<44} {fmt(warm['toggle fw']):<44} "
              f"{fmt(warm['toggle bw']):<44}", flush=True)


if __name__ == "__main__":
    main()
