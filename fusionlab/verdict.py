"""Is one measured variant faster than another, or is the difference noise?

A ratio of two medians is a number, not a verdict: on a busy 2-core laptop a handful of
slow steps can move a median by 3x. :func:`compare` bootstraps the ratio of medians
(base / variant, > 1 is faster) over the measured steps and gives a verdict only where
the whole confidence interval lies beyond ``min_effect`` from 1:

* ``"faster"``: the interval lies above ``1 + min_effect``;
* ``"slower"``: the interval lies below ``1 / (1 + min_effect)``;
* ``"no measurable difference"`` otherwise, and always with fewer than ``MIN_STEPS`` steps
  (a bootstrap of three samples gives tight, meaningless intervals): the ratio is shown with its interval, and the
  text says how many steps could not tell the two apart.

Steps of the profiler are interleaved (eager, fusionlab, inductor, eager, ...), so the
i-th step of each variant ran under the same machine conditions; the bootstrap resamples
those rounds as pairs where both variants have the same number of steps (a slow moment of
the machine then moves both), and each variant's steps on their own otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FASTER, SLOWER, UNDECIDED = "faster", "slower", "no measurable difference"
MIN_EFFECT = 0.03  # a difference under 3 % is not called, however many steps measured it
CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_STEPS = 8  # fewer steps per variant never give a verdict


@dataclass(frozen=True)
class Verdict:
    """How ``variant`` compares with ``base``: the ratio of medians, its interval, the call."""

    variant: str
    base: str
    ratio: float  # base median / variant median: > 1 means the variant is faster
    low: float  # the confidence interval of the ratio
    high: float
    steps: int  # steps measured per variant (the fewer of the two)
    call: str  # FASTER | SLOWER | UNDECIDED
    confidence: float = CONFIDENCE
    min_effect: float = MIN_EFFECT

    @property
    def decided(self) -> bool:
        return self.call != UNDECIDED

    def __str__(self) -> str:
        interval = f"{self.ratio:.2f}x ({self.confidence:.0%} interval {self.low:.2f}-{self.high:.2f}x)"
        if self.call == FASTER:
            return f"{self.variant}: {interval} faster than {self.base}"
        if self.call == SLOWER:
            return f"{self.variant}: {1 / self.ratio:.2f}x slower than {self.base} ({interval})"
        if not math.isfinite(self.ratio):
            return f"{self.variant}: no comparison with {self.base} (a variant has no measured steps)"
        return (f"{self.variant}: no difference from {self.base} measurable in {self.steps} steps "
                f"({interval}; a verdict needs the interval beyond ±{self.min_effect:.0%})")

    @property
    def short(self) -> str:
        """A table cell: ``1.23x faster``, ``1.50x slower`` or ``no measurable difference``."""
        if self.call == FASTER:
            return f"{self.ratio:.2f}x faster"
        if self.call == SLOWER:
            return f"{1 / self.ratio:.2f}x slower"
        return UNDECIDED if math.isfinite(self.ratio) else "n/a"


def compare(base: list[float], variant: list[float], *, names: tuple[str, str] = ("variant", "base"),
            confidence: float = CONFIDENCE, min_effect: float = MIN_EFFECT,
            resamples: int = RESAMPLES, seed: int = 0) -> Verdict:
    """The verdict on ``variant``'s step times against ``base``'s (seconds, any unit alike).

    Deterministic for a given ``seed``: the same samples give the same verdict.
    """
    name, base_name = names
    b, v = np.asarray(base, dtype=float), np.asarray(variant, dtype=float)
    n = int(min(len(b), len(v)))
    if n == 0 or not (np.all(np.isfinite(b)) and np.all(np.isfinite(v))) or (v <= 0).any():
        return Verdict(name, base_name, float("nan"), float("nan"), float("nan"), n, UNDECIDED,
                       confidence, min_effect)
    ratio = float(np.median(b) / np.median(v))
    rng = np.random.default_rng(seed)
    if len(b) == len(v):  # interleaved rounds: resample rounds, keeping each round's pair
        idx = rng.integers(0, n, size=(resamples, n))
        boot = np.median(b[idx], axis=1) / np.median(v[idx], axis=1)
    else:
        bi = rng.integers(0, len(b), size=(resamples, len(b)))
        vi = rng.integers(0, len(v), size=(resamples, len(v)))
        boot = np.median(b[bi], axis=1) / np.median(v[vi], axis=1)
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(boot, [tail, 1 - tail]))
    if n < MIN_STEPS:
        call = UNDECIDED
    elif low > 1 + min_effect:
        call = FASTER
    elif high < 1 / (1 + min_effect):
        call = SLOWER
    else:
        call = UNDECIDED
    return Verdict(name, base_name, ratio, low, high, n, call, confidence, min_effect)
