"""The pattern registry: built-in and user patterns, names that agree across layers.

A user pattern is defined inside the tests that use it and unregistered after, so no other
test (nor the session's shared candidates) sees it.
"""

from __future__ import annotations

import copy
import re
from collections import Counter

import pytest
import torch
from torch import nn

import fusionlab as fl
from fusionlab.patterns import PatternError, get


def _rms_silu(x, w):
    return torch.nn.functional.silu(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)


class RMSNormSiLUHead(nn.Module):
    """A hand-written RMSNorm, SiLU, then a scale and shift the greedy search joins to them."""

    def __init__(self, n: int = 48):
        super().__init__()
        self.w = nn.Parameter(torch.rand(n) + 0.5)
        self.proj = nn.Linear(n, n)

    def forward(self, x):
        h = self.proj(x)
        y = torch.nn.functional.silu(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w)
        return (y * 3.0 + 1.0).tanh()


@pytest.fixture
def rmsnorm_silu():
    """The user pattern of the issue, registered for one test."""

    @fl.pattern("rmsnorm_silu", inputs=[(8, 64), (64,)])
    def example(x, w):
        """RMSNorm then SiLU: the normalised row stays in registers for the activation."""
        return _rms_silu(x, w)

    yield example
    fl.unregister("rmsnorm_silu")


# --------------------------------------------------------------------------- the registry


def test_builtins_are_listed_with_explanations():
    listed = fl.list_patterns()
    names = [p.name for p in listed]
    for name in ("softmax", "log_softmax", "layer_norm", "rms_norm", "gelu", "bias", "nll_loss",
                 "batch_norm", "softmax_backward", "layer_norm_backward", "matmul"):
        assert name in names, name
    assert all(p.builtin and len(p.explain) > 40 for p in listed)
    assert "memory" in get("softmax").explain
    assert get("matmul").anchor == "matmul"  # the hook the matmul-epilogue search names its groups by
    text = repr(listed)
    assert "softmax" in text and "user first" in text
    assert fl.list_patterns(user_only=True) == []


def test_user_pattern_listed_and_unregistered(rmsnorm_silu):
    p = get("rmsnorm_silu")
    assert rmsnorm_silu is p and not p.builtin and p.groups
    assert "registers" in p.explain  # the docstring is the explanation
    # the traced ATen ops: silu is x / (1 + exp(-x)) after Inductor's decompositions
    assert p.source.startswith("traced from example(8x64, 64): pow.Tensor_Scalar, mean.dim")
    assert {"rsqrt.default", "exp.default", "div.Tensor"} <= set(p.source.split(": ")[1].split(", "))
    assert [q.name for q in fl.list_patterns(user_only=True)] == ["rmsnorm_silu"]
    assert fl.list_patterns()[0].name == "rmsnorm_silu"  # asked before the built-ins


def test_registering_twice_is_refused_unless_replace(rmsnorm_silu):
    with pytest.raises(PatternError, match="already registered.*unregister"):
        fl.pattern("rmsnorm_silu", inputs=[(8, 64), (64,)])(_rms_silu)
    again = fl.pattern("rmsnorm_silu", inputs=[(4, 16), (16,)], replace=True)(_rms_silu)
    assert get("rmsnorm_silu") is again
    with pytest.raises(PatternError, match="built in"):
        fl.pattern("softmax", match=lambda n: None)
    with pytest.raises(PatternError, match="built in"):
        fl.unregister("softmax")
    assert fl.unregister("no_such_pattern") is False


@pytest.mark.parametrize("bad, message", [
    (lambda x: x.sum(0, keepdim=True) * x.sum(1, keepdim=True), "can never be one kernel: two iteration domains"),
    (lambda x: x @ x, "matmul"),
    (lambda x: x.sin(), "at least two ops"),
    (lambda x: (x.sin() * 2, x.cos() + 1), "2 results"),
    (lambda x: x.nonexistent(), "could not be traced|failed on its example inputs"),
])
def test_bad_example_functions_are_refused_clearly(bad, message):
    with pytest.raises(PatternError, match=message):
        fl.pattern("bad_example", inputs=[(8, 8)])(bad)
    assert all(p.name != "bad_example" for p in fl.list_patterns())


def test_bad_names_and_matchers_are_refused():
    with pytest.raises(PatternError, match="letters, digits"):
        fl.pattern("rms+silu", match=lambda n: None)
    with pytest.raises(PatternError, match="match must be a function"):
        fl.pattern("not_callable", match=3)
    with pytest.raises(PatternError, match="shape"):
        fl.pattern("bad_inputs", inputs=["x"])(lambda x: x.sin().cos())


def test_matcher_function_pattern_names_candidates(zoo_capture):
    """``pattern(name, match=fn)``: fn(node, view) returns an occurrence's nodes."""
    cap = zoo_capture("mlp")

    def erf_gelu(node, view):  # the erf node of a GELU and its neighbours in the gelu module
        if node.target is not torch.ops.aten.erf.default:
            return None
        return [n for n in node.graph.nodes if view.module(n) == view.module(node) and n.op == "call_function"
                and view.kind(n) == "pointwise"]

    fl.pattern("erf_gelu", match=erf_gelu, explain="GELU in its erf form, named by a matcher.")
    try:
        cands = fl.find_candidates(cap)
        (c,) = [c for c in cands if c.graph == "fw0" and "erf_gelu" in c.pattern.split("+")]
        assert "aten.erf.default" in c.ops and c.module == "act2"
    finally:
        fl.unregister("erf_gelu")
    assert not any("erf_gelu" in c.pattern for c in fl.find_candidates(cap))


# --------------------------------------------------------------------------- a user pattern, end to end


def test_user_pattern_is_found_named_generated_checked_and_used(rmsnorm_silu):
    torch.manual_seed(0)
    model, x = RMSNormSiLUHead(), torch.randn(4, 8, 48)
    fl.unregister("rmsnorm_silu")
    plain = fl.find_candidates(fl.capture(model, x))
    fl.pattern("rmsnorm_silu", inputs=[(8, 64), (64,)])(_rms_silu)
    cap = fl.capture(model, x)
    cands = fl.find_candidates(cap)
    (c,) = [c for c in cands if c.pattern == "rmsnorm_silu"]
    assert c.id == "fw0.rmsnorm_silu.0" and c.reduce_dims == (2,)
    assert {"aten.pow.Tensor_Scalar", "aten.mean.dim", "aten.rsqrt.default", "aten.exp.default"} <= set(c.ops)
    # the pattern's nodes exactly: the greedy search alone grows the scale, shift and tanh into the group
    assert "aten.tanh.default" not in c.ops
    (before,) = [d for d in plain if d.graph == "fw0" and set(c.nodes) <= set(d.nodes)]
    assert set(before.nodes) > set(c.nodes) and "rmsnorm_silu" not in before.pattern
    assert any("aten.tanh.default" in d.ops for d in cands if d.graph == "fw0" and d is not c)
    # why_not and the explorer read the same names
    assert fl.FusionPlan(cap, cands).select("rmsnorm_silu").selected == [c]
    plan = fl.FusionPlan(cap, cands).select("rmsnorm_silu")
    (kernel,) = plan.kernels()
    assert "rmsnorm_silu" in kernel.source.source
    res = kernel.check()
    assert res.ok, res
    fused = plan.compile(copy.deepcopy(model))
    loss = fused(x)
    expected = model(x).sum()
    assert abs(loss.item() - expected.item()) <= 1e-5 * abs(expected.item())
    loss.backward()
    assert [st.candidate for st in fused.report.used] == [c.id], str(fused.report)


def test_user_pattern_in_the_explorer(rmsnorm_silu):
    pytest.importorskip("ipywidgets")
    from fusionlab.widgets import explore

    torch.manual_seed(0)
    model, x = RMSNormSiLUHead(), torch.randn(4, 8, 48)
    ex = explore(model, x)
    assert "fw0.rmsnorm_silu.0" in ex.checkboxes
    ex.select("rmsnorm_silu")
    assert [c.id for c in ex.plan.selected] == ["fw0.rmsnorm_silu.0"]


def test_pattern_that_cannot_be_one_kernel_here_is_explained(zoo_capture):
    """A matcher whose occurrence spans two iteration domains is reported in why_not()."""
    cap = zoo_capture("gpt2-block")

    def ln_and_gelu(node, view):
        if view.module(node) != "mlp.act" or node.target is not torch.ops.aten.tanh.default:
            return None
        return [node] + [n for n in node.graph.nodes if view.module(n) == "ln_2" and n.op == "call_function"]

    fl.pattern("ln_gelu", match=ln_and_gelu)
    try:
        cands = fl.find_candidates(cap)
    finally:
        fl.unregister("ln_gelu")
    assert not any("ln_gelu" in c.pattern for c in cands)
    assert re.search(r"pattern 'ln_gelu' matched at .* cannot be one kernel there: (two iteration|.*not fusable)",
                     cands.why_not())


# --------------------------------------------------------------------------- consistent names


def test_every_gpt2_layer_gets_the_same_names(zoo_candidates):
    """Issue 12: one structure, one name, in every layer (it was where+softmax in layer 0 and
    add+softmax in layer 1: the attention mask built once in layer 0 joined its softmax)."""
    cands = zoo_candidates("gpt2-tiny")
    per_layer: dict[tuple[str, int], Counter] = {}
    for c in cands:
        m = re.search(r"\.h\.(\d+)\.", c.module + ".")
        if m:
            per_layer.setdefault((c.graph, int(m.group(1))), Counter())[c.pattern] += 1
    for graph in ("fw0", "bw0"):
        layers = sorted(i for g, i in per_layer if g == graph)
        assert layers == [0, 1], per_layer
        assert per_layer[(graph, 0)] == per_layer[(graph, 1)], per_layer
    fw = per_layer[("fw0", 0)]
    assert fw["add+softmax"] == 1 and fw["matmul+bias+gelu"] == 1 and fw["add+layer_norm"] == 2
    assert per_layer[("bw0", 0)]["matmul+gelu_backward"] == 1
    # the keys differ by the layer only
    keys = {c.key for c in cands}
    assert {"fw0:add+softmax@model.transformer.h.0.attn", "fw0:add+softmax@model.transformer.h.1.attn"} <= keys


def test_matmul_anchor_hook_names_an_epilogue():
    """The matmul-epilogue search (issue 12 part 1) puts a mm and its epilogue in one group;
    the registry already names such a group, bias and all."""
    from fusionlab.patterns import NodeView, name_group

    w, b = torch.randn(32, 16), torch.randn(16)
    cap = fl.capture(lambda x: torch.nn.functional.gelu(x @ w + b), torch.randn(8, 32), train=False)
    g = cap.graphs[0]
    members = [n for n in g.gm.graph.nodes if n.op == "call_function" and g.nodes[n.name].kind != "view"]
    assert any(g.nodes[n.name].kind == "matmul" for n in members)
    naming = name_group(members, NodeView(g.nodes, False))
    assert naming.name == "matmul+bias+gelu"
    assert naming.claimed[naming.anchor] == "matmul"
