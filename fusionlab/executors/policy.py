"""The fusion policy as Inductor applies it: the one place the executors reach into Inductor's
lowering, scheduler and C++ code generation.

A policy says which FX node is in which fusionlab group. :func:`policy_for` derives the rest
(which ops compute, whose value must be stored because a reader sits outside its group, which
ops run as ATen calls), and :func:`compile_with_policy` runs ``compile_fx_inner`` under it:

* at lowering, the value of every op is materialized in a buffer unless all ops that read it
  are in the same group (Inductor cannot inline it into another group's loop);
* the scheduler may merge two loop nests only when every op they compute belongs to one
  group (``InductorChoices.can_fuse``); inside a group every legal merge is taken;
* a C++ function holds one group's loop nests, or consecutive ops outside every group
  (Inductor would put any consecutive nests in one function), and its source carries no
  per-compile name (with ``kernel_profile``, its profiler record is named by its content:
  the ops and a hash, where Inductor would write the graph's id and a counter), so a group's
  function is the same source in every compile that holds it (checked alone, in a bundle of
  groups, in the whole graph, in the graph after a toggle) and Inductor's compiled-code
  cache, keyed by source, builds it once;
* the policy is a post-fusion scheduler pass whose ``uuid()`` hashes it, so Inductor's FX
  graph cache key covers it.

After a compile every loop nest is listed with the ops it computes and its C++ function, and
verified (one group, or one op outside every group).

One piece: the policy, its application inside Inductor and the verified listing are one
contract with one torch version's internals; splitting them would spread that contract.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx

from .. import cache
from ..fxgraph import copy_graph
from .builds import PREFIX_INCLUDE, PROFILE_INCLUDE, batched_builds


@dataclass
class KernelOrigin:
    """One loop nest (kernel) of a whole-graph compile and the FX nodes it computes."""

    nodes: tuple[str, ...]  # compute nodes (views and getitems left out)
    group: str | None  # the fusionlab group it runs, or None: one op outside every group
    function: str = ""  # the generated C++ function that holds it, as torch.profiler names it

    @property
    def ok(self) -> bool:
        return self.group is not None or len(self.nodes) <= 1



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


def policy_pass(policy: dict):
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


def effective_users(node: torch.fx.Node, kinds: dict[str, str]) -> list[torch.fx.Node]:
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


@dataclass
class Policy:
    """Which node is in which group, and what follows from it for one FX graph."""

    group_of: dict[str, str]  # compute node -> candidate id (nodes outside every group absent)
    compute: set[str]  # nodes that compute (pointwise, reduction, matmul, opaque); views do not
    must_store: set[str]  # nodes whose value is materialized: a reader sits outside their group
    aten: set[str] = field(default_factory=set)  # nodes Inductor calls as ATen ops (``should_fallback``)
    kernel_profile: bool = False  # each C++ function records itself for torch.profiler

    def as_key(self) -> dict:
        return {"groups": sorted(self.group_of.items()), "store": sorted(self.must_store),
                "compute": sorted(self.compute), "aten": sorted(self.aten), "profile": self.kernel_profile}


def policy_for(gm: torch.fx.GraphModule, group_of: dict[str, str], *, as_eager=(),
               eager_outside_groups: bool = False, kernel_profile: bool = False) -> Policy:
    """The policy for `gm` (whose nodes it marks: call it on the copy that is compiled).

    `as_eager`: nodes that run as ATen calls (a refused group's ops: Inductor's version of
    them is what disagreed with eager); ``eager_outside_groups``: so do all other ops outside
    the groups, matmuls excepted. ``kernel_profile``: every C++ function records itself
    (``RECORD_FUNCTION``, Inductor's ``cpp.enable_kernel_profile``), so torch.profiler times
    each; its extra header costs each C++ build about 0.7 s on a 2-core CPU (measured).
    """
    from ..ops import KERNEL_KINDS, kind_of

    kinds = {n.name: kind_of(n) for n in gm.graph.nodes}
    compute = {n for n, k in kinds.items() if k in KERNEL_KINDS}
    as_eager = set(as_eager)
    must_store = set()
    for n in gm.graph.nodes:
        if n.name not in compute:
            continue
        g = group_of.get(n.name)
        if n.name in as_eager or (g is None and eager_outside_groups and kinds[n.name] != "matmul"):
            n.meta["should_fallback"] = True  # Inductor calls the ATen op itself, as eager does
        if g is None or any(group_of.get(u.name) != g for u in effective_users(n, kinds)):
            must_store.add(n.name)
    aten = {n.name for n in gm.graph.nodes if n.meta.get("should_fallback")}
    return Policy(dict(group_of), compute, must_store, aten, kernel_profile)




def _stable_name(body: str, nodes, compute: set[str]) -> str:
    """A C++ function's name from its content: the ops it computes (views left out: a compile
    may or may not place a view's index arithmetic in the function) and a hash of its code.

    Inductor's own name carries a per-graph counter, and its RECORD_FUNCTION the graph's id,
    so the same loop nest would be new source, compiled again, in every compile."""
    ops = sorted({getattr(o.target, "__name__", str(o.target)).split(".")[0].strip("_")
                  for sn in nodes for o in (sn.node.get_origins() if sn.node is not None else ())
                  if o.name in compute})
    digest = hashlib.sha256(body.encode()).hexdigest()[:10]
    return f"cpp_fused_{'_'.join(ops)[:60] or 'kernel'}_{digest}"


def compile_with_policy(gm: torch.fx.GraphModule, example_inputs, policy: Policy):
    """``compile_fx_inner`` under `policy`: (compiled, verified loop listing, served from cache,
    Inductor's key).

    With Inductor's FX graph cache on, the policy pass's uuid keeps plans apart. A miss runs
    lowering and scheduling here: the loops are listed and verified, and only a listing that
    passed is stored in fusionlab's cache, under Inductor's key for that code. A hit runs
    neither: the stored listing is read and verified again (every loop one group or one op,
    every function in the source); a hit without one (stored by another tool, or a compile
    that failed verification) is compiled again with the cache off, and verified.
    """
    pass_ = policy_pass(policy.as_key())
    key = None
    if pass_ is not None:
        compiled, loops = _compile_once(gm, example_inputs, policy, pass_)
        key = getattr(compiled, "_fx_graph_cache_key", None)
        if loops is not None:
            return compiled, loops, False, key
        loops = _stored_listing(key, getattr(compiled, "source_code", "") or "", policy.group_of)
        if loops is not None:
            return compiled, loops, True, key
        ctx = torch._guards.TracingContext.try_get()
        if ctx is not None and ctx.output_strides:  # the hit recorded them; the compile records them again
            ctx.output_strides.clear()
    compiled, loops = _compile_once(gm, example_inputs, policy, pass_, cache_on=False, store_as=key)
    return compiled, loops, False, key


def _compile_once(gm, example_inputs, policy: Policy, pass_, cache_on=True, store_as=None):
    """One ``compile_fx_inner`` with the policy patched in; the verified listing, or None on a hit.

    The listing, once verified, is stored under Inductor's key for this compile (`store_as`:
    the key of a hit whose listing was missing, compiled again here with the cache off)."""
    from unittest import mock

    from torch._inductor import config as iconfig
    from torch._inductor.codegen.cpp import CppScheduling
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.graph import GraphLowering
    from torch._inductor.ir import TensorBox
    from torch._inductor.utils import Placeholder
    from torch._inductor.virtualized import V

    group_of, compute, must_store = policy.group_of, policy.compute, policy.must_store
    gm = torch.fx.GraphModule(gm, copy_graph(gm.graph))  # a compile (even a hit) may change it
    run_node = GraphLowering.run_node
    define_kernel = CppScheduling.define_kernel
    codegen_node = CppScheduling.codegen_node
    function_of: dict[str, str] = {}  # scheduler node name -> C++ function
    # RECORD_FUNCTION("graph_<id>_<name>") in the function's body (cpp.enable_kernel_profile)
    record = re.compile(r"(?:graph_\d+_)?" + re.escape(str(Placeholder.DESCRIPTIVE_NAME)))

    def define(self, src_code, nodes, kernel_args=None):
        # the profiling header after the common prefix, which Inductor precompiles: a
        # precompiled header only serves a file that includes it first
        src_code = src_code.replace(PROFILE_INCLUDE + "\n" + PREFIX_INCLUDE + "\n",
                                    PREFIX_INCLUDE + "\n" + PROFILE_INCLUDE + "\n", 1)
        if record.search(src_code):
            name = _stable_name(record.sub("", src_code), nodes, compute)
            src_code = record.sub(name, src_code)
        else:
            name = None
        defined = define_kernel(self, src_code, nodes, kernel_args)
        for sn in nodes:  # the name torch.profiler records for the function
            function_of[sn.get_name()] = name or defined
        return defined

    last = []  # the group of the loop nests in the C++ function being written

    def one_function_per_group(self, node):
        # Inductor puts consecutive loop nests in one C++ function; here a function holds one
        # group's nests (or consecutive ops outside every group), so a group's function is the
        # same source in every compile that holds the group
        groups = {group_of.get(o.name) for o in _origins(node) if o.name in compute}
        label = groups.pop() if len(groups) == 1 else None
        if self.kernel_group.scheduled_nodes and last and last[0] != label:
            self.flush()
        codegen_node(self, node)
        last[:] = [label]

    def lower(self, n):
        result = run_node(self, n)
        if n.name in must_store:
            for value in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(value, TensorBox):  # e.g. var_mean: (var, mean)
                    value.realize()
        return result

    recorded: list = []

    def record_nodes(nodes):  # a torch without scheduler-pass uuids: a plain callable, the cache off
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
        stack.enter_context(mock.patch.object(CppScheduling, "codegen_node", one_function_per_group))
        stack.enter_context(iconfig.patch(fx_graph_cache=cache_on, fx_graph_remote_cache=False,
                                          pattern_matcher=False, combo_kernels=False, fallback_random=True,
                                          max_fusion_size=1 << 20, inplace_buffers=False,
                                          _post_fusion_custom_pass=pass_ if pass_ is not None else record_nodes,
                                          **{"cpp.enable_kernel_profile": policy.kernel_profile}))
        stack.enter_context(V.set_choices_handler(_only_inside_groups(group_of, compute)))
        stack.enter_context(batched_builds())
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
        if k.function and k.function not in source:
            return None
    try:
        _verify(loops)
    except FusionPolicyError:
        return None
    return loops
