"""GraphWidget: an interactive, offline graph view of a capture, bound to a FusionPlan.

An anywidget whose JavaScript and Graphviz (compiled to WebAssembly) ship inside the
package (``static/graph.js``): nothing is fetched at run time and no ``dot`` binary is
needed. Python computes what is visible (``viz.graph_data``); the browser lays it out,
draws it, pans and zooms.

State, all traitlets, synced both ways (code changes redraw the view, clicks change the state):

- ``graph``: the tag shown ("fw0", "bw0"); ``graphs``: the tags there are
- ``selected``: candidate ids; kept equal to ``plan.selected``. A change the plan refuses
  (``PlanError``) is put back and its message shown in ``message``
- ``expanded``: open module paths; a click on a module box opens it
- ``focused``: "fw0:addmm_3" (a node) or ""; ``focus_candidate``: the candidate holding
  the focused node, or the candidate focused directly
- ``view``: what the browser draws (items, clusters, edges, DOT), recomputed from the above
- ``show_inductor``: draw torch.compile's kernels over the graph (``set_inductor(overlay)``
  gives them: ``InductorDecisions.overlay()``): each op outlined in its Inductor kernel's
  colour with the kernel named in its label, its reasons (no kernel, refusals) on hover

>>> w = GraphWidget(plan)        # or GraphWidget(capture)
>>> w.select("softmax"); w.focus("fw0.layer_norm.0"); w.expand("h.0")
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets as t

from ..plan import FusionPlan, PlanError
from ..viz.graph_data import GraphData, ancestors

STATIC = Path(__file__).parent / "static"


class GraphWidget(anywidget.AnyWidget):
    _esm = STATIC / "graph.js"

    graph = t.Unicode("").tag(sync=True)
    graphs = t.List(t.Unicode()).tag(sync=True)
    selected = t.List(t.Unicode()).tag(sync=True)
    expanded = t.List(t.Unicode()).tag(sync=True)
    focused = t.Unicode("").tag(sync=True)
    focus_candidate = t.Unicode("").tag(sync=True)
    message = t.Unicode("").tag(sync=True)
    view = t.Dict().tag(sync=True)
    index = t.Dict().tag(sync=True)  # graph tag -> search rows [key, what, module]
    height = t.Unicode("640px").tag(sync=True)
    show_inductor = t.Bool(False).tag(sync=True)

    def __init__(self, plan, graph: str | None = None, show_views: bool = False, **kwargs):
        if not isinstance(plan, FusionPlan):
            plan = FusionPlan(plan)
        self.plan = plan
        self._show_views = show_views
        self._data = {g.tag: GraphData.build(g, plan.candidates, show_views) for g in plan.capture.graphs}
        if not self._data:
            raise ValueError("the capture has no graphs to draw")
        first = graph or next(iter(self._data))
        if first not in self._data:
            raise KeyError(f"no graph {first!r}; graphs are {list(self._data)}")
        self._busy = False
        self.inductor: dict | None = None  # InductorDecisions.overlay(), once computed
        super().__init__(graph=first, graphs=list(self._data),
                         selected=[c.id for c in plan.selected],
                         expanded=sorted(self._data[first].default_expanded()),
                         index={tag: d.search_index() for tag, d in self._data.items()}, **kwargs)
        self.observe(self._on_selected, "selected")
        self.observe(self._on_graph, "graph")
        self.observe(self._on_focused, "focused")
        self.observe(self._on_focus_candidate, "focus_candidate")
        self.observe(self._redraw, "expanded")
        self.observe(self._redraw, "show_inductor")
        self._redraw()

    # ------------------------------------------------------------------ scripting

    @property
    def data(self) -> GraphData:
        """The plain data of the graph shown."""
        return self._data[self.graph]

    @property
    def data_by_graph(self) -> dict[str, GraphData]:
        """The plain data of every graph, by tag."""
        return self._data

    def select(self, *keys) -> GraphWidget:
        """``plan.select(*keys)``; a refusal is shown in ``message`` and raised."""
        return self._apply(self.plan.select, keys)

    def deselect(self, *keys) -> GraphWidget:
        return self._apply(self.plan.deselect, keys)

    def toggle(self, cid: str) -> GraphWidget:
        """What a click on a candidate's cluster does."""
        return self.deselect(cid) if self.plan.is_selected(cid) else self.select(cid)

    def _apply(self, fn, keys) -> GraphWidget:
        try:
            fn(*keys)
        except PlanError as e:
            self.message = f"refused: {e}"
            raise
        self.message = ""
        self.refresh()
        return self

    def refresh(self) -> GraphWidget:
        """Re-read the plan (after it was changed elsewhere) and redraw."""
        ids = [c.id for c in self.plan.selected]
        if ids != self.selected:
            self._busy = True
            try:
                self.selected = ids
            finally:
                self._busy = False
        self._redraw()
        return self

    def expand(self, *modules: str) -> GraphWidget:
        """Open modules (and the modules around them); ``expand()`` opens everything."""
        paths = set(self.expanded)
        for m in modules or [p for p in self.data.modules if p]:
            if m not in self.data.modules:
                raise KeyError(f"no module {m!r} in {self.graph}")
            paths |= set(ancestors(m))
        self.expanded = sorted(paths)
        return self

    def collapse(self, *modules: str) -> GraphWidget:
        """Close modules (and everything inside them); ``collapse()`` closes all."""
        if not modules:
            self.expanded = []
            return self
        self.expanded = sorted(p for p in self.expanded
                               if not any(p == m or p.startswith(m + ".") for m in modules))
        return self

    def set_candidates(self, candidates) -> GraphWidget:
        """Rebuild the clusters from new candidates (a rule changed the plan's); open modules
        that still exist stay open."""
        show_views = self._show_views
        self._data = {g.tag: GraphData.build(g, candidates, show_views) for g in self.plan.capture.graphs}
        self.index = {tag: d.search_index() for tag, d in self._data.items()}
        if self.focus_candidate and self.focus_candidate not in self.plan._by_id:
            self.focus_candidate = ""
        return self.refresh()

    def set_inductor(self, overlay: dict | None) -> GraphWidget:
        """Inductor's kernels per graph and node (``InductorDecisions.overlay()``); drawn
        while ``show_inductor`` is set."""
        self.inductor = overlay
        if self.show_inductor:
            self._redraw()
        return self

    def show(self, graph: str) -> GraphWidget:
        self.graph = graph
        return self

    def focus(self, key: str) -> GraphWidget:
        """Focus a candidate id, a node ("fw0:addmm_3", "fw0.addmm_3" or a name in the graph
        shown) or a module path: switch to its graph, open its modules, highlight it."""
        if key in self.plan._by_id:
            self.focused = ""
            self.focus_candidate = key  # _on_focus_candidate opens its modules
            return self
        tag, name = self._node_key(key)
        if name is None:
            if key in self.data.modules and key:
                self.expand(key)
                self.focused, self.focus_candidate = "", ""
                return self
            raise KeyError(f"no candidate, node or module {key!r}")
        self.focused = f"{tag}:{name}"
        return self

    def _node_key(self, key: str):
        for sep in (":", "."):
            tag, _, name = key.partition(sep)
            if tag in self._data and name in self._data[tag].nodes:
                return tag, name
        if key in self.data.nodes:
            return self.graph, key
        for tag, d in self._data.items():
            if key in d.nodes:
                return tag, key
        return None, None

    def _goto(self, tag: str) -> None:
        if tag != self.graph:
            self.graph = tag

    # ------------------------------------------------------------------ observers

    def _on_selected(self, change) -> None:
        if self._busy:
            return
        want, have = set(change["new"]), {c.id for c in self.plan.selected}
        added = [c for c in change["new"] if c not in have]
        removed = [c for c in have if c not in want]
        try:
            if added:
                self.plan.select(*added)
            if removed:
                self.plan.deselect(*removed)
            self.message = ""
        except PlanError as e:
            self.message = f"refused: {e}"
        self.refresh()

    def _on_graph(self, change) -> None:
        if change["new"] not in self._data:
            self.graph = change["old"]
            self.message = f"no graph {change['new']!r}"
            return
        self._redraw()

    def _on_focused(self, change) -> None:
        key = change["new"]
        if not key:
            self._redraw()
            return
        tag, name = self._node_key(key)
        if name is None:
            self.message = f"no node {key!r}"
            return
        self._goto(tag)
        item = self._data[tag].nodes[name]
        if f"{tag}:{name}" != key:
            self.focused = f"{tag}:{name}"  # normalised; this observer runs again
            return
        paths = set(self.expanded) | set(ancestors(item.module))
        if paths != set(self.expanded):
            self.expanded = sorted(paths)
        if self.focus_candidate != item.candidate:
            self.focus_candidate = item.candidate
        self._redraw()

    def _on_focus_candidate(self, change) -> None:
        c = self.plan._by_id.get(change["new"])
        if change["new"] and c is None:
            self.message = f"no candidate {change['new']!r}"
        if c is not None:
            self._goto(c.graph)
            d = self._data[c.graph]
            paths = set(self.expanded) | {p for n in c.nodes for p in ancestors(d.nodes[n].module)}
            if paths != set(self.expanded):
                self.expanded = sorted(paths)
        self._redraw()

    def _redraw(self, *_change) -> None:
        tag, _, name = self.focused.partition(":")
        focus = name if tag == self.graph else ""
        overlay = None
        if self.show_inductor and self.inductor is not None:
            overlay = self.inductor.get(self.graph, {})
        self.view = self.data.view(self.expanded, self.selected, focus, self.focus_candidate, overlay)

    def __repr__(self) -> str:
        items = self.view.get("items", {})
        return (f"GraphWidget({self.graph}, {len(items)} items visible, {len(self.expanded)} modules open, "
                f"{len(self.selected)} selected)")
