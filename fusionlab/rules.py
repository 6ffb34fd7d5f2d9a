"""Fusion rules a user writes down: ``never_fuse(a, b)`` and ``always_fuse(a, b, ...)``.

A rule names nodes by *selectors*, each one of:

- an op: ``"aten.add.Tensor"``, ``"aten.add"`` or just ``"add"``;
- a module path: ``"h.0.mlp"`` names every node of that module and the modules inside it
  (``*`` globs: ``"h.*.ln_1"``);
- a pattern: ``"gelu"``, ``"layer_norm"`` or a user pattern, the nodes that pattern claims
  when the whole graph is matched against the registry.

Rules act in the candidate search (:mod:`fusionlab.grouping`), per graph: ``never_fuse``
refuses every merge that would put a node named by ``a`` and another named by ``b`` in one
group (so a group that would hold both is grown as two; a node both name is on neither
side, so never_fuse("add", "layer_norm") keeps the residual add out but not the eps add); ``always_fuse`` makes the nodes
its selectors name in a graph (where all of them name some) one group before the search
grows it, or is refused with the reason (two iteration domains, a cycle, an op no kernel
fuses). Rules hold no node names or shapes, so they apply to a recapture with new shapes.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch.fx

from . import ops


@dataclass(frozen=True)
class Rule:
    kind: str  # "never" | "always"
    names: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.kind}_fuse({', '.join(map(repr, self.names))})"

    def code(self, var: str = "plan") -> str:
        return f"{var}.{self}"


def selector_matches(sel: str, node: torch.fx.Node, module: str, pattern: str | None) -> bool:
    """Does selector `sel` (op, module path or pattern name) name `node`?"""
    if node.op != "call_function":
        return False
    op = ops.op_name(node)
    short = op.split(".")[1] if op.count(".") >= 1 and op.split(".")[0] in ("aten", "prims") else op
    if sel in (op, short) or op.startswith(sel + "."):
        return True
    if pattern is not None and pattern == sel:
        return True
    if module:
        if any(c in sel for c in "*?["):
            return fnmatch.fnmatchcase(module, sel) or fnmatch.fnmatchcase(module, sel + ".*")
        return module == sel or module.startswith(sel + ".")
    return False


class GraphRules:
    """The rules applied to one graph: which nodes each selector names there."""

    def __init__(self, graph, view, rules):
        from .patterns.registry import node_patterns

        nodes = list(graph.gm.graph.nodes)
        claimed = node_patterns(nodes, view)
        self.rules = list(rules)
        names = {s for r in self.rules for s in r.names}
        self.named: dict[str, set] = {
            s: {n for n in nodes if selector_matches(s, n, view.module(n), claimed.get(n))} for s in names}
        self.order = {n: i for i, n in enumerate(nodes)}

    def forbid(self, a: list, b: list) -> str | None:
        """Why groups `a` and `b` may not merge (a never_fuse rule), or None."""
        merged = set(a) | set(b)
        for r in self.rules:
            if r.kind != "never":
                continue
            a_only, b_only = self.sides(r)
            x, y = a_only & merged, b_only & merged
            if x and y:
                return f"{r} keeps {min(x, key=self.order.get).name} and {min(y, key=self.order.get).name} apart"
        return None

    def sides(self, rule: Rule) -> tuple[set, set]:
        """The nodes only `a` names and those only `b` names: a node both name (the eps add
        inside a layer_norm, for never_fuse('add', 'layer_norm')) is on neither side."""
        a, b = (self.named[s] for s in rule.names)
        return a - b, b - a

    def always_nodes(self, rule: Rule) -> list:
        """The nodes an always_fuse rule names in this graph ([] unless every selector names one)."""
        sets = [self.named[s] for s in rule.names]
        if not all(sets):
            return []
        return sorted(set().union(*sets), key=self.order.__getitem__)


def named_anywhere(capture, sel: str) -> bool:
    """Does `sel` name a node in any graph of `capture`?"""
    from .patterns.registry import NodeView, node_patterns

    for g in capture.graphs:
        view = NodeView(g.nodes, g.kind == "backward")
        nodes = list(g.gm.graph.nodes)
        claimed = node_patterns(nodes, view)
        if any(selector_matches(sel, n, view.module(n), claimed.get(n)) for n in nodes):
            return True
    return False


def made_by_always(capture, c, rules) -> bool:
    """Does candidate `c` hold every node an always_fuse rule names in its graph?"""
    from .patterns.registry import NodeView

    rules = [r for r in rules if r.kind == "always"]
    if not rules:
        return False
    g = capture.graph(c.graph)
    gr = GraphRules(g, NodeView(g.nodes, g.kind == "backward"), rules)
    return any((named := gr.always_nodes(r)) and {n.name for n in named} <= set(c.nodes) for r in rules)


def split_by_rules(plain, candidates, rules) -> list[tuple[str, str]]:
    """(id, why) for each candidate found without rules (`plain`) that never_fuse rules split."""
    nevers = ", ".join(str(r) for r in rules if r.kind == "never")
    if not nevers:
        return []
    now = {(c.graph, c.nodes) for c in candidates}
    by_id = {c.id: c for c in candidates}
    out = []
    for c in plain:
        if (c.graph, c.nodes) in now:
            continue
        mine = set(c.nodes)
        parts = [d.id for d in candidates if d.graph == c.graph and set(d.nodes) & mine]
        if not parts:
            continue  # changed by an always_fuse rule, not split
        inside = set().union(*(by_id[p].nodes for p in parts))
        alone = [n for n in c.nodes if n not in inside]
        out.append((c.id, f"split by {nevers} into {', '.join(parts)}"
                    + (f"; {', '.join(alone[:3])}{' ...' if len(alone) > 3 else ''} "
                       f"run{'s' if len(alone) == 1 else ''} unfused" if alone else "")
                    + ("" if inside <= mine else " (the parts grew with other nodes)")))
    return out
