"""Named fusion patterns: the built-ins and the user's, in one registry.

``fusionlab.pattern("name")`` over an example function, or ``fusionlab.pattern("name",
match=fn)``, adds a pattern; ``fusionlab.list_patterns()`` shows them all with their
explanations; ``fusionlab.unregister("name")`` removes a user's (re-running a notebook
cell: ``replace=True``). Candidates are named from here (:mod:`fusionlab.candidates`).
"""

from __future__ import annotations

import html
import inspect

from .builtin import register_builtins
from .example import structure_matcher, trace_example
from .registry import (
    NodeView,
    Pattern,
    PatternError,
    add,
    all_patterns,
    get,
    name_group,
    unregister,
)

__all__ = ["NodeView", "Pattern", "PatternError", "PatternList", "get", "list_patterns", "name_group",
           "pattern", "unregister"]

register_builtins()


def pattern(name: str, match=None, *, explain: str | None = None, inputs=None, replace: bool = False,
            groups: bool = True, anchor: str | None = None):
    """Register a user pattern.

    As a decorator over an example function, the function's traced ATen graph is the
    pattern (matched by op structure, not shapes or constants)::

        @fusionlab.pattern("rmsnorm_silu", inputs=[(8, 64), (64,)])
        def rmsnorm_silu(x, w):
            "RMSNorm then SiLU: the normalised row stays in registers for the activation."
            return torch.nn.functional.silu(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)

    ``inputs``: a shape or tensor per parameter (default: a 4x32 tensor each). The
    explanation is ``explain=`` or the function's docstring. With ``match=fn``, ``fn(node)``
    (or ``fn(node, view)``, see :class:`NodeView`) returns the nodes of one occurrence
    anchored at ``node``, or None. ``groups=True``: each occurrence becomes one candidate of
    exactly its nodes, even where the search would group them otherwise. Returns the Pattern
    (the decorator too).
    """
    if not isinstance(name, str):
        raise PatternError(f"pattern(name, ...): the name is a string, got {type(name).__name__}")

    def text(default: str) -> str:
        return " ".join((explain or default).split())

    if match is not None:
        return add(Pattern(name, text(f"user pattern {name}"), match, groups=groups, anchor=anchor,
                           source=f"matcher {getattr(match, '__name__', 'function')}"), replace=replace)

    def register(fn):
        _check_free(name, replace)
        traced = trace_example(fn, inputs)
        doc = inspect.getdoc(fn) if callable(fn) else None
        return add(Pattern(name, text(doc or f"user pattern {name}, {traced.description}"),
                           structure_matcher(traced), groups=groups, anchor=anchor,
                           source=traced.description), replace=replace)

    return register


def _check_free(name: str, replace: bool) -> None:
    """Refuse a taken name before tracing (tracing takes a second or two)."""
    try:
        p = get(name)
    except KeyError:
        return
    if p.builtin:
        raise PatternError(f"pattern {name!r} is built in; pick another name for yours")
    if not replace:
        raise PatternError(f"pattern {name!r} is already registered; fusionlab.unregister({name!r}) "
                           "first, or pass replace=True (re-running a notebook cell)")


class PatternList(list):
    """The registered patterns, with a readable table."""

    def __repr__(self) -> str:
        w = max((len(p.name) for p in self), default=4)
        lines = [f"{len(self)} patterns (user first, then built-in)"]
        for p in self:
            who = "user" if not p.builtin else "prefix" if p.prefix else "built-in"
            lines.append(f"  {p.name:{w}}  {who:8}  {p.explain}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td><code>{html.escape(p.name)}</code></td><td>{'built-in' if p.builtin else 'user'}"
                       f"</td><td>{html.escape(p.explain)}</td><td>{html.escape(p.source)}</td></tr>" for p in self)
        return ("<table><tr><th>pattern</th><th></th><th>what the fusion keeps out of memory</th>"
                "<th>matches</th></tr>" + rows + "</table>")


def list_patterns(user_only: bool = False) -> PatternList:
    """Every registered pattern (the user's first), with its explanation."""
    return PatternList(p for p in all_patterns() if not (user_only and p.builtin))
