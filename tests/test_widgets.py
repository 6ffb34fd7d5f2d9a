"""The explorer, tested by its state (no browser): checkboxes drive the plan, panes follow."""

import dataclasses
import html
import re

import pytest

import fusionlab
from fusionlab import zoo
from fusionlab.candidates import Candidates

pytest.importorskip("ipywidgets")
from fusionlab.widgets import Explorer, explore  # noqa: E402


def text(widget) -> str:
    """What a reader sees in an HTML widget: tags stripped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


@pytest.fixture(scope="module")
def mlp():
    return zoo.get("mlp")


@pytest.fixture(scope="module")
def cap(mlp):
    return fusionlab.capture(mlp.model, *mlp.inputs, loss_fn=mlp.loss_fn)


@pytest.fixture
def ex(mlp, cap):
    return explore(mlp.model, *mlp.inputs, capture=cap)


def test_explore_from_zoo_name_captures():
    ex = explore("mlp")
    assert ex.plan.capture.model_name == "MLPClassifier"
    assert set(ex.checkboxes) == {c.id for c in ex.plan.candidates}
    assert ex.inputs and ex.model is not None


def test_checkboxes_drive_the_plan(ex):
    a, b = ex.plan.candidates[0].id, ex.plan.candidates[1].id
    ex.checkboxes[a].value = True
    assert [c.id for c in ex.plan.selected] == [a]
    ex.checkboxes[b].value = True
    assert {c.id for c in ex.plan.selected} == {a, b}
    ex.checkboxes[a].value = False
    assert [c.id for c in ex.plan.selected] == [b]
    assert "deselected" in text(ex.message)


def test_select_all_and_clear_buttons(ex):
    ex.select_all_button.click()
    assert len(ex.plan.selected) == len(ex.plan.candidates)
    assert all(cb.value for cb in ex.checkboxes.values())
    ex.clear_button.click()
    assert ex.plan.selected == []
    assert not any(cb.value for cb in ex.checkboxes.values())


def test_refused_selection_shows_plan_error_and_reverts(cap):
    base = fusionlab.find_candidates(cap)
    dup = dataclasses.replace(base[0], id=base[0].id + ".copy")  # same nodes: overlaps base[0]
    plan = fusionlab.FusionPlan(cap, Candidates([*base, dup], capture=cap))
    ex = Explorer(cap, plan)
    ex.checkboxes[base[0].id].value = True
    ex.checkboxes[dup.id].value = True
    assert ex.checkboxes[dup.id].value is False  # reverted
    assert ex.checkboxes[base[0].id].value is True
    assert [c.id for c in plan.selected] == [base[0].id]
    msg = text(ex.message)
    assert msg.startswith("refused") and "overlap" in msg
    ex.select_all_button.click()  # selects everything that fits: the overlapping copy is skipped
    assert [c.id for c in plan.selected] == [c.id for c in base]
    assert [cid for cid, _ in plan.skipped] == [dup.id]
    assert not ex.checkboxes[dup.id].value
    assert all(ex.checkboxes[c.id].value for c in base)


def test_kernel_pane_shows_triton_source_and_checks(ex):
    cid = next(c.id for c in ex.plan.candidates if c.pattern == "matmul+bias+gelu")  # fc2 and its gelu
    ex.focus_buttons[cid].click()  # a click on the candidate's row
    assert ex.kernel_pane.cid == cid and ex.graph.focus_candidate == cid
    shown = text(ex.kernel_pane.source)
    assert "@triton.jit" in shown and "@triton.jit" in ex.kernel_text
    assert "aten.erf" in shown
    assert "not checked" in text(ex.kernel_pane.check_result)
    ex.kernel_pane.check_button.click()
    assert text(ex.kernel_pane.check_result).startswith("ok")
    assert ex.kernel(cid).check_result.ok


def test_check_selected_builds_plan_kernels(ex):
    cid = ex.plan.candidates[0].id
    ex.checkboxes[cid].value = True
    kernel_set = ex.check_selected()
    assert len(kernel_set.statuses) == 1
    statuses = text(ex.kernel_pane.statuses)
    assert cid in statuses and "ok" in statuses


def test_summary_pane_follows_selection(ex):
    before = text(ex.summary_html)
    assert "modeled" in before and f"0 of {len(ex.plan.candidates)}" in before
    cid = ex.plan.candidates[0].id
    ex.checkboxes[cid].value = True
    after = text(ex.summary_html)
    assert after != before and f"1 of {len(ex.plan.candidates)}" in after
    s = ex.plan.summary()
    assert f"{s.kernels_before} → {s.kernels_after}" in after
    fig = ex.figures["summary"]
    assert fig.data[1].y[-1] == s.kernels_after
    assert ex.summary_chart.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"]
    if ex.gpu.options:  # fusionlab.cost present: the step is also modeled on a GPU spec
        assert "modeled (" in after and "ms" in after


def test_display_protocols(ex):
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert ex.ui.children[-1] is ex.tabs
    assert "MLPClassifier" in repr(ex)


@pytest.fixture(scope="module")
def profiled(mlp, cap):
    """An explorer whose profile button was clicked with its controls set: two steps, eager and
    fusionlab, each group compiled alone by Inductor (a real, small profile)."""
    ex = explore(mlp.model, *mlp.inputs, capture=cap)
    ex.plan.select("gelu")
    pane = ex.profile_pane
    pane.steps.value = 2
    pane.variants["unfused"].value = False
    pane.executor.value = "inductor-groups"
    pane.button.click()
    return ex


def test_profile_tab_controls_drive_the_profile(profiled):
    result = profiled.profile_result
    assert result is not None, profiled.profile_pane.html.value
    assert [v.name for v in result.variants] == ["eager", "fusionlab"]
    assert (result.steps, result.warmup) == (2, 1)
    assert all(len(v.samples) == 2 for v in result.variants)
    assert [c.id for c in result.plan.selected] == [c.id for c in profiled.plan.selected]
    assert result["fusionlab"].executor == "inductor-cpp (per group)"
    assert len(result["fusionlab"].report.used) == len(profiled.plan.selected)


def test_profile_pane_shows_the_table_and_figure(profiled):
    shown = text(profiled.profile_pane.html)
    assert "Measured on cpu" in shown and "modeled (H100 SXM spec)" in shown
    assert "inductor-cpp (per group)" in shown
    assert profiled.figures["profile"].data


def test_profile_without_inputs_says_so(cap):
    ex = Explorer(cap)  # no inputs given
    assert ex.profile(steps=1) is None
    assert "needs the model and its inputs" in text(ex.profile_pane.html)
