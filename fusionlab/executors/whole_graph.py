"""The whole-graph executor: one Inductor compile per graph, fusion allowed only inside groups
(see the package docstring)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx

from .. import cache
from ..candidates import Candidate
from ..fxgraph import copy_graph
from .groups import InductorGroupExecutor, count_generated_kernels


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
    cached: bool = False  # Inductor's FX graph cache served the code; the listing came from fusionlab's
    cache_key: str = ""  # Inductor's FX graph cache key ("" when its cache was off)

    def functions(self) -> dict[str, list[KernelOrigin]]:
        """C++ function name (as torch.profiler records it) -> the loop nests it runs."""
        out: dict[str, list[KernelOrigin]] = {}
        for k in self.loops:
            if k.function:
                out.setdefault(k.function, []).append(k)
        return out


class FusionPolicyError(RuntimeError):
    """Inductor produced a loop nest that crosses a group boundary (never expected)."""


GRAPHS = "graphs"  # fusionlab.cache namespace: the verified loop listing of each cached whole-graph compile


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """This module (the policy and how it is applied) and the op kinds it reads."""
    from .. import ops

    h = hashlib.sha256()
    for f in (__file__, ops.__file__):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _scheduler_pass_base():
    """Inductor's base class for a scheduler pass with a ``uuid()`` (which its FX graph cache key
    includes), or None on a torch without one (the cache then stays off for policy compiles)."""
    try:
        from torch._inductor.custom_graph_pass import CustomSchedulerPass
    except ImportError:
        return None
    return CustomSchedulerPass


def _policy_pass(policy: dict):
    """The fusion policy as Inductor's post-fusion scheduler pass.

    Its ``uuid()`` is a hash of the whole policy (which node is in which group, which values
    are stored, which ops are ATen calls, which nodes compute) and of the code that applies
    it, so Inductor's FX graph cache key covers the policy: a plan compiled once comes back
    from the cache, and one plan's code is never served for another. Calling it (a cache
    miss) records the scheduler's nodes after fusion, which the loop listing reads.
    """
    base = _scheduler_pass_base()
    uuid = cache.make_key("fusion-policy", policy, _code_version())

    class PolicyPass(base or object):
        def __init__(self):
            self.fused: list | None = None

        def __call__(self, nodes):
            self.fused = list(nodes)
            return nodes

        def uuid(self):
            return uuid

        def __reduce__(self):  # the key pickles Inductor's config, this pass included: the policy only
            return (str, (uuid,))

    return PolicyPass() if base is not None else None


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
    defer_compile = True  # a group is called only where its graph falls back

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
        from ..ops import kind_of

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

        policy = {"groups": sorted(group_of.items()), "store": sorted(must_store), "compute": sorted(compute),
                  "aten": sorted(n.name for n in gm.graph.nodes if n.meta.get("should_fallback"))}
        start = time.perf_counter()
        compiled, loops, cached, key = self._compile_policy(gm, example_inputs, policy, group_of, compute, must_store)
        seconds = time.perf_counter() - start
        source = getattr(compiled, "source_code", "") or ""
        self.graphs.append(CompiledGraph(kind, tuple(c.id for c in chosen), count_generated_kernels(source),
                                         loops, seconds, source, cached, key or ""))
        return compiled

    def _compile_policy(self, gm, example_inputs, policy, group_of, compute, must_store):
        """``compile_fx_inner`` under the policy: (compiled, verified loop listing, served from cache,
        Inductor's key).

        With Inductor's FX graph cache on, the policy pass's uuid keeps plans apart. A miss runs
        lowering and scheduling here: the loops are listed and verified, and only a listing that
        passed is stored in fusionlab's cache, under Inductor's key for that code. A hit runs
        neither: the stored listing is read and verified again (every loop one group or one op,
        every function in the source); a hit without one (stored by another tool, or a compile
        that failed verification) is compiled again with the cache off, and verified.
        """
        pass_ = _policy_pass(policy)
        key = None
        if pass_ is not None:
            compiled, loops = self._compile_once(gm, example_inputs, group_of, compute, must_store, pass_)
            key = getattr(compiled, "_fx_graph_cache_key", None)
            if loops is not None:
                return compiled, loops, False, key
            loops = _stored_listing(key, getattr(compiled, "source_code", "") or "", group_of)
            if loops is not None:
                return compiled, loops, True, key
            ctx = torch._guards.TracingContext.try_get()
            if ctx is not None and ctx.output_strides:  # the hit recorded them; the compile records them again
                ctx.output_strides.clear()
        compiled, loops = self._compile_once(gm, example_inputs, group_of, compute, must_store, pass_,
                                             cache_on=False, store_as=key)
        return compiled, loops, False, key

    def _compile_once(self, gm, example_inputs, group_of, compute, must_store, pass_, cache_on=True, store_as=None):
        """One ``compile_fx_inner`` with the policy patched in; the verified listing, or None on a hit.

        The listing, once verified, is stored under Inductor's key for this compile (`store_as`:
        the key of a hit whose listing was missing, compiled again here with the cache off)."""
        from unittest import mock

        from torch._inductor import config as iconfig
        from torch._inductor.codegen.cpp import CppScheduling
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.graph import GraphLowering
        from torch._inductor.ir import TensorBox
        from torch._inductor.virtualized import V

        gm = torch.fx.GraphModule(gm, copy_graph(gm.graph))  # a compile (even a hit) may change it
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

        recorded: list = []

        def record(nodes):  # a torch without scheduler-pass uuids: a plain callable, the cache off
            recorded[:] = [list(nodes)]
            return nodes

        # the FX graph cache only where the policy is in its key (the pass's uuid); Inductor's
        # compiled-code caches are keyed by the generated source itself. No pattern rewrites
        # (they would merge ops across groups before the scheduler); random ops draw from
        # torch's generator as in eager.
        cache_on = cache_on and pass_ is not None
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(GraphLowering, "run_node", lower))
            stack.enter_context(mock.patch.object(CppScheduling, "define_kernel", define))
            stack.enter_context(iconfig.patch(fx_graph_cache=cache_on, fx_graph_remote_cache=False,
                                              pattern_matcher=False, combo_kernels=False, fallback_random=True,
                                              max_fusion_size=1 << 20,
                                              _post_fusion_custom_pass=pass_ if pass_ is not None else record,
                                              **{"cpp.enable_kernel_profile": True}))
            stack.enter_context(V.set_choices_handler(_only_inside_groups(group_of, compute)))
            compiled = compile_fx_inner(gm, example_inputs)
        fused = pass_.fused if pass_ is not None else (recorded[0] if recorded else None)
        if fused is None:
            return compiled, None  # served from Inductor's cache: nothing was lowered or scheduled here
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
        _verify(loops)
        key = store_as or (getattr(compiled, "_fx_graph_cache_key", None) if cache_on else None)
        if key:  # verified: the listing may now serve later hits on this code
            with contextlib.suppress(OSError):
                cache.put(_listing_key(key), {"loops": [[list(k.nodes), k.group, k.function] for k in loops]},
                          GRAPHS)
        return compiled, loops


def _verify(loops: list[KernelOrigin]) -> None:
    bad = [k for k in loops if not k.ok]
    if bad:
        raise FusionPolicyError(f"Inductor fused across a group boundary: {bad[0].nodes}")


def _listing_key(inductor_key: str) -> str:
    return cache.make_key("whole-graph-loops", inductor_key, _code_version())


def _stored_listing(inductor_key: str | None, source: str, group_of: dict[str, str]) -> list[KernelOrigin] | None:
    """The verified listing stored for this cached code, verified again; None if there is none
    or it does not fit (then the caller compiles with the cache off)."""
    if not inductor_key:
        return None
    try:
        payload = cache.get(_listing_key(inductor_key), GRAPHS)
    except (cache.CacheCorruptError, OSError):
        return None
    try:
        loops = [KernelOrigin(tuple(n), g, f) for n, g, f in payload["loops"]]
    except (TypeError, KeyError, ValueError):
        return None
    for k in loops:
        # every op in the group the policy puts it in, every function in the generated code
        if any(group_of.get(n) != k.group for n in k.nodes):
            return None
        if k.function and re.sub(r"^graph_\d+_", "", k.function) not in source:
            return None
    try:
        _verify(loops)
    except FusionPolicyError:
        return None
    return loops
