"""The small @triton.jit helpers a generated kernel may call, and which ones it calls.

Each helper does what one torch op does where Triton's own op differs (NaN propagation,
bf16 rounding, tanh/expm1/log1p near 0); a kernel module carries only the helpers it uses.
"""

from __future__ import annotations

HELPERS = '''
@triton.jit
def _max_nan(a, b):
    # maximum that propagates NaN, like torch.amax / torch.maximum
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _min_nan(a, b):
    # minimum that propagates NaN, like torch.amin / torch.minimum
    return tl.where((a < b) | (a != a), a, b)


@triton.jit
def _row_max(x):
    # max of each row (axis 1) that propagates NaN, like torch.amax
    m = tl.max(x, 1, keep_dims=True)
    has_nan = tl.max((x != x).to(tl.int32), 1, keep_dims=True) > 0
    return tl.where(has_nan, float("nan"), m)


@triton.jit
def _row_min(x):
    # min of each row (axis 1) that propagates NaN, like torch.amin
    m = tl.min(x, 1, keep_dims=True)
    has_nan = tl.max((x != x).to(tl.int32), 1, keep_dims=True) > 0
    return tl.where(has_nan, float("nan"), m)


@triton.jit
def _round_bf16(x):
    # fp32 -> the nearest bf16 value (ties to even), still held in fp32: torch rounds this
    # way, while a plain .to(tl.bfloat16) in the Triton interpreter truncates
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


@triton.jit
def _tanh(x):
    # 2 sigmoid(2x) - 1 cancels near 0: use the odd series there (error < 3e-8 relative)
    x2 = x * x
    series = x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    return tl.where(tl.abs(x) < 0.125, series, 2.0 * tl.sigmoid(2.0 * x) - 1.0)


@triton.jit
def _pow(x, y):
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    y_int = tl.floor(y) == y
    y_odd = y_int & (tl.floor(y * 0.5) * 2.0 != y)
    r = tl.where((x < 0) & y_odd, -r, r)
    r = tl.where((x < 0) & (~y_int), float("nan"), r)
    return tl.where(y == 0, 1.0, r)


@triton.jit
def _expm1(x):
    # exp(x) - 1 cancels near 0: Taylor series there
    s = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (1.0 / 720.0))))))
    return tl.where(tl.abs(x) < 0.125, s, tl.exp(x) - 1.0)


@triton.jit
def _log1p(x):
    # log(1 + x) loses x's low bits near 0: Taylor series there
    s = x * (1.0 - x * (0.5 - x * (1.0 / 3.0 - x * (0.25 - x * (0.2 - x * (1.0 / 6.0 - x * (1.0 / 7.0)))))))
    return tl.where(tl.abs(x) < 0.125, s, tl.log(1.0 + x))


@triton.jit
def _trunc(x):
    return tl.where(x < 0, tl.ceil(x), tl.floor(x))


@triton.jit
def _floordiv(a, b):
    q = a // b
    return tl.where((a % b != 0) & ((a < 0) != (b < 0)), q - 1, q)
'''

HELPER_NAMES = ("_max_nan", "_min_nan", "_row_max", "_row_min", "_round_bf16", "_tanh", "_pow", "_expm1", "_log1p", "_trunc", "_floordiv")


def helpers_used(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    return [h for h in HELPER_NAMES if h + "(" in text or h + ", " in text or h + ")" in text]


def helper_source(names: list[str]) -> str:
    blocks = HELPERS.strip().split("\n\n\n")
    keep = [b for b in blocks if any(f"def {n}(" in b for n in names)]
    return "\n\n\n".join(keep)
