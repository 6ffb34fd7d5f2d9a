"""The op table: every ATen op -> its kind, and for pointwise ops the Triton expression.

Kinds:
  pointwise   one output element from the same element of each input (with broadcasting)
  reduction   sum/mean/amax/amin/var_mean/var/prod/any over some dims
  view        a new view of existing memory: no kernel (view, permute, expand, slice ...)
  getitem     picks one result of a multi-output op: no kernel
  matmul      mm/addmm/bmm/convolution ...: a library kernel, never fused here
  opaque      anything else (embedding, random ops, indexing ...): runs as in eager
  placeholder / output / constant   graph inputs, outputs and attributes

An op missing from the table is opaque, never an error. Pointwise expressions use only
core ``tl`` functions (no libdevice) so the same kernel runs in the Triton interpreter
on CPU and compiles for any GPU target.

One piece: the table is what a reader scans to learn how fusionlab sees an op (its kind
and, for pointwise ops, its Triton expression side by side); split by kind, an op's two
facts would live in two files.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.fma, prims.inductor_random)
import torch.fx

aten = torch.ops.aten
prims = torch.ops.prims

KERNEL_KINDS = ("pointwise", "reduction", "matmul", "opaque")
FUSABLE_KINDS = ("pointwise", "reduction")


def launches_kernel(kind: str) -> bool:
    """Does a node of this kind launch a kernel when the graph runs eagerly?"""
    return kind in KERNEL_KINDS


def _packet_name(target) -> str:
    """aten.add.Tensor -> 'aten.add.Tensor'."""
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        return f"{ns}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def op_name(node: torch.fx.Node) -> str:
    if node.op in ("placeholder", "output"):
        return node.op
    if node.op == "get_attr":
        return "constant"
    return _packet_name(node.target)


# --------------------------------------------------------------------------- pointwise


@dataclass(frozen=True)
class Pointwise:
    """How to write one pointwise op in Triton.

    ``expr(args, kwargs, out_dtype)`` gets the arguments already written as Triton
    expressions (tensor arguments as value names, numbers as literals) and returns
    the expression for the result.
    """

    expr: Callable[[list, dict, torch.dtype], str]
    tensor_args: tuple[int, ...] | None = None  # positions that may be tensors (None: all)


def _fmt(template: str) -> Pointwise:
    return Pointwise(lambda a, k, dt: template.format(*a))


def _alpha(op: str) -> Pointwise:
    def expr(a, k, dt):
        alpha = k.get("alpha")
        rhs = a[1] if alpha in (None, "1", "1.0") else f"{alpha} * {a[1]}"
        return f"{a[0]} {op} {rhs}"

    return Pointwise(expr)


def _pow_scalar(a, k, dt) -> str:
    x, e = a[0], a[1]
    try:
        ev = float(e)
    except ValueError:
        return f"_pow({x}, {e})"
    if ev == 2.0:
        return f"{x} * {x}"
    if ev == 3.0:
        return f"{x} * {x} * {x}"
    if ev == 1.0:
        return f"{x}"
    if ev == 0.5:
        return f"tl.sqrt({x})"
    if ev == -0.5:
        return f"tl.rsqrt({x})"
    if ev == -1.0:
        return f"1.0 / {x}"
    if ev == 0.0:
        return f"tl.full({x}.shape, 1.0, tl.float32)"
    return f"_pow({x}, {e})"


def _where(a, k, dt) -> str:
    return f"tl.where({a[0]}, {a[1]}, {a[2]})"


def _cast(a, k, dt) -> str:
    return cast_expr(a[0], dt)


def cast_expr(x: str, dt: torch.dtype) -> str:
    """Convert a value to dtype `dt` the way torch does (floats stay fp32 in registers)."""
    if dt == torch.bool:
        return f"({x} != 0)"
    if dt == torch.bfloat16:
        # round to bf16 (ties to even, like torch), keep computing in fp32
        return f"_round_bf16({x}.to(tl.float32))"
    if dt == torch.float16:
        # round through fp16, keep computing in fp32
        return f"{x}.to(tl.float32).to(tl.float16).to(tl.float32)"
    return f"{x}.to({TL_DTYPE[compute_dtype(dt)]})"


def _clamp(a, k, dt) -> str:
    x = a[0]
    lo = a[1] if len(a) > 1 else k.get("min")
    hi = a[2] if len(a) > 2 else k.get("max")
    if lo not in (None, "None"):
        x = f"tl.maximum({x}, {lo}, propagate_nan=tl.PropagateNan.ALL)"
    if hi not in (None, "None"):
        x = f"tl.minimum({x}, {hi}, propagate_nan=tl.PropagateNan.ALL)"
    return x


def _fill(value_pos: int) -> Pointwise:
    def expr(a, k, dt):
        return f"{a[value_pos]}"

    return Pointwise(expr, tensor_args=())


def _bitwise(op: str, a, dt) -> str:
    if dt == torch.bool:
        # on masks: `!= 0` makes both sides int1 blocks (the Triton interpreter's numpy `&`
        # refuses a block mask with a 0-d mask, e.g. a row mask & a scalar condition)
        return f"({a[0]} != 0) {op} ({a[1]} != 0)"
    return f"{a[0]} {op} {a[1]}"


def _div(a, k, dt) -> str:
    mode = k.get("rounding_mode")
    if mode in (None, "None"):
        return f"{a[0]} / {a[1]}"
    if mode in ("'floor'", '"floor"', "floor"):
        if dt.is_floating_point:
            return f"tl.floor({a[0]} / {a[1]})"
        return f"_floordiv({a[0]}, {a[1]})"
    if dt.is_floating_point:
        return f"_trunc({a[0]} / {a[1]})"
    return f"{a[0]} // {a[1]}"


MAX = "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"
MIN = "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"

POINTWISE: dict[object, Pointwise] = {
    aten.add.Tensor: _alpha("+"),
    aten.add.Scalar: _alpha("+"),
    aten.sub.Tensor: _alpha("-"),
    aten.sub.Scalar: _alpha("-"),
    aten.rsub.Scalar: _fmt("{1} - {0}"),
    aten.rsub.Tensor: _fmt("{1} - {0}"),
    aten.mul.Tensor: _fmt("{0} * {1}"),
    aten.mul.Scalar: _fmt("{0} * {1}"),
    aten.div.Tensor: Pointwise(_div),
    aten.div.Scalar: Pointwise(_div),
    aten.div.Tensor_mode: Pointwise(_div),
    aten.true_divide.Tensor: _fmt("{0} / {1}"),
    aten.neg.default: _fmt("-{0}"),
    aten.exp.default: _fmt("tl.exp({0})"),
    aten.exp2.default: _fmt("tl.exp2({0})"),
    aten.expm1.default: _fmt("_expm1({0})"),
    aten.log.default: _fmt("tl.log({0})"),
    aten.log2.default: _fmt("tl.log2({0})"),
    aten.log1p.default: _fmt("_log1p({0})"),
    aten.sqrt.default: _fmt("tl.sqrt({0})"),
    aten.rsqrt.default: _fmt("tl.rsqrt({0})"),
    aten.abs.default: _fmt("tl.abs({0})"),
    aten.sin.default: _fmt("tl.sin({0})"),
    aten.cos.default: _fmt("tl.cos({0})"),
    aten.tanh.default: _fmt("_tanh({0})"),
    aten.sigmoid.default: _fmt("tl.sigmoid({0})"),
    aten.erf.default: _fmt("tl.erf({0})"),
    aten.floor.default: _fmt("tl.floor({0})"),
    aten.ceil.default: _fmt("tl.ceil({0})"),
    aten.reciprocal.default: _fmt("1.0 / {0}"),
    aten.pow.Tensor_Scalar: Pointwise(_pow_scalar),
    aten.pow.Tensor_Tensor: _fmt("_pow({0}, {1})"),
    aten.relu.default: _fmt("tl.maximum({0}, 0.0, propagate_nan=tl.PropagateNan.ALL)"),
    aten.maximum.default: _fmt(MAX),
    aten.minimum.default: _fmt(MIN),
    aten.clamp_min.default: _fmt(MAX),
    aten.clamp_max.default: _fmt(MIN),
    aten.clamp.default: Pointwise(_clamp),
    aten.where.self: Pointwise(_where),
    aten.where.ScalarSelf: Pointwise(_where),
    aten.where.ScalarOther: Pointwise(_where),
    aten.where.Scalar: Pointwise(_where),
    aten.eq.Tensor: _fmt("{0} == {1}"),
    aten.eq.Scalar: _fmt("{0} == {1}"),
    aten.ne.Tensor: _fmt("{0} != {1}"),
    aten.ne.Scalar: _fmt("{0} != {1}"),
    aten.lt.Tensor: _fmt("{0} < {1}"),
    aten.lt.Scalar: _fmt("{0} < {1}"),
    aten.le.Tensor: _fmt("{0} <= {1}"),
    aten.le.Scalar: _fmt("{0} <= {1}"),
    aten.gt.Tensor: _fmt("{0} > {1}"),
    aten.gt.Scalar: _fmt("{0} > {1}"),
    aten.ge.Tensor: _fmt("{0} >= {1}"),
    aten.ge.Scalar: _fmt("{0} >= {1}"),
    aten.logical_not.default: _fmt("{0} == 0"),
    aten.logical_and.default: _fmt("({0} != 0) & ({1} != 0)"),
    aten.logical_or.default: _fmt("({0} != 0) | ({1} != 0)"),
    aten.bitwise_not.default: Pointwise(lambda a, k, dt: f"{a[0]} == 0" if dt == torch.bool else f"~{a[0]}"),
    aten.bitwise_and.Tensor: Pointwise(lambda a, k, dt: _bitwise("&", a, dt)),
    aten.bitwise_or.Tensor: Pointwise(lambda a, k, dt: _bitwise("|", a, dt)),
    aten.bitwise_xor.Tensor: Pointwise(lambda a, k, dt: _bitwise("^", a, dt)),
    aten.isnan.default: _fmt("{0} != {0}"),
    aten.isinf.default: _fmt("tl.abs({0}) == float(\"inf\")"),
    aten.sign.default: _fmt("tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0))"),
    prims.fma.default: _fmt("{0} * {1} + {2}"),
    prims.convert_element_type.default: Pointwise(_cast, tensor_args=(0,)),
    aten._to_copy.default: Pointwise(_cast, tensor_args=(0,)),
    aten.clone.default: _fmt("{0}"),
    aten.copy.default: Pointwise(lambda a, k, dt: a[1]),
    aten.lift_fresh_copy.default: _fmt("{0}"),
    aten.masked_fill.Scalar: _fmt("tl.where({1}, {2}, {0})"),
    aten.masked_fill.Tensor: _fmt("tl.where({1}, {2}, {0})"),
    aten.threshold_backward.default: _fmt("tl.where({1} <= {2}, 0.0, {0})"),
    aten.sigmoid_backward.default: _fmt("{0} * {1} * (1.0 - {1})"),
    aten.tanh_backward.default: _fmt("{0} * (1.0 - {1} * {1})"),
    aten.full.default: _fill(1),
    aten.scalar_tensor.default: _fill(0),
    aten.full_like.default: _fill(1),
    aten.fill.Scalar: _fill(1),
    aten.zeros_like.default: Pointwise(lambda a, k, dt: "0", tensor_args=()),
    aten.ones_like.default: Pointwise(lambda a, k, dt: "1", tensor_args=()),
}

# --------------------------------------------------------------------------- reductions


@dataclass(frozen=True)
class ReductionSpec:
    """A reduction node, normalised: what it computes over which dims of its input."""

    op: str  # "sum" | "mean" | "amax" | "amin" | "var_mean" | "var" | "prod" | "any"
    input: torch.fx.Node
    dims: tuple[int, ...]  # reduced dims of the input, sorted, non-negative
    keepdim: bool
    correction: float = 0.0


REDUCTIONS = {
    aten.sum.dim_IntList: "sum",
    aten.sum.default: "sum",
    aten.mean.dim: "mean",
    aten.mean.default: "mean",
    aten.amax.default: "amax",
    aten.amin.default: "amin",
    aten.var_mean.correction: "var_mean",
    aten.var.correction: "var",
    aten.prod.dim_int: "prod",
    aten.prod.default: "prod",
    aten.any.dim: "any",
    aten.any.dims: "any",
    aten.any.default: "any",
}


def reduction_spec(node: torch.fx.Node) -> ReductionSpec:
    op = REDUCTIONS[node.target]
    x = node.args[0]
    ndim = len(x.meta["val"].shape)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if op == "var_mean" or op == "var":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
    if node.target in (aten.prod.dim_int, aten.any.dim):
        dims = [dims]
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0 and op != "sum"):
        dims = list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    if isinstance(dims, (list, tuple)) and len(dims) == 0:
        dims = list(range(ndim))  # sum(x, []) sums everything
    dims = tuple(sorted({d % ndim for d in dims})) if ndim else ()
    correction = 0.0
    if op in ("var_mean", "var"):
        c = node.kwargs.get("correction")
        correction = 1.0 if c is None else float(c)
    return ReductionSpec(op=op, input=x, dims=dims, keepdim=keepdim, correction=correction)


# --------------------------------------------------------------------------- everything else

VIEWS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
    aten.expand.default, aten.unsqueeze.default, aten.squeeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.t.default, aten.transpose.int, aten.slice.Tensor, aten.select.int,
    aten.alias.default, aten.detach.default, aten.split.Tensor, aten.split_with_sizes.default,
    aten.unbind.int, aten.as_strided.default, aten.diagonal.default, aten.narrow.default,
    aten.unfold.default, aten.view_as_real.default, aten.view_as_complex.default,
    aten.chunk.default, aten.expand_as.default, aten.view_as.default,
}

MATMULS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten.convolution.default, aten.convolution_backward.default, aten.addbmm.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten.dot.default, aten.mv.default,
}
for _name in ("_scaled_dot_product_flash_attention_for_cpu_backward",
              "_scaled_dot_product_efficient_attention_backward",
              "_scaled_dot_product_flash_attention_backward"):
    if hasattr(aten, _name):
        MATMULS.add(getattr(aten, _name).default)

RANDOM_OPS = {
    aten.native_dropout.default, aten.rand.default, aten.randn.default, aten.rand_like.default,
    aten.randn_like.default, aten.bernoulli.default, aten.bernoulli.p, aten.randint.default,
    prims.inductor_random.default if hasattr(prims, "inductor_random") else None,
    prims.inductor_seeds.default if hasattr(prims, "inductor_seeds") else None,
}


def kind_of(node: torch.fx.Node) -> str:
    if node.op == "placeholder":
        return "placeholder"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return "constant"
    t = node.target
    if t is operator.getitem:
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target in VIEWS:
            return "view"
        return "getitem"
    if t in POINTWISE:
        return "pointwise"
    if t in REDUCTIONS:
        return "reduction"
    if t in VIEWS:
        return "view"
    if t in MATMULS:
        return "matmul"
    return "opaque"


UNSUPPORTED_DTYPES = {torch.float64, torch.complex64, torch.complex128, torch.float8_e4m3fn,
                      torch.float8_e5m2}

TL_DTYPE = {
    torch.float32: "tl.float32",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.float64: "tl.float64",
    torch.int64: "tl.int64",
    torch.int32: "tl.int32",
    torch.int16: "tl.int16",
    torch.int8: "tl.int8",
    torch.uint8: "tl.uint8",
    torch.bool: "tl.int1",
}

PTR_DTYPE = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}


def compute_dtype(dt: torch.dtype) -> torch.dtype:
    """The dtype a value is held in inside a kernel: narrow floats are computed in fp32."""
    return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt


def why_not_fusable(node: torch.fx.Node, kind: str) -> str | None:
    """One-line reason why this node can never be part of a fused kernel, else None."""
    name = op_name(node)
    if kind == "matmul":
        return f"matmul {name} runs as a library kernel (fusionlab fuses pointwise and reduction ops)"
    if kind == "view":
        return f"view {name}: no kernel, it only re-labels memory"
    if kind == "getitem":
        return None
    if kind in ("placeholder", "output", "constant"):
        return f"graph {kind}"
    if kind == "opaque":
        if node.target in RANDOM_OPS:
            return f"random op {name}: left to eager so its random numbers come from torch's generator"
        return f"opaque op {name}"
    val = node.meta.get("val")
    vals = val if isinstance(val, (list, tuple)) else [val]
    for v in vals:
        if not isinstance(v, torch.Tensor):
            return f"{name} has a non-tensor result"
        if v.dtype in UNSUPPORTED_DTYPES or v.dtype not in TL_DTYPE:
            return f"dtype {str(v.dtype).replace('torch.', '')} is not supported by fusionlab kernels"
        try:
            [int(s) for s in v.shape]
        except TypeError:
            return "symbolic (dynamic) shape: fusionlab kernels need static shapes"
        if v.numel() == 0:
            return "zero-size tensor: nothing to compute"
    for a in node.all_input_nodes:
        av = a.meta.get("val")
        if isinstance(av, torch.Tensor) and (av.dtype in UNSUPPORTED_DTYPES or av.dtype not in TL_DTYPE):
            return f"input {a.name} has dtype {str(av.dtype).replace('torch.', '')}, not supported by fusionlab kernels"
        if isinstance(av, torch.Tensor) and av.device != vals[0].device:
            return f"input {a.name} is on {av.device}, the result on {vals[0].device}"
    if kind == "reduction":
        spec = reduction_spec(node)
        if spec.op == "prod":
            return "prod reduction is not generated by fusionlab yet"
        if not spec.dims:
            return "reduction of a 0-d tensor: nothing to reduce"
    return None


def literal(value) -> str:
    """A Python number as a Triton literal."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        return repr(value)
    if isinstance(value, torch.dtype):
        return TL_DTYPE.get(value, str(value))
    if value is None:
        return "None"
    return repr(value)
