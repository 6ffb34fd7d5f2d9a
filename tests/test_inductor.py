"""fusionlab.inductor: Inductor's own kernels beside fusionlab's candidates, and measured candidate values.

Each zoo model is compiled by Inductor once per session (``decisions`` below); the checks
read that one compile. Inductor's own counts are the oracle for the kernel listing: its
``metrics.generated_kernel_count`` and the functions and library calls in its generated code.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

import fusionlab as fl
from fusionlab.inductor import (
    LIBRARY,
    NO_KERNEL,
    InductorUnavailable,
    inductor_decisions,
    inductor_diff,
    measure_candidates,
    require_inductor,
)

MODELS = ["gpt2-block", "llama-block", "cnn-bn", "gpt2-tiny"]


@pytest.fixture(scope="session")
def decisions(zoo_capture):
    found: dict[str, fl.inductor.InductorDecisions] = {}

    def get(name: str):
        if name not in found:
            found[name] = inductor_decisions(zoo_capture(name))
        return found[name]

    return get


def _called(source: str) -> tuple[set[str], list[str]]:
    """The C++ functions and the extern_kernels calls (sorted) in the generated ``call``."""
    body = source[source.find("def call("):]
    return (set(re.findall(r"^\s+(cpp_fused_\w+)\(", body, re.M)),
            sorted(re.findall(r"\b(extern_kernels\.\w+)\(", body)))


@pytest.mark.parametrize("name", MODELS)
def test_every_node_has_one_owner_and_counts_match_inductor(name, zoo_capture, decisions):
    cap, d = zoo_capture(name), decisions(name)
    assert not d.errors, d.errors
    for g in cap.graphs:
        gd = d.graph(g.tag)
        ids = {k.id for k in gd.kernels}
        assert set(gd.owner) == {n.name for n in g.gm.graph.nodes}  # every node, exactly one owner
        for node, owner in gd.owner.items():
            assert owner == NO_KERNEL or owner in ids, (node, owner)
            if owner == NO_KERNEL:
                assert gd.why_no_kernel[node]
            else:
                assert node in d.kernel(owner).nodes
        for info in g.kernel_nodes():  # every matmul is a library call (CPU: no templates by default)
            if info.kind == "matmul" and gd.owner[info.name] != NO_KERNEL:
                assert d.kernel(gd.owner[info.name]).kind == LIBRARY
        # Inductor's own counts: the metric counts every loop nest it generated, plus the trial
        # nests of outer-loop fusions; the generated code calls exactly the functions listed
        assert len(gd.generated) + gd.outer_loop_trials == gd.metrics_kernels, g.tag
        functions, externs = _called(gd.source)
        assert set(gd.functions) == functions
        assert sorted(k.function for k in gd.library_calls if k.function.startswith("extern_kernels.")) == externs
        assert all(k.code for k in gd.generated) and any("for(" in k.code for k in gd.generated)  # its own C++
        for k in gd.kernels:  # a recomputed node is computed by another kernel too
            for n in k.recomputed:
                assert len(d.kernels_of(g.tag, n)) > 1


def test_refused_fusions_name_inductors_reason():
    """Two reductions of one tensor in different orders (column and row sums), a broadcast add of
    their results: Inductor refuses several fusions, each with its reason."""

    class TwoOrders(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(64, 128))

        def forward(self, x):
            u = (x * self.w).exp()
            return (u.sum(0)[None, :] + u.sum(1)[:, None]).sum()

    d = inductor_decisions(fl.capture(TwoOrders(), torch.randn(64, 128), train=False))
    refusals = d.refusals
    assert refusals, d
    categories = {r.category for r in refusals}
    assert categories & {"loop ranges differ", "no shared data"}, categories
    r = next(r for r in refusals if r.category == "loop ranges differ")
    assert "cannot fuse [" in str(r) and "loop ranges differ (" in str(r)
    node = r.first[0]
    assert any(str(r) in line for line in [*d.reasons(r.graph, node)])  # the hover text of that node
    assert d.overlay()[r.graph][node]["reasons"]


def test_random_ops_compile_as_aten_calls_with_a_note():
    class Drop(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x.sin(), 0.5).sum()

    d = inductor_decisions(fl.capture(Drop(), torch.randn(32, 32), train=False))
    gd = d.graphs[0]
    assert gd.error is None and "fallback_random" in gd.note
    assert any(k.kind == LIBRARY and "rand" in k.function for k in gd.kernels)


def test_a_graph_inductor_cannot_compile_is_named_and_the_rest_still_shows(zoo_capture, zoo_candidates, decisions):
    cap = zoo_capture("gpt2-block")
    decisions("gpt2-block")  # the good graphs, compiled once
    bw = cap.graph("bw0")
    gm = torch.fx.GraphModule(bw.gm, torch.fx.Graph())
    gm.graph = torch.fx.Graph()
    env = {}
    for n in bw.gm.graph.nodes:
        env[n] = gm.graph.node_copy(n, lambda a: env[a])
    first = next(n for n in gm.graph.nodes if n.op == "call_function")
    with gm.graph.inserting_before(first):  # a Python function Inductor has no lowering for
        bad = gm.graph.call_function(torch.Tensor.numpy, (next(iter(gm.graph.nodes)),))
    bad.meta["val"] = None
    gm.recompile()
    broken = dataclasses.replace(cap, graphs=[cap.graph("fw0"), dataclasses.replace(bw, gm=gm)])
    d = inductor_decisions(broken)
    assert d.graph("fw0").error is None and d.graph("fw0").kernels
    err = d.graph("bw0").error
    assert err.startswith("Inductor could not compile bw0: ") and "numpy" in err.lower(), err
    plan = fl.FusionPlan(broken, zoo_candidates("gpt2-block"))
    diff = inductor_diff(plan, d)
    assert diff.errors and "bw0" in diff.errors[0]
    assert any(r.graph == "fw0" for r in diff.rows)
    assert "error: bw0: Inductor could not compile bw0" in str(diff)


def test_diff_on_gpt2_block(zoo_plan, decisions):
    plan, d = zoo_plan("gpt2-block", select=None), decisions("gpt2-block")
    diff = inductor_diff(plan, d)
    ids = [r.candidate for r in diff.both + diff.fusionlab_only]
    assert sorted(ids) == sorted(c.id for c in plan.candidates)  # each candidate once
    for r in diff.both:  # exactly the ops of one Inductor kernel
        k = d.kernel(r.kernels[0])
        owned = {n for n, o in d.graph(r.graph).owner.items() if o == k.id}
        assert set(r.nodes) & owned and len(r.kernels) == 1
    assert diff.both and diff.inductor_only
    for r in diff.inductor_only:
        assert r.why and len(r.nodes) >= 2
    whys = " ".join(r.why for r in diff.inductor_only)
    assert "opaque op aten.cat" in whys  # Inductor writes the q/k/v gradients straight into the cat
    assert "reductions over different rows" in whys  # layer norm's weight gradient: a column reduction
    html = diff._repr_html_()
    assert "only Inductor" in html and "<table>" in html

    chosen = fl.inductor.select_like_inductor(plan, d)
    assert set(chosen) == {c.id for c in plan.selected}
    assert {r.candidate for r in diff.both} <= set(chosen)
    assert plan.select_like_inductor(d) is plan


def test_measured_values_are_cached_and_labeled(zoo_plan, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path))
    plan = zoo_plan("mlp", select=None)
    some = [c.id for c in plan.candidates[:2]]
    values = measure_candidates(plan, some, rounds=8, progress=False)
    assert [v.candidate for v in values] == some
    for v in values:
        assert not v.error and not v.cached
        assert v.verdict in ("faster", "slower", "no measurable difference")
        assert v.unfused_ms > 0 and v.fused_ms > 0 and math.isfinite(v.ratio) and v.low <= v.ratio <= v.high
        assert v.bytes_saved == plan.candidates.by_id(v.candidate).bytes_saved
    text = values.table()
    assert "measured on cpu" in text and "modeled" in text
    again = measure_candidates(plan, some, rounds=8, progress=False)
    assert all(v.cached for v in again)
    assert [(v.fused_ms, v.verdict) for v in again] == [(v.fused_ms, v.verdict) for v in values]
    with pytest.raises(ValueError, match="rounds"):
        measure_candidates(plan, some, rounds=3)


def test_the_same_block_in_two_layers_is_measured_once(zoo_plan, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path))
    plan = zoo_plan("gpt2-tiny", select=None)
    twins = [c.id for c in plan.candidates if c.pattern == "softmax_backward"]
    assert len(twins) == 2  # one per layer
    first, second = measure_candidates(plan, twins, rounds=8, progress=False)
    assert second.same_as == first.candidate and not first.same_as
    assert (second.fused_ms, second.verdict) == (first.fused_ms, first.verdict)
    assert f"(= {first.candidate})" in measure_candidates(plan, twins, rounds=8, progress=False).table()


def test_magic_prints_the_diff(capsys, ipython_shell):
    ip = ipython_shell
    fl.load_ipython_extension(ip)
    ip.run_line_magic("fusionlab", "inductor zoo:mlp")
    out = capsys.readouterr().out
    assert "fusionlab vs torch.compile (Inductor) on MLPClassifier" in out
    assert ip._fusionlab_extension.last_diff is not None
    ip.run_line_magic("fusionlab", "inductor not_defined_here")
    assert "is not defined in the notebook" in capsys.readouterr().out


def test_a_torch_without_the_internals_gets_a_clear_error(monkeypatch):
    from torch._inductor.codegen import cpp

    monkeypatch.delattr(cpp.KernelGroup, "finalize_kernel")
    with pytest.raises(InductorUnavailable, match=r"KernelGroup.finalize_kernel.*written against torch"):
        require_inductor()


def test_inductor_only_fusion_through_a_view_says_so():
    class ThroughView(torch.nn.Module):
        def forward(self, x):
            a = x.sin().exp()
            return a.view(64, 2, 64).cos().neg()

    cap = fl.capture(ThroughView(), torch.randn(64, 128), train=False)
    plan = fl.FusionPlan(cap)
    assert len(plan.candidates) == 2  # the view splits fusionlab's groups
    diff = inductor_diff(plan)
    assert not diff.both and len(diff.inductor_only) == 1
    row = diff.inductor_only[0]
    assert len(row.nodes) == 4 and "through a view (view)" in row.why, row.why
