"""Benchmark the kernel inspector: cold compiles with 1 vs 2 workers, cold vs warm cache.

    .venv/bin/python bench/inspect_pool.py [--target sm_90] [--workers 2]

Kernels: the hand-written pointwise / reduction / looped-reduction kernels from
tests/test_inspect.py, each at 4 block sizes (12 distinct sources). ``run_bench(sources)``
takes any list of ``KernelSource`` (e.g. a plan's kernels).

Rows:
  cold, new pool, N workers  -- empty disk cache, worker processes started from nothing
                                (includes importing triton + torch in each worker)
  cold, warm pool, N workers -- empty disk cache, workers already running (compile only)
  warm cache                 -- every report served from the disk cache (no worker used)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusionlab.build.inspect import inspect_many  # noqa: E402
from fusionlab.build.workers import WorkerPool  # noqa: E402


def sample_sources():
    """12 distinct KernelSources: 3 hand-written kernels x 4 block sizes."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_inspect as t

    return (
        [t.pointwise(xblock=b) for b in (256, 512, 1024, 2048)]
        + [t.reduction(rblock=b) for b in (512, 1024, 2048, 4096)]
        + [t.looped(rblock=b) for b in (64, 128, 256, 512)]
    )


def _timed(sources, target, workers, pool, cache_dir):
    os.environ["FUSIONLAB_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    reps = inspect_many(sources, target, workers=workers, pool=pool, progress=False)
    dt = time.perf_counter() - t0
    bad = [r for r in reps if not r.ok]
    if bad:
        raise SystemExit(f"{len(bad)} kernels failed, first: {bad[0].name}: {bad[0].error}")
    return dt, sum(r.cached for r in reps), sum(r.compile_seconds for r in reps if not r.cached)


def run_bench(
    sources, target: str = "sm_90", max_workers: int = 2
) -> list[tuple[str, float, int, float]]:
    """Rows of (label, seconds, reports served from cache, summed in-worker compile seconds)."""
    rows = []
    saved = os.environ.get("FUSIONLAB_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix="fusionlab-bench-") as tmp:
            for w in sorted({1, max_workers}):
                with WorkerPool(w) as pool:
                    d = tempfile.mkdtemp(dir=tmp)
                    rows.append(
                        (
                            f"cold, new pool, {w} worker{'s' * (w > 1)}",
                            *_timed(sources, target, w, pool, d),
                        )
                    )
                    d = tempfile.mkdtemp(dir=tmp)
                    rows.append(
                        (
                            f"cold, warm pool, {w} worker{'s' * (w > 1)}",
                            *_timed(sources, target, w, pool, d),
                        )
                    )
                    rows.append(("warm cache", *_timed(sources, target, w, pool, d)))
    finally:
        if saved is None:
            os.environ.pop("FUSIONLAB_CACHE_DIR", None)
        else:
            os.environ["FUSIONLAB_CACHE_DIR"] = saved
    return rows


def print_table(rows, n: int, target: str) -> None:
    secs = {label: s for label, s, *_ in rows}
    ref = rows[0][1]
    print(f"\ninspect {n} kernels for {target} ({os.cpu_count()} CPU cores)")
    print(f"{'run':<28}{'seconds':>9}{'cached':>8}{'compile s':>11}{'vs first row':>14}")
    for label, s, cached, comp in rows:
        print(f"{label:<28}{s:>9.2f}{cached:>8}{comp:>11.2f}{ref / s:>13.1f}x")
    ws = sorted(
        {int(label.split(", ")[-1].split()[0]) for label in secs if label.startswith("cold")}
    )
    if len(ws) > 1:
        for kind in ("new pool", "warm pool"):
            one, many = secs[f"cold, {kind}, 1 worker"], secs[f"cold, {kind}, {ws[-1]} workers"]
            print(f"{ws[-1]} workers vs 1 (cold cache, {kind}): {one / many:.2f}x")
    cold = secs[f"cold, warm pool, {ws[-1]} worker{'s' * (ws[-1] > 1)}"]
    print(
        f"warm cache vs cold cache (warm pool, {ws[-1]} workers): {cold / rows[-1][1]:.0f}x faster"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", default="sm_90")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    sources = sample_sources()
    rows = run_bench(sources, args.target, args.workers)
    print_table(rows, len(sources), args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
