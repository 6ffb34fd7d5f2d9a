"""Tests for fusionlab.plan: selecting candidates, refusing invalid selections, the summary."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import fusionlab
from fusionlab import ops
from fusionlab.candidates import Candidate, Candidates, find_candidates
from fusionlab.plan import FusionPlan, PlanError, PlanSummary, plan_for


@pytest.fixture
def gpt2(zoo_candidates):
    cands = zoo_candidates("gpt2-block")
    return cands.capture, cands


@pytest.fixture
def plan(zoo_plan):
    """gpt2-block's plan, nothing selected; each test gets its own."""
    return zoo_plan("gpt2-block", select=None)


def _ids(plan: FusionPlan) -> list[str]:
    return [c.id for c in plan.selected]


def _with(cands, component: str) -> list[str]:
    return [c.id for c in cands if component in c.pattern.split("+")]


def _nbytes(node) -> int:
    val = node.meta.get("val")
    vals = val if isinstance(val, (list, tuple)) else [val]
    return sum(v.numel() * v.dtype.itemsize for v in vals if isinstance(v, torch.Tensor))


def _check_summary(plan: FusionPlan) -> PlanSummary:
    """The summary's numbers, recomputed from the graphs and the selection."""
    s = plan.summary()
    launching = [i for g in plan.capture.graphs for i in g.nodes.values() if ops.launches_kernel(i.kind)]
    assert s.kernels_before == len(launching)
    # bytes: each launching node reads each of its inputs once and writes its result
    assert s.bytes_before == sum(
        sum(_nbytes(a) for a in dict.fromkeys(n.all_input_nodes)) + _nbytes(n)
        for g in plan.capture.graphs for n in g.gm.graph.nodes if ops.launches_kernel(g.nodes[n.name].kind)
    )
    assert s.matmul_kernels == sum(i.kind == "matmul" for i in launching)
    sel = plan.selected
    assert s.selected == len(sel) and s.candidates == len(plan.candidates)
    assert s.kernels_after == s.kernels_before - sum(c.kernels_unfused - 1 for c in sel)
    assert s.bytes_after == s.bytes_before - sum(c.bytes_saved for c in sel)
    assert s.nonmatmul_before == s.kernels_before - s.matmul_kernels
    assert s.nonmatmul_after == s.kernels_after - s.matmul_kernels
    assert sum(v[0] for v in s.per_graph.values()) == s.kernels_before
    assert sum(v[1] for v in s.per_graph.values()) == s.kernels_after
    assert sum(v[2] for v in s.per_graph.values()) == s.bytes_before
    assert sum(v[3] for v in s.per_graph.values()) == s.bytes_after
    assert list(s.per_graph) == [g.tag for g in plan.capture.graphs]
    return s


# --------------------------------------------------------------------------- selecting


def test_new_plan_selects_nothing(plan):
    assert plan.selected == []
    s = _check_summary(plan)
    assert s.kernels_after == s.kernels_before and s.bytes_after == s.bytes_before
    # gpt2-block: 4 linears + 2 attention bmm forward, twice as many backward
    assert s.matmul_kernels == 18
    assert s.nonmatmul_before > s.matmul_kernels


def test_select_by_pattern(plan, gpt2):
    _, cands = gpt2
    assert plan.select("softmax") is plan
    assert _ids(plan) == _with(cands, "softmax") == ["fw0.masked_fill+softmax.0"]
    plan.select("layer_norm", "gelu_backward")
    assert _ids(plan) == [c.id for c in cands if c.id in
                          set(_with(cands, "softmax") + _with(cands, "layer_norm")
                              + _with(cands, "gelu_backward"))]
    assert set(_ids(plan)) == {"fw0.masked_fill+softmax.0", "fw0.layer_norm.0",
                               "fw0.add+layer_norm.0", "bw0.matmul+gelu_backward.0"}
    _check_summary(plan)


def test_select_by_full_pattern_id_and_candidate(plan, gpt2):
    _, cands = gpt2
    plan.select("add+layer_norm")
    assert _ids(plan) == ["fw0.add+layer_norm.0"]
    plan.select("fw0.matmul+bias+gelu.0", cands.by_id("bw0.softmax_backward+masked_fill.0"))
    assert set(_ids(plan)) == {"fw0.add+layer_norm.0", "fw0.matmul+bias+gelu.0",
                               "bw0.softmax_backward+masked_fill.0"}
    assert plan.is_selected("fw0.matmul+bias+gelu.0") and plan.is_selected(cands.by_id("fw0.matmul+bias+gelu.0"))
    assert not plan.is_selected("fw0.layer_norm.0")
    plan.select("fw0.matmul+bias+gelu.0")  # selecting again changes nothing
    assert len(plan.selected) == 3


def test_deselect(plan, gpt2):
    _, cands = gpt2
    plan.select_all()
    assert _ids(plan) == [c.id for c in cands]
    plan.deselect("layer_norm_backward")
    assert not set(_with(cands, "layer_norm_backward")) & set(_ids(plan))
    plan.deselect("fw0.matmul+bias+gelu.0")
    assert "fw0.matmul+bias+gelu.0" not in _ids(plan)
    assert len(plan.selected) == len(cands) - len(_with(cands, "layer_norm_backward")) - 1
    _check_summary(plan)
    plan.deselect("fw0.matmul+bias+gelu.0")  # deselecting an unselected candidate is fine
    plan.clear()
    assert plan.selected == []


def test_select_all_summary(plan, gpt2):
    _, cands = gpt2
    plan.select_all()
    s = _check_summary(plan)
    assert s.selected == len(cands)
    assert s.kernels_after < s.kernels_before and s.bytes_after < s.bytes_before
    text = str(s)
    assert f"{len(cands)} of {len(cands)} candidates selected" in text
    assert f"{s.kernels_before} -> {s.kernels_after}" in text and "modeled" in text
    assert "<pre>" in s._repr_html_()


def test_summary_is_consistent_for_any_selection(plan, gpt2):
    _, cands = gpt2
    rng = random.Random(0)
    for _ in range(20):
        picked = [c.id for c in cands if rng.random() < 0.5]
        plan.clear()
        if picked:
            plan.select(*picked)
        assert set(_ids(plan)) == set(picked)
        _check_summary(plan)


def test_plan_for(gpt2):
    cap, _ = gpt2
    assert len(plan_for(cap).selected) == len(find_candidates(cap))
    assert _ids(plan_for(cap, "gelu")) == ["fw0.matmul+bias+gelu.0"]
    assert _ids(plan_for(cap, None)) == []


def test_repr_marks_the_selection(plan):
    plan.select("gelu")
    text = repr(plan)
    assert text.startswith("FusionPlan(GPT2Block: 1/")
    assert "[x] fw0.matmul+bias+gelu.0" in text and "[ ] fw0.layer_norm.0" in text
    html = plan._repr_html_()
    assert "fw0.matmul+bias+gelu.0" in html and "&#9745;" in html


# --------------------------------------------------------------------------- refusing


def test_unknown_pattern_names_the_patterns(plan, gpt2):
    _, cands = gpt2
    plan.select("gelu")
    with pytest.raises(PlanError) as e:
        plan.select("softmax", "flash_attention")
    msg = str(e.value)
    assert "'flash_attention'" in msg
    for pattern in ("gelu", "masked_fill+softmax", "layer_norm"):
        assert pattern in msg
    assert _ids(plan) == ["fw0.matmul+bias+gelu.0"]  # nothing changed, not even the valid half
    with pytest.raises(PlanError, match="no candidate matches 'fw0.gelu.7'"):
        plan.deselect("fw0.gelu.7")
    assert _ids(plan) == ["fw0.matmul+bias+gelu.0"]


def test_empty_and_wrong_selections(plan, gpt2):
    with pytest.raises(PlanError, match="empty selection"):
        plan.select()
    with pytest.raises(PlanError, match="empty selection"):
        plan.deselect()
    with pytest.raises(PlanError, match="not int"):
        plan.select(3)
    stranger = Candidate("fw9.gelu.0", "fw9", "gelu", ("x",), (), (), (4,), (), 2, 10, 5)
    with pytest.raises(PlanError, match="does not belong"):
        plan.select(stranger)
    assert plan.selected == []


def test_plan_needs_a_capture():
    with pytest.raises(TypeError, match="fusionlab.capture"):
        FusionPlan(nn.Linear(2, 2))


def test_plan_without_candidates_says_so():
    cap = fusionlab.capture(nn.Linear(4, 4), torch.randn(2, 4), train=False)
    plan = FusionPlan(cap)
    assert plan.candidates == []
    with pytest.raises(PlanError, match="patterns here: none"):
        plan.select("softmax")
    plan.select_all()
    s = _check_summary(plan)
    assert s.kernels_after == s.kernels_before


# --------------------------------------------------------------------------- crafted selections


def _crossed(x, y):
    """a1 -> b2 and b1 -> a2: {a1, a2} and {b1, b2} are each fine, together a cycle."""
    a1 = x.exp()
    b1 = y.exp()
    b2 = a1.sin()
    a2 = b1.cos()
    return b2 + a2 + (a2 * b2).tanh().tanh()


@pytest.fixture(scope="module")
def crossed():
    cap = fusionlab.capture(_crossed, torch.randn(8), torch.randn(8), train=False)
    g = cap.graph("inf0")
    by_op = {}
    for n in g.gm.graph.nodes:
        by_op.setdefault(g.nodes[n.name].op, []).append(n)
    (sin,) = by_op["aten.sin.default"]
    (cos,) = by_op["aten.cos.default"]
    a1, b1 = sin.args[0], cos.args[0]
    t1, t2 = by_op["aten.tanh.default"]
    names = {"a1": a1.name, "b1": b1.name, "b2": sin.name, "a2": cos.name, "t1": t1.name,
             "t2": t2.name, "mul": t1.args[0].name}
    return cap, names


def _cand(cid: str, nodes: tuple[str, ...], graph: str = "inf0") -> Candidate:
    return Candidate(
        id=cid, graph=graph, pattern=cid.split(".")[1], nodes=nodes, inputs=(), outputs=nodes,
        domain=(8,), reduce_dims=(), kernels_unfused=len(nodes), bytes_unfused=100 * len(nodes),
        bytes_fused=60,
    )


def test_cycle_forming_selection_is_refused(crossed):
    cap, n = crossed
    a = _cand("inf0.crossed_a.0", (n["a1"], n["a2"]))
    b = _cand("inf0.crossed_b.0", (n["b1"], n["b2"]))
    plan = FusionPlan(cap, Candidates([a, b], capture=cap))
    plan.select("crossed_a")
    before = plan.summary()
    assert before.kernels_after == before.kernels_before - 1
    with pytest.raises(PlanError) as e:
        plan.select("crossed_b")
    msg = str(e.value)
    assert "cycle" in msg and a.id in msg and b.id in msg and "inf0" in msg
    assert _ids(plan) == [a.id]  # unchanged
    assert plan.summary().kernels_after == before.kernels_after
    # either alone is fine; select_all takes the first and says why it skipped the second
    plan.clear().select("crossed_b")
    plan.clear().select_all()
    assert _ids(plan) == [a.id]
    assert [cid for cid, _ in plan.skipped] == [b.id] and "cycle" in plan.skipped[0][1]
    plan.clear()
    with pytest.raises(PlanError, match="cycle"):
        plan.select(a.id, b.id)
    assert plan.selected == []


def test_non_convex_group_is_refused(crossed):
    cap, n = crossed
    # mul -> t1 -> t2 with t1 left out: the group needs t1's result, which needs the group
    hole = _cand("inf0.hole.0", (n["mul"], n["t2"]))
    fine = _cand("inf0.chain.0", (n["mul"], n["t1"], n["t2"]))
    plan = FusionPlan(cap, Candidates([hole, fine], capture=cap))
    with pytest.raises(PlanError, match="cycle"):
        plan.select("hole")
    assert plan.selected == []
    plan.select("chain")
    assert _ids(plan) == [fine.id]


def test_overlapping_selection_is_refused(crossed):
    cap, n = crossed
    first = _cand("inf0.first.0", (n["mul"], n["t1"]))
    second = _cand("inf0.second.0", (n["t1"], n["t2"]))
    plan = FusionPlan(cap, Candidates([first, second], capture=cap))
    plan.select("first")
    with pytest.raises(PlanError) as e:
        plan.select("second")
    msg = str(e.value)
    assert "overlap" in msg and first.id in msg and second.id in msg and n["t1"] in msg
    assert _ids(plan) == [first.id]
    plan.deselect("first").select("second")
    assert _ids(plan) == [second.id]
