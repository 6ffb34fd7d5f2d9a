"""The whole-graph executor and Inductor's caches: the fusion policy is in the key.

Each test runs against empty caches of its own (Inductor's and fusionlab's, both in tmp
dirs) and forgets what this process compiled and checked, so none reads or writes the
user's caches or depends on another test's.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fusionlab
from fusionlab import zoo
from fusionlab.executors import InductorGraphExecutor, clear_cache
from fusionlab.plan import plan_for

pytestmark = pytest.mark.usefixtures("empty_caches")  # tests/conftest.py


@pytest.fixture(scope="module")
def mlp():
    zm = zoo.get("mlp")
    return zm, fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)


def _plan(capture, select="all"):
    return plan_for(capture, select)


def _run(zm, plan) -> InductorGraphExecutor:
    """One fused training step of `plan` in a fresh executor (as a new profile makes one)."""
    ex = InductorGraphExecutor()
    model = copy.deepcopy(zm.model)
    fused = plan.compile(model, executor=ex)
    want = copy.deepcopy(zm.model)(*zm.inputs)
    got = fused(*zm.inputs)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not fused.report.fallbacks and not fused.report.failed, fused.report
    ex.report = fused.report
    return ex


def _by_kind(ex):
    return {g.kind: g for g in ex.graphs}


def test_the_same_plan_twice_hits_the_cache(mlp):
    zm, cap = mlp
    first = _run(zm, _plan(cap))
    assert {g.kind for g in first.graphs} == {"forward", "backward"}
    assert not any(g.cached for g in first.graphs) and not first.reused_checks
    clear_cache()  # as a new process: only the disk caches remain
    torch._dynamo.reset()
    second = _run(zm, _plan(cap))
    assert all(g.cached for g in second.graphs)  # Inductor's FX graph cache served both graphs
    for kind, g in _by_kind(second).items():
        f = _by_kind(first)[kind]
        assert g.cache_key == f.cache_key and g.source == f.source
        assert g.loops == f.loops and g.loops  # the listing verified at the miss, read back
    # no group checked again, none used unchecked: each check result is the one found before
    assert sorted(second.reused_checks) == sorted(s.candidate for s in first.report.used)
    for a, b in zip(first.report.kernels, second.report.kernels):
        assert b.used and b.check is not None and b.check.ok and b.check.max_rel == a.check.max_rel


def test_plans_that_differ_in_one_group_never_share_code(mlp):
    """Fails if the policy is dropped from Inductor's key: the second plan's forward graph (the
    same FX graph) would come back with the first plan's code."""
    zm, cap = mlp
    fw = [c.id for c in _plan(cap).selected if c.graph == "fw0"]
    one = _run(zm, _plan(cap, fw[0]))
    two = _run(zm, _plan(cap, fw[1]))
    f1, f2 = _by_kind(one)["forward"], _by_kind(two)["forward"]
    assert f1.cache_key and f2.cache_key and f1.cache_key != f2.cache_key
    assert not f2.cached  # compiled under its own policy
    assert {k.group for k in f1.loops} - {None} == {fw[0]}
    assert {k.group for k in f2.loops} - {None} == {fw[1]}
    # nothing selected in the backward: one policy, one entry, served the second time
    assert _by_kind(two)["backward"].cached
    assert _by_kind(two)["backward"].cache_key == _by_kind(one)["backward"].cache_key


def test_a_toggle_recompiles_only_the_graph_it_touched(mlp):
    zm, cap = mlp
    plan = _plan(cap)
    _run(zm, plan)
    bw = next(c.id for c in plan.selected if c.graph == "bw0")
    plan.deselect(bw)
    ex = _run(zm, plan)
    graphs = _by_kind(ex)
    assert graphs["forward"].cached and not graphs["backward"].cached
    assert bw not in graphs["backward"].groups
    # no group checked again: every one still selected was checked by the first run
    assert sorted(ex.reused_checks) == sorted(c.id for c in plan.selected)


def test_a_hit_without_a_verified_listing_compiles_again(mlp, empty_caches):
    """Inductor's cache holds the code, fusionlab's the listing that was verified for it; with the
    listing gone (or never stored: a compile that failed verification), a hit is not trusted."""
    import shutil

    zm, cap = mlp
    first = _run(zm, _plan(cap))
    shutil.rmtree(empty_caches / "fusionlab" / "graphs")
    clear_cache()
    again = _run(zm, _plan(cap))
    assert not any(g.cached for g in again.graphs)  # compiled with the cache off, listed and verified
    for kind, g in _by_kind(again).items():
        assert g.loops == _by_kind(first)[kind].loops
    third = _run(zm, _plan(cap))  # and the listing is back
    assert all(g.cached for g in third.graphs)
