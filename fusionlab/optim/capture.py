"""Capture of the optimizer update: an optimizer (or its name and settings) -> the ``opt0`` graph.

``fusionlab.capture(model, *inputs, optimizer=...)`` calls :func:`capture_optimizer`. The
update is traced from the tensor-only formulas of :mod:`fusionlab.optim.update` with
``make_fx`` on fake tensors (nothing real is read or written: the model and the optimizer's
state are untouched), with Inductor's decompositions, the level the forward and backward
graphs are at. It is one ATen graph for all parameters, the global-norm clip included; every
node's facts say which parameter it updates (``NodeInfo.module`` holds the parameter's name,
``OptimizerStep.updates`` maps node -> parameter).

Why not Dynamo on ``optimizer.step()``: on a CPU its step count and learning rate are Python
numbers (a host read per parameter per step, and graphs specialised on each step's value);
the formulas here keep them as tensors on the parameters' device, as ``capturable=True`` does.

An optimizer fusionlab does not know (LBFGS, a custom class, Adam with amsgrad, ...) is
captured as "runs unfused" with the reason; one that updates tensors which are not the
model's parameters is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from ..captured import CapturedGraph, CaptureError
from ..facts import node_facts
from .update import STATE, Hyper, clip_coef, group_update

NAMES = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
ALL = "all gradients"  # owner of the global-norm nodes
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class UpdateGroup:
    """Parameters one fused kernel updates: one param group of one dtype."""

    index: int  # position among the step's groups
    param_group: int  # index into optimizer.param_groups
    dtype: torch.dtype
    params: list[int]  # indices into OptimizerStep.param_names
    hyper: Hyper

    @property
    def tag(self) -> str:
        return f"{self.hyper.kind}.g{self.param_group}.{str(self.dtype).removeprefix('torch.')}"


@dataclass
class OptimizerStep:
    """The optimizer update of a captured training step (plain data)."""

    name: str  # the optimizer's class, "AdamW"
    kind: str | None  # "adamw" | "sgd_momentum" | None: runs unfused
    reason: str  # why it runs unfused ("" when fused)
    optimizer: torch.optim.Optimizer  # the user's optimizer (or the one built from a name)
    params: list[torch.Tensor] = field(repr=False, default_factory=list)  # in the optimizer's order
    param_names: list[str] = field(default_factory=list)
    groups: list[UpdateGroup] = field(default_factory=list)
    clip_grad_norm: float | None = None
    graph: CapturedGraph | None = None  # opt0 (None when unfused)
    updates: dict[str, str] = field(default_factory=dict)  # opt0 node -> parameter name it updates
    chains: dict[int, torch.fx.GraphModule] = field(default_factory=dict, repr=False)  # group -> one param's chain
    unfused_groups: list[str] = field(default_factory=list)  # "<params>: reason" for groups left eager

    @property
    def fused(self) -> bool:
        return self.kind is not None

    def summary(self) -> str:
        if not self.fused:
            return f"optimizer {self.name}: runs unfused ({self.reason})"
        clip = f", clip_grad_norm={self.clip_grad_norm}" if self.clip_grad_norm else ""
        groups = ", ".join(f"{g.tag} ({len(g.params)} params)" for g in self.groups)
        text = f"optimizer {self.name} ({self.kind}{clip}): {self.graph!r}; groups: {groups}"
        if self.unfused_groups:
            text += "; unfused: " + "; ".join(self.unfused_groups)
        return text

    def __repr__(self) -> str:
        return f"OptimizerStep({self.summary()})"


# --------------------------------------------------------------------------- which optimizer


def build_optimizer(model: Any, optimizer: Any, settings: dict) -> torch.optim.Optimizer:
    """The optimizer object: the user's instance, or one built from a name and its settings."""
    if isinstance(optimizer, dict):
        settings = {**optimizer, **settings}
        optimizer = settings.pop("name", None)
        if optimizer is None:
            raise CaptureError("optimizer={...} needs a 'name' ('adamw', 'adam' or 'sgd')")
    if isinstance(optimizer, torch.optim.Optimizer):
        if settings:
            raise CaptureError(
                f"optimizer settings {sorted(settings)} were given with an optimizer instance; "
                "set them when building the optimizer"
            )
        return optimizer
    if isinstance(optimizer, str):
        cls = NAMES.get(optimizer.lower())
        if cls is None:
            raise CaptureError(f"unknown optimizer name {optimizer!r}; fusionlab knows {sorted(NAMES)} "
                               "(or pass a torch.optim.Optimizer instance)")
        if not isinstance(model, torch.nn.Module):
            raise CaptureError("optimizer=<name> needs a torch.nn.Module model to take the parameters from")
        params = [p for p in model.parameters() if p.requires_grad]
        try:
            return cls(params, **settings)
        except (TypeError, ValueError) as e:
            raise CaptureError(f"cannot build torch.optim.{cls.__name__} with {settings}: {e}") from e
    raise CaptureError(
        f"optimizer= takes a torch.optim.Optimizer, a name ('adamw', 'sgd') or a dict, "
        f"got {type(optimizer).__name__}"
    )


def _param_names(model: Any, opt: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[str]]:
    named = {id(p): n for n, p in model.named_parameters()} if isinstance(model, torch.nn.Module) else {}
    params = [p for g in opt.param_groups for p in g["params"]]
    foreign = [p for p in params if id(p) not in named]
    if foreign:
        shapes = ", ".join(str(tuple(p.shape)) for p in foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise CaptureError(
            f"the optimizer updates {len(foreign)} of its {len(params)} tensors that are not parameters of "
            f"{type(model).__name__} (shapes {shapes}); build it on this model's parameters, "
            "e.g. torch.optim.AdamW(model.parameters())"
        )
    return params, [named[id(p)] for p in params]


def _hyper(opt: torch.optim.Optimizer, group: dict) -> tuple[Hyper | None, str]:
    """The fused update's settings for one param group, or None and why it runs unfused."""
    t = type(opt)
    for flag in ("maximize", "differentiable", "amsgrad"):
        if group.get(flag):
            return None, f"{flag}=True is not fused by fusionlab"
    wd = float(group.get("weight_decay", 0.0))
    if t in (torch.optim.AdamW, torch.optim.Adam):
        beta1, beta2 = (float(b) for b in group["betas"])
        decoupled = bool(group.get("decoupled_weight_decay", t is torch.optim.AdamW))
        return Hyper("adamw", weight_decay=wd, beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                     decoupled=decoupled), ""
    if t is torch.optim.SGD:
        if not group.get("momentum"):
            return None, "SGD without momentum is one op per parameter: fusionlab fuses SGD with momentum"
        if group.get("dampening"):
            return None, f"SGD with dampening={group['dampening']} is not fused by fusionlab"
        return Hyper("sgd_momentum", weight_decay=wd, momentum=float(group["momentum"]),
                     nesterov=bool(group.get("nesterov"))), ""
    return None, (f"fusionlab knows AdamW, Adam and SGD with momentum, not {t.__name__}: "
                  "its optimizer.step() runs as eager PyTorch")


# --------------------------------------------------------------------------- tracing


def trace_aten(fn, args) -> torch.fx.GraphModule:
    """`fn(*args)` as an ATen graph (fake tensors, Inductor's decompositions), as opt0 is traced."""
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="fake", decomposition_table=select_decomp_table(),
                   record_stack_traces=True)(*args)


def _scalar(device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.float32, device=device)


def trace_chain(h: Hyper, dtype: torch.dtype, clip: bool, device="cpu") -> torch.fx.GraphModule:
    """One parameter's update as an ATen graph: placeholders (lr, step, [clip_coef], param, grad,
    *state), outputs (step, param, grad, *state). The kernels are written from this graph."""
    n_state = len(STATE[h.kind])

    def chain(lr, step, *rest):
        c, (p, g, *st) = (rest[0], rest[1:]) if clip else (None, rest)
        step1, ps, gs, states = group_update(h, lr, step, [p], [g], [[s] for s in st], clip=c)
        return (step1, ps[0], gs[0], *(s[0] for s in states))

    # distinct tensors: make_fx gives one placeholder to a tensor passed twice
    args = [_scalar(device) for _ in range(3 if clip else 2)]
    args += [torch.empty(4, dtype=dtype, device=device) for _ in range(2 + n_state)]
    return trace_aten(chain, args)


def _trace_step(step: OptimizerStep) -> torch.fx.GraphModule:
    """The whole update (every fused group, the clip) as one ATen graph."""
    params = step.params
    groups = step.groups
    n_state = {g.index: len(STATE[g.hyper.kind]) for g in groups}

    def update(*flat):
        it = iter(flat)
        lrs = [next(it) for _ in groups]
        steps = [next(it) for _ in groups]
        grads = {i: None for g in groups for i in g.params}
        ps = {}
        for g in groups:
            for i in g.params:
                ps[i] = next(it)
                grads[i] = next(it)
        states = {g.index: [[next(it) for _ in g.params] for _ in range(n_state[g.index])] for g in groups}
        coef = clip_coef(list(grads.values()), step.clip_grad_norm) if step.clip_grad_norm else None
        out = []
        for g in groups:
            s1, new_p, new_g, new_st = group_update(
                g.hyper, lrs[g.index], steps[g.index], [ps[i] for i in g.params], [grads[i] for i in g.params],
                states[g.index], clip=coef)
            out += [s1, *new_p, *(new_g if coef is not None else []), *(t for lst in new_st for t in lst)]
        return tuple(out)

    device = params[0].device
    # distinct tensors: make_fx gives one placeholder to a tensor passed twice
    flat = [_scalar(device) for _ in range(2 * len(groups))]
    for g in groups:
        for i in g.params:
            flat += [torch.empty_like(params[i], memory_format=torch.contiguous_format) for _ in range(2)]
    for g in groups:
        for _ in range(n_state[g.index]):
            flat += [torch.empty_like(params[i], memory_format=torch.contiguous_format) for i in g.params]
    return trace_aten(update, flat)


def _owners(gm: torch.fx.GraphModule, step: OptimizerStep) -> dict[str, str]:
    """opt0 node -> the parameter it updates ("" for per-step scalars, "all gradients" for the
    global norm). Placeholders are in the order ``_trace_step`` takes them."""
    order: list[str] = ["" for _ in step.groups] * 2
    for g in step.groups:
        for i in g.params:
            order += [step.param_names[i]] * 2
    for g in step.groups:
        for _ in STATE[g.hyper.kind]:
            order += [step.param_names[i] for i in g.params]
    owner: dict[str, str] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n, name in zip(placeholders, order):
        owner[n.name] = name
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        seen = {owner.get(a.name, "") for a in n.all_input_nodes}
        mine = seen - {"", ALL}
        owner[n.name] = mine.pop() if len(mine) == 1 else (ALL if mine or ALL in seen else "")
    return owner


def capture_optimizer(model: Any, optimizer: Any, settings: dict, clip_grad_norm: float | None) -> OptimizerStep:
    """Resolve the optimizer, check it is built on the model's parameters, trace ``opt0``."""
    opt = build_optimizer(model, optimizer, dict(settings))
    if clip_grad_norm is not None and not (isinstance(clip_grad_norm, (int, float)) and clip_grad_norm > 0):
        raise CaptureError(f"clip_grad_norm must be a positive number, got {clip_grad_norm!r}")
    params, names = _param_names(model, opt)
    step = OptimizerStep(name=type(opt).__name__, kind=None, reason="", optimizer=opt, params=params,
                         param_names=names, clip_grad_norm=float(clip_grad_norm) if clip_grad_norm else None)
    if not params:
        step.reason = "the optimizer has no parameters"
        return step
    if len({p.device for p in params}) > 1:
        step.reason = "the parameters are on several devices"
        return step
    index = 0
    kinds = set()
    for gi, group in enumerate(opt.param_groups):
        h, why = _hyper(opt, group)
        if h is None:
            step.reason = why
            step.groups = []
            return step
        kinds.add(h.kind)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for p in group["params"]:
            by_dtype.setdefault(p.dtype, []).append(next(i for i, q in enumerate(params) if q is p))
        for dtype, members in by_dtype.items():
            if dtype not in FUSED_DTYPES:
                step.reason = (f"{len(members)} parameter(s) of dtype {str(dtype).removeprefix('torch.')} "
                               "(fusionlab fuses float32, float16 and bfloat16 updates)")
                step.groups = []
                return step
            step.groups.append(UpdateGroup(index, gi, dtype, members, h))
            index += 1
    step.kind = kinds.pop() if len(kinds) == 1 else None
    if step.kind is None:
        step.reason = "param groups of different kinds"
        return step
    try:
        gm = _trace_step(step)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "runs unfused", said plainly
        step.kind, step.groups = None, []
        step.reason = f"tracing the update failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return step
    owners = _owners(gm, step)
    facts = node_facts(gm)
    for name, info in facts.items():
        info.module = owners.get(name, "")
        info.module_type = step.name
    step.graph = CapturedGraph(index=0, kind="optimizer", gm=gm, nodes=facts)
    step.updates = {n: o for n, o in owners.items() if o}
    device = params[0].device
    step.chains = {g.index: trace_chain(g.hyper, g.dtype, step.clip_grad_norm is not None, device)
                   for g in step.groups}
    return step
