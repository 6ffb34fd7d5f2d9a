"""The explorer's candidate list: one line per candidate, as an ipywidgets grid.

Checkbox (in the plan), id (a button: focus it), kernels, saves (modeled), modules. Long
text is cut with an ellipsis; the whole of it is in the tooltip. A candidate that saves no
bytes says why it is listed at all.
"""

from __future__ import annotations

import html

from ..nodecost import fmt_bytes
from . import _html

TABLE_COLUMNS = "28px minmax(160px, 2fr) 64px 150px minmax(0, 1fr)"
ELLIPSIS = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;font-size:12px"


def candidate_table(plan, on_toggle, on_focus):
    """``(grid, checkboxes, focus_buttons)``; ``on_toggle(cid)`` / ``on_focus(cid)`` return
    the callbacks of candidate ``cid``'s checkbox (``observe``) and button (``on_click``)."""
    import ipywidgets as w

    cells = [w.HTML(f"<b>{h}</b>") for h in ("", "candidate (click: show)", "kernels",
                                              "saves (modeled)", "modules")]
    checkboxes: dict = {}
    focus_buttons: dict = {}
    for c in plan.candidates:
        cb = w.Checkbox(value=plan.is_selected(c.id), indent=False, layout=w.Layout(width="24px"))
        cb.observe(on_toggle(c.id), names="value")
        zero = _html.zero_saving_reason(c)
        tip = f"{c.id}: {c.pattern}, {len(c.nodes)} nodes in {', '.join(c.modules)}"
        btn = w.Button(description=c.id, tooltip=tip + (f"\n{zero}" if zero else ""),
                       layout=w.Layout(width="100%", height="24px", margin="0"))
        btn.style.font_family = "monospace"
        btn.style.button_color = "#f9fafb"
        btn.on_click(on_focus(c.id))
        checkboxes[c.id] = cb
        focus_buttons[c.id] = btn
        saves = (f"<div style='{ELLIPSIS}' title='{html.escape(zero, quote=True)}'>0 B "
                 "<i>(launches only)</i></div>") if zero else fmt_bytes(c.bytes_saved)
        mods = ", ".join(c.modules)
        cells += [cb, btn, w.HTML(f"{c.kernels_unfused} &rarr; 1"), w.HTML(saves),
                  w.HTML(f"<div style='{ELLIPSIS}' title='{html.escape(mods, quote=True)}'>"
                         f"{html.escape(mods)}</div>", layout=w.Layout(min_width="0", overflow="hidden"))]
    grid = w.GridBox(cells, layout=w.Layout(
        grid_template_columns=TABLE_COLUMNS, grid_gap="1px 8px", align_items="center",
        grid_auto_rows="26px", max_height="290px", overflow="auto",
        border="1px solid #e5e7eb", padding="4px"))
    return grid, checkboxes, focus_buttons
