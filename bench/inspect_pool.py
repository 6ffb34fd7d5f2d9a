"""Benchmark the kernel inspector on real generated kernels: 1 vs N workers, cold vs warm cache.

    .venv/bin/python bench/inspect_pool.py [--model gpt2-tiny] [--target sm_90] [--workers 2] [--repeat 3]

Kernels: every kernel of the model's select-all plan (``plan.kernels(validate=False)``;
gpt2-tiny, the 2-layer transformers GPT-2: 29 kernels). ``run_bench(sources)`` takes any
list of ``KernelSource``.

Rows (each the median of ``--repeat`` runs; every cold run gets a fresh, empty cache dir):
  cold, new pool, N workers  -- worker processes started from nothing (includes importing
                                triton + torch in each worker), then every kernel compiled
  cold, warm pool, N workers -- workers already running: compiles only
  warm cache                 -- every report served from the disk cache (no worker used)

The machine's load average is printed with the table: other processes compete for the
same cores, and the N-worker speed-up shrinks when they do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusionlab.inspect.compile import inspect_many  # noqa: E402
from fusionlab.inspect.workers import WorkerPool  # noqa: E402


def plan_sources(model: str = "gpt2-tiny"):
    """The KernelSources of `model`'s select-all plan."""
    import fusionlab as fl
    from fusionlab import zoo

    zm = zoo.get(model)
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    plan = fl.FusionPlan(cap).select_all()
    return [k.source for k in plan.kernels(validate=False)]


def _timed(sources, target, workers, pool, cache_dir):
    os.environ["FUSIONLAB_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    reps = inspect_many(sources, target, workers=workers, pool=pool, progress=False)
    dt = time.perf_counter() - t0
    bad = [r for r in reps if not r.ok]
    if bad:
        raise SystemExit(f"{len(bad)} kernels failed, first: {bad[0].name}: {bad[0].error}")
    return dt, sum(r.cached for r in reps), sum(r.compile_seconds for r in reps if not r.cached)


def _label(kind: str, w: int) -> str:
    return f"cold, {kind}, {w} worker{'s' * (w > 1)}"


def run_bench(sources, target: str = "sm_90", max_workers: int = 2, repeat: int = 3):
    """Rows of (label, median seconds, all seconds, reports served from cache, compile seconds)."""
    samples: dict[str, list[tuple[float, int, float]]] = {}
    saved = os.environ.get("FUSIONLAB_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix="fusionlab-bench-") as tmp:
            for _ in range(repeat):
                for w in sorted({1, max_workers}):  # alternate, so load changes hit both alike
                    with WorkerPool(w) as pool:
                        d = tempfile.mkdtemp(dir=tmp)
                        samples.setdefault(_label("new pool", w), []).append(
                            _timed(sources, target, w, pool, d)
                        )
                        d = tempfile.mkdtemp(dir=tmp)
                        samples.setdefault(_label("warm pool", w), []).append(
                            _timed(sources, target, w, pool, d)
                        )
                        samples.setdefault("warm cache", []).append(
                            _timed(sources, target, w, pool, d)
                        )
    finally:
        if saved is None:
            os.environ.pop("FUSIONLAB_CACHE_DIR", None)
        else:
            os.environ["FUSIONLAB_CACHE_DIR"] = saved
    rows = []
    for label, runs in samples.items():
        secs = [s for s, _, _ in runs]
        rows.append(
            (
                label,
                statistics.median(secs),
                secs,
                runs[0][1],
                statistics.median(c for _, _, c in runs),
            )
        )
    order = [_label(k, w) for w in sorted({1, max_workers}) for k in ("new pool", "warm pool")]
    rows.sort(key=lambda r: order.index(r[0]) if r[0] in order else len(order))
    return rows


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def print_table(rows, n: int, target: str, label: str = "", load_before: str = "") -> dict:
    secs = {r[0]: r[1] for r in rows}
    print(
        f"\ninspect {n} kernels{f' of {label}' if label else ''} for {target} "
        f"({os.cpu_count()} CPU cores; medians of {len(rows[0][2])} runs)"
    )
    print(f"load average (1/5/15 min): before {load_before or '?'}, after {_load()}")
    print(f"{'run':<28}{'median s':>9}{'cached':>8}{'compile s':>11}   all runs (s)")
    for lab, med, runs, cached, comp in rows:
        print(f"{lab:<28}{med:>9.2f}{cached:>8}{comp:>11.2f}   {' '.join(f'{s:.2f}' for s in runs)}")
    ws = sorted({int(lab.split(", ")[-1].split()[0]) for lab in secs if lab.startswith("cold")})
    out = {}
    if len(ws) > 1:
        for kind in ("new pool", "warm pool"):
            one, many = secs[_label(kind, 1)], secs[_label(kind, ws[-1])]
            out[f"speedup {kind}"] = one / many
            print(f"{ws[-1]} workers vs 1 (cold cache, {kind}): {one / many:.2f}x")
    cold = secs[_label("warm pool", ws[-1])]
    out["warm vs cold"] = cold / secs["warm cache"]
    print(
        f"warm cache vs cold cache (warm pool, {ws[-1]} workers): "
        f"{cold / secs['warm cache']:.0f}x faster"
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="gpt2-tiny", help="zoo model whose select-all plan is inspected")
    p.add_argument("--target", default="sm_90")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    sources = plan_sources(args.model)
    load = _load()
    rows = run_bench(sources, args.target, args.workers, args.repeat)
    print_table(rows, len(sources), args.target, f"{args.model} (select-all plan)", load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
