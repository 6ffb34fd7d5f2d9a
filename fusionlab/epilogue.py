"""Matmul epilogues: a matmul and the pointwise ops on its output, as one candidate.

``mm``, ``addmm`` and ``bmm`` write their result to memory, and the pointwise ops that
read it (bias add, gelu/relu/silu, a scale, a residual add, a dtype cast ...) read it back.
One kernel can apply those ops to each output tile while it is still in registers, after
the last ``tl.dot`` and before the store: the matmul's result never makes the round trip
(it is still stored when something outside the kernel reads it, e.g. saved for backward).

The search starts from the pointwise groups :class:`fusionlab.grouping.GroupFinder` found
and gives a matmul to the pointwise group that reads its output, when

* the matmul is ``mm``/``addmm``/``bmm`` on fp32, fp16 or bf16 operands with a contiguous
  result, and the group reads that result directly or through reshapes (``view``,
  ``_unsafe_view``, ``reshape``: the same elements in the same order), which join the group;
* the group is pointwise (a group with a reduction keeps the matmul out: its rows would
  span several output tiles) and iterates over exactly the matmul's output, whose
  ``[batch, M, N]`` dims its domain splits up (``[8, 64, 64]`` as ``[2, 4, 64, 64]``);
* every value the group stores has the domain's shape, and joining makes no cycle.

A group reads at most one matmul's result in its kernel (the first in graph order); a
matmul whose result no pointwise group reads whole stays a library call, with its reason in
``why_not()``. Operands stay where they are: a transposed weight (``permute``/``t`` before
``mm``) is read through its strides by the kernel, never copied.

:func:`attach_matmuls` is what :func:`fusionlab.candidates.graph_candidates` calls;
:func:`find` gives the matmul-epilogue groups of one graph alone and :func:`epilogue_name`
their names ("matmul+bias+gelu", "bmm+scale", ...), for a pattern registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx

from . import ops
from .capture import CapturedGraph
from .fxgraph import merge_creates_cycle
from .grouping import Group, GroupFinder, node_shape

aten = ops.aten

# the matmuls an epilogue kernel computes, and what its name calls them
MATMULS = {aten.mm.default: "matmul", aten.addmm.default: "matmul", aten.bmm.default: "bmm"}
# views that keep a contiguous tensor's elements in their order: free to compute inside a kernel
RESHAPES = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.alias.default}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["MATMULS", "MatmulSpec", "attach_matmuls", "epilogue_name", "find", "is_matmul", "matmul_spec",
           "split_domain"]


def is_matmul(node: torch.fx.Node) -> bool:
    """An mm/addmm/bmm node (what an epilogue kernel computes with ``tl.dot``)."""
    return node.op == "call_function" and node.target in MATMULS


@dataclass(frozen=True)
class MatmulSpec:
    """One mm/addmm/bmm node, normalised: ``out = beta * bias + alpha * (a @ b)``."""

    node: torch.fx.Node
    a: torch.fx.Node  # [batch,] M, K
    b: torch.fx.Node  # [batch,] K, N
    bias: torch.fx.Node | None  # addmm's first argument (broadcast to [M, N])
    alpha: float
    beta: float
    batch: int  # 1 for mm/addmm
    m: int
    n: int
    k: int

    @property
    def batched(self) -> bool:
        return self.node.target is aten.bmm.default


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _contiguous(t: torch.Tensor) -> bool:
    expect, acc = [], 1
    for s in reversed(t.shape):
        expect.append(acc)
        acc *= int(s)
    expect.reverse()
    return all(int(s) == 1 or int(st) == e for s, st, e in zip(t.shape, t.stride(), expect))


def matmul_spec(node: torch.fx.Node) -> MatmulSpec | str:
    """The node as a :class:`MatmulSpec`, or the reason an epilogue kernel cannot compute it."""
    if not is_matmul(node):
        return f"{ops.op_name(node)} is not mm, addmm or bmm"
    if node.target is aten.addmm.default:
        bias, a, b = node.args[:3]
        alpha, beta = float(node.kwargs.get("alpha", 1)), float(node.kwargs.get("beta", 1))
    else:
        (a, b), bias, alpha, beta = node.args[:2], None, 1.0, 1.0
    out, va, vb = _val(node), _val(a), _val(b)
    if not all(isinstance(v, torch.Tensor) for v in (out, va, vb)):
        return "operand shapes unknown"
    if bias is not None and not isinstance(_val(bias), torch.Tensor):
        return "addmm with a scalar bias"
    try:
        shape = [int(s) for s in out.shape]
        ka = int(va.shape[-1])
    except TypeError:
        return "symbolic (dynamic) shape: fusionlab kernels need static shapes"
    for v in (out, va, vb) + ((_val(bias),) if bias is not None else ()):
        if v.dtype not in DTYPES:
            return f"dtype {str(v.dtype).replace('torch.', '')}: matmul epilogues are generated for fp32, fp16, bf16"
    if len({out.dtype, va.dtype, vb.dtype}) != 1:
        return "operands of different dtypes"
    if out.numel() == 0 or ka == 0:
        return "zero-size matmul"
    if not _contiguous(out):
        return "its result is not contiguous"
    batch = shape[0] if node.target is aten.bmm.default else 1
    return MatmulSpec(node, a, b, bias, alpha, beta, batch, shape[-2], shape[-1], ka)


def split_domain(domain, spec: MatmulSpec) -> tuple[tuple[int, ...], ...] | None:
    """The dims of `domain` (a reshape of the matmul's ``[batch,] M, N`` result) that make up
    batch, M and N, in order: ``[2, 4, 64, 64]`` over a bmm ``[8, 64, 64]`` is
    ``((0, 1), (2,), (3,))``; mm gives ``((), m dims, n dims)``. None when the domain's dims
    do not split that way (a reshape that mixes rows with columns)."""
    targets = ([spec.batch] if spec.batched else [1]) + [spec.m, spec.n]
    out, i = [], 0
    for j, t in enumerate(targets):
        dims, prod = [], 1
        while i < len(domain) and (prod < t or (domain[i] == 1 and j == len(targets) - 1)):
            dims.append(i)
            prod *= domain[i]
            i += 1
        if prod != t:
            return None
        out.append(tuple(dims))
    if i != len(domain):
        return None
    return tuple(out)


# --------------------------------------------------------------------------- search


def _reshapes(node: torch.fx.Node) -> dict[torch.fx.Node, list[torch.fx.Node]]:
    """Every reshape view of `node`'s result (transitively) -> the views from `node` to it."""
    out: dict = {node: []}
    stack = [node]
    while stack:
        cur = stack.pop()
        for u in cur.users:
            v = _val(u)
            if u.op == "call_function" and u.target in RESHAPES and u not in out and isinstance(v, torch.Tensor) \
                    and _contiguous(v):
                out[u] = out[cur] + [u]
                stack.append(u)
    return out


def _epilogue_for(spec: MatmulSpec, finder: GroupFinder, group_of: dict, taken: set):
    """(group, nodes to add) for the matmul, or the reason there is none."""
    chain = _reshapes(spec.node)
    readers: list[Group] = []
    for r in chain:
        for u in r.users:
            g = group_of.get(u)
            if g is not None and all(g is not h for h in readers):
                readers.append(g)
    if not readers:
        return "no pointwise op reads its result, so there is no epilogue to fuse"
    reasons = []
    # the group with the most kernels gets the matmul (gelu's 9 ops before a lone cast)
    for g in sorted(readers, key=lambda g: -sum(ops.launches_kernel(finder.kind[m]) for m in g.members)):
        mset = set(g.members)
        if g.rdims is not None:
            reasons.append("its result feeds a reduction (a row would span several output tiles)")
            continue
        if id(g) in taken:
            reasons.append("the pointwise group reading it already reads another matmul's result")
            continue
        if id(g) in finder.sealed:  # a user pattern's occurrence keeps exactly its nodes
            reasons.append(f"the ops reading it are {finder.sealed[id(g)]}, one candidate of exactly its nodes")
            continue
        why = finder.forbid([spec.node], g.members) if finder.forbid else None
        if why:  # a never_fuse rule
            reasons.append(why)
            continue
        read = [r for r in chain if any(u in mset for u in r.users)]
        if any(tuple(node_shape(r) or ()) != tuple(g.domain) for r in read):
            reasons.append(f"the ops reading it iterate over {list(g.domain)}, not over its result")
            continue
        if split_domain(g.domain, spec) is None:
            reasons.append(f"the epilogue's domain {list(g.domain)} mixes the result's rows and columns")
            continue
        bad = [m for m in g.members if any(u not in mset for u in m.users)
               and tuple(node_shape(m) or ()) != tuple(g.domain)]
        if bad:
            reasons.append(f"{bad[0].name} leaves the group with shape {list(node_shape(bad[0]) or ())}, "
                           "not the output tile's")
            continue
        add = [spec.node] + list(dict.fromkeys(v for r in read for v in chain[r]))
        if merge_creates_cycle(g.members, add, finder.index):
            reasons.append("fusing would create a cycle (a path leaves the group and comes back)")
            continue
        return g, add
    return reasons[0]


def attach_matmuls(graph: CapturedGraph, finder: GroupFinder, groups: list[Group]) -> list[Group]:
    """Give each mm/addmm/bmm to the pointwise group that is its epilogue (see the module
    docstring); `groups` are ``finder.run()``'s, changed in place and returned. Every matmul
    left out gets its reason in ``finder.reason``."""
    group_of = {m: g for g in groups for m in g.members}
    taken: set[int] = set()
    for n in finder.nodes:
        if finder.kind.get(n) != "matmul":
            continue
        spec = matmul_spec(n)
        found = spec if isinstance(spec, str) else _epilogue_for(spec, finder, group_of, taken)
        if isinstance(found, str):
            finder.reason[n] = f"matmul {ops.op_name(n)} runs as a library kernel: {found}"
            continue
        g, add = found
        g.members = sorted(g.members + add, key=finder.index.__getitem__)
        taken.add(id(g))
        for m in add:
            finder.group[m] = g
            group_of[m] = g
            finder.reason.pop(m, None)
    return groups


def find(graph: CapturedGraph) -> list[Group]:
    """The matmul-epilogue groups of one graph (each: a matmul, its reshapes and the pointwise
    ops on its result, in graph order)."""
    finder = GroupFinder(graph)
    groups = attach_matmuls(graph, finder, finder.run())
    return [g for g in groups if any(is_matmul(m) for m in g.members)]


# --------------------------------------------------------------------------- names

_ACTIVATIONS = ("gelu", "silu", "relu", "sigmoid", "tanh")


def _scalar_like(a) -> bool:
    if not isinstance(a, torch.fx.Node):
        return isinstance(a, (int, float))
    shape = node_shape(a)
    return shape is not None and math.prod(shape) == 1


def _component(m: torch.fx.Node, members, out_shape) -> str | None:
    """What one pointwise op of an epilogue does, in a name's words (None: part of something named)."""
    t = m.target
    others = [a for a in m.args if not (isinstance(a, torch.fx.Node) and a in members)]
    if t in (aten.add.Tensor, aten.sub.Tensor):
        o = next((a for a in others if isinstance(a, torch.fx.Node)), None)
        if o is None or _scalar_like(o):
            return "add"
        return "bias" if len(node_shape(o) or ()) == 1 and out_shape and out_shape[-1] > 1 else "residual"
    if t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
        return "scale" if others and all(_scalar_like(a) for a in others) else "mul"
    if t in (ops.prims.convert_element_type.default, aten._to_copy.default):
        return "cast"
    name = ops.op_name(m).split(".")[1]
    return {"threshold_backward": "relu_backward"}.get(name, name)


def epilogue_name(members: list[torch.fx.Node], view) -> str:
    """"matmul+bias+gelu", "bmm+scale", "matmul+gelu_backward", "matmul+residual", ...:
    the matmul, then what its epilogue does, in the order a student reads it. An activation
    the ATen graph spells out op by op (gelu's tanh form) goes by its name, as in every
    other candidate's name (the pattern registry's, through ``view``, a
    :class:`fusionlab.patterns.NodeView`)."""
    from .patterns import name_group  # the names every pointwise candidate gets

    mm = next(m for m in members if is_matmul(m))
    comps = [MATMULS[mm.target]] + (["bias"] if mm.target is aten.addmm.default else [])
    rest = [m for m in members if m.op == "call_function" and ops.kind_of(m) == "pointwise"]
    named = [c for c in (name_group(rest, view).name if rest else "").split("+")
             if c.removesuffix("_backward") in _ACTIVATIONS or c in ("masked_fill", "where")]
    each = [c for c in (_component(m, set(members), node_shape(mm)) for m in rest) if c]
    if named:  # the activation (gelu's tanh form names its tanh too: part of the gelu)
        comps += named[:1]
    else:
        comps += [c for c in each if c != "cast"]
    # a cast names the epilogue when a stored result changes dtype (not fp16 gelu's own upcasts)
    mset = set(members)
    dtype = getattr(_val(mm), "dtype", None)
    if any(getattr(_val(m), "dtype", dtype) != dtype for m in rest if any(u not in mset for u in m.users)):
        comps.append("cast")
    comps = list(dict.fromkeys(comps))
    return "+".join(comps[:4] if len(comps) <= 4 else comps[:3] + ["pointwise"])
