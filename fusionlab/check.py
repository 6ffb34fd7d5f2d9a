"""What "equal to eager" means, in one place: the tolerance table and the comparison routines.

Every check against eager PyTorch uses these: generated kernels (``Kernel.check``), the CPU
executors' compiled groups (``executors``), the profiler's numerics check and the fuzzer
(``fusionlab.testing``). Tolerances, per element ``|fused - eager| <= atol + rtol * |eager|``
(or ``<= rtol * max|eager|`` where cancellation left an element tiny):

    float32   rtol 2e-5, atol 2e-5   reassociated sums differ in the last bits
    float16   rtol 5e-3, atol 5e-3   fused kernels keep fp32 between ops; eager rounds
                                     to fp16 after each op (~5 fp16 ulps)
    bfloat16  rtol 4e-2, atol 4e-2   same, ~5 bf16 ulps (bf16 keeps 8 mantissa bits)
    int/bool  exact

A long reduction that misses these only because it sums in another order passes when it is
no further from a float64 run of the same ops than eager is (:func:`no_less_accurate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


@dataclass
class CheckResult:
    """Outcome of checking one kernel against the eager ops it replaces."""

    kernel: str
    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_output: str = ""
    dtype: str = ""
    shapes: tuple = ()
    error: str | None = None
    seconds: float = 0.0
    executor: str = ""

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        if self.error:
            return f"{self.kernel}: FAILED ({self.error}); inputs [{shapes}]"
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"{self.kernel}: {verdict}, max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g}"
            f"{' in ' + self.worst_output if self.worst_output else ''} ({self.dtype}; inputs [{shapes}]; "
            f"{self.executor})"
        )


def real_tensors():
    """Run on real tensors even when called from inside torch.compile (fake tensor mode)."""
    import contextlib

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    stack = contextlib.ExitStack()
    stack.enter_context(unset_fake_temporarily())
    stack.enter_context(torch.no_grad())
    return stack


def random_tensor(shape, stride, dtype, device, gen) -> torch.Tensor:
    """A tensor with exactly `shape` and `stride` (expanded/permuted included), random values."""
    shape, stride = tuple(shape), tuple(stride)
    extent = 1 + sum((s - 1) * st for s, st in zip(shape, stride) if s > 0)
    if dtype == torch.bool:
        base = torch.rand(extent, generator=gen) > 0.5
    elif dtype.is_floating_point:
        base = torch.randn(extent, generator=gen).to(dtype)
    else:
        base = torch.randint(0, 8, (extent,), generator=gen).to(dtype)
    return base.to(device).as_strided(shape, stride)


def float64_reference(subgraph, inputs):
    """The subgraph run on float64 copies of the floating inputs (None when it cannot run)."""
    try:
        up = [x.double() if x.is_floating_point() else x for x in inputs]
        return [o.double() if isinstance(o, torch.Tensor) else o for o in subgraph(*up)]
    except Exception:  # noqa: BLE001 - an op without float64 support: no oracle
        return None


def no_less_accurate(got: torch.Tensor, expected: torch.Tensor, oracle: torch.Tensor) -> bool:
    """Long reductions: the kernel is at least as close to a float64 run as eager is.

    A sum over 16k elements in a different order differs from eager by more than an
    element-wise tolerance allows, while both are equally far from the exact result.
    """
    if not expected.dtype.is_floating_point or got.shape != expected.shape:
        return False
    g, e, o = got.double(), expected.double(), oracle.double()
    inf_e = torch.isinf(e)
    if (
        not torch.equal(torch.isnan(g), torch.isnan(e))
        or not torch.equal(g[inf_e], e[inf_e])
        or torch.isinf(g[~inf_e]).any()
    ):
        return False
    fin = torch.isfinite(e) & torch.isfinite(o)
    if not fin.any():
        return True
    eager_err = float((e[fin] - o[fin]).abs().max())
    fused_err = float((g[fin] - o[fin]).abs().max())
    tiny = torch.finfo(expected.dtype).tiny
    return fused_err <= 2 * eager_err + tiny


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for values of `dtype` (float32's for a float dtype not in the table)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def outside_tolerance(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                      *, blowups: bool = False) -> torch.Tensor:
    """Per element of `expected` (same shapes), True where `got` is not equal to it.

    Floating values: NaN and +-inf where eager has them, and finite ones within
    ``atol + rtol * |eager|``, or within ``rtol * max|eager|`` where cancellation left an
    element tiny. `dtype`: the tolerance class (default: `expected`'s dtype; a group that
    computes in bf16 and returns fp32 is held to bf16's). ``blowups=True`` (inputs held
    NaN/inf): NaN matches +-inf (eager's var_mean turns a row with an inf into NaN where a
    two-pass mean gives inf), an inf must have eager's sign; finite ones must match. Integers and
    bools: exact.
    """
    if not expected.dtype.is_floating_point:
        return got.to(expected.dtype) != expected
    rtol, atol = tolerance(dtype or expected.dtype)
    g, e = got.double(), expected.double()
    fin_g, fin_e = torch.isfinite(g), torch.isfinite(e)
    if blowups:
        bad = (fin_g != fin_e) | (torch.isinf(g) & torch.isinf(e) & (g != e))
    else:
        nan_g, nan_e = torch.isnan(g), torch.isnan(e)
        bad = (nan_g != nan_e) | ((torch.isinf(e) | torch.isinf(g)) & (g != e) & ~nan_e)
    both = fin_g & fin_e
    if both.any():
        scale = float(e[fin_e].abs().max())
        diff = (g - e).abs()
        far = (diff > atol + rtol * e.abs()) & (diff > rtol * scale)
        bad |= both & far
    return bad


def compare(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
            *, blowups: bool = False) -> tuple[bool, float, float]:
    """(within tolerance, max abs error, max relative error) for one output
    (:func:`outside_tolerance` says which elements miss). The errors are over the finite
    elements; NaN when the NaN/blow-up pattern differs, inf when an inf differs."""
    if got.shape != expected.shape:
        return False, float("inf"), float("inf")
    bad = outside_tolerance(got, expected, dtype, blowups=blowups)
    if not expected.dtype.is_floating_point:
        err = float("inf") if bad.any() else 0.0
        return not bool(bad.any()), err, err
    g, e = got.double(), expected.double()
    fin_g, fin_e = torch.isfinite(g), torch.isfinite(e)
    if blowups:
        if not torch.equal(fin_g, fin_e):
            return False, float("nan"), float("nan")
        if bool(bad[~fin_e].any()):
            return False, float("inf"), float("inf")
    elif not torch.equal(torch.isnan(g), torch.isnan(e)):
        return False, float("nan"), float("nan")
    elif not torch.equal(fin_g, fin_e) or bool(bad[~fin_e].any()):
        return False, float("inf"), float("inf")
    if not fin_e.any():
        return True, 0.0, 0.0
    diff = (g[fin_e] - e[fin_e]).abs()
    max_rel = float((diff / e[fin_e].abs().clamp_min(1e-30)).max())
    return not bool(bad.any()), float(diff.max()), max_rel


def compare_blowups(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None):
    """:func:`compare` for outputs of inputs holding NaN/inf (``blowups=True``)."""
    if not (isinstance(got, torch.Tensor) and got.is_floating_point()):
        return compare(got, expected, dtype)
    return compare(got, expected, dtype, blowups=True)


def check_outputs(res: CheckResult, got, expected, names, oracle=None, *, blowups: bool = False) -> bool:
    """Compare one run's outputs with eager's and fold them into `res`; True when all match.

    `got`, `expected`: sequences of outputs (a different count raises RuntimeError);
    `names`: one per output, for ``res.worst_output``. An output outside tolerance still
    passes when it is no further from a float64 run of the same ops than eager is
    (:func:`no_less_accurate`, on the elements that stay finite with ``blowups``).
    `oracle`: a function returning the float64 outputs (or None), called at most once and
    only when some output needs it. ``blowups=True``: the inputs held NaN/inf
    (:func:`compare_blowups`), and ``worst_output`` says so.
    """
    got, expected = list(got), list(expected)
    if len(got) != len(expected):
        raise RuntimeError(f"{len(got)} outputs, eager gives {len(expected)}")
    ok, reference = True, []
    for i, (name, g, e) in enumerate(zip(names, got, expected)):
        good, abs_err, rel_err = (compare_blowups if blowups else compare)(g, e)
        # a NaN/inf where eager has none (or the reverse) is never excused by the float64 run
        if not good and math.isfinite(abs_err) and isinstance(e, torch.Tensor) and e.is_floating_point() and oracle:
            if not reference:
                reference.append(oracle())
            o = reference[0][i] if reference[0] is not None else None
            if blowups and o is not None and g.shape == e.shape:
                fin = torch.isfinite(e)
                g, e, o = g[fin], e[fin], o[fin]
            good = o is not None and no_less_accurate(g, e, o)
        if abs_err > res.max_abs or not good:
            res.worst_output = name
            if blowups:
                res.worst_output += (" (inputs with NaN/inf: non-finite where eager is finite, or the reverse)"
                                     if abs_err != abs_err else " (inputs with NaN/inf)")
        res.max_abs = max(res.max_abs, abs_err)
        res.max_rel = max(res.max_rel, rel_err)
        ok &= good
    return ok


def special_tensor(shape, stride, dtype, device, gen) -> torch.Tensor:
    """`random_tensor` with NaN, +inf and -inf written into its storage (floating dtypes)."""
    x = random_tensor(shape, stride, dtype, device, gen)
    if not dtype.is_floating_point or x.numel() == 0:
        return x
    flat = x.as_strided((x.untyped_storage().nbytes() // x.element_size(),), (1,), 0)
    n = flat.numel()
    for value, at in ((float("inf"), 0), (float("nan"), n // 2), (float("-inf"), n - 1)):
        flat[at] = value
    return x
