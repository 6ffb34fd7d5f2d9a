"""Fuzz fusionlab with random whole programs: capture, fuse everything, compare with eager.

    .venv/bin/python bench/fuzz.py [--cases 500] [--seed 0] [--e2e-every 5] [--max-ops 8]
        [--executor triton|inductor] [--no-codegen] [--verbose]

A command line over :mod:`fusionlab.testing`, which holds the program generator, the
float64 oracle and the two checks (``check_codegen``: every candidate of a program's
forward and backward graphs built, checked, re-checked on the program's real values;
``check_e2e``: capture -> select_all -> compile -> one fused training step against
eager). ``tests/test_fuzz.py`` runs the same checks with hypothesis. "Equal to eager"
is fusionlab.check's tolerance table, the one every kernel check uses.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # a fallback: an installed (or PYTHONPATH) fusionlab comes first

from fusionlab.testing import RandomDraw, SilentMismatch, check_codegen, check_e2e, gen_program  # noqa: E402

# --------------------------------------------------------------------------- script


def refusal_kind(reason: str) -> str:
    """A refusal reason without the names and numbers that make each one unique."""
    m = re.search(r"check against eager failed: \S+: (MISMATCH|FAILED)[^(]*\(([^;)]*)", reason)
    if m:
        return f"check against eager failed: {m.group(1)} ({m.group(2)})"
    return re.sub(r"\d+", "N", reason)[:100]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--e2e-every", type=int, default=5, help="run the whole pipeline on every k-th program")
    p.add_argument("--max-ops", type=int, default=8)
    p.add_argument("--executor", default="triton", choices=["triton", "inductor"],
                   help="e2e cases: fusionlab's Triton kernels (interpreter on CPU) or the whole-graph "
                        "Inductor executor")
    p.add_argument("--no-codegen", action="store_true", help="run only the e2e checks")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    totals = {"codegen": [0, 0.0], "e2e": [0, 0.0]}
    cands = used = specials = 0
    refusals: dict[str, int] = {}
    known: dict[str, int] = {}
    failures = []
    t0 = time.perf_counter()
    for i in range(args.cases):
        prog = gen_program(RandomDraw(args.seed * 1_000_003 + i), max_ops=args.max_ops)
        kinds = ([] if args.no_codegen else ["codegen"]) + (
            ["e2e"] if args.e2e_every and i % args.e2e_every == 0 else [])
        for kind in kinds:
            try:
                if kind == "codegen":
                    r = check_codegen(prog, seed=i)
                else:
                    r = check_e2e(prog, seed=i, executor=args.executor)
            except SilentMismatch as e:
                failures.append((i, kind, str(e)))
                print(f"case {i} ({kind}): MISMATCH\n{e}\n", flush=True)
                continue
            except Exception as e:  # noqa: BLE001 - a crash is a finding
                failures.append((i, kind, traceback.format_exc()))
                print(f"case {i} ({kind}): CRASH {type(e).__name__}: {e}\n{prog!r}\n", flush=True)
                continue
            totals[kind][0] += 1
            totals[kind][1] += r.seconds
            for bug in r.known_bugs:
                known[bug] = known.get(bug, 0) + 1
            cands += r.candidates
            used += r.used
            specials += r.special_checks
            for reason in r.refused.values():
                key = refusal_kind(reason)
                refusals[key] = refusals.get(key, 0) + 1
            if args.verbose:
                print(f"case {i} ({kind}): {r.candidates} candidates, {r.used} used, "
                      f"{len(r.refused)} refused, {r.seconds:.2f}s", flush=True)
    wall = time.perf_counter() - t0
    print(f"\n{args.cases} programs (seed {args.seed}) in {wall:.0f}s")
    for kind, (n, s) in totals.items():
        if n:
            print(f"  {kind:8} {n:5d} passed, {s / n:.2f}s per case")
    print(f"  candidates {cands}, kernels used {used}, re-checked on real values {specials}")
    if refusals:
        print("  refusals (reason: count):")
        for k, v in sorted(refusals.items(), key=lambda kv: -kv[1]):
            print(f"    {v:4d}  {k}")
    if known:
        print("  cases that hit a known core bug (fusionlab.testing.KNOWN_BUGS): "
              + ", ".join(f"{k} x{v}" for k, v in known.items()))
    print(f"  failures: {len(failures)}")
    for i, kind, text in failures:
        print(f"    case {i} ({kind}): {text.splitlines()[0] if text else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
