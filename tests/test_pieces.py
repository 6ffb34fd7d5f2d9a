"""Graphs compiled as pieces (fusionlab.executors.pieces) and steps re-planned without a new trace
(FusedStep.replan): the same values as eager, cuts only where no candidate spans, and a toggle
that lowers only the piece holding the group it changed.

Each test that compiles runs against empty caches of its own (tests/conftest.py).
"""

from __future__ import annotations

import copy
import gc
import operator

import pytest
import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx

import fusionlab
from fusionlab import zoo
from fusionlab.capture import default_loss
from fusionlab.executors import InductorGraphExecutor, pieces
from fusionlab.ops import kind_of
from fusionlab.plan import plan_for


def _chain(x, w):
    for _ in range(6):
        y = torch.relu(x @ w) * 2 + 1
        m, i = torch.max(y, dim=1, keepdim=True)  # one op, two outputs (getitems)
        x = torch.tanh(y - m) + i.float()
    return (x.sum(),)


def _graph():
    return make_fx(_chain)(torch.randn(4, 8), torch.randn(8, 8))


def _compute(gm):
    return {n.name for n in gm.graph.nodes if kind_of(n) in ("pointwise", "reduction", "matmul", "opaque")}


def test_cuts_fall_only_where_no_group_spans():
    gm = _graph()
    names = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    groups = [names[3:11], names[20:24]]  # two made-up candidates
    cuts = pieces.cut(gm, groups, _compute(gm), per_piece=5)
    assert len(cuts) >= 3 and sorted(sum(cuts, [])) == sorted(names)  # every node once
    _assert_runnable(gm, sum(cuts, []))
    where = {n: i for i, piece in enumerate(cuts) for n in piece}
    for g in groups:
        assert len({where[n] for n in g}) == 1, g
    for n in gm.graph.nodes:  # a multi-output op and its getitems in one piece
        for u in n.users:
            if u.target is operator.getitem:
                assert where[u.name] == where[n.name]
    # a graph small for its piece size, or one that mutates in place, stays whole
    assert pieces.cut(gm, groups, _compute(gm), per_piece=1000) == [names]


def _assert_runnable(gm, order):
    where = {name: i for i, name in enumerate(order)}
    for n in gm.graph.nodes:
        for x in n.all_input_nodes:
            if n.name in where and x.name in where:
                assert where[x.name] < where[n.name], (x.name, n.name)


def _spread(x, y):
    bias = torch.full((4, 4), 0.5)  # made first, read last
    a = torch.sin(x)
    kx = x.clone()
    b = torch.cos(y) @ y.t()  # unrelated work between the members of each group
    c = torch.exp(a)
    ky = (b + 1).clone()
    return ((c + kx).sum() + (ky * bias).sum(),)


def test_the_cut_order_keeps_each_candidate_together():
    gm = make_fx(_spread)(torch.randn(4, 8), torch.randn(4, 8))
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    names = [n.name for n in nodes]
    by_target = {}
    for n in nodes:
        by_target.setdefault(str(n.target), []).append(n.name)
    sin, exp = by_target["aten.sin.default"][0], by_target["aten.exp.default"][0]
    full, clones = by_target["aten.full.default"][0], by_target["aten.clone.default"]
    mul = by_target["aten.mul.Tensor"][0]
    groups = [[sin, exp], clones, [full, mul]]  # vertical, horizontal, a constant and its reader
    assert all(abs(names.index(g[0]) - names.index(g[-1])) > 1 for g in groups)  # apart in the graph's order
    order = pieces.grouped_order(nodes, groups)
    assert sorted(order) == sorted(names)
    _assert_runnable(gm, order)
    for g in groups:
        assert abs(order.index(g[0]) - order.index(g[-1])) == 1, (g, order)


def test_pieces_run_as_the_whole_graph():
    gm = _graph()
    cuts = pieces.cut(gm, [], _compute(gm), per_piece=4)
    parts = pieces.split(gm, cuts)
    assert len(parts) == len(cuts) > 2
    call = pieces.PiecewiseCall(gm, parts, [lambda args, p=p: p.gm(*args) for p in parts])
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    args = [x, w]
    (got,) = call(args)
    assert args == []  # the boxed convention: the inputs list is the callee's to clear
    torch.testing.assert_close(got, _chain(x, w)[0])
    for p in parts[1:]:  # a later piece reads earlier values through placeholders
        assert p.inputs and all(n.op == "placeholder" for n in p.gm.graph.nodes if n.name in p.inputs)


@pytest.fixture(scope="module")
def block():
    zm = zoo.get("gpt2-block")
    return zm, fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _eager(zm):
    model = copy.deepcopy(zm.model)
    loss = (zm.loss_fn or default_loss)(model(*zm.inputs))
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.mark.usefixtures("empty_caches")
def test_a_toggle_relowers_only_the_piece_it_changed(block, monkeypatch):
    monkeypatch.setattr(pieces, "PIECE_OPS", 12)  # the block's graphs in several pieces
    zm, cap = block
    plan = plan_for(cap, "all")
    ex = InductorGraphExecutor()
    model = copy.deepcopy(zm.model)
    fused = plan.compile(model, executor=ex)
    loss = fused(*zm.inputs)
    loss.backward()
    want_loss, want_grads = _eager(zm)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(_grads(model), want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    graphs = {g.kind: g for g in ex.graphs}
    assert all(len(g.parts) >= 2 for g in graphs.values()), [len(g.parts) for g in graphs.values()]
    assert not any(p.cached for g in graphs.values() for p in g.parts)
    fw_before = graphs["forward"]

    bw = next(c for c in plan.selected if c.graph.startswith("bw"))
    fused.replan(plan.deselect(bw.id))
    model.zero_grad(set_to_none=True)
    loss = fused(*zm.inputs)
    loss.backward()
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(_grads(model), want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    graphs = {g.kind: g for g in ex.graphs}
    assert graphs["forward"] is fw_before  # the forward's groups did not change: its code is kept
    parts = graphs["backward"].parts
    assert sum(not p.cached for p in parts) == 1, [p.cached for p in parts]  # the piece holding `bw`
    assert bw.id not in graphs["backward"].groups
    assert bw.id not in {k.candidate for k in fused.report.used}

    fused.replan(plan.select(bw.id))  # back: every piece served from Inductor's cache
    model.zero_grad(set_to_none=True)
    fused(*zm.inputs).backward()
    assert all(p.cached for p in {g.kind: g for g in ex.graphs}["backward"].parts)
    assert bw.id in {k.candidate for k in fused.report.used}


@pytest.mark.usefixtures("empty_caches")
def test_replan_matches_a_fresh_compile_and_refuses_another_capture(block):
    zm, cap = block
    plan = plan_for(cap, "all")
    ex = InductorGraphExecutor()
    collector_on, compile_graph = [], ex.compile_graph
    ex.compile_graph = lambda *a, **k: (collector_on.append(gc.isenabled()), compile_graph(*a, **k))[1]
    fused = plan.compile(copy.deepcopy(zm.model), executor=ex)
    fused(*zm.inputs).backward()
    fw = next(c for c in plan.selected if c.graph.startswith("fw"))
    fused.replan(plan.deselect(fw.id))
    # every compile ran with the cyclic garbage collector paused (_env.gc_paused), and it is back on
    assert len(collector_on) >= 3 and not any(collector_on) and gc.isenabled()
    fresh = plan.compile(copy.deepcopy(zm.model), executor=InductorGraphExecutor())
    a, b = fused(*zm.inputs), fresh(*zm.inputs)
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    assert {k.candidate for k in fused.report.used} == {k.candidate for k in fresh.report.used}
    assert fw.id not in {k.candidate for k in fused.report.used}
    other = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")
    with pytest.raises(ValueError, match="same capture"):
        fused.replan(other)


@pytest.mark.usefixtures("empty_caches")
@pytest.mark.parametrize("strides_hold", [True, False])
def test_pieces_match_eager_and_a_stride_mismatch_compiles_the_graph_whole(monkeypatch, strides_hold):
    from fusionlab.executors import whole_graph

    monkeypatch.setattr(pieces, "PIECE_OPS", 3)
    if not strides_hold:  # as if Inductor laid out a piece's output otherwise than the graph says
        def mismatch(compiled, piece, vals):
            raise whole_graph.PieceStrideError("test")

        monkeypatch.setattr(whole_graph, "_check_strides", mismatch)
    zm = zoo.get("mlp")
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")
    ex = InductorGraphExecutor()
    model = copy.deepcopy(zm.model)
    loss = plan.compile(model, executor=ex)(*zm.inputs)
    loss.backward()
    want_loss, want_grads = _eager(zm)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(_grads(model), want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    parts = [len(g.parts) for g in ex.graphs]
    assert (min(parts) > 1) if strides_hold else parts == [1] * len(parts), parts
