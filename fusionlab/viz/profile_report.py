"""A profile drawn: the plotly figure and the stand-alone HTML report of a ProfileResult.

``profile_figure(result)``: step times with their spread and verdicts (measured), bytes moved, the
per-group breakdown and a roofline (modeled, labeled with the GPU spec), and the top ops
and kernels of one profiled step per variant (measured). ``profile_html(result)``: the
table, the figure (plotly.js inlined: opens with no server and no network), each
variant's backend report and top kernels. plotly is imported on first use.
"""

from __future__ import annotations

import html

_COLORS = {"eager": "#7f7f7f", "unfused": "#bcbd22", "fusionlab": "#1f77b4", "inductor": "#ff7f0e"}


def profile_figure(res):
    """The profile in five panels (three rows); plotly is imported here, on first use."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    gname = res.gpu.name if res.gpu is not None else "GPU"
    fig = make_subplots(
        rows=3, cols=2,
        specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]],
        subplot_titles=(
            f"step time, measured on {res.device} (median, IQR)",
            f"bytes moved per step ({res.modeled_label})",
            f"per fusion group ({res.modeled_label})",
            f"roofline, {res.modeled_label}",
            f"top ops and kernels of one step, measured on {res.device} (torch.profiler self time)",
        ),
        vertical_spacing=0.15,  # room for the fusion groups' rotated names under row 2
    )
    ok = [v for v in res.variants if v.ok]
    from ..profiler.results import verdict_cell

    verdicts = res.verdicts()
    cells = [verdict_cell(verdicts.get(v.name)) for v in ok]
    fig.add_trace(go.Bar(
        # the variant alone on the axis (its executor in the hover and the report's notes):
        # two-line rotated labels ran into the subplot title below
        x=[v.name for v in ok], y=[v.median_ms for v in ok],
        error_y=dict(type="data", symmetric=False, array=[v.q3_ms - v.median_ms for v in ok],
                     arrayminus=[v.median_ms - v.q1_ms for v in ok]),
        text=[f"{v.median_ms:.2f} ms<br>{cell}" for v, cell in zip(ok, cells)], name="measured step time",
        hovertext=[(str(verdicts[v.name]) if v.name in verdicts else f"{v.name}: the baseline")
                   + f"<br>ran on {v.executor}" for v in ok],
        textposition="inside", insidetextanchor="middle",  # clear of the IQR whisker at the top
        showlegend=False,
        marker_color=[_COLORS.get(v.name, "#17becf") for v in ok],
    ), row=1, col=1)
    fig.update_yaxes(title_text="ms per training step (measured)", row=1, col=1)

    names = list(res.modeled)
    mm = [(res.modeled[n].bytes - res.modeled[n].nonmatmul_bytes) / 2**20 for n in names]
    nm = [res.modeled[n].nonmatmul_bytes / 2**20 for n in names]
    fig.add_trace(go.Bar(x=names, y=nm, name="non-matmul (modeled)", marker_color="#2ca02c"), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=mm, name="matmul (modeled)", marker_color="#9467bd"), row=1, col=2)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="MiB per step (modeled)", row=1, col=2)

    fused = res.modeled.get("fusionlab")
    if fused is not None and fused.groups:
        ids = [g.id for g in fused.groups]
        fig.add_trace(go.Bar(x=ids, y=[g.seconds_unfused * 1e6 for g in fused.groups],
                             name=f"unfused, modeled {gname}", marker_color="#7f7f7f", offsetgroup="u"),
                      row=2, col=1)
        fig.add_trace(go.Bar(x=ids, y=[g.seconds_fused * 1e6 for g in fused.groups],
                             name=f"fused, modeled {gname}", marker_color="#1f77b4", offsetgroup="f"),
                      row=2, col=1)
        fig.update_yaxes(title_text="µs per step (modeled)", row=2, col=1)

    if res.gpu is not None and res.modeled:
        spec = res.gpu
        xs = [0.01, 1e4]
        for which, dash in (("fp32", "solid"), ("tf32", "dot"), ("bf16", "dash")):
            peak = spec.peak(which)
            ridge = peak / spec.bandwidth
            fig.add_trace(go.Scatter(
                x=[xs[0], ridge, xs[1]], y=[xs[0] * spec.bandwidth / 1e12, peak / 1e12, peak / 1e12],
                mode="lines", line=dict(dash=dash, color="black", width=1),
                name=f"{spec.name} roof ({which})"), row=2, col=2)
        for n, color in (("eager", "#7f7f7f"), ("fusionlab", "#1f77b4")):
            m = res.modeled.get(n)
            if m is None:
                continue
            ks = [k for k in m.kernels if k.bytes and k.flops and k.seconds]
            fig.add_trace(go.Scatter(
                x=[k.flops / k.bytes for k in ks], y=[k.flops / k.seconds / 1e12 for k in ks],
                mode="markers", marker=dict(color=color, size=6, opacity=0.7), name=f"{n} kernels",
                text=[f"{k.graph}.{k.name} ({k.kind}, {k.bound}-bound)" for k in ks]), row=2, col=2)
        fig.update_xaxes(type="log", title_text="FLOP / byte", row=2, col=2)
        fig.update_yaxes(type="log", title_text="TFLOP/s (modeled, incl. launch)", row=2, col=2)
    for v in ok:  # measured: the top of each variant's torch.profiler table
        top = v.top_kernels[:8]
        if not top:
            continue
        fig.add_trace(go.Bar(
            x=[f"{v.name}: {_short(name)}" for name, _, _ in top], y=[t for _, _, t in top],
            name=f"{v.name} top kernels (measured)", marker_color=_COLORS.get(v.name, "#17becf"),
            text=[f"{n} call(s)" for _, n, _ in top], hovertext=[name for name, _, _ in top],
        ), row=3, col=1)
    fig.update_yaxes(title_text="µs self time, one step (measured)", row=3, col=1)
    fig.update_layout(height=1350, title=f"fusionlab profile: {res.model_name}")
    return fig


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _html_table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def profile_html(res) -> str:
    """A stand-alone HTML report; plotly.js is inlined when plotly is installed."""
    try:
        fig_html = res.figure().to_html(full_html=False, include_plotlyjs="inline")
    except ImportError:
        fig_html = "<p><i>plotly is not installed: no figures (pip install plotly)</i></p>"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>fusionlab profile: {html.escape(res.model_name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px} pre{background:#f6f6f6;padding:1em}"
        "</style></head><body>",
        f"<h1>fusionlab profile: {html.escape(res.model_name)}</h1>",
        res._repr_html_(),
        fig_html,
    ]
    for v in res.variants:
        parts.append(f"<h2>{html.escape(v.name)}: {html.escape(v.executor)}</h2>")
        if v.error:
            parts.append(f"<p>failed: {html.escape(v.error)}</p>")
        if v.report is not None:
            parts.append("<pre>" + html.escape(str(v.report)) + "</pre>")
        if v.top_kernels:
            unit = "device µs" if v.kernels_measured is not None else "CPU µs (self)"
            parts.append(f"<p>one profiled step (torch.profiler, measured on {html.escape(v.device)}):</p>")
            parts.append(_html_table([[n, c, f"{t:.1f}"] for n, c, t in v.top_kernels], ["op / kernel", "calls", unit]))
    for n, m in res.modeled.items():
        parts.append(f"<h2>{html.escape(n)}: {html.escape(m.label)}</h2><pre>{html.escape(str(m))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
