"""``Explorer.to_html``: one standalone page, tested as a file and in a real browser.

The file: written, self-contained (no script or stylesheet from the network), holding
the views, every candidate's kernel, the plan and the profile. The browser (headless
Chromium from file://, every request but file:/blob:/data: refused): the graph is laid
out and drawn by the inlined bundle, a node click shows its candidate's kernel with the
node's line marked, a cluster click shows that kernel, a module box opens, the profile's
plotly figure draws. Screenshots go to $FUSIONLAB_SCREENSHOTS (default: a tmp dir).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")
from fusionlab.testing import browser as fb  # noqa: E402
from fusionlab.widgets import Explorer  # noqa: E402

SRC = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*['\"]?([^'\" >]+)", re.I)


def page_data(text: str) -> dict:
    raw = re.search(r'<script type="application/json" id="fl-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(raw)


@pytest.fixture(scope="module")
def gpt2(zoo_capture, tmp_path_factory):
    ex = Explorer(zoo_capture("gpt2-tiny"))
    ex.select("softmax")
    cid = ex.plan.selected[0].id
    ex.check(cid)
    path = ex.to_html(tmp_path_factory.mktemp("snap") / "gpt2.html")
    return ex, Path(path)


@pytest.fixture(scope="module")
def profiled(zoo_model, zoo_capture, tmp_path_factory):
    zm = zoo_model("mlp")
    ex = Explorer(zoo_capture("mlp"), model=zm.model, inputs=zm.inputs, loss_fn=zm.loss_fn)
    ex.select("gelu")
    ex.profile(steps=2, warmup=1, compare=("eager", "fusionlab"), executor="inductor-groups")
    assert ex.profile_result is not None
    return ex, Path(ex.to_html(tmp_path_factory.mktemp("snap") / "mlp.html"))


def test_snapshot_is_one_self_contained_file(gpt2):
    ex, path = gpt2
    text = path.read_text()
    refs = [m.group(3) for m in SRC.finditer(text)]
    assert not [r for r in refs if re.match(r"(https?:)?//", r)], refs
    data = page_data(text)
    # every candidate's kernel, the selected ones marked, lines that compute each node
    assert set(data["kernels"]) == {c.id for c in ex.plan.candidates}
    sel = ex.plan.selected[0]
    k = data["kernels"][sel.id]
    assert k["selected"] and "@triton.jit" in re.sub(r"<[^>]+>", "", "".join(k["lines"])) and k["check"]
    assert any(k["marks"][n] for n in sel.nodes)
    # each graph: the view shown, and one per closed module box with that box open
    assert set(data["graphs"]) == {g.tag for g in ex.capture.graphs}
    for views in data["graphs"].values():
        boxes = [v["module"] for v in views["base"]["items"].values() if v["type"] == "module"]
        assert sorted(views["boxes"]) == sorted(boxes)
        for module, view in views["boxes"].items():
            assert module in view["expanded"] and len(view["items"]) > len(views["base"]["items"]) - 1
    # the plan and the selected kernels' sources are in the page itself
    n = len(ex.plan.selected)
    assert f"{n} of {len(ex.plan.candidates)} candidates selected" in re.sub(r"<[^>]+>", "", text)
    assert ex.kernel(sel.id).name in text
    assert "no profile was run before this snapshot" in text


def test_snapshot_with_a_profile_inlines_plotly(profiled):
    ex, path = profiled
    text = path.read_text()
    assert not [r for r in (m.group(3) for m in SRC.finditer(text)) if re.match(r"(https?:)?//", r)]
    assert "Plotly.newPlot" in text and "Measured on cpu" in text
    assert "inductor-cpp (per group)" in text


def test_snapshot_to_a_folder_is_refused(gpt2, tmp_path):
    ex, _ = gpt2
    with pytest.raises(IsADirectoryError, match="needs a file path"):
        ex.to_html(tmp_path)


# ---------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    if fb.missing():
        pytest.skip(fb.missing())
    with fb.chromium(viewport=(1500, 1000)) as ctx:
        yield ctx


@pytest.fixture
def shots(tmp_path):
    d = Path(os.environ.get("FUSIONLAB_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def open_snapshot(browser, path):
    page = fb.offline_page(browser)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_function("() => { const c = document.querySelector('[data-role=canvas]');"
                           " return c && c.querySelector('svg g.node') && c.drawnDot === window.model.get('view').dot; }",
                           timeout=120_000)
    return page, requests


def test_snapshot_in_chromium_draws_and_clicks_show_kernels(browser, gpt2, shots):
    ex, path = gpt2
    page, requests = open_snapshot(browser, path)
    view = page.evaluate("() => window.model.get('view')")
    assert page.locator("[data-role=canvas] g.node").count() == len(view["items"])
    page.screenshot(path=str(shots / "snapshot_opened.png"))

    # a node inside a candidate (the focused one: in the middle of the view): its kernel,
    # the node's line marked, its model source line
    cid = view["focus_candidate"]
    assert cid == ex.graph.focus_candidate and cid in view["clusters"]
    node = view["clusters"][cid]["members"][0]
    page.locator(f"[data-role=canvas] g.node[id='{node}']").click()
    page.locator("#fl-pane [data-role=kernel-source]").wait_for(timeout=10_000)
    pane = page.locator("#fl-pane").inner_text()
    assert cid in pane and "@triton.jit" in pane and f"{view['graph']}:{node}" in pane
    assert node in page.locator("#fl-pane [data-mark]").first.inner_text()
    page.screenshot(path=str(shots / "snapshot_node.png"))

    # a cluster: shows that candidate's kernel; the selection stays the plan's
    page.locator(".flg-bar button", has_text="fit").click()  # the whole drawing in the box
    other = [c for c in view["clusters"] if c != cid][0]
    page.locator(f"[data-role=canvas] g.cluster[id='c:{other}'] > text").first.click()
    page.wait_for_function(f"() => document.querySelector('#fl-pane').innerText.includes({json.dumps(other)})")
    assert "selection is fixed" in page.locator("[data-role=message]").inner_text()
    assert page.evaluate("() => window.model.get('selected')") == [c.id for c in ex.plan.selected]

    # a module box opens (its own layout, in the page)
    box = next(k for k, v in view["items"].items() if v["type"] == "module")
    n_before = page.locator("[data-role=canvas] g.node").count()
    page.locator(f"[data-role=canvas] g.node[id='{box}']").click()
    page.wait_for_function(f"() => document.querySelectorAll('[data-role=canvas] g.node').length > {n_before}"
                           " && document.querySelector('[data-role=canvas]').drawnDot === window.model.get('view').dot",
                           timeout=60_000)
    assert box not in page.evaluate("() => window.model.get('view').items")
    page.screenshot(path=str(shots / "snapshot_expanded.png"))

    # the backward graph is a tab away; the plan's candidate list focuses a kernel too
    page.locator('button[data-graph="bw0"]').click()
    page.wait_for_function("() => window.model.get('view').graph === 'bw0' && "
                           "document.querySelector('[data-role=canvas]').drawnDot === window.model.get('view').dot",
                           timeout=60_000)
    bw = next(c.id for c in ex.plan.candidates if c.graph == "bw0")
    page.locator("#fl-plan details summary").click()
    page.locator(f"#fl-plan a[data-cid='{bw}']").click()
    page.wait_for_function(f"() => document.querySelector('#fl-pane').innerText.includes({json.dumps(bw)})")
    assert not [u for u in requests if not u.startswith(("file:", "blob:", "data:"))], requests
    assert not page.errors, page.errors


def test_snapshot_profile_figure_draws_offline(browser, profiled, shots):
    _ex, path = profiled
    page, requests = open_snapshot(browser, path)
    page.locator("#fl-profile .js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    page.locator("#fl-profile").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "snapshot_profile.png"), full_page=True)
    assert not [u for u in requests if not u.startswith(("file:", "blob:", "data:"))], requests
    assert not page.errors, page.errors
