"""Codegen for the optimizer update: Triton kernels written from the traced per-parameter chain.

One update chain (``OptimizerStep.chains[group]``, an ATen graph of one parameter's step)
becomes the body of two kernels, line for line (one op a line, the ATen op and the line of
:mod:`fusionlab.optim.update` it comes from in a comment):

- ``<kind>_multi_tensor``: the horizontal kernel. One launch updates every parameter of a
  group: program ``pid`` looks up which tensor and which block it owns in two small tables
  (``block_tensor``, ``block_start``) and the tensors' addresses in pointer tables, so each
  tensor is read once and written once, whatever the number of parameters.
- ``<kind>_param``: the per-parameter kernel, one launch per parameter (the alternative).

With a global-norm clip, ``grad_sq_sum`` (one launch per group) adds each block's sum of
squares to one device total (``tl.atomic_add``); every update program reads that total and
computes the clip factor itself, so it never leaves the device.

The learning rate and the step count are read from device tensors; the step counter is
double-buffered (read from ``step_in``, written to ``step_out``) so no program reads a value
another program of the same launch writes.
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ops
from ..codegen.helpers import HELPERS, helpers_used
from ..codegen.source import KernelSource
from .update import STATE

PTR = {torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16"}
SIG = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
STATE_STEP = {"adamw": ("step",), "sgd_momentum": ()}  # torch keeps state['step'] for Adam(W) only
GPU_BLOCK = 1024  # elements per program on a GPU
INTERPRET_BLOCK = 16384  # in the Triton interpreter (its cost is per program)


def roles(kind: str, clip: bool) -> tuple[list[str], list[str]]:
    """The names of a chain's placeholders and outputs, in order."""
    state = list(STATE[kind])
    ins = ["lr", "step"] + (["clip_coef"] if clip else []) + ["param", "grad"] + state
    outs = ["step_new", "param_new", "grad_clipped"] + [f"{s}_new" for s in state]
    return ins, outs


def body(chain: torch.fx.GraphModule, kind: str, clip: bool) -> tuple[list[str], dict[str, str]]:
    """The chain's ops as Triton lines, and output role -> the value it stores."""
    ins, outs = roles(kind, clip)
    names: dict[str, str] = {}
    placeholders = [n for n in chain.graph.nodes if n.op == "placeholder"]
    for n, role in zip(placeholders, ins):
        names[n.name] = role
    output = next(n for n in chain.graph.nodes if n.op == "output")
    out_nodes = list(output.args[0])
    rename = {n.name: role for n, role in zip(out_nodes, outs) if n.op == "call_function"}
    lines = []
    for n in chain.graph.nodes:
        if n.op != "call_function":
            continue
        pw = ops.POINTWISE.get(n.target)
        if pw is None:
            raise NotImplementedError(f"no Triton expression for {ops.op_name(n)} in the update chain")
        args = [names[a.name] if isinstance(a, torch.fx.Node) else ops.literal(a) for a in n.args]
        kwargs = {k: names[v.name] if isinstance(v, torch.fx.Node) else ops.literal(v) for k, v in n.kwargs.items()}
        val = n.meta.get("val")
        dt = val.dtype if isinstance(val, torch.Tensor) else torch.float32
        name = rename.get(n.name, n.name)
        names[n.name] = name
        lines.append(f"{name} = {pw.expr(args, kwargs, ops.compute_dtype(dt))}  # {ops.op_name(n)}")
    stored = {role: names[n.name] for n, role in zip(out_nodes, outs)}
    return lines, stored


def _clip_lines() -> list[str]:
    return [
        "# the global-norm clip: the sum of squares of every gradient, added up on the device",
        "total_sq = tl.load(total_sq_ptr)  # aten.sum.default + aten.add.Tensor over all gradients",
        "total_norm = tl.sqrt(total_sq)  # aten.sqrt.default",
        "clip_coef = tl.minimum((max_norm / (total_norm + 1e-06)), 1.0)  # aten.div.Tensor, aten.clamp_max.default",
    ]


def kernel_source(chain: torch.fx.GraphModule, kind: str, dtype: torch.dtype, *, clip: float | None,
                  form: str, group_tag: str = "", model_name: str = "", param_names=()) -> KernelSource:
    """The Triton module of one group's update: ``form`` is "multi_tensor" or "param"."""
    if dtype not in PTR:
        raise NotImplementedError(f"no fused update for {dtype}")
    tensors = ["param", "grad"] + list(STATE[kind])
    lines, stored = body(chain, kind, clip is not None)
    has_step = "step" in STATE_STEP[kind]
    name = f"{kind}_{form}"
    ty = PTR[dtype]
    k: list[str] = []
    if form == "multi_tensor":
        args = [f"{t}_ptrs" for t in tensors] + (["step_ptrs"] if has_step else []) + [
            "numels", "block_tensor", "block_start"]
        k += [
            "pid = tl.program_id(0)",
            "t = tl.load(block_tensor + pid)  # the tensor this program updates",
            "start = tl.load(block_start + pid)  # the first element of its block",
            "numel = tl.load(numels + t)",
            "offs = start + tl.arange(0, BLOCK)",
            "mask = offs < numel",
        ]
        k += [f"{t}_ptr = tl.load({t}_ptrs + t).to(tl.pointer_type({ty}))" for t in tensors]
        if has_step:
            k.append("step_ptr = tl.load(step_ptrs + t).to(tl.pointer_type(tl.float32))  # state['step'] of this tensor")
        k.append("first = start == 0")
    else:
        args = [f"{t}_ptr" for t in tensors] + (["step_ptr"] if has_step else []) + ["numel"]
        k += [
            "pid = tl.program_id(0)",
            "offs = pid * BLOCK + tl.arange(0, BLOCK)",
            "mask = offs < numel",
            "first = pid == 0",
        ]
    args += ["lr_ptr", "step_in", "step_out"]
    consts = ["BLOCK"]
    if clip is not None:
        args += ["total_sq_ptr"]
    k += ["# per-step scalars: read from device tensors, computed by every program",
          "lr = tl.load(lr_ptr)", "step = tl.load(step_in)"]
    if clip is not None:
        k += [f"max_norm = {float(clip)!r}"] + _clip_lines()
    k += ["# this block of the parameter, its gradient and its state (computed in fp32)"]
    k += [f"{t} = tl.load({t}_ptr + offs, mask=mask, other=0.0).to(tl.float32)" for t in tensors]
    k += ["# the update chain, one ATen op of opt0 a line"] + lines
    k += ["# write back: parameter and state in place" + (", the clipped gradient too" if clip else "")]
    for t in tensors:
        if t == "grad" and clip is None:
            continue
        out = stored["grad_clipped" if t == "grad" else f"{t}_new"]
        if dtype == torch.bfloat16:  # round to nearest (the interpreter's own conversion truncates)
            out = f"_round_bf16({out})"
        k.append(f"tl.store({t}_ptr + offs, {out}, mask=mask)")
    if has_step:
        k.append(f"tl.store(step_ptr, {stored['step_new']}, mask=first)  # this parameter's state['step']")
    k += [f"tl.store(step_out, {stored['step_new']}, mask=first)  # the counter the next step reads"]
    header = (
        f'"""fusionlab optimizer update: {kind}, {form.replace("_", "-")} kernel'
        + (f" of {model_name}" if model_name else "") + (f", group {group_tag}" if group_tag else "")
        + (f" ({len(param_names)} parameters)" if param_names else "") + '.\n\nGenerated from the opt0 '
        'chain of one parameter (fusionlab.optim.kernels); every value is computed in fp32.\n"""\n'
    )
    helpers = helpers_used(k)
    src = [header, "import triton", "import triton.language as tl", ""]
    if helpers:
        src += [_helper_text(h) for h in helpers]
    src += ["", "@triton.jit", f"def {name}("]
    src += [f"    {a}," for a in args] + [f"    {c}: tl.constexpr," for c in consts] + ["):"]
    src += [f"    {ln}" for ln in k]
    if clip is not None:
        src += ["", "", "@triton.jit",
                "def grad_sq_sum(grad_ptrs, numels, block_tensor, block_start, total_sq_ptr, BLOCK: tl.constexpr):",
                "    # each block adds its gradients' sum of squares to one total, for the global-norm clip",
                "    pid = tl.program_id(0)",
                "    t = tl.load(block_tensor + pid)",
                "    start = tl.load(block_start + pid)",
                "    numel = tl.load(numels + t)",
                "    offs = start + tl.arange(0, BLOCK)",
                f"    grad_ptr = tl.load(grad_ptrs + t).to(tl.pointer_type({ty}))",
                "    grad = tl.load(grad_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)",
                "    sq = grad * grad  # aten.mul.Tensor",
                "    partial = tl.sum(sq, 0)  # aten.sum.default (this block's share)",
                "    tl.atomic_add(total_sq_ptr, partial)  # aten.add.Tensor (across blocks and tensors)"]
    src.append("")
    signature = {a: "*i64" for a in args if a.endswith("_ptrs")}
    signature.update({a: "*i32" for a in ("numels", "block_tensor", "block_start") if a in args})
    signature.update({a: SIG[dtype] for a in args if a.endswith("_ptr") and a[:-4] in tensors})
    signature.update({a: "*fp32" for a in ("step_ptr", "lr_ptr", "step_in", "step_out", "total_sq_ptr") if a in args})
    signature.update({a: "i32" for a in ("numel",) if a in args})
    constexprs = {"BLOCK": GPU_BLOCK}
    return KernelSource(
        name=name, launcher="", source="\n".join(src), signature=signature, constexprs=constexprs,
        num_warps=4, kind="pointwise", candidate_id=f"opt0.{name}.{group_tag}", pattern=name,
        replaces=tuple(lines), modules=tuple(param_names), model_name=model_name,
        int_args={a: 4096 for a in ("numel",) if a in args},
    )


def _helper_text(name: str) -> str:
    """The source of one shared @triton.jit helper (from fusionlab.codegen.helpers)."""
    text = HELPERS
    start = text.index(f"def {name}(")
    start = text.rindex("@triton.jit", 0, start)
    end = text.find("@triton.jit", start + 1)
    return text[start:end if end != -1 else len(text)].rstrip() + "\n\n"
