"""Small HTML snippets the explorer's panes are made of (no widgets here)."""

from __future__ import annotations

import html

OK = "#047857"
BAD = "#b91c1c"
MUTED = "#6b7280"


def code_html(source: str) -> str:
    """Python source as highlighted HTML (pygments when present, plain otherwise)."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        body = highlight(source, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=True))
    except ImportError:
        body = html.escape(source)
    return (
        '<pre style="font-size:12px;line-height:1.35;max-height:520px;overflow:auto;'
        f'background:#f9fafb;border:1px solid #e5e7eb;padding:8px;margin:0">{body}</pre>'
    )


def kernel_html(source: str, name: str) -> str:
    """The kernel and its launcher first (after the module docstring); the whole module folded."""
    start = source.find(f"@triton.jit\ndef {name}(")
    if start < 0:
        return code_html(source)
    doc_end = source.find('"""', 3) + 3 if source.startswith('"""') else 0
    shown = (source[:doc_end] + "\n\n# (imports and @triton.jit helpers: 'whole module' below)\n\n"
             + source[start:])
    return (code_html(shown) + "<details><summary style='font-size:12px'>whole module "
            f"({len(source.splitlines())} lines, importable as is)</summary>{code_html(source)}</details>")


def message(text: str, kind: str = "info") -> str:
    color = {"info": MUTED, "ok": OK, "error": BAD}[kind]
    bg = {"info": "transparent", "ok": "#ecfdf5", "error": "#fef2f2"}[kind]
    border = f"border-left:4px solid {color};padding:4px 8px;" if kind != "info" else ""
    return f'<div style="color:{color};background:{bg};{border}font-size:13px">{html.escape(text)}</div>'


def check_html(result) -> str:
    """A Kernel.check() result: ok / mismatch with the largest error."""
    if result is None:
        return message("not checked yet: press 'check against PyTorch'", "info")
    if result.error:
        return message(f"FAILED: {result.error}", "error")
    verdict = "ok" if result.ok else "MISMATCH"
    text = (f"{verdict}: max abs error {result.max_abs:.3g}, max rel error {result.max_rel:.3g}"
            f"{' (in ' + result.worst_output + ')' if result.worst_output else ''}; "
            f"{result.dtype}, {result.executor}, {result.seconds:.2f}s")
    return message(text, "ok" if result.ok else "error")


def statuses_html(statuses) -> str:
    """KernelSet.statuses as a table: which selected candidates became checked kernels."""
    rows = []
    for st in statuses:
        res = st.check
        if st.used:
            cell = f'<span style="color:{OK}">ok</span>'
            err = f"{res.max_abs:.2g}" if res is not None else ""
        else:
            cell = f'<span style="color:{BAD}">runs eagerly</span>'
            err = html.escape(st.reason)
        rows.append(f"<tr><td><code>{html.escape(st.candidate)}</code></td><td>{cell}</td>"
                    f"<td>{err}</td></tr>")
    if not rows:
        return message("no candidates selected", "info")
    return ('<table style="font-size:12px"><tr><th align="left">candidate</th><th align="left">'
            'kernel</th><th align="left">max abs error / reason</th></tr>' + "".join(rows) + "</table>")


def summary_html(summary) -> str:
    """A PlanSummary as a small before/after table, labelled modeled."""
    from ..nodecost import fmt_bytes as fmt

    td = "<td style='text-align:right;padding:1px 12px'>"
    rows = "".join(
        f"<tr><td style='padding:1px 12px'>{html.escape(tag)}</td>{td}{kb}</td>{td}{ka}</td>"
        f"{td}{fmt(bb)}</td>{td}{fmt(ba)}</td></tr>"
        for tag, (kb, ka, bb, ba) in summary.per_graph.items()
    )
    th = "<th style='text-align:right;padding:1px 12px'>"
    ratio = f" ({summary.bytes_after / summary.bytes_before:.0%})" if summary.bytes_before else ""
    return (
        f"<div style='font-size:13px'><b>Plan summary: modeled</b> "
        f"<span style='color:{MUTED}'>(counted from the graphs: each op alone reads its inputs and "
        "writes its result; a fused kernel reads and writes each group boundary once. "
        "Nothing here is measured.)</span><br>"
        f"{summary.selected} of {summary.candidates} candidates selected; kernels per step "
        f"<b>{summary.kernels_before} &rarr; {summary.kernels_after}</b> "
        f"({summary.matmul_kernels} matmuls unchanged); bytes per step "
        f"<b>{fmt(summary.bytes_before)} &rarr; {fmt(summary.bytes_after)}</b>{ratio}</div>"
        "<table style='font-size:12px;border-collapse:collapse;margin:4px 0'><tr>"
        f"<th style='padding:1px 12px'>graph</th>{th}kernels unfused</th>{th}with plan</th>"
        f"{th}bytes unfused</th>{th}with plan</th></tr>{rows}</table>"
    )
