"""Random programs for fuzzing fusionlab: what a program is and how one is drawn.

A :class:`Program` is a small list of pointwise, reduction and view ops (plus masks,
comparisons, integer intermediates and dtype casts) over one or two inputs and one to
three Parameters, with random shapes (size-1 and prime dims), memory layouts
(contiguous, transposed, sliced, expanded), dtypes (fp32/fp16/bf16) and special values
(NaN, +-inf, denormals). :func:`gen_program` draws one from a :class:`RandomDraw` (a
seeded script) or a :class:`HypothesisDraw` (tests: failing programs shrink);
:mod:`fusionlab.testing.model` runs it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

DIMS = (1, 2, 3, 4, 5, 7, 11, 13)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
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
