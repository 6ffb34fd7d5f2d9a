"""The fused update checked against eager ``torch.optim``: same steps, same gradients, same state.

``check_update(cap.optimizer, steps=5)`` copies the captured parameters twice, builds two new
optimizers of the captured class with the same param groups, and for each step draws fresh
random gradients (scale 1, so a ``clip_grad_norm`` of 1 really clips), gives both copies the
same ones, runs eager (``clip_grad_norm_`` then ``optimizer.step()``) on one and the fused
update on the other, and compares parameters, gradients and every state tensor after the last
step. The user's model and optimizer are never touched.

Equal means: max |fused - eager| <= rtol * max |eager| per tensor, rtol 1e-6 for float32
groups. For float16/bfloat16 groups (eager rounds after every op, the kernel once) it means no
further from a float64 run of the same steps than eager is (times 1.5, plus one unit in the
last place of the largest value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .capture import OptimizerStep
from .fused import FusedUpdate
from .update import STATE


@dataclass
class UpdateCheck:
    ok: bool
    steps: int
    form: str
    worst: float  # the largest error found, relative to max |eager|
    rows: list[tuple[str, str, float, float]] = field(default_factory=list)  # (param, tensor, error, bound)
    launches_per_step: list[int] = field(default_factory=list)

    def __repr__(self) -> str:
        bad = [r for r in self.rows if r[2] > r[3]]
        head = (f"UpdateCheck({'ok' if self.ok else 'FAILED'}: {self.form}, {self.steps} steps, "
                f"worst relative error {self.worst:.2e}, launches/step {self.launches_per_step[-1:]})")
        return head + "".join(f"\n  {p}.{t}: {e:.2e} > {b:.0e}" for p, t, e, b in bad[:10])


def copy_optimizer(opt: torch.optim.Optimizer, dtype: torch.dtype | None = None):
    params, groups = [], []
    for g in opt.param_groups:
        ps = [p.detach().clone().to(dtype or p.dtype).requires_grad_(p.requires_grad) for p in g["params"]]
        params += ps
        groups.append({**{k: v for k, v in g.items() if k not in ("params", "fused", "foreach")}, "params": ps})
    return type(opt)(groups), params


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def _tensors(opt, params, kind: str) -> dict[tuple[int, str], torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        out[(i, "param")] = p.detach()
        out[(i, "grad")] = p.grad.detach()
        st = opt.state[p]
        for name in STATE[kind] + (("step",) if kind == "adamw" else ()):
            out[(i, name)] = st[name].detach().reshape(-1) if name == "step" else st[name].detach()
    return out


def check_update(step: OptimizerStep, steps: int = 5, form: str = "multi_tensor", seed: int = 0,
                 rtol: float = 1e-6) -> UpdateCheck:
    """Run ``steps`` eager and fused updates on copies and compare (see the module docstring).

    ``form``: "multi_tensor" or "param" (the Triton kernels), or "inductor" (the update
    compiled by Inductor, :class:`fusionlab.optim.cpu.CompiledUpdate`, what a CPU times)."""
    if not step.fused:
        raise ValueError(f"the {step.name} update is not fused: {step.reason}")
    clip = step.clip_grad_norm
    eager, ep = copy_optimizer(step.optimizer)
    mine, mp = copy_optimizer(step.optimizer)
    ref, rp = copy_optimizer(step.optimizer, torch.float64)  # the float64 run (for 16-bit groups)
    if form == "inductor":
        from .cpu import CompiledUpdate

        fused = CompiledUpdate(step, optimizer=mine)
    else:
        fused = FusedUpdate(step, form=form, optimizer=mine)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for a, b, c in zip(ep, mp, rp):
            g = torch.randn(a.shape, generator=gen).to(a.dtype).to(a.device)
            a.grad, b.grad, c.grad = g.clone(), g.clone(), g.double()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ep, clip)
            torch.nn.utils.clip_grad_norm_(rp, clip)
        eager.step()
        ref.step()
        fused.step()
    kind = step.kind
    e, m, r = _tensors(eager, ep, kind), _tensors(mine, mp, kind), _tensors(ref, rp, kind)
    rows, worst = [], 0.0
    # a clip over 16-bit gradients: eager's norm is a 16-bit one, so every update scaled by it
    # is held to the float64 criterion
    f64_all = clip is not None and any(g.dtype != torch.float32 for g in step.groups)
    for key, want in e.items():
        i, name = key
        err = _rel(m[key], want)
        if want.dtype == torch.float32 and not f64_all:
            bound = rtol
        else:  # 16-bit: no further from float64 than eager, within 1.5x and one ulp
            ulp = torch.finfo(want.dtype).eps
            bound = 1.5 * _rel(want, r[key]) + ulp
            err = _rel(m[key], r[key])
        rows.append((step.param_names[i], name, err, bound))
        worst = max(worst, err)
    ok = all(err <= bound for _, _, err, bound in rows)
    return UpdateCheck(ok=ok, steps=steps, form=form, worst=worst, rows=rows,
                       launches_per_step=list(getattr(fused, "launches_per_step", [])))
