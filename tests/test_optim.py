"""fusionlab.optim: the optimizer update captured (opt0), fused and checked against eager torch.optim.

Eager ``torch.optim`` is the oracle: parameters, gradients and state after 5 steps on fresh
random gradients, within 1e-6 relative for float32 (see fusionlab/optim/check.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

import fusionlab as fl
from fusionlab import optim
from fusionlab.capture import default_loss
from fusionlab.optim.capture import capture_optimizer

ZOO = ["mlp", "cnn-bn", "gpt2-block", "llama-block", "gpt2-tiny"]


@pytest.mark.parametrize("name", ZOO)
def test_adamw_with_weight_decay_and_clip_equals_eager(zoo_model, name):
    zm = zoo_model(name)
    step = capture_optimizer(zm.model, "adamw", {"lr": 1e-2, "weight_decay": 0.1}, clip_grad_norm=1.0)
    res = optim.check_update(step, steps=5)
    assert res.ok, res
    assert res.worst <= 1e-6
    # one partial-sums launch and one update launch per (param group, dtype) group
    assert res.launches_per_step == [2 * len(step.groups)] * 5
    assert {r[1] for r in res.rows} == {"param", "grad", "exp_avg", "exp_avg_sq", "step"}


@pytest.mark.parametrize("name", ["mlp", "gpt2-block"])
@pytest.mark.parametrize("form", ["multi_tensor", "param"])
def test_sgd_nesterov_equals_eager(zoo_model, name, form):
    zm = zoo_model(name)
    step = capture_optimizer(zm.model, "sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True,
                                               "weight_decay": 0.01}, None)
    assert step.kind == "sgd_momentum"
    res = optim.check_update(step, steps=5, form=form)
    assert res.ok, res
    n = len(step.params)
    assert res.launches_per_step == [1 if form == "multi_tensor" else n] * 5


def test_eager_difference_is_caught(zoo_model):
    # the check can fail: a different beta2 in the fused copy gives a different exp_avg_sq
    step = capture_optimizer(zoo_model("mlp").model, "adamw", {"lr": 1e-2}, None)
    other = capture_optimizer(zoo_model("mlp").model, "adamw", {"lr": 1e-2, "betas": (0.9, 0.99)}, None)
    other.optimizer = step.optimizer  # eager runs beta2=0.999, the kernels 0.99
    res = optim.check_update(other, steps=2)
    assert not res.ok and res.worst > 1e-3


class HalfBias(torch.nn.Module):
    """An fp32 model with one 16-bit parameter (a group of its own: its dtype)."""

    def __init__(self, dtype=torch.float16):
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)
        self.scale = torch.nn.Parameter(torch.ones(64, dtype=dtype) * 0.5)

    def forward(self, x):
        return self.lin(x) * self.scale.float()[:8]


def test_mixed_dtypes_one_group_per_dtype():
    torch.manual_seed(0)
    model = HalfBias()
    cap = fl.capture(model, torch.randn(4, 16), optimizer="adamw", lr=1e-2, weight_decay=0.01, clip_grad_norm=1.0)
    step = cap.optimizer
    assert step.fused
    assert sorted(str(g.dtype) for g in step.groups) == ["torch.float16", "torch.float32"]
    res = optim.check_update(step, steps=5)
    assert res.ok, res
    assert res.launches_per_step == [4] * 5  # 2 groups x (partials + update)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_16bit_groups_no_further_from_float64_than_eager(dtype, opt):
    torch.manual_seed(0)
    settings = {"lr": 1e-2, "weight_decay": 0.01} if opt == "adamw" else {"lr": 1e-2, "momentum": 0.9,
                                                                          "nesterov": True}
    step = capture_optimizer(HalfBias(dtype), opt, settings, 1.0 if opt == "sgd" else None)
    res = optim.check_update(step, steps=5)
    assert res.ok, res
    assert any(r[0] == "scale" and r[2] > 1e-4 for r in res.rows)  # 16-bit: held to the float64 criterion


def test_capture_leaves_model_and_optimizer_untouched(zoo_model):
    zm = zoo_model("mlp")
    model = copy.deepcopy(zm.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    (zm.loss_fn or default_loss)(model(*zm.inputs)).backward()
    opt.step()  # the state exists before the capture
    before = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    cap = fl.capture(model, *zm.inputs, loss_fn=zm.loss_fn, optimizer=opt, clip_grad_norm=0.5)
    after = opt.state_dict()
    for k, st in before["state"].items():
        for name, t in st.items():
            assert torch.equal(t, after["state"][k][name])
    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    g = cap.graph("opt0")
    assert g.kind == "optimizer" and g.tag == "opt0"
    names = dict(model.named_parameters())
    owners = set(cap.optimizer.updates.values())
    assert set(names) <= owners and "all gradients" in owners
    assert all(g.nodes[n].module == p for n, p in cap.optimizer.updates.items())
    assert "optimizer AdamW (adamw, clip_grad_norm=0.5)" in cap.summary()


def test_fused_update_runs_on_the_users_optimizer(zoo_model):
    zm = zoo_model("mlp")
    model = copy.deepcopy(zm.model)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    cap = fl.capture(model, *zm.inputs, loss_fn=zm.loss_fn, optimizer=opt)
    upd = optim.fused_update(cap)
    for m, o in ((model, upd), (ref, ref_opt)):
        for _ in range(3):
            loss = (zm.loss_fn or default_loss)(m(*zm.inputs))
            loss.backward()
            o.step()
            m.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert set(opt.state[next(model.parameters())]) == {"momentum_buffer"}


def test_unknown_optimizers_run_unfused_with_a_reason(zoo_model):
    zm = zoo_model("mlp")

    class MyOpt(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        def step(self, closure=None):
            pass

    for opt, words in [(torch.optim.LBFGS(zm.model.parameters()), "LBFGS"),
                       (MyOpt(zm.model.parameters()), "MyOpt"),
                       (torch.optim.Adam(zm.model.parameters(), amsgrad=True), "amsgrad")]:
        step = capture_optimizer(zm.model, opt, {}, None)
        assert not step.fused and words in step.reason and step.graph is None
        assert "runs unfused" in step.summary()
        with pytest.raises(ValueError, match="not fused"):
            optim.fused_update(step)
    assert "runs unfused" in str(optim.sync_report(fl.capture(
        zm.model, *zm.inputs, loss_fn=zm.loss_fn, optimizer=torch.optim.LBFGS(zm.model.parameters()))))


def test_bad_optimizer_input_is_a_clear_error(zoo_model):
    zm = zoo_model("mlp")
    other = torch.nn.Linear(3, 3)
    with pytest.raises(fl.CaptureError, match="not parameters of MLPClassifier"):
        fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn, optimizer=torch.optim.AdamW(other.parameters()))
    with pytest.raises(fl.CaptureError, match="no optimizer="):
        fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn, lr=1e-3)
    with pytest.raises(fl.CaptureError, match="unknown optimizer name 'rmsprop'"):
        capture_optimizer(zm.model, "rmsprop", {}, None)
    with pytest.raises(fl.CaptureError, match="cannot build torch.optim.AdamW"):
        capture_optimizer(zm.model, {"name": "adamw", "betas": 3}, {}, None)
    with pytest.raises(fl.CaptureError, match="clip_grad_norm must be a positive number"):
        capture_optimizer(zm.model, "sgd", {"lr": 0.1, "momentum": 0.9}, -1.0)


def test_candidates_and_sync_report(zoo_model):
    zm = zoo_model("gpt2-block")
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn, optimizer={"name": "adamw", "lr": 1e-3},
                     clip_grad_norm=1.0)
    cands = fl.find_candidates(cap)
    n = len(cap.optimizer.params)
    per_param = [c for c in cands.optimizer if c.pattern == "adamw"]
    multi = [c for c in cands.optimizer if c.pattern == "multi_tensor_adamw"]
    clip = [c for c in cands.optimizer if c.pattern == "clip_grad_norm"]
    assert len(per_param) == n and len(multi) == 1 and len(clip) == 1
    assert set(multi[0].nodes) == {x for c in per_param for x in c.nodes}  # the alternative to the chains
    assert clip[0].kind == "reduction"
    assert all(c.graph == "opt0" for c in cands.optimizer) and all(c.graph != "opt0" for c in cands)
    rep = optim.sync_report(cap)
    assert rep.fused_update == 0 and rep.fused_launches == 2
    assert rep.eager_update == n  # eager AdamW on a CPU reads each parameter's step on the host
    assert rep.in_graphs == {"fw0": [], "bw0": [], "opt0": []} and rep.total_in_step == 0


def test_inductor_compiled_update_equals_eager(zoo_model):
    # what bench/optimizer_step.py times on a CPU: the same formulas compiled by Inductor
    step = capture_optimizer(zoo_model("mlp").model, "adamw", {"lr": 1e-2, "weight_decay": 0.1}, 1.0)
    res = optim.check_update(step, steps=5, form="inductor")
    assert res.ok, res


def test_multi_tensor_kernel_reads_like_the_graph_and_compiles_for_sm80_sm90(zoo_model):
    from fusionlab.inspect import inspect_many

    cap_step = capture_optimizer(zoo_model("mlp").model, "adamw", {"lr": 1e-3, "weight_decay": 0.01}, 1.0)
    upd = fl.optim.fused_update(cap_step)
    ks = upd.sources[0]
    chain = [n for n in cap_step.chains[0].graph.nodes if n.op == "call_function"]
    assert len(ks.replaces) == len(chain)  # one line per op of one parameter's chain in opt0
    assert all("  # aten." in line for line in ks.replaces)
    for name in ("param_ptrs", "grad_ptrs", "exp_avg_ptrs", "exp_avg_sq_ptrs", "block_tensor", "total_sq_ptr"):
        assert name in ks.signature
    for rep in inspect_many([ks], "sm_80", progress=False) + inspect_many([ks], "sm_90", progress=False):
        assert rep.ok, rep.error
        assert rep.registers and rep.registers > 0


def test_profile_runs_the_fused_update_when_the_capture_has_one(zoo_model):
    # captured with optimizer=: the fusionlab variant updates with the fused update, torch.compile
    # with torch.compile(opt.step); the losses of 4 steps stay eager's (same weights after each update)
    zm = zoo_model("mlp")
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn, optimizer="adamw", lr=1e-3)
    plan = fl.FusionPlan(cap).select_all()
    res = fl.profile(zm.model, zm.inputs, plan=plan, steps=2, warmup=1, compare=("eager", "fusionlab", "inductor"))
    assert "update: fused (opt0 compiled by Inductor, cpp)" in res["fusionlab"].executor
    assert "update: torch.compile(opt.step)" in res["inductor"].executor
    assert res["eager"].executor == "PyTorch eager (ATen)"
    assert len(res["fusionlab"].losses) == 4 and res.loss_rel_diff("fusionlab") < 1e-5
    # the update's share of each variant's step (measured inside the same steps), and PyTorch's
    # foreach / fused=True AdamW as reference rows after the variants
    assert [v.name for v in res.variants][3:] == ["foreach (reference)", "fused (reference)"]
    for v in res.variants:
        assert 0 < v.update_share <= 1 and len(v.update_samples) == 2
    assert list(res.table()["update share"]) == [v.update_share for v in res.variants]


def test_plan_selects_the_form_of_the_update(zoo_model):
    zm = zoo_model("mlp")
    cap = fl.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn, optimizer="adamw", lr=1e-3, clip_grad_norm=1.0)
    plan = fl.FusionPlan(cap)
    assert plan.optimizer_form is None and "runs as eager optimizer.step()" in str(plan.summary())
    plan.select("adamw")  # every per-parameter chain, the clip comes with it
    n = len(cap.optimizer.params)
    assert plan.optimizer_form == "param" and len(plan.optimizer_selected) == n + 1
    assert plan.selected == [] and plan.is_selected("opt0.adamw.0")  # forward/backward selection untouched
    line = plan.summary().optimizer
    assert line.startswith("optimizer update opt0 (AdamW): param form") and f"-> {n + 1} kernels" in line
    assert "[x] opt0.adamw.0" in repr(plan) and "[ ] opt0.multi_tensor_adamw.g0.float32" in repr(plan)
    with pytest.raises(fl.PlanError, match="pick one form"):
        plan.select("multi_tensor_adamw")
    assert plan.optimizer_form == "param"  # a refused selection leaves the plan as it was
    with pytest.raises(fl.PlanError, match="runs whole"):
        fl.FusionPlan(cap).select("opt0.adamw.0")
    with pytest.raises(fl.PlanError, match="runs inside the fused update"):
        fl.FusionPlan(cap).select("clip_grad_norm")
    plan.select_all()  # the multi-tensor form: the fewest launches
    assert plan.optimizer_form == "multi_tensor" and plan.summary().optimizer.count("-> 2 kernels") == 1
    plan.deselect("multi_tensor_adamw")  # the clip goes with its form
    assert plan.optimizer_form is None and plan.optimizer_selected == []
    plan.select("adamw")
    ns = {"capture": cap}
    exec(plan.to_code(), ns)  # the snippet rebuilds the form too
    assert ns["plan"].optimizer_form == "param" and [c.id for c in ns["plan"].selected] == [c.id for c in plan.selected]
    # the profile's fusionlab variant runs the plan's form; none picked: eager optimizer.step()
    res = fl.profile(zm.model, zm.inputs, plan=fl.FusionPlan(cap), steps=1, warmup=0, compare="fusionlab",
                     references=False, profile_step=False)
    assert res["fusionlab"].executor.endswith("update: eager optimizer.step() (the plan selects no form of the update)")


def test_compiled_update_is_called_without_dynamo_and_falls_back_to_it(zoo_model, monkeypatch):
    from fusionlab.optim import cpu

    zm = zoo_model("mlp")
    settings = {"lr": 0.05, "momentum": 0.9, "nesterov": True}
    for broken in (False, True):
        model, ref = copy.deepcopy(zm.model), copy.deepcopy(zm.model)
        opt = torch.optim.SGD(model.parameters(), **settings)
        ref_opt = torch.optim.SGD(ref.parameters(), **settings)
        if broken:  # a torch whose compile_fx_inner fails: the same function through torch.compile
            monkeypatch.setattr(cpu, "compile_in_place", lambda fn, ex: (_ for _ in ()).throw(RuntimeError("x")))
        upd = cpu.CompiledUpdate(capture_optimizer(model, opt, {}, None))
        upd.step()  # no gradients yet: nothing to do, as eager
        for _ in range(3):
            for p, q in zip(model.parameters(), ref.parameters()):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
            v = next(model.parameters())._version
            upd.step()
            ref_opt.step()
            assert next(model.parameters())._version > v  # written in place, as autograd sees it
        assert upd.how == (cpu.VIA_DYNAMO if broken else cpu.DIRECT)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        next(model.parameters()).grad = None
        with pytest.raises(ValueError, match="have no gradient"):
            upd.step()
