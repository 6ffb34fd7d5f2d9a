"""``Explorer.to_html(path)``: the explorer as one standalone HTML file.

The page opens in a browser with no kernel and no network: the graph widget's bundle
(``static/graph.js``, which carries Graphviz compiled to WebAssembly) is inlined, base64
encoded, and imported from a blob; ``static/snapshot.js`` stands in for the kernel (an
anywidget-style model answering the widget's clicks from data embedded in the page).

What the page holds (plain JSON, computed here):

- per graph, the views the browser can draw: the one the explorer showed, and for each
  closed module box in it the same view with that box opened (all of its inside). A
  snapshot opens one box at a time; the views are laid out in the page, as in the notebook;
- every candidate's Triton source (highlighted lines, and which lines compute each node),
  its check result where one was run; a click on a node or a cluster shows it;
- the plan summary (modeled), each selected kernel's source, and the profile (measured)
  with its plotly figure (plotly.js inlined) when one was run.

The selection is the plan's at the time of the snapshot: a cluster click shows that
candidate's kernel, it does not change the plan (there is no Python behind the page).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
from pathlib import Path

from .. import _env
from ..nodecost import fmt_bytes
from ..viz.graph_data import ancestors
from . import _html

STATIC = Path(__file__).parent / "static"
MAX_VIEWS = 80  # box views per graph kept in a snapshot (one per closed module box)


def graph_views(data, expanded, selected, limit: int = MAX_VIEWS) -> dict:
    """The views of one graph a snapshot can show: ``{"base": view, "boxes": {module: view}}``;
    a box's view is ``expanded`` with that module and everything inside it open."""
    def view(opened: set) -> dict:
        v = dict(data.view(opened, selected), expanded=sorted(opened))
        v.pop("layout", None)  # the selection of a snapshot never changes: no restyling
        return v

    expanded = set(expanded)
    base = view(expanded)
    boxes: dict[str, dict] = {}
    for item in base["items"].values():
        if item["type"] != "module" or len(boxes) >= limit:
            continue
        path = item["module"]
        inside = {p for p in data.modules if p == path or p.startswith(path + ".")}
        boxes[path] = view(expanded | set(ancestors(path)) | inside)
    return {"base": base, "boxes": boxes}


def kernel_entry(ex, cid: str) -> dict:
    """One candidate's kernel for the page: highlighted lines, node -> marked lines, check."""
    c = ex.plan.candidates.by_id(cid)
    head = {"id": cid, "graph": c.graph, "pattern": c.pattern, "kind": c.kind, "nodes": len(c.nodes),
            "kernels": c.kernels_unfused, "saves": fmt_bytes(c.bytes_saved),
            "selected": ex.plan.is_selected(cid), "zero": _html.zero_saving_reason(c)}
    try:
        k = ex.kernel(cid)
    except Exception as e:  # noqa: BLE001 - a candidate codegen refuses: say so in the page
        return dict(head, error=f"no kernel: {type(e).__name__}: {e}")
    src = k.source.source
    return dict(head, name=k.name, lines=_html.highlighted_lines(src),
                marks={n: _html.node_lines(src, n, k.name) for n in c.nodes},
                check=_html.check_html(k.check_result) if k.check_result is not None else "")


def snapshot_data(ex) -> dict:
    """Everything the page's script reads (JSON-able)."""
    g = ex.graph
    selected = [c.id for c in ex.plan.selected]
    graphs = {}
    for tag, data in g.data_by_graph.items():
        expanded = g.expanded if tag == g.graph else sorted(data.default_expanded())
        graphs[tag] = graph_views(data, expanded, selected)
    nodes = {}
    for cg in ex.capture.graphs:
        nodes[cg.tag] = {n: [i.op, i.module, i.source] for n, i in cg.nodes.items()}
    return {"graphs": graphs, "first": g.graph, "order": list(g.data_by_graph), "index": g.index,
            "selected": selected, "kernels": {c.id: kernel_entry(ex, c.id) for c in ex.plan.candidates},
            "nodes": nodes, "focus_candidate": g.focus_candidate, "focused": g.focused}


def _json_script(obj, elem_id: str) -> str:
    text = json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{elem_id}">{text}</script>'


def _plan_html(ex) -> str:
    rows = "".join(
        f"<tr><td>{'&#9745;' if ex.plan.is_selected(c.id) else '&#9744;'}</td>"
        f"<td><a href='#' data-cid='{html.escape(c.id, quote=True)}'><code>{html.escape(c.id)}</code></a></td>"
        f"<td>{c.kernels_unfused} &rarr; 1</td><td>{fmt_bytes(c.bytes_saved)}</td>"
        f"<td>{html.escape(', '.join(c.modules))}</td></tr>"
        for c in ex.plan.candidates)
    return (_html.summary_html(ex.plan.summary()) + ex.modeled_time_html()
            + "<details><summary>every candidate (click one: its kernel)</summary>"
            "<table class='fl-cands'><tr><th></th><th>candidate</th><th>kernels</th><th>saves (modeled)</th>"
            f"<th>modules</th></tr>{rows}</table></details>")


def _kernels_html(ex) -> str:
    if not ex.plan.selected:
        return _html.message("no candidates selected: no fused kernels in this plan")
    parts = []
    for c in ex.plan.selected:
        try:
            k = ex.kernel(c.id)
        except Exception as e:  # noqa: BLE001
            parts.append(_html.message(f"{c.id}: no kernel: {type(e).__name__}: {e}", "error"))
            continue
        check = (_html.check_html(k.check_result) if k.check_result is not None
                 else _html.message("not checked before this snapshot"))
        parts.append(f"<details class='fl-kernel'><summary><code>{html.escape(c.id)}</code>: "
                     f"<code>{html.escape(k.name)}</code>, {len(c.nodes)} nodes, saves "
                     f"{fmt_bytes(c.bytes_saved)} (modeled)</summary>{check}"
                     f"{_html.code_html(k.source.source, max_height=600)}</details>")
    return "".join(parts)


def _inductor_html(ex) -> str:
    """The fusionlab vs torch.compile diff and the measured values, where they were computed."""
    pane = ex.inductor_pane
    parts = []
    if pane.diff is not None:
        parts.append(f"<div id='fl-inductor'>{pane.diff_box.value}</div>")
    if pane.values is not None:
        parts.append(f"<div id='fl-measured'>{pane.values._repr_html_()}</div>")
    return "<h2>torch.compile (Inductor)</h2>" + "".join(parts) if parts else ""


def _profile_html(ex) -> str:
    res = ex.profile_result
    if res is None:
        return _html.message("no profile was run before this snapshot (ex.profile() measures one)")
    out = f"<div style='overflow-x:auto;font-size:12px'>{res._repr_html_()}</div>"
    try:
        fig = res.figure()
        out += fig.to_html(full_html=False, include_plotlyjs=True, config={"responsive": True})
    except Exception as e:  # noqa: BLE001 - no plotly: the table alone
        out += _html.message(f"(no figure: {e})")
    if ex.profile_pane.stale:
        out = _html.message("this profile was measured for an earlier selection (stale)", "error") + out
    return out


PAGE_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 12px 18px; color: #111827; }
h1 { font-size: 18px; margin: 4px 0; } h2 { font-size: 15px; margin: 18px 0 6px; }
.fl-row { display: flex; gap: 12px; align-items: flex-start; }
.fl-graph { width: 58%; min-width: 380px; }
.fl-pane { width: 42%; min-width: 320px; }
.fl-note { color: #6b7280; font-size: 12px; }
table { border-collapse: collapse; } td, th { padding: 1px 8px; font-size: 12px; text-align: left; }
.fl-kernel { margin: 4px 0; font-size: 13px; }
"""


def snapshot_html(ex) -> str:
    """The explorer as one standalone page (see the module docstring)."""
    cap = ex.capture
    bundle = base64.b64encode((STATIC / "graph.js").read_bytes()).decode("ascii")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    graphs = ", ".join(f"{g.tag} {len(g.nodes)} nodes" for g in cap.graphs)
    title = f"fusionlab explorer: {cap.model_name}"
    return "\n".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='fl-note'>A snapshot taken {when}: {html.escape(graphs)}; "
        f"{len(ex.plan.selected)} of {len(ex.plan.candidates)} candidates selected; kernels ran in "
        f"{html.escape(_env.executor_name())}. Opens without a kernel or network. The selection is "
        "fixed: click a node or a cluster to read its kernel, a module box to open it.</div>",
        "<div class='fl-row'><div class='fl-graph' id='fl-graph'></div>",
        "<div class='fl-pane' id='fl-pane'><div class='fl-note'>click a node or a candidate to see "
        "its kernel</div></div></div>",
        f"<h2>Plan</h2><div id='fl-plan'>{_plan_html(ex)}</div>",
        f"<h2>Selected kernels ({len(ex.plan.selected)})</h2><div id='fl-kernels'>{_kernels_html(ex)}</div>",
        f"<h2>Profile (measured)</h2><div id='fl-profile'>{_profile_html(ex)}</div>",
        _inductor_html(ex),
        _json_script(snapshot_data(ex), "fl-data"),
        f'<script type="text/plain" id="fl-bundle">{bundle}</script>',
        f'<script type="module">\n{(STATIC / "snapshot.js").read_text()}\n</script>',
        "</body></html>",
    ])


def write_snapshot(ex, path) -> str:
    """Write :func:`snapshot_html` to ``path`` (a ``.html`` file); returns the path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"to_html needs a file path (e.g. 'explorer.html'), got the folder {path!r}")
    text = snapshot_html(ex)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
