"""The pattern registry: named fusions as data, and how a group of nodes gets its name.

A :class:`Pattern` is a name, a paragraph for students (what intermediate the fusion keeps
out of memory) and a matcher: ``match(node, view) -> nodes | None`` is asked at every
``call_function`` node of a graph and returns the nodes of one occurrence anchored there
(or a falsy value). Built-in patterns (:mod:`fusionlab.patterns.builtin`) and a user's
(``fusionlab.pattern``) are registered the same way; a user's are asked first.

Naming a candidate: every member is claimed by the first pattern (in registry order) whose
occurrence lies inside the group; the name joins the claimed patterns in graph order.
*Prefix* patterns ("add", "bias") are named only in front of another pattern, so a residual
add joins "add+layer_norm" but a lone add is a "pointwise" group; after a matmul anchor they
are the epilogue ("matmul+bias+gelu"). A pattern with
``groups=True`` (every user pattern) also shapes the search: each of its occurrences becomes
one candidate of exactly its nodes (see :mod:`fusionlab.grouping`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.fx

from .. import ops


class PatternError(ValueError):
    """A pattern the registry refuses; the message says which and why."""


@dataclass(frozen=True)
class Pattern:
    """One named fusion: plain data plus a matcher."""

    name: str
    explain: str  # for students: what the fusion keeps out of memory
    match: Callable = field(repr=False)  # match(node, view) -> nodes of one occurrence | None
    builtin: bool = False
    prefix: bool = False  # named only in front of another pattern ("add+layer_norm")
    groups: bool = False  # each occurrence becomes one candidate of exactly its nodes
    anchor: str | None = None  # "matmul": the occurrence holds a matmul (the epilogue search)
    source: str = ""  # how it matches, in words ("traced from rmsnorm_silu(x[8, 32], w[32])")

    def __str__(self) -> str:
        tags = [t for t, on in (("built-in", self.builtin), ("user", not self.builtin),
                                ("prefix", self.prefix), ("groups nodes", self.groups)) if on]
        if self.anchor:
            tags.append(f"{self.anchor} anchor")
        return f"{self.name} ({', '.join(tags)}): {self.explain}"


@dataclass
class NodeView:
    """What a matcher may ask about a node besides the node itself."""

    facts: dict  # node name -> NodeInfo
    backward: bool

    def module(self, node: torch.fx.Node) -> str:
        info = self.facts.get(node.name)
        return info.module if info is not None else ""

    def module_type(self, node: torch.fx.Node) -> str:
        info = self.facts.get(node.name)
        return info.module_type if info is not None else ""

    def kind(self, node: torch.fx.Node) -> str:
        info = self.facts.get(node.name)
        return info.kind if info is not None else ops.kind_of(node)


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_USER: list[Pattern] = []  # newest first
_BUILTIN: list[Pattern] = []


def all_patterns() -> list[Pattern]:
    """Every registered pattern in matching order: the user's (newest first), then built-ins."""
    return list(_USER) + list(_BUILTIN)


def get(name: str) -> Pattern:
    for p in all_patterns():
        if p.name == name:
            return p
    raise KeyError(name)


def add(p: Pattern, replace: bool = False) -> Pattern:
    """Register `p`; a second pattern of the same name is refused unless `replace`."""
    if not isinstance(p.name, str) or not _NAME.match(p.name):
        raise PatternError(
            f"pattern name {p.name!r}: use letters, digits and '_' (it becomes part of candidate "
            "ids such as 'fw0.NAME.0', so no '+', '.', '@' or spaces)")
    if not callable(p.match):
        raise PatternError(f"pattern {p.name!r}: match must be a function match(node[, view]) -> nodes")
    if p.anchor not in (None, "matmul"):
        raise PatternError(f"pattern {p.name!r}: anchor is None or 'matmul', not {p.anchor!r}")
    for lst in (_USER, _BUILTIN):
        for q in lst:
            if q.name == p.name:
                if q.builtin and not p.builtin:
                    raise PatternError(f"pattern {p.name!r} is built in; pick another name for yours")
                if not replace:
                    raise PatternError(
                        f"pattern {p.name!r} is already registered; fusionlab.unregister({p.name!r}) "
                        "first, or pass replace=True (re-running a notebook cell)")
                lst.remove(q)
                break
    (_BUILTIN if p.builtin else _USER).insert(0 if not p.builtin else len(_BUILTIN), p)
    return p


def unregister(name: str, missing_ok: bool = True) -> bool:
    """Remove the user pattern `name` (built-ins stay). Returns whether one was removed."""
    for q in _USER:
        if q.name == name:
            _USER.remove(q)
            return True
    if any(q.name == name for q in _BUILTIN):
        raise PatternError(f"pattern {name!r} is built in and cannot be unregistered")
    if not missing_ok:
        raise PatternError(f"no user pattern {name!r}; registered: {', '.join(q.name for q in _USER) or 'none'}")
    return False


_NARGS: dict = {}  # matcher -> how many arguments it takes (inspect.signature is slow)


def _nargs(fn) -> int:
    try:
        return _NARGS[fn]
    except (KeyError, TypeError):
        pass
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = 2
    try:
        _NARGS[fn] = n
    except TypeError:  # an unhashable callable: asked each time
        pass
    return n


def call_matcher(p: Pattern, node: torch.fx.Node, view: NodeView) -> list[torch.fx.Node]:
    """The occurrence of `p` anchored at `node` ([] when none), call_function nodes only."""
    fn = p.match
    nargs = _nargs(fn)
    try:
        got = fn(node, view) if nargs >= 2 else fn(node)
    except Exception as e:  # noqa: BLE001 - a user's matcher failing names the pattern
        raise PatternError(f"the matcher of pattern {p.name!r} raised {type(e).__name__}: {e} "
                           f"(at node {node.name}, {ops.op_name(node)})") from e
    if not got:
        return []
    if got is True:
        return [node]
    if isinstance(got, torch.fx.Node):
        return [got]
    out = [n for n in got if isinstance(n, torch.fx.Node) and n.op == "call_function"]
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- naming


@dataclass
class Naming:
    """A group's name and which pattern claimed each member ("" for none)."""

    name: str
    claimed: dict  # node -> pattern name
    anchor: torch.fx.Node | None  # first node of the first non-prefix pattern


_COPIES = ("clone", "_to_copy", "copy", "convert_element_type")


def claim(nodes: list[torch.fx.Node], view: NodeView, inside: set | None = None,
          patterns: list[Pattern] | None = None) -> tuple[dict, list[tuple[Pattern, list]]]:
    """Each node -> the first pattern whose occurrence (inside `inside`, when given) holds it."""
    claimed: dict[torch.fx.Node, str] = {}
    occs: list[tuple[Pattern, list]] = []
    for p in patterns if patterns is not None else all_patterns():
        for n in nodes:
            if n in claimed or n.op != "call_function":
                continue
            occ = call_matcher(p, n, view)
            if not occ or any(m in claimed for m in occ) or (inside is not None and not set(occ) <= inside):
                continue
            for m in occ:
                claimed[m] = p.name
            occs.append((p, occ))
    return claimed, occs


def name_group(members: list[torch.fx.Node], view: NodeView) -> Naming:
    """The pattern name of a group (``members`` in graph order)."""
    order = {n: i for i, n in enumerate(members)}
    claimed, occs = claim(members, view, inside=set(members))
    prefix = {p.name for p, _ in occs if p.prefix}
    anchors = {p.name for p, _ in occs if p.anchor}
    first: dict[str, int] = {}
    for n, name in claimed.items():
        first[name] = min(first.get(name, len(order)), order[n])
    ranked = sorted(first, key=first.__getitem__)
    main = [c for c in ranked if c not in prefix]
    if main:
        # prefixes count up to the first pattern that is not an anchor: "add+layer_norm", and
        # a matmul's epilogue "matmul+bias+gelu"
        rest = [c for c in main if c not in anchors]
        start = first[rest[0]] if rest else len(order)
        comps = [c for c in ranked if c not in prefix or first[c] < start]
        anchor = min((n for n, c in claimed.items() if c == main[0]), key=order.__getitem__)
        return Naming("+".join(comps[:4]), claimed, anchor)
    own = [ops.op_name(m).split(".")[1] if "." in ops.op_name(m) else ops.op_name(m)
           for m in members if m.op == "call_function"
           and m.target.__class__.__name__ != "builtin_function_or_method"]
    if own and all(c in _COPIES for c in own):
        return Naming("copy", claimed, None)
    kind = "reduction" if any(view.kind(m) == "reduction" for m in members) else "pointwise"
    return Naming(kind, claimed, None)


def grouping_occurrences(nodes: list[torch.fx.Node], view: NodeView) -> list[tuple[Pattern, list]]:
    """Occurrences of the patterns that shape the search (``groups=True``), no two overlapping."""
    shaping = [p for p in all_patterns() if p.groups]
    if not shaping:
        return []
    return claim(nodes, view, patterns=shaping)[1]


def node_patterns(nodes: list[torch.fx.Node], view: NodeView) -> dict:
    """node -> the pattern claiming it when the whole graph is matched (for rules)."""
    return claim(nodes, view)[0]
