"""Training-step time: eager vs fusionlab select-all vs torch.compile, measured on this CPU.

    .venv/bin/python bench/profile_steps.py [--models gpt2-block gpt2-tiny] [--steps 60]
        [--warmup 10] [--budget 60] [--threads 1] [--batch B] [--optimizer adamw] [--html-dir DIR]
        [--executor auto|inductor|inductor-groups]

For each zoo model, ``fusionlab.profile`` runs whole training steps (forward, loss,
backward, AdamW step, zero_grad) of four variants, each on its own copy of the model,
interleaved step by step (the order rotating every round):

  eager      the model as written (native ATen ops: layer_norm, gelu, softmax are one op each)
  unfused    the fusionlab variant's executor with nothing selected (CPU: the same
             whole-graph Inductor compile, every op on its own): fusionlab vs unfused is
             what the chosen fusions alone buy (with --executor inductor-groups or triton:
             the captured ATen graphs run op by op)
  fusionlab  select-all plan; every group compiled alone by Inductor and checked against
             eager, then each graph compiled whole by Inductor with fusion allowed only
             inside the groups (``InductorGraphExecutor``); every other op its own loop
  inductor   plain ``torch.compile`` of the same step function

Reported: median step time and spread (IQR, min) over the measured steps (at least
--steps; more, up to --budget seconds of timed rounds, while a comparison with eager is
undecided), the verdict against eager and against torch.compile (a speed-up only where
its 99 % interval lies beyond the noise, else "no difference measurable in N steps"), kernels
per step (forward + backward; eager counted by torch.profiler, the compiled variants from
Inductor's generated code: C++ function and library calls; "loops": the loop nests of the
whole-graph executor, several of which may share one C++ function) and the *modeled* non-matmul bytes per
step (fusionlab.cost: eager = every op reads its inputs and writes its output; select-all =
each group reads its inputs once and writes its outputs once).

Goals (from the issue): fusionlab faster than eager, and within 10% of torch.compile;
modeled non-matmul traffic of select-all at most half of eager's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fusionlab  # noqa: E402, I001  (first: decides the Triton interpreter before triton is imported)
import torch  # noqa: E402
from fusionlab import zoo  # noqa: E402
from fusionlab.plan import plan_for  # noqa: E402
from fusionlab.profiler import profile  # noqa: E402
from fusionlab.profiler.results import verdict_cell  # noqa: E402
from fusionlab.verdict import FASTER  # noqa: E402


def bench_model(name: str, args) -> dict:
    zm = zoo.get(name, batch=args.batch)
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))
    res = profile(zm.model, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=args.steps, warmup=args.warmup,
                  compare=args.compare, optimizer=args.optimizer, gpu=args.gpu, model_name=name,
                  executor=args.executor, budget_s=args.budget)
    if args.html_dir:
        os.makedirs(args.html_dir, exist_ok=True)
        res.to_html(os.path.join(args.html_dir, f"profile_{name}.html"))
    return {"name": name, "result": res}


def _cell(res, name: str, base: str) -> str:
    """The verdict of `name` against `base` as a table cell ("-" where either is missing)."""
    names = [v.name for v in res.variants]
    if name not in names or base not in names:
        return "-"
    return "baseline" if name == base else verdict_cell(res.verdict(name, base))


def _f(x, fmt="{:.3f}"):
    return "-" if x is None or x != x else fmt.format(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gpt2-block", "gpt2-tiny"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds of timed rounds per model to decide each verdict (default 60)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the zoo model's)")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--compare", default="eager,unfused,fusionlab,inductor")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--executor", default="auto",
                    help="fusionlab variant: auto | inductor (whole graph, fusion only in groups) | "
                         "inductor-groups (each group its own compiled call) | triton")
    ap.add_argument("--html-dir", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s); "
          f"{args.steps} measured steps after {args.warmup} warm-up, interleaved; optimizer {args.optimizer}; "
          f"batch {args.batch or 'zoo default'}; load average before: {os.getloadavg()[0]:.2f}")
    results = [bench_model(m, args) for m in args.models]

    head = (f"{'model':11} {'variant':10} {'executor':31} {'steps':>5} {'median ms':>9} {'IQR ms':>8} {'min ms':>8} "
            f"{'vs eager':>37} {'vs compile':>37} {'kernels':>7} {'loops':>5} {'modeled non-matmul':>19}")
    print()
    print(head)
    print("-" * len(head))
    goals = []
    for r in results:
        res = r["result"]
        for v in res.variants:
            m = res.modeled.get(v.name)
            nm = f"{m.nonmatmul_bytes / 2**20:.2f} MiB" if m is not None else "-"
            vs_e = _cell(res, v.name, "eager")
            vs_c = _cell(res, v.name, "inductor")
            print(f"{r['name']:11} {v.name:10} {v.executor[:31]:31} {len(v.samples):>5} {_f(v.median_ms):>9} "
                  f"{_f(v.iqr_ms):>8} {_f(v.min_ms):>8} {vs_e:>37} {vs_c:>37} "
                  f"{v.kernels_per_step if v.kernels_per_step is not None else '-':>7} "
                  f"{v.loop_nests if v.loop_nests is not None else '-':>5} {nm:>19}")
        fl, eg = res.modeled.get("fusionlab"), res.modeled.get("eager")
        try:
            f_ms, e_ms = res["fusionlab"].median_ms, res["eager"].median_ms
            c_ms = res["inductor"].median_ms
        except KeyError:
            continue
        vd = res.verdict("fusionlab", "eager")
        goals.append((r["name"], vd.call == FASTER, f"fusionlab {f_ms:.3f} ms vs eager {e_ms:.3f} ms: {vd}"))
        vc = res.verdict("fusionlab", "inductor")  # within 10 %: the interval's slow end above 1/1.1
        goals.append((r["name"], vc.low >= 1 / 1.10, f"fusionlab {f_ms:.3f} ms vs torch.compile {c_ms:.3f} ms "
                      f"({(f_ms / c_ms - 1) * 100:+.1f}%, goal <= +10% across the interval): {vc}"))
        if fl is not None and eg is not None:
            frac = fl.nonmatmul_bytes / eg.nonmatmul_bytes
            goals.append((r["name"], frac <= 0.5, f"modeled non-matmul bytes: select-all {fl.nonmatmul_bytes / 2**20:.2f}"
                          f" MiB vs eager {eg.nonmatmul_bytes / 2**20:.2f} MiB ({frac:.0%}, goal <= 50%)"))
        rep = res["fusionlab"].report
        if rep is not None and rep.failed:
            goals.append((r["name"], False, f"{len(rep.failed)} group(s) not fused: "
                          + "; ".join(f"{s.candidate}: {s.reason}" for s in rep.failed)))
    print("\nGoals:")
    for name, ok, text in goals:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {text}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes share these cores: compare "
          "min and median)")
    print("\nModeled figures come from fusionlab.cost (never measured); times are measured on this CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
