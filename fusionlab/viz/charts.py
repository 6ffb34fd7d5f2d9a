"""Plotly charts of modeled numbers: bytes each candidate saves, and a plan's before/after.

Everything here is *modeled* (counted from the captured graph: each op alone reads its
inputs and writes its result; a fused kernel reads each group input and writes each
group output once). The titles say so. Measured numbers come from ``fusionlab.profile``.
"""

from __future__ import annotations

BEFORE = "#9ca3af"
AFTER = "#2563eb"
SELECTED = "#2563eb"
UNSELECTED = "#cbd5e1"


def _kib(n: float) -> float:
    return n / 1024


def candidates_figure(candidates, selected=(), title: str | None = None):
    """Horizontal bars: modeled bytes each candidate saves per step; selected ones in blue."""
    import plotly.graph_objects as go

    sel = {getattr(s, "id", s) for s in (selected or ())}
    cands = list(candidates)[::-1]  # plotly draws the first bar at the bottom
    fig = go.Figure(
        go.Bar(
            y=[c.id for c in cands],
            x=[_kib(c.bytes_saved) for c in cands],
            orientation="h",
            marker_color=[SELECTED if c.id in sel else UNSELECTED for c in cands],
            text=[f"{c.kernels_unfused}->1 kernels" for c in cands],
            textposition="auto",
            customdata=[[len(c.nodes), ", ".join(c.modules[:3]) or "-",
                         "selected" if c.id in sel else "not selected"] for c in cands],
            hovertemplate="%{y}<br>saves %{x:.1f} KiB (modeled)<br>%{text}, %{customdata[0]} nodes"
                          "<br>modules: %{customdata[1]}<br>%{customdata[2]}<extra></extra>",
            name="bytes saved",
        )
    )
    fig.update_layout(
        title=title or "Bytes saved per step by each candidate (modeled)",
        xaxis_title="KiB saved per step (modeled)",
        height=140 + 26 * max(len(cands), 1),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
        yaxis={"automargin": True},
        template="plotly_white",
    )
    return fig


def plan_figure(plan_or_summary, title: str | None = None, gpu: str | None = None):
    """Kernels launched and bytes moved per training step, before and after the plan (modeled).

    With ``gpu`` ("h100", "a100", ...) and a FusionPlan, a third panel shows the step time
    modeled on that GPU's spec sheet (``fusionlab.cost.roofline``), when that module exists.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = plan_or_summary.summary() if hasattr(plan_or_summary, "summary") else plan_or_summary
    tags = list(s.per_graph) + ["total"]
    panels = [
        ("kernels launched per step", "kernels", "%{y}",
         [v[0] for v in s.per_graph.values()] + [s.kernels_before],
         [v[1] for v in s.per_graph.values()] + [s.kernels_after]),
        ("KiB moved per step (modeled)", "KiB", "%{y:.1f}",
         [_kib(v[2]) for v in s.per_graph.values()] + [_kib(s.bytes_before)],
         [_kib(v[3]) for v in s.per_graph.values()] + [_kib(s.bytes_after)]),
    ]
    modeled = _modeled_ms(plan_or_summary, gpu) if gpu else None
    if modeled is not None:
        label, before, after = modeled
        panels.append((f"ms per step<br>{label}", "ms", "%{y:.3f}", [before], [after]))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels],
                        column_widths=[1.0, 1.0, 0.6][: len(panels)])
    fig.update_annotations(font_size=13)
    for col, (_t, unit, fmt, before, after) in enumerate(panels, start=1):
        x = tags if len(before) == len(tags) else ["total"]
        fig.add_trace(go.Bar(x=x, y=before, name="unfused", marker_color=BEFORE,
                             legendgroup="before", showlegend=col == 1,
                             hovertemplate=f"%{{x}} unfused: {fmt} {unit}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Bar(x=x, y=after, name="with plan", marker_color=AFTER,
                             legendgroup="after", showlegend=col == 1,
                             hovertemplate=f"%{{x}} with plan: {fmt} {unit}<extra></extra>"), row=1, col=col)
    fig.update_layout(
        title=title or f"Plan summary (modeled): {s.selected} of {s.candidates} candidates selected",
        barmode="group", height=340, template="plotly_white",
        margin={"l": 10, "r": 10, "t": 90, "b": 30},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def _modeled_ms(plan, gpu: str):
    """(label, unfused ms, fused ms) of the plan's step on `gpu`'s spec, or None."""
    if not hasattr(plan, "selected"):
        return None
    try:
        from ..cost import roofline
    except ImportError:
        return None
    before = roofline(plan, gpu, fused=False)
    after = roofline(plan, gpu, fused=True)
    return before.label, before.ms, after.ms


def mimebundle(fig) -> dict:
    """A display bundle for a figure that needs no plotly renderer set-up (JupyterLab's plotly
    mime renderer, with an HTML fallback that loads plotly.js from its CDN)."""
    import json

    import plotly.io as pio

    spec = json.loads(pio.to_json(fig, validate=False))
    spec["config"] = {"displaylogo": False, "responsive": True}
    return {
        "application/vnd.plotly.v1+json": spec,
        "text/html": pio.to_html(fig, include_plotlyjs="cdn", full_html=False),
        "text/plain": f"<plotly figure: {fig.layout.title.text or ''}>",
    }
