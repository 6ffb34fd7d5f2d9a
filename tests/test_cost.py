"""Tests for fusionlab.cost: hand-counted bytes and FLOPs, the GPU table, the roofline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusionlab
from fusionlab import cost
from fusionlab.cost import GPUS, get_gpu, kernel_seconds, roofline, step_cost


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


M, N = 64, 96


@pytest.fixture(scope="module")
def softmax_capture():
    return fusionlab.capture(Softmax(), torch.randn(M, N), train=False)


def test_softmax_hand_count(softmax_capture):
    """Softmax over an M x N fp32 tensor, unfused vs fused, counted by hand.

    The captured inference graph is softmax decomposed the way Inductor's core
    decompositions lower it: amax, sub, exp, sum, div. Each op runs as its own kernel that
    reads each input once and writes its result once (elements):

        amax  x[M,N] -> m[M,1]          reads MN       writes M
        sub   x - m  -> z[M,N]          reads MN + M   writes MN
        exp   z      -> e[M,N]          reads MN       writes MN
        sum   e      -> s[M,1]          reads MN       writes M
        div   e / s  -> y[M,N]          reads MN + M   writes MN
        total                           reads 5MN + 2M writes 3MN + 2M

    That is exactly the count of the Triton fused-softmax tutorial for its ``naive_softmax``
    (x.max, x - max, exp, sum, numerator / denominator: "reads 5MN + 2M elements and writes
    3MN + 2M"); the tutorial's fused kernel reads x once and writes y once: reads MN,
    writes MN. The model gives the same numbers in bytes (4 per fp32 element). FLOPs: one
    per element each op produces, one per element a reduction reads: 5MN either way.
    """
    unfused = step_cost(softmax_capture, fused=False)
    fused = step_cost(softmax_capture, fused=True)
    assert [k.ops[0] for k in unfused.kernels] == [
        "aten.amax.default", "aten.sub.Tensor", "aten.exp.default", "aten.sum.dim_IntList", "aten.div.Tensor",
    ]
    assert unfused.launches == 5 and fused.launches == 1
    assert unfused.reads == 4 * (5 * M * N + 2 * M)
    assert unfused.writes == 4 * (3 * M * N + 2 * M)
    assert fused.reads == 4 * M * N
    assert fused.writes == 4 * M * N
    assert unfused.flops == fused.flops == 5 * M * N
    # the same totals the plan summary reports
    plan = fusionlab.FusionPlan(softmax_capture)
    s0 = plan.summary()
    plan.select_all()
    s1 = plan.summary()
    assert unfused.bytes == s0.bytes_before and fused.bytes == s1.bytes_after
    assert fused.nonmatmul_bytes / unfused.nonmatmul_bytes == pytest.approx(2 * M * N / (8 * M * N + 4 * M))


def test_roofline_per_kernel_formula(softmax_capture):
    spec = get_gpu("h100")
    m = roofline(softmax_capture, "h100", fused=False)
    assert m.label == "modeled (H100 SXM spec)"
    for k in m.kernels:
        expect = max(k.bytes / (3350e9), k.flops / 67e12) + 3e-6
        assert k.seconds == pytest.approx(expect)
    assert m.seconds == pytest.approx(sum(kernel_seconds(k, spec)[0] for k in m.kernels))
    f = roofline(softmax_capture, "h100", fused=True)
    assert f.seconds < m.seconds
    assert f.launches == 1 and m.launches == 5
    # per-group breakdown: the one softmax group, unfused = the five kernels of the eager step
    assert len(f.groups) == 1 and len(m.groups) == 1
    g = f.groups[0]
    assert g.kernels_unfused == 5
    assert g.seconds_unfused == pytest.approx(m.seconds)
    assert g.seconds_fused == pytest.approx(f.seconds)
    assert "modeled (H100 SXM spec)" in str(f)


def test_gpu_table():
    for key in ("t4", "a100", "h100", "rtx4090"):
        spec = GPUS[key]
        assert spec.bandwidth_gbs > 100
        for p in ("fp32", "tf32", "fp16", "bf16"):
            assert spec.peak(p) >= spec.peak("fp32") > 1e12
        assert 2 <= spec.launch_us <= 6
        assert spec.label.startswith("modeled (") and spec.label.endswith(" spec)")
    assert GPUS["h100"].bandwidth_gbs == 3350.0
    assert GPUS["a100"].peak("bf16") == 312e12
    assert get_gpu("H100") is GPUS["h100"] and get_gpu("4090") is GPUS["rtx4090"]
    with pytest.raises(ValueError, match="unknown GPU"):
        get_gpu("v100x")


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 48)
        self.b = nn.Linear(48, 16, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_matmul_flops_from_shapes():
    cap = fusionlab.capture(TwoLinear(), torch.randn(8, 32), loss_fn=lambda y: y.sum())
    by_op: dict[str, list[int]] = {}
    for k in step_cost(cap, fused=False).kernels:
        if k.kind == "matmul":
            by_op.setdefault(k.ops[0], []).append(k.flops)
    # forward: addmm [8,32]x[32,48] + bias, mm [8,48]x[48,16]
    assert 2 * 8 * 32 * 48 + 8 * 48 in by_op["aten.addmm.default"]
    mm = sorted(by_op["aten.mm.default"])
    assert 2 * 8 * 48 * 16 in mm
    # backward: grad of b.weight [16,8]x[8,48], grad input [8,16]x[16,48], grad of a.weight [48,8]x[8,32]
    assert 2 * 16 * 8 * 48 in mm and 2 * 48 * 8 * 32 in mm
    m = roofline(cap, "t4", fused=False)
    assert m.cost.matmul_launches == len(mm) + 1
    assert all(k.precision == "fp32" for k in m.kernels)
    assert all(k.precision == "tf32" for k in roofline(cap, "a100", fused=False, tf32=True).kernels
               if k.kind == "matmul")


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.c(x)


def test_convolution_flops():
    cap = fusionlab.capture(Conv(), torch.randn(2, 3, 10, 10), train=False)
    (k,) = [k for k in step_cost(cap, fused=False).kernels if k.kind == "matmul"]
    out = 2 * 8 * 10 * 10
    assert k.flops == 2 * out * 3 * 3 * 3 + out


def test_step_cost_matches_plan_summary_on_gpt2_block(zoo_plan):
    plan = zoo_plan("gpt2-block")
    s = plan.summary()
    u, f = step_cost(plan, fused=False), step_cost(plan, fused=True)
    assert (u.bytes, u.launches) == (s.bytes_before, s.kernels_before)
    assert (f.bytes, f.launches) == (s.bytes_after, s.kernels_after)
    assert u.matmul_launches == f.matmul_launches == s.matmul_kernels
    assert f.nonmatmul_bytes <= 0.5 * u.nonmatmul_bytes
    # only the groups a backend used: a subset fuses less
    some = [c.id for c in plan.selected[:3]]
    part = step_cost(plan, fused=True, selected=some)
    assert f.bytes < part.bytes < u.bytes
    # several GPUs at once; fusing never makes the modeled step slower
    for g, (a, b) in cost.compare_gpus(plan).items():
        assert b.seconds < a.seconds, g
        assert a.label == GPUS[g].label
