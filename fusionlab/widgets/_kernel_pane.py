"""The explorer's kernel pane: the focused candidate's Triton source, its focused node and
the model line that produced it, and the check against PyTorch.

Linked views: a node focused in the graph marks the kernel line that computes it
(``node = ...  # aten.op  module``) and shows the model source line the capture recorded
for it (``model.py:42  x = self.act(x)``). Kernels are generated on first focus (quick);
checks (and, in ``_inspect_pane``, compiles for a GPU target) started by a button run in a
background thread when ``background`` is set (the notebook stays usable; the explorer sets
it inside a kernel), with a progress bar and the time they took in their status line
(``_tasks.Task``); their errors are shown in the pane, never raised into the notebook.
"""

from __future__ import annotations

import html

from .. import _env
from ..nodecost import fmt_bytes
from . import _html
from ._inspect_pane import InspectPane
from ._tasks import Task


class KernelPane:
    """One box: what the focused candidate's kernel is, its source, its check."""

    def __init__(self, plan, capture, *, background: bool = False):
        import ipywidgets as w

        self.plan = plan
        self.capture = capture
        self.background = background
        self.kernels: dict = {}  # candidate id -> Kernel (generated on demand)
        self.cid: str | None = None  # the candidate shown
        self.node: str = ""  # "fw0:mul_5": the focused node, or ""
        self.text = ""  # plain source shown
        self.task = Task("check")
        self.title = w.HTML()
        self.node_info = w.HTML()
        self.check_button = w.Button(description="check against PyTorch", icon="check",
                                     button_style="info", layout=w.Layout(width="200px"))
        self.check_button.on_click(lambda _b: self.check(background=self.background))
        self.check_selected_button = w.Button(description="build & check all selected",
                                              layout=w.Layout(width="210px"))
        self.check_selected_button.on_click(lambda _b: self.check_selected(background=self.background))
        self.check_result = w.HTML()
        self.source = w.HTML()
        self.statuses = w.HTML()
        self.inspector = InspectPane(self, background=background)
        self.box = w.VBox([self.title, self.node_info,
                           w.HBox([self.check_button, self.check_selected_button]), self.task.status,
                           self.check_result, self.source, self.statuses, self.inspector.box],
                          layout=w.Layout(width="45%", min_width="320px", overflow="hidden"))

    # ------------------------------------------------------------------ showing

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

    def show(self, cid: str | None, node: str = "") -> None:
        """Show candidate `cid`'s kernel with node `node` ("fw0:mul_5") marked; `cid` None
        with a node outside every candidate says why it was left out."""
        self.cid, self.node = cid, node
        self.node_info.value = self.node_html()
        self.info()
        self.inspector.show()
        if cid is None:
            self.text = ""
            self.source.value = ""
            self.check_result.value = ""
            return
        try:
            k = self.kernel(cid)
        except Exception as e:  # noqa: BLE001 - LoweringError or a codegen bug: show it
            self.text = ""
            self.source.value = _html.message(f"no kernel for {cid}: {type(e).__name__}: {e}", "error")
            self.check_result.value = ""
            return
        self.text = k.source.source
        self.source.value = _html.kernel_html(self.text, k.name, node.partition(":")[2])
        self.check_result.value = _html.check_html(k.check_result)

    def info(self) -> None:
        """The title line: the candidate, what it saves, whether the plan holds it."""
        cid = self.cid
        if cid is None:
            self.title.value = _html.message(
                "click a node or a candidate (in the graph or the list) to see its kernel"
                if self.plan.candidates else "this capture has no fusion candidates")
            return
        c = self.plan.candidates.by_id(cid)
        state = "selected in the plan" if self.plan.is_selected(cid) else "not selected"
        self.title.value = (
            f"<div style='font-size:13px'><code>{html.escape(cid)}</code>: {c.kind} over "
            f"[{', '.join(map(str, c.domain))}], {len(c.nodes)} nodes, {c.kernels_unfused} kernels "
            f"&rarr; 1, saves {fmt_bytes(c.bytes_saved)} per step (modeled); <b>{state}</b>"
            f"{_html.zero_saving_note(c)}</div>")

    def node_html(self) -> str:
        """The focused node: its op, and the model source line it came from."""
        tag, _, name = self.node.partition(":")
        if not name:
            return ""
        info = self.capture.graph(tag).nodes.get(name)
        if info is None:
            return ""
        src = (f"<br>model source: <code style='background:{_html.MARK}'>{html.escape(info.source)}</code>"
               if info.source else "<br>model source: (not recorded for this node)")
        where = f" in {html.escape(info.module)}" if info.module else ""
        why = ""
        if self.cid is None:
            reason = getattr(self.plan.candidates, "reason", lambda g, n: None)(tag, name)
            why = f"<br>in no candidate: {html.escape(reason or 'not fusible')}"
        return (f"<div style='font-size:12px'>node <code>{html.escape(tag)}:{html.escape(name)}</code> = "
                f"<code>{html.escape(info.op)}</code>{where}{src}{why}</div>")

    # ------------------------------------------------------------------ checking

    def check(self, cid: str | None = None, background: bool = False):
        """Run `cid`'s kernel (default: the one shown) and its eager ops on the same random
        inputs; in a thread when `background` (the buttons' way; returns None then)."""
        cid = cid or self.cid
        if cid is None:
            return None
        return self.task.start(f"checking {cid} against PyTorch ({_env.executor_name()})",
                               lambda: self._check(cid), background=background)

    def _check(self, cid: str):
        try:
            result = self.kernel(cid).check()
        except Exception as e:  # noqa: BLE001
            if cid == self.cid:
                self.check_result.value = _html.message(f"no kernel: {type(e).__name__}: {e}", "error")
            raise
        if cid == self.cid:
            self.check_result.value = _html.check_html(result)
        return result

    def check_selected(self, background: bool = False):
        """``plan.kernels()``: build and check every selected candidate; show which passed."""
        n = len(self.plan.selected)
        return self.task.start(f"building and checking the {n} selected kernel{'s' if n != 1 else ''}",
                               self._check_selected, background=background)

    def _check_selected(self):
        self.statuses.value = ""
        kernel_set = self.plan.kernels()
        for k in kernel_set:
            self.kernels[k.source.candidate_id] = k
        self.statuses.value = _html.statuses_html(kernel_set.statuses)
        if self.cid is not None:
            self.check_result.value = _html.check_html(self.kernel(self.cid).check_result)
        return kernel_set
