"""fusionlab.check: one tolerance table and one comparison routine for every check against eager."""

from __future__ import annotations

import pytest
import torch

import fusionlab  # noqa: F401, I001  (before anything imports triton)
from fusionlab import check
from fusionlab.check import CheckResult, check_outputs, compare, compare_blowups


def test_every_check_against_eager_uses_the_one_tolerance_table():
    """Kernels, the Inductor executors, the profiler's numerics check and the fuzzer's oracle
    hold fused values to the same table."""
    import fusionlab.executors.groups
    import fusionlab.kernels.kernel
    import fusionlab.numerics
    import fusionlab.testing
    import fusionlab.testing.oracle

    for caller in (fusionlab.kernels.kernel, fusionlab.executors.groups, fusionlab.numerics,
                   fusionlab.testing.oracle, fusionlab.testing):
        assert caller.TOLERANCES is check.TOLERANCES, caller.__name__


def _run(got, expected, oracle=None, *, blowups=False):
    res = CheckResult(kernel="k", ok=False)
    res.ok = check_outputs(res, got, expected, [f"out{i}" for i in range(len(expected))], oracle,
                           blowups=blowups)
    return res


def test_fp16_just_outside_the_tolerance_fails_just_inside_passes():
    rtol, atol = check.TOLERANCES[torch.float16]
    e = torch.tensor([2.0, -0.5], dtype=torch.float16)  # at 2.0: atol + rtol * 2 = 0.015
    ulp = 2.0**-9  # fp16 spacing in [2, 4)
    inside = e + torch.tensor([7 * ulp, 0], dtype=torch.float16)  # 0.0137 off
    outside = e + torch.tensor([8 * ulp, 0], dtype=torch.float16)  # 0.0156 off
    assert 7 * ulp < atol + rtol * 2 < 8 * ulp
    assert compare(inside, e)[0] and _run([inside], [e]).ok
    res = _run([outside], [e])
    assert not compare(outside, e)[0] and not res.ok
    assert res.worst_output == "out0" and res.max_abs == pytest.approx(8 * ulp)


def test_a_nan_in_another_place_fails():
    e = torch.tensor([float("nan"), 1.0, 2.0])
    g = torch.tensor([1.0, float("nan"), 2.0])
    ok, abs_err, _ = compare(g, e)
    assert not ok and abs_err != abs_err
    assert compare(e.clone(), e)[0]
    assert not compare_blowups(g, e)[0]
    assert not _run([g], [e], lambda: [e.double()]).ok  # no float64 run excuses it


def test_infinities_must_match_and_blowups_may_trade_nan_for_inf():
    e = torch.tensor([float("inf"), 1.0])
    assert not compare(torch.tensor([float("-inf"), 1.0]), e)[0]
    assert not compare(torch.tensor([float("nan"), 1.0]), e)[0]
    # inputs held NaN/inf: NaN for inf is the same blow-up (eager's var_mean vs a two-pass mean),
    # a sign flip or a blow-up where eager is finite is not
    assert compare_blowups(torch.tensor([float("nan"), 1.0]), e)[0]
    assert not compare_blowups(torch.tensor([float("-inf"), 1.0]), e)[0]
    res = _run([torch.tensor([float("inf"), float("inf")])], [e], blowups=True)
    assert not res.ok and "non-finite where eager is finite" in res.worst_output


def test_integers_and_bools_are_exact():
    e = torch.tensor([1, 2, 3])
    assert compare(e.clone(), e)[0]
    assert not compare(torch.tensor([1, 2, 4]), e)[0]
    assert not compare(torch.tensor([True, False]), torch.tensor([True, True]))[0]
    assert not compare(torch.tensor([1, 2]), e)[0]  # another shape


def test_the_float64_criterion_passes_a_long_reduction_summed_in_another_order():
    """Rows of 16k terms that nearly cancel: summed in reverse order the result is further from
    eager than any element-wise tolerance, and just as close to the exact sum as eager is."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8192, generator=g) * 100
    x = torch.cat([a, -a * (1 - 2**-12)], 1)[:, torch.randperm(16384, generator=g)]
    eager, reordered = x.sum(1), x.flip(1).sum(1)
    assert not compare(reordered, eager)[0]
    res = _run([reordered], [eager], lambda: [x.double().sum(1)])
    assert res.ok and res.max_abs > 0
    # a value that is wrong, not rounded differently, still fails
    wrong = reordered.clone()
    wrong[3] += 1.0
    assert not _run([wrong], [eager], lambda: [x.double().sum(1)]).ok
    assert not _run([reordered], [eager]).ok  # and without an oracle there is no excuse


def test_the_oracle_runs_only_when_an_output_needs_it():
    calls = []

    def oracle():
        calls.append(1)
        return [torch.ones(2, dtype=torch.float64)] * 2  # eager is exact

    e = torch.ones(2)
    assert _run([e, e], [e, e], oracle).ok and not calls
    assert not _run([e + 1, e + 1], [e, e], oracle).ok and len(calls) == 1


def test_a_different_number_of_outputs_is_an_error():
    with pytest.raises(RuntimeError, match="1 outputs, eager gives 2"):
        _run([torch.ones(2)], [torch.ones(2), torch.ones(2)])


def test_the_tolerance_class_can_be_narrower_than_the_output():
    """A group that computes in bf16 and returns fp32 is held to bf16's tolerance."""
    e = torch.tensor([1.0])
    g = e + 0.01
    assert not compare(g, e)[0]
    assert compare(g, e, torch.bfloat16)[0]


def test_the_numerics_check_reads_the_table(monkeypatch):
    """NumericsCheck.ok() follows the table: tighten float32 and a step that passed fails."""
    from fusionlab.numerics import NumericsCheck

    chk = NumericsCheck(1, [1.5e-5], [1.0e-5], [1e-5], ["w"])
    assert chk.ok()  # float32 rtol 2e-5
    monkeypatch.setitem(check.TOLERANCES, torch.float32, (1e-5, 1e-5))
    assert not chk.ok()
    assert NumericsCheck(1, [1e-3], [1e-3], [1e-3], ["w"], dtype=torch.float16).ok()
