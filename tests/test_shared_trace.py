"""Fused steps run their capture's trace (fusionlab.shared_trace): no second Dynamo and
AOTAutograd trace per ``plan.compile``, the same values as eager on the step's own model,
each backward run by the code of the step whose forward it follows, and a trace of the step's
own, before anything ran, where Dynamo's guards reject the capture's.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fusionlab
from fusionlab import zoo
from fusionlab.capture import default_loss
from fusionlab.executors import InductorGraphExecutor
from fusionlab.plan import plan_for


def _eager(model, zm, inputs=None):
    loss = (zm.loss_fn or default_loss)(model(*(inputs or zm.inputs)))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_step(fused, model, zm, inputs=None):
    """One fused step of `model` equals eager's on a copy of it (loss, every gradient, buffers)."""
    ref = copy.deepcopy(model)
    loss = fused(*(inputs or zm.inputs))
    loss.backward()
    want_loss, want_grads = _eager(ref, zm, inputs)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-5, atol=1e-6)
    for p, w in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-5)
    for b, w in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(b, w)


def _perturbed(model):
    """A copy with other weights: a step that read the captured model's would not match eager."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return other


@pytest.mark.usefixtures("empty_caches")
def test_a_fused_step_runs_the_captures_trace_on_its_own_model():
    zm = zoo.get("mlp")
    cap = fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    assert cap.trace is not None and [g.ref.tag for g in cap.trace.graphs] == ["fw0", "bw0"]
    before = {g.tag: len(g.gm.graph.nodes) for g in cap.graphs}
    plan = plan_for(cap, "all")
    model = _perturbed(zm.model)
    fused = plan.compile(model, executor=InductorGraphExecutor())
    _assert_step(fused, model, zm)
    assert fused.shares_trace and fused._run.compiled is None  # no trace of its own
    assert len(fused.report.used) == len(plan.selected)
    # the Triton path too (fusionlab's own kernels, in the interpreter on a CPU)
    tri = plan.compile(_perturbed(zm.model))
    _assert_step(tri, tri.model, zm)
    assert tri.shares_trace and len(tri.report.used) == len(plan.selected)
    assert {g.tag: len(g.gm.graph.nodes) for g in cap.graphs} == before  # the capture's graphs as they were


@pytest.mark.usefixtures("empty_caches")
def test_each_backward_runs_the_code_of_its_own_forward():
    zm = zoo.get("mlp")
    cap = fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    plan = plan_for(cap, "all")
    steps = [plan.compile(_perturbed(zm.model), executor=InductorGraphExecutor()) for _ in range(2)]
    ran = {}

    def counted(fn, i):
        def call(args):
            ran.setdefault(i, []).append(1)
            return fn(args)
        return call

    bw = cap.trace.graphs[1]
    for i, s in enumerate(steps):
        s.backend.attach(cap.trace.graphs)
        slot = s.backend.attached(bw)
        slot.fn = counted(slot.fn, i)
    refs = [copy.deepcopy(s.model) for s in steps]
    losses = [s(*zm.inputs) for s in steps]
    losses[1].backward()  # the second step's backward first
    assert ran == {1: [1]}
    losses[0].backward()
    assert ran == {0: [1], 1: [1]}
    for s, ref in zip(steps, refs):
        _, want = _eager(ref, zm)
        for p, w in zip(s.model.parameters(), want):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("empty_caches")
def test_a_step_the_trace_does_not_fit_traces_for_itself_before_anything_ran():
    zm = zoo.get("cnn-bn")  # BatchNorm: a step that ran twice would move the running stats twice
    cap = fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn)
    plan = plan_for(cap, "all")
    model = _perturbed(zm.model)
    fused = plan.compile(model, executor=InductorGraphExecutor())
    _assert_step(fused, model, zm)
    assert fused.shares_trace
    other = zoo.get("cnn-bn", batch=3).inputs  # another batch size: Dynamo's guards reject the trace
    model.zero_grad(set_to_none=True)
    _assert_step(fused, model, zm, other)
    assert not fused.shares_trace and fused._run.compiled is not None
    assert fused.report.graphs[-2:] == ["fw0", "bw0"]  # compiled again for the new shapes

    torch._dynamo.reset()  # Dynamo forgot the capture's trace: a new step traces for itself
    again = plan.compile(_perturbed(zm.model), executor=InductorGraphExecutor())
    _assert_step(again, again.model, zm)
    assert not again.shares_trace


class _Breaks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        torch._dynamo.graph_break()
        return self.b(h).sum()


@pytest.mark.usefixtures("empty_caches")
def test_a_capture_with_graph_breaks_keeps_no_trace():
    torch.manual_seed(0)
    model, x = _Breaks(), torch.randn(4, 8)
    cap = fusionlab.capture(model, x)
    assert cap.breaks and cap.trace is None
    fused = plan_for(cap, "all").compile(copy.deepcopy(model), executor=InductorGraphExecutor())
    loss = fused(x)
    loss.backward()
    torch.testing.assert_close(loss.detach(), model(x).detach())
    assert not fused.shares_trace
