"""The fused update where it can be timed on a CPU: opt0's formulas compiled whole by Inductor.

The Triton kernels of :mod:`fusionlab.optim.kernels` run in the interpreter on a CPU, and
interpreter timings mean nothing. As the profiler's "fusionlab" variant compiles each
forward/backward group with Inductor, ``CompiledUpdate`` compiles the update of
:mod:`fusionlab.optim.update` (all groups, the clip included, written back in place) with
Inductor's C++ backend: one compiled function per step, no host read (lr and step are
tensors), state in ``optimizer.state`` as eager keeps it. Its numerics are checked against
eager like the kernels (tests/test_optim.py); ``bench/optimizer_step.py`` times it.
"""

from __future__ import annotations

import torch

from .capture import OptimizerStep
from .update import SCALARS, STATE, apply_update, clip_coef


def _update_in_place(groups, clip, scalars, params, grads, states, step_states):
    coef = clip_coef([g for gs in grads for g in gs], clip) if clip else None
    for gi, h in enumerate(groups):
        s = scalars[gi]
        new_p, new_g, new_st = apply_update(h, s, params[gi], grads[gi], states[gi], clip=coef)[1:]
        for p, q in zip(params[gi], new_p):
            p.copy_(q)
        if coef is not None:
            for g, q in zip(grads[gi], new_g):
                g.copy_(q)
        for lst, new in zip(states[gi], new_st):
            for t, q in zip(lst, new):
                t.copy_(q)
        for t in step_states[gi]:
            t.copy_(s["step"])


def _scalars(groups, lrs, steps):
    out = []
    for gi, h in enumerate(groups):
        s = SCALARS[h.kind](h, lrs[gi], steps[gi])
        steps[gi].copy_(s["step"])
        out.append(s)
    return out


class CompiledUpdate:
    """``step()`` runs the captured update compiled by Inductor (cpp on a CPU), in place."""

    def __init__(self, step: OptimizerStep, optimizer=None):
        if not step.fused:
            raise ValueError(f"the {step.name} update is not fused: {step.reason}")
        self.info = step
        self.optimizer = optimizer if optimizer is not None else step.optimizer
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        dev = self.params[0].device
        self._lr = [torch.zeros((), device=dev) for _ in step.groups]
        self._lr_seen: list = [None for _ in step.groups]
        self._step = [torch.zeros((), device=dev) for _ in step.groups]
        self._ready = False
        hypers = [g.hyper for g in step.groups]
        clip = step.clip_grad_norm

        def update(scalars, params, grads, states, step_states):
            _update_in_place(hypers, clip, scalars, params, grads, states, step_states)

        def scalars(lrs, steps):
            return _scalars(hypers, lrs, steps)

        # two compiled functions: the per-step scalars (bias corrections, step size) once, then
        # the elementwise update reading them; in one graph Inductor would recompute the
        # scalars (two expm1, a sqrt) for every element
        self._scalars = torch.compile(scalars, backend="inductor", dynamic=False)
        self._fn = torch.compile(update, backend="inductor", dynamic=False)

    def _init_state(self) -> None:
        for gi, g in enumerate(self.info.groups):
            for n, i in enumerate(g.params):
                p = self.params[i]
                st = self.optimizer.state[p]
                for name in STATE[g.hyper.kind]:
                    st.setdefault(name, torch.zeros_like(p, memory_format=torch.contiguous_format))
                if g.hyper.kind == "adamw":
                    st.setdefault("step", torch.zeros((), device=p.device))
                    if n == 0:
                        self._step[gi].copy_(st["step"])
        self._ready = True

    @torch.no_grad()
    def step(self) -> None:
        if not self._ready:
            self._init_state()
        groups = self.info.groups
        for gi, g in enumerate(groups):
            lr = self.optimizer.param_groups[g.param_group]["lr"]
            if isinstance(lr, torch.Tensor) or lr != self._lr_seen[gi]:
                self._lr[gi].copy_(lr) if isinstance(lr, torch.Tensor) else self._lr[gi].fill_(lr)
                self._lr_seen[gi] = lr
        ps = [[self.params[i] for i in g.params] for g in groups]
        gs = [[p.grad for p in grp] for grp in ps]
        states = [[[self.optimizer.state[p][name] for p in grp] for name in STATE[g.hyper.kind]]
                  for g, grp in zip(groups, ps)]
        steps = [[self.optimizer.state[p]["step"] for p in grp] if g.hyper.kind == "adamw" else []
                 for g, grp in zip(groups, ps)]
        self._fn(self._scalars(self._lr, self._step), ps, gs, states, steps)
