"""Measured value of every candidate (fused vs unfused, CPU) and what it costs, next to torch.compile's cold compile.

    .venv/bin/python bench/candidate_value.py [--model gpt2-tiny] [--rounds 30] [--threads 1]

1. Captures the zoo model's training step and finds its candidates (timed apart: "after capture").
2. ``fusionlab.inductor.measure_candidates``: each candidate compiled alone by Inductor (C++),
   checked against eager, then timed against the same ops run unfused (eager ATen calls) in
   interleaved rounds; the verdict is ``fusionlab.verdict``'s (bootstrap ratio of medians,
   ±3 %). Prints the table, the wall-clock to produce it, and the candidates measured slower fused.
3. torch.compile's own cold compile of the same training step (forward + backward, default
   Inductor, ``dynamic=False``), in a fresh process with an empty Inductor cache, timed to the end
   of the first backward.

Both runs start cold: this process gets an empty fusionlab cache and an empty Inductor cache
(``--warm`` keeps the user's). All figures are measured on this machine's CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cold_compile(model_name: str, threads: int) -> float:
    """Seconds torch.compile needs for the first training step (compile + run), in a fresh process."""
    import fusionlab  # noqa: F401, I001  (first: decides the Triton interpreter)
    import torch

    from fusionlab import zoo
    from fusionlab.capture import default_loss

    torch.set_num_threads(threads)
    zm = zoo.get(model_name)
    model, inputs, loss_fn = zm.model, zm.inputs, zm.loss_fn

    def step(*xs):
        out = model(*xs)
        return loss_fn(out) if loss_fn is not None else default_loss(out)

    start = time.perf_counter()
    loss = torch.compile(step, dynamic=False)(*inputs)
    loss.backward()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2-tiny")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timed rounds per candidate (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU)")
    p.add_argument("--warm", action="store_true", help="keep the existing fusionlab and Inductor caches")
    p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_only:
        print(f"{cold_compile(args.model, args.threads):.3f}")
        return 0
    if not args.warm:
        os.environ["FUSIONLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusionlab-bench-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-bench-")

    import fusionlab as fl  # noqa: I001
    import torch

    from fusionlab import zoo
    from fusionlab.inductor import measure_candidates

    torch.set_num_threads(args.threads)
    zm = zoo.get(args.model)
    t0 = time.perf_counter()
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    plan = fl.FusionPlan(cap)
    t_capture = time.perf_counter() - t0
    values = measure_candidates(plan, rounds=args.rounds)
    print(f"fusionlab candidate values: {args.model}, {len(plan.candidates)} candidates, {args.rounds} interleaved "
          f"rounds each, {args.threads} thread(s), {'warm' if args.warm else 'cold'} caches")
    print(values.table())
    print()
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-cold-"))
    out = subprocess.run([sys.executable, __file__, "--compile-only", "--model", args.model,
                          "--threads", str(args.threads)], capture_output=True, text=True, env=env, check=True)
    t_compile = float(out.stdout.strip().splitlines()[-1])
    print(f"capture + candidates:                        {t_capture:7.1f} s")
    print(f"the table above (after capture):             {values.seconds:7.1f} s  (measured, this CPU)")
    print(f"torch.compile cold compile + first step:     {t_compile:7.1f} s  (fresh process, empty Inductor cache)")
    print(f"table / torch.compile:                       {values.seconds / t_compile:7.2f}x")
    slower = values.slower
    if slower:
        print(f"measured slower fused than unfused ({len(slower)}):")
        for v in slower:
            print(f"  {v.candidate}: {v.short} ({v.fused_ms:.3f} ms fused vs {v.unfused_ms:.3f} ms unfused, "
                  f"ratio interval {v.low:.2f}-{v.high:.2f}x)")
    else:
        print("no candidate measured slower fused than unfused")
    failed = [v for v in values if v.error]
    for v in failed:
        print(f"  not timed: {v.candidate}: {v.error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
