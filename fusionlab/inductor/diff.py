"""A plan's candidates against Inductor's kernels: what both fuse, what only one fuses, and why.

Groups are compared by the nodes each side computes once (Inductor: the nodes a kernel
*owns*, see :mod:`.decisions`; matmuls and views left out, since neither side puts them in a
generated loop). ``inductor_diff(plan, decisions)`` gives three lists of :class:`DiffRow`:

* both: a candidate whose nodes are exactly one Inductor kernel's;
* fusionlab only: a candidate Inductor computes differently (split over several kernels, or
  inside a bigger one), saying which kernels;
* Inductor only: a kernel of two or more ops no candidate matches, with one line on why
  fusionlab has none: the ``why_not()`` reason of an op no candidate holds (a view, an opaque
  op, ...), or why two candidates stayed apart (a view between them, a mixed-order reduction,
  iteration spaces that differ), or a matmul epilogue.

``select_like_inductor(plan, decisions)`` selects every candidate that lies inside one
Inductor kernel (torch.compile's decisions as the starting point; change them from there).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from ..plan import FusionPlan, PlanError
from .decisions import LIBRARY, InductorDecisions, inductor_decisions

_GROUPED = ("pointwise", "reduction", "opaque")  # what a generated loop nest can hold (no matmul, no view)


@dataclass
class DiffRow:
    status: str  # "both" | "fusionlab only" | "inductor only"
    graph: str
    candidate: str | None  # the fusionlab candidate id
    kernels: tuple[str, ...]  # Inductor kernel ids
    nodes: tuple[str, ...]
    why: str = ""  # inductor only: why fusionlab has no candidate; fusionlab only: what Inductor does

    def __str__(self) -> str:
        what = self.candidate if self.status != "inductor only" else ", ".join(self.kernels)
        where = f" = {', '.join(self.kernels)}" if self.status == "both" else ""
        return f"{what}{where} ({len(self.nodes)} ops)" + (f": {self.why}" if self.why else "")


@dataclass
class InductorDiff:
    """A plan's candidates beside Inductor's kernels (see the module docstring)."""

    model_name: str
    both: list[DiffRow] = field(default_factory=list)
    fusionlab_only: list[DiffRow] = field(default_factory=list)
    inductor_only: list[DiffRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # graphs Inductor could not compile

    @property
    def rows(self) -> list[DiffRow]:
        return self.both + self.fusionlab_only + self.inductor_only

    def __str__(self) -> str:
        lines = [f"fusionlab vs torch.compile (Inductor) on {self.model_name}: {len(self.both)} groups both make, "
                 f"{len(self.fusionlab_only)} only fusionlab, {len(self.inductor_only)} only Inductor"]
        for title, rows in (("both", self.both), ("only fusionlab", self.fusionlab_only),
                            ("only Inductor (why fusionlab has no candidate)", self.inductor_only)):
            if rows:
                lines.append(f"{title}:")
                lines += [f"  {r}" for r in rows]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(r.status)}</td><td><code>{html.escape(r.candidate or '')}</code></td>"
            f"<td><code>{html.escape(', '.join(r.kernels))}</code></td><td>{len(r.nodes)}</td>"
            f"<td>{html.escape(r.why)}</td></tr>" for r in self.rows)
        errors = "".join(f"<p style='color:#b00'>{html.escape(e)}</p>" for e in self.errors)
        return (f"<b>fusionlab vs torch.compile (Inductor) on {html.escape(self.model_name)}</b>: "
                f"{len(self.both)} both, {len(self.fusionlab_only)} only fusionlab, "
                f"{len(self.inductor_only)} only Inductor<table><tr><th></th><th>candidate</th>"
                "<th>Inductor kernels</th><th>ops</th><th>why</th></tr>" + body + "</table>" + errors)


def _owned(gd, kinds) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for node, kid in gd.owner.items():
        if kinds.get(node) in _GROUPED:
            out.setdefault(kid, set()).add(node)
    return out


def _through_view(graph, a: set[str], b: set[str], kinds) -> str | None:
    """The view op on a path from a node of `a` to one of `b` that passes only through views."""
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    for src in a:
        stack, seen = [(u, None) for u in nodes[src].users], set()
        while stack:
            u, via = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.name in b and via is not None:
                return via
            if kinds.get(u.name) == "view":
                name = str(u.target).split(".")[-2] if "." in str(u.target) else str(u.target)
                stack.extend((w, via or name) for w in u.users)
    return None


def _why_apart(graph, c1, c2, kinds) -> str:
    view = _through_view(graph, set(c1.nodes), set(c2.nodes), kinds) or \
        _through_view(graph, set(c2.nodes), set(c1.nodes), kinds)
    if view:
        return f"{c1.id} and {c2.id} meet through a view ({view}): views are group boundaries in fusionlab"
    if c1.reduce_dims and c2.reduce_dims and c1.reduce_dims != c2.reduce_dims:
        return (f"a mixed-order reduction: {c1.id} reduces dims {list(c1.reduce_dims)}, {c2.id} dims "
                f"{list(c2.reduce_dims)} of {list(c2.domain)}; fusionlab keeps one order per kernel")
    if c1.domain != c2.domain:
        return (f"{c1.id} iterates over {list(c1.domain)}, {c2.id} over {list(c2.domain)}: "
                "one fusionlab kernel has one iteration space")
    return f"fusionlab's search kept {c1.id} and {c2.id} apart (fusing them would close a cycle or mix row sets)"


def _row_sets(graph, names, kinds) -> set[tuple]:
    """(input shape, reduced dims) of each reduction among `names`."""
    from ..grouping import node_shape
    from ..ops import reduction_spec

    fx = {n.name: n for n in graph.gm.graph.nodes}
    out = set()
    for n in names:
        if kinds.get(n) == "reduction":
            try:
                spec = reduction_spec(fx[n])
            except (KeyError, AttributeError, TypeError):
                continue
            out.add((node_shape(spec.input), spec.dims))
    return out


def _why_inductor_only(graph, kernel, nodes: set[str], cands, owner_cand, kinds) -> str:
    if kernel.kind == "template" or any(kinds.get(n) == "matmul" for n in kernel.nodes):
        return "a matmul epilogue fusionlab's epilogue search did not make: why_not() says why for the matmul"
    reasons = []
    rows = _row_sets(graph, kernel.nodes, kinds)
    if len(rows) > 1:
        shown = "; ".join(f"{list(s)} over dims {list(d)}" for s, d in sorted(rows, key=str))
        reasons.append(f"a mixed-order reduction ({shown}): a fusionlab kernel reduces one set of rows")
    loose = sorted((n for n in nodes if n not in owner_cand),
                   key=lambda n: (kinds.get(n) != "opaque", list(graph.nodes).index(n)))
    for n in loose:
        why = cands.reason(graph.tag, n)
        if why:
            reasons.append(f"{n}: {why}")
            break
    held = list(dict.fromkeys(owner_cand[n] for n in sorted(nodes, key=list(graph.nodes).index)
                              if n in owner_cand))
    if len(held) >= 2:
        by_id = {c.id: c for c in cands}
        reasons.append(_why_apart(graph, by_id[held[0]], by_id[held[1]], kinds))
    if not reasons and loose:
        reasons.append(f"{loose[0]} is in no candidate")
    return "; ".join(reasons) or "no fusionlab candidate covers these ops"


def inductor_diff(plan: FusionPlan, decisions: InductorDecisions | None = None) -> InductorDiff:
    """``plan``'s candidates against Inductor's kernels for the same capture (compiled here if not given)."""
    if not isinstance(plan, FusionPlan):
        raise TypeError(f"inductor_diff takes a FusionPlan, got {type(plan).__name__}")
    decisions = decisions if decisions is not None else inductor_decisions(plan.capture)
    cands = plan.candidates
    out = InductorDiff(plan.capture.model_name)
    for graph in plan.capture.graphs:
        try:
            gd = decisions.graph(graph.tag)
        except KeyError:
            continue
        if gd.error:
            out.errors.append(f"{graph.tag}: {gd.error}")
            continue
        kinds = {n: i.kind for n, i in graph.nodes.items()}
        owned = _owned(gd, kinds)
        kernels = {k.id: k for k in gd.kernels}
        owner_cand = {n: c.id for c in cands if c.graph == graph.tag for n in c.nodes}
        matched: set[str] = set()
        for c in (c for c in cands if c.graph == graph.tag):
            mine = {n for n in c.nodes if kinds.get(n) in _GROUPED}
            ks = tuple(dict.fromkeys(gd.owner[n] for n in c.nodes if n in mine and n in gd.owner))
            mms = [n for n in c.nodes if kinds.get(n) == "matmul" and gd.owner.get(n) not in (None, *ks)]
            if mms and len(ks) == 1 and owned.get(ks[0]) == mine:  # a matmul epilogue Inductor keeps apart
                lib = gd.owner[mms[0]]
                out.fusionlab_only.append(DiffRow(
                    "fusionlab only", graph.tag, c.id, (lib, *ks), tuple(c.nodes),
                    f"Inductor runs {mms[0]} as its own call ({lib}) and the epilogue as {ks[0]}: "
                    "the product goes to memory and is read back"))
                matched.add(ks[0])
            elif len(ks) == 1 and owned.get(ks[0]) == mine:
                out.both.append(DiffRow("both", graph.tag, c.id, ks, tuple(c.nodes)))
                matched.add(ks[0])
            elif len(ks) == 1:
                extra = len(owned.get(ks[0], ())) - len(mine)
                out.fusionlab_only.append(DiffRow("fusionlab only", graph.tag, c.id, ks, tuple(c.nodes),
                                                  f"Inductor fuses it with {extra} more ops in {ks[0]}"))
            else:
                fns = {kernels[k].function for k in ks if k in kernels and kernels[k].function}
                where = f" ({len(fns)} C++ function{'s' if len(fns) != 1 else ''})" if fns else ""
                unit = "loop nests" if gd.device == "cpu" else "kernels"
                out.fusionlab_only.append(DiffRow("fusionlab only", graph.tag, c.id, ks, tuple(c.nodes),
                                                  f"Inductor computes it in {len(ks)} {unit}{where}"))
        for kid, nodes in owned.items():
            k = kernels.get(kid)
            if k is None or k.kind == LIBRARY or len(nodes) < 2 or kid in matched:
                continue
            if len({owner_cand.get(n) for n in nodes}) == 1 and None not in {owner_cand.get(n) for n in nodes}:
                continue  # a part of one candidate: its row above says how Inductor splits it
            order = list(graph.nodes)
            out.inductor_only.append(DiffRow("inductor only", graph.tag, None, (kid,),
                                             tuple(sorted(nodes, key=order.index)),
                                             _why_inductor_only(graph, k, nodes, cands, owner_cand, kinds)))
    return out


def select_like_inductor(plan: FusionPlan, decisions: InductorDecisions | None = None) -> list[str]:
    """Select every candidate whose ops Inductor computes in one kernel; the ids selected.

    Candidates Inductor splits over several kernels stay unselected; one that would close a
    cycle with those before it is skipped, as ``select_all`` does (``plan.skipped``)."""
    diff = inductor_diff(plan, decisions)
    ids = [r.candidate for r in diff.both + diff.fusionlab_only if len(r.kernels) == 1 and r.candidate]
    if not ids:
        return []
    try:
        plan.select(*ids)
        return ids
    except PlanError:
        done = []
        for cid in ids:
            try:
                plan.select(cid)
                done.append(cid)
            except PlanError as e:
                plan.skipped.append((cid, str(e)))
        return done
