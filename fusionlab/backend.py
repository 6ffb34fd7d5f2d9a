"""Stage 6, backend: the fused training step.

``plan.backend()`` is a torch.compile backend. Dynamo and AOTAutograd hand it the same
forward and backward ATen graphs fusionlab captured; for each graph it finds the
candidates again (under the plan's rules), keeps the ones the plan selected (matched by
pattern, ops and source modules, so a recompile for a new batch size finds them again), generates and builds
their kernels, checks each against the eager ops it replaces on fresh random inputs,
and rewrites the graph so every kernel that passed is one call. Every other op runs as
in eager. A kernel that fails to generate, build or match eager is left out and its
group runs unfused; ``BackendReport`` says which and why.

AOTAutograd has already split forward from backward, so a kernel only has to compute
the same values as the nodes it replaces: no custom autograd.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx

from . import _env
from .candidates import Candidate, graph_candidates
from .capture import CapturedGraph, CaptureError, TrainStep, aten_backend, check_inputs
from .facts import node_facts
from .fxgraph import copy_graph, stable_sort
from .kernels.kernel import KernelStatus, build_kernel
from .shared_trace import TracedStep
from .slots import Slot, restrided, tracing_for


@dataclass
class BackendReport:
    """What the backend did with each selected candidate, per compiled graph."""

    graphs: list[str] = field(default_factory=list)
    executor: str = "triton"
    kernels: list[KernelStatus] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # graphs an executor could not compile whole
    # whole-graph executors: candidate id -> the C++ function (or "") of each loop nest it became
    loops: dict[str, list[str]] = field(default_factory=dict)

    @property
    def used(self) -> list[KernelStatus]:
        return [k for k in self.kernels if k.used]

    @property
    def failed(self) -> list[KernelStatus]:
        return [k for k in self.kernels if not k.used]

    def __str__(self) -> str:
        where = _env.executor_name() if self.executor == "triton" else self.executor
        lines = [f"fusionlab backend: {len(self.used)} kernels in use, {len(self.failed)} left unfused "
                 f"(executor: {where})"]
        lines += ["  " + str(k) + (f" [{self.loops_text(k.candidate)}]" if k.candidate in self.loops else "")
                  for k in self.kernels]
        lines += [f"  {u}" for u in self.unmatched + self.fallbacks]
        return "\n".join(lines)

    __repr__ = __str__

    def loops_text(self, cid: str) -> str:
        """"2 loop nests in cpp_fused_..." for a group a whole-graph executor compiled ("" if none)."""
        if cid not in self.loops:
            return ""
        n, fns = len(self.loops[cid]), sorted({f for f in self.loops[cid] if f})
        return f"{n} loop nest{'s' if n != 1 else ''}" + (f" in {', '.join(fns)}" if fns else "")


def candidate_key(c: Candidate) -> tuple:
    """What identifies a candidate across recompiles: not node names or shapes."""
    return (c.pattern, c.ops, c.modules, len(c.nodes))


def _keyed(cands) -> dict[tuple, Candidate]:
    out = {}
    seen: dict[tuple, int] = {}
    for c in cands:
        k = candidate_key(c)
        i = seen.get(k, 0)
        seen[k] = i + 1
        out[k + (i,)] = c
    return out


def _kernel_call(kernel):
    def call(*args):
        return kernel(*args)

    name = getattr(kernel, "name", None) or getattr(kernel, "__name__", "fusionlab_group")
    call.__name__ = name
    call.__qualname__ = name
    return call


def rewrite(gm: torch.fx.GraphModule, chosen: list[tuple[Candidate, object]]) -> torch.fx.GraphModule:
    """A copy of `gm` with each candidate's nodes replaced by one call of its kernel."""
    graph = copy_graph(gm.graph)
    nodes = {n.name: n for n in graph.nodes}
    order = {n: i for i, n in enumerate(graph.nodes)}
    for cand, kernel in chosen:
        members = [nodes[n] for n in cand.nodes]
        last = max(members, key=order.__getitem__)
        with graph.inserting_after(last):
            call = graph.call_function(_kernel_call(kernel), tuple(nodes[i] for i in cand.inputs))
        call.meta["fusionlab"] = cand.id
        order[call] = order[last]
        prev = call
        for k, o in enumerate(cand.outputs):
            with graph.inserting_after(prev):
                gi = graph.call_function(operator.getitem, (call, k))
            gi.meta["val"] = nodes[o].meta.get("val")
            order[gi] = order[last]
            nodes[o].replace_all_uses_with(gi)
            nodes[o] = gi  # later groups that read this output read the kernel's result
            prev = gi
        for m in sorted(members, key=order.__getitem__, reverse=True):
            graph.erase_node(m)
    # a group's call sits after its last member; readers of its earlier outputs move below it
    out = stable_sort(torch.fx.GraphModule(gm, graph))
    out.graph.lint()
    return out


def _selected_by_graph(plan) -> dict[str, set]:
    """Captured graph tag -> the keys (:func:`candidate_key`) of the plan's selected candidates in it."""
    out: dict[str, set] = {}
    for g in plan.capture.graphs:
        sel = {c.id for c in plan.selected if c.graph == g.tag}
        mine = [c for c in plan.candidates if c.graph == g.tag]
        out[g.tag] = {k for k, c in _keyed(mine).items() if c.id in sel}
    return out


def make_backend(plan, *, validate: bool = True, seed: int | None = None, executor=None, **codegen):
    """A torch.compile backend that runs the plan's selected candidates as fusionlab kernels.

    ``executor(candidate, graph) -> (callable | None, KernelStatus)`` replaces the Triton
    build for each group (the profiler uses one that compiles each group alone with
    Inductor's CPU backend); the callable takes the group's inputs and returns a tuple of
    its outputs. An executor that also has ``compile_graph(kind, gm, example_inputs,
    groups, refused=..., candidates=...)`` compiles each graph whole once its groups passed their checks (see
    :class:`fusionlab.executors.InductorGraphExecutor`); if that raises, the graph is
    rewritten with the per-group callables instead and ``report.fallbacks`` says why.

    ``backend.replan(new_plan)`` (what :meth:`FusedStep.replan` calls) switches every graph
    compiled so far to `new_plan`'s selection (of the same capture): a graph whose selected
    groups did not change keeps its code, the others are built and checked again; Dynamo's
    and AOTAutograd's traces are kept.
    """
    report = BackendReport()
    report.executor = "triton" if executor is None else getattr(executor, "name", "custom")
    # the plan is mutable: its selection and rules as they were when each graph was compiled
    state = {"plan": plan, "selected": _selected_by_graph(plan), "rules": tuple(getattr(plan, "rules", ()))}
    slots: list[Slot] = []
    compiled_counts = {"forward": 0, "backward": 0, "inference": 0}

    def find_reference(kind: str, gm) -> CapturedGraph | None:
        idx = compiled_counts[kind]
        compiled_counts[kind] += 1
        sig = tuple((n.op, str(n.target)) for n in gm.graph.nodes)
        same_kind = [g for g in plan.capture.graphs if g.kind == kind]
        for g in same_kind:
            if g.index == idx and g.signature == sig:
                return g
        for g in same_kind:
            if g.signature == sig:
                return g
        for g in same_kind:
            if g.index == idx:
                return g
        return None

    def on_graph(kind: str, gm: torch.fx.GraphModule, example):
        ref = find_reference(kind, gm)
        if ref is None:
            report.unmatched.append(f"a {kind} graph that was not captured by this plan runs unfused")
            return None
        slot = Slot(kind, gm, example, ref)
        slot.forward = _forward_of(slot)
        fill(slot)
        slots.append(slot)
        return slot

    def _forward_of(slot: Slot) -> Slot | None:
        if slot.kind != "backward":
            return None
        return next((s for s in reversed(slots) if s.kind == "forward" and s.ref.index == slot.ref.index), None)

    def fill(slot: Slot) -> None:
        """Compile `slot`'s graph under the current plan; its results go to the report."""
        from functorch.compile import make_boxed_func

        wanted = frozenset(state["selected"].get(slot.ref.tag, set()))
        if slot.forward is not None and (example := restrided(slot, slot.forward)) is not slot.example:
            slot.example, slot.wanted = example, None  # the forward's code saves its values otherwise now
        if wanted != slot.wanted:
            graphs = getattr(executor, "graphs", None)
            before = len(graphs) if graphs is not None else 0
            mark = (len(report.kernels), len(report.fallbacks))
            with tracing_for(slot.example) as ctx, _env.gc_paused():
                fn = compile_one(slot.kind, slot.gm, slot.example, slot.ref, wanted)
                reported = getattr(ctx, "output_strides", None)
                slot.out_strides = list(reported) if reported else None
            slot.fn = fn if getattr(fn, "_boxed_call", False) else make_boxed_func(fn or slot.gm.forward)
            slot.statuses, slot.fallbacks = report.kernels[mark[0]:], report.fallbacks[mark[1]:]
            slot.loops = {cid: report.loops[cid] for cid in report.loops if cid in {k.candidate for k in slot.statuses}}
            slot.compiled = graphs[-1] if graphs is not None and len(graphs) > before else None
            slot.wanted = wanted
        else:  # unchanged: the same code, the same report lines
            report.kernels += slot.statuses
            report.fallbacks += slot.fallbacks
            report.loops.update(slot.loops)
            if slot.compiled is not None:
                executor.graphs.append(slot.compiled)
        report.graphs.append(slot.ref.tag)

    def compile_one(kind, gm, example, ref, wanted):
        whole = hasattr(executor, "compile_graph") and getattr(executor, "compile_unselected", False)
        if not wanted and not whole:
            return None
        # every candidate, selected or not: where a whole-graph executor may cut the graph
        graph = CapturedGraph(index=ref.index, kind=kind, gm=gm, nodes=node_facts(gm))
        cands, _ = graph_candidates(graph, rules=state["rules"])
        if not wanted:
            # a whole-graph executor runs every graph its way, so "nothing fused" compares alike
            return _compile_whole(executor, kind, gm, example, [], [], ref.tag, report, cands)
        keyed = _keyed(cands)
        chosen, refused = [], []
        if executor is not None and hasattr(executor, "prepare"):  # all the graph's checks in one compile
            executor.prepare(graph, [keyed[k] for k in wanted if k in keyed])
        for key in wanted:
            cand = keyed.get(key)
            if cand is None:
                report.kernels.append(KernelStatus(key[0], "", False, "not found again in the recompiled graph"))
                continue
            if executor is not None:
                kernel, status = executor(cand, graph)
            else:
                kernel, status = build_kernel(cand, graph, model_name=plan.capture.model_name,
                                              validate=validate, seed=seed, **codegen)
            report.kernels.append(status)
            if kernel is not None:
                chosen.append((cand, kernel))
            else:
                refused.append(cand)
        if not chosen:
            return _compile_whole(executor, kind, gm, example, [], refused, ref.tag, report, cands) if whole else None
        if hasattr(executor, "compile_graph"):
            fn = _compile_whole(executor, kind, gm, example, [c for c, _ in chosen], refused, ref.tag, report, cands)
            if fn is not None:
                return fn
        try:
            return rewrite(gm, chosen).forward
        except Exception as e:  # noqa: BLE001 - fall back to the unfused graph, loudly
            warnings.warn(f"fusionlab: could not rewrite {ref.tag} ({e}); it runs unfused", stacklevel=2)
            for st in report.kernels:
                if st.used and any(st.candidate == c.id for c, _ in chosen):
                    st.used = False
                    st.reason = f"graph rewrite failed: {e}"
            return None

    def replan(new_plan) -> None:
        if new_plan.capture is not plan.capture:
            raise ValueError("replan: the new plan must come from the same capture as the step's "
                             "(plan.select/deselect of it); for another capture, plan.compile(model) anew")
        if tuple(map(str, getattr(new_plan, "rules", ()))) != tuple(map(str, state["rules"])):
            raise ValueError("replan: the new plan has other rules, so other candidates; plan.compile(model) anew")
        state["plan"], state["selected"] = new_plan, _selected_by_graph(new_plan)
        refill()

    def refill() -> None:  # every slot under the current selection, the report anew
        report.kernels, report.fallbacks, report.loops, report.graphs = [], [], {}, []
        if getattr(executor, "graphs", None) is not None:
            executor.graphs.clear()
        for slot in slots:
            fill(slot)

    mine: dict[int, Slot] = {}  # id(SharedGraph) -> its slot here

    def attach(shared_graphs) -> None:
        """Compile the graphs of a capture's shared trace (:mod:`fusionlab.shared_trace`) that
        this backend has not compiled yet, in order, as if AOTAutograd had handed them over."""
        for g in shared_graphs:
            if id(g) not in mine:
                gm = torch.fx.GraphModule(g.gm, copy_graph(g.gm.graph))  # the capture's graph stays as it is
                slot = Slot(g.ref.kind, gm, g.example, g.ref)
                slot.forward = mine.get(id(g.forward)) if g.forward is not None else None  # attached first
                fill(slot)
                slots.append(slot)
                mine[id(g)] = slot

    def detach(shared_graphs) -> None:
        """Forget what `attach` compiled for these graphs; the report describes the rest."""
        for g in shared_graphs:
            if id(g) in mine:
                slots.remove(mine.pop(id(g)))
        refill()

    backend = aten_backend(on_graph)
    backend.report = report
    backend.replan = replan
    backend.attach = attach
    backend.detach = detach
    backend.attached = lambda g: mine.get(id(g))
    return backend


def _compile_whole(executor, kind, gm, example, chosen, refused, tag, report, candidates):
    """``executor.compile_graph``, or None (and a line in ``report.fallbacks``) when it fails."""
    try:
        fn = executor.compile_graph(kind, gm, example, chosen, refused=refused, candidates=candidates)
        graphs = getattr(executor, "graphs", None)
        if graphs:
            for cid in graphs[-1].groups:
                report.loops[cid] = [k.function for k in graphs[-1].loops if k.group == cid]
        return fn
    except Exception as e:  # noqa: BLE001 - the per-group graph (or the plain one) still runs
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        report.fallbacks.append(f"{tag}: whole-graph compile failed ({type(e).__name__}: {msg}); "
                                + ("its groups run as separately compiled calls" if chosen else "it runs unfused"))
        return None


class FusedStep(torch.nn.Module):
    """The model's training step with the plan's kernels: ``loss = fused(*inputs)``.

    Runs ``model(*inputs)`` then the capture's loss, compiled with the plan's backend
    (``dynamic=False``: a new input shape recompiles, and the selected candidates are found
    again and checked for the new shapes). Parameters are the model's own.
    """

    def __init__(self, plan, model, **options):
        super().__init__()
        self.model = model
        self.step = TrainStep(model, plan.capture.meta.get("loss_fn"), plan.capture.train)
        self.plan = plan
        self.backend = make_backend(plan, **options)
        self.report: BackendReport = self.backend.report
        self._run = TracedStep(self.step, self.backend, plan.capture)

    def replan(self, plan) -> FusedStep:
        """Switch to `plan` (the same capture, another selection) without tracing the step again.

        Every graph compiled so far is kept where its selected groups did not change; the others
        are built and checked again (a whole-graph executor lowers only the pieces of the graph
        that hold a changed group). ``self.report`` then describes `plan`. Returns self."""
        self.backend.replan(plan)
        self.plan = plan
        return self

    def forward(self, *inputs):
        try:
            check_inputs(self.model, inputs)
        except CaptureError as e:
            raise ValueError(f"fused step: {e}") from None
        with contextlib.nullcontext() if self.step.train_step else torch.no_grad():
            return self._run(*inputs)

    @property
    def shares_trace(self) -> bool:
        """True while the step runs the capture's Dynamo and AOTAutograd trace (no trace of its own)."""
        return self._run.shares_trace


def compile_model(plan, model=None, **options) -> FusedStep:
    """The fused training step of `model` (by default the model the plan was captured from)."""
    model = model if model is not None else plan.capture.meta.get("model")
    if model is None:
        raise ValueError("plan.compile(model): pass the model to fuse")
    if not (isinstance(model, torch.nn.Module) or callable(model)):
        raise TypeError(f"plan.compile needs a torch.nn.Module or a callable, got {type(model).__name__}")
    return FusedStep(plan, model, **options)
