"""The explorer: one FusionPlan behind a candidate list, the graph, the kernel, summary and
profile panes, every view linked to the others.

One piece: the wiring of every pane to the one plan (each callback, ``_refresh``, the script
methods that stand for clicks) reads as one story; each pane's own work is in its module.

State is plain: ``Explorer.plan`` is the FusionPlan, and the graph widget
(``widgets.graph.GraphWidget``) holds the same plan. Every change goes through
``plan.select``/``plan.deselect``, whoever makes it (a checkbox, a click on a cluster, code),
and then every view re-reads the plan:

- selection: checkbox / cluster click / ``ex.select`` -> plan -> checkboxes, graph, summary
- focus: node or cluster click / list row / ``ex.focus`` -> graph ``focused`` and
  ``focus_candidate`` -> the kernel pane shows that candidate's Triton source with the
  node's line marked, and the model source line the node came from
- ``ex.expand(module)`` opens a module box in the graph.
- the loop line (under the buttons): after each change, the step *modeled* on the chosen
  GPU at once, and the *measured* verdict (device, executor) when a re-profile arrives; the
  previous measurement is marked stale meanwhile (``_profile_pane``).
- checks, compiles for a GPU target and profiles run in the background inside a kernel,
  each with a progress bar and the time it took (``_tasks``); ``ex.wait()`` waits for them.
- ``ex.to_html(path)``: the explorer as one standalone page (``_snapshot``).
- torch.compile (``_inductor_pane``): ``ex.show_inductor(True)`` draws Inductor's kernels over
  the graph, the "torch.compile" tab diffs them with the candidates; ``ex.measure()`` times
  each candidate (CPU) into the list's measured column.
- rules: ``ex.plan.never_fuse(...)`` then ``ex.refresh()`` rebuilds the list, the graph's
  clusters and the diff from the plan's new candidates; the summary lists rules and skips.

A refused selection (PlanError) and any error in a callback are shown in the message line
(and the graph's), never raised into the notebook; the checkboxes go back to the plan.
"""

from __future__ import annotations

import html

from .. import _env
from ..gpus import GPUS
from ..plan import FusionPlan, PlanError
from . import _html
from ._candidate_list import candidate_table
from ._inductor_pane import InductorPane
from ._kernel_pane import KernelPane
from ._profile_pane import ProfilePane
from ._tasks import Task


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class Explorer:
    """An ipywidgets app over one capture: pick fusions, read and check their kernels."""

    def __init__(self, capture, plan: FusionPlan | None = None, *, model=None, inputs=(), loss_fn=None,
                 background: bool | None = None):
        import ipywidgets as w

        from .graph import GraphWidget

        self._w = w
        self.capture = capture
        self.plan = plan if plan is not None else FusionPlan(capture)
        self.model = model if model is not None else capture.meta.get("model")
        self.inputs = tuple(inputs)
        self.loss_fn = loss_fn if loss_fn is not None else capture.meta.get("loss_fn")
        background = _in_kernel() if background is None else background
        self.background = background
        self._unfused: dict = {}  # gpu -> roofline of the unfused step (it never changes)
        self.figures: dict = {}  # "summary" / "candidates" / "profile" -> latest plotly figure
        self._index_candidates()
        self._syncing = False
        self._charts_stale = True
        self.graph = GraphWidget(self.plan, layout=w.Layout(width="55%", min_width="360px",
                                                             overflow="hidden"))
        self.kernel_pane = KernelPane(self.plan, capture, background=background)
        self.profile_pane = ProfilePane(self, background=background)
        self.inductor_pane = InductorPane(self, background=background)
        self._build()
        for name, fn in (("selected", self._on_graph_selected), ("focused", self._on_graph_focus),
                         ("focus_candidate", self._on_graph_focus), ("message", self._on_graph_message)):
            self.graph.observe(self._guard(fn), name)
        self._refresh()
        self.kernel_pane.show(None)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        w = self._w
        ind = self.inductor_pane
        cap = self.capture
        graphs = ", ".join(f"{g.tag} {len(g.nodes)} nodes" for g in cap.graphs)
        breaks = f"; {len(cap.breaks)} graph break(s)" if cap.breaks else ""
        self.header = w.HTML(
            f"<b style='font-size:15px'>fusionlab explorer</b> &mdash; "
            f"{html.escape(cap.model_name)}, {'training step' if cap.train else 'inference'}: "
            f"{graphs}{breaks}; {len(self.plan.candidates)} fusion candidates; kernels run in "
            f"{html.escape(_env.executor_name())}"
        )
        self.select_all_button = w.Button(description="select all", icon="check-square")
        self.clear_button = w.Button(description="clear", icon="square-o")
        self.select_all_button.on_click(self._guard(lambda _b: self._apply(self.plan.select_all, "selected all")))
        self.clear_button.on_click(self._guard(lambda _b: self._apply(self.plan.clear, "cleared the selection")))
        self.message = w.HTML()
        self.loop = w.HTML()
        self.table = self._table()

        # summary (modeled): charts drawn while their tab shows (plotly sizes itself then)
        self.summary_html = w.HTML()
        self.gpu = w.Dropdown(options=list(GPUS), value="h100", description="model on",
                              layout=w.Layout(width="220px"))
        self.gpu.observe(self._guard(lambda _c: self._refresh()), names="value")
        self.summary_chart = w.Output(layout=w.Layout(min_height="300px"))
        self.candidates_chart = w.Output()
        why = html.escape(self.plan.candidates.why_not(limit=60))
        self.why_not = w.HTML(
            "<details><summary>nodes left out of every candidate, and why</summary>"
            f"<pre style='font-size:12px;max-height:260px;overflow:auto'>{why or '(none)'}</pre></details>")
        self.chart_task = Task("charts")
        summary_tab = w.VBox([self.gpu, self.summary_html, self.chart_task.status, self.summary_chart,
                              self.candidates_chart, self.why_not])
        self.tabs = w.Tab(children=[summary_tab, self.profile_pane.box, ind.box])
        for i, t in enumerate(("summary (modeled)", "profile (measured)", "torch.compile")):
            self.tabs.set_title(i, t)
        self.tabs.observe(self._guard(lambda _c: self._charts()), names="selected_index")

        buttons = w.HBox([self.select_all_button, self.clear_button, ind.toggle, ind.measure_button, self.message])
        panes = w.HBox([self.graph, self.kernel_pane.box], layout=w.Layout(width="100%"))
        # the profile's status line is shown here too (two views of one widget)
        self.ui = w.VBox([self.header, buttons, self.loop, self.profile_pane.task.status, ind.measure_task.status,
                          ind.task.status, self.table,
                          panes, self.tabs],
                         layout=w.Layout(width="100%"))

    def _table(self):
        """One line per candidate, one widget (``_candidate_list``): checkbox (in the plan), id
        (click: focus), kernels, saves, measured, modules."""
        table, self.checkboxes, self.focus_buttons = candidate_table(
            self.plan, on_toggle=self._guard(self._on_toggle), on_focus=self._guard(self.focus))
        return table

    # ------------------------------------------------------------------ errors

    def _guard(self, fn):
        """`fn` as a widget callback: an exception is shown in the message line, not raised."""
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a callback's error belongs in the widget
                self.error(f"{type(e).__name__}: {e}")
                return None
        return run

    def error(self, text: str) -> None:
        self.message.value = _html.message(text, "error")
        self.graph.message = text

    # ------------------------------------------------------------------ selection

    def _on_toggle(self, cid: str, checked: bool) -> None:
        if self._syncing:
            return
        action = self.plan.select if checked else self.plan.deselect
        self._apply(lambda: action(cid), f"{'selected' if checked else 'deselected'} {cid}")

    def _apply(self, fn, done: str) -> bool:
        """Run one plan change; on PlanError show it and put every view back to the plan."""
        try:
            fn()
        except PlanError as e:
            self.error(f"refused: {e}")
            self._sync_checkboxes()
            return False
        self.message.value = _html.message(done, "info")
        self.graph.message = ""
        self._refresh()
        return True

    def select(self, *keys) -> Explorer:
        """``plan.select(*keys)`` through the UI (a refusal is shown, not raised). A pattern
        name selects its forward candidates; the message names the backward ones to add."""
        done = f"selected {', '.join(map(str, keys))}"
        patterns = [k for k in keys if isinstance(k, str) and k not in self._ids]
        if self._apply(lambda: self.plan.select(*keys), done):
            rest = self.plan.unselected_backward(*patterns)
            if rest:
                names = [f"{p}_backward" for p in patterns
                         if any(c.matches(f"{p}_backward") for c in rest)]
                self.message.value = _html.message(
                    f"{done}. Its gradient is computed by separate backward candidates, not selected: "
                    f"{', '.join(c.id for c in rest)}; ex.select({', '.join(map(repr, names))}) "
                    "fuses them too", "info")
        return self

    def deselect(self, *keys) -> Explorer:
        self._apply(lambda: self.plan.deselect(*keys), f"deselected {', '.join(map(str, keys))}")
        return self

    def _sync_checkboxes(self) -> None:
        self.table.show_selected([cid for cid in self.table.ids if self.plan.is_selected(cid)])

    def _index_candidates(self) -> None:
        self._cands = self.plan.candidates
        self._owner = {f"{c.graph}:{n}": c.id for c in self._cands for n in c.nodes}
        self._ids = {c.id for c in self._cands}

    def refresh(self) -> Explorer:
        """Re-read the plan after code changed it (``ex.plan.never_fuse(...)``, ``plan.select``)."""
        self._guard(self._refresh)()
        return self

    def _refresh(self, graph: bool = True) -> None:
        if self.plan.candidates is not self._cands:  # a rule changed the candidates
            self._index_candidates()
            self.table.set_candidates(self._cands, [c.id for c in self.plan.selected])
            self.graph.set_candidates(self._cands)
            self.inductor_pane.update_diff()
            self.kernel_pane.kernels.clear()  # a candidate id may now hold other nodes
            graph = True
        self._sync_checkboxes()
        if graph:
            self._syncing = True  # the graph follows the plan: not a click to answer
            try:
                self.graph.refresh()
            finally:
                self._syncing = False
        self._modeled = self.modeled_time_html()
        self.summary_html.value = _html.summary_html(self.plan.summary()) + self._modeled
        self.profile_pane.plan_changed()
        self.update_loop()
        self._charts_stale = True
        self._charts()
        self.kernel_pane.info()

    def update_loop(self) -> None:
        """The loop line: modeled step now, measured verdict when it arrives (or stale)."""
        self.loop.value = self.profile_pane.loop_html(self._modeled)

    # ------------------------------------------------------------------ graph -> explorer

    def _on_graph_selected(self, _change) -> None:
        """A cluster was clicked (the graph widget has already applied it to the plan)."""
        if self._syncing:
            return
        if not self.graph.message.startswith("refused"):
            self.message.value = _html.message(f"{len(self.plan.selected)} candidates selected", "info")
        self._refresh(graph=False)

    def _on_graph_focus(self, _change) -> None:
        node = self.graph.focused
        cid = self._owner.get(node) if node else (self.graph.focus_candidate or None)
        self.kernel_pane.show(cid, node)

    def _on_graph_message(self, change) -> None:
        if change["new"]:
            self.message.value = _html.message(change["new"], "error" if change["new"].startswith(
                ("refused", "no ")) else "info")

    # ------------------------------------------------------------------ scripting the graph

    def focus(self, key: str) -> Explorer:
        """Focus a candidate id, a node ("fw0:mul_5") or a module: the graph shows it and
        the kernel pane shows its candidate's kernel (a bad key is shown, not raised)."""
        try:
            self.graph.focus(key)
        except KeyError as e:
            self.error(str(e.args[0]) if e.args else str(e))
        return self

    def expand(self, *modules: str) -> Explorer:
        """Open module boxes in the graph; "h.0" finds "model.transformer.h.0"."""
        try:
            self.graph.expand(*(self._module(m) for m in modules))
        except KeyError as e:
            self.error(str(e.args[0]) if e.args else str(e))
        return self

    def collapse(self, *modules: str) -> Explorer:
        self.graph.collapse(*(self._module(m) for m in modules))
        return self
    def _module(self, path: str) -> str:
        mods = self.graph.data.modules
        if path in mods:
            return path
        found = [m for m in mods if m.endswith("." + path)]
        if len(found) == 1:
            return found[0]
        raise KeyError(f"no module {path!r} in {self.graph.graph}" if not found else
                       f"{path!r} is ambiguous: {', '.join(found[:4])}")

    def show_graph(self, tag: str) -> Explorer:
        self.graph.show(tag)
        return self
    # ------------------------------------------------------------------ summary charts

    def modeled_time_html(self) -> str:
        """One line: the step modeled on the chosen GPU's spec (fusionlab.cost)."""
        from ..cost import roofline

        gpu = self.gpu.value
        if gpu not in self._unfused:
            self._unfused[gpu] = roofline(self.plan, gpu, fused=False)
        before = self._unfused[gpu]
        after = roofline(self.plan, self.gpu.value, fused=True)
        return (f"<div style='font-size:13px' data-role='modeled'>Step time <b>{html.escape(before.label)}</b>: "
                f"{before.ms:.3f} ms &rarr; {after.ms:.3f} ms ({before.launches} &rarr; "
                f"{after.launches} launches; roofline per kernel plus launch overhead)</div>")

    def _charts(self) -> None:
        """Draw the summary charts when their tab shows: a plotly chart drawn while hidden
        gets no height (it sizes itself to its box), so a hidden tab waits until shown.
        Inside a kernel they are drawn in the background, after the other panels have
        answered a click (the latest request wins)."""
        if not self._charts_stale or self.tabs.selected_index != 0:
            return
        self._charts_stale = False
        self.chart_task.start("drawing the summary charts (modeled)", self._draw_charts,
                              background=self.background, queue=True)

    def _draw_charts(self) -> None:
        try:
            from ..viz import candidates_figure, plan_figure
        except ImportError:
            self.summary_chart.outputs = ()
            return
        fig = plan_figure(self.plan, gpu=self.gpu.value or None)
        self.show_figure("summary", self.summary_chart, fig)
        self.show_figure("candidates", self.candidates_chart,
                         candidates_figure(self.plan.candidates, self.plan.selected))

    def show_figure(self, name: str, out, fig) -> None:
        """Put plotly figure `fig` into Output `out`, at a fixed height."""
        from ..viz.charts import mimebundle

        if fig.layout.height is None:
            fig.update_layout(height=380)
        self.figures[name] = fig
        out.outputs = ({"output_type": "display_data", "data": mimebundle(fig), "metadata": {}},)

    # ------------------------------------------------------------------ kernels and profile

    @property
    def kernels(self) -> dict:
        return self.kernel_pane.kernels

    @property
    def kernel_text(self) -> str:
        """The plain source the kernel pane shows."""
        return self.kernel_pane.text

    def kernel(self, cid: str):
        """The Kernel of candidate `cid` (generated on first use, not yet checked)."""
        return self.kernel_pane.kernel(cid)

    def show_kernel(self, cid: str) -> Explorer:
        return self.focus(cid)
    def check(self, cid: str | None = None):
        """Check the shown kernel (or `cid`'s, which is focused first) against PyTorch."""
        if cid is not None and cid != self.kernel_pane.cid:
            self.focus(cid)
        return self.kernel_pane.check(cid)

    def check_selected(self):
        """``plan.kernels()``: build and check every selected candidate; show which passed."""
        return self.kernel_pane.check_selected()

    def profile_options(self) -> dict:
        return self.profile_pane.options()

    def profile(self, **options):
        """``fusionlab.profile(model, inputs, plan=plan, **options)``; shows its table and figure."""
        self.tabs.selected_index = 1
        return self.profile_pane.run(**options)

    @property
    def profile_result(self):
        return self.profile_pane.result

    def inspect(self, cid: str | None = None, target: str = "sm_90"):
        """Compile `cid`'s kernel (default: the focused one) for a GPU target, as the pane's
        button does; returns the CompileReport (registers, spills, PTX, SASS)."""
        if cid is not None and cid != self.kernel_pane.cid:
            self.focus(cid)
        self.kernel_pane.inspector.target.value = target
        return self.kernel_pane.inspector.inspect(cid, target)

    def export(self, folder: str = "fusionlab_kernels") -> list:
        """Write the selected kernels (or the focused one) as standalone modules into `folder`."""
        return self.kernel_pane.inspector.export(folder)

    def show_inductor(self, on: bool = True) -> Explorer:
        """Draw torch.compile's kernels over the graph (compiled in the background the first
        time; ``ex.wait()``), and fill the "torch.compile" tab with the diff."""
        self.inductor_pane.show(on)
        return self

    def measure(self, candidates=None, rounds: int = 30) -> Explorer:
        """Time each candidate (or the ids given) fused vs unfused on this CPU (``measure_candidates``,
        in the background); the candidate list then shows each one's measured ratio and verdict."""
        self.inductor_pane.measure(rounds, candidates)
        return self

    def wait(self, timeout: float | None = None) -> Explorer:
        """Until the background checks, compiles and profiles have ended."""
        for task in (self.kernel_pane.task, self.kernel_pane.inspector.task, self.profile_pane.task,
                     self.chart_task, self.inductor_pane.task, self.inductor_pane.measure_task):
            task.wait(timeout)
        return self

    def to_html(self, path) -> str:
        """Write the explorer as one standalone HTML page: the graph (drawn, pannable and
        clickable offline), the plan, every kernel, the profile if one ran. Returns the path."""
        from ._snapshot import write_snapshot

        return write_snapshot(self, path)

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.ui)

    def __repr__(self) -> str:
        return (f"<Explorer {self.capture.model_name}: {len(self.plan.selected)}/"
                f"{len(self.plan.candidates)} candidates selected>")
