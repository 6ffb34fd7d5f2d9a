"""The kernel pane's inspector and export: what a GPU would run, and the kernels as files.

- **inspect**: a GPU target (``sm_80``, ``sm_89``, ``sm_90``) and a button that compiles the
  focused candidate's kernel for it with :mod:`fusionlab.inspect` (in worker processes; in a
  background thread when ``background``, with a progress bar and the time it took), then
  shows registers, spills, shared memory, the *modeled* occupancy, and the PTX and SASS in
  collapsible, scrollable code views. SASS needs ``nvdisasm``/``cuobjdump`` (the triton
  wheel ships them); where they are missing the pane says so instead.
- **export**: writes the selected candidates' kernels (the focused one when nothing is
  selected) as standalone modules with :func:`fusionlab.kernels.export.export_kernels`, and
  shows the folder written and which of those kernels were checked.
"""

from __future__ import annotations

import html
import os

from ..inspect.compile import TARGETS
from . import _html
from ._tasks import Task

CODE = ("font-size:11px;line-height:1.3;max-height:360px;overflow:auto;white-space:pre;background:#f9fafb;"
        "border:1px solid #e5e7eb;padding:6px;margin:0")


def report_html(rep) -> str:
    """A CompileReport: resources (ptxas; occupancy modeled), then PTX and SASS folded."""
    head = f"<b>{html.escape(rep.name)}</b> compiled for <code>{html.escape(rep.target)}</code>"
    if not rep.ok:
        err = html.escape((rep.error or "failed").strip())
        return (f"<div style='font-size:12px'>{head}: <span style='color:{_html.BAD}'>FAILED</span>"
                f"<pre style='{CODE};color:{_html.BAD};white-space:pre-wrap'>{err}</pre></div>")

    def b(n):
        return "?" if n is None else f"{n:,} B"

    occ = "?" if rep.occupancy is None else (
        f"{rep.resident_warps} warps/SM ({rep.occupancy:.0%}), limited by {rep.occupancy_limiter} (modeled)")
    took = "served from the disk cache" if rep.cached else f"{rep.compile_seconds:.2f} s"
    rows = [("registers / thread", "?" if rep.registers is None else str(rep.registers)),
            ("spill stores", b(rep.spills)), ("shared memory / block", b(rep.shared_mem)),
            ("num_warps", "?" if rep.num_warps is None else str(rep.num_warps)),
            ("occupancy", occ), ("compile", f"{took}, triton {rep.triton_version or '?'}")]
    table = "".join(f"<tr><th style='text-align:left;padding:0 8px 0 0'>{k}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    parts = [f"<div style='font-size:12px' data-role='inspect-report'>{head} (ptxas; nothing here ran on a GPU)"
             f"<table style='font-size:12px'>{table}</table>"]
    for stage, label in (("ptx", "PTX"), ("sass", "SASS (with the Python lines)")):
        text = rep.stages.get(stage)
        if text:
            parts.append(f"<details data-stage='{stage}'><summary>{label}: {len(text.splitlines())} lines"
                         f"</summary><pre style='{CODE}'>{html.escape(text)}</pre></details>")
        elif stage == "sass":
            why = next((n for n in rep.notes if "SASS" in n or "nvdisasm" in n), "")
            parts.append(f"<div data-stage='sass-missing'>SASS: not available here"
                         f"{': ' + html.escape(why) if why else ''}</div>")
    notes = [n for n in rep.notes if "SASS unavailable" not in n]
    if notes:
        parts.append("<ul style='margin:2px 0'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts) + "</div>"


class InspectPane:
    """Target dropdown + compile button + report; export folder + button + what was written."""

    def __init__(self, kernel_pane, *, background: bool = False):
        import ipywidgets as w

        self.kp = kernel_pane
        self.background = background
        self.reports: dict = {}  # (candidate id, target) -> CompileReport
        self.task = Task("inspect")
        self.target = w.Dropdown(options=list(TARGETS), value="sm_90", description="GPU target",
                                 layout=w.Layout(width="190px"))
        self.compile_button = w.Button(description="compile for target", icon="microchip",
                                       tooltip="compile the kernel for this GPU with Triton + ptxas (no GPU needed)",
                                       layout=w.Layout(width="170px"))
        self.compile_button.on_click(lambda _b: self.inspect(background=self.background))
        self.target.observe(lambda _c: self.show(), names="value")
        self.report = w.HTML()
        self.folder = w.Text(value="fusionlab_kernels", description="export to",
                             layout=w.Layout(width="300px"))
        self.export_button = w.Button(description="export kernels", icon="download",
                                      tooltip="the selected candidates' kernels (or the focused one) as .py modules",
                                      layout=w.Layout(width="150px"))
        self.export_button.on_click(lambda _b: self.export())
        self.exported = w.HTML()
        self.box = w.VBox([
            w.HTML("<b style='font-size:12px'>inspect: what a GPU would run</b>"),
            w.HBox([self.target, self.compile_button]), self.task.status, self.report,
            w.HBox([self.folder, self.export_button]), self.exported])

    def show(self) -> None:
        """The report of the focused kernel for the chosen target, if one was compiled."""
        rep = self.reports.get((self.kp.cid, self.target.value))
        self.report.value = report_html(rep) if rep is not None else ""

    def inspect(self, cid: str | None = None, target: str | None = None, background: bool = False):
        """Compile `cid`'s kernel (default: the focused one) for `target` (default: the
        dropdown's); returns the CompileReport when not in the background."""
        cid = cid or self.kp.cid
        target = target or self.target.value
        if cid is None:
            self.report.value = _html.message("focus a candidate first: its kernel is what gets compiled", "error")
            return None
        if target not in TARGETS:
            self.report.value = _html.message(f"no GPU target {target!r}; targets: {', '.join(TARGETS)}", "error")
            return None

        def job():
            return self.kp.kernel(cid).inspect(target)

        def done(rep) -> None:
            self.reports[(cid, target)] = rep
            if not rep.ok:
                self.task.error = (rep.error or "failed").strip().splitlines()[0]
            self.show()

        return self.task.start(f"compiling {cid} for {target} (worker processes)", job,
                               background=background, done=done)

    def export(self, folder: str | None = None) -> list:
        """Write the selected kernels (or the focused one) into `folder`; returns the paths."""
        from ..kernels.export import export_kernels

        folder = os.path.abspath(os.path.expanduser(folder or self.folder.value or "fusionlab_kernels"))
        cids = [c.id for c in self.kp.plan.selected] or ([self.kp.cid] if self.kp.cid else [])
        if not cids:
            self.exported.value = _html.message("nothing to export: select candidates or focus one", "error")
            return []
        try:
            kernels = [self.kp.kernel(cid) for cid in cids]
            paths = export_kernels([k.source for k in kernels], folder)
        except Exception as e:  # noqa: BLE001 - a bad folder or a refused kernel: shown, not raised
            self.exported.value = _html.message(f"export failed: {type(e).__name__}: {e}", "error")
            return []
        unchecked = [cid for cid, k in zip(cids, kernels) if not (k.check_result and k.check_result.ok)]
        note = (f"; not checked against PyTorch yet: {', '.join(unchecked)}" if unchecked
                else "; every one checked against PyTorch")
        self.exported.value = _html.message(
            f"wrote {len(kernels)} kernel module{'s' if len(kernels) != 1 else ''} and __init__.py to "
            f"{folder}{note}", "ok")
        return paths
