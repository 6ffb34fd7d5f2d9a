"""A pattern from an example function: trace it, keep its op structure, match that.

``@fusionlab.pattern("rmsnorm_silu")`` over ``def f(x, w): ...`` captures ``f`` on example
inputs exactly as a model is captured (dynamo, AOTAutograd, Inductor's decompositions), so
the pattern is written in the ATen ops a model's graph holds. What is kept is structure:
each op, which op's result feeds which argument, and which arguments are the same input.
Shapes, dtypes and constants (eps, the exponent's value) are not compared, so one pattern
matches every batch size, width and layer. View ops are looked through on both sides.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass

import torch
import torch.fx

from .. import ops
from .registry import PatternError

_COMMUTATIVE = {ops.aten.add.Tensor, ops.aten.mul.Tensor}


@dataclass
class Traced:
    """The structure of an example function: its compute nodes and the one result."""

    graph: object  # CapturedGraph
    compute: list  # fx nodes of the pattern (pointwise, reduction, getitem)
    anchor: torch.fx.Node  # the result: matching starts there
    description: str


def _inputs_for(fn, inputs) -> tuple:
    if inputs is None:
        try:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        except (TypeError, ValueError) as e:
            raise PatternError(f"cannot read the parameters of {fn!r}; pass inputs=[shape, ...]") from e
        if not params:
            raise PatternError(f"example function {fn.__name__} takes no tensors; it must take the tensors "
                               "the pattern reads, e.g. def f(x, w): ...")
        return tuple(torch.randn(4, 32) for _ in params)
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (tuple, list)) and all(isinstance(s, int) and s > 0 for s in x):
            out.append(torch.randn(*x))
        else:
            raise PatternError(f"example input {i} is {x!r}: give a shape (a tuple of positive ints) or a tensor")
    return tuple(out)


def _through_views(node, kind_of):
    while isinstance(node, torch.fx.Node) and kind_of(node) == "view" and node.all_input_nodes:
        node = node.all_input_nodes[0]
    return node


def trace_example(fn, inputs=None) -> Traced:
    """Capture `fn` on example inputs and check its graph can be a pattern (one kernel)."""
    from ..capture import CaptureError, capture
    from ..grouping import GroupFinder

    if not callable(fn):
        raise PatternError(f"@fusionlab.pattern decorates an example function, not a {type(fn).__name__}")
    name = getattr(fn, "__name__", "example")
    args = _inputs_for(fn, inputs)
    try:
        cap = capture(fn, *args, train=False)
    except CaptureError as e:
        raise PatternError(f"example function {name} could not be traced: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's function failing on its example inputs
        raise PatternError(f"example function {name} failed on its example inputs: {type(e).__name__}: {e}") from None
    if len(cap.graphs) != 1 or cap.breaks:
        why = "; ".join(map(str, cap.breaks)) or f"{len(cap.graphs)} graphs"
        raise PatternError(f"example function {name} does not trace to one graph ({why}): a pattern is one graph")
    graph = cap.graphs[0]
    kinds = {n: graph.nodes[n.name].kind for n in graph.gm.graph.nodes}
    compute = []
    for n in graph.gm.graph.nodes:
        k = kinds[n]
        if n.op != "call_function" or k == "view":
            continue
        if k == "matmul":
            raise PatternError(
                f"example function {name} holds {ops.op_name(n)}: a matmul epilogue pattern needs the "
                "matmul-epilogue search (register it with anchor='matmul' and a match= function); an "
                "example function may hold pointwise and reduction ops only")
        if k not in ("pointwise", "reduction", "getitem"):
            why = ops.why_not_fusable(n, k) or f"a {k} op"
            raise PatternError(f"example function {name} holds {ops.op_name(n)}, which no kernel of fusionlab "
                               f"fuses ({why})")
        compute.append(n)
    if sum(1 for n in compute if kinds[n] != "getitem") < 2:
        raise PatternError(f"example function {name} computes {len(compute)} op(s): a pattern needs at least "
                           "two ops to fuse (one op is one kernel already)")
    cset = set(compute)
    sinks = [n for n in compute if not any(u in cset or (kinds[u] == "view" and _feeds(u, cset, kinds))
                                           for u in n.users)]
    if len(sinks) != 1:
        raise PatternError(f"example function {name} has {len(sinks)} results ({', '.join(ops.op_name(s) for s in sinks)}); "
                           "a pattern computes one result (return one tensor)")
    finder = GroupFinder(graph)
    why = finder.seed(compute, f"pattern of {name}")
    if why:
        raise PatternError(f"example function {name} can never be one kernel: {why}")
    shapes = ", ".join("x".join(map(str, a.shape)) if isinstance(a, torch.Tensor) else repr(a) for a in args)
    desc = f"traced from {name}({shapes}): " + ", ".join(
        ops.op_name(n).removeprefix("aten.") for n in compute if kinds[n] != "getitem")
    return Traced(graph, compute, sinks[0], desc)


def _feeds(view_node, cset, kinds) -> bool:
    for u in view_node.users:
        if u in cset or (kinds.get(u) == "view" and _feeds(u, cset, kinds)):
            return True
    return False


def structure_matcher(t: Traced):
    """``match(node, view)``: the nodes of `t`'s structure ending at `node`, or None."""
    pkind = {n: t.graph.nodes[n.name].kind for n in t.graph.gm.graph.nodes}

    def pargs(n):
        return [_through_views(a, pkind.__getitem__) for a in n.args if isinstance(a, torch.fx.Node)]

    def unify(pn, tn, m: dict, tkind) -> dict | None:
        if pn.op == "placeholder" or pn not in pkind or pkind[pn] == "view":
            key = ("in", pn)
            if key in m:
                return m if m[key] is tn else None
            return {**m, key: tn}
        if pn in m:
            return m if m[pn] is tn else None
        if tn.op != "call_function" or tn.target != pn.target or tn in m.get("used", ()):
            return None
        if pn.target is operator.getitem and tn.args[1] != pn.args[1]:
            return None
        pa = pargs(pn)
        ta = [_through_views(a, tkind) for a in tn.args if isinstance(a, torch.fx.Node)]
        if len(pa) != len(ta):
            return None
        m = {**m, pn: tn, "used": m.get("used", frozenset()) | {tn}}
        orders = [ta] + ([ta[::-1]] if pn.target in _COMMUTATIVE and len(ta) == 2 else [])
        for order in orders:
            cur = m
            for p, a in zip(pa, order):
                cur = unify(p, a, cur, tkind)
                if cur is None:
                    break
            if cur is not None:
                return cur
        return None

    def match(node, view):
        got = unify(t.anchor, node, {}, view.kind)
        if got is None:
            return None
        mapped = [got[p] for p in t.compute if p in got]
        # getitems of a matched multi-output op that the anchor does not reach
        return mapped if len(mapped) >= 2 else None

    return match
