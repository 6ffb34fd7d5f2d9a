"""Fusion rules kept with a plan (never_fuse, always_fuse) and plan.to_code() round trips."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from test_backend import run_steps
from torch import nn

import fusionlab as fl
from fusionlab import zoo
from fusionlab.patterns import NodeView
from fusionlab.plan import PlanError
from fusionlab.rules import GraphRules, Rule


def _sides(plan, rule):
    out = {}
    for g in plan.capture.graphs:
        gr = GraphRules(g, NodeView(g.nodes, g.kind == "backward"), [rule])
        a, b = gr.sides(rule)
        out[g.tag] = ({n.name for n in a}, {n.name for n in b})
    return out


def test_never_fuse_splits_and_the_fused_step_equals_eager(zoo_model, zoo_plan):
    zm = zoo_model("gpt2-block")
    plan = zoo_plan("gpt2-block", select=None)
    before = {c.id for c in plan.candidates}
    assert "fw0.add+layer_norm.0" in before
    plan.never_fuse("add", "layer_norm").select_all()
    rule = Rule("never", ("add", "layer_norm"))
    assert plan.rules == [rule]
    sides = _sides(plan, rule)
    assert sides["fw0"][0] and sides["fw0"][1]
    for c in plan.selected:
        a, b = sides[c.graph]
        assert not (a & set(c.nodes) and b & set(c.nodes)), c.id
    # the residual add left ln_2's candidate; the eps add inside the layer norm did not
    assert not any("add+layer_norm" in c.pattern for c in plan.candidates)
    ln2 = next(c for c in plan.candidates if c.graph == "fw0" and c.module == "ln_2")
    assert ln2.pattern == "layer_norm" and "aten.add.Tensor" in ln2.ops
    split = dict(plan.skipped)
    assert "split by never_fuse('add', 'layer_norm')" in split["fw0.add+layer_norm.0"]
    # the residual add now runs unfused or as the epilogue of the matmul before it
    assert re.search(r"runs unfused|into fw0\.matmul\+", split["fw0.add+layer_norm.0"])
    text = str(plan.summary())
    assert "rule: never_fuse('add', 'layer_norm')" in text and "skipped fw0.add+layer_norm.0: split" in text
    assert "rule: never_fuse" in repr(plan)
    fused = plan.compile(copy.deepcopy(zm.model))
    run_steps(zm, fused, copy.deepcopy(zm.model), "adamw")
    assert len(fused.report.used) == len(plan.selected), str(fused.report)


def test_rules_keep_unaffected_selections_and_can_be_removed(zoo_plan):
    plan = zoo_plan("gpt2-block", select=None).select("softmax", "fw0.add+layer_norm.0")
    plan.never_fuse("add", "layer_norm")
    assert [c.id for c in plan.selected] == ["fw0.masked_fill+softmax.0"]  # the split one is dropped
    plan.remove_rule("never_fuse('add', 'layer_norm')")
    assert plan.rules == [] and "fw0.add+layer_norm.0" in {c.id for c in plan.candidates}
    with pytest.raises(PlanError, match="no rule"):
        plan.remove_rule("never_fuse('add', 'gelu')")


def test_rules_refused_with_the_reason(zoo_plan):
    plan = zoo_plan("gpt2-block", select=None)
    with pytest.raises(PlanError, match="two iteration domains"):
        plan.always_fuse("ln_1", "mlp.act")
    with pytest.raises(PlanError, match="cycle"):
        plan.always_fuse("ln_1", "ln_2")  # attention's matmuls sit between them
    plan.always_fuse("masked_fill", "softmax")
    with pytest.raises(PlanError, match="never_fuse.*is refused, an always_fuse rule needs those merges"):
        plan.never_fuse("masked_fill", "amax")  # would split what the always_fuse rule joins
    assert [str(r) for r in plan.rules] == ["always_fuse('masked_fill', 'softmax')"]
    plan.remove_rule("always_fuse('masked_fill', 'softmax')")
    with pytest.raises(PlanError, match="names no op, module or pattern"):
        plan.never_fuse("add", "no_such_thing")
    with pytest.raises(PlanError, match="takes at least 2 names"):
        plan.always_fuse("add")
    assert plan.rules == []


class TwoChains(nn.Module):
    """Two pointwise chains over one shape that read no common tensor: the search keeps them apart."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(6, 40))
        self.b = nn.Parameter(torch.randn(6, 40))
        self.w = nn.Parameter(torch.randn(40, 8))

    def forward(self, x, y):
        return ((x * self.a).sin() @ self.w).sum() + ((y + self.b).cos() @ self.w).sum()


def test_always_fuse_makes_one_candidate_that_checks_and_runs():
    torch.manual_seed(0)
    model, x, y = TwoChains(), torch.randn(6, 40), torch.randn(6, 40)
    cap = fl.capture(model, x, y)
    plan = fl.FusionPlan(cap)
    assert not any({"aten.sin.default", "aten.cos.default"} <= set(c.ops) for c in plan.candidates
                   if c.graph == "fw0")
    plan.always_fuse("sin", "cos").select_all()
    (both,) = [c for c in plan.selected if {"aten.sin.default", "aten.cos.default"} <= set(c.ops)
               and c.graph == "fw0"]
    assert both.graph == "fw0" and len(both.outputs) >= 2
    kernel = next(k for k in plan.kernels() if k.source.candidate_id == both.id)
    res = kernel.check()
    assert res.ok, res
    fused = plan.compile(copy.deepcopy(model))
    loss = fused(x, y)
    expected = model(x, y)
    assert abs(loss.item() - expected.item()) <= 1e-5 * abs(expected.item())
    assert "always_fuse('sin', 'cos')" in plan.to_code()


def _rebuild(code: str, cap):
    ns = {"capture": cap}
    exec(code, ns)  # noqa: S102 - the snippet under test
    return ns["plan"]


def test_to_code_round_trips_on_new_shapes(zoo_plan):
    plan = zoo_plan("gpt2-block", select=None)
    plan.never_fuse("add", "layer_norm").select("softmax", "fw0:layer_norm@ln_1", "bw0.layer_norm_backward.0")
    code = plan.to_code()
    assert "plan.never_fuse('add', 'layer_norm')" in code and "'fw0:layer_norm@ln_1'" in code
    assert not any(f".{i}'" in code for i in range(3))  # keys, not ordinal ids
    zm3 = zoo.get("gpt2-block", batch=3)
    cap3 = fl.capture(zm3.model, *zm3.inputs, loss_fn=zm3.loss_fn)
    again = _rebuild(code, cap3)
    assert again.capture is cap3 and again.rules == plan.rules
    assert [c.key for c in again.selected] == [c.key for c in plan.selected]
    assert [c.id for c in again.selected] == [c.id for c in plan.selected]
    assert again.to_code() == code
    # select_all plans say so
    plan.select_all()
    code = plan.to_code()
    assert code.rstrip().endswith("plan.select_all()")
    assert [c.key for c in _rebuild(code, cap3).selected] == [c.key for c in plan.selected]


def test_to_code_uses_an_ordinal_only_where_keys_repeat(zoo_capture):
    cap = zoo_capture("mlp")
    plan = fl.FusionPlan(cap).select("fw0.nll_loss.1")
    code = plan.to_code()
    assert "'fw0:nll_loss@#1'" in code
    zm = zoo.get("mlp", batch=16)
    again = _rebuild(code, fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))
    assert [c.id for c in again.selected] == ["fw0.nll_loss.1"]
