"""The candidate search: grow groups of nodes one kernel can compute, and say why not.

Groups grow greedily along producer -> consumer edges in topological order, and merge
siblings that reduce the same rows of a shared input. A merge is refused, with a reason,
when the members do not share one iteration domain or when a path would leave the group
and re-enter it (that group could not be one kernel). :mod:`fusionlab.candidates` turns
the groups into named, costed Candidates.

Before the greedy growth, :meth:`GroupFinder.seed` makes chosen node sets one group each:
a user pattern's occurrences (kept exactly as matched, *sealed*) and the nodes an
``always_fuse`` rule names. ``forbid(a, b)`` (a ``never_fuse`` rule) refuses merges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx

from . import ops
from .capture import CapturedGraph
from .fxgraph import merge_creates_cycle

# --------------------------------------------------------------------------- domains


def node_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        val = val[0]
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def aligns(shape: tuple[int, ...], domain: tuple[int, ...]) -> bool:
    """Does `shape` broadcast to `domain` the way torch broadcasts (right-aligned)?"""
    if len(shape) > len(domain):
        return all(s == 1 for s in shape[: len(shape) - len(domain)]) and aligns(
            shape[len(shape) - len(domain):], domain
        )
    off = len(domain) - len(shape)
    return all(s == 1 or s == domain[off + i] for i, s in enumerate(shape))


@dataclass
class Group:
    members: list  # fx nodes
    domain: tuple[int, ...]
    rdims: tuple[int, ...] | None  # None: pointwise group


def _node_domain(node: torch.fx.Node, kind: str):
    """(domain, reduce dims) of one fusable node, or None."""
    if kind == "reduction":
        spec = ops.reduction_spec(node)
        shape = node_shape(spec.input)
        if shape is None:
            return None
        return shape, spec.dims
    shape = node_shape(node)
    if shape is None:
        return None
    return shape, None


class GroupFinder:
    def __init__(self, graph: CapturedGraph, forbid=None):
        self.graph = graph
        self.forbid = forbid  # forbid(members_a, members_b) -> reason | None
        self.sealed: dict[int, str] = {}  # id(group) -> why it keeps exactly its nodes
        self.nodes = list(graph.gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.kind = {n: graph.nodes[n.name].kind for n in self.nodes}
        self.reason: dict[torch.fx.Node, str] = {}
        self.group: dict[torch.fx.Node, Group] = {}
        for n in self.nodes:
            k = self.kind[n]
            if k == "getitem":
                src = n.args[0]
                if self.kind.get(src) == "reduction":
                    continue  # joins its reduction below
                self.reason[n] = f"picks a result of {ops.op_name(src)}, which is not fused"
                continue
            why = ops.why_not_fusable(n, k)
            if k not in ops.FUSABLE_KINDS and why is None:
                why = f"{k} node"
            if why is not None:
                self.reason[n] = why
                continue
            dom = _node_domain(n, k)
            if dom is None:
                self.reason[n] = "shape unknown"
                continue
            g = Group([n], dom[0], dom[1])
            self.group[n] = g
        # a multi-output reduction (var_mean) and its getitems are one unit
        for n in self.nodes:
            if self.kind[n] == "getitem" and n.args[0] in self.group:
                g = self.group[n.args[0]]
                g.members.append(n)
                self.group[n] = g
            elif self.kind[n] == "getitem" and n not in self.reason:
                self.reason[n] = f"picks a result of {ops.op_name(n.args[0])}, which is not fused"

    # ------------------------------------------------------------------ merging

    def _merged_domain(self, a: Group, b: Group):
        """(domain, rdims) of a ∪ b, or a reason string."""
        if a.rdims is not None and b.rdims is not None:
            if a.domain != b.domain or a.rdims != b.rdims:
                return "reductions over different rows (domains or reduced dims differ)"
            dom, rd = a.domain, a.rdims
        elif a.rdims is not None or b.rdims is not None:
            red, pw = (a, b) if a.rdims is not None else (b, a)
            dom, rd = red.domain, red.rdims
            if not aligns(pw.domain, dom):
                return f"shape {list(pw.domain)} does not broadcast to the reduction's {list(dom)}"
        else:
            if aligns(a.domain, b.domain) and math.prod(b.domain) >= math.prod(a.domain):
                dom, rd = b.domain, None
            elif aligns(b.domain, a.domain):
                dom, rd = a.domain, None
            else:
                return f"shapes {list(a.domain)} and {list(b.domain)} do not share one iteration space"
        members = a.members + b.members
        mset = set(members)
        for m in members:
            shape = node_shape(m)
            if shape is None:
                return "shape unknown"
            if aligns(shape, dom):
                if self.kind[m] == "reduction" and not ops.reduction_spec(m).keepdim:
                    # right-aligned but not the same dims: only safe when nobody in the group reads it
                    spec = ops.reduction_spec(m)
                    kept = [d for d in range(len(dom)) if d not in spec.dims]
                    off = len(dom) - len(shape)
                    if [off + i for i in range(len(shape)) if shape[i] != 1] != [
                        d for d in kept if dom[d] != 1
                    ] and any(u in mset for u in m.users):
                        return f"{m.name} drops reduced dims, so its result does not line up with the rows"
                continue
            if self.kind[m] in ("reduction", "getitem") and not any(u in mset for u in m.users):
                continue  # a final reduction result is stored by its own index map
            return f"{m.name} has shape {list(shape)}, which does not broadcast to {list(dom)}"
        return dom, rd

    def _base(self, node: torch.fx.Node) -> torch.fx.Node:
        """The tensor a chain of views starts from."""
        while self.kind.get(node) == "view" and node.all_input_nodes:
            node = node.all_input_nodes[0]
        return node

    def seed(self, nodes: list, label: str, seal: bool = False) -> str | None:
        """Make `nodes` one group (the reason when they cannot be one kernel, nothing changed)."""
        groups: list[Group] = []
        for n in nodes:
            g = self.group.get(n)
            if g is None:
                return f"{n.name} ({ops.op_name(n)}) is not fusable: {self.reason.get(n, 'not a kernel op')}"
            if id(g) in self.sealed and not set(nodes) >= set(g.members):
                return f"{n.name} is already in {self.sealed[id(g)]}"
            if all(g is not h for h in groups):
                groups.append(g)
        acc = Group(list(groups[0].members), groups[0].domain, groups[0].rdims)
        for g in groups[1:]:
            dom = self._merged_domain(acc, g)
            if isinstance(dom, str):
                return f"two iteration domains: {dom}"
            if merge_creates_cycle(acc.members, g.members, self.index):
                return "a cycle: a path leaves the nodes and comes back, so one kernel cannot hold them"
            why = self.forbid(acc.members, g.members) if self.forbid else None
            if why:
                return why
            acc = Group(acc.members + g.members, *dom)
        for g in groups[1:]:
            self._merge(groups[0], g, self._merged_domain(groups[0], g))
        if seal:
            self.sealed[id(groups[0])] = label
        return None

    def _merge(self, a: Group, b: Group, dom) -> None:
        a.members.extend(b.members)
        a.domain, a.rdims = dom
        for m in b.members:
            self.group[m] = a

    def try_merge(self, a: Group, b: Group) -> str | None:
        if a is b:
            return None
        for g in (a, b):
            if id(g) in self.sealed:
                return f"kept apart: {self.sealed[id(g)]} is one candidate of exactly its nodes"
        dom = self._merged_domain(a, b)
        if isinstance(dom, str):
            return dom
        if merge_creates_cycle(a.members, b.members, self.index):
            return "fusing would create a cycle (a path leaves the group and comes back)"
        why = self.forbid(a.members, b.members) if self.forbid else None
        if why:
            return why
        self._merge(a, b, dom)
        return None

    def run(self) -> list[Group]:
        failed: dict[torch.fx.Node, str] = {}
        # vertical: each node joins the groups of its producers. Reductions along rows (the
        # last dim) pick their producers first, so a row reduction (norm backward) and a
        # column reduction (its weight gradient) reading one chain give the chain to the row.
        for rows_first in (True, False):
            for n in self.nodes:
                g = self.group.get(n)
                if g is None:
                    continue
                if rows_first and g.rdims is not None and (len(g.domain) - 1) not in g.rdims:
                    continue
                for p in n.all_input_nodes:
                    pg = self.group.get(p)
                    if pg is None or pg is self.group[n]:
                        continue
                    why = self.try_merge(pg, self.group[n])
                    if why:
                        failed.setdefault(n, why)
        # horizontal: groups over the same domain that read one tensor (directly or through
        # views: the q, k, v copies of one projection) become one kernel with several outputs
        readers: dict[torch.fx.Node, list[Group]] = {}
        for n in self.nodes:
            g = self.group.get(n)
            if g is None:
                continue
            for a in n.all_input_nodes:
                base = self._base(a)
                lst = readers.setdefault(base, [])
                if all(g is not h for h in lst):
                    lst.append(g)
        for lst in readers.values():
            for g in lst[1:]:
                first = self.group[lst[0].members[0]]
                cur = self.group[g.members[0]]
                if cur is first or cur.domain != first.domain or cur.rdims != first.rdims:
                    continue
                self.try_merge(first, cur)
        groups = []
        seen = set()
        for n in self.nodes:
            g = self.group.get(n)
            if g is not None and id(g) not in seen:
                seen.add(id(g))
                g.members.sort(key=self.index.__getitem__)
                groups.append(g)
        self.failed = failed
        return groups
