"""The explorer's torch.compile pane: Inductor's kernels over the graph, fusionlab vs Inductor,
and each candidate measured.

- the toggle "torch.compile's kernels" (``ex.show_inductor(True)``): compiles the capture's
  graphs as torch.compile's Inductor would (``fusionlab.inductor.inductor_decisions``; seconds,
  in the background with its time), then draws each op outlined in its Inductor kernel's
  colour, its reasons on hover (``GraphWidget.show_inductor``);
- the diff (its own tab): groups both make, only fusionlab, only Inductor, each with its why
  line (``inductor_diff``), and a button "start from torch.compile's choices"
  (``plan.select_like_inductor``);
- "measure" (``ex.measure()``): ``measure_candidates`` in the background, one candidate at a
  time in the progress bar; then the candidate list shows each row's measured ratio and
  verdict (measured on this CPU, each group compiled alone by Inductor), slower-fused rows
  flagged.

Errors (no Inductor in this torch, a graph it cannot compile) are shown in the pane's lines.
"""

from __future__ import annotations

import html

from . import _html
from ._candidate_list import measured_cell
from ._tasks import Task

ROW_COLORS = {"both": "#ecfdf5", "fusionlab only": "#eff6ff", "inductor only": "#fff7ed"}


def diff_html(diff) -> str:
    """An InductorDiff as three groups of rows (both / only fusionlab / only Inductor) with why."""
    head = (f"<div style='font-size:13px'><b>fusionlab vs torch.compile (Inductor)</b> on "
            f"{html.escape(diff.model_name)}: {len(diff.both)} groups both make, {len(diff.fusionlab_only)} only "
            f"fusionlab, {len(diff.inductor_only)} only Inductor <span style='color:{_html.MUTED}'>(Inductor's "
            "kernels from compiling these graphs with its default config on this machine; nothing timed)</span></div>")
    rows = []
    for title, group in (("both", diff.both), ("fusionlab only", diff.fusionlab_only),
                         ("inductor only", diff.inductor_only)):
        for r in group:
            rows.append(f"<tr data-status='{title}' style='background:{ROW_COLORS[title]}'><td>{title}</td>"
                        f"<td><code>{html.escape(r.candidate or '')}</code></td>"
                        f"<td><code>{html.escape(', '.join(r.kernels))}</code></td><td>{len(r.nodes)}</td>"
                        f"<td>{html.escape(r.why)}</td></tr>")
    errors = "".join(_html.message(f"Inductor could not compile {e}", "error") for e in diff.errors)
    return (head + "<div style='max-height:320px;overflow:auto'><table style='font-size:12px;"
            "border-collapse:collapse'><tr><th align='left'></th><th align='left'>candidate</th>"
            "<th align='left'>Inductor kernels</th><th align='left'>ops</th><th align='left'>why</th></tr>"
            + "".join(rows) + "</table></div>" + errors)


class InductorPane:
    """The toggle, the diff tab and the measure button of one explorer."""

    def __init__(self, explorer, *, background: bool):
        import ipywidgets as w

        self.ex = explorer
        self.background = background
        self.decisions = None  # InductorDecisions, once compiled
        self.diff = None  # InductorDiff of the plan's current candidates
        self.values = None  # CandidateValues, once measured
        self._diff_of = None  # the candidates the diff was computed for
        self.task = Task("inductor")
        self.measure_task = Task("measure")
        guard = explorer._guard
        self.toggle = w.ToggleButton(description="torch.compile's kernels", icon="eye", layout=w.Layout(width="auto"),
                                     tooltip="outline each op by the kernel torch.compile's Inductor puts it in")
        self.toggle.observe(guard(lambda c: self._on_toggle(c["new"])), names="value")
        self.measure_button = w.Button(description="measure", icon="clock-o",
                                       tooltip="time each candidate fused (Inductor, alone) vs unfused on this CPU")
        self.measure_button.on_click(guard(lambda _b: self.measure()))
        self.like_button = w.Button(description="start from torch.compile's choices", icon="magic",
                                    layout=w.Layout(width="auto"),
                                    tooltip="select every candidate whose ops Inductor computes in one kernel")
        self.like_button.on_click(guard(lambda _b: self.select_like()))
        self.diff_box = w.HTML(_html.message(
            "press \"torch.compile's kernels\" (or ex.show_inductor(True)) to compile these graphs as "
            "torch.compile would and compare its kernels with the candidates", "info"))
        self.box = w.VBox([w.HBox([self.toggle, self.like_button]), self.task.status, self.diff_box])

    # ------------------------------------------------------------------ Inductor's kernels

    def show(self, on: bool = True) -> None:
        """Draw (or hide) torch.compile's kernels over the graph; compiles them the first time."""
        if self.toggle.value != on:
            self.toggle.value = on  # the observer does the rest
        else:
            self._on_toggle(on)

    def _on_toggle(self, on: bool) -> None:
        self.ex.graph.show_inductor = bool(on)
        if on and self.decisions is None:
            self.compute()

    def compute(self):
        """Compile the capture as torch.compile's Inductor would (in the background)."""
        from ..inductor import inductor_decisions

        return self.task.start("compiling the graphs with torch.compile's Inductor",
                               lambda: inductor_decisions(self.ex.capture), background=self.background,
                               done=self._decided)

    def _decided(self, decisions) -> None:
        self.decisions = decisions
        self.ex.graph.set_inductor(decisions.overlay())
        self.update_diff()
        if decisions.errors:
            self.task.error = "; ".join(decisions.errors)

    def update_diff(self) -> None:
        """The diff of the plan's candidates (recomputed when a rule changed them)."""
        if self.decisions is None or self._diff_of is self.ex.plan.candidates:
            return
        from ..inductor import inductor_diff

        self.diff = inductor_diff(self.ex.plan, self.decisions)
        self._diff_of = self.ex.plan.candidates
        self.diff_box.value = diff_html(self.diff)

    def select_like(self) -> None:
        """``plan.select_like_inductor`` through the explorer (compiles first if needed)."""
        if self.decisions is None:
            self.task.wait()
        if self.decisions is None:
            self.ex.error("torch.compile's kernels are not compiled yet: press \"torch.compile's kernels\" first")
            return
        if not self.ex._apply(lambda: self.ex.plan.select_like_inductor(self.decisions),
                              "started from torch.compile's choices"):
            return
        skipped = self.ex.plan.skipped
        self.ex.message.value = _html.message(
            f"started from torch.compile's choices: {len(self.ex.plan.selected)} candidates selected "
            "(those whose ops Inductor computes in one kernel)"
            + (f"; {len(skipped)} skipped (see the plan summary)" if skipped else ""), "info")

    # ------------------------------------------------------------------ measured

    def measure(self, rounds: int = 30, candidates=None):
        """``measure_candidates(plan)`` (all candidates, or the ids given) in the background; the
        list shows each row's verdict."""
        from ..inductor import measure_candidates

        plan = self.ex.plan
        task = self.measure_task
        n = len(plan.candidates) if candidates is None else len(candidates)
        return task.start(f"measuring {n} candidates fused vs unfused (CPU)",
                          lambda: measure_candidates(plan, candidates, rounds=rounds, progress=False,
                                                     on_progress=task.progress),
                          background=self.background, done=self._measured)

    def _measured(self, values) -> None:
        self.values = values
        self.ex.table.measured = dict(self.ex.table.measured, **{v.candidate: measured_cell(v) for v in values})
        slower = len(values.slower)
        self.measure_task.what = (f"measured on {values.device}: {len(values)} candidates, "
                                  f"{slower} slower fused")
