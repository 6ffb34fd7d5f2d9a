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

# each op: (operand values, keyword arguments, the program's float dtype) -> its torch code
OPS = {
    "exp": lambda a, kw, dt: torch.exp(a[0]),
    "tanh": lambda a, kw, dt: torch.tanh(a[0]),
    "sigmoid": lambda a, kw, dt: torch.sigmoid(a[0]),
    "relu": lambda a, kw, dt: torch.relu(a[0]),
    "gelu": lambda a, kw, dt: F.gelu(a[0]),
    "gelu_tanh": lambda a, kw, dt: F.gelu(a[0], approximate="tanh"),
    "silu": lambda a, kw, dt: F.silu(a[0]),
    "abs": lambda a, kw, dt: a[0].abs(),
    "pow2": lambda a, kw, dt: a[0].pow(2),
    "neg": lambda a, kw, dt: -a[0],
    "rsqrt_abs": lambda a, kw, dt: torch.rsqrt(a[0].abs() + 1),
    "log_abs": lambda a, kw, dt: torch.log(a[0].abs() + 0.5),
    "scale": lambda a, kw, dt: a[0] * 0.75,
    "rsub1": lambda a, kw, dt: 1 - a[0],
    "clamp": lambda a, kw, dt: a[0].clamp(-1.5, 2.0),
    "sin": lambda a, kw, dt: torch.sin(a[0]),
    "add": lambda a, kw, dt: a[0] + a[1],
    "mul": lambda a, kw, dt: a[0] * a[1],
    "sub": lambda a, kw, dt: a[0] - a[1],
    "div": lambda a, kw, dt: a[0] / (a[1].abs() + 0.5),
    "maximum": lambda a, kw, dt: torch.maximum(a[0], a[1]),
    "softmax": lambda a, kw, dt: torch.softmax(a[0], kw["dim"]),
    "log_softmax": lambda a, kw, dt: torch.log_softmax(a[0], kw["dim"]),
    "layer_norm": lambda a, kw, dt: F.layer_norm(a[0], a[0].shape[a[0].dim() - kw["k"]:], *a[1:]),
    "sum": lambda a, kw, dt: a[0].sum(kw["dim"], keepdim=kw["keepdim"]),
    "mean": lambda a, kw, dt: a[0].mean(kw["dim"], keepdim=kw["keepdim"]),
    "amax": lambda a, kw, dt: a[0].amax(kw["dim"], keepdim=kw["keepdim"]),
    "var": lambda a, kw, dt: a[0].var(kw["dim"], keepdim=kw["keepdim"], correction=kw["correction"]),
    "transpose": lambda a, kw, dt: a[0].transpose(kw["d0"], kw["d1"]),
    "permute": lambda a, kw, dt: a[0].permute(*kw["perm"]),
    "reshape": lambda a, kw, dt: a[0].reshape(kw["shape"]),
    "expand": lambda a, kw, dt: a[0].unsqueeze(kw["pos"]).expand(kw["shape"]),
    "slice": lambda a, kw, dt: a[0][(slice(None),) * kw["dim"] + (slice(kw["start"], kw["stop"], kw["step"]),)],
    "upcast": lambda a, kw, dt: a[0].float(),
    "downcast": lambda a, kw, dt: a[0].to(dt),
    "gt0": lambda a, kw, dt: a[0] > 0,
    "lt": lambda a, kw, dt: a[0] < a[1],
    "where": lambda a, kw, dt: torch.where(a[0], a[1], a[2]),
    "masked_fill": lambda a, kw, dt: a[0].masked_fill(a[1], kw["value"]),
    "not": lambda a, kw, dt: ~a[0],
    "and": lambda a, kw, dt: a[0] & a[1],
    "or": lambda a, kw, dt: a[0] | a[1],
    "b2f": lambda a, kw, dt: a[0].to(dt),
    "b2i": lambda a, kw, dt: a[0].to(getattr(torch, kw["dtype"])),
    "any": lambda a, kw, dt: a[0].any(kw["dim"]),
    "iadd": lambda a, kw, dt: a[0] + a[1] * 2,
    "isum": lambda a, kw, dt: a[0].sum(kw["dim"]),
    "i2f": lambda a, kw, dt: a[0].to(dt) * 0.5,
}


def apply_op(op: Op, v: list, params, dtype: torch.dtype):
    """The torch code of one op (dtype: the program's float dtype)."""
    if op.name == "param":
        return params[op.kw["j"]]
    if op.name not in OPS:
        raise ValueError(f"unknown op {op.name}")
    return OPS[op.name]([v[i] for i in op.args], op.kw, dtype)


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
