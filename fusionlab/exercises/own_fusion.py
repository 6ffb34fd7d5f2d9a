"""Checkers for notebook 5, "Your own fusion": an RMSNorm followed by SiLU written by the student,
checked against eager PyTorch and found by fusionlab as one forward candidate."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .feedback import Feedback, close, fmt, is_unanswered, number, right, unanswered, wrong

RTOL, ATOL = 1.3e-6, 1e-5


def reference_rmsnorm_silu(x, weight, eps):
    """silu(x / sqrt(mean(x^2 over the last dim) + eps) * weight), in float64."""
    x64 = x.double()
    y = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    return F.silu(y)


def rmsnorm_silu_module(cls, dim: int = 64, eps: float = 1e-6) -> Feedback:
    """5.1: ``cls(dim, eps)`` is a module computing silu(rmsnorm(x)) with a learnable ``weight`` of shape (dim,)."""
    name = "5.1 your RMSNorm -> SiLU module"
    if is_unanswered(cls):
        return unanswered(name, "a torch.nn.Module class: __init__(self, dim, eps) makes self.weight, forward "
                                "normalizes by the root mean square, scales by weight, then applies SiLU")
    try:
        mod = cls(dim, eps)
    except Exception as e:
        return wrong(name, f"{getattr(cls, '__name__', cls)}({dim}, {eps}) raised {type(e).__name__}: {e}")
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.nn.Parameter) or tuple(w.shape) != (dim,):
        return wrong(name, f"the module needs a learnable weight: self.weight = nn.Parameter(torch.ones({dim}))")
    with torch.no_grad():
        w.copy_(torch.randn(dim))
        x = torch.randn(8, dim) * 3 + 1  # a nonzero mean: tells RMSNorm from LayerNorm
        x[0] = 0.0  # a row of zeros: tells whether eps is in
        try:
            y = mod(x)
        except Exception as e:
            return wrong(name, f"forward raised {type(e).__name__}: {e}")
    ref = reference_rmsnorm_silu(x, w.detach(), eps).float()
    if not isinstance(y, torch.Tensor) or y.shape != ref.shape:
        return wrong(name, f"forward should return a tensor shaped like x {tuple(x.shape)}")
    if torch.allclose(y, ref, rtol=RTOL, atol=ATOL):
        return right(name, "matches silu(x * rsqrt(mean(x^2) + eps) * weight) on random rows and on a row of zeros")
    if torch.isnan(y[0]).any():
        return wrong(name, "a row of zeros gives NaN: add eps to the mean square before the square root")
    rest = slice(1, None)
    x64, w64 = x.double(), w.detach().double()
    layer = F.silu(F.layer_norm(x64, (dim,), eps=eps) * w64).float()
    if torch.allclose(y[rest], layer[rest], rtol=1e-4, atol=1e-5):
        return wrong(name, "that is LayerNorm: RMSNorm does not subtract the mean, it divides by sqrt(mean(x^2) + eps)")
    before = (F.silu(x64) * torch.rsqrt(F.silu(x64).pow(2).mean(-1, keepdim=True) + eps) * w64).float()
    if torch.allclose(y[rest], before[rest], rtol=1e-4, atol=1e-5):
        return wrong(name, "SiLU comes after the norm, not before it")
    no_w = F.silu(x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)).float()
    if torch.allclose(y[rest], no_w[rest], rtol=1e-4, atol=1e-5):
        return wrong(name, "the weight is missing: scale the normalized x by self.weight before the SiLU")
    std = F.silu(x64 / (x64.std(-1, keepdim=True) + eps) * w64).float()
    if torch.allclose(y[rest], std[rest], rtol=1e-4, atol=1e-5):
        return wrong(name, "that divides by the standard deviation; RMSNorm divides by the root mean square "
                           "sqrt(mean(x^2) + eps), mean not subtracted")
    err = (y - ref).abs().max().item()
    return wrong(name, f"the output differs from silu(rmsnorm(x)) by up to {err:.3g}")


def forward_writes(answer, candidate, capture) -> Feedback:
    """5.2: the bytes the fused forward kernel writes: every output of the group, not only the last value."""
    name = f"5.2 what {candidate.id} writes"
    g = capture.graph(candidate.graph)
    ref = sum(g.nodes[n].nbytes for n in candidate.outputs)
    if is_unanswered(answer):
        return unanswered(name, "candidate.outputs names the values the kernel must store; "
                                "graph.nodes[name].nbytes is each one's size")
    value = number(answer)
    if value is None:
        return wrong(name, "the answer should be one number of bytes")
    if close(value, ref, 0.001):
        return right(name, f"{fmt(ref)} bytes: {', '.join(candidate.outputs)}; everything but the activation "
                           "itself is kept for the backward graph")
    last = g.nodes[candidate.nodes[-1]].nbytes
    if close(value, last, 0.001) and len(candidate.outputs) > 1:
        return wrong(name, "that is the final activation only; the backward needs values from inside the group "
                           "too, so the forward kernel stores them as well")
    if close(value, ref / 4, 0.001):
        return wrong(name, "that counts elements; a float32 element is 4 bytes")
    if close(value, candidate.bytes_fused, 0.001):
        return wrong(name, "that is reads and writes together; only the writes are asked for")
    return wrong(name, f"{fmt(value)} is not it: add up the bytes of {', '.join(candidate.outputs)}")


def norm_apart_from_act(plan, norm: str = "norm", act: str = "act") -> Feedback:
    """5.3: a plan whose rules keep module `norm`'s ops and module `act`'s ops out of one kernel in every
    graph (forward and backward), while `norm`'s forward ops stay one kernel and `act`'s another."""
    name = f"5.3 {norm} and {act} in kernels of their own"
    if is_unanswered(plan):
        return unanswered(name, "a FusionPlan with a rule: plan.never_fuse(a, b) takes ops, module paths or "
                                "pattern names; which name covers a module's ops in both graphs?")
    if not hasattr(plan, "candidates") or not hasattr(plan, "rules"):
        return wrong(name, f"the answer should be a FusionPlan (with your rule), not a {type(plan).__name__}")
    cap = plan.capture

    def within(module: str, mod: str) -> bool:
        return module == mod or module.startswith(mod + ".")

    def holds(c, mod: str) -> bool:
        g = cap.graph(c.graph)
        return any(within(g.nodes[n].module, mod) for n in c.nodes)

    mixed = [c.id for c in plan.candidates if holds(c, norm) and holds(c, act)]
    if not plan.rules:
        return wrong(name, "the plan has no rule: add one with plan.never_fuse(..., ...)"
                     + (f" ({', '.join(mixed)} still fuses both)" if mixed else ""))
    rules = ", ".join(map(str, plan.rules))
    if mixed:
        fw = [cid for cid in mixed if cid.startswith("fw")]
        if not fw:
            return wrong(name, f"with {rules} the forward is apart, but {', '.join(mixed)} {'still hold' if len(mixed) > 1 else 'still holds'} {act}'s "
                               f"and {norm}'s gradient ops: the backward graph has other ops than the forward "
                               "(no neg, no exp); name what both graphs share")
        verb = "still hold" if len(mixed) > 1 else "still holds"
        return wrong(name, f"with {rules}, {', '.join(mixed)} {verb} ops of both {norm} and {act}")
    fw = cap.graph("fw0")
    for mod in (norm, act):
        ops_of = {n for n, i in fw.nodes.items() if within(i.module, mod) and i.kind in ("pointwise", "reduction")}
        holders = sorted({c.id for c in plan.candidates if c.graph == "fw0" for n in c.nodes if n in ops_of})
        if len(holders) > 1:
            return wrong(name, f"with {rules}, {mod} and {act if mod == norm else norm} are apart, but {mod}'s own "
                               f"forward ops are split over {', '.join(holders)}: a rule splits it; name whole modules, "
                               "not ops inside one")
        if not holders:
            return wrong(name, f"with {rules}, {mod}'s forward ops are in no candidate at all")
    return right(name, f"{rules}: {norm} and {act} are kernels of their own forward and backward; plan.skipped "
                       "says which candidates the rule split")
