"""The fuzzer's oracle: float64 runs of a program's ATen graphs, and when a fused value
counts as equal to eager.

Equal means what it means for every check in fusionlab: within the tolerance table of
:mod:`fusionlab.check` (:func:`~fusionlab.check.outside_tolerance`, NaN/inf where eager
has them, any blow-up for any other). The fuzzer re-runs kernels on a real program's
values, where special values and cancellation make some results ill-conditioned, so it
has one more criterion, per element: a value beyond the tolerance is still accepted when
it is no more than 4x further from the ideal result (a float64 run of the same graphs,
rounding only where the graph casts) than eager is, or than three float64 runs with every
op's result perturbed by 4 half-ulps of the dtype are. Cancellation, a layer_norm of a
constant row, an fp16 intermediate that overflows in eager but not in fp32 registers
pass; a wrong index, op or NaN rule (far beyond any rounding) does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from ..check import TOLERANCES, outside_tolerance, tolerance  # noqa: F401 - the fuzzer's table is the one
from .model import make_inputs, view_of
from .programs import Program

# 4 half-ulps of each dtype: a fused reduction rounds a few times where one op of eager rounds once
EPS = {torch.float32: 2.0**-22, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}
# the ops a graph casts with: float64 runs round exactly there
CASTS = (torch.ops.prims.convert_element_type.default, torch.ops.aten._to_copy.default)


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
            if target in CASTS:
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


@dataclass
class Traced:
    """The program's forward and backward ATen graphs (AOTAutograd, Inductor decompositions)."""

    fw: object  # CapturedGraph
    bw: object | None
    fw_args: list
    bw_args: list | None
    loss: torch.Tensor


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


def mismatch(got: torch.Tensor, eager: torch.Tensor, refs: list | None = None,
             dtype: torch.dtype | None = None) -> str | None:
    """None when `got` (fused) equals `eager`, else where and how it does not.

    Equal: :func:`fusionlab.check.outside_tolerance` with `dtype`'s tolerance (default:
    eager's dtype; pass the narrowest dtype the values went through) and NaN/inf rules for
    inputs that held them; or, with `refs` ([ideal float64 result, perturbed float64
    results...], see :func:`run_float64`), no more than 4x further from the ideal result
    than eager or a perturbed run is (the value is ill-conditioned), per element.
    """
    if got.shape != eager.shape:
        return f"shape {tuple(got.shape)} != eager {tuple(eager.shape)}"
    if got.dtype != eager.dtype:
        return f"dtype {got.dtype} != eager {eager.dtype}"
    if got.numel() == 0:
        return None
    bad = outside_tolerance(got, eager, dtype, blowups=True)
    if not bad.any():
        return None
    if not eager.dtype.is_floating_point:
        return "integer/bool values differ"
    rtol, atol = tolerance(dtype or eager.dtype)
    e = eager.double()
    fin = e[torch.isfinite(e)]
    scale = float(fin.abs().max()) if fin.numel() else 0.0
    tol = torch.clamp(atol + rtol * e.abs(), min=rtol * scale).nan_to_num(atol, atol, atol)
    explained = torch.zeros_like(bad)
    if refs:
        ideal = refs[0].reshape(got.shape)
        spread = _dist(eager, ideal)
        for r in refs[1:]:
            spread = torch.maximum(spread, _dist(r.reshape(got.shape), ideal))
        explained = _dist(got, ideal) <= 4 * spread + tol
    unexplained = bad & ~explained
    if not unexplained.any():
        return None
    i = tuple(unexplained.nonzero()[0].tolist())
    return (
        f"at {list(i)}: fused {float(got[i])!r}, eager {float(eager[i])!r}"
        + (f", float64 {float(refs[0].reshape(got.shape)[i])!r}" if refs else "")
        + f" (tolerance {float(tol[i]):.3g}; {int(bad.sum())} of {bad.numel()} elements beyond it)"
    )
