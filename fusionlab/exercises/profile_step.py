"""Checkers for notebook 4, "Profile a training step": a speed-up read off a profile, its verdict,
and which fusion buys the most on a GPU (modeled). References come from the student's own result."""

from __future__ import annotations

import statistics

from ..cost import roofline
from ..verdict import FASTER, SLOWER
from .feedback import Feedback, close, is_unanswered, number, right, unanswered, wrong


def speedup(answer, result, variant: str = "fusionlab") -> Feedback:
    """4.1: `variant`'s speed-up over eager in `result`: eager's median step / the variant's median step."""
    name = f"4.1 {variant} against eager"
    base, v = result.variant("eager"), result.variant(variant)
    ref = result.ratio(variant)
    if is_unanswered(answer):
        return unanswered(name, f"result['eager'].samples and result['{variant}'].samples are the measured step "
                                "times in seconds; divide the medians")
    value = number(answer)
    if value is None:
        return wrong(name, "the answer should be one number")
    if close(value, ref, 0.002):
        return right(name, f"{ref:.3f}x (measured on {result.device}); a ratio alone is not a verdict: see 4.2")
    if close(value, 1 / ref, 0.002):
        return wrong(name, "upside down: speed-up = eager's time / the variant's time (> 1: the variant is faster)")
    if close(value, statistics.mean(base.samples) / statistics.mean(v.samples), 0.002):
        return wrong(name, "that is a ratio of means; one stalled step moves a mean a lot: use medians")
    if close(value, min(base.samples) / min(v.samples), 0.002):
        return wrong(name, "that is a ratio of the fastest steps; use the medians, the typical step")
    return wrong(name, f"{value:.3g} is not it: median(eager) / median({variant})")


_CALLS = {"faster": FASTER, "slower": SLOWER, "no difference": "undecided", "no measurable difference": "undecided",
          "undecided": "undecided", "same": "undecided"}


def verdict(answer, result, variant: str = "fusionlab") -> Feedback:
    """4.2: "faster", "slower" or "no difference": what the measurements say of `variant` against eager."""
    name = f"4.2 the verdict on {variant}"
    v = result.verdict(variant, "eager")
    ref = v.call if v.decided else "undecided"
    if is_unanswered(answer):
        return unanswered(name, "one of 'faster', 'slower', 'no difference'; look at the interval, not the ratio alone")
    call = _CALLS.get(str(answer).strip().lower())
    if call is None:
        return wrong(name, "answer 'faster', 'slower' or 'no difference'")
    if call == ref:
        return right(name, f"{v}")
    if ref == "undecided":
        side = "above" if v.ratio > 1 else "below"
        return wrong(name, f"the ratio {v.ratio:.2f}x is {side} 1, but its {v.confidence:.0%} interval "
                           f"{v.low:.2f}-{v.high:.2f}x reaches inside ±{v.min_effect:.0%}: in {v.steps} steps the "
                           "difference cannot be told from noise")
    if call == "undecided":
        return wrong(name, f"the whole {v.confidence:.0%} interval ({v.low:.2f}-{v.high:.2f}x) lies beyond "
                           f"±{v.min_effect:.0%}: the measurements do decide")
    return wrong(name, f"the other way round: the ratio eager / {variant} is {v.ratio:.2f}x "
                       "(> 1 means the variant is faster)")


def best_group_on_gpu(answer, plan, gpu: str = "h100") -> Feedback:
    """4.3: the id of the selected group whose fusion saves the most time on `gpu` (modeled, roofline)."""
    step = roofline(plan, gpu, fused=True)
    name = f"4.3 the fusion worth most on {step.gpu.name}"
    if not step.groups:
        raise ValueError("the plan selects no group")
    saving = {g.id: g.seconds_unfused - g.seconds_fused for g in step.groups}
    best = max(saving, key=saving.get)
    if is_unanswered(answer):
        return unanswered(name, f"fusionlab.cost.roofline(plan, '{gpu}').groups has each group's modeled time "
                                "unfused and fused")
    cid = getattr(answer, "id", answer)
    if cid not in saving:
        return wrong(name, f"{cid!r} is not a selected group; the selected ones are in plan.selected")
    if close(saving[cid], saving[best], 1e-9):
        return right(name, f"{cid} saves {saving[cid] * 1e6:.1f} us a step ({step.label})")
    g = next(g for g in step.groups if g.id == cid)
    best_g = next(g for g in step.groups if g.id == best)
    if g.speedup > best_g.speedup:
        return wrong(name, f"{cid} has the largest speed-up ratio ({g.speedup:.1f}x), but saves only "
                           f"{saving[cid] * 1e6:.1f} us; the question is time saved per step")
    return wrong(name, f"{cid} saves {saving[cid] * 1e6:.1f} us a step (modeled); another group saves more")


# why Inductor made a group fusionlab has no candidate for: the kinds a student names, and the words
# of an InductorDiff row's `why` that say each (the first kind whose words appear wins)
_INDUCTOR_ONLY_KINDS = {
    "opaque op": ("opaque op",),
    "matmul epilogue": ("matmul epilogue",),
    "view": ("through a view", "view op"),
    "mixed-order reduction": ("mixed-order", "different rows"),
    "iteration space": ("iterates over", "iteration space"),
}
_KIND_WORDS = {"opaque": "opaque op", "cat": "opaque op", "matmul": "matmul epilogue", "epilogue": "matmul epilogue",
               "view": "view", "reshape": "view", "mixed": "mixed-order reduction", "different rows": "mixed-order reduction",
               "column": "mixed-order reduction", "iteration": "iteration space", "domain": "iteration space"}


def why_kind(why: str) -> str:
    """The kind of reason an Inductor-only row of ``inductor_diff`` gives ("opaque op", "view", ...)."""
    for kind, words in _INDUCTOR_ONLY_KINDS.items():
        if any(w in why for w in words):
            return kind
    return "other"


def _student_kind(text) -> str | None:
    low = str(text).strip().lower()
    if low in _INDUCTOR_ONLY_KINDS:
        return low
    return next((kind for word, kind in _KIND_WORDS.items() if word in low), None)


def inductor_only(answer, diff) -> Feedback:
    """4.4: every group only Inductor makes, and why fusionlab has no candidate for it:
    ``{inductor kernel id: "opaque op" | "view" | "mixed-order reduction" | "matmul epilogue" | ...}``."""
    name = "4.4 what only torch.compile fuses"
    ref = {r.kernels[0]: why_kind(r.why) for r in diff.inductor_only}
    if is_unanswered(answer):
        return unanswered(name, "a dict {kernel id: reason}; diff.inductor_only lists Inductor's kernels no "
                                "candidate matches, each with why; name each reason in two words ('opaque op', "
                                "'view', 'mixed-order reduction', 'matmul epilogue')")
    if not ref:
        if answer == {}:
            return right(name, "Inductor makes no group here that fusionlab has no candidate for")
        return wrong(name, "in this diff Inductor makes no group fusionlab lacks: the answer is {}")
    if not isinstance(answer, dict):
        return wrong(name, "the answer should be a dict {Inductor kernel id: reason}, like "
                           f"{{{next(iter(ref))!r}: '...'}}")
    candidate_ids = {r.candidate: r for r in diff.both + diff.fusionlab_only if r.candidate}
    kernel_rows = {k: r for r in diff.fusionlab_only + diff.both for k in r.kernels}
    problems = []
    for key in answer:
        if key in candidate_ids:
            problems.append(f"{key} is a fusionlab candidate ({candidate_ids[key].status}); the question asks for "
                            "Inductor's kernels no candidate matches (ids like 'bw0.k5')")
        elif key in kernel_rows and key not in ref:
            r = kernel_rows[key]
            problems.append(f"{key} is one both make (= {r.candidate})" if r.status == "both" else
                            f"{key} computes (part of) {r.candidate}, a group fusionlab makes: not one only "
                            "Inductor makes")
        elif key not in ref:
            problems.append(f"{key!r} is not in diff.inductor_only")
    missing = [k for k in ref if k not in answer]
    if missing:
        problems.append(f"{len(missing)} of the {len(ref)} groups only Inductor makes {'is' if len(missing) == 1 else 'are'} "
                        "missing")
    for k, kind in ref.items():
        if k not in answer:
            continue
        said = _student_kind(answer[k])
        if said is None:
            problems.append(f"{k}: {answer[k]!r} names no reason; say 'opaque op', 'view', 'mixed-order reduction' "
                            "or 'matmul epilogue'")
        elif said != kind:
            row = next(r for r in diff.inductor_only if r.kernels[0] == k)
            problems.append(f"{k}: the reason is not '{said}'; read its line: '{row.why}'")
    if problems:
        return wrong(name, "; ".join(problems))
    return right(name, "; ".join(f"{k}: {kind}" for k, kind in ref.items())
                 + ": each a kind of fusion fusionlab's search does not make (why_not() names the op or the split)")
