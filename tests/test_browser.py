"""The graph widget end to end in a real browser (headless Chromium driven by Playwright).

A standalone page on localhost loads the bundle the package ships (static/graph.js) and
renders it with a small stand-in for anywidget's model. The stand-in's save_changes
crosses into Python (Playwright's expose_function) and applies the change to the real
GraphWidget with ``set_state``, the way a kernel comm would; the widget's state then goes
back to the page. So a click runs the real validation (plan.select) and the real
collapsed view, and the test reads the state on both sides.

Skips where Chromium (/usr/bin/chromium, Debian's package) or playwright is missing.
Screenshots go to $FUSIONLAB_SCREENSHOTS (default: the test's tmp dir).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FUSIONLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

pytest.importorskip("anywidget", reason="the graph widget needs anywidget (pip install anywidget)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from fusionlab import FusionPlan, capture, zoo  # noqa: E402
from fusionlab.widgets.graph import STATIC, GraphWidget  # noqa: E402

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>fusionlab graph</title></head>
<body style="margin:8px"><div id="root"></div><script type="module">
class Model {
  constructor(state) { this.state = state; this.handlers = {}; this.dirty = {}; }
  get(k) { return this.state[k]; }
  set(k, v) { this.state[k] = v; this.dirty[k] = v; this.emit("change:" + k); }
  on(ev, cb) { (this.handlers[ev] ||= []).push(cb); }
  off() {}
  send() {}
  emit(ev) { for (const cb of this.handlers[ev] || []) cb(); }
  async save_changes() {
    const d = this.dirty; this.dirty = {};
    this.apply(JSON.parse(await window.py_sync(JSON.stringify(d))));
  }
  apply(s) {
    for (const [k, v] of Object.entries(s)) {
      if (JSON.stringify(this.state[k]) !== JSON.stringify(v)) { this.state[k] = v; this.emit("change:" + k); }
    }
  }
}
const model = new Model(JSON.parse(await window.py_state()));
window.model = model;
const mod = await import("./graph.js");
mod.default.render({ model, el: document.getElementById("root") });
</script></body></html>"""


def _state(w) -> dict:
    return {k: v for k, v in w.get_state().items() if not k.startswith("_") and k not in ("layout", "tabbable", "tooltip")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    shutil.copy(STATIC / "graph.js", root / "graph.js")
    (root / "index.html").write_text(PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 900})
        yield ctx
        ctx.close()


@pytest.fixture
def shots(tmp_path):
    d = Path(os.environ.get("FUSIONLAB_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def open_widget(browser, url, w):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1") else r.abort())

    def py_sync(changes: str) -> str:
        w.set_state(json.loads(changes))
        return json.dumps(_state(w))

    page.expose_function("py_sync", py_sync)
    page.expose_function("py_state", lambda: json.dumps(_state(w)))
    page.goto(url)
    wait_drawn(page)
    return page, errors


def wait_drawn(page, timeout=120_000):
    """Until the SVG on the page is the layout of the model's current view."""
    page.wait_for_function(
        "() => { const c = document.querySelector('[data-role=canvas]');"
        " return c && c.querySelector('svg') && window.model &&"
        " c.drawnDot === window.model.get('view').dot; }", timeout=timeout)
    page.wait_for_timeout(50)


def settle(page, predicate: str, timeout=60_000):
    page.wait_for_function(predicate, timeout=timeout)
    wait_drawn(page)


def test_click_select_focus_expand_gpt2_tiny(browser, served, shots):
    zm = zoo.get("gpt2-tiny")
    plan = FusionPlan(capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))
    w = GraphWidget(plan)
    assert any(v["type"] == "module" for v in w.view["items"].values()), "a large graph opens collapsed"
    page, errors = open_widget(browser, served, w)
    page.screenshot(path=str(shots / "graph_collapsed.png"))

    # click a module box: it opens (the real widget recomputes the view)
    box = next(k for k, v in w.view["items"].items() if v["type"] == "module" and v["candidates"])
    path = w.view["items"][box]["module"]
    page.locator(f'g.node[id="{box}"]').click()
    settle(page, f"() => window.model.get('expanded').includes({json.dumps(path)})")
    assert path in w.expanded and box not in w.view["items"]
    page.screenshot(path=str(shots / "graph_expanded.png"))

    # click a node inside a candidate: focuses it and its candidate (and zooms to it)
    cid = next(iter(w.view["clusters"]))
    node = w.view["clusters"][cid]["members"][0]
    page.locator(f'g.node[id="{node}"]').click()
    settle(page, f"() => window.model.get('focus_candidate') == {json.dumps(cid)}")
    assert w.focused == f"{w.graph}:{node}"

    page.screenshot(path=str(shots / "graph_focused.png"))
    # click that candidate's cluster (its label): selected in the plan
    page.locator(f'g.cluster[id="c:{cid}"] > text').first.click()
    settle(page, f"() => window.model.get('selected').includes({json.dumps(cid)})")
    assert plan.is_selected(cid) and w.view["clusters"][cid]["selected"]
    # a selection change restyles the drawing in place (no new layout), label and colour
    canvas = page.locator("[data-role=canvas]")
    assert int(canvas.get_attribute("data-restyled") or 0) >= 1
    assert page.locator(f'g.cluster[id="c:{cid}"] > text').first.text_content().startswith(f"[x] {cid}")
    assert page.locator(f'g.cluster[id="c:{cid}"] > polygon').first.get_attribute("stroke") == "#dc2626"
    page.screenshot(path=str(shots / "graph_selected.png"))

    # hover shows the facts of a node outside every candidate, with its why_not reason
    lone = next((k for k, v in w.view["items"].items() if v["type"] == "op" and v["why_not"]), None)
    if lone:
        page.locator(f'g.node[id="{lone}"]').hover()
        tip = page.locator(".flg-tip")
        assert "not fused:" in tip.inner_text() and w.view["items"][lone]["op"] in tip.inner_text()
        page.screenshot(path=str(shots / "graph_hover.png"))

    # code changes the state: the page follows
    w.collapse()
    page.evaluate("s => window.model.apply(JSON.parse(s))", json.dumps(_state(w)))
    wait_drawn(page)
    assert page.locator("g.node").count() == len(w.view["items"])

    # search finds a module and opens it; the other graph is a tab away
    page.fill("[data-role=search]", path)
    page.keyboard.press("Enter")
    settle(page, f"() => window.model.get('expanded').includes({json.dumps(path)})")
    page.locator('button[data-graph="bw0"]').click()
    settle(page, "() => window.model.get('view').graph == 'bw0'")
    page.screenshot(path=str(shots / "graph_backward.png"))
    assert not errors, errors


def test_refusal_shows_message(browser, served, shots):
    zm = zoo.get("gpt2-block")
    plan = FusionPlan(zoo_capture := capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))
    assert zoo_capture.graphs
    w = GraphWidget(plan)
    page, errors = open_widget(browser, served, w)
    # a selection the plan refuses, made from the page: the state goes back, the message shows
    page.evaluate("() => { window.model.set('selected', ['fw0.no_such_candidate']); window.model.save_changes(); }")
    settle(page, "() => window.model.get('message').startsWith('refused')")
    assert page.locator("[data-role=message]").inner_text().startswith("refused: no candidate matches")
    assert w.selected == [] and plan.selected == []
    page.screenshot(path=str(shots / "graph_refused.png"))
    assert not errors, errors


@pytest.mark.slow
def test_gpt2_12l_training_step_opens_and_stays_responsive(browser, served, shots):
    """About 2,900 nodes: opens as one box per block; opening a block lays out one level."""
    zm = zoo.get("gpt2-12l")
    plan = FusionPlan(capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))
    w = GraphWidget(plan)
    assert sum(len(g.nodes) for g in plan.capture.graphs) > 2500
    page, errors = open_widget(browser, served, w)
    blocks = [k for k, v in w.view["items"].items() if v["type"] == "module" and ".h." in v["module"]]
    assert len(blocks) == 12 and page.locator("g.node").count() == len(w.view["items"])
    page.screenshot(path=str(shots / "gpt2_12l_collapsed.png"))
    timings = {"open": page.locator("[data-role=canvas]").get_attribute("data-ms")}
    page.locator(f'g.node[id="{blocks[5]}"]').click()
    settle(page, f"() => window.model.get('expanded').includes({json.dumps(blocks[5][2:])})")
    timings["expand"] = page.locator("[data-role=canvas]").get_attribute("data-ms")
    page.locator('button[data-graph="bw0"]').click()
    settle(page, "() => window.model.get('view').graph == 'bw0'")
    timings["backward"] = page.locator("[data-role=canvas]").get_attribute("data-ms")
    page.screenshot(path=str(shots / "gpt2_12l_backward.png"))
    print("gpt2-12l layout ms (Graphviz wasm, this machine):", timings)
    assert not errors, errors
