"""The fused training step equals eager: losses, gradients, parameters and buffers.

fp32 bar: relative error <= 1e-5 for the loss and for all gradients together (norm-wise);
each gradient on its own within 10x that, a gradient that is ~0 in exact arithmetic (a
conv bias in front of batch norm) measured against 1% of the largest gradient norm.
"""

from __future__ import annotations

import copy

import fusionlab as fl
import pytest
import torch
from fusionlab import zoo
from fusionlab.backend import candidate_key

FP32_TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / max(float(a.norm()), floor, 1e-30))


def run_steps(zm, fused_model, ref_model, optimizer: str, steps: int = 3, tol: float = FP32_TOL):
    """Train both for `steps` and compare after every step."""
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3),
    }[optimizer]
    opt_ref = make(ref_model.parameters())
    opt_fused = make(fused_model.model.parameters())
    loss_fn = zm.loss_fn or (lambda out: out)
    for step in range(steps):
        loss_ref = loss_fn(ref_model(*zm.inputs))
        loss_ref.backward()
        loss_fused = fused_model(*zm.inputs)
        loss_fused.backward()
        assert abs(loss_fused.item() - loss_ref.item()) <= tol * max(abs(loss_ref.item()), 1e-6), (
            f"step {step}: loss {loss_fused.item()} vs eager {loss_ref.item()}"
        )
        pairs = list(zip(ref_model.named_parameters(), fused_model.model.named_parameters()))
        grads = [(n, a.grad, b.grad) for (n, a), (_, b) in pairs if a.grad is not None]
        assert all(g is not None for _, _, g in grads)
        # all gradients together: norm-wise relative error <= tol
        flat_ref = torch.cat([a.flatten() for _, a, _ in grads])
        flat_fused = torch.cat([b.flatten() for _, _, b in grads])
        assert rel_err(flat_ref, flat_fused, 0.0) <= tol, f"step {step}: gradients differ"
        # each gradient: within 10x that (a tensor's own error concentrates where its sums are long)
        scale = max(float(g.double().norm()) for _, g, _ in grads)
        for name, g_ref, g_fused in grads:
            err = rel_err(g_ref, g_fused, 1e-2 * scale)
            assert err <= 10 * tol, f"step {step}: grad of {name} rel err {err:.2e}"
        opt_ref.step()
        opt_fused.step()
        opt_ref.zero_grad()
        opt_fused.zero_grad()
        # AdamW divides by sqrt(v): a gradient that is zero in exact arithmetic (conv bias before
        # batch norm, attention key bias) turns into a +-lr step on rounding noise, in eager as in
        # any reordering of its sums. Losses and gradients keep the fp32 bar at every step; under
        # AdamW parameters (and buffers fed by them) may differ by at most 2 lr per step.
        for (name, p_ref), (_, p_fused) in pairs:
            if optimizer == "sgd":
                assert rel_err(p_ref, p_fused, 1e-6) <= tol, f"step {step}: param {name}"
            else:
                assert float((p_ref - p_fused).abs().max()) <= 2e-3 * (step + 1), f"step {step}: param {name}"
        for (name, b_ref), (_, b_fused) in zip(ref_model.named_buffers(), fused_model.model.named_buffers()):
            if b_ref.dtype.is_floating_point and optimizer == "sgd":
                assert rel_err(b_ref, b_fused, 1e-6) <= tol, f"step {step}: buffer {name}"
            elif b_ref.dtype.is_floating_point:
                assert float((b_ref - b_fused).abs().max()) <= 2e-3 * (step + 1), f"step {step}: buffer {name}"
            else:
                assert torch.equal(b_ref, b_fused), f"step {step}: buffer {name}"


@pytest.fixture(scope="module")
def plans():
    cache = {}

    def get(name):
        if name not in cache:
            zm = zoo.get(name)
            cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
            cache[name] = (zm, fl.FusionPlan(cap).select_all())
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "gpt2-block", "llama-block"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_zoo_select_all_three_steps_equal_eager(plans, name, optimizer):
    zm, plan = plans(name)
    ref = copy.deepcopy(zm.model)
    fused = plan.compile(copy.deepcopy(zm.model))
    run_steps(zm, fused, ref, optimizer)
    used = fused.report.used
    assert len(used) == len(plan.selected), str(fused.report)


@pytest.mark.slow
def test_transformers_gpt2_select_all_three_steps(plans):
    zm, plan = plans("gpt2-tiny")
    for optimizer in ("sgd", "adamw"):
        fused = plan.compile(copy.deepcopy(zm.model))
        run_steps(zm, fused, copy.deepcopy(zm.model), optimizer)
        # every selected candidate runs as its kernel (none refused)
        assert len(fused.report.used) == len(plan.selected), str(fused.report)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gpt2_block(dtype):
    """fp16/bf16: fused kernels keep fp32 between ops where eager rounds after each op, so
    losses agree to a few units in the last place of the dtype, not bit for bit."""
    zm = zoo.get("gpt2-block", dtype=dtype)
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    plan = fl.FusionPlan(cap).select_all()
    fused = plan.compile(copy.deepcopy(zm.model))
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    loss_ref = zm.loss_fn(zm.model(*zm.inputs)).float()
    loss_fused = fused(*zm.inputs).float()
    assert abs(loss_fused.item() - loss_ref.item()) <= tol * abs(loss_ref.item())
    loss_fused.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fused.model.parameters())
    assert fused.report.used, str(fused.report)


def test_new_batch_size_recompiles_and_still_matches(plans):
    zm, plan = plans("gpt2-block")
    fused = plan.compile(copy.deepcopy(zm.model))
    fused(*zm.inputs).backward()
    zm3 = zoo.get("gpt2-block", batch=3)
    fused.model.load_state_dict(zm3.model.state_dict())
    loss = fused(*zm3.inputs)
    expected = zm3.loss_fn(zm3.model(*zm3.inputs))
    assert abs(loss.item() - expected.item()) <= FP32_TOL * abs(expected.item())
    # the kernels were generated again for the new shapes, and checked
    shapes = {st.check.shapes for st in fused.report.used if st.check}
    assert any(any(s and s[0] == 3 for s in sh) for sh in shapes), str(fused.report)


def test_changing_selection_gives_new_model_old_keeps_working(plans):
    zm, plan = plans("mlp")
    ids = [c.id for c in plan.candidates]
    plan.clear().select(ids[0])
    first = plan.compile(copy.deepcopy(zm.model))
    plan.select_all()
    second = plan.compile(copy.deepcopy(zm.model))
    expected = zm.model(*zm.inputs).item()
    # compiled on first call: the first model keeps the selection it was made with
    for fused in (first, second):
        loss = fused(*zm.inputs)
        loss.backward()  # the backward graph compiles on the first backward
        assert abs(loss.item() - expected) <= FP32_TOL * abs(expected)
    assert [st.candidate for st in first.report.used] == [ids[0]]
    assert len(second.report.used) == len(ids)


def test_failing_kernel_is_refused_and_group_runs_unfused(monkeypatch, plans):
    """A kernel that does not match eager is not used; the plan says which and by how much."""
    from fusionlab import ops

    zm, plan = plans("mlp")
    broken = ops.Pointwise(lambda a, k, dt: f"tl.erf({a[0]}) * 1.01")
    monkeypatch.setitem(ops.POINTWISE, ops.aten.erf.default, broken)
    fused = plan.select_all().compile(copy.deepcopy(zm.model))
    expected = zm.model(*zm.inputs).item()
    assert abs(fused(*zm.inputs).item() - expected) <= FP32_TOL * abs(expected)
    failed = fused.report.failed
    assert failed and all("gelu" in st.candidate for st in failed), str(fused.report)
    assert "max abs err" in failed[0].reason and "inputs [" in failed[0].reason


def test_candidate_keys_ignore_names_and_shapes(plans):
    zm, plan = plans("gpt2-block")
    zm3 = zoo.get("gpt2-block", batch=3)
    plan3 = fl.FusionPlan(fl.capture(zm3.model, *zm3.inputs, loss_fn=zm3.loss_fn))
    assert [candidate_key(c) for c in plan.candidates] == [candidate_key(c) for c in plan3.candidates]
