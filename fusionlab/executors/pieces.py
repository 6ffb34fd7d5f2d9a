"""A graph compiled as a few pieces, so that a toggle lowers only the piece it changed.

Under the fusion policy nothing is fused across a group boundary, and every value a group
reads from outside it, or that is read outside its group, is stored in memory anyway. So a
forward or backward graph can be cut, between two ops, anywhere no candidate spans, and each
piece compiled on its own, at no cost in memory traffic: the same loop nests, in the same
order, one C++ function each.

The cuts depend on the graph and on *every* candidate in it (selected or not), never on the
plan: after a toggle the same pieces come out, each piece whose groups did not change is the
same compile (the same graph and the same policy: Inductor's FX graph cache serves it, and a
re-planned step keeps it), and only the piece holding the toggled group is lowered again.
Inductor lowers and generates code for a graph in time that grows with its size, so a toggle
of one group in a 2-layer GPT-2's backward costs the piece around it, not the graph.

:func:`cut` chooses the pieces; :class:`PiecewiseCall` runs them in order, as one boxed
callable (AOTAutograd's calling convention: a list of inputs, which it clears), dropping each
value after its last reader.
"""

from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass, field

import torch
import torch.fx

# ops that compute (pointwise, reductions, matmuls, ...) per piece, about; $FUSIONLAB_PIECE_OPS
# overrides it (a large number: every graph whole, as one compile)
PIECE_OPS = int(os.environ.get("FUSIONLAB_PIECE_OPS", "16"))


@dataclass
class Piece:
    """Consecutive nodes of a graph, as a graph of their own (built when first asked for: a
    piece compiled before needs none)."""

    inputs: list[str]  # the values it reads (graph inputs or earlier pieces' outputs), in placeholder order
    outputs: list[str]  # the values it computes that a later piece or the graph's output reads
    nodes: list[str]  # the nodes it computes (names as in the whole graph)
    whole: torch.fx.GraphModule = field(repr=False, default=None)  # the graph it is cut from

    @functools.cached_property
    def gm(self) -> torch.fx.GraphModule:
        by_name = {n.name: n for n in self.whole.graph.nodes}
        g = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for name in self.inputs:
            x = by_name[name]
            env[x] = g.placeholder(x.name)
            env[x].meta = {k: x.meta[k] for k in ("val", "tensor_meta") if k in x.meta}
        for name in self.nodes:
            env[by_name[name]] = g.node_copy(by_name[name], env.__getitem__)
        g.output(tuple(env[by_name[name]] for name in self.outputs))
        return torch.fx.GraphModule(self.whole, g)


def _spans(order: dict[str, int], nodes: list[torch.fx.Node], groups) -> list[tuple[int, int]]:
    """Index ranges a cut must not fall inside: each candidate, each op with its getitems."""
    out = []
    for members in groups:
        idx = [order[n] for n in members if n in order]
        if idx:
            out.append((min(idx), max(idx)))
    for n in nodes:
        items = [order[u.name] for u in n.users if u.target is operator.getitem and u.name in order]
        if items:
            out.append((order[n.name], max(items)))
    return out


def cut(gm: torch.fx.GraphModule, groups, compute: set[str], per_piece: int | None = None) -> list[list[str]]:
    """The graph's compute-and-view nodes in pieces of about `per_piece` computing ops
    (default :data:`PIECE_OPS`).

    `groups`: the node names of every candidate of the graph; no piece boundary falls
    between a candidate's first and last node (in graph order), nor between a multi-output
    op and its getitems. One piece (the graph whole) when the graph is small, when it mutates
    a value in place (the mutation and every read around it stay in one compile), or when its
    output is not a tuple of values (AOTAutograd's graphs always return one).
    """
    per_piece = per_piece or PIECE_OPS
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    names = [n.name for n in nodes]
    total = sum(1 for n in names if n in compute)
    (result,) = gm.graph.output_node().args
    if total < 2 * per_piece or any(_mutates(n) for n in nodes) or not isinstance(result, (tuple, list)):
        return [names]
    names = grouped_order(nodes, groups)
    order = {n: i for i, n in enumerate(names)}
    blocked = [False] * (len(names) + 1)  # blocked[i]: no cut between node i-1 and node i
    for lo, hi in _spans(order, nodes, groups):
        for i in range(lo + 1, hi + 1):
            blocked[i] = True
    pieces, start, count = [], 0, 0
    for i, name in enumerate(names):
        # cut before node i once the piece is full, unless what is left would be a small piece
        if count >= per_piece and not blocked[i] and total - count >= per_piece // 2:
            pieces.append(names[start:i])
            start, total, count = i, total - count, 0
        count += name in compute
    pieces.append(names[start:])
    return pieces


def grouped_order(nodes: list[torch.fx.Node], groups) -> list[str]:
    """The nodes' names in an order that keeps each candidate's members close together.

    A graph's order is the order of the Python that was traced, so a candidate's members can lie
    far apart with unrelated ops between them (an embedding's layer norm around the attention
    mask's construction; two copies, for keys and values, around the attention scores), and no
    cut may fall in that span. For each candidate, in order: each member moves down to just
    before its first reader if that is later (a constant made early and read late), then each
    member after the first moves up to just after its last input or the member before it,
    whichever is later; last, every getitem moves up to just after its op. Nodes move only past
    nodes they neither read nor are read by, so the order is still one the graph can run in (or
    the graph's own order is returned)."""
    names = [n.name for n in nodes]
    by_name = {n.name: n for n in nodes}
    ins = {n.name: [x.name for x in n.all_input_nodes if x.name in by_name] for n in nodes}
    outs = {n.name: [u.name for u in n.users if u.name in by_name] for n in nodes}
    pos = {name: i for i, name in enumerate(names)}  # kept up to date by `move`

    def move(name: str, to: int) -> None:
        i = pos[name]
        names.insert(to, names.pop(i))
        for k in range(min(i, to), max(i, to) + 1):
            pos[names[k]] = k

    for members in groups:
        ms = [m for m in members if m in by_name]
        for m in sorted(ms, key=pos.__getitem__, reverse=True):  # down, toward the first reader
            first_reader = min((pos[u] for u in outs[m]), default=-1)
            if first_reader - 1 > pos[m]:
                move(m, first_reader - 1)
        ms.sort(key=pos.__getitem__)
        for prev, m in zip(ms, ms[1:]):  # up, toward the member before
            at = max([pos[prev]] + [pos[x] for x in ins[m]]) + 1
            if at < pos[m]:
                move(m, at)
    for n in nodes:
        if n.target is operator.getitem and ins[n.name]:
            at = pos[ins[n.name][0]] + 1
            if at < pos[n.name]:
                move(n.name, at)
    if any(pos[x] > pos[name] for name in names for x in ins[name]):  # not expected; the graph's order then
        return [n.name for n in nodes]
    return names


def _mutates(n: torch.fx.Node) -> bool:
    schema = getattr(n.target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


def split(gm: torch.fx.GraphModule, pieces: list[list[str]]) -> list[Piece]:
    """Each list of node names as a piece reading what it needs by placeholder."""
    by_name = {n.name: n for n in gm.graph.nodes}
    piece_of = {name: i for i, names in enumerate(pieces) for name in names}
    output = gm.graph.output_node()
    out = []
    for i, names in enumerate(pieces):
        mine, inputs = set(names), []
        for name in names:
            for x in by_name[name].all_input_nodes:  # a graph input or an earlier piece's value
                if x.name not in mine and x.name not in inputs:
                    inputs.append(x.name)
        outputs = [name for name in names
                   if any(u is output or piece_of.get(u.name, i) > i for u in by_name[name].users)]
        out.append(Piece(inputs, outputs, list(names), gm))
    return out


class PiecewiseCall:
    """The pieces' compiled callables run in order as the whole graph: ``call(list_of_inputs)``."""

    def __init__(self, gm: torch.fx.GraphModule, pieces: list[Piece], fns: list):
        self._boxed_call = True  # on the instance: wrappers (torch._dynamo.disable) copy its __dict__
        slot: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                slot[n.name] = len(slot)
        self.n_inputs = len(slot)
        for p in pieces:
            for name in p.outputs:
                slot[name] = len(slot)
        self.size = len(slot)
        (result,) = gm.graph.output_node().args
        self.results = [(slot[r.name], None) if isinstance(r, torch.fx.Node) else (None, r) for r in result]
        keep = {s for s, _ in self.results if s is not None}
        last: dict[int, int] = {}  # value slot -> the last piece reading it
        for i, p in enumerate(pieces):
            for name in p.inputs:
                last[slot[name]] = i
        self.steps = [(fn, [slot[x] for x in p.inputs], [slot[x] for x in p.outputs],
                       [s for s, j in last.items() if j == i and s not in keep])
                      for i, (p, fn) in enumerate(zip(pieces, fns))]

    def __call__(self, args: list):
        values = list(args) + [None] * (self.size - self.n_inputs)
        args.clear()
        for fn, reads, writes, done in self.steps:
            outs = fn([values[s] for s in reads])
            for s, v in zip(writes, outs):
                values[s] = v
            for s in done:
                values[s] = None
        return [values[s] if s is not None else const for s, const in self.results]
