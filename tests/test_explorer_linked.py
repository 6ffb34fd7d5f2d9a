"""The explorer's linked views, headless (no browser), on zoo models: graph clicks and code
change the one FusionPlan and every view follows; focus drives the kernel pane; refusals
and callback errors are shown in the widget, never raised."""

from __future__ import annotations

import html
import re

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")
from fusionlab.widgets import Explorer  # noqa: E402


def text(widget) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


@pytest.fixture
def block(zoo_capture):
    return Explorer(zoo_capture("gpt2-block"), background=False)


@pytest.fixture
def gpt2_tiny(zoo_capture):
    return Explorer(zoo_capture("gpt2-tiny"), background=False)


def test_cluster_click_and_checkbox_and_code_agree(block):
    ex = block
    cid = ex.plan.candidates[0].id
    ex.graph.selected = [cid]  # a click on the candidate's cluster in the graph
    assert ex.plan.is_selected(cid) and ex.checkboxes[cid].value
    assert f"1 of {len(ex.plan.candidates)}" in text(ex.summary_html)
    other = ex.plan.candidates[1].id
    ex.checkboxes[other].value = True  # a checkbox in the list
    assert set(ex.graph.selected) == {cid, other} and ex.graph.view["clusters"][cid]["selected"]
    ex.deselect(cid)  # code
    assert ex.graph.selected == [other] and not ex.checkboxes[cid].value
    assert f"1 of {len(ex.plan.candidates)}" in text(ex.summary_html)


def test_refusal_from_the_graph_is_shown_and_put_back(block):
    ex = block
    ex.graph.selected = ["fw0.no_such.0"]
    assert ex.plan.selected == [] and ex.graph.selected == []
    assert text(ex.message).startswith("refused: no candidate matches")
    ex.select("no_such_pattern")  # from code: shown, not raised
    assert text(ex.message).startswith("refused") and ex.plan.selected == []


def test_focus_node_shows_kernel_line_and_model_source(block):
    ex = block
    c = next(c for c in ex.plan.candidates if c.pattern == "matmul+bias+gelu")  # c_fc and its gelu
    node = next(n for n in c.nodes if ex.capture.graph(c.graph).nodes[n].source)
    ex.graph.focused = f"{c.graph}:{node}"  # a click on the node
    pane = ex.kernel_pane
    assert pane.cid == c.id and pane.node == f"{c.graph}:{node}"
    marked = re.search(r'<span data-mark="\d+"[^>]*>(.*?)</span>\n', pane.source.value, re.S)
    assert marked and html.unescape(re.sub(r"<[^>]+>", "", marked.group(1))).lstrip().startswith(f"{node} = ")
    before = pane.source.value[:marked.start()]
    assert f"def {ex.kernel(c.id).name}(" in html.unescape(re.sub(r"<[^>]+>", "", before))  # in the kernel, not its docstring
    src = ex.capture.graph(c.graph).nodes[node].source
    assert src in text(pane.node_info)  # the model line that produced the node
    # focusing a candidate from code (or its row) shows the same kernel, no node marked
    ex.focus(c.id)
    assert pane.cid == c.id and ex.graph.focus_candidate == c.id and "data-mark" not in pane.source.value.split("<details>")[0]
    # a node outside every candidate says why
    lone = next(n for n, i in ex.graph.data.nodes.items() if i.why_not and not i.hidden)
    ex.focus(f"{ex.graph.graph}:{lone}")
    assert pane.cid is None and "in no candidate" in text(pane.node_info)
    ex.focus("no_such_thing")
    assert "no_such_thing" in text(ex.message)


def test_select_pattern_names_its_backward(block):
    ex = block
    ex.select("softmax")
    fw = [c.id for c in ex.plan.selected]
    assert fw and all(i.startswith("fw") for i in fw)
    msg = text(ex.message)
    bw = [c.id for c in ex.plan.unselected_backward("softmax")]
    assert bw and all(i in msg for i in bw) and "ex.select('softmax_backward')" in msg
    ex.select("softmax_backward")
    assert ex.plan.unselected_backward("softmax") == []


def test_callback_errors_are_shown_not_raised(block, monkeypatch):
    ex = block

    def broken(*_a, **_k):
        raise RuntimeError("kernel pane broke")

    monkeypatch.setattr(ex.kernel_pane, "show", broken)
    ex.graph.focused = f"fw0:{ex.plan.candidates[0].nodes[0]}"  # would raise into the comm
    assert "RuntimeError: kernel pane broke" in text(ex.message)
    assert "kernel pane broke" in ex.graph.message


def test_rows_are_one_line_and_zero_savers_say_why(block):
    ex = block
    assert ex.table.row_height == "26px" and "white-space: nowrap" in ex.table._esm  # one widget, one-line rows
    zero = [c for c in ex.plan.candidates if c.bytes_saved <= 0]
    for c in zero:
        assert "saves no memory traffic" in ex.focus_buttons[c.id].tooltip
    for c in ex.plan.candidates:
        assert ex.focus_buttons[c.id].description == c.id
        assert ", ".join(c.modules) in ex.focus_buttons[c.id].tooltip


def test_charts_draw_while_their_tab_shows(block):
    ex = block
    ex.tabs.selected_index = 1  # the profile tab
    before = ex.figures["summary"]
    ex.select(ex.plan.candidates[0].id)
    assert ex.figures["summary"] is before  # hidden: not drawn (plotly would get 0 px)
    ex.tabs.selected_index = 0
    assert ex.figures["summary"] is not before and ex.figures["summary"].layout.height


def test_expand_and_focus_open_blocks(gpt2_tiny):
    ex = gpt2_tiny
    assert any(v["type"] == "module" for v in ex.graph.view["items"].values())
    ex.expand("h.0")
    assert "model.transformer.h.0" in ex.graph.expanded
    ex.expand("attn")  # ambiguous: h.0.attn or h.1.attn
    assert "ambiguous" in text(ex.message)
    bw = next(c for c in ex.plan.candidates if c.graph == "bw0")
    ex.focus(bw.id)
    assert ex.graph.graph == "bw0" and ex.kernel_pane.cid == bw.id
    assert all(n in ex.graph.view["clusters"][bw.id]["members"] for n in bw.nodes
               if not ex.graph.data.nodes[n].hidden)


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "llama-block"])
def test_explorer_on_zoo_models(zoo_capture, name):
    ex = Explorer(zoo_capture(name), background=False)
    for c in ex.plan.candidates[:3]:
        ex.focus(c.id)
        assert ex.kernel_pane.cid == c.id
        assert "@triton.jit" in ex.kernel_text or "no kernel" in text(ex.kernel_pane.source)
    ex.select_all_button.click()
    assert ex.graph.selected == [c.id for c in ex.plan.selected]
