"""The fuzzer's two checks of a random program, and the known bugs they tolerate.

``check_codegen`` (cheap, no dynamo)
    AOTAutograd (``aot_function``, Inductor's decompositions: the ATen level fusionlab
    captures at) gives the forward and backward graphs; every candidate of each is
    generated, built and checked against eager on random inputs (``build_kernel``); a
    kernel that passes is checked again on the *actual* values that reached it in this
    program (NaN, inf, denormals, the real strides). A kernel that passed its random
    check but disagrees on real values is a silent mismatch: the failure this hunts.

``check_e2e`` (whole pipeline)
    ``fusionlab.capture`` -> ``FusionPlan.select_all`` -> ``plan.compile`` -> fused
    forward + backward, against eager: loss, input grads, parameter grads. Every selected
    candidate must appear in ``fused.report``, used or refused with a reason.

Equal to eager: :func:`fusionlab.testing.oracle.mismatch`. Known core bugs
(:data:`KNOWN_BUGS`, :data:`KNOWN_MISMATCHES`) are recognised by their signature and
counted, not failed; each has a strict xfail test in tests/test_fuzz.py and a row in
docs/hostile-inputs.md.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field

import torch
import torch.fx

from ..capture import capture
from ..plan import FusionPlan, PlanError
from .model import FuzzModule, apply_op, make_inputs
from .oracle import CASTS, EPS, Traced, group_dtype, mismatch, reference_step, run_float64
from .programs import Program


@dataclass
class CaseResult:
    kind: str  # "codegen" | "e2e"
    candidates: int = 0
    used: int = 0
    refused: dict = field(default_factory=dict)  # candidate id -> reason
    special_checks: int = 0
    seconds: float = 0.0
    known_bugs: set = field(default_factory=set)  # known core bugs the case hit (KNOWN_BUGS, KNOWN_MISMATCHES)

    @property
    def known_bug(self) -> str | None:
        return "+".join(sorted(self.known_bugs)) or None


class SilentMismatch(AssertionError):
    """A fused result that disagrees with eager while nothing refused it."""


# Bugs found by this fuzzer that the core does not fix yet, by a signature of the exception
# they raise. Each has a strict xfail test in tests/test_fuzz.py; a case that hits one counts
# as known (reported by the script, tolerated by the tests) instead of failing. (Fixed so
# far: the launcher rejecting another layout of an input, select_all() failing on a cycle.)
KNOWN_BUGS: dict[str, re.Pattern] = {}
# What the Triton interpreter (3.9) does differently from a GPU, worked around by the generator:
KNOWN_LIMITS = {
    "bf16-denormals": "the interpreter flushes bf16 denormals to zero when converting to fp32",
}


# Known wrong values, by the conditions that produce them (each with a strict xfail test).
# None open now. Fixed so far: sign(nan); bf16 casts and rounding in the interpreter;
# comparisons of fp16/bf16 values held unrounded (the classifier below recognises that
# one, should it come back: add "narrow-compare" here while it is open).
KNOWN_MISMATCHES: tuple[str, ...] = ()
_CMP = {getattr(getattr(torch.ops.aten, op), ov) for op in ("eq", "ne", "lt", "le", "gt", "ge")
        for ov in ("Tensor", "Scalar")}
_NARROW = (torch.float16, torch.bfloat16)


def _dtype_of(node) -> torch.dtype | None:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v.dtype if isinstance(v, torch.Tensor) else None


def known_mismatch_codegen(kernel, ins) -> str | None:
    """Which known bug explains a kernel that disagrees with eager on real values, if any."""
    for n in kernel.subgraph.graph.nodes:
        if n.target in _CMP and any(_computed_narrow(a) for a in n.all_input_nodes):
            return "narrow-compare"
    return None


def _computed_narrow(node) -> bool:
    """Is `node` (through casts) an fp16/bf16 value computed inside the group?"""
    while node.op != "placeholder":
        if _dtype_of(node) in _NARROW:
            return True
        if node.target not in CASTS:
            return False
        node = node.args[0]
    return False


def known_bug(exc: BaseException) -> str | None:
    text = f"{type(exc).__name__}: {exc}"
    for name, pat in KNOWN_BUGS.items():
        if pat.search(text):
            return name
    return None


def trace_program(prog: Program) -> Traced:
    """AOTAutograd without dynamo (cheap): the same ATen level fusionlab.capture produces."""
    from functorch.compile import aot_function
    from torch._inductor.decomposition import select_decomp_table

    from ..capture import CapturedGraph, node_facts

    model = FuzzModule(prog)
    params = list(model.ps)
    graphs: dict[str, tuple] = {}

    def compiler(kind):
        def comp(gm, example):
            rec: list = []
            graphs[kind] = (CapturedGraph(0 if kind == "forward" else 1, kind, gm, node_facts(gm)), rec)

            def run(args):
                rec.append([a.detach() if isinstance(a, torch.Tensor) else a for a in args])
                return gm(*args)

            run._boxed_call = True
            return run

        return comp

    def fn(params, *inputs):
        v = list(inputs)
        for op in prog.ops:
            v.append(apply_op(op, v, params, prog.dtype))
        loss = None
        for o in prog.outputs:
            t = v[o].float().sum()
            loss = t if loss is None else loss + t
        return loss

    compiled = aot_function(fn, fw_compiler=compiler("forward"), bw_compiler=compiler("backward"),
                            decompositions=select_decomp_table())
    _, passed = make_inputs(prog)
    loss = compiled(params, *passed)
    if loss.requires_grad:
        loss.backward()
    fw, fw_rec = graphs["forward"]
    bw, bw_rec = graphs.get("backward", (None, [None]))
    return Traced(fw, bw, fw_rec[0], bw_rec[0] if bw_rec else None, loss.detach())


def check_codegen(prog: Program, seed: int = 0, traced: Traced | None = None) -> CaseResult:
    """Every candidate of the forward and backward graphs: built, checked, re-checked on real values."""
    from ..candidates import graph_candidates
    from ..kernels.kernel import build_kernel

    start = time.perf_counter()
    res = CaseResult("codegen")
    traced = traced or trace_program(prog)
    for graph, args in ((traced.fw, traced.fw_args), (traced.bw, traced.bw_args)):
        if graph is None:
            continue
        cands, _ = graph_candidates(graph)
        env = _node_values(graph.gm, args) if args is not None else None
        for c in cands:
            res.candidates += 1
            kernel, status = build_kernel(c, graph, validate=True, seed=seed)
            if kernel is None:
                assert status.reason, f"{c.id} refused without a reason"
                res.refused[c.id] = status.reason
                continue
            res.used += 1
            if env is None:
                continue
            ins = [env[i] for i in c.inputs]
            if not all(isinstance(t, torch.Tensor) for t in ins):
                continue
            # the values that reached this group in the real program: special values, and
            # the strides eager gave them (not always the traced ones)
            got = kernel(*ins)
            expected = kernel.subgraph(*ins)
            gen = torch.Generator().manual_seed(seed)
            refs = [run_float64(kernel.subgraph, ins)]
            tol_dtype = group_dtype(kernel)
            refs += [run_float64(kernel.subgraph, ins, gen, EPS[tol_dtype]) for _ in range(3)]
            res.special_checks += 1
            for k, (name, g, e) in enumerate(zip(c.outputs, got, expected)):
                why = mismatch(g, e, [r[k] for r in refs], tol_dtype)
                bug = known_mismatch_codegen(kernel, ins) if why is not None else None
                if bug in KNOWN_MISMATCHES:  # open, with its strict xfail test
                    res.known_bugs.add(bug)
                    continue
                if why is not None:
                    raise SilentMismatch(
                        f"kernel {kernel.name} passed its check but disagrees with eager on the "
                        f"program's own values: output {name} {why}\n{prog!r}\n{kernel.source.source}"
                    )
    res.seconds = time.perf_counter() - start
    return res


def _node_values(gm: torch.fx.GraphModule, args: list) -> dict:
    """Every node's value when `gm` runs on `args` (so a group can be fed its real inputs)."""
    env: dict = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            env[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*args)
    return env


def _eager_grads(model, prog):
    leaves, passed = make_inputs(prog)
    loss = model(*passed)
    if loss.requires_grad:
        loss.backward()
    grads = {f"input{i}": t.grad for i, t in enumerate(leaves)}
    grads.update({f"param{j}": p.grad for j, p in enumerate(model.ps)})
    return loss.detach(), grads


def check_e2e(prog: Program, seed: int = 0, traced: Traced | None = None, executor: str = "triton") -> CaseResult:
    """capture -> select_all -> compile -> fused forward/backward, against eager (and float64).

    ``executor="inductor"``: the fused step runs through ``InductorGraphExecutor`` (whole
    graphs compiled by Inductor, fusion only inside the groups); a graph it could not
    compile whole (``report.fallbacks``: a fusion-policy violation or a compile error) is a
    failure too.
    """
    start = time.perf_counter()
    res = CaseResult("e2e")
    model = FuzzModule(prog)
    _, passed = make_inputs(prog)
    cap = capture(model, *passed)
    plan = FusionPlan(cap)
    try:
        plan.select_all()
    except PlanError as e:
        if known_bug(e) is None:
            raise
        res.known_bugs.add(known_bug(e))
        res.seconds = time.perf_counter() - start
        return res
    res.candidates = len(plan.candidates)
    fused_model = copy.deepcopy(model)
    options = {"seed": seed}
    if executor == "inductor":
        from ..executors import InductorGraphExecutor

        options = {"executor": InductorGraphExecutor(seed=seed)}
    fused = plan.compile(fused_model, **options)
    leaves, passed = make_inputs(prog)
    try:
        loss = fused(*passed)
        loss.backward()
    except Exception as e:  # noqa: BLE001
        bug = known_bug(e)
        if bug is None:
            raise
        res.known_bugs.add(bug)
        res.seconds = time.perf_counter() - start
        return res
    f_grads = {f"input{i}": t.grad for i, t in enumerate(leaves)}
    f_grads.update({f"param{j}": p.grad for j, p in enumerate(fused_model.ps)})
    # every selected candidate is accounted for: used, or refused with a reason
    reported = {k.candidate: k for k in fused.report.kernels}
    for c in plan.selected:
        st = reported.get(c.id)
        assert st is not None, (
            f"candidate {c.id} was selected but the fused step's report does not mention it\n"
            f"{fused.report}\n{prog!r}"
        )
        if st.used:
            res.used += 1
        else:
            assert st.reason, f"{c.id} refused without a reason"
            res.refused[c.id] = st.reason
    if fused.report.fallbacks:
        raise SilentMismatch("whole-graph executor fell back:\n  " + "\n  ".join(fused.report.fallbacks)
                             + f"\n{prog!r}")
    e_loss, e_grads = _eager_grads(copy.deepcopy(model), prog)
    traced = traced or trace_program(prog)
    gen = torch.Generator().manual_seed(seed)
    refs = [reference_step(prog, traced)] + [reference_step(prog, traced, gen) for _ in range(3)]
    problems = []
    why = mismatch(loss.detach(), e_loss, [r[0] for r in refs], prog.dtype)
    if why:
        problems.append(f"loss {why}")
    for k, eg in e_grads.items():
        fg = f_grads[k]
        if (eg is None) != (fg is None):
            problems.append(f"{k}.grad is {'None' if fg is None else 'set'} fused, "
                            f"{'None' if eg is None else 'set'} in eager")
            continue
        if eg is None:
            continue
        rg = [r[1].get(k) for r in refs]
        why = mismatch(fg, eg, rg if all(g is not None for g in rg) else None, prog.dtype)
        if why:
            problems.append(f"{k}.grad {why}")
    if problems:
        # a known kernel bug explains it when the per-kernel check pins it on one
        try:
            bugs = check_codegen(prog, seed=seed, traced=traced).known_bugs & set(KNOWN_MISMATCHES)
        except SilentMismatch:
            bugs = set()
        if bugs:
            res.known_bugs |= bugs
            problems = []
    if problems:
        raise SilentMismatch(
            "fused training step disagrees with eager:\n  " + "\n  ".join(problems)
            + f"\n{prog!r}\n{fused.report}"
        )
    res.seconds = time.perf_counter() - start
    return res
