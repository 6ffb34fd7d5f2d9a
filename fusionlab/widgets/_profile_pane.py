"""The explorer's profile tab, and the loop line: modeled at once, measured when it arrives.

Its controls (steps, variants, executor) are read by :meth:`ProfilePane.options`; the
button runs ``fusionlab.profile`` on a frozen copy of the plan (in a background thread
inside a kernel, so the notebook stays usable; a progress bar and the seconds so far in its
status line, the time it took when done) and shows the result's own table, which labels
measured and modeled numbers.

The loop (issue 15): after a change of the selection, :meth:`ProfilePane.plan_changed`
marks the measured result *stale* (it was measured for another selection: dimmed, its
figure hidden, a banner says so) and, once a profile has run and "re-measure" is on,
starts a new one (queued behind a running one). The explorer's loop line
(:meth:`ProfilePane.loop_html`) shows the modeled step for the chosen GPU at once, and the
measured verdict, labelled with its device and executor, when it arrives.
"""

from __future__ import annotations

import html

from ..profile_options import EXECUTORS, STEPS
from . import _html
from ._tasks import Task


def frozen_plan(plan):
    """A copy of ``plan`` (same capture and candidates, same selection) that later clicks
    do not change: what a background profile measures."""
    from ..plan import FusionPlan

    copy = FusionPlan(plan.capture, plan.candidates)
    ids = [c.id for c in plan.selected + plan.optimizer_selected]
    if ids:
        copy.select(*ids)
    return copy


class ProfilePane:
    def __init__(self, explorer, *, background: bool = False):
        import ipywidgets as w

        self.ex = explorer
        self.background = background
        self.result = None
        self.kept = None  # compiled steps kept between this pane's profiles (a KeptSteps, made on first use)
        self.stale = False  # the result was measured for another selection
        self.measured_for: tuple = ()  # the candidate ids the result measured
        self.last_options: dict | None = None
        self.task = Task("profile")
        self.output = w.Output()
        self.html = w.HTML()
        self.button = w.Button(description="profile fused vs unfused (measured)",
                               icon="tachometer", layout=w.Layout(width="300px"))
        self.button.on_click(lambda _b: self.run(background=self.background, **self.options()))
        self.auto = w.Checkbox(value=True, indent=False, layout=w.Layout(width="420px"),
                               description="re-measure after each change of the selection (once profiled)")
        self.steps = w.IntSlider(value=STEPS, min=1, max=200, description="steps",
                                 layout=w.Layout(width="320px"))
        self.variants = {
            name: w.Checkbox(value=name in ("eager", "unfused", "fusionlab"), description=name,
                             indent=False, layout=w.Layout(width="95px"))
            for name in ("eager", "unfused", "fusionlab", "inductor")
        }
        self.executor = w.Dropdown(
            options=list(EXECUTORS), value="auto",
            description="executor", layout=w.Layout(width="260px"),
            tooltip="auto: Triton on a GPU; on CPU Inductor, fusing only inside your groups")
        self.html.value = _html.message(
            "Runs training steps with and without the plan and measures them on this machine. "
            "unfused: the same executor with nothing selected; inductor: plain torch.compile.")
        controls = w.HBox([self.steps, *self.variants.values(), self.executor])
        self.box = w.VBox([controls, w.HBox([self.button, self.auto]), self.task.status, self.html,
                           self.output])

    def options(self) -> dict:
        """What the controls say: steps, warm-up, variants, executor."""
        steps = int(self.steps.value)
        compare = tuple(n for n, box in self.variants.items() if box.value) or ("eager", "fusionlab")
        return {"steps": steps, "warmup": max(1, min(5, steps // 4)), "compare": compare,
                "executor": self.executor.value}

    # ------------------------------------------------------------------ running

    def run(self, background: bool = False, queue: bool = False, **options):
        ex = self.ex
        if ex.model is None or not ex.inputs:
            self.html.value = _html.message(
                "profiling needs the model and its inputs: use explore(model, *inputs)", "error")
            return None
        self.last_options = dict(options)
        plan = frozen_plan(ex.plan)
        ids = tuple(c.id for c in plan.selected)
        n = len(ids)
        what = (f"profiling {options.get('steps', STEPS)}+ steps with {n} fusion{'s' if n != 1 else ''} "
                "(measured on this machine)")
        if self.result is not None and ids != self.measured_for:
            self.mark_stale()
        return self.task.start(what, lambda: self._measure(plan, options), background=background,
                               done=lambda r: self._show(r, ids), queue=queue, after=self._after)

    def _measure(self, plan, options: dict):
        from ..profiler import KeptSteps, profile

        ex = self.ex
        if self.kept is None:
            self.kept = KeptSteps()
        # the compiled steps stay between this pane's profiles: after a toggle only the changed
        # pieces of the fusionlab step are compiled again (fusionlab.profiler.kept)
        return profile(ex.model, ex.inputs, plan=plan, loss_fn=ex.loss_fn, keep=self.kept, **options)

    def _show(self, result, ids: tuple) -> None:
        self.result, self.measured_for = result, ids
        self.stale = ids != tuple(c.id for c in self.ex.plan.selected)

    def _after(self) -> None:
        """After each run, failed or not (the task no longer counts as running)."""
        self._render()
        self.ex.update_loop()

    def _render(self) -> None:
        result = self.result
        if result is None:
            return
        took = f" (took {self.task.seconds:.1f} s)" if self.task.seconds is not None else ""
        banner = ""
        if self.stale:
            banner = _html.message(
                f"STALE: measured for an earlier selection ({len(self.measured_for)} fusions)"
                f"{'; a new profile is running' if self.task.running else ''}", "error")
        body = f"<div style='overflow-x:auto;font-size:12px'>{result._repr_html_()}</div>"
        if self.stale:
            body = f"<div style='opacity:0.45' data-role='stale'>{body}</div>"
        self.html.value = banner + _html.message(f"measured on {result.device}{took}") + body
        if self.stale:
            self.output.layout.display = "none"  # the figure of another selection: not shown as current
            return
        self.output.layout.display = None
        try:
            self.ex.show_figure("profile", self.output, result.figure())
        except Exception as e:  # noqa: BLE001 - no plotly, or no figure for this result
            self.output.outputs = ()
            self.html.value += _html.message(f"(no figure: {e})")

    # ------------------------------------------------------------------ the loop

    def mark_stale(self) -> None:
        if self.result is not None and not self.stale:
            self.stale = True
            self._render()

    def plan_changed(self) -> None:
        """The selection changed: the measured result is stale; re-measure when asked to."""
        ids = tuple(c.id for c in self.ex.plan.selected)
        if self.result is None and not self.task.running:
            return
        if self.result is not None and ids == self.measured_for:
            if self.stale and not self.task.running:
                self.stale = False
                self._render()
            return
        self.mark_stale()
        if self.auto.value and self.last_options is not None:
            self.run(background=self.background, queue=True, **self.last_options)

    def loop_html(self, modeled: str) -> str:
        """One line: the modeled step (now) and the measured verdict (when it arrives)."""
        parts = [modeled]
        res = self.result
        if self.task.running:
            parts.append(f"measured: re-measuring ({html.escape(self.task.what)})")
        if res is not None:
            name = "fusionlab" if any(v.name == "fusionlab" for v in res.variants) else None
            verdict = ""
            if name and res.baseline != name:
                v = res.variant(name)
                verdict = (f"{html.escape(str(res.verdict(name)))}; fusionlab {v.median_ms:.2f} ms/step "
                           f"({html.escape(v.executor)})")
            took = f", took {self.task.seconds:.1f} s" if self.task.seconds is not None and not self.task.running else ""
            state = ("<b style='color:#b91c1c'>stale</b> (an earlier selection)" if self.stale
                     else "<b>current</b>")
            parts.append(f"measured on {html.escape(res.device)}{took}, {state}: {verdict or 'see the profile tab'}")
        elif self.task.error and not self.task.running:
            parts.append(f"measured: the profile failed ({html.escape(self.task.error)})")
        elif not self.task.running:
            parts.append("measured: not yet (the profile tab measures it)")
        return ("<div style='font-size:12px' data-role='loop'>" + modeled
                + "".join(f"<div>{p}</div>" for p in parts[1:]) + "</div>")
