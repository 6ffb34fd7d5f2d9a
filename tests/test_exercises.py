"""Every exercise checker passes the reference answer (worked out the way a student would) and fails
typical wrong ones, each with a message that names the slip."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import fusionlab as fl
from fusionlab import exercises as ex
from fusionlab.cost import roofline
from fusionlab.profiler import ProfileResult, VariantResult


class Chain(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x * 2.0 + 1.0)


@pytest.fixture(scope="module")
def chain_capture():
    return fl.capture(Chain(), torch.randn(64, 128), train=False)


def test_feedback_unanswered_and_bool(chain_capture):
    fb = ex.op_by_op_bytes(..., chain_capture)
    assert fb.ok is None and not fb and "not answered" in str(fb) and "Hint" in str(fb)
    assert "<div" in fb._repr_html_()


# --------------------------------------------------------------------------- notebook 1


def test_op_by_op_bytes(chain_capture):
    m, n = 64, 128
    per_op = 4 * (m * n + m * n)  # three ops, each reads x-sized and writes x-sized, float32
    assert ex.op_by_op_bytes(3 * per_op, chain_capture)
    fb = ex.op_by_op_bytes(3 * 2 * m * n, chain_capture)  # elements
    assert not fb and "elements" in fb.message
    fb = ex.op_by_op_bytes(3 * 4 * m * n, chain_capture)  # reads only
    assert not fb and "also writes" in fb.message
    fb = ex.op_by_op_bytes(2 * 4 * m * n, chain_capture)  # the fused kernel's bytes
    assert not fb and "fused" in fb.message
    assert not ex.op_by_op_bytes("lots", chain_capture)


def test_roofline_us():
    nbytes, flops = 2 * 4 * 4096 * 4096, 5 * 4096 * 4096  # a fused softmax on 4096 x 4096 floats
    ref_us = nbytes / 3350e9 * 1e6  # memory-bound on an H100: bytes / bandwidth
    assert ex.roofline_us(ref_us, nbytes, flops, "h100")
    assert "seconds" in ex.roofline_us(ref_us * 1e-6, nbytes, flops, "h100").message
    fb = ex.roofline_us(flops / 67e12 * 1e6, nbytes, flops, "h100")
    assert not fb and "compute time" in fb.message
    fb = ex.roofline_us(nbytes / (3350 * 2**30) * 1e6, nbytes, flops, "h100")
    assert not fb and "10^9" in fb.message
    assert not ex.roofline_us(ref_us + 3.0, nbytes, flops, "h100")


def test_fair_speedup():
    rng = random.Random(1)
    eager = [0.012, 0.011] + [0.010 + rng.random() * 0.002 for _ in range(20)]
    comp = [4.0, 0.009] + [0.006 + rng.random() * 0.002 for _ in range(20)]
    ref = statistics.median(eager[2:]) / statistics.median(comp[2:])
    assert ex.fair_speedup(ref, eager, comp, warmup=2)
    fb = ex.fair_speedup(statistics.mean(eager) / statistics.mean(comp), eager, comp, warmup=2)
    assert not fb and "compiling" in fb.message
    fb = ex.fair_speedup(1 / ref, eager, comp, warmup=2)
    assert not fb and "upside down" in fb.message
    fb = ex.fair_speedup(min(eager) / min(comp), eager, comp, warmup=2)
    assert not fb and "fastest" in fb.message


# --------------------------------------------------------------------------- notebook 2


def test_kernel_counts(zoo_capture):
    cap = zoo_capture("gpt2-block")
    fw, bw = cap.graph("fw0"), cap.graph("bw0")
    count = {g.tag: sum(1 for n in g.gm.graph.nodes if g.nodes[n.name].kind in
                        ("pointwise", "reduction", "matmul", "opaque")) for g in (fw, bw)}
    assert ex.kernel_counts(count, cap)
    fb = ex.kernel_counts({"fw0": count["bw0"], "bw0": count["fw0"]}, cap)
    assert not fb and "swapped" in fb.message
    every = {g.tag: len(list(g.gm.graph.nodes)) for g in (fw, bw)}
    fb = ex.kernel_counts(every, cap)
    assert not fb and "placeholders" in fb.message
    calls = {g.tag: sum(1 for n in g.gm.graph.nodes if n.op == "call_function") for g in (fw, bw)}
    fb = ex.kernel_counts(calls, cap)
    assert not fb and "views" in fb.message
    assert not ex.kernel_counts({"fw0": count["fw0"]}, cap)


def test_best_backward_candidate(zoo_candidates):
    cands = zoo_candidates("gpt2-block")
    bw = [c for c in cands if c.graph == "bw0"]
    best = sorted(bw, key=lambda c: c.bytes_unfused - c.bytes_fused)[-1]
    assert ex.best_backward_candidate(best.id, cands)
    assert ex.best_backward_candidate(best, cands)
    fw_best = max((c for c in cands if c.graph == "fw0"), key=lambda c: c.bytes_saved)
    fb = ex.best_backward_candidate(fw_best.id, cands)
    assert not fb and "forward" in fb.message
    other = next(c for c in bw if c.bytes_saved < best.bytes_saved)
    assert not ex.best_backward_candidate(other.id, cands)
    fb = ex.best_backward_candidate("bw0.nothing.7", cands)
    assert not fb and "no candidate" in fb.message


def test_matmul_nodes(zoo_capture, zoo_candidates):
    cap, cands = zoo_capture("gpt2-block"), zoo_candidates("gpt2-block")
    fw = cap.graph("fw0")
    mms = [i.name for i in fw.kernel_nodes() if i.kind == "matmul" and ("fw0", i.name) in cands.left_out]
    fused = [i.name for i in fw.kernel_nodes() if i.kind == "matmul" and ("fw0", i.name) not in cands.left_out]
    assert mms and fused  # c_fc's addmm sits in its gelu's candidate (a matmul epilogue)
    assert ex.matmul_nodes(mms, cands)
    fb = ex.matmul_nodes(mms[:-1], cands)
    assert not fb and "missing" in fb.message
    view = next(n for (g, n), r in cands.left_out.items() if g == "fw0" and r.startswith("view"))
    fb = ex.matmul_nodes([*mms, view], cands)
    assert not fb and view in fb.message
    assert not ex.matmul_nodes("addmm", cands)
    fb = ex.matmul_nodes([*mms, *fused], cands)  # the fused matmul is not left out
    assert not fb and fused[0] in fb.message and "candidate" in fb.message


# --------------------------------------------------------------------------- notebook 3


@triton.jit
def _bias_gelu(x_ptr, b_ptr, y_ptr, n_cols, BLOCK: tl.constexpr, MASKED: tl.constexpr, TANH: tl.constexpr):
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < n_cols if MASKED else col < BLOCK * 1_000_000
    x = tl.load(x_ptr + row * n_cols + col, mask=mask, other=0.0)
    b = tl.load(b_ptr + col, mask=mask, other=0.0)
    v = x + b
    if TANH:
        inner = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        e = tl.exp(-2.0 * tl.abs(inner))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(inner >= 0, t, -t)
        y = 0.5 * v * (1.0 + t)
    else:
        y = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    tl.store(y_ptr + row * n_cols + col, y, mask=mask)


def _launcher(masked=True, tanh=False):
    def fn(x, bias, y):
        m, n = x.shape
        block = 256
        _bias_gelu[(m, triton.cdiv(n, block))](x, bias, y, n, BLOCK=block, MASKED=masked, TANH=tanh)
    return fn


def test_bias_gelu_kernel():
    assert ex.bias_gelu_kernel(_launcher())
    fb = ex.bias_gelu_kernel(_launcher(tanh=True))
    assert not fb and "tanh" in fb.message
    fb = ex.bias_gelu_kernel(lambda x, b, y: y.copy_(F.gelu(x)))
    assert not fb and "bias is missing" in fb.message
    fb = ex.bias_gelu_kernel(_launcher(masked=False))  # stores past the end of y: caught by the guard
    assert not fb and "mask the store" in fb.message, fb.message
    fb = ex.bias_gelu_kernel(lambda x, b, y: y[:, :-1].copy_((x + b)[:, :-1]))
    assert not fb and "never written" in fb.message, fb.message
    fb = ex.bias_gelu_kernel(lambda x, b: x)
    assert not fb and "raised TypeError" in fb.message


def test_fused_bytes(zoo_capture, zoo_candidates):
    cap, cands = zoo_capture("gpt2-block"), zoo_candidates("gpt2-block")
    c = next(c for c in cands if c.pattern == "layer_norm")
    g = cap.graph(c.graph)
    by_hand = sum(g.nodes[n].shape.numel() if hasattr(g.nodes[n].shape, "numel") else
                  _numel(g.nodes[n].shape) for n in c.inputs + c.outputs) * 4
    assert ex.fused_bytes(by_hand, c, cap)
    fb = ex.fused_bytes(c.bytes_unfused, c, cap)
    assert not fb and "one kernel each" in fb.message
    fb = ex.fused_bytes(by_hand / 4, c, cap)
    assert not fb and "elements" in fb.message
    reads = sum(g.nodes[n].nbytes for n in c.inputs)
    fb = ex.fused_bytes(reads, c, cap)
    assert not fb and "inputs" in fb.message


def _numel(shape):
    out = 1
    for s in shape:
        out *= s
    return out


# --------------------------------------------------------------------------- notebook 4


def _result(eager_ms, fused_ms, n=40, seed=0):
    rng = random.Random(seed)
    variants = [VariantResult(name, "test", "cpu", samples=[(ms + rng.random() * 0.4) * 1e-3 for _ in range(n)])
                for name, ms in (("eager", eager_ms), ("fusionlab", fused_ms))]
    return ProfileResult(model_name="m", device="cpu (1 threads)", steps=n, warmup=1, optimizer="adamw",
                         variants=variants)


def test_speedup():
    r = _result(10.0, 8.0)
    e, f = r["eager"].samples, r["fusionlab"].samples
    ref = statistics.median(e) / statistics.median(f)
    assert ex.speedup(ref, r)
    fb = ex.speedup(1 / ref, r)
    assert not fb and "upside down" in fb.message
    fb = ex.speedup(min(e) / min(f), r)
    assert not fb and "fastest" in fb.message


def test_verdict():
    fast = _result(10.0, 8.0)
    assert ex.verdict("faster", fast)
    fb = ex.verdict("no difference", fast)
    assert not fb and "decide" in fb.message
    assert not ex.verdict("slower", fast)
    same = _result(10.0, 10.0, n=8)
    assert ex.verdict("no difference", same), same.verdict("fusionlab")
    fb = ex.verdict("faster", same)
    assert not fb and "noise" in fb.message
    assert not ex.verdict("quick", same)


def test_best_group_on_gpu(zoo_plan):
    plan = zoo_plan("gpt2-block")
    groups = roofline(plan, "h100").groups
    best = max(groups, key=lambda g: g.seconds_unfused - g.seconds_fused)
    assert ex.best_group_on_gpu(best.id, plan, "h100")
    worst = min(groups, key=lambda g: g.seconds_unfused - g.seconds_fused)
    assert not ex.best_group_on_gpu(worst.id, plan, "h100")
    fb = ex.best_group_on_gpu("fw0.nothing.0", plan, "h100")
    assert not fb and "not a selected group" in fb.message


def _diff():
    """An InductorDiff as inductor_diff(plan) gives it for the GPT-2 block (its rows, as plain data)."""
    from fusionlab.inductor.diff import DiffRow, InductorDiff

    d = InductorDiff("GPT2Block")
    d.both = [DiffRow("both", "bw0", "bw0.pointwise.0", ("bw0.k0",), ("div_1", "pow_2"))]
    d.fusionlab_only = [DiffRow("fusionlab only", "fw0", "fw0.layer_norm.0", ("fw0.k0", "fw0.k3"), ("var_mean",),
                                "Inductor computes it in 2 loop nests (1 C++ function)"),
                        DiffRow("fusionlab only", "fw0", "fw0.matmul+bias+gelu.0", ("fw0.lib4", "fw0.k18"),
                                ("addmm_2", "mul_5"), "Inductor runs addmm_2 as its own call (fw0.lib4) and the "
                                "epilogue as fw0.k18: the product goes to memory and is read back")]
    d.inductor_only = [
        DiffRow("inductor only", "bw0", None, ("bw0.k5",), ("sub_4", "mul_25", "sum_6"),
                "sum_6: not fusable with its neighbours: reductions over different rows (domains or reduced dims "
                "differ)"),
        DiffRow("inductor only", "bw0", None, ("bw0.k10",), ("mm_1", "mm_3", "cat"), "cat: opaque op aten.cat.default")]
    return d


def test_inductor_only():
    d = _diff()
    assert ex.inductor_only({"bw0.k5": "mixed-order reduction", "bw0.k10": "opaque op"}, d)
    assert ex.inductor_only({"bw0.k5": "the column sum: reductions over different rows", "bw0.k10": "cat is opaque"}, d)
    fb = ex.inductor_only({"bw0.k5": "opaque op", "bw0.k10": "mixed-order reduction"}, d)  # reasons swapped
    assert not fb and "bw0.k5: the reason is not 'opaque op'" in fb.message
    fb = ex.inductor_only({"fw0.layer_norm.0": "view", "bw0.k10": "opaque op"}, d)  # a fusionlab-only candidate
    assert not fb and "fusionlab candidate" in fb.message and "missing" in fb.message
    fb = ex.inductor_only({"fw0.k18": "matmul epilogue", "bw0.k5": "mixed", "bw0.k10": "opaque"}, d)
    assert not fb and "fw0.matmul+bias+gelu.0, a group fusionlab makes" in fb.message
    fb = ex.inductor_only({"bw0.k0": "view", "bw0.k5": "mixed", "bw0.k10": "opaque"}, d)
    assert not fb and "both make" in fb.message
    assert not ex.inductor_only("bw0.k10", d)
    assert ex.inductor_only(..., d).ok is None


# --------------------------------------------------------------------------- notebook 5


class RMSNormSiLU(torch.nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return F.silu(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight)


class NoEps(RMSNormSiLU):
    def forward(self, x):
        return F.silu(x / x.pow(2).mean(-1, keepdim=True).sqrt() * self.weight)


class WeightUnused(RMSNormSiLU):
    def forward(self, x):
        return F.silu(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class LayerNormSiLU(RMSNormSiLU):
    def forward(self, x):
        return F.silu(F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight)


class SiLUFirst(RMSNormSiLU):
    def forward(self, x):
        s = F.silu(x)
        return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def test_rmsnorm_silu_module():
    assert ex.rmsnorm_silu_module(RMSNormSiLU)
    fb = ex.rmsnorm_silu_module(NoEps)
    assert not fb and "eps" in fb.message
    fb = ex.rmsnorm_silu_module(LayerNormSiLU)
    assert not fb and "LayerNorm" in fb.message
    fb = ex.rmsnorm_silu_module(SiLUFirst)
    assert not fb and "after the norm" in fb.message
    fb = ex.rmsnorm_silu_module(WeightUnused)
    assert not fb and "weight is missing" in fb.message
    fb = ex.rmsnorm_silu_module(torch.nn.SiLU)  # takes no (dim, eps)
    assert not fb and "raised TypeError" in fb.message


def test_forward_writes():
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), RMSNormSiLU(32), torch.nn.Linear(32, 32))
    cap = fl.capture(net, torch.randn(16, 32), loss_fn=lambda y: y.pow(2).mean())
    c = next(c for c in fl.find_candidates(cap) if c.graph == "fw0" and "rms_norm" in c.pattern)
    g = cap.graph("fw0")
    assert len(c.outputs) > 1  # the backward reads values from inside the group
    by_hand = sum(4 * _numel(g.nodes[n].shape) for n in c.outputs)
    assert ex.forward_writes(by_hand, c, cap)
    fb = ex.forward_writes(4 * 16 * 32, c, cap)
    assert not fb and "final activation" in fb.message
    fb = ex.forward_writes(c.bytes_fused, c, cap)
    assert not fb and "reads and writes" in fb.message


class RMSNormSiLUBlock(torch.nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.up, self.norm, self.act = torch.nn.Linear(d, d), torch.nn.RMSNorm(d, eps=1e-6), torch.nn.SiLU()
        self.down = torch.nn.Linear(d, d)

    def forward(self, x):
        return self.down(self.act(self.norm(self.up(x))))


def test_norm_apart_from_act():
    cap = fl.capture(RMSNormSiLUBlock(), torch.randn(16, 32), loss_fn=lambda y: y.pow(2).mean())
    plan = fl.FusionPlan(cap)
    fb = ex.norm_apart_from_act(plan)
    assert not fb and "no rule" in fb.message and "fw0." in fb.message
    assert ex.norm_apart_from_act(fl.FusionPlan(cap).never_fuse("norm", "act"))
    fb = ex.norm_apart_from_act(fl.FusionPlan(cap).never_fuse("norm", "down"))  # a rule that changes nothing
    assert not fb and "ops of both" in fb.message
    fb = ex.norm_apart_from_act(fl.FusionPlan(cap).never_fuse("mul", "neg"))  # ops only the forward has
    assert not fb and "the forward is apart" in fb.message and "bw0." in fb.message
    fb = ex.norm_apart_from_act(fl.FusionPlan(cap).never_fuse("norm", "act").never_fuse("mean", "rsqrt"))
    assert not fb and "split over" in fb.message  # the norm itself cut in two
    assert not ex.norm_apart_from_act(cap)
    assert ex.norm_apart_from_act(...).ok is None
