"""The optimizer update in a FusionPlan: which form of it the user picked, checked, summarised.

``plan.select("adamw")`` (every per-parameter chain, ``opt0.adamw.<i>``) or
``plan.select("multi_tensor_adamw")`` (one launch per param group and dtype) picks the form
of the fused update; ``select_all`` picks the multi-tensor form. The update runs whole, so
a form is all its candidates or none: one chain alone, or the chains and the multi-tensor
group together (they hold the same nodes), is refused with the reason. The global-norm clip
runs inside the fused update: it follows the form (selected with it, dropped with it) and
cannot be picked alone. With no form selected the update runs as eager ``optimizer.step()``.

Plain functions on candidate lists, so :mod:`fusionlab.plan` keeps the forward/backward
selection and this module the update's.
"""

from __future__ import annotations

from ..candidates import Candidate
from ..nodecost import fmt_bytes

CLIP = "clip_grad_norm"


def _forms(cands: list[Candidate]) -> dict[str, list[Candidate]]:
    """"param" -> the per-parameter chains, "multi_tensor" -> the multi-tensor groups."""
    forms: dict[str, list[Candidate]] = {"param": [], "multi_tensor": []}
    for c in cands:
        if c.pattern.startswith("multi_tensor_"):
            forms["multi_tensor"].append(c)
        elif c.pattern != CLIP:
            forms["param"].append(c)
    return forms


def settle(cands: list[Candidate], chosen: dict[str, Candidate],
           dropping: bool = False) -> tuple[dict[str, Candidate], str | None]:
    """(the selection with the clip following the form, or why it is refused). ``dropping``: a
    deselect, where taking the form away takes the clip with it."""
    forms = _forms(cands)
    picked = {f: [c for c in members if c.id in chosen] for f, members in forms.items()}
    clip = [c for c in cands if c.pattern == CLIP]
    if picked["param"] and picked["multi_tensor"]:
        return chosen, (f"{picked['param'][0].id} and {picked['multi_tensor'][0].id} hold the same nodes: the "
                        "update is fused either per parameter ('adamw'/'sgd_momentum') or as multi-tensor groups "
                        "('multi_tensor_...'), pick one form")
    for form, members in forms.items():
        if picked[form] and len(picked[form]) != len(members):
            missing = [c.id for c in members if c.id not in chosen]
            return chosen, (f"the fused update runs whole: its {form} form is all {len(members)} of its candidates "
                            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''} not selected); "
                            f"select them all ('{members[0].pattern}') or none")
    has_form = bool(picked["param"] or picked["multi_tensor"])
    if not has_form and any(c.id in chosen for c in clip) and not dropping:
        return chosen, (f"{clip[0].id} runs inside the fused update: select a form of the update "
                        "('adamw'/'sgd_momentum' or 'multi_tensor_...'), and the clip comes with it")
    out = {cid: c for cid, c in chosen.items() if c.pattern != CLIP}
    if has_form:
        out.update({c.id: c for c in clip})
    return out, None


def best(cands: list[Candidate]) -> dict[str, Candidate]:
    """What ``select_all`` picks: the multi-tensor form (the fewest launches), with the clip."""
    forms = _forms(cands)
    chosen = forms["multi_tensor"] or forms["param"]
    return {c.id: c for c in chosen + [c for c in cands if c.pattern == CLIP]} if chosen else {}


def form(cands: list[Candidate], chosen: dict[str, Candidate]) -> str | None:
    """"multi_tensor" | "param" | None (no form selected: eager optimizer.step())."""
    for name, members in _forms(cands).items():
        if members and all(c.id in chosen for c in members):
            return name
    return None


def summary_line(step, cands: list[Candidate], chosen: dict[str, Candidate]) -> str:
    """One line for the plan summary: the update's form, kernels and modeled bytes."""
    if step is None:
        return ""
    if not step.fused:
        return f"optimizer update ({step.name}): runs unfused ({step.reason})"
    picked = form(cands, chosen)
    if picked is None:
        pats = sorted({c.pattern for c in cands})
        return (f"optimizer update opt0 ({step.name}): not selected, runs as eager optimizer.step() "
                f"(select one of {', '.join(repr(p) for p in pats if p != CLIP)})")
    sel = [c for c in cands if c.id in chosen]
    ops = sum(c.kernels_unfused for c in sel)
    before = sum(c.bytes_unfused for c in sel)
    after = sum(c.bytes_fused for c in sel)
    launches = len(sel)
    how = "per-parameter kernels" if picked == "param" else "multi-tensor kernels"
    return (f"optimizer update opt0 ({step.name}): {picked} form, {how}: {ops} ops -> {launches} kernels per step, "
            f"bytes {fmt_bytes(before)} -> {fmt_bytes(after)} (modeled)")


def code_lines(cands: list[Candidate], chosen: dict[str, Candidate], var: str, after_select_all: bool) -> list[str]:
    """The lines of ``plan.to_code()`` that pick this form (after ``select_all()`` or after nothing)."""
    now = form(cands, chosen)
    base = form(cands, best(cands)) if after_select_all else None
    if now == base:
        return []
    forms = _forms(cands)
    lines = [f"{var}.deselect({forms[base][0].pattern!r})"] if base else []
    return lines + ([f"{var}.select({forms[now][0].pattern!r})"] if now else [])
