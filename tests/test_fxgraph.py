"""fusionlab.fxgraph: the cycle verdicts and orders we rely on, pinned against torch's own tools."""

from __future__ import annotations

import torch
import torch.fx
from torch.fx.passes.utils.fuser_utils import validate_partition

from fusionlab.fxgraph import contracted_cycle, copy_graph, merge_creates_cycle, stable_sort


def _diamond() -> torch.fx.GraphModule:
    """a -> b -> c, a -> c, plus an independent d: one path through b from a to c."""

    def f(x):
        a = torch.relu(x)
        b = torch.sigmoid(a)
        c = a + b
        d = torch.tanh(x)
        return c, d

    return torch.fx.symbolic_trace(f)


def _nodes(gm):
    return {n.name: n for n in gm.graph.nodes}


def test_merge_cycle_verdicts_match_validate_partition():
    gm = _diamond()
    n = _nodes(gm)
    index = {node: i for i, node in enumerate(gm.graph.nodes)}
    cases = {
        ("relu", "add"): True,  # the path relu -> sigmoid -> add leaves the group and comes back
        ("relu", "sigmoid"): False,
        ("sigmoid", "add"): False,
        ("relu", "tanh"): False,
    }
    for (a, b), cycle in cases.items():
        assert merge_creates_cycle([n[a]], [n[b]], index) is cycle, (a, b)
        assert validate_partition([n[a], n[b]]) is not cycle, (a, b)  # torch agrees


def test_contracted_cycle_names_the_crossed_groups():
    # a1 -> b2 and b1 -> a2: {a1, a2} and {b1, b2} are each fine, together a cycle
    users = {"x": ["a1", "b1"], "a1": ["b2"], "b1": ["a2"], "a2": ["out"], "b2": ["out"], "out": []}
    assert contracted_cycle(users, {"a1": "A", "a2": "A"}) is None
    assert contracted_cycle(users, {"b1": "B", "b2": "B"}) is None
    cycle = contracted_cycle(users, {"a1": "A", "a2": "A", "b1": "B", "b2": "B"})
    assert sorted(cycle) == ["A", "B"]


def test_stable_sort_moves_only_what_it_must():
    gm = _diamond()
    graph = copy_graph(gm.graph)
    n = _nodes(torch.fx.GraphModule(gm, graph))
    # put the add first (before its inputs), as a rewrite can leave a group's readers
    n["x"].append(n["add"])
    assert [x.name for x in graph.nodes][:2] == ["x", "add"]
    out = stable_sort(torch.fx.GraphModule(gm, graph))
    out.graph.lint()
    # the add waits for its inputs, then goes as early as it can: before the tanh it preceded
    assert [x.name for x in out.graph.nodes] == ["x", "relu", "sigmoid", "add", "tanh", "output"]
    x = torch.randn(5)
    assert all(torch.equal(a, b) for a, b in zip(out(x), gm(x)))


def test_copy_graph_keeps_names_and_meta():
    gm = _diamond()
    for node in gm.graph.nodes:
        node.meta["mark"] = node.name
    new = copy_graph(gm.graph)
    assert [n.name for n in new.nodes] == [n.name for n in gm.graph.nodes]
    assert all(n.meta["mark"] == n.name for n in new.nodes if n.op != "output")
    assert next(iter(new.nodes)) is not next(iter(gm.graph.nodes))
