"""``FusionPlan.to_code()``: a plan written as the few lines of Python that rebuild it.

Rules first, then the selection, by pattern and module path (``Candidate.key``) rather than by
ordinal, so the snippet also fits a fresh capture of the same model at other shapes.
"""

from __future__ import annotations

from .optim import selection


def plan_code(plan, var: str, capture: str, select_all: bool) -> str:
    """The snippet for `plan`; `select_all`: its selection is what ``select_all()`` picks."""
    from .patterns import list_patterns

    selected = {c.id for c in plan.selected}
    lines = [f"# fusionlab plan for {plan.capture.model_name}: {len(selected)} of "
             f"{len(plan.candidates)} candidates selected (written by plan.to_code())"]
    users = sorted({p.name for p in list_patterns(user_only=True)}
                   & {n for c in plan.candidates for n in c.node_patterns})
    if users:
        lines.append(f"# uses user patterns {', '.join(users)}: run their @fusionlab.pattern cells first")
    lines += ["import fusionlab as fl", "", f"{var} = fl.FusionPlan({capture})"]
    lines += [r.code(var) for r in plan.rules]
    if select_all:
        lines.append(f"{var}.select_all()")
    elif selected:
        keys = []
        for c in plan.selected:
            same = [d for d in plan.candidates if d.key == c.key]
            key = c.key if all(d.id in selected for d in same) else f"{c.key}#{same.index(c)}"
            if key not in keys:
                keys.append(key)
        lines.append(f"{var}.select(\n" + "".join(f"    {k!r},\n" for k in keys) + ")")
    # the optimizer update's form, where the capture has one (fusionlab.optim.selection)
    lines += selection.code_lines(plan.candidates.optimizer if hasattr(plan.candidates, "optimizer") else [],
                                  {c.id: c for c in plan.optimizer_selected}, var, select_all)
    return "\n".join(lines) + "\n"
