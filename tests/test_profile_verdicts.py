"""Verdicts in profiles: no call decided by noise, a real 2x difference called, measuring that
stops when decided or out of budget, a short default table, and no kineto log lines.

Every variant here runs eager's step (``measure._give_step`` is replaced: nothing compiles),
and ``Variant.step`` sleeps on top of it: these tests are about measuring and verdicts, not
the compiler, and sleeps make the differences (or their absence) the test's own. No
assertion reads a wall-clock threshold; the sleeps set what is true, the verdicts must find it.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from fusionlab.profiler import measure, profile
from fusionlab.profiler.harness import Variant
from fusionlab.verdict import FASTER, SLOWER, UNDECIDED


@pytest.fixture
def sleepy(monkeypatch, request):
    """``sleepy({"eager": fn, "fusionlab": fn})``: each variant's step runs eager's step, then sleeps fn() s."""

    def give_eager_step(v, step, plan, executor, executor_name, cuda):
        v.fn, v.result.executor = step, "eager's step + a sleep (test)"

    def install(sleeps: dict):
        monkeypatch.setattr(measure, "_give_step", give_eager_step)
        # one thread: on a shared 2-core machine two OpenMP threads stall each other for
        # hundreds of ms, noise the sleeps are meant to set, not the scheduler
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
        real_step = Variant.step

        def step(self, mark: bool = False):
            loss = real_step(self, mark)
            time.sleep(sleeps[self.name]())
            return loss

        monkeypatch.setattr(Variant, "step", step)

    return install


@pytest.fixture(scope="module")
def mlp(zoo_model, zoo_plan):
    return zoo_model("mlp"), zoo_plan("mlp")


def _profile(mlp, **kw):
    zm, plan = mlp
    kw.setdefault("compare", "eager,fusionlab")
    return profile(zm.model, zm.inputs, plan=plan, loss_fn=zm.loss_fn, warmup=1, optimizer="sgd", **kw)


def test_a_random_sleep_on_both_sides_is_no_measurable_difference(mlp, sleepy):
    """The explorer notebook's case: the same step, a noisy machine. Whatever the medians
    say, the verdict is 'no difference measurable in N steps', and no ratio is shown as one."""
    rngs = {"eager": random.Random(1), "fusionlab": random.Random(2)}

    def noisy(name):
        def sleep():
            rng = rngs[name]
            t = rng.uniform(0.002, 0.030)
            return t * 5 if rng.random() < 0.15 else t  # now and then a step 5x slower
        return sleep

    sleepy({n: noisy(n) for n in rngs})
    res = _profile(mlp, steps=3, budget_s=60, max_steps=30)
    vd = res.verdict("fusionlab")
    assert vd.call == UNDECIDED, str(vd)
    assert res.stopped == "cap" and res.measured_steps == 30
    assert all(len(v.samples) == 30 for v in res.variants)
    assert "no difference from eager measurable in 30 steps" in str(vd)
    row = next(ln for ln in res.text().splitlines() if ln.split()[:2][0] == "fusionlab" and "profile" not in ln)
    assert "no difference measurable in 30 steps" in row and "x faster" not in row and "x slower" not in row
    assert res.table().loc["fusionlab", "vs eager"] == "no difference measurable in 30 steps"
    assert any("30 steps per variant (3 requested); stopped because the cap of 30 steps" in n
               for n in res.text().splitlines())


@pytest.mark.parametrize("eager_s,fusionlab_s,call", [(0.04, 0.08, SLOWER), (0.08, 0.04, FASTER)])
def test_a_real_2x_difference_gets_its_verdict(mlp, sleepy, eager_s, fusionlab_s, call):
    sleepy({"eager": lambda: eager_s, "fusionlab": lambda: fusionlab_s})
    res = _profile(mlp, steps=3, budget_s=60)
    vd = res.verdict("fusionlab")
    assert vd.call == call, str(vd)
    assert res.stopped == "decided"
    assert 1.4 < max(vd.ratio, 1 / vd.ratio) < 2.6
    cell = res.table().loc["fusionlab", "vs eager"]
    assert cell == vd.short and cell.endswith("slower" if call == SLOWER else "faster")
    assert "every comparison with eager was decided" in res.measuring
    assert res.table(detail=True).loc["eager", "vs eager"] == "baseline"


def test_the_budget_stops_measuring(mlp, sleepy):
    sleepy({"eager": lambda: 0.01, "fusionlab": lambda: 0.01})
    res = _profile(mlp, steps=4, budget_s=0)
    assert res.stopped == "budget" and res.budget_s == 0
    assert all(len(v.samples) == 4 for v in res.variants)  # the requested steps, no more
    assert res.verdict("fusionlab").call == UNDECIDED  # 4 steps never decide (verdict.MIN_STEPS)
    assert "stopped because the 0 s measuring budget ran out" in res.text()


def test_default_table_is_short_and_detail_has_the_rest(mlp, sleepy):
    sleepy({"eager": lambda: 0.0, "fusionlab": lambda: 0.0})
    res = _profile(mlp, steps=2, budget_s=0)
    df = res.table()
    assert list(df.columns) == ["median ms", "IQR ms", "vs eager", "kernels/step", "modeled H100 SXM MiB moved",
                                "update share"]  # the optimizer update's share of the step (measured)
    assert df.attrs["modeled"] == "modeled (H100 SXM spec)" and df.attrs["measured"].startswith("measured on cpu")
    full = res.table(detail=True)
    assert set(df.columns) < set(full.columns)
    for col in ("executor", "device", "steps", "min ms", "max ms", "speed-up vs eager (ratio of medians)",
                "99% interval low", "99% interval high", "peak memory MiB", "modeled H100 SXM ms"):
        assert col in full.columns, col
    html = res._repr_html_()
    assert html.count("<table") == 2 and "<details><summary>all columns" in html
    assert "no difference from eager measurable in 2 steps" in html
    text = res.text()
    assert "executor" not in text.splitlines()[2] and "executor" in res.text(detail=True).splitlines()[2]
    assert res.ratio("fusionlab") == res.ratio("fusionlab")  # the bare ratio stays, for scripts


def test_no_kineto_log_line_reaches_the_notebook(mlp, sleepy, capfd):
    """torch.profiler's C++ half prints 'USDT: ... profiler_start' to fd 2; the profile keeps it there."""
    sleepy({"eager": lambda: 0.0, "fusionlab": lambda: 0.0})
    capfd.readouterr()
    res = _profile(mlp, steps=1, budget_s=0, trace=True)
    out, err = capfd.readouterr()
    assert res["eager"].top_kernels  # the profiled step ran
    for marker in ("USDT:", "profiler_start", "profiler_stop", "Completed Stage"):
        assert marker not in out and marker not in err, (marker, err[-500:])


def test_other_stderr_lines_pass_through_the_filter(capfd):
    import os

    from fusionlab.profiler.events import quiet_kineto

    with quiet_kineto():
        os.write(2, b"USDT:2026-12-01 12:22:25 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "a real warning" in err and "profiler_start" not in err
