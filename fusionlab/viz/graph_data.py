"""The graph widget's data, as plain Python: nodes, edges, candidate clusters, module tree,
and the collapsed view of one graph that the browser lays out.

Nothing here imports a notebook package or needs a browser. ``GraphData.build`` reads one
``CapturedGraph`` and its candidates once; ``GraphData.view(expanded, selected)`` returns
what is visible: one box per collapsed module (with its candidate and selected counts),
the ops of expanded modules, edges between them, and candidates as clusters, plus the DOT
text that Graphviz (compiled to WebAssembly, in the widget) lays out. Only the visible
level is laid out, so a 3,000-node training step opens as a dozen boxes.

Views (reshape, permute, ...) outside every candidate are drawn as dashed edges, as in
``viz.graph``; placeholders without a module sit in the module of their first user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..nodecost import fmt_bytes
from .graph import KIND_STYLE, SELECTED, UNSELECTED, shape_text, short_op

OPEN_ALL = 150  # a graph with at most this many drawn nodes opens fully expanded
OPEN_LIMIT = 80  # otherwise modules open, largest first, while this many items show
BOX_STYLE = {"fillcolor": "#eef2ff", "color": "#4338ca"}
BOX_PREFIX = "m:"  # visible ids: op nodes by name, module boxes as "m:<path>"
# torch.compile's kernels overlaid: each op outlined in its Inductor kernel's colour (the
# colours cycle; the label names the kernel), a library call in black, no kernel dashed grey
INDUCTOR_COLORS = ("#0891b2", "#c026d3", "#ea580c", "#16a34a", "#4f46e5", "#db2777", "#65a30d", "#0d9488")
INDUCTOR_LIBRARY = "#111827"
INDUCTOR_NONE = "#9ca3af"


def inductor_text(row: dict | None) -> str:
    """Hover lines for one node of ``InductorDecisions.overlay()``: its kernel, recompute,
    why it has none, Inductor's refusals that involve it."""
    if not row:
        return "torch.compile: not compiled (Inductor could not compile this graph)"
    kernel, kind = row["kernel"], row["kind"]
    if kind == "no kernel":
        lines = [f"torch.compile: no kernel ({row.get('why_no_kernel') or 'computed inside another op'})"]
    else:
        lines = [f"torch.compile: {kernel} ({kind})"]
    if row.get("recomputed_in"):
        lines.append(f"  recomputed in {', '.join(row['recomputed_in'])}")
    reasons = row.get("reasons") or []
    lines += [f"  refused: {r}" for r in reasons[:4]]
    if len(reasons) > 4:
        lines.append(f"  ... {len(reasons) - 4} more refusals")
    return "\n".join(lines)


def ancestors(path: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']; '' -> []."""
    parts = path.split(".") if path else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]



def _q(s: str) -> str:
    """A DOT string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass
class NodeItem:
    """One FX node as the widget shows it (hover text included)."""

    name: str
    op: str
    kind: str
    shape: str
    nbytes: int
    module: str  # the module the node is drawn in (see GraphData.build)
    source: str
    candidate: str  # id of the candidate holding it, or ""
    why_not: str  # why it is in no candidate ("" when it is in one)
    output: bool  # an output of the graph
    hidden: bool  # a view outside every candidate, drawn as a dashed edge
    origin: str = ""  # the module the capture attributes it to

    def info(self) -> dict:
        return {"type": "op", "name": self.name, "op": self.op, "kind": self.kind, "shape": self.shape,
                "bytes": fmt_bytes(self.nbytes), "module": self.origin, "source": self.source,
                "candidate": self.candidate, "why_not": self.why_not, "output": self.output}


@dataclass
class GraphData:
    """Everything the widget draws of one captured graph, computed once."""

    tag: str
    kind: str
    nodes: dict[str, NodeItem]  # in graph order
    inputs: dict[str, list[str]]  # node -> its producers
    candidates: dict[str, dict]  # id -> {"pattern", "nodes", "kernels", "saves"}
    modules: dict[str, dict] = field(default_factory=dict)  # path -> {"children", "ops", "type"}

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, graph, candidates, show_views: bool = False) -> GraphData:
        cands = [c for c in (candidates or ()) if c.graph == graph.tag]
        owner = {n: c.id for c in cands for n in c.nodes}
        reason = getattr(candidates, "reason", lambda g, n: None)
        fx = list(graph.gm.graph.nodes)
        outputs = {a.name for n in fx if n.op == "output" for a in n.all_input_nodes}
        nodes: dict[str, NodeItem] = {}
        inputs: dict[str, list[str]] = {}
        for n in fx:
            info = graph.nodes[n.name]
            module = info.module
            if not module and info.kind in ("placeholder", "constant"):
                users = [u for u in n.users if u.op != "output"]
                module = graph.nodes[users[0].name].module if users else ""
            hidden = n.op == "output" or (
                not show_views and info.kind in ("view", "getitem") and n.name not in owner
            )
            why = "" if n.name in owner else (reason(graph.tag, n.name) or "")
            nodes[n.name] = NodeItem(
                n.name, info.op, info.kind, shape_text(info), info.nbytes, module, info.source,
                owner.get(n.name, ""), why, n.name in outputs, hidden, info.module,
            )
            inputs[n.name] = [a.name for a in n.all_input_nodes]
        # a candidate's member attributed to an outer module (a residual gradient add at the
        # top) is drawn with the module holding most of the candidate, so it folds with it
        for c in cands:
            counts: dict[str, int] = {}
            for n in c.nodes:
                counts[nodes[n].module] = counts.get(nodes[n].module, 0) + 1
            home = max(counts, key=lambda m: (counts[m], m.count(".")))
            for n in c.nodes:
                m = nodes[n].module
                if m != home and (not m or home.startswith(m + ".")):
                    nodes[n].module = home
        data = cls(graph.tag, graph.kind, nodes, inputs, {
            c.id: {"pattern": c.pattern, "nodes": list(c.nodes), "kernels": c.kernels_unfused,
                   "saves": fmt_bytes(c.bytes_saved)}
            for c in cands
        })
        data._build_modules(graph)
        return data

    def _build_modules(self, graph) -> None:
        mods: dict[str, dict] = {"": {"children": [], "ops": [], "type": ""}}
        for item in self.nodes.values():
            prev = ""
            for path in ancestors(item.module):
                if path not in mods:
                    mods[path] = {"children": [], "ops": [], "type": ""}
                    mods[prev]["children"].append(path)
                prev = path
            if not item.hidden:
                mods[item.module]["ops"].append(item.name)
            info = graph.nodes[item.name]
            if info.module == item.module and info.module_type and not mods[item.module]["type"]:
                mods[item.module]["type"] = info.module_type
        self.modules = mods
        self._drawn_in = {p: [] for p in mods}  # path -> drawn nodes in its subtree
        for item in self.nodes.values():
            if not item.hidden:
                for path in ancestors(item.module):
                    self._drawn_in[path].append(item.name)

    # ------------------------------------------------------------------ collapsing

    @property
    def drawn(self) -> list[str]:
        return [n for n, i in self.nodes.items() if not i.hidden]

    def rep(self, name: str, expanded) -> str:
        """The visible id standing for node `name`: itself, or its outermost collapsed module."""
        for path in ancestors(self.nodes[name].module):
            if path not in expanded:
                return BOX_PREFIX + path
        return name

    def count_visible(self, expanded, within: str = "") -> int:
        names = self._drawn_in[within] if within else self.drawn
        return len({self.rep(n, expanded) for n in names})

    def default_expanded(self, open_all: int = OPEN_ALL, limit: int = OPEN_LIMIT) -> set[str]:
        """Small graphs open fully; large ones open modules, largest first, while at most
        ``limit`` items are visible, and repeated blocks (``h.0``, ``h.1``, ...: numbered
        children of one module) stay closed: a 12-layer GPT-2 opens with one box per block."""
        every = {p for p in self.modules if p}
        if len(self.drawn) <= open_all:
            return every
        expanded: set[str] = set()
        count = self.count_visible(expanded)
        while True:
            boxes = {self.rep(n, expanded) for n in self.drawn} - set(self.nodes)
            grew = False
            for box in sorted(boxes, key=lambda b: -len(self._drawn_in[b[len(BOX_PREFIX):]])):
                path = box[len(BOX_PREFIX):]
                if self.is_block(path):
                    continue
                inside = self.count_visible(expanded | {path}, within=path)
                if count - 1 + inside <= limit:
                    expanded.add(path)
                    count += inside - 1
                    grew = True
            if not grew:
                return expanded

    def is_block(self, path: str) -> bool:
        """One of several numbered children of a module (a ModuleList's layers)."""
        parent, _, last = path.rpartition(".")
        kids = self.modules.get(parent, {}).get("children", [])
        return last.isdigit() and sum(k.rpartition(".")[2].isdigit() for k in kids) >= 2

    # ------------------------------------------------------------------ the view

    def edges(self, expanded) -> list[tuple[str, str, bool]]:
        """Edges between visible ids, (src, dst, dashed: passes through hidden views)."""
        memo: dict[str, set] = {}

        def sources(name: str) -> set:
            """Drawn producers of `name` (itself when drawn), looking through hidden views."""
            if not self.nodes[name].hidden:
                return {(name, False)}
            if name not in memo:
                memo[name] = set()
                out = set()
                for a in self.inputs[name]:
                    out |= {(s, True) for s, _ in sources(a)}
                memo[name] = out
            return memo[name]

        rep = {n: self.rep(n, expanded) for n in self.drawn}
        out: dict[tuple[str, str], bool] = {}
        for n in self.drawn:
            for a in self.inputs[n]:
                for src, dashed in sources(a):
                    key = (rep[src], rep[n])
                    if key[0] != key[1]:
                        out[key] = out.get(key, True) and dashed
        return [(a, b, d) for (a, b), d in out.items()]

    def view(self, expanded, selected=(), focus: str = "", focus_candidate: str = "",
             inductor: dict | None = None) -> dict:
        """What is visible with modules ``expanded`` open: items (hover info by visible id),
        clusters (candidate id -> label, selected, visible members), edges, and DOT text.
        ``inductor``: this graph's rows of ``InductorDecisions.overlay()`` to draw over it."""
        expanded = set(expanded)
        sel = set(selected)
        order: list[str] = []
        seen: set[str] = set()
        for n in self.drawn:
            r = self.rep(n, expanded)
            if r not in seen:
                seen.add(r)
                order.append(r)
        items: dict[str, dict] = {}
        for vid in order:
            if vid.startswith(BOX_PREFIX):
                items[vid] = self._box_info(vid[len(BOX_PREFIX):], sel)
            else:
                items[vid] = self.nodes[vid].info()
            if inductor is not None:
                items[vid]["inductor"] = self._inductor_info(vid, inductor)
        clusters: dict[str, dict] = {}
        for cid, c in self.candidates.items():
            members = [n for n in c["nodes"] if n in seen]
            if members:
                clusters[cid] = {"label": f"{'[x] ' if cid in sel else ''}{cid}\n{c['kernels']} kernels -> 1, "
                                 f"saves {c['saves']} (modeled)", "selected": cid in sel,
                                 "members": members, "partial": len(members) < len(c["nodes"]),
                                 "pattern": c["pattern"]}
        edges = self.edges(expanded)
        # the same drawing with no selection: where only that differs, the browser restyles
        # the drawing it has instead of laying it out again (focus is drawn by the browser)
        plain_items = {k: dict(v, selected=0) if v["type"] == "module" else v for k, v in items.items()}
        plain = {cid: dict(c, selected=False, label=c["label"].removeprefix("[x] ")) for cid, c in clusters.items()}
        colors = self._inductor_colors(inductor) if inductor is not None else None
        return {"graph": self.tag, "kind": self.kind, "items": items, "clusters": clusters,
                "edges": [list(e) for e in edges], "focus": focus, "focus_candidate": focus_candidate,
                "inductor": inductor is not None,
                "dot": self._dot(order, items, clusters, edges, inductor, colors),
                "layout": self._dot(order, plain_items, plain, edges, inductor, colors)}

    def _inductor_info(self, vid: str, inductor: dict) -> str:
        if not vid.startswith(BOX_PREFIX):
            return inductor_text(inductor.get(vid))
        kernels = {inductor[n]["kernel"] for n in self._drawn_in[vid[len(BOX_PREFIX):]]
                   if n in inductor and inductor[n]["kind"] not in ("no kernel", "library call")}
        return f"torch.compile: {len(kernels)} generated kernels here"

    def _inductor_colors(self, inductor: dict) -> dict[str, str]:
        """Inductor kernel id -> outline colour, cycling in graph order."""
        out: dict[str, str] = {}
        for n in self.nodes:
            row = inductor.get(n)
            if row and row["kind"] not in ("no kernel", "library call") and row["kernel"] not in out:
                out[row["kernel"]] = INDUCTOR_COLORS[len(out) % len(INDUCTOR_COLORS)]
        return out

    def _box_info(self, path: str, sel: set) -> dict:
        inside = set(self._drawn_in[path])
        cands = [cid for cid, c in self.candidates.items() if any(n in inside for n in c["nodes"])]
        return {"type": "module", "module": path, "module_type": self.modules[path]["type"],
                "ops": len(inside), "candidates": len(cands),
                "selected": sum(1 for c in cands if c in sel)}

    def _dot(self, order, items, clusters, edges, inductor=None, colors=None) -> str:
        """The DOT text; the focus is not in it (the browser marks it on the drawing, so a
        focus change needs no new layout)."""
        lines = [f"digraph {_q(self.tag)} {{",
                 '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.3];',
                 '  node [shape=box, style="filled,rounded", fontname="Helvetica", fontsize=10, '
                 'margin="0.06,0.03", height=0.3];',
                 '  edge [color="#9ca3af", arrowsize=0.6];']

        def attrs(d: dict) -> str:
            return ", ".join(f"{k}={_q(str(v))}" for k, v in d.items())

        def node_line(vid: str) -> str:
            it = items[vid]
            if it["type"] == "module":
                short = it["module"].rsplit(".", 1)[-1] if "." in it["module"] else it["module"]
                label = f"{it['module']}\n{it['module_type'] or short}: {it['ops']} ops"
                label += f"\n{it['candidates']} candidates, {it['selected']} selected"
                style = dict(BOX_STYLE, shape="box", style="filled,bold", penwidth="1.5")
                if it["selected"]:
                    style["color"] = SELECTED["color"]
            else:
                node = self.nodes[vid]
                style = dict(KIND_STYLE.get(node.kind, KIND_STYLE["opaque"]))
                label = f"{short_op(node.op)}\n{vid} {node.shape}".strip()
                if node.output:
                    style["peripheries"] = "2"
                if inductor is not None:
                    style.update(self._inductor_style(inductor.get(vid), colors))
                    label += "\n" + style.pop("label")
            return f"    {_q(vid)} [{attrs(dict(style, label=label, id=vid))}];"

        in_cluster = {n: cid for cid, c in clusters.items() for n in c["members"]}
        for vid in order:
            if vid not in in_cluster:
                lines.append(node_line(vid))
        for i, (cid, c) in enumerate(clusters.items()):
            style = dict(SELECTED if c["selected"] else UNSELECTED)
            lines.append(f"  subgraph cluster_{i} {{")
            lines.append(f"    graph [{attrs(dict(style, label=c['label'], id='c:' + cid, fontsize='10'))}];")
            lines += [node_line(n) for n in c["members"]]
            lines.append("  }")
        for a, b, dashed in edges:
            lines.append(f"  {_q(a)} -> {_q(b)}{' [style=dashed]' if dashed else ''};")
        lines.append("}")
        return "\n".join(lines)

    @staticmethod
    def _inductor_style(row: dict | None, colors: dict) -> dict:
        """A node's outline and last label line under the torch.compile overlay."""
        if not row:
            return {"color": INDUCTOR_NONE, "style": "filled,dashed", "label": "tc: not compiled"}
        if row["kind"] == "no kernel":
            return {"color": INDUCTOR_NONE, "style": "filled,dashed", "penwidth": "1.5", "label": "tc: no kernel"}
        if row["kind"] == "library call":
            return {"color": INDUCTOR_LIBRARY, "penwidth": "2.5", "label": f"tc: {row['kernel']} (library)"}
        return {"color": colors.get(row["kernel"], INDUCTOR_COLORS[0]), "penwidth": "3",
                "label": f"tc: {row['kernel']}"}

    def search_index(self) -> list[list[str]]:
        """[key, what, module] rows the search box filters: nodes, modules, candidates."""
        rows = [[n, short_op(i.op), i.module] for n, i in self.nodes.items() if i.kind != "output"]
        rows += [[p, "module", p] for p in self.modules if p]
        rows += [[cid, "candidate", c["pattern"]] for cid, c in self.candidates.items()]
        return rows
