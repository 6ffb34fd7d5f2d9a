"""Running a random :class:`~fusionlab.testing.programs.Program` in eager PyTorch.

:class:`FuzzModule` interprets a program in ``forward`` (the scalar loss);
:func:`make_inputs` gives its inputs, the same values on every call, laid out as the
program says (a transposed, sliced or expanded view of a leaf that gets the grad).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .programs import InputSpec, Op, Program


def apply_op(op: Op, v: list, params, dtype: torch.dtype):
    """The torch code of one op (dtype: the program's float dtype)."""
    kw = op.kw
    n = op.name
    if n == "param":
        return params[kw["j"]]
    a = v[op.args[0]]
    if n == "exp":
        return torch.exp(a)
    if n == "tanh":
        return torch.tanh(a)
    if n == "sigmoid":
        return torch.sigmoid(a)
    if n == "relu":
        return torch.relu(a)
    if n == "gelu":
        return F.gelu(a)
    if n == "gelu_tanh":
        return F.gelu(a, approximate="tanh")
    if n == "silu":
        return F.silu(a)
    if n == "abs":
        return a.abs()
    if n == "pow2":
        return a.pow(2)
    if n == "neg":
        return -a
    if n == "rsqrt_abs":
        return torch.rsqrt(a.abs() + 1)
    if n == "log_abs":
        return torch.log(a.abs() + 0.5)
    if n == "scale":
        return a * 0.75
    if n == "rsub1":
        return 1 - a
    if n == "clamp":
        return a.clamp(-1.5, 2.0)
    if n == "sin":
        return torch.sin(a)
    if n in ("add", "mul", "sub", "div", "maximum"):
        b = v[op.args[1]]
        if n == "add":
            return a + b
        if n == "mul":
            return a * b
        if n == "sub":
            return a - b
        if n == "div":
            return a / (b.abs() + 0.5)
        return torch.maximum(a, b)
    if n == "softmax":
        return torch.softmax(a, kw["dim"])
    if n == "log_softmax":
        return torch.log_softmax(a, kw["dim"])
    if n == "layer_norm":
        w = v[op.args[1]] if len(op.args) > 1 else None
        return F.layer_norm(a, a.shape[a.dim() - kw["k"]:], w)
    if n == "sum":
        return a.sum(kw["dim"], keepdim=kw["keepdim"])
    if n == "mean":
        return a.mean(kw["dim"], keepdim=kw["keepdim"])
    if n == "amax":
        return a.amax(kw["dim"], keepdim=kw["keepdim"])
    if n == "var":
        return a.var(kw["dim"], keepdim=kw["keepdim"], correction=kw["correction"])
    if n == "transpose":
        return a.transpose(kw["d0"], kw["d1"])
    if n == "permute":
        return a.permute(*kw["perm"])
    if n == "reshape":
        return a.reshape(kw["shape"])
    if n == "expand":
        return a.unsqueeze(kw["pos"]).expand(kw["shape"])
    if n == "slice":
        idx = (slice(None),) * kw["dim"] + (slice(kw["start"], kw["stop"], kw["step"]),)
        return a[idx]
    if n == "upcast":
        return a.float()
    if n == "downcast":
        return a.to(dtype)
    if n == "gt0":
        return a > 0
    if n == "lt":
        return a < v[op.args[1]]
    if n == "where":
        return torch.where(a, v[op.args[1]], v[op.args[2]])
    if n == "masked_fill":
        return a.masked_fill(v[op.args[1]], kw["value"])
    if n == "not":
        return ~a
    if n == "and":
        return a & v[op.args[1]]
    if n == "or":
        return a | v[op.args[1]]
    if n == "b2f":
        return a.to(dtype)
    if n == "b2i":
        return a.to(getattr(torch, kw["dtype"]))
    if n == "any":
        return a.any(kw["dim"])
    if n == "iadd":
        return a + v[op.args[1]] * 2
    if n == "isum":
        return a.sum(kw["dim"])
    if n == "i2f":
        return a.to(dtype) * 0.5
    raise ValueError(f"unknown op {n}")


class FuzzModule(nn.Module):
    """Runs a Program: ``forward(*inputs)`` returns the scalar loss."""

    def __init__(self, prog: Program, dtype: torch.dtype | None = None):
        super().__init__()
        self.prog = prog
        self.dtype = dtype or prog.dtype
        gen = torch.Generator().manual_seed(prog.seed)
        self.ps = nn.ParameterList(
            [nn.Parameter(torch.randn(s, generator=gen).to(self.dtype)) for s in prog.params]
        )

    def forward(self, *inputs):
        v = list(inputs)
        for op in self.prog.ops:
            v.append(apply_op(op, v, self.ps, self.dtype))
        loss = None
        for o in self.prog.outputs:
            term = v[o].float().sum()
            loss = term if loss is None else loss + term
        return loss


def make_inputs(prog: Program, dtype: torch.dtype | None = None):
    """(leaf tensors that get grads, the tensors passed to the model): same values each call."""
    dtype = dtype or prog.dtype
    gen = torch.Generator().manual_seed(prog.seed + 1)
    leaves, passed = [], []
    for spec in prog.inputs:
        shape, rank = spec.shape, len(spec.shape)
        if spec.layout == "transposed" and rank >= 2:
            base_shape = shape[::-1]
        elif spec.layout == "sliced" and rank >= 1:
            base_shape = shape[:-1] + (shape[-1] * 2 + 1,)
        elif spec.layout == "expanded" and rank >= 1:
            base_shape = (1,) + shape[1:]
        else:
            base_shape = shape
        base = _values(base_shape, spec.special, gen, prog.dtype).to(dtype)
        base.requires_grad_(spec.requires_grad)
        leaves.append(base)
        passed.append(view_of(spec, base))
    return leaves, passed


def _values(shape, special, gen, dtype):
    """Random values in `dtype` (then exactly representable in float64), with special values.

    bf16 gets no values near its denormal range: the Triton interpreter (3.9) flushes bf16
    denormals to zero when it converts them to fp32 (see fusionlab.testing.checks.KNOWN_LIMITS), and a product of
    tiny values would reach them; zeros stand in.
    """
    t = torch.randn(shape, generator=gen).to(dtype)
    flat = t.view(-1)
    n = flat.numel()
    if n == 0 or special == "none":
        return t
    tiny = {torch.float32: 1e-40, torch.float16: 1e-6, torch.bfloat16: 0.0}[dtype]
    picks = {"nan": [float("nan")], "inf": [float("inf"), float("-inf")], "denormal": [tiny, -tiny, 0.0, -0.0],
             "mixed": [float("nan"), float("inf"), float("-inf"), tiny, -0.0]}[special]
    k = max(1, n // 6)
    idx = torch.randperm(n, generator=gen)[:k]
    for j, i in enumerate(idx.tolist()):
        flat[i] = picks[j % len(picks)]
    return t


def view_of(spec: InputSpec, base: torch.Tensor) -> torch.Tensor:
    """The tensor the model sees, made from the leaf `base` (which gets the grad)."""
    rank = len(spec.shape)
    if spec.layout == "transposed" and rank >= 2:
        return base.permute(*reversed(range(rank)))
    if spec.layout == "sliced" and rank >= 1:
        return base[..., 1::2]
    if spec.layout == "expanded" and rank >= 1:
        return base.expand(spec.shape)
    return base
