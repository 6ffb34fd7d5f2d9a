"""fusionlab.viz: DOT drawings of captured graphs and plotly charts of modeled numbers."""

import re

import pytest

import fusionlab
from fusionlab import viz, zoo
from fusionlab.viz import graph as vgraph

pytest.importorskip("graphviz")
pytest.importorskip("plotly")


@pytest.fixture(scope="module")
def plan():
    m = zoo.get("mlp")
    cap = fusionlab.capture(m.model, *m.inputs, loss_fn=m.loss_fn)
    return fusionlab.FusionPlan(cap)


def test_dot_has_one_cluster_per_candidate(plan):
    for g in plan.capture.graphs:
        mine = [c for c in plan.candidates if c.graph == g.tag]
        src = viz.graph_dot(g, plan.candidates).source
        assert len(re.findall(r"subgraph cluster_\d+", src)) == len(mine)
        for c in mine:
            assert c.id in src
        assert "(modeled)" in src


def test_selected_cluster_is_highlighted(plan):
    g = plan.capture.graph("fw0")
    cid = next(c.id for c in plan.candidates if c.graph == "fw0")
    plain = viz.graph_dot(g, plan.candidates).source
    marked = viz.graph_dot(g, plan.candidates, selected=[cid]).source
    assert f"[x] {cid}" in marked and f"[x] {cid}" not in plain
    assert "penwidth=3" in marked


def test_nodes_labelled_and_colored_by_kind(plan):
    g = plan.capture.graph("fw0")
    src = viz.graph_dot(g, collapse_views=False).source
    assert "addmm" in src and "f32[32x256]" in src
    for kind in ("pointwise", "reduction", "matmul"):
        assert vgraph.KIND_STYLE[kind]["fillcolor"] in src


def test_views_collapse_and_large_graphs_truncate(plan):
    g = plan.capture.graph("bw0")
    views = [n for n, i in g.nodes.items() if i.kind == "view"]
    assert views
    full = viz.graph_dot(g, plan.candidates, collapse_views=False).source
    collapsed = viz.graph_dot(g, plan.candidates, collapse_views=True).source
    assert f"\t{views[0]} [" in full and f"\t{views[0]} [" not in collapsed
    assert "view nodes collapsed" in collapsed and "style=dashed" in collapsed
    cut = viz.graph_dot(g, plan.candidates, max_nodes=10, collapse_views=False).source
    assert "showing the first 10 of" in cut
    assert len(re.findall(r"^\t\w+ \[label", cut, flags=re.M)) == 10


def test_html_without_dot_lists_clusters_and_dot_text(plan, monkeypatch):
    monkeypatch.setattr(vgraph.shutil, "which", lambda _name: None)
    g = plan.capture.graph("fw0")
    cid = next(c.id for c in plan.candidates if c.graph == "fw0")
    out = viz.graph_html(g, plan.candidates, selected=[cid])
    assert "<svg" not in out and "DOT source" in out
    assert f'data-candidate="{cid}"' in out and "&#9745;" in out


@pytest.mark.skipif(not vgraph.has_dot(), reason="graphviz's dot binary is not installed")
def test_html_with_dot_is_svg(plan):
    out = viz.graph_html(plan.capture.graph("fw0"), plan.candidates)
    assert "<svg" in out and "cluster" in out


def test_candidates_figure(plan):
    sel = [plan.candidates[0].id]
    fig = viz.candidates_figure(plan.candidates, selected=sel)
    assert len(fig.data) == 1
    bar = fig.data[0]
    assert len(bar.y) == len(plan.candidates)
    assert bar.y[-1] == plan.candidates[0].id  # first candidate drawn on top
    assert "modeled" in fig.layout.title.text
    assert bar.marker.color[-1] != bar.marker.color[0] or len(plan.candidates) == 1


def test_plan_figure(plan):
    plan.clear().select(plan.candidates[0].id)
    fig = viz.plan_figure(plan)
    assert len(fig.data) == 4  # kernels and bytes, unfused and with the plan
    s = plan.summary()
    assert fig.data[0].y[-1] == s.kernels_before and fig.data[1].y[-1] == s.kernels_after
    assert "modeled" in fig.layout.title.text
    from fusionlab.viz.charts import mimebundle

    bundle = mimebundle(fig)
    assert {"application/vnd.plotly.v1+json", "text/html", "text/plain"} <= set(bundle)
    plan.clear()


def test_plan_figure_models_a_gpu_when_cost_exists(plan):
    pytest.importorskip("fusionlab.cost")
    fig = viz.plan_figure(plan, gpu="h100")
    assert len(fig.data) == 6
    assert "modeled" in fig.layout.annotations[-1].text and "H100" in fig.layout.annotations[-1].text


def test_profile_figure_and_report_of_a_measured_only_result():
    """A profile's figure and HTML report (viz.profile_report) from a result with no modeled columns."""
    from fusionlab.profiler import ProfileResult, VariantResult

    eager = VariantResult("eager", "PyTorch eager (ATen)", "cpu", samples=[1e-3, 2e-3, 3e-3],
                          top_kernels=[("aten::mm", 2, 9.0)])
    res = ProfileResult("m", "cpu (2 threads)", steps=3, warmup=1, optimizer="adamw", variants=[eager])
    fig = viz.profile_figure(res)
    step_times = fig.data[0]
    assert step_times.y == pytest.approx((2.0,))  # the median, in ms
    assert "measured on cpu (2 threads)" in fig.layout.annotations[0].text
    report = viz.profile_html(res)
    assert report.startswith("<!DOCTYPE html>") and "aten::mm" in report
