"""Stage 2, candidates: which nodes of a captured graph one kernel could compute.

A candidate is a group of pointwise and reduction nodes of one graph that share one
iteration domain: every value in the group broadcasts (right-aligned, as torch does) to
the domain shape ``D``; a group with reductions reduces the same dims ``R`` of ``D`` in
all of them (softmax's amax and sum, layer_norm's var_mean). Such a group is one Triton
kernel: pointwise over ``D``, or rows of ``D`` with ``R`` brought last by index math.

A pointwise group that reads a matmul's whole result also takes the matmul (and the
reshapes between them): one tiled ``tl.dot`` kernel with the group as its epilogue
(:mod:`fusionlab.epilogue`, ``Candidate.kind == "matmul"``).

The search itself (greedy growth, merges refused when a path would leave the group and
re-enter it) lives in :mod:`fusionlab.grouping`; bytes and FLOPs in
:mod:`fusionlab.nodecost`. This module turns the groups into named, costed Candidates and
gives every node left out of all candidates a one-line reason. Names come from the pattern
registry (:mod:`fusionlab.patterns`): the same structure gets the same name in every layer.
User patterns and ``always_fuse`` rules seed groups before the search; ``never_fuse`` rules
refuse merges (:mod:`fusionlab.rules`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
import torch.fx

from . import ops
from .capture import Capture, CapturedGraph
from .epilogue import attach_matmuls, epilogue_name, is_matmul
from .grouping import GroupFinder, aligns
from .nodecost import fmt_bytes, group_costs
from .patterns import NodeView, name_group
from .patterns.registry import grouping_occurrences
from .rules import GraphRules, Rule

_MATMUL_OPS = ("aten.mm.default", "aten.addmm.default", "aten.bmm.default")
__all__ = ["Candidate", "Candidates", "aligns", "find_candidates", "graph_candidates", "pattern_name"]

@dataclass
class Candidate:
    """A group of nodes one kernel can compute."""

    id: str  # "fw0.layer_norm.1": graph tag, pattern, ordinal
    graph: str  # graph tag, "fw0" / "bw0" / "inf0"
    pattern: str
    nodes: tuple[str, ...]  # members, topological order
    inputs: tuple[str, ...]  # tensors read from outside the group
    outputs: tuple[str, ...]  # members read after the group (or graph outputs)
    domain: tuple[int, ...]  # iteration shape D
    reduce_dims: tuple[int, ...]  # R (empty for pointwise groups)
    kernels_unfused: int  # kernels the members launch when run one by one
    bytes_unfused: int  # modeled: each member reads its inputs and writes its result
    bytes_fused: int  # modeled: read each group input once, write each output once
    modules: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    module: str = ""  # where the pattern sits: the module of its first named node ("h.0.attn")
    node_patterns: tuple[str, ...] = ()  # the pattern claiming each member ("" for none)

    @property
    def key(self) -> str:
        """``graph:pattern@module``: names the candidate without ordinals, across recaptures."""
        return f"{self.graph}:{self.pattern}@{self.module}"

    @property
    def kind(self) -> str:
        if any(o in _MATMUL_OPS for o in self.ops):
            return "matmul"  # a matmul with its epilogue (fusionlab.epilogue)
        return "reduction" if self.reduce_dims else "pointwise"

    @property
    def bytes_saved(self) -> int:
        return self.bytes_unfused - self.bytes_fused

    def matches(self, key: str) -> bool:
        """Selected by `key`: its id, its pattern, or one component of its pattern."""
        return key in (self.id, self.pattern, self.key) or key in self.pattern.split("+")

    def __repr__(self) -> str:
        mods = f" [{', '.join(self.modules[:2])}{', ...' if len(self.modules) > 2 else ''}]" if self.modules else ""
        return (
            f"<Candidate {self.id}: {len(self.nodes)} nodes, {self.kernels_unfused} kernels -> 1, "
            f"saves {fmt_bytes(self.bytes_saved)} (modeled){mods}>"
        )


class Candidates(list):
    """The candidates of a capture (a list) plus why every other node was left out.

    ``left_out`` maps (graph tag, node name) to the reason.
    """

    def __init__(self, items=(), capture=None, left_out=None, notes=None, rules=()):
        super().__init__(items)
        self.capture = capture
        self.left_out = left_out or {}
        self.optimizer: list[Candidate] = []  # candidates of the optimizer update (fusionlab.optim)
        self.notes: list[str] = list(notes or [])  # patterns and rules that could not be applied
        self.rules: tuple[Rule, ...] = tuple(rules)

    def by_id(self, cid: str) -> Candidate:
        for c in self:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def reason(self, graph: str, node: str) -> str | None:
        return self.left_out.get((graph, node))

    def table(self) -> str:
        lines = [f"{'id':34} {'nodes':>5} {'kernels':>7} {'saves (modeled)':>15}  modules"]
        for c in self:
            lines.append(
                f"{c.id:34} {len(c.nodes):5d} {c.kernels_unfused:4d}->1 {fmt_bytes(c.bytes_saved):>15}  "
                + ", ".join(c.modules[:3])
            )
        return "\n".join(lines)

    def why_not(self, limit: int = 20, views: bool = False) -> str:
        """Reasons for nodes left out of every candidate (views only when `views=True`)."""
        lines = list(self.notes)
        for (g, n), r in self.left_out.items():
            if views or not r.startswith("view "):
                lines.append(f"{g}.{n}: {r}")
        limit += len(self.notes)
        extra = len(lines) - limit
        return "\n".join(lines[:limit] + ([f"... {extra} more"] if extra > 0 else []))

    def __repr__(self) -> str:
        return f"{len(self)} fusion candidates\n" + self.table()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(c.id)}</code></td><td>{len(c.nodes)}</td>"
            f"<td>{c.kernels_unfused}&rarr;1</td><td>{fmt_bytes(c.bytes_saved)}</td>"
            f"<td>{html.escape(', '.join(c.modules[:3]))}</td></tr>"
            for c in self
        )
        return (
            f"<b>{len(self)} fusion candidates</b> (bytes are modeled)<table><tr><th>id</th>"
            "<th>nodes</th><th>kernels</th><th>saves</th><th>modules</th></tr>" + rows + "</table>"
        )


# --------------------------------------------------------------------------- naming


def pattern_name(members: list[torch.fx.Node], backward: bool, facts: dict | None = None) -> str:
    """The registry's name for a group of nodes (members in graph order)."""
    return name_group(members, NodeView(facts or {}, backward)).name


class LeftOut(dict):
    """(graph, node) -> why the node is in no candidate; ``notes``: patterns and rules not applied."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.notes: list[str] = []


# --------------------------------------------------------------------------- entry point


def graph_candidates(graph: CapturedGraph, min_kernels: int = 2, rules=()) -> tuple[list[Candidate], LeftOut]:
    """Candidates of one captured graph and reasons for the nodes left out.

    User patterns (``groups=True``) seed one group per occurrence, then ``always_fuse``
    rules seed theirs; ``never_fuse`` rules refuse merges. What could not be applied is in
    ``left_out.notes``.
    """
    view = NodeView(graph.nodes, graph.kind == "backward")
    nodes = list(graph.gm.graph.nodes)
    grules = GraphRules(graph, view, rules) if rules else None
    finder = GroupFinder(graph, forbid=grules.forbid if grules else None)
    left_out = LeftOut()
    for p, occ in grouping_occurrences(nodes, view):
        why = finder.seed(occ, f"pattern {p.name!r}", seal=True)
        if why:
            left_out.notes.append(f"{graph.tag}: pattern {p.name!r} matched at {occ[-1].name} but cannot be "
                                  f"one kernel there: {why}")
    for r in rules:
        if r.kind == "always":
            named = grules.always_nodes(r)
            why = finder.seed(named, str(r)) if named else None
            if why:
                left_out.notes.append(f"{graph.tag}: {r} refused: {why}")
    groups = attach_matmuls(graph, finder, finder.run())  # mm/addmm/bmm join their pointwise epilogue
    counts: dict[str, int] = {}
    result = []
    in_group: set = set()
    for g in groups:
        members = g.members
        mset = set(members)
        kernels = sum(1 for m in members if ops.launches_kernel(finder.kind[m]))
        if kernels < min_kernels:
            for m in members:
                if ops.launches_kernel(finder.kind[m]):
                    why = finder.failed.get(m)
                    left_out[(graph.tag, m.name)] = (
                        f"not fusable with its neighbours: {why}" if why else "no fusable neighbour"
                    )
            continue
        in_group |= mset
        inputs = []
        for m in members:
            for a in m.all_input_nodes:
                if a not in mset and a not in inputs:
                    inputs.append(a)
        outputs = [m for m in members if any(u not in mset for u in m.users)]
        # a multi-output reduction is stored through its getitems
        outputs = [o for o in outputs if finder.kind[o] != "reduction" or not _is_multi(o)]
        naming = name_group(members, view)
        pattern = naming.name
        if any(is_matmul(m) for m in members):
            pattern = naming.name = epilogue_name(members, view)
        k = counts.get(pattern, 0)
        counts[pattern] = k + 1
        kernels_unfused, bu, bf = group_costs(members, inputs, outputs)
        mods = []
        for m in members:
            mod = graph.nodes[m.name].module
            if mod and mod not in mods:
                mods.append(mod)
        result.append(
            Candidate(
                id=f"{graph.tag}.{pattern}.{k}",
                graph=graph.tag,
                pattern=pattern,
                nodes=tuple(m.name for m in members),
                inputs=tuple(a.name for a in inputs),
                outputs=tuple(o.name for o in outputs),
                domain=tuple(g.domain),
                reduce_dims=tuple(g.rdims or ()),
                kernels_unfused=kernels_unfused,
                bytes_unfused=bu,
                bytes_fused=bf,
                modules=tuple(mods),
                ops=tuple(dict.fromkeys(ops.op_name(m) for m in members)),
                module=_home(members, naming, graph),
                node_patterns=tuple(naming.claimed.get(m, "") for m in members),
            )
        )
    for n, why in finder.reason.items():
        if n not in in_group and n.op == "call_function":
            left_out[(graph.tag, n.name)] = why
    return result, left_out


def _home(members, naming, graph: CapturedGraph) -> str:
    """The module a candidate sits in: its first named node's, else its most common one."""
    if naming.anchor is not None and graph.nodes[naming.anchor.name].module:
        return graph.nodes[naming.anchor.name].module
    mods = [graph.nodes[m.name].module for m in members if graph.nodes[m.name].module]
    return max(dict.fromkeys(mods), key=mods.count) if mods else ""


def _is_multi(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), (list, tuple))


def find_candidates(capture: Capture, rules=()) -> Candidates:
    """Fusion candidates in every graph of `capture`, forward and backward (under `rules`:
    the Rules of a plan, see :meth:`fusionlab.FusionPlan.never_fuse`)."""
    if not isinstance(capture, Capture):
        raise TypeError(
            f"find_candidates takes the Capture returned by fusionlab.capture(...), got {type(capture).__name__}"
        )
    found = []
    left_out: dict = {}
    notes: list[str] = []
    for g in capture.graphs:
        cands, why = graph_candidates(g, rules=rules)
        found += cands
        left_out.update(why)
        notes += why.notes
    cands = Candidates(found, capture=capture, left_out=left_out, notes=notes, rules=rules)
    if capture.optimizer is not None:  # opt0: kept apart, the plan selects forward/backward groups
        from .optim.candidates import optimizer_candidates

        cands.optimizer = optimizer_candidates(capture.optimizer)
    return cands
