"""The plain-text and HTML tables the build reports print (configs, summaries)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence


def text_lines(head: Sequence[str], rows: Sequence[Sequence[str]], *,
               sizing: Callable[[Sequence[str]], bool] | None = None) -> list[str]:
    """Left-aligned columns, two spaces apart, indented by two; rows failing `sizing` do not widen them."""
    sized = [r for r in [head, *rows] if sizing is None or sizing(r)] or [head]
    widths = [max(len(r[i]) for r in sized) for i in range(len(head))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]], *,
               row_style: Callable[[Sequence[str]], str] | None = None) -> str:
    """An HTML table, every cell escaped; `row_style(row)` may add a CSS style to a row."""
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th style='text-align:left'>{e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        style = row_style(r) if row_style else ""
        out.append(f"<tr{f' style={style!r}' if style else ''}>"
                   + "".join(f"<td style='text-align:left'>{e(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
