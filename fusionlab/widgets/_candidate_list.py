"""The explorer's candidate list: one widget (an anywidget drawing an HTML table), one line
per candidate.

Checkbox (in the plan), id (click: focus it), kernels, saves (modeled), measured (after
``ex.measure()``), modules. Long text is cut with an ellipsis; the whole of it is in the
tooltip. A candidate that saves no bytes says why it is listed at all; a candidate measured
slower fused is flagged.

One widget for the whole list (the rows are plain data in ``rows``) instead of five
ipywidgets per row: a 12-layer GPT-2 has 119 candidates, which were about 1,900 widget
models (1.5 s to build, more to render). State:

- ``rows``: one dict per candidate (id, pattern, kernels, saves, zero, modules, tip)
- ``selected``: the checked ids; a checkbox click sets it, the explorer applies it to the
  plan (``on_toggle(cid, checked)``) and puts it back to the plan on a refusal
- ``measured``: id -> {"text", "slower", "tip"}
- a click on an id sends ``{"focus": cid}`` (``on_focus(cid)``)

``checkboxes[cid].value`` and ``focus_buttons[cid].click()`` are small stand-ins with the old
per-row widgets' behaviour, for code and tests.
"""

from __future__ import annotations

import anywidget
import traitlets as t

from ..nodecost import fmt_bytes
from . import _html

ROW_HEIGHT = "26px"

_ESM = r"""
function render({ model, el }) {
  const css = document.createElement("style");
  css.textContent = `
.flc { max-height: 290px; overflow: auto; border: 1px solid #e5e7eb; padding: 4px; font: 12px Helvetica, Arial, sans-serif; }
.flc table { border-collapse: collapse; width: 100%; table-layout: fixed; }
.flc td, .flc th { height: ${model.get("row_height")}; padding: 0 6px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; text-align: left; }
.flc tr:hover td { background: #f3f4f6; }
.flc .id { font-family: ui-monospace, Menlo, monospace; cursor: pointer; color: #1f2937; }
.flc .id:hover { text-decoration: underline; }
.flc .slower td { background: #fef2f2; }
.flc .slow { color: #b91c1c; font-weight: bold; }
.flc .muted { color: #6b7280; }`;
  const box = document.createElement("div");
  box.className = "flc";
  box.dataset.role = "candidate-list";
  el.append(css, box);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  function draw() {
    const sel = new Set(model.get("selected"));
    const meas = model.get("measured") || {};
    const any = Object.keys(meas).length > 0;
    const head = `<tr><th style="width:26px"></th><th style="width:34%">candidate (click: show)</th><th style="width:64px">kernels</th>` +
      `<th style="width:130px">saves (modeled)</th>` + (any ? `<th style="width:170px">measured (CPU)</th>` : "") + `<th>modules</th></tr>`;
    const rows = model.get("rows").map((r) => {
      const m = meas[r.id];
      const mcell = any ? `<td title="${esc(m ? m.tip : "not measured")}" class="${m && m.slower ? "slow" : ""}">${esc(m ? m.text : "-")}</td>` : "";
      const saves = r.zero ? `<td title="${esc(r.zero)}">0 B <i class="muted">(launches only)</i></td>` : `<td>${esc(r.saves)}</td>`;
      return `<tr data-cid="${esc(r.id)}" class="${m && m.slower ? "slower" : ""}"><td><input type="checkbox" data-cid="${esc(r.id)}"${sel.has(r.id) ? " checked" : ""}></td>` +
        `<td class="id" data-focus="${esc(r.id)}" title="${esc(r.tip)}">${esc(r.id)}</td><td>${r.kernels} &rarr; 1</td>${saves}${mcell}` +
        `<td title="${esc(r.modules)}">${esc(r.modules)}</td></tr>`;
    });
    box.innerHTML = `<table>${head}${rows.join("")}</table>`;
  }
  function restyle() {
    const sel = new Set(model.get("selected"));
    box.querySelectorAll("input[data-cid]").forEach((cb) => { cb.checked = sel.has(cb.dataset.cid); });
  }
  box.addEventListener("change", (e) => {
    const cb = e.target.closest("input[data-cid]");
    if (!cb) return;
    const cur = model.get("selected").filter((c) => c !== cb.dataset.cid);
    model.set("selected", cb.checked ? [...cur, cb.dataset.cid] : cur);
    model.save_changes();
  });
  box.addEventListener("click", (e) => {
    const td = e.target.closest("[data-focus]");
    if (td) model.send({ focus: td.dataset.focus });
  });
  model.on("change:rows", draw);
  model.on("change:measured", draw);
  model.on("change:selected", restyle);
  draw();
}
export default { render };
"""


def row(c) -> dict:
    """One candidate as the list's plain data."""
    zero = _html.zero_saving_reason(c)
    tip = f"{c.id}: {c.pattern}, {len(c.nodes)} nodes in {', '.join(c.modules)}"
    return {"id": c.id, "pattern": c.pattern, "kernels": c.kernels_unfused, "saves": fmt_bytes(c.bytes_saved),
            "zero": zero, "modules": ", ".join(c.modules), "tip": tip + (f"\n{zero}" if zero else "")}


def measured_cell(v) -> dict:
    """A CandidateValue as the list's measured cell (text, slower flag, tooltip)."""
    if v.error:
        return {"text": "not timed", "slower": False, "tip": v.error}
    same = f"; same ops and shapes as {v.same_as}" if v.same_as else ""
    return {"text": v.short + (" (slower fused)" if v.slower else ""), "slower": v.slower,
            "tip": (f"measured on {v.device}: unfused {v.unfused_ms:.3f} ms (IQR {v.unfused_iqr_ms:.3f}), "
                    f"fused {v.fused_ms:.3f} ms (IQR {v.fused_iqr_ms:.3f}), {v.rounds} interleaved rounds{same}")}


class CandidateList(anywidget.AnyWidget):
    """The candidate list (see the module docstring)."""

    _esm = _ESM
    rows = t.List(t.Dict()).tag(sync=True)
    selected = t.List(t.Unicode()).tag(sync=True)
    measured = t.Dict().tag(sync=True)
    row_height = t.Unicode(ROW_HEIGHT).tag(sync=True)

    def __init__(self, plan, on_toggle, on_focus, **kwargs):
        super().__init__(rows=[row(c) for c in plan.candidates],
                         selected=[c.id for c in plan.selected], **kwargs)
        self._on_toggle, self._on_focus = on_toggle, on_focus
        self.syncing = False  # set while the explorer puts the list back to the plan
        self.observe(self._changed, "selected")
        self.on_msg(self._msg)

    def set_candidates(self, candidates, selected) -> None:
        """New rows (the plan's candidates changed: a rule was added or removed)."""
        ids = {c.id for c in candidates}
        self.syncing = True
        try:
            self.rows = [row(c) for c in candidates]
            self.selected = [c for c in selected if c in ids]
            self.measured = {k: v for k, v in self.measured.items() if k in ids}
        finally:
            self.syncing = False

    def show_selected(self, ids) -> None:
        """Put the checkboxes to ``ids`` without answering it as a click."""
        ids = list(ids)
        if ids == self.selected:
            return
        self.syncing = True
        try:
            self.selected = ids
        finally:
            self.syncing = False

    def _changed(self, change) -> None:
        if self.syncing:
            return
        old, new = set(change["old"]), set(change["new"])
        for cid in [c for c in change["new"] if c not in old]:
            self._on_toggle(cid, True)
        for cid in [c for c in change["old"] if c not in new]:
            self._on_toggle(cid, False)

    def _msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("focus"):
            self._on_focus(content["focus"])

    def check(self, cid: str, value: bool) -> None:
        """What a click on ``cid``'s checkbox does."""
        cur = [c for c in self.selected if c != cid]
        self.selected = cur + [cid] if value else cur

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]


class Checkbox:
    """``checkboxes[cid]``: ``.value`` reads and clicks candidate ``cid``'s checkbox."""

    def __init__(self, table: CandidateList, cid: str):
        self.table, self.cid = table, cid

    @property
    def value(self) -> bool:
        return self.cid in self.table.selected

    @value.setter
    def value(self, v: bool) -> None:
        if bool(v) != self.value:
            self.table.check(self.cid, bool(v))


class FocusButton:
    """``focus_buttons[cid]``: ``.click()`` is a click on the row's id; its text and tooltip."""

    def __init__(self, table: CandidateList, cid: str):
        self.table, self.cid = table, cid

    @property
    def _row(self) -> dict:
        return next(r for r in self.table.rows if r["id"] == self.cid)

    @property
    def description(self) -> str:
        return self.cid

    @property
    def tooltip(self) -> str:
        return self._row["tip"]

    def click(self) -> None:
        self.table._on_focus(self.cid)


class _Rows(dict):
    """cid -> stand-in, following the list's current rows."""

    def __init__(self, table: CandidateList, kind):
        super().__init__()
        self.table, self.kind = table, kind
        table.observe(lambda _c: self._sync(), "rows")
        self._sync()

    def _sync(self) -> None:
        self.clear()
        self.update({cid: self.kind(self.table, cid) for cid in self.table.ids})


def candidate_table(plan, on_toggle, on_focus):
    """``(table, checkboxes, focus_buttons)``: the list widget, and per-candidate stand-ins;
    ``on_toggle(cid, checked)`` / ``on_focus(cid)`` are called on a checkbox / id click."""
    table = CandidateList(plan, on_toggle, on_focus)
    return table, _Rows(table, Checkbox), _Rows(table, FocusButton)
