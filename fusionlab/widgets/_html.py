"""Small HTML snippets the explorer's panes are made of (no widgets here)."""

from __future__ import annotations

import html
import re

OK = "#047857"
BAD = "#b91c1c"
MUTED = "#6b7280"
MARK = "#fde68a"  # the focused node's line in a kernel


def code_html(source: str, marks=(), max_height: int = 520) -> str:
    """Python source as highlighted HTML (pygments when present, plain otherwise); the lines
    ``marks`` (1-based) are shaded and carry ``data-mark`` so a test or a reader finds them."""
    marks = sorted(marks)
    mark = marks[0] if marks else None
    style = (f"font-size:12px;line-height:1.35;max-height:{max_height}px;overflow:auto;white-space:pre;"
             "background:#f9fafb;border:1px solid #e5e7eb;padding:8px;margin:0")
    lines = source.split("\n")
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        body = highlight(source, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=True))
        # pygments closes its spans at each line end; where one does not (a change of
        # pygments), the lines lose their colours rather than a mark cutting a span in two
        if mark:
            out = body.split("\n")
            if len(out) >= len(lines) and all(o.count("<span") == o.count("</span>") for o in out):
                lines = out
            else:
                lines = [html.escape(x) for x in lines]
        else:
            lines = None
    except ImportError:
        body = html.escape(source)
        lines = [html.escape(x) for x in lines] if mark else None
    if lines is not None:
        for m in marks:
            if 0 < m <= len(lines):
                lines[m - 1] = (f'<span data-mark="{m}" style="display:inline-block;min-width:100%;'
                                f'background:{MARK}">{lines[m - 1]}</span>')
        body = "\n".join(lines)
    return f'<pre style="{style}">{body}</pre>'


def highlighted_lines(source: str) -> list[str]:
    """``source`` as one HTML string per line (pygments colours when installed, each line's
    spans closed within it; plain escaped text otherwise)."""
    lines = source.split("\n")
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        return [html.escape(x) for x in lines]
    out = highlight(source, PythonLexer(stripnl=False), HtmlFormatter(noclasses=True, nowrap=True)).split("\n")
    if len(out) >= len(lines) and all(o.count("<span") == o.count("</span>") for o in out):
        return out[:len(lines)]
    return [html.escape(x) for x in lines]


def node_lines(source: str, node: str, name: str = "") -> list[int]:
    """The 1-based lines of ``source`` that compute FX node ``node``: ``node = ...``, else the
    steps of a reduction (``var_mean_sum = ...``), else where it is stored (``# node: ...``);
    in kernel ``name`` when given (the module docstring lists the ATen lines too)."""
    if not node:
        return []
    lines = source.split("\n")
    start = next((i for i, x in enumerate(lines) if x.startswith(f"def {name}(")), 0) if name else 0
    body = list(enumerate(lines[start:], start + 1))
    for test in (lambda x: x.lstrip().startswith(f"{node} = "),
                 lambda x: re.match(rf"\s*{re.escape(node)}_[a-z0-9]+ = ", x) is not None,
                 lambda x: f"# {node}: " in x):
        found = [i for i, x in body if test(x)]
        if found:
            return found
    return []


def kernel_html(source: str, name: str, node: str = "") -> str:
    """The kernel and its launcher first, with the lines that compute ``node`` marked; the
    whole module (its docstring lists the ATen ops replaced; imports, helpers) folded below."""
    start = source.find(f"@triton.jit\ndef {name}(")
    if start < 0:
        return code_html(source, node_lines(source, node, name))
    shown = "# (module docstring, imports and @triton.jit helpers: 'whole module' below)\n\n" + source[start:]
    return (code_html(shown, node_lines(shown, node, name)) + "<details><summary style='font-size:12px'>whole module "
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
        f"{th}bytes unfused</th>{th}with plan</th></tr>{rows}</table>" + rules_html(summary)
    )


def rules_html(summary) -> str:
    """The plan's rules (``plan.never_fuse``/``always_fuse``) and what select_all skipped."""
    lines = [f"<li data-role='rule'>rule: <code>{html.escape(str(r))}</code></li>" for r in summary.rules]
    lines += [f"<li data-role='skipped'>skipped <code>{html.escape(cid)}</code>: {html.escape(why)}</li>"
              for cid, why in summary.skipped]
    if not lines:
        return ""
    return (f"<div style='font-size:12px'><b>rules and skipped candidates</b> <span style='color:{MUTED}'>"
            "(ex.plan.never_fuse / always_fuse / remove_rule, then ex.refresh())</span><ul style='margin:2px 0'>"
            + "".join(lines) + "</ul></div>")


def zero_saving_note(c) -> str:
    """Why a candidate that saves no bytes is listed at all ("" when it saves some)."""
    return f" <span style='color:{MUTED}'>({html.escape(zero_saving_reason(c))})</span>" if c.bytes_saved <= 0 else ""


def zero_saving_reason(c) -> str:
    if c.bytes_saved > 0:
        return ""
    return (f"saves no memory traffic (modeled): its {len(c.nodes)} ops share no intermediate "
            f"tensor, so each byte is read and written once either way; fusing only saves "
            f"{c.kernels_unfused - 1} launch{'es' if c.kernels_unfused > 2 else ''}")
