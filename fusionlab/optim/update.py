"""What a fused optimizer update computes: AdamW and SGD (momentum, nesterov) as plain functions.

These are the formulas of ``torch.optim.AdamW`` and ``torch.optim.SGD`` written on tensors only,
so that nothing is ever read back to the host: the learning rate, the step count and the
clip factor are 0-d tensors on the parameters' device. :mod:`fusionlab.optim.capture` traces
them into the ``opt0`` ATen graph, and :mod:`fusionlab.optim.kernels` writes the Triton
kernel from the traced per-parameter chain, so the graph a student reads is the kernel's.

Two differences from eager, both measured in tests/test_optim.py (within 1e-6 relative after
5 steps): the bias corrections ``1 - beta**step`` are computed as ``-expm1(step * log(beta))``
in fp32 on the device (eager computes them in Python double, one host read of ``step`` per
parameter per step); the momentum buffer of SGD starts at zero rather than at the first
gradient (``0 * momentum + g`` is ``g`` exactly, so the state is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("adamw", "sgd_momentum")

# the state tensors each kind keeps per parameter, in the order the kernels take them
STATE = {"adamw": ("exp_avg", "exp_avg_sq"), "sgd_momentum": ("momentum_buffer",)}


@dataclass(frozen=True)
class Hyper:
    """The settings of one parameter group, as the fused update uses them (lr is a tensor)."""

    kind: str  # "adamw" | "sgd_momentum"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    decoupled: bool = True  # AdamW (True) or Adam's L2 weight decay (False)
    momentum: float = 0.0
    nesterov: bool = False


# --------------------------------------------------------------------------- the global-norm clip


def clip_coef(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_``'s factor as a 0-d tensor: min(max_norm / (||all grads||_2 + 1e-6), 1)."""
    total_sq = None
    for g in grads:
        sq = torch.sum(g.float() * g.float())  # one reduction per gradient ...
        total_sq = sq if total_sq is None else total_sq + sq  # ... added up: the global sum of squares
    total_norm = torch.sqrt(total_sq)
    return torch.clamp_max(max_norm / (total_norm + 1e-6), 1.0)


# --------------------------------------------------------------------------- AdamW


def adamw_scalars(h: Hyper, lr: torch.Tensor, step: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-step scalars of Adam(W): computed from 0-d tensors, once per step."""
    step1 = step + 1
    bias_correction1 = -torch.expm1(step1 * math.log(h.beta1))  # 1 - beta1 ** step
    bias_correction2 = -torch.expm1(step1 * math.log(h.beta2))  # 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = torch.sqrt(bias_correction2)
    out = {"step": step1, "step_size": step_size, "bias_correction2_sqrt": bias_correction2_sqrt}
    if h.weight_decay and h.decoupled:
        out["decay"] = 1 - lr * h.weight_decay
    return out


def adamw_param(h: Hyper, s: dict, p, g, exp_avg, exp_avg_sq, clip=None):
    """One parameter's Adam(W) update: (param, grad, exp_avg, exp_avg_sq) after the step."""
    if clip is not None:
        g = g * clip  # clip_grad_norm_: grads scaled in place
    grad = g
    if h.weight_decay and h.decoupled:
        p = p * s["decay"]  # param.mul_(1 - lr * weight_decay)
    elif h.weight_decay:
        grad = grad + h.weight_decay * p  # grad.add(param, alpha=weight_decay)
    exp_avg = exp_avg + (1 - h.beta1) * (grad - exp_avg)  # exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * h.beta2 + (1 - h.beta2) * grad * grad  # .mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    denom = torch.sqrt(exp_avg_sq) / s["bias_correction2_sqrt"] + h.eps
    p = p - s["step_size"] * (exp_avg / denom)  # param.addcdiv_(exp_avg, denom, value=-step_size)
    return p, g, exp_avg, exp_avg_sq


# --------------------------------------------------------------------------- SGD


def sgd_scalars(h: Hyper, lr: torch.Tensor, step: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"step": step + 1, "lr": lr}


def sgd_param(h: Hyper, s: dict, p, g, buf, clip=None):
    """One parameter's SGD step with momentum (dampening 0): (param, grad, momentum_buffer)."""
    if clip is not None:
        g = g * clip
    grad = g
    if h.weight_decay:
        grad = grad + h.weight_decay * p  # grad.add(param, alpha=weight_decay)
    buf = buf * h.momentum + grad  # buf.mul_(momentum).add_(grad)
    if h.nesterov:
        grad = grad + h.momentum * buf  # grad.add(buf, alpha=momentum)
    else:
        grad = buf
    p = p - s["lr"] * grad  # param.add_(grad, alpha=-lr)
    return p, g, buf


SCALARS = {"adamw": adamw_scalars, "sgd_momentum": sgd_scalars}
PARAM = {"adamw": adamw_param, "sgd_momentum": sgd_param}


def group_update(h: Hyper, lr, step, params, grads, states, clip=None):
    """The update of one group of parameters: (step, params, grads, states) after it.

    ``states`` is a list per state name (``STATE[h.kind]``) of one tensor per parameter.
    """
    return apply_update(h, SCALARS[h.kind](h, lr, step), params, grads, states, clip)


def apply_update(h: Hyper, s: dict, params, grads, states, clip=None):
    """:func:`group_update` with the per-step scalars ``s`` already computed."""
    new_p, new_g, new_states = [], [], [[] for _ in states]
    for i, (p, g) in enumerate(zip(params, grads)):
        p2, g2, *st = PARAM[h.kind](h, s, p, g, *(lst[i] for lst in states), clip=clip)
        new_p.append(p2)
        new_g.append(g2)
        for j, t in enumerate(st):
            new_states[j].append(t)
    return s["step"], new_p, new_g, new_states
