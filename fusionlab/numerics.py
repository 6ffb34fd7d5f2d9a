"""Does the fused step train like eager? Losses and gradients of a few steps, side by side.

``check_numerics(model, inputs, plan)`` trains two copies of the model for a few steps, one
eager and one through the plan's fused step, and reports per step the relative error of
the loss, of the whole gradient and of the worst single parameter (:class:`NumericsCheck`).
``NumericsCheck.ok()`` holds the loss and the whole gradient to the rtol of the model's
dtype in the one tolerance table (:data:`fusionlab.check.TOLERANCES`), norm-wise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .capture import capture, preserved_state
from .check import TOLERANCES, tolerance  # noqa: F401 (TOLERANCES: the table ok() reads)
from .plan import plan_for
from .profile_options import resolve_executor
from .profiler.harness import device_of, fresh_step, make_optimizer


@dataclass
class NumericsCheck:
    """Per step: relative error of the fused step's loss and gradients against eager.

    ``grad_rel``: the whole gradient, norm-wise, ``||g_fused - g_eager|| / ||g_eager||`` over
    all parameters at once. ``param_rel``: the worst single parameter, norm-wise; beware
    gradients that are mathematically zero (a conv bias before BatchNorm: ~1e-8 of rounding
    noise), whose relative error says nothing.
    """

    steps: int
    loss_rel: list[float]
    grad_rel: list[float]
    param_rel: list[float]
    worst_param: list[str]
    report: object = None
    dtype: torch.dtype = torch.float32  # the dtype of the model's parameters

    @property
    def max_rel(self) -> float:
        """Largest of the loss and whole-gradient relative errors over all steps."""
        return max(self.loss_rel + self.grad_rel) if (self.loss_rel or self.grad_rel) else 0.0

    @property
    def max_param_rel(self) -> float:
        return max(self.param_rel) if self.param_rel else 0.0

    def ok(self, tol: float | None = None) -> bool:
        """Loss and whole gradient within ``tol`` of eager (default: the dtype's rtol in
        ``TOLERANCES``), every step."""
        return self.max_rel <= (tolerance(self.dtype)[0] if tol is None else tol)

    def __repr__(self) -> str:
        rows = [f"step {i}: loss rel err {lo:.2e}, gradient rel err {g:.2e}, worst parameter {p:.2e} ({n})"
                for i, (lo, g, p, n) in enumerate(zip(self.loss_rel, self.grad_rel, self.param_rel,
                                                      self.worst_param))]
        return "NumericsCheck(fused vs eager)\n  " + "\n  ".join(rows)


def check_numerics(model, inputs, plan=None, loss_fn=None, steps: int = 3, executor="auto",
                   optimizer="sgd", lr: float = 1e-3) -> NumericsCheck:
    """Train two copies of `model` for `steps` steps, eager and fused; compare losses and grads.

    Relative errors are norm-wise (``||fused - eager|| / ||eager||``): of the loss, of the
    whole gradient, and of the worst single parameter (see :class:`NumericsCheck`).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"check_numerics trains copies of the model: pass a torch.nn.Module, not {type(model).__name__}")
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    inputs = tuple(inputs)
    with preserved_state(model):
        if plan is None:
            plan = plan_for(capture(model, *inputs, loss_fn=loss_fn))
        elif loss_fn is None:
            loss_fn = plan.capture.meta.get("loss_fn")
        dev = device_of(model, inputs)
        ex, _ = resolve_executor(executor, dev)
        from .backend import make_backend

        me, mf = copy.deepcopy(model), copy.deepcopy(model)
        me.train(True)
        mf.train(True)
        backend = make_backend(plan, executor=ex)
        fe = fresh_step(me, loss_fn)
        ff = torch.compile(fresh_step(mf, loss_fn), backend=backend, dynamic=False)
        oe = make_optimizer(optimizer, list(me.parameters()), lr)
        of = make_optimizer(optimizer, list(mf.parameters()), lr)
        loss_rel, grad_rel, param_rel, worst = [], [], [], []
        for _ in range(steps):
            le, lf = fe(*inputs), ff(*inputs)
            le.backward()
            lf.backward()
            loss_rel.append(float((lf.detach() - le.detach()).abs() / le.detach().abs().clamp_min(1e-30)))
            w, wn, num, den = 0.0, "", 0.0, 0.0
            for (n, pe), pf in zip(me.named_parameters(), mf.parameters()):
                if pe.grad is None and pf.grad is None:
                    continue
                if (pe.grad is None) != (pf.grad is None):
                    w, wn, num = float("inf"), n, float("inf")
                    continue
                d2 = (pf.grad.double() - pe.grad.double()).pow(2).sum().item()
                e2 = pe.grad.double().pow(2).sum().item()
                num, den = num + d2, den + e2
                rel = math.sqrt(d2 / e2) if e2 > 0 else math.sqrt(d2)
                if rel > w:
                    w, wn = rel, n
            grad_rel.append(math.sqrt(num / den) if den > 0 else math.sqrt(num))
            param_rel.append(w)
            worst.append(wn)
            for o, mm in ((oe, me), (of, mf)):
                if o is not None:
                    o.step()
                    o.zero_grad(set_to_none=True)
                else:
                    mm.zero_grad(set_to_none=True)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return NumericsCheck(steps, loss_rel, grad_rel, param_rel, worst, backend.report, dtype)
