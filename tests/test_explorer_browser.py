"""The explorer end to end, as a new user meets it: JupyterLab on localhost, headless
Chromium driven by Playwright, no ``dot`` binary on the PATH.

The test writes a notebook that opens ``fusionlab.explore("gpt2-block")``, runs it through
JupyterLab's UI, then clicks as a user would: a node (its candidate's Triton source appears,
the node's line marked), a cluster (the selection changes in the graph and in the plan
summary), "collapse all" and a module box (the block opens again). Screenshots go to
$FUSIONLAB_SCREENSHOTS (default: the test's tmp dir); with FUSIONLAB_UPDATE_DOCS=1 the
explorer's screenshot is also copied to docs/explorer.png (the README's picture).

Skips, saying why, where Chromium (/usr/bin/chromium; $FUSIONLAB_CHROMIUM), playwright or
JupyterLab is missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fusionlab.testing import browser as fb

ROOT = fb.ROOT

pytest.importorskip("anywidget", reason="the explorer's graph needs anywidget (pip install anywidget)")
if fb.missing(lab=True):
    pytest.skip(fb.missing(lab=True), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CELLS = [
    "import fusionlab  # first: Triton runs in its interpreter where there is no GPU\n"
    "ex = fusionlab.explore('gpt2-block')\nex",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on localhost with a notebook that opens the explorer."""
    root = tmp_path_factory.mktemp("lab")
    with fb.jupyter_lab(root, {"explorer.ipynb": CELLS}) as url:
        yield url, root


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    url, _root = lab
    with fb.chromium(profile_dir=str(tmp_path_factory.mktemp("chromium-profile"))) as ctx:
        pg = fb.offline_page(ctx)  # offline: nothing but the local server may be reached
        pg.goto(f"{url}/lab/tree/explorer.ipynb?reset")
        yield pg


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = Path(os.environ.get("FUSIONLAB_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _summary(page) -> str:
    return page.locator(".jp-OutputArea-output").filter(has_text="Plan summary").first.inner_text()


def test_explorer_in_jupyterlab(page, shots, zoo_candidates):
    members = {c.id: c.nodes for c in zoo_candidates("gpt2-block")}  # the same capture, here
    try:
        _walk_through(page, shots, members)
    except Exception:
        page.screenshot(path=str(shots / "explorer_failure.png"), full_page=True)
        raise


def _walk_through(page, shots, members):
    # run the notebook through the UI: the explorer appears with its graph drawn
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    fb.run_cell(page, 0)
    canvas = page.locator("[data-role=canvas]")
    canvas.locator("svg g.cluster").first.wait_for(timeout=int(os.environ.get("FUSIONLAB_LAB_TIMEOUT", "240")) * 1000)
    found = re.search(r"0 of (\d+) candidates selected", _summary(page))
    assert found, _summary(page)
    total = found.group(1)
    page.screenshot(path=str(shots / "explorer_opened.png"), full_page=True)

    # click a node inside a candidate: the kernel pane shows that candidate's Triton source
    # (Graphviz's SVG is flat: a cluster's nodes are its siblings, found by the candidate's members)
    cid = canvas.locator("g.cluster[id^='c:']").first.get_attribute("id")[2:]
    node_id = next(n for n in members[cid] if canvas.locator(f"g.node[id='{n}']").count())
    canvas.locator(f"g.node[id='{node_id}']").click()
    kernel = page.locator(".jp-OutputArea-output").filter(has_text="@triton.jit").first
    kernel.wait_for(timeout=60_000)
    pane = kernel.inner_text()
    assert cid in pane and "@triton.jit" in pane
    marked = kernel.locator("[data-mark]").first
    assert node_id in marked.inner_text()  # the line computing the node, in the kernel
    page.screenshot(path=str(shots / "explorer_focused.png"), full_page=True)

    # click that candidate's cluster: selected, in the graph and in the plan summary
    canvas.locator(f"g.cluster[id='c:{cid}'] > text").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')].some("
        f"e => e.innerText.includes('1 of {total} candidates selected'))", timeout=60_000)
    canvas.locator(f"g.cluster[id='c:{cid}'] text", has_text=f"[x] {cid}").first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "explorer_selected.png"), full_page=True)

    # the candidate list (one widget) follows: that row is checked; a click on another row's
    # checkbox selects it in the plan, a click on its id shows its kernel
    rows = page.locator("[data-role=candidate-list]")
    page.wait_for_function(
        f"() => document.querySelector('[data-role=candidate-list] input[data-cid=\"{cid}\"]').checked",
        timeout=60_000)
    other = next(c for c in members if c != cid and not set(members[c]) & set(members[cid]))
    rows.locator(f"input[data-cid='{other}']").check()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')].some("
        f"e => e.innerText.includes('2 of {total} candidates selected'))", timeout=60_000)
    rows.locator(f"[data-focus='{other}']").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')].some("
        f"e => e.innerText.includes('@triton.jit') && e.innerText.includes('{other}'))", timeout=60_000)
    if os.environ.get("FUSIONLAB_UPDATE_DOCS"):
        page.mouse.move(5, 5)  # no hover box over the focused node
        page.wait_for_timeout(200)
        box = page.locator(".jp-OutputArea-output").filter(has=canvas).first.bounding_box()
        bottom = min(box["y"] + box["height"], page.viewport_size["height"] - 30)
        page.screenshot(path=str(ROOT / "docs" / "explorer.png"),
                        clip={"x": box["x"], "y": box["y"], "width": box["width"], "height": bottom - box["y"]})

    # collapse all, then open the block box again with a click
    page.locator(".flg-bar button", has_text="collapse all").click()
    box = canvas.locator("g.node[id^='m:']").first
    box.wait_for(timeout=60_000)
    page.locator(".flg-bar button", has_text="fit").click()  # the list's focus click zoomed in
    n_closed = canvas.locator("g.node").count()
    box.click()
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-role=canvas] g.node').length > {n_closed}",
        timeout=60_000)
    page.screenshot(path=str(shots / "explorer_expanded.png"), full_page=True)

    # torch.compile's kernels over the graph: compiled in the background, then each op's
    # label names its Inductor kernel
    page.locator("button", has_text="torch.compile's kernels").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-role=canvas] g.node text')].some(t => t.textContent.startsWith('tc: '))",
        timeout=300_000)
    page.screenshot(path=str(shots / "explorer_inductor.png"), full_page=True)
    assert not page.errors, page.errors
