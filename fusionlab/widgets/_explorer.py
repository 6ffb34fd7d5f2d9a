"""The explorer: one FusionPlan behind a candidates table, graph, kernel, summary and profile panes.

State is plain: ``Explorer.plan`` is the FusionPlan, every widget reads it and writes it
only through ``plan.select``/``plan.deselect``. A refused selection (PlanError) is shown
in the message line and the checkboxes are put back to what the plan holds.
"""

from __future__ import annotations

import html

from .. import _env
from ..gpus import GPUS
from ..nodecost import fmt_bytes
from ..plan import FusionPlan, PlanError
from ..profile_options import EXECUTORS, STEPS
from . import _html

TABLE_COLUMNS = "30px minmax(240px, 2fr) 80px 55px 120px minmax(120px, 1fr) 64px"


class Explorer:
    """An ipywidgets app over one capture: pick fusions, read and check their kernels."""

    def __init__(self, capture, plan: FusionPlan | None = None, *, model=None, inputs=(), loss_fn=None,
                 collapse_views: bool = True):
        import ipywidgets as w

        self._w = w
        self.capture = capture
        self.plan = plan if plan is not None else FusionPlan(capture)
        self.model = model if model is not None else capture.meta.get("model")
        self.inputs = tuple(inputs)
        self.loss_fn = loss_fn if loss_fn is not None else capture.meta.get("loss_fn")
        self.kernels: dict = {}  # candidate id -> Kernel (generated on demand)
        self.kernel_text = ""  # plain source shown in the kernel pane
        self.figures: dict = {}  # "summary" / "candidates" / "profile" -> latest plotly figure
        self.profile_result = None
        self._syncing = False
        self._stale_graphs: set[str] = set()
        self._build(collapse_views)
        self._refresh()
        self._show_kernel()

    # ------------------------------------------------------------------ layout

    def _build(self, collapse_views: bool) -> None:
        w = self._w
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
        self.select_all_button.on_click(lambda _b: self._apply(self.plan.select_all, "selected all"))
        self.clear_button.on_click(lambda _b: self._apply(self.plan.clear, "cleared the selection"))
        self.message = w.HTML()

        cells = [w.HTML(f"<b>{h}</b>") for h in
                 ("", "candidate", "kernels", "nodes", "saves (modeled)", "modules", "")]
        self.checkboxes: dict = {}
        self.code_buttons: dict = {}
        for c in self.plan.candidates:
            cb = w.Checkbox(value=self.plan.is_selected(c.id), indent=False,
                            layout=w.Layout(width="28px"))
            cb.observe(lambda change, cid=c.id: self._on_toggle(cid, change), names="value")
            btn = w.Button(description="code", tooltip=f"show the kernel of {c.id}",
                           layout=w.Layout(width="60px", height="24px"))
            btn.on_click(lambda _b, cid=c.id: self.show_kernel(cid))
            self.checkboxes[c.id] = cb
            self.code_buttons[c.id] = btn
            cells += [cb, w.HTML(f"<code>{html.escape(c.id)}</code>"),
                      w.HTML(f"{c.kernels_unfused} &rarr; 1"), w.HTML(str(len(c.nodes))),
                      w.HTML(fmt_bytes(c.bytes_saved)),
                      w.HTML(f"<span style='font-size:12px'>{html.escape(', '.join(c.modules[:3]))}</span>"),
                      btn]
        self.table = w.GridBox(cells, layout=w.Layout(
            grid_template_columns=TABLE_COLUMNS, grid_gap="0px 8px", align_items="center",
            max_height="330px", overflow="auto", border="1px solid #e5e7eb", padding="4px"))

        # plan summary (modeled)
        self.summary_html = w.HTML()
        self.gpu = w.Dropdown(options=list(GPUS), value="h100", description="model on",
                              layout=w.Layout(width="220px"))
        self.gpu.observe(lambda _c: self._refresh(), names="value")
        self.summary_chart = w.Output()
        self.candidates_chart = w.Output()
        why = html.escape(self.plan.candidates.why_not(limit=60))
        self.why_not = w.HTML(
            "<details><summary>nodes left out of every candidate, and why</summary>"
            f"<pre style='font-size:12px;max-height:260px;overflow:auto'>{why or '(none)'}</pre></details>")
        summary_tab = w.VBox([self.gpu, self.summary_html, self.summary_chart, self.candidates_chart,
                              self.why_not])

        # kernel
        options = [(c.id, c.id) for c in self.plan.candidates]
        first = self.plan.selected[0].id if self.plan.selected else (options[0][1] if options else None)
        self.kernel_choice = w.Dropdown(options=options, value=first, description="candidate",
                                        layout=w.Layout(width="520px"))
        self.kernel_choice.observe(lambda _c: self._show_kernel(), names="value")
        self.check_button = w.Button(description="check against PyTorch", icon="check",
                                     button_style="info", layout=w.Layout(width="210px"))
        self.check_button.on_click(lambda _b: self.check())
        self.check_selected_button = w.Button(description="build & check all selected",
                                              layout=w.Layout(width="230px"))
        self.check_selected_button.on_click(lambda _b: self.check_selected())
        self.kernel_info = w.HTML()
        self.check_result = w.HTML()
        self.kernel_source = w.HTML()
        self.statuses = w.HTML()
        kernel_tab = w.VBox([
            w.HBox([self.kernel_choice, self.check_button, self.check_selected_button]),
            self.kernel_info, self.check_result, self.kernel_source, self.statuses])

        # graphs
        self.collapse_views = w.Checkbox(value=collapse_views, description="collapse views",
                                         indent=False, layout=w.Layout(width="140px"))
        self.fit_width = w.Checkbox(value=True, description="fit to width", indent=False,
                                    layout=w.Layout(width="140px"))
        for box in (self.collapse_views, self.fit_width):
            box.observe(lambda _c: self._graphs_changed(), names="value")
        self.graph_panes = {g.tag: w.HTML() for g in cap.graphs}
        self._stale_graphs = set(self.graph_panes)

        # profile (measured)
        self.profile_output = w.Output()
        self.profile_html = w.HTML()
        self.profile_button = w.Button(description="profile fused vs unfused (measured)",
                                       icon="tachometer", layout=w.Layout(width="300px"))
        self.profile_button.on_click(lambda _b: self.profile(**self.profile_options()))
        self.profile_steps = w.IntSlider(value=STEPS, min=1, max=200, description="steps",
                                         layout=w.Layout(width="320px"))
        self.profile_variants = {
            name: w.Checkbox(value=name in ("eager", "unfused", "fusionlab"), description=name,
                             indent=False, layout=w.Layout(width="95px"))
            for name in ("eager", "unfused", "fusionlab", "inductor")
        }
        self.profile_executor = w.Dropdown(
            options=list(EXECUTORS), value="auto",
            description="executor", layout=w.Layout(width="260px"),
            tooltip="auto: Triton on a GPU; on CPU Inductor, fusing only inside your groups")
        self.profile_html.value = _html.message(
            "Runs training steps with and without the plan and measures them on this machine. "
            "unfused: the same executor with nothing selected; inductor: plain torch.compile.")
        controls = w.HBox([self.profile_steps, *self.profile_variants.values(), self.profile_executor])
        profile_tab = w.VBox([controls, self.profile_button, self.profile_html, self.profile_output])

        graph_tabs = [w.VBox([w.HBox([self.collapse_views, self.fit_width]), self.graph_panes[g.tag]])
                      for g in cap.graphs]
        self._tab_graph = {2 + i: g.tag for i, g in enumerate(cap.graphs)}
        self.tabs = w.Tab(children=[summary_tab, kernel_tab, *graph_tabs, profile_tab])
        titles = ["summary", "kernel", *(f"{g.tag} graph" for g in cap.graphs), "profile"]
        for i, t in enumerate(titles):
            self.tabs.set_title(i, t)
        self.tabs.observe(lambda _c: self._render_visible_graph(), names="selected_index")

        buttons = w.HBox([self.select_all_button, self.clear_button])
        self.ui = w.VBox([self.header, buttons, self.message, self.table, self.tabs],
                         layout=w.Layout(width="100%"))

    # ------------------------------------------------------------------ selection

    def _on_toggle(self, cid: str, change) -> None:
        if self._syncing:
            return
        action = self.plan.select if change["new"] else self.plan.deselect
        self._apply(lambda: action(cid), f"{'selected' if change['new'] else 'deselected'} {cid}")

    def _apply(self, fn, done: str) -> bool:
        """Run one plan change; on PlanError show it and put every checkbox back."""
        try:
            fn()
        except PlanError as e:
            self.message.value = _html.message(f"refused: {e}", "error")
            self._sync_checkboxes()
            return False
        self.message.value = _html.message(done, "info")
        self._refresh()
        return True

    def select(self, *keys) -> Explorer:
        """``plan.select(*keys)`` through the UI (a refusal is shown, not raised)."""
        self._apply(lambda: self.plan.select(*keys), f"selected {', '.join(map(str, keys))}")
        return self

    def deselect(self, *keys) -> Explorer:
        self._apply(lambda: self.plan.deselect(*keys), f"deselected {', '.join(map(str, keys))}")
        return self

    def _sync_checkboxes(self) -> None:
        self._syncing = True
        try:
            for cid, cb in self.checkboxes.items():
                cb.value = self.plan.is_selected(cid)
        finally:
            self._syncing = False

    def _refresh(self) -> None:
        self._sync_checkboxes()
        summary = self.plan.summary()
        self.summary_html.value = _html.summary_html(summary) + self._modeled_time_html()
        self._charts()
        self._kernel_info()
        self._graphs_changed()

    # ------------------------------------------------------------------ charts

    def _modeled_time_html(self) -> str:
        """One line: the step modeled on the chosen GPU's spec (fusionlab.cost)."""
        from ..cost import roofline

        before = roofline(self.plan, self.gpu.value, fused=False)
        after = roofline(self.plan, self.gpu.value, fused=True)
        return (f"<div style='font-size:13px'>Step time <b>{html.escape(before.label)}</b>: "
                f"{before.ms:.3f} ms &rarr; {after.ms:.3f} ms ({before.launches} &rarr; "
                f"{after.launches} launches; roofline per kernel plus launch overhead)</div>")

    def _charts(self) -> None:
        try:
            from ..viz import candidates_figure, plan_figure

            fig = plan_figure(self.plan, gpu=self.gpu.value or None)
            self._show_figure("summary", self.summary_chart, fig)
            self._show_figure("candidates", self.candidates_chart,
                              candidates_figure(self.plan.candidates, self.plan.selected))
        except ImportError:
            self.summary_chart.outputs = ()

    def _show_figure(self, name: str, out, fig) -> None:
        from ..viz.charts import mimebundle

        self.figures[name] = fig
        out.outputs = ({"output_type": "display_data", "data": mimebundle(fig), "metadata": {}},)

    # ------------------------------------------------------------------ graphs

    def _graphs_changed(self) -> None:
        self._stale_graphs = set(self.graph_panes)
        self._render_visible_graph()

    def _render_visible_graph(self) -> None:
        tag = self._tab_graph.get(self.tabs.selected_index) if hasattr(self, "tabs") else None
        if tag is not None and tag in self._stale_graphs:
            self.render_graph(tag)

    def render_graph(self, tag: str) -> str:
        """Draw graph `tag` into its pane now (panes draw themselves when their tab is shown)."""
        from ..viz import graph_html

        try:
            value = graph_html(self.capture.graph(tag), self.plan.candidates, self.plan.selected,
                               collapse_views=self.collapse_views.value, fit=self.fit_width.value)
        except ImportError as e:
            value = _html.message(f"the graph view needs the graphviz package ({e})", "error")
        self.graph_panes[tag].value = value
        self._stale_graphs.discard(tag)
        return value

    def show_graph(self, tag: str) -> None:
        for i, t in self._tab_graph.items():
            if t == tag:
                self.tabs.selected_index = i
        self.render_graph(tag)

    # ------------------------------------------------------------------ kernels

    def kernel(self, cid: str):
        """The Kernel of candidate `cid` (generated on first use, not yet checked)."""
        if cid not in self.kernels:
            from ..codegen import generate
            from ..kernels import Kernel, extract_subgraph

            cand = self.plan.candidates.by_id(cid)
            graph = self.capture.graph(cand.graph)
            ks = generate(cand, graph, model_name=self.capture.model_name)
            self.kernels[cid] = Kernel(ks, extract_subgraph(graph.gm, cand))
        return self.kernels[cid]

    def show_kernel(self, cid: str) -> None:
        self.kernel_choice.value = cid
        self.tabs.selected_index = 1

    def _kernel_info(self) -> None:
        cid = self.kernel_choice.value
        if cid is None:
            self.kernel_info.value = _html.message("this capture has no fusion candidates")
            return
        c = self.plan.candidates.by_id(cid)
        state = "selected in the plan" if self.plan.is_selected(cid) else "not selected"
        self.kernel_info.value = (
            f"<div style='font-size:13px'><code>{html.escape(cid)}</code>: {c.kind} over "
            f"[{', '.join(map(str, c.domain))}], {len(c.nodes)} nodes, {c.kernels_unfused} kernels "
            f"&rarr; 1, saves {fmt_bytes(c.bytes_saved)} per step (modeled); <b>{state}</b></div>")

    def _show_kernel(self) -> None:
        self._kernel_info()
        cid = self.kernel_choice.value
        if cid is None:
            self.kernel_text = ""
            self.kernel_source.value = ""
            self.check_result.value = ""
            return
        try:
            k = self.kernel(cid)
        except Exception as e:  # noqa: BLE001 - LoweringError or a codegen bug: show it
            self.kernel_text = ""
            self.kernel_source.value = _html.message(
                f"no kernel for {cid}: {type(e).__name__}: {e}", "error")
            self.check_result.value = ""
            return
        self.kernel_text = k.source.source
        self.kernel_source.value = _html.kernel_html(self.kernel_text, k.name)
        self.check_result.value = _html.check_html(k.check_result)

    def check(self, cid: str | None = None):
        """Run the shown kernel (or `cid`'s) and its eager ops on the same random inputs."""
        if cid is not None and cid != self.kernel_choice.value:
            self.kernel_choice.value = cid
        cid = self.kernel_choice.value
        if cid is None:
            return None
        self.check_result.value = _html.message(f"checking {cid} ({_env.executor_name()}) ...")
        try:
            result = self.kernel(cid).check()
        except Exception as e:  # noqa: BLE001
            self.check_result.value = _html.message(f"no kernel: {type(e).__name__}: {e}", "error")
            return None
        self.check_result.value = _html.check_html(result)
        return result

    def check_selected(self):
        """``plan.kernels()``: build and check every selected candidate; show which passed."""
        self.statuses.value = _html.message("building and checking the selected kernels ...")
        kernel_set = self.plan.kernels()
        for k in kernel_set:
            self.kernels[k.source.candidate_id] = k
        self.statuses.value = _html.statuses_html(kernel_set.statuses)
        self._show_kernel()
        return kernel_set

    # ------------------------------------------------------------------ profile

    def profile_options(self) -> dict:
        """What the profile tab's controls say: steps, warm-up, variants, executor."""
        steps = int(self.profile_steps.value)
        compare = tuple(n for n, box in self.profile_variants.items() if box.value) or ("eager", "fusionlab")
        return {"steps": steps, "warmup": max(1, min(5, steps // 4)), "compare": compare,
                "executor": self.profile_executor.value}

    def profile(self, **options):
        """``fusionlab.profile(model, inputs, plan=plan, **options)``; shows its table and figure.

        The profile tab's button passes :meth:`profile_options` (its controls)."""
        if self.model is None or not self.inputs:
            self.profile_html.value = _html.message(
                "profiling needs the model and its inputs: use explore(model, *inputs)", "error")
            return None
        from ..profiler import profile

        self.profile_html.value = _html.message("profiling (measured on this machine) ...")
        try:
            result = profile(self.model, self.inputs, plan=self.plan, loss_fn=self.loss_fn, **options)
        except Exception as e:  # noqa: BLE001 - a failed run is shown, not raised into the UI
            self.profile_html.value = _html.message(f"profile failed: {type(e).__name__}: {e}", "error")
            return None
        self.profile_result = result
        # the profile's own HTML (it labels measured vs modeled), in a box that scrolls sideways
        self.profile_html.value = f"<div style='overflow-x:auto;font-size:12px'>{result._repr_html_()}</div>"
        try:
            self._show_figure("profile", self.profile_output, result.figure())
        except Exception as e:  # noqa: BLE001 - no plotly, or no figure for this result
            self.profile_output.outputs = ()
            self.profile_html.value += _html.message(f"(no figure: {e})")
        return result

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.ui)

    def __repr__(self) -> str:
        return (f"<Explorer {self.capture.model_name}: {len(self.plan.selected)}/"
                f"{len(self.plan.candidates)} candidates selected>")
