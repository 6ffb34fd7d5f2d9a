"""profile(keep=KeptSteps()): a re-profile after a toggle takes the compiled steps back, re-plans
the fusionlab one, and starts every variant from the model's own weights, as a fresh profile does.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fusionlab
from fusionlab import zoo
from fusionlab.plan import plan_for
from fusionlab.profiler import KeptSteps, profile

pytestmark = pytest.mark.usefixtures("empty_caches")  # tests/conftest.py

COMPARE = ("eager", "unfused", "fusionlab", "inductor")


def _profile(zm, plan, keep):
    return profile(zm.model, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=2, warmup=1, budget_s=0,
                   compare=COMPARE, keep=keep, profile_step=False)


def _kept_note(result) -> str:
    return next((n for n in result.notes if n.startswith("compiled steps kept")), "")


def test_a_reprofile_takes_the_steps_back_and_replans_fusionlab():
    zm = zoo.get("mlp")
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")
    keep = KeptSteps()
    first = _profile(zm, plan, keep)
    assert not _kept_note(first)
    # unfused and fusionlab ran the capture's trace, each with its own code (fusionlab.shared_trace)
    assert any(n.startswith("unfused, fusionlab: the first step ran the capture's") for n in first.notes), first.notes
    for name in ("unfused", "fusionlab", "inductor"):
        torch.testing.assert_close(first.variant(name).losses, first.variant("eager").losses, rtol=1e-4, atol=1e-5)
    dropped = plan.selected[0].id
    second = _profile(zm, plan.deselect(dropped), keep)
    note = _kept_note(second)
    assert "unfused" in note and "fusionlab (re-planned)" in note and "inductor" in note
    report = second.variant("fusionlab").report
    assert dropped not in {k.candidate for k in report.used}
    assert {k.candidate for k in report.used} == {c.id for c in plan.selected}
    # every variant started again from the model's weights and a new optimizer: the same losses as
    # eager's, step by step (a step kept with its trained weights or optimizer state would drift)
    eager = second.variant("eager").losses
    for name in ("unfused", "fusionlab", "inductor"):
        torch.testing.assert_close(second.variant(name).losses, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second.variant("eager").losses, first.variant("eager").losses)


def test_a_step_is_kept_only_for_the_same_model_and_settings():
    zm = zoo.get("mlp")
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")
    keep = KeptSteps()
    _profile(zm, plan, keep)
    other = copy.deepcopy(zm.model)  # another model object: built anew
    r = profile(other, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=1, warmup=0, budget_s=0,
                compare=COMPARE, keep=keep, profile_step=False)
    assert not _kept_note(r)
    r = profile(other, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=1, warmup=0, budget_s=0, lr=0.1,
                compare=COMPARE, keep=keep, profile_step=False)  # another learning rate: anew
    assert not _kept_note(r)
