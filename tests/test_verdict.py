"""Verdicts on measured step times: called only beyond the noise, and the same on a rerun."""

from __future__ import annotations

import random
import time

import pytest

from fusionlab.verdict import FASTER, SLOWER, UNDECIDED, compare


def noisy(n: int, median: float, rng: random.Random, spread: float = 0.5, outliers: float = 0.15):
    """Step times as a busy laptop gives them: jitter, and now and then a step 3-15x slower."""
    out = []
    for _ in range(n):
        t = median * (1 + spread * (rng.random() - 0.5))
        if rng.random() < outliers:
            t *= rng.uniform(3, 15)
        out.append(t)
    return out


def test_same_distribution_is_no_measurable_difference():
    """The explorer notebook's case: 3 noisy steps each (a 0.29x 'slowdown' by medians)."""
    for seed in range(20):
        rng = random.Random(seed)
        base, var = noisy(3, 10e-3, rng), noisy(3, 10e-3, rng)
        v = compare(base, var, names=("fusionlab", "eager"))
        assert v.call == UNDECIDED, (seed, str(v))
        assert "no difference from eager measurable in 3 steps" in str(v)
        assert v.short == "no measurable difference"


def test_same_distribution_many_steps_stays_undecided():
    undecided = 0
    for seed in range(20):
        rng = random.Random(100 + seed)
        undecided += compare(noisy(60, 5e-3, rng), noisy(60, 5e-3, rng)).call == UNDECIDED
    assert undecided >= 19  # a 95% interval beyond +-3%: at most a rare false call


@pytest.mark.parametrize("factor,call", [(2.0, FASTER), (0.5, SLOWER)])
def test_a_real_2x_difference_is_called_every_time(factor, call):
    for seed in range(10):
        rng = random.Random(seed)
        base, var = noisy(30, 10e-3, rng, outliers=0.08), noisy(30, 10e-3 / factor, rng, outliers=0.08)
        v = compare(base, var, names=("fusionlab", "eager"))
        assert v.call == call, (seed, str(v))
        assert v.low <= v.ratio <= v.high
        assert abs(v.ratio - factor) / factor < 0.3


def test_too_few_steps_never_decide():
    """Three steps each, 10x apart, no noise at all: still no verdict (MIN_STEPS)."""
    v = compare([10e-3, 10.1e-3, 10.2e-3], [1e-3, 1.01e-3, 1.02e-3])
    assert v.call == UNDECIDED and v.ratio == pytest.approx(10, rel=0.01)


def test_small_real_difference_under_min_effect_is_not_called():
    """1 % faster, measured very precisely: real, but under the 3 % a verdict needs."""
    base = [1.00e-3 + 1e-7 * (i % 7) for i in range(200)]
    var = [x / 1.01 for x in base]
    v = compare(base, var)
    assert v.low > 1.0 and v.call == UNDECIDED


def test_deterministic_for_the_same_samples():
    rng = random.Random(7)
    base, var = noisy(15, 1e-3, rng), noisy(15, 0.8e-3, rng)
    assert compare(base, var) == compare(base, var)


def test_missing_or_failed_samples_give_no_verdict():
    assert compare([], [1.0]).call == UNDECIDED
    assert compare([1.0, 2.0], [float("nan"), 1.0]).short == "n/a"


def test_real_sleeps_random_time_no_verdict():
    """A step that sleeps a random time, for both variants alike, interleaved as the profiler
    does (the order alternating each round): no verdict at the profiler's 99 %. (Behaviour,
    not a speed assertion: both sides sleep the same way.)"""
    rng = random.Random(3)

    def step():
        t0 = time.perf_counter()
        time.sleep(rng.choice([0.001, 0.001, 0.002, 0.008]))
        return time.perf_counter() - t0

    base, var = [], []
    for i in range(16):
        first, second = (base, var) if i % 2 == 0 else (var, base)
        first.append(step())
        second.append(step())
    v = compare(base, var, confidence=0.99)
    assert v.call == UNDECIDED, str(v)
