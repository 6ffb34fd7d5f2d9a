"""The graph widget's data and state, headless (no browser): the collapsed view, selection
synced with the FusionPlan (refusals included), focus, expand/collapse, on zoo models."""

from __future__ import annotations

import pytest

from fusionlab import FusionPlan, capture, zoo
from fusionlab.plan import PlanError
from fusionlab.viz.graph_data import BOX_PREFIX, GraphData, ancestors
from fusionlab.widgets.graph import STATIC


def _plan(name: str) -> FusionPlan:
    zm = zoo.get(name)
    return FusionPlan(capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))


@pytest.fixture(scope="module")
def block_plan():
    return _plan("gpt2-block")


@pytest.fixture(scope="module")
def tiny_plan():
    return _plan("gpt2-tiny")


def widget(plan):
    pytest.importorskip("anywidget")
    from fusionlab.widgets.graph import GraphWidget

    plan.clear()
    return GraphWidget(plan)


def test_bundle_is_shipped_and_offline():
    js = (STATIC / "graph.js").read_text()
    assert len(js) > 100_000  # Graphviz's WebAssembly is inlined
    for cdn in ("cdn.jsdelivr", "unpkg.com", "esm.sh", "cdnjs"):
        assert cdn not in js


def test_ancestors():
    assert ancestors("") == []
    assert ancestors("h.0.mlp") == ["h", "h.0", "h.0.mlp"]


def test_data_small_graph_opens_fully(block_plan):
    g = block_plan.capture.graph("fw0")
    d = GraphData.build(g, block_plan.candidates)
    assert set(d.nodes) == {n.name for n in g.gm.graph.nodes}
    exp = d.default_expanded()
    view = d.view(exp)
    assert all(v["type"] == "op" for v in view["items"].values())
    # every candidate of this graph is a cluster of its drawn members
    fw = [c for c in block_plan.candidates if c.graph == "fw0"]
    assert set(view["clusters"]) == {c.id for c in fw}
    for c in fw:
        assert view["clusters"][c.id]["members"] == list(c.nodes)
        assert f'id="c:{c.id}"' in view["dot"]
    # hover facts; nodes outside every candidate carry why_not
    lone = [v for v in view["items"].values() if not v["candidate"] and v["op"].startswith("aten")]
    assert lone and all(v["why_not"] for v in lone)
    some = next(iter(view["items"].values()))
    assert {"op", "shape", "bytes", "module", "source", "why_not"} <= set(some)
    # edges only between visible items
    assert all(a in view["items"] and b in view["items"] for a, b, _ in view["edges"])


def test_collapsed_view_boxes_count(tiny_plan):
    d = GraphData.build(tiny_plan.capture.graph("fw0"), tiny_plan.candidates)
    exp = d.default_expanded()
    view = d.view(exp, selected=[tiny_plan.candidates[0].id])
    boxes = {k: v for k, v in view["items"].items() if v["type"] == "module"}
    blocks = {v["module"] for v in boxes.values()}
    assert {"model.transformer.h.0", "model.transformer.h.1"} <= blocks
    assert len(view["items"]) <= 80
    h0 = boxes[BOX_PREFIX + "model.transformer.h.0"]
    assert h0["candidates"] > 0 and h0["ops"] > 20
    # collapsing everything: one box; opening everything: only ops
    assert len(d.view(set())["items"]) <= 2
    every = {p for p in d.modules if p}
    assert all(v["type"] == "op" for v in d.view(every)["items"].values())
    assert len(d.view(every)["items"]) == len(d.drawn)


def test_widget_select_click_and_refusal(block_plan):
    w = widget(block_plan)
    cid = block_plan.candidates[0].id
    # a click in the browser sets `selected`: the plan follows
    w.selected = [cid]
    assert block_plan.is_selected(cid) and w.view["clusters"][cid]["selected"] and w.message == ""
    # a refused change: put back, message shown, plan unchanged
    w.selected = [cid, "fw0.nonexistent.0"]
    assert w.selected == [cid] and w.message.startswith("refused: no candidate matches")
    assert [c.id for c in block_plan.selected] == [cid]
    # deselect by click
    w.selected = []
    assert block_plan.selected == [] and not w.view["clusters"][cid]["selected"]
    # from code: same validation, raised too
    w.select("layer_norm")
    assert w.selected == [c.id for c in block_plan.selected] and len(w.selected) >= 2
    with pytest.raises(PlanError):
        w.select("no_such_pattern")
    assert w.message.startswith("refused")
    w.toggle(cid)
    assert cid not in w.selected
    # the plan changed elsewhere: refresh re-reads it
    block_plan.select(cid)
    w.refresh()
    assert cid in w.selected


def test_widget_focus_node_and_candidate(block_plan):
    w = widget(block_plan)
    c = block_plan.candidates[1]
    w.focused = f"{c.graph}:{c.nodes[0]}"  # a click on a node
    assert w.focus_candidate == c.id and w.view["focus"] == c.nodes[0]
    w.focus(c.id)
    assert w.focus_candidate == c.id and w.focused == ""
    bw = next(x for x in block_plan.candidates if x.graph.startswith("bw"))
    w.focus(f"{bw.graph}.{bw.nodes[0]}")
    assert w.graph == bw.graph and w.focused == f"{bw.graph}:{bw.nodes[0]}"
    assert w.focus_candidate == bw.id
    with pytest.raises(KeyError):
        w.focus("nothing_like_this")


def test_widget_expand_collapse_focus_opens(tiny_plan):
    w = widget(tiny_plan)
    assert w.graph == "fw0"
    box = BOX_PREFIX + "model.transformer.h.0"
    assert box in w.view["items"]
    n_before = len(w.view["items"])
    w.expanded = w.expanded + ["model.transformer.h.0"]  # a click on the box
    assert box not in w.view["items"] and len(w.view["items"]) > n_before
    w.collapse("model.transformer.h.0")
    assert box in w.view["items"]
    # focusing a node inside a closed block opens it
    inner = next(n for n, i in w.data.nodes.items()
                 if i.module.startswith("model.transformer.h.1.") and not i.hidden and i.candidate)
    w.focus(inner)
    assert "model.transformer.h.1" in w.expanded and inner in w.view["items"]
    assert w.focus_candidate == w.data.nodes[inner].candidate
    w.expand("model.transformer.h.0.mlp")
    assert {"model.transformer.h.0", "model.transformer.h.0.mlp"} <= set(w.expanded)
    with pytest.raises(KeyError):
        w.expand("no.such.module")
    w.collapse()
    assert w.expanded == [] and len(w.view["items"]) <= 2
    w.show("bw0")
    assert w.view["graph"] == "bw0"
    # search rows: nodes, modules and candidates of each graph
    keys = {r[0] for r in w.index["bw0"]}
    assert "model.transformer.h.0" in keys and any(c.id in keys for c in tiny_plan.candidates)


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "llama-block"])
def test_widget_on_zoo_models(name):
    plan = _plan(name)
    w = widget(plan)
    for tag in w.graphs:
        w.show(tag)
        assert w.view["dot"].startswith("digraph") and w.view["items"]
    if plan.candidates:
        cid = plan.candidates[-1].id
        w.focus(cid)
        w.selected = [cid]
        assert plan.is_selected(cid) and w.graph == plan.candidates[-1].graph


@pytest.mark.slow
def test_gpt2_12l_opens_collapsed():
    plan = _plan("gpt2-12l")
    w = widget(plan)
    for tag in w.graphs:
        w.show(tag)
        items = w.view["items"]
        blocks = [v for v in items.values() if v["type"] == "module" and ".h." in v["module"]]
        # generous: loose top-level ops (loss, masks) show next to the 12 block boxes
        assert len(blocks) == 12 and len(items) <= 150
    w.focus(plan.candidates[len(plan.candidates) // 2].id)
    assert len(w.view["items"]) < 400
