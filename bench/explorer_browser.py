"""How fast the explorer answers, measured in a real browser (not a test: it prints numbers).

Starts JupyterLab headless on localhost and Debian's Chromium (Playwright, offline, no
``dot``; ``fusionlab.testing.browser``), runs a notebook through the UI and times, in the
page (``performance.now()`` and a ``MutationObserver`` over the notebook, no polling from
Python):

1. toggle: on the 2-layer GPT-2 (zoo ``gpt2-tiny``), a click on a candidate's cluster until
   every panel shows the new plan: the plan summary's count, the cluster's "[x]" in the
   redrawn graph, and the loop line's modeled step (goal < 200 ms);
2. open: the 12-layer GPT-2 (zoo ``gpt2-12l``, about 3,000 nodes) already captured: from
   the key press that runs ``fusionlab.explore(capture=cap)`` until its graph is drawn
   (goal < 3 s);
3. expand: a click on a block's box until the block's ops are drawn (goal < 300 ms).

Each is repeated ``--reps`` times (toggles alternate select/deselect); the table gives the
median, min and max. Everything runs on this machine's CPUs (the kernel and the browser
share them), measured wall time in the browser.

    python bench/explorer_browser.py [--reps 5] [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fusionlab.testing import browser as fb

CELLS = [
    "import fusionlab\nex = fusionlab.explore('gpt2-tiny')\nex",
    "from fusionlab import zoo\nzm12 = zoo.get('gpt2-12l')\n"
    "cap12 = fusionlab.capture(zm12.model, *zm12.inputs, loss_fn=zm12.loss_fn)\nlen(cap12.graphs)",
    "ex12 = fusionlab.explore(capture=cap12)\nex12",
]

# JS: click `target` (a selector inside cell `cell`), then time until `done()` holds
TIME_CLICK = """async ({cell, target, done}) => {
  const root = document.querySelectorAll('.jp-Notebook .jp-Cell')[cell];
  const test = new Function('root', 'return (' + done + ')');
  const el = root.querySelector(target);
  if (!el) return -2;
  return await new Promise((resolve) => {
    let t0 = 0;
    const obs = new MutationObserver(() => {
      if (test(root)) { obs.disconnect(); resolve(performance.now() - t0); }
    });
    obs.observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
    setTimeout(() => { obs.disconnect(); resolve(-1); }, 60000);
    t0 = performance.now();
    el.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  });
}"""

# JS: arm a timer started by the next Ctrl+Enter, stopped when `done()` holds in cell `cell`
ARM_KEY = """({cell, done}) => {
  window.__fl = {t0: 0, t1: 0};
  const test = new Function('root', 'return (' + done + ')');
  // the last Ctrl+Enter counts: run_cell resends one the kernel did not receive
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.ctrlKey && !window.__fl.t1) window.__fl.t0 = performance.now();
  }, {capture: true});
  const obs = new MutationObserver(() => {
    const root = document.querySelectorAll('.jp-Notebook .jp-Cell')[cell];
    if (window.__fl.t0 && root && test(root)) { window.__fl.t1 = performance.now(); obs.disconnect(); }
  });
  obs.observe(document.querySelector('.jp-Notebook'), {subtree: true, childList: true, attributes: true});
}"""

DRAWN = ("(() => { const c = root.querySelector('[data-role=canvas]'); "
         "return !!(c && c.dataset.ready && c.querySelector('svg g.node')); })()")


def summary_count(cell_root_js: str = "root") -> str:
    return f"(({cell_root_js}.innerText.match(/(\\d+) of \\d+ candidates selected/) || [])[1])"


def toggles(page, reps: int, shots: Path | None) -> list[float]:
    times = []
    canvas = page.locator(".jp-Notebook .jp-Cell").nth(0).locator("[data-role=canvas]")
    canvas.locator("svg g.cluster").first.wait_for(timeout=600_000)
    cid = canvas.locator("g.cluster[id^='c:']").first.get_attribute("id")[2:]
    for i in range(reps):
        root = "document.querySelectorAll('.jp-Notebook .jp-Cell')[0]"
        n = int(page.evaluate(f"() => {{ const root = {root}; return {summary_count()}; }}"))
        loop = page.evaluate(f"() => {root}.querySelector('[data-role=loop]').innerText")
        selecting = i % 2 == 0
        want = n + 1 if selecting else n - 1
        label = f"[x] {cid}"
        done = (f"{summary_count()} == '{want}' && "
                f"[...root.querySelectorAll('g.cluster text')].some(t => t.textContent.includes({json.dumps(label)}))"
                f" === {json.dumps(selecting)} && root.querySelector('[data-role=loop]').innerText !== {json.dumps(loop)}"
                " && root.querySelector('[data-role=canvas]').dataset.ready")
        target = f"g.cluster[id={json.dumps('c:' + cid)}] > text"
        t = page.evaluate(TIME_CLICK, {"cell": 0, "target": target, "done": done})
        if t < 0:
            raise RuntimeError(f"toggle {i} of {cid}: the panels did not update ({t})")
        times.append(t)
        page.wait_for_timeout(300)
    if shots:
        page.screenshot(path=str(shots / "bench_toggle.png"), full_page=True)
    return times


def open_and_expand(page, reps: int, shots: Path | None) -> tuple[list[float], list[float]]:
    opens, expands = [], []
    for i in range(reps):
        page.evaluate(ARM_KEY, {"cell": 2, "done": DRAWN if i == 0 else
                                f"{DRAWN} && root.querySelector('[data-role=canvas]').dataset.stamp !== 'old'"})
        if i:  # mark the drawing of the previous run so the new one is told apart
            page.evaluate("() => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[2]"
                          ".querySelector('[data-role=canvas]'); if (c) c.dataset.stamp = 'old'; }")
        fb.run_cell(page, 2)
        try:
            page.wait_for_function("() => window.__fl.t1 > 0", timeout=300_000)
        except Exception:
            if shots:
                page.screenshot(path=str(shots / "bench_failure.png"), full_page=True)
            raise
        opens.append(page.evaluate("() => window.__fl.t1 - window.__fl.t0"))
        print(f"gpt2-12l explorer drawn in {opens[-1]:.0f} ms", file=sys.stderr, flush=True)
        fb.wait_cell_done(page, 2)
        page.wait_for_timeout(500)
        block = "m:" + page.evaluate(
            "() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')[2].querySelectorAll("
            "'[data-role=canvas] g.node')].map(g => g.id).find(id => /\\.h\\.5$/.test(id)).slice(2)")
        n = page.evaluate("() => document.querySelectorAll('.jp-Notebook .jp-Cell')[2]"
                          ".querySelectorAll('[data-role=canvas] g.node').length")
        done = (f"root.querySelectorAll('[data-role=canvas] g.node').length > {n} && "
                f"!root.querySelector('[data-role=canvas] g.node[id={json.dumps(block)}]')")
        t = page.evaluate(TIME_CLICK, {"cell": 2, "target": f"[data-role=canvas] g.node[id={json.dumps(block)}]",
                                       "done": done})
        if t < 0:
            raise RuntimeError(f"expanding {block}: not drawn ({t})")
        expands.append(t)
        if shots and i == 0:
            page.screenshot(path=str(shots / "bench_gpt2_12l_expanded.png"), full_page=True)
    return opens, expands


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, default=None)
    args = ap.parse_args(argv)
    why = fb.missing(lab=True)
    if why:
        print(f"cannot run: {why}")
        return 2
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusionlab-bench-lab-") as root, \
            fb.jupyter_lab(Path(root), {"bench.ipynb": CELLS}) as url, fb.chromium() as ctx:
        page = fb.offline_page(ctx)
        page.goto(f"{url}/lab/tree/bench.ipynb?reset")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
        fb.wait_idle(page, 120_000)
        for i in (0, 1):
            fb.run_cell(page, i)
            fb.wait_cell_done(page, i)
            print(f"cell {i} ran ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        toggle = toggles(page, args.reps * 2, args.screenshots)
        opens, expands = open_and_expand(page, args.reps, args.screenshots)
        errors = list(page.errors)
    rows = [("toggle a candidate, gpt2-tiny (2 layers): panels updated", "< 200 ms", toggle),
            ("open gpt2-12l explorer after capture: graph drawn", "< 3000 ms", opens),
            ("expand a block, gpt2-12l: its ops drawn", "< 300 ms", expands)]
    print(f"\nexplorer in JupyterLab + headless Chromium, measured in the page (performance.now, "
          f"MutationObserver) on this machine's CPUs; {time.perf_counter() - started:.0f} s in all")
    print(f"{'what':58} {'goal':>10} {'median':>9} {'min':>9} {'max':>9} {'n':>3}")
    for what, goal, xs in rows:
        print(f"{what:58} {goal:>10} {statistics.median(xs):7.0f}ms {min(xs):7.0f}ms {max(xs):7.0f}ms {len(xs):3d}")
    if errors:
        print("page errors:", errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
