"""The explorer's profile tab: measured training steps with and without the plan.

Its controls (steps, variants, executor) are read by :meth:`ProfilePane.options`; the
button runs ``fusionlab.profile`` (in a background thread inside a kernel, so the notebook
stays usable) and shows the result's own table, which labels measured and modeled numbers.
"""

from __future__ import annotations

import threading

from ..profile_options import EXECUTORS, STEPS
from . import _html


class ProfilePane:
    def __init__(self, explorer, *, background: bool = False):
        import ipywidgets as w

        self.ex = explorer
        self.background = background
        self.result = None
        self.thread: threading.Thread | None = None
        self.output = w.Output()
        self.html = w.HTML()
        self.button = w.Button(description="profile fused vs unfused (measured)",
                               icon="tachometer", layout=w.Layout(width="300px"))
        self.button.on_click(lambda _b: self.run(background=self.background, **self.options()))
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
        self.box = w.VBox([controls, self.button, self.html, self.output])

    def options(self) -> dict:
        """What the controls say: steps, warm-up, variants, executor."""
        steps = int(self.steps.value)
        compare = tuple(n for n, box in self.variants.items() if box.value) or ("eager", "fusionlab")
        return {"steps": steps, "warmup": max(1, min(5, steps // 4)), "compare": compare,
                "executor": self.executor.value}

    def run(self, background: bool = False, **options):
        ex = self.ex
        if ex.model is None or not ex.inputs:
            self.html.value = _html.message(
                "profiling needs the model and its inputs: use explore(model, *inputs)", "error")
            return None
        if background:
            if self.thread is not None and self.thread.is_alive():
                self.html.value = _html.message("a profile is still running; wait for it", "error")
                return None
            self.thread = threading.Thread(target=lambda: self._run(options), daemon=True)
            self.thread.start()
            return None
        return self._run(options)

    def _run(self, options: dict):
        from ..profiler import profile

        ex = self.ex
        self.html.value = _html.message("profiling (measured on this machine) ...")
        try:
            result = profile(ex.model, ex.inputs, plan=ex.plan, loss_fn=ex.loss_fn, **options)
        except Exception as e:  # noqa: BLE001 - a failed run is shown, not raised into the UI
            self.html.value = _html.message(f"profile failed: {type(e).__name__}: {e}", "error")
            return None
        self.result = result
        # the profile's own HTML (it labels measured vs modeled), in a box that scrolls sideways
        self.html.value = f"<div style='overflow-x:auto;font-size:12px'>{result._repr_html_()}</div>"
        try:
            ex.show_figure("profile", self.output, result.figure())
        except Exception as e:  # noqa: BLE001 - no plotly, or no figure for this result
            self.output.outputs = ()
            self.html.value += _html.message(f"(no figure: {e})")
        return result
