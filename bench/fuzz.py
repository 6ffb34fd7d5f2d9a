"""Fuzz fusionlab with random whole programs: capture, fuse everything, compare with eager.

    .venv/bin/python bench/fuzz.py [--cases 2000] [--seed 0] [--e2e-every 5] [--verbose]
        [--executor triton|inductor] [--no-codegen]

A program is a small random list of pointwise, reduction and view ops (plus masks,
comparisons, integer intermediates and dtype casts) over one or two inputs and one to
three Parameters, with random shapes (size-1 and prime dims), memory layouts
(contiguous, transposed, sliced, expanded), dtypes (fp32/fp16/bf16) and special values
(NaN, +-inf, denormals). :class:`FuzzModule` interprets it in ``forward``.

Two checks per program (``tests/test_fuzz.py`` runs the same ones with hypothesis):

``codegen`` (cheap, no dynamo)
    AOTAutograd (``aot_function``, Inductor's decompositions: the ATen level fusionlab
    captures at) gives the forward and backward graphs; every candidate of each is
    generated, built and checked against eager on random inputs (``build_kernel``); a
    kernel that passes is checked again on the *actual* values that reached it in this
    program (NaN, inf, denormals, the real strides). A kernel that passed its random
    check but disagrees on real values is a silent mismatch: the failure this hunts.

``e2e`` (whole pipeline)
    ``fusionlab.capture`` -> ``FusionPlan.select_all`` -> ``plan.compile`` -> fused
    forward + backward, against eager: loss, input grads, parameter grads. Every selected
    candidate must appear in ``fused.report``, used or refused with a reason.

Tolerances (see :func:`compare`), per tensor: a fused value must be within
``rtol * max|eager|`` of eager, with rtol fp32 1e-5 (the project bar), fp16 1e-2, bf16
6e-2. Why those for fp16/bf16: fused kernels keep fp32 between ops where eager rounds
to the narrow type after every op, so a chain of k ops differs by ~k half-ulps (fp16 ulp
2^-10 ~ 1e-3, bf16 ulp 2^-7 ~ 8e-3; 1e-2 and 6e-2 allow ~10 and ~8 such roundings).
A value further from eager than that is still accepted when it is ill-conditioned: a
float64 run of the same ATen graphs (rounding only where the graph casts) is the ideal
result, and three more float64 runs with every op's result perturbed by 4 half-ulps of
the program's dtype show how far rounding alone can move it; the fused value may be up to
4x that spread (or 4x eager's own distance) from the ideal. So cancellation, a layer_norm
of a constant row, an fp16 intermediate that overflows in eager but not in fp32 registers
pass, while a wrong index, op or NaN rule (far beyond any rounding) does not. NaN and
+-inf must sit where eager has them; NaN against +-inf counts as the same blow-up (eager's
Welford var_mean turns a row holding one inf into NaN, a two-pass mean into inf).

Known core bugs (:data:`KNOWN_BUGS`, :data:`KNOWN_MISMATCHES`) are recognised by their
signature and counted, not failed; each has a strict xfail test in tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # a fallback: an installed (or PYTHONPATH) fusionlab comes first

import fusionlab  # noqa: E402, I001  (first: decides the Triton interpreter before triton is imported)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

DIMS = (1, 2, 3, 4, 5, 7, 11, 13)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
RTOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2, torch.float64: 1e-9}
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
SPECIALS = ("none", "nan", "inf", "denormal", "mixed")

# --------------------------------------------------------------------------- drawing


class RandomDraw:
    """The choices a program is made of, from a seeded random.Random (for the script)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        seq = list(seq)
        return seq[self.rng.randrange(len(seq))]

    def bool(self, p: float = 0.5) -> bool:
        return self.rng.random() < p


class HypothesisDraw:
    """The same choices from hypothesis' ``data`` (so failing programs shrink)."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def bool(self, p: float = 0.5) -> bool:
        # hypothesis shrinks towards False; p is only a hint for the script's generator
        return self.data.draw(self.st.booleans())


# --------------------------------------------------------------------------- programs


@dataclass
class InputSpec:
    shape: tuple[int, ...]
    layout: str
    special: str
    requires_grad: bool


@dataclass
class Op:
    name: str
    args: tuple[int, ...]  # indices into the value list (inputs, params, then op results)
    kw: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kw.items())
        return f"{self.name}({', '.join(f'v{a}' for a in self.args)}{kw})"


@dataclass
class Program:
    dtype: torch.dtype
    inputs: list[InputSpec]
    params: list[tuple[int, ...]]
    ops: list[Op]
    outputs: list[int]  # values summed into the loss
    seed: int

    def __repr__(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        lines = [f"Program({dt}, seed={self.seed})"]
        for i, s in enumerate(self.inputs):
            lines.append(f"  v{i} = input {list(s.shape)} {s.layout} special={s.special} grad={s.requires_grad}")
        for k, op in enumerate(self.ops):
            rhs = f"param {list(self.params[op.kw['j']])}" if op.name == "param" else repr(op)
            lines.append(f"  v{len(self.inputs) + k} = {rhs}")
        lines.append(f"  loss = sum(v.float().sum() for v in {[f'v{o}' for o in self.outputs]})")
        return "\n".join(lines)


@dataclass
class _Val:
    shape: tuple[int, ...]
    kind: str  # "f" program float dtype, "f32" float32 (fp16/bf16 programs), "b" bool, "i" int


def _bcast(a, b):
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None


UNARY = ("exp", "tanh", "sigmoid", "relu", "gelu", "gelu_tanh", "silu", "abs", "pow2", "neg",
         "rsqrt_abs", "log_abs", "scale", "rsub1", "clamp", "sin")
BINARY = ("add", "mul", "sub", "div", "maximum")
REDUCE = ("softmax", "log_softmax", "layer_norm", "sum", "mean", "amax", "var")
VIEW = ("transpose", "reshape", "expand", "slice", "permute")
MASK = ("where", "masked_fill", "not", "and", "b2f", "b2i", "iadd", "isum", "any")
CAST = ("upcast", "downcast")
NO_GRAD = ("gt0", "lt", "not", "and", "or", "b2f", "b2i", "iadd", "isum", "i2f", "any")


def gen_program(draw, max_ops: int = 8) -> Program:
    """A random program; `draw` is a RandomDraw or a HypothesisDraw."""
    dtype = draw.choice(DTYPES)
    rank = draw.int(1, 4)
    shape0 = tuple(draw.choice(DIMS) for _ in range(rank))
    inputs = [InputSpec(shape0, draw.choice(LAYOUTS), draw.choice(SPECIALS), draw.bool(0.8))]
    if draw.bool(0.4):
        # a second input that broadcasts against the first
        r = draw.int(1, rank)
        shape1 = tuple(1 if draw.bool(0.3) else s for s in shape0[rank - r:])
        inputs.append(InputSpec(shape1, draw.choice(LAYOUTS), draw.choice(SPECIALS), draw.bool(0.8)))
    # the first parameter broadcasts against the first input (some dims size 1)
    r = draw.int(1, rank)
    params = [tuple(1 if draw.bool(0.3) else s for s in shape0[rank - r:])]
    if draw.bool(0.3):
        params.append(tuple(draw.choice((1, s)) for s in shape0[-1:]))
    # values: the inputs, then one per op; a parameter enters through a "param" op
    vals = [_Val(s.shape, "f") for s in inputs]
    ops: list[Op] = []
    for j, shape in enumerate(params):
        ops.append(Op("param", (), {"j": j}))
        vals.append(_Val(shape, "f"))
    ops.append(Op(draw.choice(("mul", "add")), (0, len(inputs))))
    vals.append(_Val(_bcast(shape0, params[0]), "f"))
    n_ops = draw.int(1, max_ops)
    is_narrow = dtype != torch.float32
    for _ in range(n_ops):
        family = draw.choice(("unary", "unary", "binary", "binary", "reduce", "reduce", "view", "mask", "cast"))
        # operands: mostly recent values (depth), sometimes any earlier one (fan-out)
        recent = len(vals) - 1 if draw.bool(0.6) else draw.int(0, len(vals) - 1)
        new = _gen_op(draw, family, recent, vals, is_narrow, params)
        for op, val in new or ():
            ops.append(op)
            vals.append(val)
    # the loss reads every float value no later op reads (at least the last float one)
    used = {a for o in ops for a in o.args}
    first = len(inputs)
    outs = [i for i in range(first, len(vals)) if i not in used and vals[i].kind in ("f", "f32")
            and ops[i - first].name != "param"]
    # the loss must depend on a parameter (else there is no backward)
    grad = [s.requires_grad for s in inputs]
    for op in ops:
        if op.name == "param":
            grad.append(True)
        elif op.name in NO_GRAD:
            grad.append(False)
        elif op.name == "where":
            grad.append(grad[op.args[1]] or grad[op.args[2]])
        else:
            grad.append(any(grad[a] for a in op.args))
    if not any(grad[o] for o in outs):
        outs.append(max(i for i in _floats(vals) if grad[i] and ops[i - first].name != "param"))
    return Program(dtype, inputs, params, ops, outs, seed=draw.int(0, 2**16))


def _floats(vals, upto=None):
    return [i for i, v in enumerate(vals[:upto]) if v.kind in ("f", "f32")]


def _gen_op(draw, family, a, vals, is_narrow, params):
    """[(Op, result _Val), ...] (a new parameter comes with its "param" op), or None."""
    va = vals[a]
    floats = _floats(vals)
    if family in ("unary", "reduce", "view", "cast") and va.kind not in ("f", "f32"):
        a = draw.choice(floats)
        va = vals[a]
    if family == "unary":
        name = draw.choice(UNARY)
        return [(Op(name, (a,)), _Val(va.shape, va.kind))]
    if family == "binary":
        if va.kind not in ("f", "f32"):
            a = draw.choice(floats)
            va = vals[a]
        partners = [i for i in floats if _bcast(vals[i].shape, va.shape) is not None]
        b = draw.choice(partners)
        name = draw.choice(BINARY)
        kind = "f32" if "f32" in (va.kind, vals[b].kind) else "f"
        return [(Op(name, (a, b)), _Val(_bcast(va.shape, vals[b].shape), kind))]
    if family == "cast":
        if not is_narrow:
            return None
        if va.kind == "f":
            return [(Op("upcast", (a,)), _Val(va.shape, "f32"))]
        return [(Op("downcast", (a,)), _Val(va.shape, "f"))]
    rank = len(va.shape)
    if family == "reduce":
        name = draw.choice(REDUCE)
        if rank == 0:
            return None
        dim = draw.int(0, rank - 1)
        if name in ("softmax", "log_softmax"):
            return [(Op(name, (a,), {"dim": dim}), _Val(va.shape, va.kind))]
        if name == "layer_norm":
            k = draw.int(1, min(2, rank))
            nshape = va.shape[rank - k:]
            affine = draw.bool(0.5) and len(params) < 3 and va.kind == "f"
            if affine:
                params.append(tuple(nshape))
                w = len(vals)
                return [(Op("param", (), {"j": len(params) - 1}), _Val(tuple(nshape), "f")),
                        (Op(name, (a, w), {"k": k}), _Val(va.shape, va.kind))]
            return [(Op(name, (a,), {"k": k}), _Val(va.shape, va.kind))]
        keep = draw.bool(0.5)
        shape = tuple(1 if i == dim else s for i, s in enumerate(va.shape)) if keep else tuple(
            s for i, s in enumerate(va.shape) if i != dim)
        kw = {"dim": dim, "keepdim": keep}
        if name == "var":
            kw["correction"] = draw.choice((0, 1))
        return [(Op(name, (a,), kw), _Val(shape, va.kind))]
    if family == "view":
        name = draw.choice(VIEW)
        if rank == 0 and name != "expand":
            return None
        if name == "transpose":
            if rank < 2:
                return None
            d0, d1 = draw.int(0, rank - 1), draw.int(0, rank - 1)
            shape = list(va.shape)
            shape[d0], shape[d1] = shape[d1], shape[d0]
            return [(Op(name, (a,), {"d0": d0, "d1": d1}), _Val(tuple(shape), va.kind))]
        if name == "permute":
            if rank < 2:
                return None
            perm = list(range(rank))
            for i in range(rank - 1, 0, -1):
                j = draw.int(0, i)
                perm[i], perm[j] = perm[j], perm[i]
            return [(Op(name, (a,), {"perm": tuple(perm)}), _Val(tuple(va.shape[p] for p in perm), va.kind))]
        if name == "reshape":
            if rank >= 2 and draw.bool(0.5):
                d = draw.int(0, rank - 2)  # merge dims d and d+1
                shape = va.shape[:d] + (va.shape[d] * va.shape[d + 1],) + va.shape[d + 2:]
            else:
                d = draw.int(0, rank - 1)  # split dim d as (1, n) or (n, 1) ... or flatten all
                how = draw.choice(("lead1", "trail1", "flat"))
                if how == "flat":
                    shape = (math.prod(va.shape),)
                elif how == "lead1":
                    shape = va.shape[:d] + (1, va.shape[d]) + va.shape[d + 1:]
                else:
                    shape = va.shape[:d] + (va.shape[d], 1) + va.shape[d + 1:]
            if len(shape) > 5:
                return None
            return [(Op(name, (a,), {"shape": tuple(shape)}), _Val(tuple(shape), va.kind))]
        if name == "expand":
            if rank >= 4:
                return None
            p = draw.int(0, rank)
            n = draw.choice((2, 3, 5))
            shape = va.shape[:p] + (n,) + va.shape[p:]
            return [(Op(name, (a,), {"pos": p, "shape": shape}), _Val(shape, va.kind))]
        # slice
        dims = [i for i, s in enumerate(va.shape) if s > 1]
        if not dims:
            return None
        d = draw.choice(dims)
        n = va.shape[d]
        start = draw.int(0, n - 1)
        step = draw.choice((1, 2))
        stop = draw.int(start + 1, n)
        size = len(range(start, stop, step))
        shape = va.shape[:d] + (size,) + va.shape[d + 1:]
        return [(Op("slice", (a,), {"dim": d, "start": start, "stop": stop, "step": step}), _Val(shape, va.kind))]
    return _gen_mask_ops(draw, vals, floats)


def _gen_mask_ops(draw, vals, floats):
    """A comparison (or an existing mask) and what consumes it: where, masked_fill, logic,
    a cast to float, or an integer chain (to int, add/sum, back to float)."""
    out: list = []

    def add(op, val):
        out.append((op, val))
        return len(vals) + len(out) - 1

    def kind_of(i):
        return vals[i].kind if i < len(vals) else out[i - len(vals)][1].kind

    def shape_of(i):
        return vals[i].shape if i < len(vals) else out[i - len(vals)][1].shape

    bools = [i for i, v in enumerate(vals) if v.kind == "b"]
    if not bools or draw.bool(0.5):
        a = draw.choice(floats)
        if draw.bool(0.5):
            m = add(Op("gt0", (a,)), _Val(vals[a].shape, "b"))
        else:
            partners = [i for i in floats if _bcast(vals[i].shape, vals[a].shape) is not None]
            b = draw.choice(partners)
            m = add(Op("lt", (a, b)), _Val(_bcast(vals[a].shape, vals[b].shape), "b"))
    else:
        m = draw.choice(bools)
    name = draw.choice(MASK)
    ms = shape_of(m)
    if name in ("not", "and"):
        if name == "not":
            m = add(Op("not", (m,)), _Val(ms, "b"))
        else:
            partners = [i for i in bools if _bcast(vals[i].shape, ms) is not None] or [m]
            n = draw.choice(partners)
            m = add(Op(draw.choice(("and", "or")), (m, n)), _Val(_bcast(ms, shape_of(n)), "b"))
        ms = shape_of(m)
        name = draw.choice(("where", "b2f", "b2i"))
    if name == "any" and ms:
        dim = draw.int(0, len(ms) - 1)
        m = add(Op("any", (m,), {"dim": dim}), _Val(tuple(s for i, s in enumerate(ms) if i != dim), "b"))
        ms = shape_of(m)
        name = "b2f"
    xs = [i for i in floats if _bcast(vals[i].shape, ms) is not None]
    if name in ("where", "masked_fill") and xs:
        x = draw.choice(xs)
        shape = _bcast(vals[x].shape, ms)
        if name == "masked_fill" and shape == vals[x].shape:
            add(Op(name, (x, m), {"value": draw.choice((0.0, -1.5, float("-inf")))}), _Val(shape, vals[x].kind))
            return out
        ys = [i for i in floats if _bcast(vals[i].shape, shape) is not None]
        y = draw.choice(ys)
        kind = "f32" if "f32" in (vals[x].kind, vals[y].kind) else "f"
        add(Op("where", (m, x, y)), _Val(_bcast(shape, vals[y].shape), kind))
        return out
    if name in ("b2i", "iadd", "isum", "i2f"):
        i = add(Op("b2i", (m,), {"dtype": draw.choice(("int32", "int64"))}), _Val(ms, "i"))
        ints = [j for j, v in enumerate(vals) if v.kind == "i" and _bcast(v.shape, ms) is not None]
        step = draw.choice(("iadd", "isum", "none"))
        if step == "iadd":
            j = draw.choice(ints + [i])
            i = add(Op("iadd", (i, j)), _Val(_bcast(ms, shape_of(j)), "i"))
        elif step == "isum" and ms:
            dim = draw.int(0, len(ms) - 1)
            i = add(Op("isum", (i,), {"dim": dim}), _Val(tuple(s for d, s in enumerate(ms) if d != dim), "i"))
        add(Op("i2f", (i,)), _Val(shape_of(i), "f"))
        return out
    add(Op("b2f", (m,)), _Val(ms, "f"))
    return out


# --------------------------------------------------------------------------- running


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
    denormals to zero when it converts them to fp32 (see KNOWN_LIMITS), and a product of
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


# --------------------------------------------------------------------------- references

# 4 half-ulps of each dtype: a fused reduction rounds a few times where one op of eager rounds once
EPS = {torch.float32: 2.0**-22, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}
_CASTS = (torch.ops.prims.convert_element_type.default, torch.ops.aten._to_copy.default)


def run_float64(gm: torch.fx.GraphModule, args: list, noise: torch.Generator | None = None,
                eps: float = 0.0) -> list:
    """`gm` with every float value held in float64, rounding only where the graph casts.

    Without `noise`: the "ideal" result a fused kernel aims at (it keeps fp32 where eager
    rounds after every fp16/bf16 op). With `noise`: every op's result is perturbed by a
    random `eps` relative to its size, one more rounding any valid implementation might do
    (for a sum or mean: to the size of its terms, where a different order of additions
    loses its bits); the spread of such runs says how ill-conditioned a value is.
    """
    from fusionlab import ops

    def up(x):
        return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    def jitter(x, scale=None):
        if noise is None or not (isinstance(x, torch.Tensor) and x.is_floating_point()) or x.numel() == 0:
            return x
        u = torch.rand(x.shape, generator=noise, dtype=torch.float64) * 2 - 1
        return x + eps * u * (x.abs() if scale is None else torch.maximum(scale, x.abs()))

    def term_sizes(node, a):
        """Per result: the size of the terms a sum/mean/variance adds up, else None."""
        if noise is None or ops.kind_of(node) != "reduction":
            return None
        spec = ops.reduction_spec(node)
        x = a[0]
        if spec.op not in ("sum", "mean", "var", "var_mean") or not spec.dims or not x.is_floating_point():
            return None
        dims, keep = list(spec.dims), spec.keepdim
        if spec.op == "sum":
            return [x.abs().sum(dims, keepdim=keep)]
        mean_size = x.abs().mean(dims, keepdim=keep)
        if spec.op == "mean":
            return [mean_size]
        var_size = (x * x).mean(dims, keepdim=keep)
        return [var_size] if spec.op == "var" else [var_size, mean_size]

    class Float64(torch.fx.Interpreter):
        def run_node(self, n):
            self.node = n
            return super().run_node(n)

        def call_function(self, target, a, kw):
            if target in _CASTS:
                dt = a[1] if len(a) > 1 else kw.get("dtype")
                if isinstance(dt, torch.dtype) and dt.is_floating_point:
                    return a[0].to(dt).double()
            kw = {k: (torch.float64 if isinstance(v, torch.dtype) and v.is_floating_point else v)
                  for k, v in kw.items()}
            out = super().call_function(target, a, kw)
            sizes = term_sizes(self.node, a)
            if isinstance(out, (list, tuple)):
                sizes = sizes or [None] * len(out)
                return type(out)(jitter(up(o), z) for o, z in zip(out, sizes))
            return jitter(up(out), sizes[0] if sizes else None)

    with torch.no_grad():
        return list(Float64(gm).run(*[up(a) for a in args]))


def group_dtype(kernel) -> torch.dtype:
    """The narrowest float dtype any value of the kernel's group has (its tolerance class)."""
    dts = {dt for _, dt, _, _ in kernel.source.meta["inputs"] + kernel.source.meta["outputs"]}
    for n in kernel.subgraph.graph.nodes:
        v = n.meta.get("val")
        for t in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(t, torch.Tensor):
                dts.add(t.dtype)
    for dt in (torch.bfloat16, torch.float16):
        if dt in dts:
            return dt
    return torch.float32


# --------------------------------------------------------------------------- comparison


def _dist(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|x - ref| in float64; 0 where both are the same inf or both NaN, inf where one blew up alone."""
    x, ref = x.double(), ref.double()
    d = (x - ref).abs()
    same_special = (torch.isnan(x) & torch.isnan(ref)) | (torch.isinf(ref) & (x == ref))
    # NaN where the other has +-inf: both blew up, in different ways (eager's Welford
    # var_mean gives NaN for a row holding one inf, a two-pass mean gives inf)
    both_blew_up = ~torch.isfinite(x) & ~torch.isfinite(ref) & (torch.isnan(x) | torch.isnan(ref))
    d = torch.where(same_special | both_blew_up, torch.zeros_like(d), d)
    return torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)


def compare(got: torch.Tensor, eager: torch.Tensor, refs: list | None, dtype: torch.dtype) -> str | None:
    """None when `got` (fused) agrees with `eager`, else where and how it does not.

    `refs`: [ideal float64 result, noisy float64 results...] (see run_float64). Agreement:
    within ``RTOL[dtype] * max|eager|`` of eager; or, where eager itself is further than
    that from the ideal result, no more than 4x further from it than eager or the noisy
    runs are (the value is ill-conditioned: cancellation, rounding amplified by a norm).
    """
    if got.shape != eager.shape:
        return f"shape {tuple(got.shape)} != eager {tuple(eager.shape)}"
    if got.dtype != eager.dtype:
        return f"dtype {got.dtype} != eager {eager.dtype}"
    if got.numel() == 0:
        return None
    if not eager.dtype.is_floating_point:
        return None if torch.equal(got, eager) else "integer/bool values differ"
    rtol = RTOL[dtype]
    e = eager.double()
    fin = e[torch.isfinite(e)]
    scale = float(fin.abs().max()) if fin.numel() else 1.0
    tol = rtol * max(scale, 1e-30) + 1e-30
    bad = _dist(got, eager) > tol
    if not bad.any():
        return None
    if refs:
        ideal = refs[0].reshape(got.shape)
        df = _dist(got, ideal)[bad]
        spread = _dist(eager, ideal)[bad]
        for r in refs[1:]:
            spread = torch.maximum(spread, _dist(r.reshape(got.shape), ideal)[bad])
        explained = df <= 4 * spread + tol
        if explained.all():
            return None
        i = tuple(bad.nonzero()[~explained][0].tolist())
    else:
        i = tuple(bad.nonzero()[0].tolist())
    return (
        f"at {list(i)}: fused {float(got[i])!r}, eager {float(eager[i])!r}"
        + (f", float64 {float(refs[0].reshape(got.shape)[i])!r}" if refs else "")
        + f" (tolerance {tol:.3g}; {int(bad.sum())} of {bad.numel()} elements beyond it)"
    )


# --------------------------------------------------------------------------- checks


@dataclass
class CaseResult:
    kind: str  # "codegen" | "e2e"
    candidates: int = 0
    used: int = 0
    refused: dict = field(default_factory=dict)  # candidate id -> reason
    special_checks: int = 0
    seconds: float = 0.0
    known_bugs: set = field(default_factory=set)  # known core bugs the case hit (KNOWN_BUGS, KNOWN_MISMATCHES)

    @property
    def known_bug(self) -> str | None:
        return "+".join(sorted(self.known_bugs)) or None


class SilentMismatch(AssertionError):
    """A fused result that disagrees with eager while nothing refused it."""


# Bugs found by this fuzzer that the core does not fix yet, by a signature of the exception
# they raise. Each has a strict xfail test in tests/test_fuzz.py; a case that hits one counts
# as known (reported by the script, tolerated by the tests) instead of failing. (Fixed so
# far: the launcher rejecting another layout of an input, select_all() failing on a cycle.)
KNOWN_BUGS: dict[str, re.Pattern] = {}
# What the Triton interpreter (3.9) does differently from a GPU, worked around by the generator:
KNOWN_LIMITS = {
    "bf16-denormals": "the interpreter flushes bf16 denormals to zero when converting to fp32",
}


# Known wrong values, by the conditions that produce them (each with a strict xfail test).
# None open now. Fixed so far: sign(nan); bf16 casts and rounding in the interpreter;
# comparisons of fp16/bf16 values held unrounded (the classifier below recognises that
# one, should it come back: add "narrow-compare" here while it is open).
KNOWN_MISMATCHES: tuple[str, ...] = ()
_CMP = {getattr(getattr(torch.ops.aten, op), ov) for op in ("eq", "ne", "lt", "le", "gt", "ge")
        for ov in ("Tensor", "Scalar")}
_NARROW = (torch.float16, torch.bfloat16)


def _dtype_of(node) -> torch.dtype | None:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v.dtype if isinstance(v, torch.Tensor) else None


def known_mismatch_codegen(kernel, ins) -> str | None:
    """Which known bug explains a kernel that disagrees with eager on real values, if any."""
    for n in kernel.subgraph.graph.nodes:
        if n.target in _CMP and any(_computed_narrow(a) for a in n.all_input_nodes):
            return "narrow-compare"
    return None


def _computed_narrow(node) -> bool:
    """Is `node` (through casts) an fp16/bf16 value computed inside the group?"""
    while node.op != "placeholder":
        if _dtype_of(node) in _NARROW:
            return True
        if node.target not in _CASTS:
            return False
        node = node.args[0]
    return False


def known_bug(exc: BaseException) -> str | None:
    text = f"{type(exc).__name__}: {exc}"
    for name, pat in KNOWN_BUGS.items():
        if pat.search(text):
            return name
    return None


@dataclass
class Traced:
    """The program's forward and backward ATen graphs (AOTAutograd, Inductor decompositions)."""

    fw: object  # CapturedGraph
    bw: object | None
    fw_args: list
    bw_args: list | None
    loss: torch.Tensor


def trace_program(prog: Program) -> Traced:
    """AOTAutograd without dynamo (cheap): the same ATen level fusionlab.capture produces."""
    from functorch.compile import aot_function
    from torch._inductor.decomposition import select_decomp_table

    from fusionlab.capture import CapturedGraph, node_facts

    model = FuzzModule(prog)
    params = list(model.ps)
    graphs: dict[str, tuple] = {}

    def compiler(kind):
        def comp(gm, example):
            rec: list = []
            graphs[kind] = (CapturedGraph(0 if kind == "forward" else 1, kind, gm, node_facts(gm)), rec)

            def run(args):
                rec.append([a.detach() if isinstance(a, torch.Tensor) else a for a in args])
                return gm(*args)

            run._boxed_call = True
            return run

        return comp

    def fn(params, *inputs):
        v = list(inputs)
        for op in prog.ops:
            v.append(apply_op(op, v, params, prog.dtype))
        loss = None
        for o in prog.outputs:
            t = v[o].float().sum()
            loss = t if loss is None else loss + t
        return loss

    compiled = aot_function(fn, fw_compiler=compiler("forward"), bw_compiler=compiler("backward"),
                            decompositions=select_decomp_table())
    _, passed = make_inputs(prog)
    loss = compiled(params, *passed)
    if loss.requires_grad:
        loss.backward()
    fw, fw_rec = graphs["forward"]
    bw, bw_rec = graphs.get("backward", (None, [None]))
    return Traced(fw, bw, fw_rec[0], bw_rec[0] if bw_rec else None, loss.detach())


def reference_step(prog: Program, traced: Traced, noise: torch.Generator | None = None):
    """(loss, {"input0": grad of the leaf, "param0": ...}) computed by run_float64."""
    eps = EPS[prog.dtype]
    fw_out = run_float64(traced.fw.gm, traced.fw_args, noise, eps)
    loss = fw_out[0]
    grads: dict = {}
    n_params = len(prog.params)
    if traced.bw is not None:
        saved = fw_out[1:]
        n_bw = sum(1 for n in traced.bw.gm.graph.nodes if n.op == "placeholder")
        tangents = [torch.ones((), dtype=torch.float64)] * (n_bw - len(saved))
        bw_out = run_float64(traced.bw.gm, saved + tangents, noise, eps)
        leaves, _ = make_inputs(prog)
        for j in range(n_params):
            grads[f"param{j}"] = bw_out[j]
        for i, leaf in enumerate(leaves):
            g = bw_out[n_params + i] if n_params + i < len(bw_out) else None
            if g is None or not leaf.requires_grad:
                grads[f"input{i}"] = None
                continue
            # the grad of the view the model saw -> the grad of the leaf it was made from
            base = leaf.detach().double().requires_grad_()
            seen = view_of(prog.inputs[i], base)
            (grads[f"input{i}"],) = torch.autograd.grad(seen, base, g.reshape(seen.shape))
    return loss, grads


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


def check_codegen(prog: Program, seed: int = 0, traced: Traced | None = None) -> CaseResult:
    """Every candidate of the forward and backward graphs: built, checked, re-checked on real values."""
    from fusionlab.candidates import graph_candidates
    from fusionlab.kernels.kernel import build_kernel

    start = time.perf_counter()
    res = CaseResult("codegen")
    traced = traced or trace_program(prog)
    for graph, args in ((traced.fw, traced.fw_args), (traced.bw, traced.bw_args)):
        if graph is None:
            continue
        cands, _ = graph_candidates(graph)
        env = _node_values(graph.gm, args) if args is not None else None
        for c in cands:
            res.candidates += 1
            kernel, status = build_kernel(c, graph, validate=True, seed=seed)
            if kernel is None:
                assert status.reason, f"{c.id} refused without a reason"
                res.refused[c.id] = status.reason
                continue
            res.used += 1
            if env is None:
                continue
            ins = [env[i] for i in c.inputs]
            if not all(isinstance(t, torch.Tensor) for t in ins):
                continue
            # the values that reached this group in the real program: special values, and
            # the strides eager gave them (not always the traced ones)
            got = kernel(*ins)
            expected = kernel.subgraph(*ins)
            gen = torch.Generator().manual_seed(seed)
            refs = [run_float64(kernel.subgraph, ins)]
            tol_dtype = group_dtype(kernel)
            refs += [run_float64(kernel.subgraph, ins, gen, EPS[tol_dtype]) for _ in range(3)]
            res.special_checks += 1
            for k, (name, g, e) in enumerate(zip(c.outputs, got, expected)):
                why = compare(g, e, [r[k] for r in refs], tol_dtype)
                if why is not None and known_mismatch_codegen(kernel, ins):
                    res.known_bugs.add(known_mismatch_codegen(kernel, ins))
                    continue
                if why is not None:
                    raise SilentMismatch(
                        f"kernel {kernel.name} passed its check but disagrees with eager on the "
                        f"program's own values: output {name} {why}\n{prog!r}\n{kernel.source.source}"
                    )
    res.seconds = time.perf_counter() - start
    return res


def _node_values(gm: torch.fx.GraphModule, args: list) -> dict:
    """Every node's value when `gm` runs on `args` (so a group can be fed its real inputs)."""
    env: dict = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            env[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*args)
    return env


def _eager_grads(model, prog):
    leaves, passed = make_inputs(prog)
    loss = model(*passed)
    if loss.requires_grad:
        loss.backward()
    grads = {f"input{i}": t.grad for i, t in enumerate(leaves)}
    grads.update({f"param{j}": p.grad for j, p in enumerate(model.ps)})
    return loss.detach(), grads


def check_e2e(prog: Program, seed: int = 0, traced: Traced | None = None, executor: str = "triton") -> CaseResult:
    """capture -> select_all -> compile -> fused forward/backward, against eager (and float64).

    ``executor="inductor"``: the fused step runs through ``InductorGraphExecutor`` (whole
    graphs compiled by Inductor, fusion only inside the groups); a graph it could not
    compile whole (``report.fallbacks``: a fusion-policy violation or a compile error) is a
    failure too.
    """
    start = time.perf_counter()
    res = CaseResult("e2e")
    model = FuzzModule(prog)
    _, passed = make_inputs(prog)
    cap = fusionlab.capture(model, *passed)
    plan = fusionlab.FusionPlan(cap)
    try:
        plan.select_all()
    except fusionlab.PlanError as e:
        if known_bug(e) is None:
            raise
        res.known_bugs.add(known_bug(e))
        res.seconds = time.perf_counter() - start
        return res
    res.candidates = len(plan.candidates)
    fused_model = copy.deepcopy(model)
    options = {"seed": seed}
    if executor == "inductor":
        from fusionlab.executors import InductorGraphExecutor

        options = {"executor": InductorGraphExecutor(seed=seed)}
    fused = plan.compile(fused_model, **options)
    leaves, passed = make_inputs(prog)
    try:
        loss = fused(*passed)
        loss.backward()
    except Exception as e:  # noqa: BLE001
        bug = known_bug(e)
        if bug is None:
            raise
        res.known_bugs.add(bug)
        res.seconds = time.perf_counter() - start
        return res
    f_grads = {f"input{i}": t.grad for i, t in enumerate(leaves)}
    f_grads.update({f"param{j}": p.grad for j, p in enumerate(fused_model.ps)})
    # every selected candidate is accounted for: used, or refused with a reason
    reported = {k.candidate: k for k in fused.report.kernels}
    for c in plan.selected:
        st = reported.get(c.id)
        assert st is not None, (
            f"candidate {c.id} was selected but the fused step's report does not mention it\n"
            f"{fused.report}\n{prog!r}"
        )
        if st.used:
            res.used += 1
        else:
            assert st.reason, f"{c.id} refused without a reason"
            res.refused[c.id] = st.reason
    if fused.report.fallbacks:
        raise SilentMismatch("whole-graph executor fell back:\n  " + "\n  ".join(fused.report.fallbacks)
                             + f"\n{prog!r}")
    e_loss, e_grads = _eager_grads(copy.deepcopy(model), prog)
    traced = traced or trace_program(prog)
    gen = torch.Generator().manual_seed(seed)
    refs = [reference_step(prog, traced)] + [reference_step(prog, traced, gen) for _ in range(3)]
    problems = []
    why = compare(loss.detach(), e_loss, [r[0] for r in refs], prog.dtype)
    if why:
        problems.append(f"loss {why}")
    for k, eg in e_grads.items():
        fg = f_grads[k]
        if (eg is None) != (fg is None):
            problems.append(f"{k}.grad is {'None' if fg is None else 'set'} fused, "
                            f"{'None' if eg is None else 'set'} in eager")
            continue
        if eg is None:
            continue
        rg = [r[1].get(k) for r in refs]
        why = compare(fg, eg, rg if all(g is not None for g in rg) else None, prog.dtype)
        if why:
            problems.append(f"{k}.grad {why}")
    if problems:
        # a known kernel bug explains it when the per-kernel check pins it on one
        try:
            bugs = check_codegen(prog, seed=seed, traced=traced).known_bugs & set(KNOWN_MISMATCHES)
        except SilentMismatch:
            bugs = set()
        if bugs:
            res.known_bugs |= bugs
            problems = []
    if problems:
        raise SilentMismatch(
            "fused training step disagrees with eager:\n  " + "\n  ".join(problems)
            + f"\n{prog!r}\n{fused.report}"
        )
    res.seconds = time.perf_counter() - start
    return res


# --------------------------------------------------------------------------- script


def refusal_kind(reason: str) -> str:
    """A refusal reason without the names and numbers that make each one unique."""
    m = re.search(r"check against eager failed: \S+: (MISMATCH|FAILED)[^(]*\(([^;)]*)", reason)
    if m:
        return f"check against eager failed: {m.group(1)} ({m.group(2)})"
    return re.sub(r"\d+", "N", reason)[:100]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--e2e-every", type=int, default=5, help="run the whole pipeline on every k-th program")
    p.add_argument("--max-ops", type=int, default=8)
    p.add_argument("--executor", default="triton", choices=["triton", "inductor"],
                   help="e2e cases: fusionlab's Triton kernels (interpreter on CPU) or the whole-graph "
                        "Inductor executor")
    p.add_argument("--no-codegen", action="store_true", help="run only the e2e checks")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    totals = {"codegen": [0, 0.0], "e2e": [0, 0.0]}
    cands = used = specials = 0
    refusals: dict[str, int] = {}
    known: dict[str, int] = {}
    failures = []
    t0 = time.perf_counter()
    for i in range(args.cases):
        prog = gen_program(RandomDraw(args.seed * 1_000_003 + i), max_ops=args.max_ops)
        kinds = ([] if args.no_codegen else ["codegen"]) + (
            ["e2e"] if args.e2e_every and i % args.e2e_every == 0 else [])
        for kind in kinds:
            try:
                if kind == "codegen":
                    r = check_codegen(prog, seed=i)
                else:
                    r = check_e2e(prog, seed=i, executor=args.executor)
            except SilentMismatch as e:
                failures.append((i, kind, str(e)))
                print(f"case {i} ({kind}): MISMATCH\n{e}\n", flush=True)
                continue
            except Exception as e:  # noqa: BLE001 - a crash is a finding
                failures.append((i, kind, traceback.format_exc()))
                print(f"case {i} ({kind}): CRASH {type(e).__name__}: {e}\n{prog!r}\n", flush=True)
                continue
            totals[kind][0] += 1
            totals[kind][1] += r.seconds
            for bug in r.known_bugs:
                known[bug] = known.get(bug, 0) + 1
            cands += r.candidates
            used += r.used
            specials += r.special_checks
            for reason in r.refused.values():
                key = refusal_kind(reason)
                refusals[key] = refusals.get(key, 0) + 1
            if args.verbose:
                print(f"case {i} ({kind}): {r.candidates} candidates, {r.used} used, "
                      f"{len(r.refused)} refused, {r.seconds:.2f}s", flush=True)
    wall = time.perf_counter() - t0
    print(f"\n{args.cases} programs (seed {args.seed}) in {wall:.0f}s")
    for kind, (n, s) in totals.items():
        if n:
            print(f"  {kind:8} {n:5d} passed, {s / n:.2f}s per case")
    print(f"  candidates {cands}, kernels used {used}, re-checked on real values {specials}")
    if refusals:
        print("  refusals (reason: count):")
        for k, v in sorted(refusals.items(), key=lambda kv: -kv[1]):
            print(f"    {v:4d}  {k}")
    if known:
        print("  cases that hit a known core bug (bench/fuzz.py KNOWN_BUGS): "
              + ", ".join(f"{k} x{v}" for k, v in known.items()))
    print(f"  failures: {len(failures)}")
    for i, kind, text in failures:
        print(f"    case {i} ({kind}): {text.splitlines()[0] if text else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
