"""Executors: how the fused training step runs each selected group.

``make_backend(plan, executor=...)`` (and ``plan.compile(model, executor=...)``) calls
``executor(candidate, graph) -> (callable | None, KernelStatus)`` once per selected group
it finds in a graph; the callable takes the group's inputs and returns a tuple of its
outputs. The default (no executor) builds fusionlab's own Triton kernels, which run on a
GPU, or in the Triton interpreter on CPU: right, but far too slow to time.

:class:`InductorGroupExecutor` is what a CPU-only profile measures instead: it hands each
selected group's subgraph, *on its own*, to Inductor (``compile_fx``), which compiles it
into one C++/OpenMP kernel (or a few, where one group needs more than one loop nest on
CPU). Fusion therefore happens only inside the groups the user picked; every other op
runs as in eager. Each compiled group is checked against the eager subgraph on fresh
random inputs with the captured shapes, dtypes and strides, then once more with NaN, +inf
and -inf written into its floating inputs (Inductor's rules for them are not always
eager's: a var over one inf element is NaN in eager, 0 in Inductor), and refused (it runs
unfused, ``KernelStatus.used == False`` with the reason) on any mismatch.

:class:`InductorGraphExecutor` (what ``profile`` uses on CPU) builds and checks each group
the same way, then also implements ``compile_graph(kind, gm, example_inputs, groups, refused=...)``:
the backend hands it the whole forward or backward graph, which Inductor compiles in one
piece under a fusion policy (an op's value is stored unless every reader is in its group;
the scheduler merges loop nests only inside one group). The step then runs Inductor's
generated wrapper instead of the FX graph's Python code, which costs the per-group
executor several hundred microseconds a step in views, getitems and unfused ops.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import torch
import torch.fx

from .candidates import Candidate
from .capture import CapturedGraph
from .check import (
    TOLERANCES,  # noqa: F401 - the table the group checks hold Inductor to (tests check it is the one)
    CheckResult,
    check_outputs,
    float64_reference,
    random_tensor,
    special_tensor,
)
from .fxgraph import copy_graph
from .kernels.kernel import KernelStatus, extract_subgraph

# kernel calls in Inductor's generated ``call`` function
_CALL_LINE = re.compile(
    r"^\s+(?:(cpp_fused_\w+)\(|(triton_\w+)\.run\(|extern_kernels\.(\w+)\(|(aoti_torch_\w+)\()", re.M
)


def count_generated_kernels(source: str) -> int:
    """Kernel launches per call in Inductor generated wrapper code (fused kernels + library calls)."""
    start = source.find("def call(")
    if start < 0:
        return 0
    end = source.find("\ndef ", start + 1)
    end2 = source.find("\nrunner = ", start + 1)
    ends = [e for e in (end, end2) if e > 0]
    body = source[start: min(ends)] if ends else source[start:]
    return len(_CALL_LINE.findall(body))


class CompiledGroup:
    """One group compiled alone by Inductor: ``group(*inputs) -> tuple of outputs``."""

    def __init__(self, name: str, fn, kernels: int, seconds: float, source: str, boxed: bool, how: str):
        self.name = name
        self.fn = fn  # boxed: fn(list of inputs); else fn(*inputs)
        self.kernels = kernels  # kernels the compiled group launches per call
        self.seconds = seconds  # compile time (0 when reused from this process)
        self.source = source  # Inductor's generated wrapper + kernel code
        self.boxed = boxed
        self.how = how  # "compile_fx_inner" | "compile_fx"
        self.fast = False  # call the generated code directly (set once a first call went through fn)
        self.__name__ = name

    def __call__(self, *args):
        if self.boxed:
            fn = self._fast or self.fn
            if _profiling():
                with _record(f"fusionlab group {self.name}"):
                    return fn(list(args))
            return fn(list(args))
        return self.fn(*args)

    @property
    def _fast(self):
        """The generated ``call(args)`` itself, skipping CompiledFxGraph's per-call bookkeeping
        (autotune-cache bundling and runtime metrics, neither of which a CPU group uses)."""
        return getattr(self.fn, "current_callable", None) if self.fast else None

    def copy(self) -> CompiledGroup:
        g = CompiledGroup(self.name, self.fn, self.kernels, 0.0, self.source, self.boxed, self.how)
        g.fast = self.fast
        return g

    def __repr__(self) -> str:
        return f"<CompiledGroup {self.name}: {self.kernels} kernel(s), via {self.how}>"


def _compile_group(sub: torch.fx.GraphModule, examples: list[torch.Tensor], name: str) -> CompiledGroup:
    """Inductor-compile one ATen subgraph (already decomposed, functional) for `examples`.

    ``compile_fx_inner`` takes the graph as it is (no second AOTAutograd pass, so no runtime
    wrappers around every call); the node metas are re-derived under a fresh fake mode.
    Falls back to the full ``compile_fx`` where that fails.
    """
    import copy

    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    start = time.perf_counter()
    try:
        gm = copy.deepcopy(sub)
        mode = FakeTensorMode()
        fake = [mode.from_tensor(x, static_shapes=True) for x in examples]
        FakeTensorProp(gm, mode).propagate(*fake)
        with torch._guards.tracing(torch._guards.TracingContext(mode)):
            out = compile_fx_inner(gm, fake)
        source = getattr(out, "source_code", "") or ""
        return CompiledGroup(name, out, count_generated_kernels(source), time.perf_counter() - start,
                             source, True, "compile_fx_inner")
    except Exception as e:  # noqa: BLE001 - the general path below handles more graphs
        from ._env import debug

        debug(1, f"compile_fx_inner failed for {name} ({type(e).__name__}: {e}); using compile_fx")
    outputs: list = []

    def inner(gm, example_inputs, **kw):
        res = compile_fx_inner(gm, example_inputs, **kw)
        outputs.append(res)
        return res

    start = time.perf_counter()
    fn = compile_fx(sub, examples, inner_compile=inner)
    source = "\n\n".join(getattr(o, "source_code", "") or "" for o in outputs)
    return CompiledGroup(name, fn, count_generated_kernels(source), time.perf_counter() - start,
                         source, False, "compile_fx")


def _profiling() -> bool:
    return bool(getattr(torch.autograd.profiler, "_is_profiler_enabled", False))


def _record(name: str):
    fast = getattr(torch._C._profiler, "_RecordFunctionFast", None)
    return fast(name) if fast is not None else torch.profiler.record_function(name)


@contextlib.contextmanager
def _outside_compile():
    """Real tensors and no enclosing dynamo tracing context: a fresh, independent compile.

    The backend calls executors from inside another torch.compile (AOTAutograd's fake
    tensor mode and tracing context are active); Inductor must not see either.
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with contextlib.ExitStack() as stack:
        stack.enter_context(unset_fake_temporarily())
        stack.enter_context(torch._guards.tracing(None))
        stack.enter_context(torch.no_grad())
        yield


def _input_meta(graph: CapturedGraph, cand: Candidate) -> list[tuple]:
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    metas = []
    for name in cand.inputs:
        val = nodes[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"group input {name} is not a tensor ({type(val).__name__})")
        metas.append((name, tuple(int(s) for s in val.shape), tuple(int(s) for s in val.stride()),
                      val.dtype, val.device))
    return metas


class InductorGroupExecutor:
    """Compile each selected group alone with Inductor; check it against eager; use it if it matches.

    ``executor = InductorGroupExecutor(); plan.compile(model, executor=executor)``.
    ``executor.groups`` maps candidate ids to their :class:`CompiledGroup` (generated
    code, kernel count, compile time). Compiled groups are kept per process, keyed by the
    subgraph's code and its input shapes, strides and dtypes, so a second profile of the
    same plan compiles nothing.
    """

    name = "inductor-cpp (per group)"
    _cache: dict[tuple, CompiledGroup] = {}

    def __init__(self, *, validate: bool = True, seed: int = 0, trials: int = 2):
        self.validate = validate
        self.seed = seed
        self.trials = trials
        self.groups: dict[str, CompiledGroup] = {}
        self.statuses: list[KernelStatus] = []

    def __repr__(self) -> str:
        return f"<InductorGroupExecutor: {len(self.groups)} groups compiled>"

    def describe(self) -> str:
        return ("each selected group is compiled alone by Inductor (C++), checked against eager, and "
                "called from the FX graph's Python code; every other op runs as in eager")

    def __call__(self, cand: Candidate, graph: CapturedGraph):
        try:
            fn, status = self._build(cand, graph)
        except Exception as e:  # noqa: BLE001 - a group that cannot compile runs unfused
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            fn, status = None, KernelStatus(cand.id, "", False, f"inductor compile failed: {type(e).__name__}: {msg}")
        self.statuses.append(status)
        return fn, status

    def _build(self, cand: Candidate, graph: CapturedGraph):
        metas = _input_meta(graph, cand)
        sub = extract_subgraph(graph.gm, cand)
        key = (sub.code, tuple(m[1:] for m in metas))
        name = f"inductor_{cand.id.replace('.', '_').replace('+', '_')}"
        group = self._cache.get(key)
        with _outside_compile():
            gen = torch.Generator(device="cpu")
            gen.manual_seed(self.seed)
            examples = [random_tensor(s, st, dt, dev, gen) for _, s, st, dt, dev in metas]
            if group is None:
                group = _compile_group(sub, examples, name)
                check = self._check(group, sub, metas, gen, examples) if self.validate else None
                if check is None or check.ok:
                    if check is None:
                        group(*examples)  # the first call goes through CompiledFxGraph.__call__
                    group.fast = True
                    self._cache[key] = group
            else:
                group = group.copy()
                check = self._check(group, sub, metas, gen, examples) if self.validate else None
        self.groups[cand.id] = group
        if check is not None and not check.ok:
            return None, KernelStatus(cand.id, name, False, f"check against eager failed: {check}", check)
        return group, KernelStatus(cand.id, name, True, "", check)

    def _check(self, group: CompiledGroup, sub: torch.fx.GraphModule, metas, gen, first) -> CheckResult:
        res = CheckResult(kernel=group.name, ok=False, shapes=tuple(m[1] for m in metas),
                          executor=self.name)
        dtypes = {str(m[3]).replace("torch.", "") for m in metas}
        res.dtype = "/".join(sorted(dtypes))
        start = time.perf_counter()
        try:
            ok = True
            # random inputs (`first`, then fresh ones), and once more NaN and +-inf, where
            # eager's rules for them may differ from Inductor's
            schedule = [(first, False)] + [(None, False)] * (max(1, self.trials) - 1)
            if any(m[3].is_floating_point for m in metas):
                schedule.append((None, True))
            for ins, specials in schedule:
                if ins is None:
                    make = special_tensor if specials else random_tensor
                    ins = [make(s, st, dt, dev, gen) for _, s, st, dt, dev in metas]
                # the same tensors (strides included: a clone of an expanded input is dense);
                # groups hold no in-place ops, so neither run changes them
                expected = sub(*ins)
                got = group(*ins)
                # as Kernel.check: an output outside tolerance passes when it is no further from
                # a float64 run than eager is (Inductor keeps fp16/bf16 values in fp32 between
                # ops, eager rounds after each); with NaN/inf inputs, on the finite elements
                ok &= check_outputs(res, got, expected, [f"output {i}" for i in range(len(expected))],
                                    oracle=lambda ins=ins: float64_reference(sub, ins), blowups=specials)
            res.ok = ok
        except Exception as e:  # noqa: BLE001 - a failing group is a result
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            res.error = f"{type(e).__name__}: {msg}"
        res.seconds = time.perf_counter() - start
        return res


def clear_cache() -> None:
    """Forget every group compiled in this process (Inductor's own disk cache stays)."""
    InductorGroupExecutor._cache.clear()


# ---------------------------------------------------------------------------------------
# Whole-graph executor: one Inductor compile per graph, fusion allowed only inside groups
# ---------------------------------------------------------------------------------------


@dataclass
class KernelOrigin:
    """One loop nest (kernel) of a whole-graph compile and the FX nodes it computes."""

    nodes: tuple[str, ...]  # compute nodes (views and getitems left out)
    group: str | None  # the fusionlab group it runs, or None: one op outside every group
    function: str = ""  # the generated C++ function that holds it, as torch.profiler names it

    @property
    def ok(self) -> bool:
        return self.group is not None or len(self.nodes) <= 1


@dataclass
class CompiledGraph:
    """One forward or backward graph compiled whole by :class:`InductorGraphExecutor`."""

    kind: str
    groups: tuple[str, ...]  # the candidate ids fused in it
    kernels: int  # kernel calls per run (fused loop nests + library calls: mm, bmm, ...)
    loops: list[KernelOrigin]  # every loop nest Inductor generated, with its origin
    seconds: float
    source: str

    def functions(self) -> dict[str, list[KernelOrigin]]:
        """C++ function name (as torch.profiler records it) -> the loop nests it runs."""
        out: dict[str, list[KernelOrigin]] = {}
        for k in self.loops:
            if k.function:
                out.setdefault(k.function, []).append(k)
        return out


class FusionPolicyError(RuntimeError):
    """Inductor produced a loop nest that crosses a group boundary (never expected)."""


def _origins(snode) -> set:
    out: set = set()
    for sn in snode.get_nodes():
        if sn.node is not None:
            out |= set(sn.node.get_origins())
    return out


def _only_inside_groups(group_of: dict[str, str], compute: set[str]):
    """An InductorChoices that lets the scheduler fuse two nodes only when every op both
    compute belongs to the same fusionlab group (and then always: the user asked for it)."""
    from torch._inductor.choices import InductorChoices

    class OnlyInsideGroups(InductorChoices):
        def _same_group(self, node1, node2) -> bool:
            groups = {group_of.get(o.name) for o in _origins(node1) | _origins(node2) if o.name in compute}
            return len(groups) == 1 and None not in groups

        def can_fuse(self, scheduler, node1, node2, shared_data_score):
            return self._same_group(node1, node2)

        def can_fuse_horizontal(self, scheduler, node1, node2, shared_data_score):
            return self._same_group(node1, node2)

    return OnlyInsideGroups()


def _effective_users(node: torch.fx.Node, kinds: dict[str, str]) -> list[torch.fx.Node]:
    """The nodes that compute with `node`'s value, looking through views and getitems."""
    out, stack, seen = [], list(node.users), set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        if kinds.get(u.name) in ("view", "getitem"):
            stack.extend(u.users)
        else:
            out.append(u)
    return out


class InductorGraphExecutor(InductorGroupExecutor):
    """Each graph compiled *whole* by Inductor, which may fuse only inside the selected groups.

    ``InductorGroupExecutor`` calls every compiled group from the FX graph's Python code,
    so each view, getitem and unfused op of the step pays Python dispatch (hundreds of
    microseconds a step on a small model). This executor first builds and checks every
    group alone exactly as ``InductorGroupExecutor`` does (a group that fails its check is
    not fused), then compiles the whole graph in one Inductor call under a fusion policy:

    * at lowering, the value of every op is materialized in a buffer unless all ops that
      read it are in the same group (Inductor cannot inline it into another group's loop);
    * the scheduler may merge two loop nests only when every op they compute belongs to
      one group (``InductorChoices.can_fuse``); inside a group every legal merge is taken.

    Views are free (index arithmetic), matmuls call the same BLAS library as eager, and the
    wrapper is generated Python without per-op dispatch. Every other op outside the groups
    is a loop nest of its own, Inductor's code for that one op (what torch.compile would run
    for it, unfused); with ``eager_outside_groups=True`` it is a call of the ATen op itself,
    exactly as eager computes it, at eager's per-call cost (measured on gpt2-tiny, 1 CPU
    thread: +14 % step time vs torch.compile, against +2 % by default). The ops of a
    selected group that failed its check are always ATen calls, since Inductor's version of
    them is what disagreed with eager. Random ops draw from torch's generator as in eager.

    After compiling, every generated loop nest is listed with the ops it computes and its
    C++ function (``graphs[i].loops``); one that mixes two groups, or a group with an op
    outside it, raises :class:`FusionPolicyError` and the backend falls back to the
    per-group executor's graph for that graph.
    """

    name = "inductor-cpp (groups only)"

    def __init__(self, *, eager_outside_groups: bool = False, compile_unselected: bool = True, **kw):
        super().__init__(**kw)
        self.eager_outside_groups = eager_outside_groups
        # graphs with no selected group are compiled the same way (nothing fused), so a plan
        # and the empty plan differ only by the fusion decisions
        self.compile_unselected = compile_unselected
        self.graphs: list[CompiledGraph] = []

    def __repr__(self) -> str:
        return f"<InductorGraphExecutor: {len(self.graphs)} graphs, {len(self.groups)} groups compiled>"

    def describe(self) -> str:
        loops = [k for g in self.graphs for k in g.loops]
        inside = sum(1 for k in loops if k.group is not None)
        text = ("each selected group is compiled alone by Inductor (C++) and checked against eager; then "
                "each graph is compiled whole by Inductor with fusion allowed only inside the groups; "
                + ("every other op is an ATen call, as in eager" if self.eager_outside_groups else
                   "every other op runs on its own: a loop nest Inductor generates for it, or a library call"))
        if loops:
            text += (f": {len(loops)} loop nests ({inside} for groups, {len(loops) - inside} single ops), "
                     f"{sum(g.kernels for g in self.graphs)} C++ function or library calls per step "
                     "(Inductor puts consecutive loop nests in one C++ function; each still reads and "
                     "writes memory)")
        return text

    def compile_graph(self, kind: str, gm: torch.fx.GraphModule, example_inputs, chosen: list[Candidate],
                      refused: list[Candidate] = ()):
        """Compile `gm` whole (AOTAutograd's fake example inputs); returns a boxed callable.

        `chosen`: the groups to fuse; `refused`: selected groups whose check failed: their
        ops run as ATen calls (Inductor's version of them is what disagreed with eager).
        """
        from unittest import mock

        from torch._inductor import config as iconfig
        from torch._inductor.codegen.cpp import CppScheduling
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.graph import GraphLowering
        from torch._inductor.ir import TensorBox
        from torch._inductor.virtualized import V

        from .ops import kind_of

        # a copy: Inductor's passes change the graph they compile, and the backend's fallback
        # (calling the separately compiled groups) needs `gm` as it came
        gm = torch.fx.GraphModule(gm, copy_graph(gm.graph))
        kinds = {n.name: kind_of(n) for n in gm.graph.nodes}
        compute = {n for n, k in kinds.items() if k in ("pointwise", "reduction", "matmul", "opaque")}
        group_of = {n: c.id for c in chosen for n in c.nodes}
        as_eager = {n for c in refused for n in c.nodes}
        must_store = set()
        for n in gm.graph.nodes:
            if n.name not in compute:
                continue
            g = group_of.get(n.name)
            if n.name in as_eager or (g is None and self.eager_outside_groups and kinds[n.name] != "matmul"):
                n.meta["should_fallback"] = True  # Inductor calls the ATen op itself, as eager does
            if g is None or any(group_of.get(u.name) != g for u in _effective_users(n, kinds)):
                must_store.add(n.name)

        run_node = GraphLowering.run_node
        define_kernel = CppScheduling.define_kernel
        function_of: dict[str, str] = {}  # scheduler node name -> C++ function

        def define(self, src_code, nodes, kernel_args=None):
            name = define_kernel(self, src_code, nodes, kernel_args)
            graph_id = V.graph.graph_id
            for sn in nodes:  # the name the function's RECORD_FUNCTION uses (cpp.enable_kernel_profile)
                function_of[sn.get_name()] = (f"graph_{graph_id}_" if graph_id is not None else "") + name
            return name

        def lower(self, n):
            result = run_node(self, n)
            if n.name in must_store:
                for value in result if isinstance(result, (tuple, list)) else (result,):
                    if isinstance(value, TensorBox):  # e.g. var_mean: (var, mean)
                        value.realize()
            return result

        fused: list = []

        def record(nodes):  # the scheduler's nodes after fusion: one per loop nest or library call
            fused[:] = nodes
            return nodes

        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(GraphLowering, "run_node", lower))
            stack.enter_context(mock.patch.object(CppScheduling, "define_kernel", define))
            # the policy is not part of Inductor's FX graph cache key (graph -> generated code):
            # never read or write that cache (a plain-callable post-fusion pass also makes it
            # bypass; belt and braces). Its compiled-code caches are keyed by the generated
            # source itself, so they stay on. No pattern rewrites (they would merge ops across
            # groups before the scheduler); random ops draw from torch's generator as in eager.
            stack.enter_context(iconfig.patch(fx_graph_cache=False, fx_graph_remote_cache=False,
                                              pattern_matcher=False, combo_kernels=False, fallback_random=True,
                                              max_fusion_size=1 << 20, _post_fusion_custom_pass=record,
                                              **{"cpp.enable_kernel_profile": True}))
            stack.enter_context(V.set_choices_handler(_only_inside_groups(group_of, compute)))
            compiled = compile_fx_inner(gm, example_inputs)
        seconds = time.perf_counter() - start

        loops = []
        for snode in fused:
            if snode.is_extern():
                continue
            names = tuple(sorted(o.name for o in _origins(snode) if o.name in compute))
            if not names:
                continue
            groups = {group_of.get(n) for n in names}
            function = next((function_of[sn.get_name()] for sn in snode.get_nodes()
                             if sn.get_name() in function_of), "")
            loops.append(KernelOrigin(names, groups.pop() if len(groups) == 1 else None, function))
        bad = [k for k in loops if not k.ok]
        if bad:
            raise FusionPolicyError(f"Inductor fused across a group boundary: {bad[0].nodes}")
        source = getattr(compiled, "source_code", "") or ""
        self.graphs.append(CompiledGraph(kind, tuple(c.id for c in chosen), count_generated_kernels(source),
                                         loops, seconds, source))
        return compiled
