"""The explorer with torch.compile's decisions, measured values and plan rules (headless: by state).

One mlp explorer per module (Inductor compiles its graphs once, about a second or two).
"""

from __future__ import annotations

import html
import re

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from fusionlab.widgets import explore  # noqa: E402


def text(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", value))


@pytest.fixture(scope="module")
def ex(zoo_model, zoo_capture):
    zm = zoo_model("mlp")
    e = explore(zm.model, *zm.inputs, capture=zoo_capture("mlp"))
    e.show_inductor(True).wait()
    return e


def test_the_toggle_draws_inductors_kernels_with_their_reasons(ex):
    d = ex.inductor_pane.decisions
    assert d is not None and ex.inductor_pane.toggle.value and ex.graph.show_inductor
    assert "done in" in ex.inductor_pane.task.status.value
    view = ex.graph.view
    assert view["inductor"]
    overlay = d.overlay()[view["graph"]]
    ops = {k: v for k, v in view["items"].items() if v["type"] == "op"}
    for name, item in ops.items():  # every drawn op says which Inductor kernel computes it
        row = overlay[name]
        if row["kind"] == "no kernel":
            assert item["inductor"].startswith("torch.compile: no kernel")
        else:
            assert item["inductor"].startswith(f"torch.compile: {row['kernel']} ({row['kind']})")
            assert f"tc: {row['kernel']}" in view["dot"]  # and the drawing names it
    fused = [k for k in d.graph(view["graph"]).kernels if k.kind not in ("library call",) and len(k.nodes) > 1]
    assert fused, "mlp's forward has a fused Inductor kernel"
    ex.show_inductor(False)
    assert not ex.graph.view["inductor"] and "tc: " not in ex.graph.view["dot"]
    assert all("inductor" not in v for v in ex.graph.view["items"].values())
    ex.show_inductor(True)
    assert ex.graph.view["inductor"]


def test_the_diff_tab_and_start_from_torch_compiles_choices(ex):
    diff = ex.inductor_pane.diff
    shown = text(ex.inductor_pane.diff_box.value)
    assert f"{len(diff.both)} groups both make" in shown
    assert f"{len(diff.fusionlab_only)} only fusionlab" in shown and f"{len(diff.inductor_only)} only Inductor" in shown
    for r in diff.rows:
        assert r.candidate is None or r.candidate in shown
        assert html.unescape(r.why) in shown
    assert ex.tabs.get_title(2) == "torch.compile"
    ex.plan.clear()
    ex.refresh()
    ex.inductor_pane.like_button.click()
    want = {r.candidate for r in diff.both + diff.fusionlab_only if len(r.kernels) == 1 and r.candidate}
    assert want and {c.id for c in ex.plan.selected} == want - {cid for cid, _ in ex.plan.skipped}
    assert all(ex.checkboxes[c].value for c in want if ex.plan.is_selected(c))  # the list follows
    assert set(ex.graph.selected) == {c.id for c in ex.plan.selected}
    assert "started from torch.compile's choices" in text(ex.message.value)
    ex.plan.clear()
    ex.refresh()


def test_measure_fills_the_list_and_flags_slower_rows(ex, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path))
    some = [c.id for c in ex.plan.candidates[:2]]
    ex.measure(some, rounds=8).wait()
    values = ex.inductor_pane.values
    assert [v.candidate for v in values] == some
    assert "measured on cpu" in text(ex.inductor_pane.measure_task.status.value)
    for v in values:
        cell = ex.table.measured[v.candidate]
        assert cell["text"].startswith(v.short) and cell["slower"] == v.slower
        assert "measured on cpu" in cell["tip"] and "interleaved" in cell["tip"]
    assert "measured (CPU)" in ex.table._esm and "slower" in ex.table._esm


def test_a_measure_error_stays_in_the_widget(ex, monkeypatch):
    import fusionlab.inductor as ind

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(ind, "measure_candidates", broken)
    ex.measure()
    assert "failed" in ex.inductor_pane.measure_task.status.value
    assert "no compiler here" in text(ex.inductor_pane.measure_task.status.value)


def test_a_rule_rebuilds_the_list_graph_and_diff(zoo_model, zoo_capture):
    zm = zoo_model("gpt2-block")
    e = explore(zm.model, *zm.inputs, capture=zoo_capture("gpt2-block"))
    before = list(e.table.ids)
    target = e.plan.candidates.by_id("fw0.add+layer_norm.0")
    e.plan.never_fuse("add", "layer_norm")  # splits add+layer_norm
    e.refresh()
    after = e.table.ids
    assert after == [c.id for c in e.plan.candidates] and after != before
    assert "fw0.add+layer_norm.0" in before and "fw0.add+layer_norm.0" not in after
    assert set(e.checkboxes) == set(after)
    assert set(e.graph.data_by_graph[target.graph].candidates) == {c.id for c in e.plan.candidates
                                                                   if c.graph == target.graph}
    summary = text(e.summary_html.value)
    assert "rule: never_fuse" in summary
    e.select_all_button.click()
    assert all(e.checkboxes[c.id].value for c in e.plan.selected)
    for cid, _why in e.plan.skipped:
        assert f"skipped {cid}" in text(e.summary_html.value)


def test_the_snapshot_includes_the_diff(ex, tmp_path):
    page = open(ex.to_html(tmp_path / "mlp.html"), encoding="utf-8").read()
    assert "<h2>torch.compile (Inductor)</h2>" in page and "id='fl-inductor'" in page
    assert f"{len(ex.inductor_pane.diff.both)} groups both make" in page


def test_inductor_errors_stay_in_the_widget(zoo_model, zoo_capture, monkeypatch):
    import fusionlab.inductor as ind

    def broken(capture):
        raise ind.InductorUnavailable("this torch has no Inductor internals fusionlab knows")

    monkeypatch.setattr(ind, "inductor_decisions", broken)
    zm = zoo_model("mlp")
    e = explore(zm.model, *zm.inputs, capture=zoo_capture("mlp"))
    e.inductor_pane.toggle.value = True  # a click
    assert "failed" in e.inductor_pane.task.status.value and "no Inductor internals" in e.inductor_pane.task.status.value
    e.inductor_pane.like_button.click()
    assert "not compiled yet" in text(e.message.value)
