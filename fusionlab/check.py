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


def compare(got: torch.Tensor, expected: torch.Tensor) -> tuple[bool, float, float]:
    """(within tolerance, max abs error, max relative error) for one output."""
    if got.shape != expected.shape:
        return False, float("inf"), float("inf")
    if not expected.dtype.is_floating_point:
        same = torch.equal(got.to(expected.dtype), expected)
        return same, 0.0 if same else float("inf"), 0.0 if same else float("inf")
    rtol, atol = TOLERANCES.get(expected.dtype, (2e-5, 2e-5))
    g, e = got.double(), expected.double()
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    if not torch.equal(nan_g, nan_e):
        return False, float("nan"), float("nan")
    inf_e = torch.isinf(e)
    if not torch.equal(g[inf_e], e[inf_e]) or torch.isinf(g[~inf_e]).any():
        return False, float("inf"), float("inf")
    finite = ~(nan_e | inf_e)
    if not finite.any():
        return True, 0.0, 0.0
    diff = (g[finite] - e[finite]).abs()
    max_abs = float(diff.max())
    max_rel = float((diff / e[finite].abs().clamp_min(1e-30)).max())
    scale = float(e[finite].abs().max())
    # element-wise, or against the tensor's scale where cancellation made an element tiny
    ok = bool(((diff <= atol + rtol * e[finite].abs()) | (diff <= rtol * scale)).all())
    return ok, max_abs, max_rel


def compare_blowups(got: torch.Tensor, expected: torch.Tensor):
    """`compare` for inputs holding NaN/inf: the same elements must blow up (NaN and +-inf
    count alike: eager's var_mean turns a row with an inf into NaN where a two-pass mean
    gives inf), and the finite ones must match."""
    if not (isinstance(got, torch.Tensor) and got.is_floating_point()) or got.shape != expected.shape:
        return compare(got, expected)
    finite = torch.isfinite(expected)
    if not torch.equal(torch.isfinite(got), finite):
        return False, float("nan"), float("nan")
    return compare(got[finite], expected[finite])


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
