"""The per-group executor: each selected group compiled alone by Inductor and checked against eager
(see the package docstring)."""


from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import torch
import torch.fx

from ..candidates import Candidate
from ..capture import CapturedGraph
from ..check import (
    TOLERANCES,  # noqa: F401 - the table the group checks hold Inductor to (tests check it is the one)
    CheckResult,
    random_tensor,
)
from ..kernels.kernel import KernelStatus, extract_subgraph
from . import builds, checks
from .checks import check_groups, check_key, new_result, store_check, stored_check, structure
from .policy import compile_with_policy, policy_for

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
        self._pending = None  # (subgraph, input metas, seed) of a group compiled on its first call
        self.__name__ = name

    @classmethod
    def deferred(cls, name: str, sub: torch.fx.GraphModule, metas: list[tuple], seed: int,
                 kernel_profile: bool = False) -> CompiledGroup:
        """A group whose check passed earlier (same subgraph, inputs and environment): compiled
        on its first call, which only the per-group path makes (a whole graph runs its own code)."""
        group = cls(name, None, 0, 0.0, "", True, "deferred")
        group._pending = (sub, metas, seed, kernel_profile)
        return group

    def _materialize(self) -> None:
        sub, metas, seed, kernel_profile = self._pending
        with _outside_compile():
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed)
            examples = [random_tensor(s, st, dt, dev, gen) for _, s, st, dt, dev in metas]
            built = _compile_group(sub, examples, self.name, kernel_profile=kernel_profile)
        # not called here: its C++ functions are built on the first call, with those of every
        # group compiled before it (executors.builds), and that call goes through
        # CompiledFxGraph.__call__ (self.fast is set after it)
        self.fn, self.kernels, self.seconds, self.source, self.boxed, self.how = (
            built.fn, built.kernels, built.seconds, built.source, built.boxed, built.how)
        self.fast, self._pending = False, None

    def __call__(self, *args):
        if self._pending is not None:
            self._materialize()
        if self.boxed:
            fn = self._fast or self.fn
            if _profiling():
                with _record(f"fusionlab group {self.name}"):
                    out = fn(list(args))
            else:
                out = fn(list(args))
            self.fast = self.how == "compile_fx_inner"  # after a first call through CompiledFxGraph
            return out
        return self.fn(*args)

    @property
    def _fast(self):
        """The generated ``call(args)`` itself, skipping CompiledFxGraph's per-call bookkeeping
        (autotune-cache bundling and runtime metrics, neither of which a CPU group uses)."""
        return getattr(self.fn, "current_callable", None) if self.fast else None

    def copy(self) -> CompiledGroup:
        g = CompiledGroup(self.name, self.fn, self.kernels, 0.0, self.source, self.boxed, self.how)
        g.fast, g._pending = self.fast, self._pending
        return g

    def __repr__(self) -> str:
        return f"<CompiledGroup {self.name}: {self.kernels} kernel(s), via {self.how}>"


def _compile_group(sub: torch.fx.GraphModule, examples: list[torch.Tensor], name: str, *,
                   kernel_profile: bool = False) -> CompiledGroup:
    """Inductor-compile one ATen subgraph (already decomposed, functional) for `examples`.

    ``compile_fx_inner`` takes the graph as it is (no second AOTAutograd pass, so no runtime
    wrappers around every call); the node metas are re-derived under a fresh fake mode.
    Falls back to the full ``compile_fx`` where that fails.
    """
    import copy

    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    start = time.perf_counter()
    try:
        gm = copy.deepcopy(sub)
        # a shape env (static shapes: no symbols) lets Inductor's FX graph cache serve the group
        # (it bypasses a compile without one): a new process loads it instead of compiling
        mode = FakeTensorMode(shape_env=ShapeEnv())
        fake = [mode.from_tensor(x, static_shapes=True) for x in examples]
        FakeTensorProp(gm, mode).propagate(*fake)
        # under the policy the whole graph is compiled with (one group: every op of it), so
        # its loop nests are the same C++ source there and Inductor builds them once
        policy = policy_for(gm, {n.name: name for n in gm.graph.nodes if n.op == "call_function"},
                            kernel_profile=kernel_profile)
        with torch._guards.tracing(torch._guards.TracingContext(mode)):
            out, _, _, _ = compile_with_policy(gm, fake, policy)
        source = getattr(out, "source_code", "") or ""
        return CompiledGroup(name, out, count_generated_kernels(source), time.perf_counter() - start,
                             source, True, "compile_fx_inner")
    except Exception as e:  # noqa: BLE001 - the general path below handles more graphs
        from .._env import debug

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


def input_meta(graph: CapturedGraph, cand: Candidate) -> list[tuple]:
    """(name, shape, stride, dtype, device) of each group input, as the group executor sees them."""
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    metas = []
    for name in cand.inputs:
        val = nodes[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"group input {name} of {cand.id} is not a tensor ({type(val).__name__})")
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

    Check results are kept too, in this process and in fusionlab's disk cache, keyed by
    :func:`check_key` (the group's ops, inputs, the check's seed, and what decides the code
    Inductor generates for it). A group whose check is known is not checked again (a toggle
    rechecks only the groups it changed; a new process none it has seen); one found this way
    is compiled at once here, on its first call (a fallback) in the whole-graph executor. ``reused_checks``
    lists the candidate ids whose result came from there. Every group in use has been
    checked: here or in an earlier run with the same key.
    """

    name = "inductor-cpp (per group)"
    defer_compile = False  # a group whose check is known: compiled at once (False) or on its first call
    _cache: dict[tuple, CompiledGroup] = {}

    def __init__(self, *, validate: bool = True, seed: int = 0, trials: int = 2, kernel_profile: bool = False):
        self.validate = validate
        self.kernel_profile = kernel_profile  # C++ functions timed by torch.profiler (slower builds)
        self.seed = seed
        self.trials = trials
        self.groups: dict[str, CompiledGroup] = {}
        self.statuses: list[KernelStatus] = []
        self.reused_checks: list[str] = []  # candidate ids whose check result was known
        self.bundled: dict[str, float] = {}  # candidate id -> seconds: checked in a bundle by prepare()
        builds.prefetch_cache_keys()  # a compile follows: its cache keys' source hashes start now, aside

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

    def prepare(self, graph: CapturedGraph, cands: list[Candidate]) -> None:
        """Check, in one Inductor compile (:mod:`.bundle`), every group of `cands` whose check
        result is not known yet; each result is kept as :meth:`__call__` would keep it, which
        then finds it. Where the bundle cannot be built or run, nothing is kept and each group
        is compiled and checked alone as before."""
        if not self.validate:
            return
        todo, twins = [], {}  # twins: the same ops, wiring and inputs (the same block in the next layer)
        for cand in cands:
            try:
                metas = input_meta(graph, cand)
                sub = extract_subgraph(graph.gm, cand)
            except Exception:  # noqa: BLE001 - __call__ reports it for this group
                continue
            ckey = check_key(sub, metas, self.seed, self.trials, self.name)
            if stored_check(ckey) is not None:
                continue
            same = repr((structure(sub), [m[1:] for m in metas]))
            if same in twins:  # Inductor generates the same code for it: its twin's check is its own
                twins[same].append((cand, ckey))
            else:
                twins[same] = [(cand, ckey)]
                todo.append((cand, sub, metas, ckey, same))
        if not todo or (len(todo) == 1 and len(twins[todo[0][4]]) == 1):
            return  # one group: a bundle is the same work as compiling it alone
        from .._env import debug
        from .bundle import compile_bundle

        subs, metas = [t[1] for t in todo], [t[2] for t in todo]
        names = [_group_name(t[0]) for t in todo]
        results = [new_result(n, m, self.name) for n, m in zip(names, metas)]
        try:
            with _outside_compile():
                gen = torch.Generator(device="cpu")
                gen.manual_seed(self.seed)
                first = [[random_tensor(s, st, dt, dev, gen) for _, s, st, dt, dev in m] for m in metas]
                bundle = compile_bundle(subs, [t[0].id for t in todo], first, kernel_profile=self.kernel_profile)
                check_groups(bundle.run, subs, metas, results, gen, self.trials, first)
        except Exception as e:  # noqa: BLE001 - each group is then compiled and checked alone
            debug(1, f"bundle of {len(todo)} groups of {graph.tag} failed ({type(e).__name__}: {e}); "
                     "checking each alone")
            return
        for (*_, same), res in zip(todo, results):
            for twin, ckey in twins[same]:
                store_check(ckey, dataclasses.replace(res, kernel=_group_name(twin)))
                self.bundled[twin.id] = res.seconds + bundle.seconds / len(todo)

    def _build(self, cand: Candidate, graph: CapturedGraph):
        metas = input_meta(graph, cand)
        sub = extract_subgraph(graph.gm, cand)
        key = (sub.code, tuple(m[1:] for m in metas))
        name = _group_name(cand)
        ckey = check_key(sub, metas, self.seed, self.trials, self.name) if self.validate else None
        check = stored_check(ckey) if ckey is not None else None
        if check is not None:  # checked: in this graph's bundle, or before (this process or an earlier one)
            if cand.id in self.bundled:
                check.seconds = self.bundled[cand.id]
            else:
                self.reused_checks.append(cand.id)
                check.seconds = 0.0
            if not check.ok:
                return None, KernelStatus(cand.id, name, False, f"check against eager failed: {check}", check)
            group = self._cache.get(key)
            if group is not None:
                group = group.copy()
            else:
                group = CompiledGroup.deferred(name, sub, metas, self.seed, self.kernel_profile)
                if not self.defer_compile:  # this executor calls every group: compile it now, unchecked again
                    group._materialize()
                    self._cache[key] = group
            self.groups[cand.id] = group
            return group, KernelStatus(cand.id, name, True, "", check)
        group = self._cache.get(key)
        with _outside_compile():
            gen = torch.Generator(device="cpu")
            gen.manual_seed(self.seed)
            examples = [random_tensor(s, st, dt, dev, gen) for _, s, st, dt, dev in metas]
            if group is None:
                group = _compile_group(sub, examples, name, kernel_profile=self.kernel_profile)
                check = _check_alone(group, sub, metas, gen, examples, self) if self.validate else None
                if check is None or check.ok:
                    if check is None:
                        group(*examples)  # the first call goes through CompiledFxGraph.__call__
                    group.fast = True
                    self._cache[key] = group
            else:
                group = group.copy()
                check = _check_alone(group, sub, metas, gen, examples, self) if self.validate else None
        if check is not None and check.error is None:  # an exception may be passing (memory...): not kept
            store_check(ckey, check)
        self.groups[cand.id] = group
        if check is not None and not check.ok:
            return None, KernelStatus(cand.id, name, False, f"check against eager failed: {check}", check)
        return group, KernelStatus(cand.id, name, True, "", check)


def _group_name(cand: Candidate) -> str:
    """The compiled group's name (its check result's ``kernel``)."""
    return f"inductor_{cand.id.replace('.', '_').replace('+', '_')}"


def _check_alone(group: CompiledGroup, sub, metas, gen, first, executor: InductorGroupExecutor) -> CheckResult:
    res = new_result(group.name, metas, executor.name)
    start = time.perf_counter()
    try:
        check_groups(lambda ins: [group(*ins[0])], [sub], [metas], [res], gen, executor.trials, [first])
    except Exception as e:  # noqa: BLE001 - a failing group is a result
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        res.ok, res.error = False, f"{type(e).__name__}: {msg}"
    res.seconds = time.perf_counter() - start
    return res


def clear_cache() -> None:
    """Forget every group compiled and checked in this process (the disk caches stay)."""
    InductorGroupExecutor._cache.clear()
    checks.KNOWN.clear()
    builds.forget()
