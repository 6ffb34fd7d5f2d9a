"""Draw one captured graph with graphviz: nodes by kind, fusion candidates as clusters.

``graph_dot`` builds a ``graphviz.Digraph`` (its ``.source`` needs no ``dot`` binary);
``graph_svg`` renders it when ``dot`` is installed; ``graph_html`` gives the SVG, or,
without ``dot``, an HTML list of the clusters with the DOT text underneath.

Large graphs stay readable: views (reshape, permute, expand, ...) outside candidates are
collapsed into dashed edges, and past ``max_nodes`` the drawing is cut with a note.
"""

from __future__ import annotations

import html
import re
import shutil

from ..nodecost import fmt_bytes

KIND_STYLE = {
    "pointwise": {"fillcolor": "#dbeafe", "color": "#2563eb"},
    "reduction": {"fillcolor": "#fde68a", "color": "#b45309"},
    "view": {"fillcolor": "#f3f4f6", "color": "#9ca3af", "style": "filled,dashed"},
    "getitem": {"fillcolor": "#f3f4f6", "color": "#9ca3af", "style": "filled,dashed"},
    "matmul": {"fillcolor": "#d1fae5", "color": "#047857"},
    "opaque": {"fillcolor": "#fee2e2", "color": "#b91c1c"},
    "placeholder": {"fillcolor": "#ffffff", "color": "#6b7280", "shape": "ellipse"},
    "output": {"fillcolor": "#ffffff", "color": "#6b7280", "shape": "ellipse"},
    "constant": {"fillcolor": "#ffffff", "color": "#6b7280", "shape": "ellipse"},
}
LEGEND = ("pointwise", "reduction", "view", "matmul", "opaque")
SELECTED = {"color": "#dc2626", "penwidth": "3", "style": "filled,bold", "fillcolor": "#fff7ed"}
UNSELECTED = {"color": "#6b7280", "penwidth": "1.2", "style": "dashed"}
AUTO_COLLAPSE = 150  # collapse views when a graph has more nodes than this


def short_op(op: str) -> str:
    """'aten.mul.Tensor' -> 'mul'; 'placeholder' stays."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] in ("aten", "prims") else op


def shape_text(info) -> str:
    if info.shape is None:
        return ""
    dt = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int64": "i64", "bool": "b8"}
    name = str(info.dtype).replace("torch.", "") if info.dtype is not None else ""
    return f"{dt.get(name, name)}[{'x'.join(map(str, info.shape))}]"


def _ids(selected) -> set[str]:
    return {getattr(s, "id", s) for s in (selected or ())}


def _layout(graph, candidates, max_nodes: int, collapse_views: bool | None):
    """(nodes to draw, edges (src, dst, dashed), owner of each node, note or '')."""
    nodes = list(graph.gm.graph.nodes)
    cands = [c for c in (candidates or ()) if c.graph == graph.tag]
    owner = {n: c.id for c in cands for n in c.nodes}
    if collapse_views is None:
        collapse_views = len(nodes) > min(AUTO_COLLAPSE, max_nodes)
    kind = {n.name: graph.nodes[n.name].kind for n in nodes}
    # the output node would pull an edge from every saved tensor: outputs get a double border
    hidden = {n.name for n in nodes if n.op == "output"}
    if collapse_views:
        hidden |= {n.name for n in nodes if kind[n.name] in ("view", "getitem") and n.name not in owner}

    def sources(n):
        """Drawn producers of `n`, looking through hidden views."""
        if n.name not in hidden:
            return {(n.name, False)}
        out = set()
        for a in n.all_input_nodes:
            out |= {(s, True) for s, _ in sources(a)}
        return out

    shown = [n for n in nodes if n.name not in hidden]
    note = ""
    if len(hidden) > 1:
        note = f"{len(hidden) - 1} view nodes collapsed into dashed edges"
    if len(shown) > max_nodes:
        note = (note + "; " if note else "") + (
            f"showing the first {max_nodes} of {len(shown)} nodes (max_nodes={max_nodes})"
        )
        shown = shown[:max_nodes]
    keep = {n.name for n in shown}
    edges = []
    for n in shown:
        seen = set()
        for a in n.all_input_nodes:
            for src, dashed in sources(a):
                if src in keep and src not in seen:
                    seen.add(src)
                    edges.append((src, n.name, dashed))
    return shown, edges, owner, note, cands


def graph_dot(capture_graph, candidates=None, selected=(), max_nodes: int = 400,
              collapse_views: bool | None = None):
    """A ``graphviz.Digraph`` of one ``CapturedGraph``.

    Nodes are labelled with their ATen op, name, dtype and shape and colored by kind;
    each candidate of this graph is a cluster, the ``selected`` ones (ids or Candidates)
    drawn bold red. ``collapse_views=None`` collapses views when the graph is large.
    """
    import graphviz

    graph = capture_graph
    shown, edges, owner, note, cands = _layout(graph, candidates, max_nodes, collapse_views)
    sel = _ids(selected)
    dot = graphviz.Digraph(name=graph.tag, comment=f"fusionlab graph {graph.tag}")
    dot.attr(rankdir="TB", fontname="Helvetica", fontsize="11", nodesep="0.25", ranksep="0.3")
    dot.attr("node", shape="box", style="filled,rounded", fontname="Helvetica", fontsize="10",
             margin="0.06,0.03", height="0.3")
    dot.attr("edge", color="#9ca3af", arrowsize="0.6")
    title = f"{graph.tag} ({graph.kind})"
    if note:
        title += f"\n{note}"
    dot.attr(label=title, labelloc="t")

    outputs = {a.name for n in graph.gm.graph.nodes if n.op == "output" for a in n.all_input_nodes}

    def add_node(g, n):
        info = graph.nodes[n.name]
        style = dict(KIND_STYLE.get(info.kind, KIND_STYLE["opaque"]))
        label = f"{short_op(info.op)}\n{n.name} {shape_text(info)}".strip()
        tip = repr(info) + (f"\n{info.source}" if info.source else "")
        if n.name in outputs:
            style["peripheries"] = "2"
            tip += "\n(an output of the graph)"
        g.node(n.name, label=label, tooltip=tip, **style)

    by_cand: dict[str, list] = {}
    for n in shown:
        if n.name in owner:
            by_cand.setdefault(owner[n.name], []).append(n)
        else:
            add_node(dot, n)
    for i, c in enumerate(cands):
        members = by_cand.get(c.id)
        if not members:
            continue
        with dot.subgraph(name=f"cluster_{i}") as sub:
            on = c.id in sel
            saved = fmt_bytes(c.bytes_saved)
            sub.attr(label=f"{'[x] ' if on else ''}{c.id}\n{c.kernels_unfused} kernels -> 1, "
                           f"saves {saved} (modeled)",
                     fontsize="10", fontcolor=SELECTED["color"] if on else "#374151",
                     tooltip=c.id, **(SELECTED if on else UNSELECTED))
            for n in members:
                add_node(sub, n)
    for src, dst, dashed in edges:
        dot.edge(src, dst, style="dashed" if dashed else "solid")
    return dot



def has_dot() -> bool:
    """Is graphviz's ``dot`` binary installed?"""
    return shutil.which("dot") is not None


def graph_svg(dot) -> str | None:
    """The SVG text of a Digraph (no XML prolog), or None when ``dot`` is missing or fails."""
    if not has_dot():
        return None
    try:
        svg = dot.pipe(format="svg", encoding="utf-8")
    except Exception:  # noqa: BLE001 - a broken dot install falls back to text
        return None
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def legend_html() -> str:
    chips = "".join(
        f'<span style="display:inline-block;margin-right:10px"><span style="display:inline-block;'
        f"width:12px;height:12px;vertical-align:middle;background:{KIND_STYLE[k]['fillcolor']};"
        f"border:1px solid {KIND_STYLE[k]['color']}\"></span> {k}</span>"
        for k in LEGEND
    )
    return (f'<div style="font-size:12px;margin:4px 0">{chips}<span style="color:{SELECTED["color"]}">'
            "&#9632; selected candidate</span>, dashed box: candidate not selected, double border: "
            "graph output (hover a node for its module and source line)</div>")


def graph_html(capture_graph, candidates=None, selected=(), max_nodes: int = 400,
               collapse_views: bool | None = None, max_height: str = "720px", fit: bool = True) -> str:
    """HTML for a notebook: the SVG drawing, or a list of clusters plus the DOT text without ``dot``.

    ``fit=True`` scales a drawing wider than the page down to its width (hover for details);
    ``fit=False`` keeps it at full size in a scrolled box.
    """
    dot = graph_dot(capture_graph, candidates, selected, max_nodes, collapse_views)
    svg = graph_svg(dot)
    if svg is not None:
        if fit:
            svg = re.sub(r'<svg width="[^"]*" height="[^"]*"',
                         '<svg style="max-width:100%;height:auto"', svg, count=1)
        return (legend_html() + f'<div style="overflow:auto;max-height:{max_height};'
                f'border:1px solid #e5e7eb">{svg}</div>')
    return legend_html() + fallback_html(capture_graph, candidates, selected, dot.source)


def fallback_html(graph, candidates, selected, dot_source: str) -> str:
    """Without ``dot``: each candidate's nodes as a list, then the DOT text to paste elsewhere."""
    sel = _ids(selected)
    items = []
    for c in candidates or ():
        if c.graph != graph.tag:
            continue
        mark = "&#9745;" if c.id in sel else "&#9744;"
        nodes = "".join(
            f"<li><code>{html.escape(repr(graph.nodes[n]))}</code></li>" for n in c.nodes
        )
        items.append(
            f'<li class="fl-cluster" data-candidate="{html.escape(c.id)}">{mark} '
            f"<b>{html.escape(c.id)}</b>: {c.kernels_unfused} kernels -> 1, saves "
            f"{fmt_bytes(c.bytes_saved)} (modeled)<ul>{nodes}</ul></li>"
        )
    body = "".join(items) or "<li>no candidates in this graph</li>"
    return (
        f"<p><i>Graphviz's <code>dot</code> is not installed, so {html.escape(graph.tag)} is shown "
        "as a list (apt-get install graphviz, or conda install graphviz, draws it).</i></p>"
        f"<ul>{body}</ul><details><summary>DOT source ({len(dot_source.splitlines())} lines)"
        f"</summary><pre style=\"max-height:400px;overflow:auto\">{html.escape(dot_source)}</pre></details>"
    )
