"""The fused update where it can be timed on a CPU: opt0's formulas compiled whole by Inductor.

The Triton kernels of :mod:`fusionlab.optim.kernels` run in the interpreter on a CPU, and
interpreter timings mean nothing. As the profiler's "fusionlab" variant compiles each
forward/backward group with Inductor, ``CompiledUpdate`` compiles the update of
:mod:`fusionlab.optim.update` (all groups, the clip included, written back in place) with
Inductor's C++ backend, no host read (lr and step are tensors), state in
``optimizer.state`` as eager keeps it. Its numerics are checked against eager like the
kernels (tests/test_optim.py); ``bench/optimizer_step.py`` times it.

How a step is called, and why (measured with cProfile on the 2-layer GPT-2, 28 parameters,
AdamW): through ``torch.compile`` every call entered a Dynamo frame whose guards check ~150
tensor arguments, then AOTAutograd's runtime wrappers, then Inductor's size asserts; that
took longer than the update's C++ loop itself. So the update is traced once with
``make_fx`` into an ATen graph that copies its results into its inputs (``aten.copy_`` on the
placeholders, which Inductor lowers to in-place stores) and handed to ``compile_fx_inner``
directly: a step is two calls of compiled code (the per-step scalars, then one C++ function
over every parameter) on a flat argument list built once, the gradients put in it each step.
Inductor's per-call size asserts are compiled out; the only layout that can change between
steps, the gradients' strides, is looked up each step (a new layout compiles a new function).
Where this torch lacks an internal used here, the update falls back to ``torch.compile`` of
the same function (with Dynamo's per-call guards) and says so in ``how``.
"""

from __future__ import annotations

import torch

from .. import _env
from .capture import OptimizerStep, trace_aten
from .update import SCALARS, STATE, apply_update, clip_coef

TESTED_TORCH = "2.13"  # the torch whose compile_fx_inner this module was written against
DIRECT = "opt0 compiled by Inductor (cpp), called without Dynamo"
VIA_DYNAMO = "opt0 compiled by torch.compile (Inductor, cpp), Dynamo guards per call"


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


def _inductor():
    """compile_fx_inner and what it needs, or ImportError naming what this torch lacks."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    if not hasattr(config, "size_asserts") or not hasattr(torch._guards, "TracingContext"):
        raise ImportError("torch._inductor.config.size_asserts / torch._guards.TracingContext")
    return config, compile_fx_inner, FakeTensorMode, ShapeEnv, FakeTensorProp


def compile_in_place(fn, examples: list[torch.Tensor]):
    """``fn(*examples)`` (tensors in, in-place ``copy_`` into them, a tuple of tensors out) traced
    to an ATen graph and compiled by ``compile_fx_inner``: a callable taking one list of tensors
    (laid out as ``examples``; the list is consumed) and returning the outputs as a list."""
    try:
        config, compile_fx_inner, FakeTensorMode, ShapeEnv, FakeTensorProp = _inductor()
    except ImportError as e:
        raise RuntimeError(f"fusionlab.optim.cpu calls Inductor's compile_fx_inner directly, and torch "
                           f"{torch.__version__} lacks {e}; it was written against torch {TESTED_TORCH}") from None
    gm = trace_aten(fn, [x.detach() for x in examples])
    # a shape env (static shapes: no symbols) lets Inductor's FX graph cache serve the update
    mode = FakeTensorMode(shape_env=ShapeEnv())
    fake = [mode.from_tensor(x.detach(), static_shapes=True) for x in examples]
    FakeTensorProp(gm, mode).propagate(*fake)
    with config.patch(size_asserts=False), torch._guards.tracing(torch._guards.TracingContext(mode)):
        return compile_fx_inner(gm, fake)


class CompiledUpdate:
    """``step()`` runs the captured update compiled by Inductor (cpp on a CPU), in place.

    ``how`` says how a step calls it (:data:`DIRECT`, or :data:`VIA_DYNAMO` where this torch
    lacks an internal the direct call needs). Every parameter must have a gradient when
    ``step()`` runs (as after ``loss.backward()``); none having one is a no-op, as in eager.
    The flat argument list holds ``optimizer.state``'s tensors: an ``optimizer.load_state_dict``
    (which replaces ``optimizer.state``) is seen and the list rebuilt.
    """

    def __init__(self, step: OptimizerStep, optimizer=None):
        if not step.fused:
            raise ValueError(f"the {step.name} update is not fused: {step.reason}")
        self.info = step
        self.optimizer = optimizer if optimizer is not None else step.optimizer
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if [tuple(p.shape) for p in self.params] != [tuple(p.shape) for p in step.params]:
            raise ValueError("this optimizer's parameters do not have the captured shapes")
        dev = self.params[0].device
        self._lr = [torch.zeros((), device=dev) for _ in step.groups]
        self._lr_seen: list = [None for _ in step.groups]
        self._step = [torch.zeros((), device=dev) for _ in step.groups]
        self._hypers = [g.hyper for g in step.groups]
        zero = torch.zeros(())
        # the per-step scalars of each group, in a fixed order: the flat list's head
        self._scalar_names = [list(SCALARS[h.kind](h, zero, zero)) for h in self._hypers]
        self._grad_params = [[self.params[i] for i in g.params] for g in step.groups]
        self._state_obj = None  # the optimizer.state the flat list was built from
        self._flat: list[torch.Tensor] = []  # params, grads (None: filled each step), states, steps
        self._grad_slots: list[int] = []
        self._mutated: list[torch.Tensor] = []  # tensors the update writes (their version counters)
        self._scalars_fn = None
        self._updates: dict[tuple, object] = {}  # gradient strides -> compiled update
        self.how = DIRECT
        self.compile_s = 0.0

    # ------------------------------------------------------------------ the flat argument list

    def _init_state(self) -> None:
        for gi, g in enumerate(self.info.groups):
            for n, i in enumerate(g.params):
                p = self.params[i]
                st = self.optimizer.state[p]
                for name in STATE[g.hyper.kind]:
                    if st.get(name) is None:
                        st[name] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                if g.hyper.kind == "adamw":
                    st.setdefault("step", torch.zeros((), device=p.device))
                    if n == 0:
                        self._step[gi].copy_(st["step"])
        self._state_obj = self.optimizer.state
        flat, slots = [], []
        for g, ps in zip(self.info.groups, self._grad_params):
            flat += [p.detach() for p in ps]
            slots += range(len(flat), len(flat) + len(ps))
            flat += [None] * len(ps)
            for name in STATE[g.hyper.kind]:
                flat += [self.optimizer.state[p][name] for p in ps]
            if g.hyper.kind == "adamw":
                flat += [self.optimizer.state[p]["step"] for p in ps]
        mutated = list(self.params)
        for g, ps in zip(self.info.groups, self._grad_params):
            mutated += [self.optimizer.state[p][name] for name in STATE[g.hyper.kind] for p in ps]
        self._flat, self._grad_slots, self._mutated = flat, slots, mutated

    def _unflatten(self, flat):
        """(scalars, params, grads, states, step_states) per group from the flat list."""
        it = iter(flat)
        scalars = [{k: next(it) for k in names} for names in self._scalar_names]
        ps, gs, states, steps = [], [], [], []
        for g in self.info.groups:
            n = len(g.params)
            ps.append([next(it) for _ in range(n)])
            gs.append([next(it) for _ in range(n)])
            states.append([[next(it) for _ in range(n)] for _ in STATE[g.hyper.kind]])
            steps.append([next(it) for _ in range(n)] if g.hyper.kind == "adamw" else [])
        return scalars, ps, gs, states, steps

    # ------------------------------------------------------------------ compiling

    def _compile(self, args: list[torch.Tensor]):
        """The two compiled functions for these arguments (scalars head + flat list)."""
        import time

        hypers, clip = self._hypers, self.info.clip_grad_norm
        n_groups = len(hypers)

        def scalars(*lr_step):
            out = _scalars(hypers, list(lr_step[:n_groups]), list(lr_step[n_groups:]))
            return tuple(s[k] for s, names in zip(out, self._scalar_names) for k in names)

        def update(*flat):
            _update_in_place(hypers, clip, *self._unflatten(flat))
            return ()

        start = time.perf_counter()
        if self.how == DIRECT:
            try:
                if self._scalars_fn is None:
                    self._scalars_fn = compile_in_place(scalars, self._lr + self._step)
                fn = compile_in_place(update, args)
                self.compile_s += time.perf_counter() - start
                return fn
            except Exception as e:  # noqa: BLE001 - the torch.compile route below runs the same function
                _env.debug(1, f"compile_fx_inner of the update failed ({type(e).__name__}: {e}); "
                              "using torch.compile")
                self.how = VIA_DYNAMO
        compiled_scalars = torch.compile(scalars, backend="inductor", dynamic=False)
        compiled_update = torch.compile(update, backend="inductor", dynamic=False)
        self._scalars_fn = lambda xs: list(compiled_scalars(*xs))
        self.compile_s += time.perf_counter() - start
        return lambda xs: compiled_update(*xs)

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self) -> None:
        if self._state_obj is not self.optimizer.state:
            self._init_state()
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            missing = [self.info.param_names[i] for i, g in enumerate(grads) if g is None]
            if len(missing) == len(grads):
                return  # nothing to update, as eager optimizer.step() with no gradients
            raise ValueError(f"the compiled update updates every parameter; {len(missing)} have no gradient "
                             f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): use the eager "
                             "optimizer.step() for a step that leaves parameters out")
        for gi, g in enumerate(self.info.groups):
            lr = self.optimizer.param_groups[g.param_group]["lr"]
            if isinstance(lr, torch.Tensor) or lr != self._lr_seen[gi]:
                self._lr[gi].copy_(lr) if isinstance(lr, torch.Tensor) else self._lr[gi].fill_(lr)
                self._lr_seen[gi] = lr
        flat = list(self._flat)
        for slot, p in zip(self._grad_slots, (p for ps in self._grad_params for p in ps)):
            flat[slot] = p.grad
        key = tuple(flat[s].stride() for s in self._grad_slots)
        fn = self._updates.get(key)
        if fn is None:  # the first step, or gradients of a new layout
            heads = [torch.zeros((), device=self._lr[0].device) for names in self._scalar_names for _ in names]
            fn = self._updates[key] = self._compile(heads + flat)
        fn([*self._scalars_fn(self._lr + self._step), *flat])
        if self.how == DIRECT:  # compiled code stored in place: bump autograd's version counters, as eager does
            torch.autograd.graph.increment_version(self._mutated)
