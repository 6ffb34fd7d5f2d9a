"""Tests for fusionlab.profiler, fusionlab.numerics and fusionlab.executors (behaviour and numerics, never wall-clock)."""

from __future__ import annotations

import copy
import html.parser
import json
import re

import pytest
import torch

import fusionlab
from fusionlab import zoo
from fusionlab.executors import (
    CompiledGroup,
    FusionPolicyError,
    InductorGraphExecutor,
    InductorGroupExecutor,
    KernelOrigin,
    count_generated_kernels,
)
from fusionlab.kernels.kernel import KernelStatus
from fusionlab.numerics import check_numerics
from fusionlab.plan import plan_for
from fusionlab.profiler import ProfileResult, profile


@pytest.fixture(scope="module")
def block():
    return zoo.get("gpt2-block")


@pytest.fixture(scope="module")
def plan(block):
    return plan_for(fusionlab.capture(block.model, *block.inputs, loss_fn=block.loss_fn), "all")


@pytest.fixture(scope="module")
def state_before(block):
    m = block.model
    return {
        "params": {k: v.detach().clone() for k, v in m.state_dict(keep_vars=False).items()},
        "grads": {k: p.grad for k, p in m.named_parameters()},
        "training": m.training,
        "rng": torch.get_rng_state(),
    }


@pytest.fixture(scope="module")
def result(block, plan, state_before, tmp_path_factory) -> ProfileResult:
    # a single tensor input (not a tuple) is accepted
    trace = tmp_path_factory.mktemp("trace") / "step.json"
    return profile(block.model, block.inputs[0], plan=plan, steps=3, warmup=1,
                   compare=("eager", "fusionlab"), gpu="h100", trace=str(trace))


def test_profile_never_changes_the_model(block, result, state_before):
    m = block.model
    after = m.state_dict()
    assert after.keys() == state_before["params"].keys()
    for k, v in state_before["params"].items():
        assert torch.equal(after[k], v), k
    for k, p in m.named_parameters():
        assert p.grad is state_before["grads"][k]
    assert m.training == state_before["training"]
    assert torch.equal(torch.get_rng_state(), state_before["rng"])


def test_profile_result_measures_each_variant(result):
    assert [v.name for v in result.variants] == ["eager", "fusionlab"]
    for v in result.variants:
        assert v.ok, v.error
        assert len(v.samples) == 3 and all(s > 0 for s in v.samples)
        assert v.min_ms <= v.q1_ms <= v.median_ms <= v.q3_ms <= v.max_ms
        assert v.kernels_per_step and v.kernels_how
        assert v.peak_memory is not None and v.peak_memory > 0 and v.peak_memory_how
        assert len(v.losses) == 1 + 1 + 3  # first step, warm-up, measured
        assert v.top_kernels
    assert result["eager"].executor == "PyTorch eager (ATen)"
    assert result["fusionlab"].executor == "inductor-cpp (groups only)"
    assert result.device.startswith("cpu")
    # every selected group ran fused, and its check passed
    rep = result["fusionlab"].report
    assert len(rep.used) == len(result.plan.selected) and not rep.failed
    assert all(s.check is not None and s.check.ok for s in rep.used)
    # fewer kernels than the unfused graphs; the loss is eager's (same inputs, same weights)
    assert result["fusionlab"].kernels_per_step < result.plan.summary().kernels_before
    assert result.loss_rel_diff("fusionlab") < 1e-5
    with open(result.chrome_trace) as f:
        events = json.load(f)["traceEvents"]
    names = {e.get("name") for e in events}
    assert {f"fusionlab.profile: {v} step" for v in ("eager", "fusionlab")} <= names


def test_table_keeps_modeled_apart(result):
    df = result.table(detail=True)
    assert list(df.index) == ["eager", "fusionlab"]
    for col in ("executor", "device", "median ms", "IQR ms", "speed-up vs eager (ratio of medians)", "vs eager",
                "kernels/step", "peak memory MiB", "modeled H100 SXM ms", "modeled H100 SXM MiB moved",
                "modeled non-matmul MiB"):
        assert col in df.columns
    assert df.loc["eager", "speed-up vs eager (ratio of medians)"] == pytest.approx(1.0)
    assert df.loc["fusionlab", "vs eager"] == "no difference measurable in 3 steps"  # 3 steps never decide
    # modeled figures exist for eager (unfused) and the fused plan only, never for measured-only rows
    assert df.loc["fusionlab", "modeled H100 SXM ms"] < df.loc["eager", "modeled H100 SXM ms"]
    assert df.attrs["modeled"] == "modeled (H100 SXM spec)"
    text = repr(result)
    assert "measured on cpu" in text and "modeled (H100 SXM spec)" in text
    assert "inductor-cpp (groups only)" in text
    assert "<table" in result._repr_html_()


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.script_src: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "script":
            self.script_src += [v for k, v in attrs if k == "src" and v]


def test_html_report_is_standalone(result, tmp_path):
    path = result.to_html(tmp_path / "report.html")
    text = open(path, encoding="utf-8").read()
    p = _Collect()
    p.feed(text)
    p.close()
    assert "table" in p.tags and "script" in p.tags
    assert p.script_src == []  # plotly.js inlined: opens with no server and no network
    assert "modeled (H100 SXM spec)" in text and "inductor-cpp (groups only)" in text
    fig = result.figure()
    assert len(fig.data) >= 6
    names = {t.name for t in fig.data}
    assert "eager kernels" in names and "fusionlab kernels" in names
    measured = next(t for t in fig.data if t.name == "fusionlab top kernels (measured)")
    assert len(measured.y) == min(8, len(result["fusionlab"].top_kernels)) and all(t > 0 for t in measured.y)


@pytest.mark.parametrize("executor, name", [
    ("inductor", "inductor-cpp (groups only)"),
    ("inductor-groups", "inductor-cpp (per group)"),
])
def test_inductor_executor_matches_eager_over_three_steps(block, plan, executor, name):
    chk = check_numerics(block.model, block.inputs, plan=plan, steps=3, executor=executor)
    assert len(chk.loss_rel) == 3
    assert chk.report.executor == name
    assert len(chk.report.used) == len(plan.selected) and not chk.report.failed
    assert not chk.report.fallbacks
    assert chk.max_rel <= 1e-5, chk  # loss and whole gradient
    assert chk.max_param_rel <= 1e-5, chk  # and every parameter's gradient on its own
    assert chk.ok()


def test_executor_refuses_a_group_that_does_not_match(block, plan, monkeypatch, tmp_path):
    import fusionlab.executors.groups as ex_mod
    from fusionlab.executors import checks

    def wrong(sub, examples, name, **kw):
        def fn(args):
            return tuple(torch.zeros_like(o) + 1 for o in sub(*args))

        return CompiledGroup(name, fn, 1, 0.0, "", True, "test")

    monkeypatch.setattr(InductorGroupExecutor, "_cache", {})
    monkeypatch.setattr(checks, "KNOWN", {})  # and no check result known (nor on disk)
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ex_mod, "_compile_group", wrong)
    ex = InductorGroupExecutor()
    cand = next(c for c in plan.selected if "softmax" in c.pattern)
    fn, status = ex(cand, plan.capture.graph(cand.graph))
    assert fn is None
    assert isinstance(status, KernelStatus) and not status.used
    assert "check against eager failed" in status.reason
    assert InductorGroupExecutor._cache == {}  # a refused group is not kept
    again, status = InductorGroupExecutor()(cand, plan.capture.graph(cand.graph))  # its failed check is
    assert again is None and "check against eager failed" in status.reason  # known, not retried


def test_executor_compiles_one_group_alone(plan):
    ex = InductorGroupExecutor()
    cand = next(c for c in plan.selected if "layer_norm" in c.pattern and c.graph.startswith("fw"))
    fn, status = ex(cand, plan.capture.graph(cand.graph))
    assert status.used and status.check.ok and status.check.executor == ex.name
    group = ex.groups[cand.id]
    assert group.kernels >= 1 and "cpp_fused" in group.source
    assert ex.name == "inductor-cpp (per group)"


def test_count_generated_kernels():
    src = (
        "def call(args):\n"
        "    buf0 = empty_strided_cpu((4,), (1,), torch.float32)\n"
        "    cpp_fused_add_0(arg0_1, buf0)\n"
        "    extern_kernels.mm(buf0, arg1_1, out=buf1)\n"
        "    triton_poi_fused_mul_1.run(buf1, 4, stream=stream0)\n"
        "    return (buf1, )\n"
        "\n"
        "runner = Runner(partitions=[])\n"
    )
    assert count_generated_kernels(src) == 3
    assert count_generated_kernels("no wrapper here") == 0


def test_profile_rejects_bad_arguments(block, plan):
    with pytest.raises(ValueError, match="compare"):
        profile(block.model, block.inputs, plan=plan, compare=("eager", "nonsense"))
    with pytest.raises(ValueError, match="steps"):
        profile(block.model, block.inputs, plan=plan, steps=0)
    with pytest.raises(ValueError, match="unknown GPU"):
        profile(block.model, block.inputs, plan=plan, gpu="v99")
    with pytest.raises(ValueError, match="optimizer"):
        profile(block.model, block.inputs, plan=plan, optimizer="lion", steps=1, warmup=0, compare="eager")


def test_profile_captures_when_no_plan_with_all_variants():
    zm = zoo.get("mlp")
    res = profile(zm.model, zm.inputs, steps=2, warmup=0, compare="eager,unfused,fusionlab,inductor",
                  optimizer="sgd", gpu="t4")
    assert [v.name for v in res.variants] == ["eager", "unfused", "fusionlab", "inductor"]
    assert all(v.ok for v in res.variants), [v.error for v in res.variants]
    assert res.plan is not None and len(res.plan.selected) == len(res.plan.candidates) > 0
    assert any("all" in n and "selected" in n for n in res.notes)
    # unfused: the same whole-graph executor with nothing selected
    assert res["unfused"].executor == "inductor-cpp (nothing fused)"
    assert res["unfused"].kernels_how == res["fusionlab"].kernels_how == "Inductor generated code"
    assert res["unfused"].loop_nests > res["fusionlab"].loop_nests > 0
    assert any(f"unfused {res['unfused'].loop_nests}" in n for n in res.notes)
    assert res["inductor"].executor.startswith("torch.compile")
    assert res["inductor"].kernels_how == "Inductor generated code" and res["inductor"].kernels_per_step > 0
    # modeled: the unfused graphs and the fused plan; torch.compile's own kernels are not modeled
    assert set(res.modeled) == {"eager", "unfused", "fusionlab"}
    df = res.table(detail=True)
    assert df["modeled T4 ms"].isna()["inductor"] and not df["modeled T4 ms"].isna()["fusionlab"]
    for name in ("unfused", "fusionlab", "inductor"):
        assert res.loss_rel_diff(name) < 1e-4, name
    assert fusionlab.profile is profile


# ---- the whole-graph executor: Inductor may fuse only inside the selected groups ----


def _one_step(fused, inputs):
    loss = fused(*inputs)
    loss.backward()
    return loss


def test_graph_executor_fuses_only_inside_the_selected_groups(block):
    partial = plan_for(fusionlab.capture(block.model, *block.inputs, loss_fn=block.loss_fn), "none")
    fw = [c for c in partial.candidates if c.graph.startswith("fw")]
    picked = next(c for c in fw if "softmax" in c.pattern)
    left = next(c for c in fw if "gelu" in c.pattern)  # not selected: its ops must stay apart
    partial.select(picked.id)
    ex = InductorGraphExecutor()
    model = copy.deepcopy(block.model)
    fused = partial.compile(model, executor=ex)
    _one_step(fused, block.inputs)
    assert [s.candidate for s in fused.report.used] == [picked.id] and not fused.report.fallbacks
    (graph,) = [g for g in ex.graphs if g.kind == "forward"]
    assert graph.groups == (picked.id,)
    mine = [k for k in graph.loops if k.group == picked.id]
    assert mine and {n for k in mine for n in k.nodes} <= set(picked.nodes)
    for k in graph.loops:
        assert k.group is not None or len(k.nodes) == 1, k  # an op outside groups is a loop of its own
    gelu_loops = [k for k in graph.loops if set(k.nodes) & set(left.nodes)]
    assert len(gelu_loops) >= 2 and all(len(k.nodes) == 1 for k in gelu_loops)
    assert "fusion allowed only inside the groups" in ex.describe()
    # every loop nest knows its C++ function, named as torch.profiler records it
    functions = graph.functions()
    assert all(k.function for k in graph.loops) and all(re.sub(r"^graph_\d+_", "", f) in graph.source for f in functions)
    from fusionlab.profiler import VariantResult
    from fusionlab.profiler.events import label_functions

    mine_fn = mine[0].function
    r = VariantResult("fusionlab", ex.name, "cpu", top_kernels=[(mine_fn, 1, 5.0), ("aten::mm", 2, 9.0)])
    label_functions(r, ex)
    assert r.top_kernels[0][0].startswith(f"{mine_fn} [") and picked.id in r.top_kernels[0][0]
    assert r.top_kernels[1] == ("aten::mm", 2, 9.0)


def test_graph_executor_falls_back_to_per_group_calls(block, plan, monkeypatch):
    def broken(self, kind, gm, example_inputs, groups, refused=(), candidates=None):
        raise FusionPolicyError("test: a loop nest crossed a group boundary")

    monkeypatch.setattr(InductorGraphExecutor, "compile_graph", broken)
    chk = check_numerics(block.model, block.inputs, plan=plan, steps=1, executor=InductorGraphExecutor())
    assert len(chk.report.used) == len(plan.selected)
    assert chk.report.fallbacks and "FusionPolicyError" in chk.report.fallbacks[0]
    assert "its groups run as separately compiled calls" in str(chk.report)
    assert chk.ok(), chk


def test_graph_executor_and_torch_compile_never_share_cached_code(monkeypatch, tmp_path):
    """The fusion policy is in Inductor's cache key (tests/test_executor_cache.py): a policy
    compile is never served plain torch.compile's code, nor another plan's, nor the reverse."""
    import unittest.mock

    from torch._inductor import graph as igraph

    from fusionlab.capture import TrainStep, fresh_entry

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # an empty on-disk cache
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "fusionlab"))
    zm = zoo.get("mlp")
    fw = [c for c in plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "none").candidates
          if c.graph.startswith("fw")]
    assert len(fw) >= 2

    def restricted(cand) -> list[KernelOrigin]:
        plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), cand.id)
        ex = InductorGraphExecutor()
        _one_step(plan.compile(copy.deepcopy(zm.model), executor=ex), zm.inputs)
        (graph,) = [g for g in ex.graphs if g.kind == "forward"]
        return graph.loops

    first = restricted(fw[0])
    assert {k.group for k in first} - {None} == {fw[0].id}
    codes = []
    real = igraph.GraphLowering.compile_to_module

    def grab(self):
        mod = real(self)
        codes.append(open(mod.__file__).read())
        return mod

    torch._dynamo.reset()
    with unittest.mock.patch.object(igraph.GraphLowering, "compile_to_module", grab):
        step = torch.compile(fresh_entry(TrainStep(copy.deepcopy(zm.model), zm.loss_fn, True)))
        step(*zm.inputs).backward()
    assert codes, "plain torch.compile generated no code (served from a cache?)"
    # the same forward graph under another plan: compiled again under that plan's policy
    second = restricted(fw[1])
    assert {k.group for k in second} - {None} == {fw[1].id}
    # and no throw-away cache directories are left behind (force_disable_caches left one per graph)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("tmp")]


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "llama-block", "gpt2-tiny"])
def test_graph_executor_matches_eager_on_zoo_models(name):
    """Select-all on every zoo model: three AdamW steps equal to eager, each graph compiled whole
    (no fallback), and every loop nest Inductor generated runs one group or one op."""
    zm = zoo.get(name)
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")
    ex = InductorGraphExecutor()
    chk = check_numerics(zm.model, zm.inputs, plan=plan, loss_fn=zm.loss_fn, steps=3, executor=ex)
    assert len(chk.report.used) == len(plan.selected) and not chk.report.failed
    assert not chk.report.fallbacks, chk.report.fallbacks
    assert chk.ok(), chk
    assert {g.kind for g in ex.graphs} == {"forward", "backward"}
    used = {s.candidate for s in chk.report.used}
    for g in ex.graphs:
        assert all(k.ok for k in g.loops)
        assert {k.group for k in g.loops} - {None} == set(g.groups) <= used


class _VarOfOne(torch.nn.Module):
    """var over a size-1 dim (eager gives NaN for an inf element, Inductor's Welford gives 0),
    next to a group Inductor computes as eager does."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.u = torch.nn.Parameter(torch.ones(8))

    def forward(self, x, z):
        v = (x * self.w).var(dim=0, correction=0)
        return (v * v).sum() + (torch.sigmoid(z * self.u) * 2.0).sum(dim=-1).mean()


def test_inductor_groups_are_checked_with_nan_and_inf_inputs():
    """Found by bench/fuzz.py --executor inductor: a group whose NaN/inf rules differ from eager's
    is refused and its ops run as ATen calls, so a step fed an inf gives eager's NaN, not 0."""
    model = _VarOfOne()
    inputs = (torch.randn(1), torch.randn(4, 8))
    plan = plan_for(fusionlab.capture(model, *inputs))
    fw = [c for c in plan.selected if c.graph.startswith("fw")]
    var_group = next(c for c in fw if "aten.var.correction" in c.ops)
    assert len(fw) >= 2
    ex = InductorGraphExecutor()
    fused = plan.compile(copy.deepcopy(model), executor=ex)
    bad = (torch.tensor([float("inf")]), inputs[1])
    assert torch.isnan(model(*bad)) and torch.isnan(fused(*bad))
    assert torch.allclose(fused(*inputs), model(*inputs))
    (refused,) = fused.report.failed
    assert refused.candidate == var_group.id
    assert "inputs with NaN/inf: non-finite where eager is finite" in refused.reason
    (graph,) = ex.graphs  # the forward graph compiled whole, the other group fused in it
    assert {k.group for k in graph.loops} - {None} == {c.id for c in fw if c is not var_group}
    assert not any(set(k.nodes) & set(var_group.nodes) for k in graph.loops)  # ATen calls, not loops


def test_graph_executor_can_run_every_other_op_as_aten(block):
    """eager_outside_groups=True: outside the groups Inductor generates no loop at all."""
    partial = plan_for(fusionlab.capture(block.model, *block.inputs, loss_fn=block.loss_fn), "none")
    picked = next(c for c in partial.candidates if "softmax" in c.pattern and c.graph.startswith("fw"))
    partial.select(picked.id)
    ex = InductorGraphExecutor(eager_outside_groups=True)
    chk = check_numerics(block.model, block.inputs, plan=partial, steps=1, executor=ex)
    assert chk.ok(), chk
    assert [s.candidate for s in chk.report.used] == [picked.id] and not chk.report.fallbacks
    (graph,) = [g for g in ex.graphs if g.kind == "forward"]
    assert graph.loops and all(k.group == picked.id for k in graph.loops)
    assert "torch.ops.aten" in graph.source  # the other ops: ATen calls from the wrapper
    (bw,) = [g for g in ex.graphs if g.kind == "backward"]  # nothing selected: compiled all the same
    assert bw.groups == () and all(k.group is None for k in bw.loops) and "torch.ops.aten" in bw.source


def test_graph_executor_recompiles_for_a_new_batch_size():
    zm, zm2 = zoo.get("mlp"), zoo.get("mlp", batch=5)
    plan = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")
    ex = InductorGraphExecutor()
    model = copy.deepcopy(zm.model)
    fused = plan.compile(model, executor=ex)
    for inputs in (zm.inputs, zm2.inputs):
        ref = copy.deepcopy(zm.model)
        want = ref(*inputs)  # the mlp returns its loss
        want.backward()
        got = fused(*inputs)
        got.backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
            p.grad = None
    assert sorted(g.kind for g in ex.graphs) == ["backward", "backward", "forward", "forward"]  # per shape
    assert not fused.report.failed and not fused.report.fallbacks


# --------------------------------------------------------------------------- the optimizer update in the table


def _captured_with_optimizer(name: str, optimizer="adamw", **settings):
    zm = zoo.get(name)
    cap = fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn, optimizer=optimizer, **settings)
    return zm, fusionlab.FusionPlan(cap)


def _shares_are_sane(res: ProfileResult) -> None:
    df = res.table()
    assert "update share" in df.columns  # in the short default view
    for v in res.variants:
        # the update is timed inside each measured step: one reading per step, never longer than its step
        assert len(v.update_samples) == len(v.samples) > 0
        assert all(0 < u <= s for u, s in zip(v.update_samples, v.samples))
        assert 0 < v.update_share <= 1 and df.loc[v.name, "update share"] == v.update_share
        assert v.update_ms <= v.max_ms
    assert "update share" in res.text() and "update share" in res.text(detail=True)


def test_reference_rows_for_adamw_on_cpu_and_the_update_share():
    zm, plan = _captured_with_optimizer("mlp", "adamw", lr=1e-3)
    res = profile(zm.model, zm.inputs, plan=plan, steps=2, warmup=0, compare="eager", profile_step=False)
    # torch 2.13 offers foreach=True and fused=True AdamW on CPU (each tried with a real call)
    assert [v.name for v in res.variants] == ["eager", "foreach (reference)", "fused (reference)"]
    refs = [v for v in res.variants if v.reference]
    assert [v.name for v in refs] == ["foreach (reference)", "fused (reference)"]
    assert "AdamW(fused=True) (reference)" in res["fused (reference)"].executor
    assert not res["eager"].reference
    _shares_are_sane(res)
    assert any("not fusionlab plans" in n for n in res.notes)
    assert any(n.startswith("update share:") and "time.perf_counter" in n for n in res.notes)
    df = res.table(detail=True)
    assert df["reference row"].tolist() == [False, True, True]
    # same weights, same inputs, AdamW either way: the losses follow eager's
    assert res.loss_rel_diff("fused (reference)") < 1e-5 and res.loss_rel_diff("foreach (reference)") < 1e-5


def test_no_reference_rows_without_the_forms_or_a_captured_update(monkeypatch):
    from fusionlab.profiler import harness

    zm, plan = _captured_with_optimizer("mlp", "adamw", lr=1e-3)
    # RMSprop: fusionlab does not fuse it, so PyTorch's forms of it are no reference for fusionlab
    rms = profile(zm.model, zm.inputs, plan=plan, steps=2, warmup=0, compare="eager", profile_step=False,
                  optimizer=lambda ps: torch.optim.RMSprop(ps, lr=1e-3))
    assert [v.name for v in rms.variants] == ["eager"]
    _shares_are_sane(rms)
    # a form this torch does not have is found by calling it, and said in a note
    monkeypatch.setitem(harness.REFERENCE_FORMS, torch.optim.RMSprop, ("foreach", "fused"))
    tried = profile(zm.model, zm.inputs, plan=plan, steps=1, warmup=0, compare="eager", profile_step=False,
                    optimizer=lambda ps: torch.optim.RMSprop(ps, lr=1e-3))
    assert [v.name for v in tried.variants] == ["eager", "foreach (reference)"]
    assert any("RMSprop(fused=True) is not a reference row" in n for n in tried.notes)
    # the plan's capture has no optimizer update: nothing fused to compare with, no reference rows
    plain = plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn))
    res = profile(zm.model, zm.inputs, plan=plain, steps=1, warmup=0, compare="eager", profile_step=False,
                  references=True)
    assert [v.name for v in res.variants] == ["eager"] and not res["eager"].reference
    # no optimizer at all: no update times, no share column
    none = profile(zm.model, zm.inputs, plan=plan, steps=1, warmup=0, compare="eager", profile_step=False,
                   optimizer=None)
    assert not none.has_update_times and "update share" not in none.table().columns
    assert [v.name for v in none.variants] == ["eager"]
