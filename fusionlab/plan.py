"""Stage 3, plan: which candidates the user picked, checked to be a valid set of kernels.

One piece: selecting, refusing (overlaps, cycles, rules, the update's form) and summing up
all keep one invariant, the selected set; split, each part would reach into the others' state.

``FusionPlan(capture)`` starts with nothing selected. ``select``/``deselect`` take
candidate ids ("fw0.softmax.0"), pattern names ("softmax", matching every candidate whose
pattern has that component) or Candidate objects. A selection is refused, and the plan
left as it was, when it names nothing, or when the selected groups together would form a
cycle (group A feeds group B which feeds A: no order of kernel launches exists).
``"fw0:softmax@h.0.attn"`` (``Candidate.key``: graph, pattern, module) selects without
ordinals; ``"...#1"`` picks the second of several candidates with one key.

Rules (:mod:`fusionlab.rules`) are kept with the plan: ``never_fuse(a, b)`` and
``always_fuse(a, b, ...)`` find the candidates again under the rules (selections whose
nodes are unchanged stay selected), ``select_all`` says in ``skipped`` which candidates a
rule split, and ``to_code()`` writes the plan as a snippet that rebuilds it on a recapture.

The optimizer update's candidates (``candidates.optimizer``): ``select("adamw")`` or
``select("multi_tensor_adamw")`` picks the fused update's form (``optimizer_form``; see
:mod:`fusionlab.optim.selection`), kept apart from ``selected`` (forward/backward groups).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from .candidates import Candidate, Candidates, find_candidates
from .capture import Capture
from .cost import step_kernels
from .fxgraph import contracted_cycle
from .nodecost import fmt_bytes
from .optim import selection
from .rules import Rule, made_by_always, named_anywhere, split_by_rules


class PlanError(ValueError):
    """A selection the plan refuses; the message says which candidates and why."""


@dataclass
class PlanSummary:
    """Kernels launched and bytes moved per training step, before and after the plan (modeled)."""

    kernels_before: int
    kernels_after: int
    matmul_kernels: int
    bytes_before: int
    bytes_after: int
    selected: int
    candidates: int
    per_graph: dict  # tag -> (kernels before, after, bytes before, after)
    matmul_epilogues: int = 0  # matmul kernels after the plan that apply a fused epilogue
    rules: tuple = ()  # "never_fuse('add', 'layer_norm')", ...
    skipped: tuple = ()  # (candidate id, why) left out or split by select_all
    optimizer: str = ""  # the optimizer update's line ("" without one)

    @property
    def nonmatmul_before(self) -> int:
        return self.kernels_before - self.matmul_kernels

    @property
    def nonmatmul_after(self) -> int:
        return self.kernels_after - self.matmul_kernels

    def __str__(self) -> str:
        lines = [
            f"{self.selected} of {self.candidates} candidates selected",
            f"kernels per step: {self.kernels_before} -> {self.kernels_after} "
            f"(non-matmul {self.nonmatmul_before} -> {self.nonmatmul_after}; {self.matmul_kernels} matmul"
            + (f", {self.matmul_epilogues} with a fused epilogue)" if self.matmul_epilogues else ")"),
            f"bytes moved per step (modeled): {fmt_bytes(self.bytes_before)} -> {fmt_bytes(self.bytes_after)}"
            + (f" ({self.bytes_after / self.bytes_before:.0%})" if self.bytes_before else ""),
        ]
        for tag, (kb, ka, bb, ba) in self.per_graph.items():
            lines.append(f"  {tag:5} kernels {kb:4d} -> {ka:4d}   bytes {fmt_bytes(bb):>10} -> {fmt_bytes(ba):>10}")
        lines += [self.optimizer] if self.optimizer else []
        lines += [f"rule: {r}" for r in self.rules]
        lines += [f"skipped {cid}: {why}" for cid, why in self.skipped]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


class FusionPlan:
    """A selection of fusion candidates of one capture."""

    def __init__(self, capture: Capture, candidates: Candidates | None = None):
        if not isinstance(capture, Capture):
            raise TypeError(
                f"FusionPlan takes the Capture returned by fusionlab.capture(...), got {type(capture).__name__}"
            )
        self.capture = capture
        self.candidates = candidates if candidates is not None else find_candidates(capture)
        self._by_id = {c.id: c for c in self.candidates}
        self._selected: dict[str, Candidate] = {}
        self._opt_selected: dict[str, Candidate] = {}  # the optimizer update's candidates picked
        self.skipped: list[tuple[str, str]] = []  # (id, why) left out or split by select_all
        self.rules: list[Rule] = list(getattr(self.candidates, "rules", ()))
        self._plain = self.candidates if not self.rules else None  # candidates found without rules
        self._owner: dict[tuple[str, str], str] = {}  # (graph, node) -> candidate id
        self._users = {
            g.tag: {n.name: [u.name for u in n.users] for n in g.gm.graph.nodes} for g in capture.graphs
        }

    # ------------------------------------------------------------------ selection

    def _resolve(self, keys) -> list[Candidate]:
        if isinstance(keys, (str, Candidate)):
            keys = [keys]
        out: list[Candidate] = []
        for key in keys:
            if isinstance(key, Candidate):
                mine = self._by_id.get(key.id) or next((c for c in self._opt if c.id == key.id), None)
                if mine is None or (mine.nodes, mine.domain) != (key.nodes, key.domain):
                    raise PlanError(f"candidate {key.id} does not belong to this plan's capture")
                found = [mine]
            elif isinstance(key, str):
                base, _, nth = key.rpartition("#") if "@" in key and "#" in key else (key, "", "")
                found = [c for c in [*self.candidates, *self._opt] if c.matches(base)]
                if nth:
                    if not nth.isdigit() or int(nth) >= len(found):
                        raise PlanError(f"{key!r}: {len(found)} candidate(s) have the key {base!r}")
                    found = [found[int(nth)]]
                if not found:
                    patterns = sorted({c.pattern for c in [*self.candidates, *self._opt]})
                    raise PlanError(
                        f"no candidate matches {key!r}; patterns here: {', '.join(patterns) or 'none'} "
                        "(or use an id from plan.candidates)"
                    )
            else:
                raise PlanError(f"select by candidate id, pattern name or Candidate, not {type(key).__name__}")
            out += [c for c in found if c not in out]
        if not out:
            raise PlanError("empty selection: name at least one candidate id or pattern")
        return out

    def select(self, *keys) -> FusionPlan:
        """Add candidates (ids, pattern names or Candidate objects) to the selection."""
        if not keys:
            raise PlanError("empty selection: plan.select('softmax'), plan.select('fw0.layer_norm.0'), ...")
        new, opt = dict(self._selected), dict(self._opt_selected)
        for c in self._resolve(list(keys)):
            (opt if c.graph == "opt0" else new)[c.id] = c
        self._commit(new, opt)
        return self

    def deselect(self, *keys) -> FusionPlan:
        if not keys:
            raise PlanError("empty selection: name the candidates to deselect")
        new, opt = dict(self._selected), dict(self._opt_selected)
        for c in self._resolve(list(keys)):
            (opt if c.graph == "opt0" else new).pop(c.id, None)
        self._commit(new, opt, dropping=True)
        return self

    def select_all(self) -> FusionPlan:
        """Select every candidate; one that would close a cycle with those before it is skipped,
        and a candidate a ``never_fuse`` rule split is named (``plan.skipped`` says which and why).
        Candidates an ``always_fuse`` rule made are taken first. Of the optimizer update, the
        multi-tensor form (with the clip) is picked."""
        first = [c for c in self.candidates if self._made_by_always(c)]
        order = first + [c for c in self.candidates if c not in first]
        try:
            self._commit({c.id: c for c in order})
            self.skipped = []
        except PlanError:
            chosen: dict[str, Candidate] = {}
            self.skipped = []
            for c in order:
                try:
                    self._commit({**chosen, c.id: c})
                    chosen[c.id] = c
                except PlanError as e:
                    self.skipped.append((c.id, str(e)))
            self._commit(chosen)
        self.skipped = self._split_by_rules() + self.skipped
        self._commit(self._selected, selection.best(self._opt))
        return self

    def select_like_inductor(self, decisions=None) -> FusionPlan:
        """Select the candidates torch.compile's Inductor also fuses (each inside one of its kernels);
        see :func:`fusionlab.inductor.select_like_inductor`."""
        from .inductor import select_like_inductor

        select_like_inductor(self, decisions)
        return self

    def clear(self) -> FusionPlan:
        self._commit({}, {})
        return self

    def unselected_backward(self, *patterns: str) -> list[Candidate]:
        """The backward candidates of forward patterns ("softmax" -> those with a
        ``softmax_backward`` component) that are not selected. Selecting a pattern selects
        the forward fusion only: its gradient is another candidate, in another graph."""
        keys = [f"{p}_backward" for p in patterns if isinstance(p, str) and not p.endswith("_backward")]
        return [c for c in self.candidates if c.id not in self._selected
                and any(c.matches(k) for k in keys)]

    @property
    def selected(self) -> list[Candidate]:
        return [c for c in self.candidates if c.id in self._selected]

    def is_selected(self, key) -> bool:
        cid = key.id if isinstance(key, Candidate) else key
        return cid in self._selected or cid in self._opt_selected

    @property
    def _opt(self) -> list[Candidate]:
        return list(getattr(self.candidates, "optimizer", None) or [])

    @property
    def optimizer_selected(self) -> list[Candidate]:
        """The optimizer update's candidates picked (a whole form, with the clip if captured)."""
        return [c for c in self._opt if c.id in self._opt_selected]

    @property
    def optimizer_form(self) -> str | None:
        """The fused update's form: "multi_tensor", "param", or None (eager ``optimizer.step()``)."""
        return selection.form(self._opt, self._opt_selected)

    # ------------------------------------------------------------------ validation

    def _commit(self, new: dict[str, Candidate], opt: dict[str, Candidate] | None = None,
                dropping: bool = False) -> None:
        if opt is not None:  # the optimizer update's selection: checked first, set with the rest
            opt, why = selection.settle(self._opt, opt, dropping)
            if why:
                raise PlanError(why)
        owner: dict[tuple[str, str], str] = {}
        for c in new.values():
            for n in c.nodes:
                prev = owner.get((c.graph, n))
                if prev is not None and prev != c.id:
                    raise PlanError(f"candidates {prev} and {c.id} overlap (both contain node {n})")
                owner[(c.graph, n)] = c.id
        for tag in {c.graph for c in new.values()}:
            cycle = self._find_cycle(tag, owner)
            if cycle:
                raise PlanError(
                    f"selecting {' and '.join(cycle)} together would form a cycle in {tag}: "
                    "each needs a result of the other, so no launch order exists"
                )
        self._selected = new
        self._owner = owner
        if opt is not None:
            self._opt_selected = opt

    def _find_cycle(self, tag: str, owner: dict) -> list[str] | None:
        """Contract each selected group to one vertex; return the ids on a cycle, if any."""
        mine = {name: cid for (g, name), cid in owner.items() if g == tag}
        cycle = contracted_cycle(self._users[tag], mine)
        if cycle is None:
            return None
        ids = set(mine.values())
        return sorted(v for v in cycle if v in ids)

    # ------------------------------------------------------------------ rules

    def never_fuse(self, a: str, b: str) -> FusionPlan:
        """Never put a node named by `a` and one named by `b` in one kernel (ops, module paths
        or pattern names; see :mod:`fusionlab.rules`). Candidates holding both are split."""
        return self._add_rule(Rule("never", self._selectors("never_fuse", (a, b), exactly=2)))

    def always_fuse(self, *names: str) -> FusionPlan:
        """The nodes `names` name in a graph go in one candidate, or the rule is refused (PlanError)
        with the reason: two iteration domains, a cycle, an op no kernel fuses."""
        return self._add_rule(Rule("always", self._selectors("always_fuse", names)))

    def remove_rule(self, rule: Rule | str) -> FusionPlan:
        """Drop a rule (the Rule or its text, ``"never_fuse('add', 'gelu')"``)."""
        keep = [r for r in self.rules if r != rule and str(r) != rule]
        if len(keep) == len(self.rules):
            raise PlanError(f"no rule {rule}; rules: {', '.join(map(str, self.rules)) or 'none'}")
        self._set_rules(keep)
        return self

    def _selectors(self, what: str, names: tuple, exactly: int | None = None) -> tuple[str, ...]:
        if (exactly and len(names) != exactly) or len(names) < 2:
            raise PlanError(f"{what} takes {exactly or 'at least 2'} names (ops, module paths or patterns), "
                            f"got {len(names)}")
        for n in names:
            if not isinstance(n, str) or not n:
                raise PlanError(f"{what}: name ops, module paths or patterns with strings, not {n!r}")
            if not named_anywhere(self.capture, n):
                raise PlanError(f"{what}: {n!r} names no op, module or pattern in {self.capture.model_name}'s graphs")
        return tuple(names)

    def _add_rule(self, rule: Rule) -> FusionPlan:
        if rule in self.rules:
            return self
        rules = self.rules + [rule]
        cands = find_candidates(self.capture, rules=tuple(rules))
        refused = [n for n in cands.notes if any(f"{r} refused" in n for r in rules if r.kind == "always")]
        if refused:  # a new always_fuse rule, or a never_fuse rule an always_fuse rule cannot live with
            others = [str(r) for r in self.rules]
            head = "" if rule.kind == "always" else f"{rule} is refused, an always_fuse rule needs those merges: "
            raise PlanError(head + "; ".join(refused) + (f" (rules in force: {', '.join(others)})" if others else ""))
        if rule.kind == "always" and not any(self._made_by_always(c, [rule]) for c in cands):
            raise PlanError(f"{rule} refused: its names never meet in one graph (each graph lacks one of them)")
        self._set_rules(rules, cands)
        return self

    def _set_rules(self, rules: list[Rule], cands: Candidates | None = None) -> None:
        if self._plain is None:
            self._plain = find_candidates(self.capture)
        if cands is None:
            cands = find_candidates(self.capture, rules=tuple(rules)) if rules else self._plain
        old = {(c.graph, c.nodes) for c in self.selected}
        self.rules = list(rules)
        self.candidates = cands
        self._by_id = {c.id: c for c in cands}
        self._commit({c.id: c for c in cands if (c.graph, c.nodes) in old})
        self.skipped = []

    def _made_by_always(self, c: Candidate, rules: list[Rule] | None = None) -> bool:
        return made_by_always(self.capture, c, self.rules if rules is None else rules)

    def _split_by_rules(self) -> list[tuple[str, str]]:
        return split_by_rules(self._plain, self.candidates, self.rules) if self._plain is not None else []

    # ------------------------------------------------------------------ code

    def to_code(self, var: str = "plan", capture: str = "capture") -> str:
        """A Python snippet that rebuilds this plan (rules, then selection) on a fresh capture named
        `capture`, by pattern and module path (``Candidate.key``), so it also fits new shapes."""
        from .plan_code import plan_code

        return plan_code(self, var, capture, select_all=bool(self._selected) and self._selected_is_select_all())

    def _selected_is_select_all(self) -> bool:
        other = FusionPlan(self.capture, self.candidates)
        other._plain = self._plain
        return set(other.select_all()._selected) == set(self._selected)

    # ------------------------------------------------------------------ summary

    def summary(self) -> PlanSummary:
        """Kernels and bytes per step before and after the plan, from :func:`fusionlab.cost.step_kernels`."""
        before = step_kernels(self.capture, [])
        after = step_kernels(self.capture, list(self._selected.values()))
        b_graph, a_graph = before.by_graph(), after.by_graph()
        per_graph = {}
        for g in self.capture.graphs:
            kb, bb = b_graph.get(g.tag, (0, 0))
            ka, ba = a_graph.get(g.tag, (0, 0))
            per_graph[g.tag] = (kb, ka, bb, ba)
        return PlanSummary(before.launches, after.launches, before.matmul_launches, before.bytes, after.bytes,
                           len(self._selected), len(self.candidates), per_graph, after.epilogue_launches,
                           tuple(str(r) for r in self.rules), tuple(self.skipped),
                           selection.summary_line(self.capture.optimizer, self._opt, self._opt_selected))

    # ------------------------------------------------------------------ later stages

    def kernels(self, **options):
        """Generate (and cache) the Kernel of every selected candidate."""
        from .kernels import kernels_for_plan

        return kernels_for_plan(self, **options)

    def backend(self, **options):
        """A torch.compile backend running the selected groups as fusionlab kernels."""
        from .backend import make_backend

        return make_backend(self, **options)

    def compile(self, model, **options):
        """The fused training step (:class:`fusionlab.backend.FusedStep`): ``loss = fused(*inputs)``
        runs the model and the capture's loss, compiled with ``self.backend()``, ``dynamic=False``."""
        from .backend import compile_model

        return compile_model(self, model, **options)

    def export(self, directory, **options):
        """Write every selected kernel as a standalone importable module into `directory`."""
        from .kernels import export_plan

        return export_plan(self, directory, **options)

    # ------------------------------------------------------------------ display

    def __repr__(self) -> str:
        lines = [f"FusionPlan({self.capture.model_name}: {len(self._selected)}/{len(self.candidates)} selected)"]
        for c in self.candidates:
            mark = "x" if c.id in self._selected else " "
            lines.append(f"  [{mark}] {c.id:34} {c.kernels_unfused:3d}->1  saves {fmt_bytes(c.bytes_saved)}")
        if self._opt:
            lines.append(f"  optimizer update (form: {self.optimizer_form or 'none, eager optimizer.step()'}):")
        for c in self._opt:
            mark = "x" if c.id in self._opt_selected else " "
            lines.append(f"  [{mark}] {c.id:34} {c.kernels_unfused:3d}->1  saves {fmt_bytes(c.bytes_saved)}")
        lines += [f"  rule: {r}" for r in self.rules]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{'&#9745;' if c.id in self._selected else '&#9744;'}</td>"
            f"<td><code>{html.escape(c.id)}</code></td><td>{c.kernels_unfused}&rarr;1</td>"
            f"<td>{fmt_bytes(c.bytes_saved)}</td><td>{html.escape(', '.join(c.modules[:3]))}</td></tr>"
            for c in self.candidates
        )
        return (
            f"<b>FusionPlan for {html.escape(self.capture.model_name)}</b>"
            "<table><tr><th></th><th>candidate</th><th>kernels</th><th>saves (modeled)</th><th>modules</th></tr>"
            + rows + "</table>" + self.summary()._repr_html_()
        )


def plan_for(capture: Capture, select: Iterable[str] | str | None = "all") -> FusionPlan:
    """A plan of `capture` with `select` selected.

    ``select``: "all" (every candidate that fits, as ``select_all``), None, "none" or ""
    (nothing), a candidate id or pattern, a comma-separated string of them ("gelu,softmax",
    as the CLI's and the magic's ``--fuse`` take it), or a list.
    """
    plan = FusionPlan(capture)
    if isinstance(select, str):
        select = select.strip()
        if select == "all":
            return plan.select_all()
        select = [] if select == "none" else [s.strip() for s in select.split(",") if s.strip()]
    if select:
        plan.select(*select)
    return plan
