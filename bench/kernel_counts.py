"""Kernels per training step: eager vs fusionlab (select-all) vs Inductor, and search speed.

    .venv/bin/python bench/kernel_counts.py [--models gpt2-block gpt2-tiny] [--no-12l]

Table 1, per zoo model, one training step (forward + backward of the loss):

  eager        kernels the captured ATen graphs launch when run node by node
               (``FusionPlan.summary()`` with nothing selected), non-matmul and matmul apart
  fusionlab    the same after ``plan.select_all()``: non-matmul kernels, and matmul kernels
               with how many of them apply a fused epilogue (``fusionlab.epilogue``: a
               matmul and the pointwise ops on its result are one kernel, still a matmul)
  Inductor     ``torch.compile`` (default Inductor backend, CPU, ``dynamic=False``) of the
               same step function: generated kernels from
               ``torch._inductor.metrics.generated_kernel_count``; its library (extern) calls
               counted apart by scanning the generated wrapper code for ``extern_kernels.<op>(``
               calls (captured with ``torch._inductor.utils.run_and_get_code``)
  bytes        modeled bytes moved per step (each kernel reads its inputs and writes its
               outputs once), before and after select-all; modeled, never measured

Table 2: wall-clock of ``fusionlab.capture`` and ``find_candidates`` on ``gpt2-12l``
(goal: candidate search < 20% of capture) and of one ``plan.select`` / ``plan.deselect`` on
that graph (goal: < 50 ms), medians of a few repeats, measured on this machine's CPU.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fusionlab  # noqa: E402, I001  (first: decides the Triton interpreter before triton is imported)
import torch  # noqa: E402
import fusionlab.zoo as zoo  # noqa: E402
from fusionlab.candidates import find_candidates  # noqa: E402
from fusionlab.capture import default_loss  # noqa: E402
from fusionlab.nodecost import fmt_bytes  # noqa: E402
from fusionlab.plan import FusionPlan  # noqa: E402

_EXTERN = re.compile(r"\bextern_kernels\.(\w+)\(")
_CPP_DEF = re.compile(r"^(cpp_fused_\w+)\s*=\s*async_compile\.cpp", re.M)
_CPP_CALL = re.compile(r"^\s+(cpp_fused_\w+)\(", re.M)


def fusionlab_counts(zm: zoo.ZooModel) -> dict:
    cap = fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    plan = FusionPlan(cap)
    before = plan.summary()
    plan.select_all()
    after = plan.summary()
    return {
        "graphs": ", ".join(g.tag for g in cap.graphs),
        "eager_nonmatmul": before.nonmatmul_before,
        "eager_matmul": before.matmul_kernels,
        "fused_nonmatmul": after.nonmatmul_after,
        "fused_matmul": after.kernels_after - after.nonmatmul_after,
        "fused_epilogues": after.matmul_epilogues,
        "candidates": after.candidates,
        "bytes_before": after.bytes_before,
        "bytes_after": after.bytes_after,
    }


def inductor_counts(zm: zoo.ZooModel) -> dict:
    """Compile the same train step with Inductor on CPU; count its kernels and extern calls."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor import metrics
    from torch._inductor.utils import run_and_get_code

    model, inputs, loss_fn = zm.model, zm.inputs, zm.loss_fn

    def step_fn(*xs):  # what fusionlab.capture traces (see capture._TrainStep)
        out = model(*xs)
        return loss_fn(out) if loss_fn is not None else default_loss(out)

    def run_step():
        loss = torch.compile(step_fn, dynamic=False)(*inputs)
        loss.backward()  # compiles the backward graph
        return loss

    model.train()
    torch._dynamo.reset()
    metrics.reset()
    # no cache hits: every graph is generated (and counted) in this process
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(
        enable_autograd_cache=False
    ):
        _, codes = run_and_get_code(run_step)  # also resets dynamo first
    kernels = metrics.generated_kernel_count
    for p in model.parameters():
        p.grad = None
    extern: dict[str, int] = {}
    cpp_defs = cpp_calls = 0
    for code in codes:
        for name in _EXTERN.findall(code):
            extern[name] = extern.get(name, 0) + 1
        cpp_defs += len(set(_CPP_DEF.findall(code)))
        cpp_calls += len(_CPP_CALL.findall(code))
    torch._dynamo.reset()
    return {
        "kernels": kernels,
        "cpp_kernel_defs": cpp_defs,
        "cpp_calls": cpp_calls,
        "extern": sum(extern.values()),
        "extern_ops": ", ".join(f"{k}x{v}" for k, v in sorted(extern.items())),
        "graphs": len(codes),
    }


def kernel_table(names: list[str]) -> None:
    rows = []
    for name in names:
        f = fusionlab_counts(zoo.get(name))
        i = inductor_counts(zoo.get(name))
        rows.append((name, f, i))
    head = (
        f"{'model':12} {'eager':>6} {'eager':>6} {'fusionlab':>9} {'fusionlab':>10} {'Inductor':>8} {'Inductor':>8} "
        f"{'Inductor':>8} {'bytes':>9} {'bytes':>9}\n"
        f"{'':12} {'non-mm':>6} {'mm':>6} {'non-mm':>9} {'mm (epi)':>10} {'non-mm':>8} {'cpp fns':>8} "
        f"{'mm':>8} {'eager':>9} {'fused':>9}"
    )
    print("Kernels per training step (forward + backward) on CPU; fusionlab: select-all; "
          "bytes are modeled, not measured")
    print(head)
    print("-" * 95)
    for name, f, i in rows:
        mm = f"{f['fused_matmul']} ({f['fused_epilogues']})"
        print(
            f"{name:12} {f['eager_nonmatmul']:6d} {f['eager_matmul']:6d} {f['fused_nonmatmul']:9d} {mm:>10} "
            f"{i['kernels']:8d} {i['cpp_calls']:8d} {i['extern']:8d} "
            f"{fmt_bytes(f['bytes_before']):>9} {fmt_bytes(f['bytes_after']):>9}"
        )
    print()
    for name, f, i in rows:
        print(
            f"  {name}: fusionlab graphs {f['graphs']}, {f['candidates']} candidates selected; "
            f"Inductor: {i['graphs']} output-code modules, {i['cpp_kernel_defs']} distinct cpp_fused_* "
            f"functions, extern calls {i['extern_ops'] or 'none'}"
        )
    print(
        "\n  How each column was counted:\n"
        "  eager non-mm / mm  kernel-launching nodes of fusionlab's captured ATen graphs "
        "(FusionPlan.summary(), nothing selected);\n"
        "                     mm = mm/addmm/bmm/convolution nodes, the rest pointwise/reduction/opaque\n"
        "  fusionlab non-mm   non-matmul kernels after plan.select_all() "
        "(PlanSummary.nonmatmul_after)\n"
        "  fusionlab mm (epi) matmul kernels after select-all (the same count as eager: a matmul never\n"
        "                     disappears), in parentheses those that apply a fused epilogue "
        "(PlanSummary.matmul_epilogues)\n"
        "  Inductor non-mm    torch._inductor.metrics.generated_kernel_count after torch._dynamo.reset()"
        " + metrics.reset(),\n"
        "                     FX-graph/autograd caches off: the C++ loop nests Inductor generated on CPU\n"
        "                     (CPU codegen splits e.g. a softmax into several loops; a GPU run "
        "would give fewer Triton kernels)\n"
        "  Inductor cpp fns   calls of cpp_fused_* functions in the generated CPU wrapper code "
        "(C++ Inductor packs several loop nests\n"
        "                     into one function), code from torch._inductor.utils.run_and_get_code\n"
        "  Inductor mm        `extern_kernels.<op>(` calls in that wrapper code: library matmuls, "
        "not counted in 'non-mm'\n"
        "                     (Inductor's CPU backend runs a training step's matmuls as library calls and "
        "their epilogues as\n"
        "                     C++ loops; see fusionlab/executors/__init__.py)"
    )


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def search_table(name: str, capture_repeats: int, repeats: int) -> None:
    zm = zoo.get(name)
    caps = []

    def do_capture():
        caps.append(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))

    t_capture = _median_time(do_capture, capture_repeats)
    cap = caps[-1]
    cands = []
    t_search = _median_time(lambda: cands.append(find_candidates(cap)), repeats)
    plan = FusionPlan(cap, cands[-1])
    one = cands[-1][len(cands[-1]) // 2].id
    pattern = "softmax"

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # on an empty plan, and on a plan where every other candidate is already selected
    # (the cycle check then walks the contracted graph with all groups in place)
    sel_times, desel_times, pat_sel, pat_desel, full_sel, full_desel = [], [], [], [], [], []
    for _ in range(repeats):
        plan.clear()
        sel_times.append(timed(lambda: plan.select(one)))
        desel_times.append(timed(lambda: plan.deselect(one)))
        pat_sel.append(timed(lambda: plan.select(pattern)))
        pat_desel.append(timed(lambda: plan.deselect(pattern)))
        plan.select_all()
        full_desel.append(timed(lambda: plan.deselect(one)))
        full_sel.append(timed(lambda: plan.select(one)))
    plan.clear()
    t_all = _median_time(lambda: plan.select_all(), repeats)
    n_sel = len(plan.selected)
    plan.clear()

    med = statistics.median
    n_nodes = cap.num_nodes()
    print(
        f"\nSearch and selection speed on {name} ({n_nodes} nodes in {len(cap.graphs)} graphs, "
        f"{len(cands[-1])} candidates), measured on CPU, median of {repeats} "
        f"(capture: {capture_repeats})"
    )
    print("  fusionlab.capture".ljust(46) + f"{t_capture:9.3f} s")
    print(
        "  find_candidates".ljust(46) + f"{t_search:9.3f} s   = {t_search / t_capture:.1%} of capture "
        "(goal < 20%)"
    )
    w = 46
    print(f"  plan.select('{one}'), empty plan".ljust(w) + f"{med(sel_times) * 1e3:9.2f} ms  (goal < 50 ms)")
    print("  plan.deselect(same), empty plan".ljust(w) + f"{med(desel_times) * 1e3:9.2f} ms  (goal < 50 ms)")
    print("  plan.deselect(same), all others selected".ljust(w) + f"{med(full_desel) * 1e3:9.2f} ms  (goal < 50 ms)")
    print("  plan.select(same), all others selected".ljust(w) + f"{med(full_sel) * 1e3:9.2f} ms  (goal < 50 ms)")
    print(f"  plan.select('{pattern}'), empty plan".ljust(w) + f"{med(pat_sel) * 1e3:9.2f} ms")
    print(f"  plan.deselect('{pattern}')".ljust(w) + f"{med(pat_desel) * 1e3:9.2f} ms")
    print(f"  plan.select_all() ({n_sel} ids)".ljust(w) + f"{t_all * 1e3:9.2f} ms")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gpt2-block", "gpt2-tiny"])
    ap.add_argument("--search-model", default="gpt2-12l")
    ap.add_argument("--no-12l", action="store_true", help="skip the search/selection timing")
    ap.add_argument("--capture-repeats", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fusionlab {fusionlab.__version__}\n")
    kernel_table(args.models)
    if not args.no_12l:
        search_table(args.search_model, args.capture_repeats, args.repeats)


if __name__ == "__main__":
    main()
