"""Matmul epilogues: found as one candidate, generated as one tl.dot kernel, equal to eager.

fp32: every output within ``1e-4`` of eager relative to the output's largest magnitude
(``max|fused - eager| / max|eager|``; element-wise relative error is meaningless where gelu
or a residual add leaves an element near 0), and ``Kernel.check`` (the tolerance table).
fp16 and bf16: ``Kernel.check``, i.e. ``fusionlab.check.TOLERANCES`` (5e-3 / 4e-2). bf16 dots
run in the interpreter with their operands widened to fp32 (``DOT_FP32``, see
``fusionlab/codegen/matmul.py``); ``test_interpreter_bf16_dot_reads_raw_bits`` pins why.
Shapes are small and not multiples of the block sizes; each kernel also runs with 16x16x16
tiles and ``GROUP_M=2`` (several tiles along M, N and K, partial tiles at every edge).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusionlab as fl
from fusionlab.codegen.launch import matmul_config as gpu_config
from fusionlab.codegen.launch import matmul_interpreter_config as interpreter_config
from fusionlab.epilogue import find, split_domain
from fusionlab.kernels import Kernel, extract_subgraph

SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}


class Heads(nn.Module):
    """Four matmuls, each with a different epilogue, each a graph output."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(24, 40)  # addmm -> gelu
        self.fc2 = nn.Linear(40, 24, bias=False)  # mm -> residual add
        self.w = nn.Parameter(torch.randn(29, 24) / 5)  # mm with a transposed weight -> relu -> cast

    def forward(self, x, q, k):
        h = F.gelu(self.fc1(x), approximate="tanh")
        y = self.fc2(h) + x
        s = torch.bmm(q, k.transpose(1, 2)) * 0.125  # the second operand transposed: read by strides
        z = torch.relu(x[0] @ self.w.t()).to(torch.float16)
        return h, y, s, z


EXPECTED = {"matmul+bias+gelu", "matmul+residual", "bmm+scale", "matmul+relu+cast"}


def _heads(dtype):
    torch.manual_seed(0)
    model = Heads().to(dtype)
    inputs = (torch.randn(5, 7, 24, dtype=dtype), torch.randn(3, 20, 12, dtype=dtype),
              torch.randn(3, 18, 12, dtype=dtype))
    return model, inputs


@pytest.fixture(scope="module")
def captures():
    out = {}

    def get(dtype):
        if dtype not in out:
            model, inputs = _heads(dtype)
            out[dtype] = fl.capture(model, *inputs, train=False)
        return out[dtype]

    return get


def _kernels(cap) -> list[Kernel]:
    plan = fl.FusionPlan(cap)
    plan.select(*[c for c in plan.candidates if c.kind == "matmul"])
    ks = plan.kernels(validate=False)
    assert len(ks) == len(plan.selected), ks
    return list(ks)


def test_each_matmul_and_its_epilogue_is_one_named_candidate(captures):
    cap = captures(torch.float32)
    cands = fl.find_candidates(cap)
    mm = [c for c in cands if c.kind == "matmul"]
    assert {c.pattern for c in mm} == EXPECTED, cands
    for c in mm:
        ops_ = [o for o in c.ops if o in ("aten.mm.default", "aten.addmm.default", "aten.bmm.default")]
        assert len(ops_) == 1, c
        assert c.kernels_unfused >= 2 and c.bytes_saved > 0
    # the registry shape: find(graph) gives the same groups
    groups = find(cap.graphs[0])
    assert sorted(tuple(m.name for m in g.members) for g in groups) == sorted(c.nodes for c in mm)
    # the matmuls' reasons are gone from why_not; nothing else left out names them
    assert "addmm" not in cands.why_not(limit=100)


def _rel(got, ref) -> float:
    got, ref = got.double(), ref.double()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_match_eager(captures, dtype):
    kernels = _kernels(captures(dtype))
    # fp16: the .to(float16) is no cast at all
    assert {k.source.pattern for k in kernels} == (
        EXPECTED if dtype != torch.float16 else EXPECTED - {"matmul+relu+cast"} | {"matmul+relu"})
    for k in kernels:
        assert k.source.kind == "matmul"
        res = k.check(seed=1)
        assert res.ok, (res, k.source.source)
        if dtype == torch.float32:
            # the same inputs with small tiles: many programs, partial tiles on every edge
            for seed in (2, 3):
                ins = k.random_inputs(seed=seed)
                ref = k.subgraph(*ins)
                for cfg in (None, SMALL):
                    got = k(*ins, config=cfg)
                    for g, r in zip(got, ref):
                        assert g.shape == r.shape and g.dtype == r.dtype
                        assert _rel(g, r) <= 1e-4, (k.name, cfg, _rel(g, r))
        else:
            ins = k.random_inputs(seed=4)
            res = k.check(inputs=ins)
            assert res.ok, res


def test_kernel_source_reads_like_the_graph(captures):
    k = next(k for k in _kernels(captures(torch.float32)) if k.source.pattern == "matmul+relu+cast")
    src = k.source.source
    # the weight's transpose is read through its strides (columns contiguous), never copied
    assert "a transposed view, read by strides" in src and ".contiguous()" not in src
    assert 'tl.dot(a_tile, b_tile, acc, input_precision="ieee")' in src
    # epilogue: one op a line, named after its node, the ATen op in a comment, before the store
    lines = [ln.strip() for ln in src.splitlines()]
    relu = next(i for i, ln in enumerate(lines) if ln.startswith("relu = tl."))
    store = next(i for i, ln in enumerate(lines) if ln.startswith("tl.store("))
    assert "# aten.relu.default" in lines[relu] and relu < store
    bmm = next(k for k in _kernels(captures(torch.float32)) if k.source.pattern == "bmm+scale")
    assert "pid_b = tl.program_id(1)" in bmm.source.source


def test_bf16_kernel_widens_dot_operands_only_in_the_interpreter(captures):
    k = _kernels(captures(torch.bfloat16))[0]
    src = k.source.source
    assert "if DOT_FP32:" in src and 'DOT_FP32=in_' in src
    assert k.source.constexprs["DOT_FP32"] == 0  # what a GPU compile gets: bf16 tensor-core dots


def test_interpreter_bf16_dot_reads_raw_bits():
    """Why DOT_FP32 exists: the Triton interpreter (triton 3.9) keeps bf16 in numpy as uint16
    and its ``create_dot`` hands those bit patterns to ``np.matmul`` (only 8-bit floats are
    converted). The same kernel with fp16 or fp32 operands, or bf16 widened first, is right.
    If this starts failing, triton fixed it: DOT_FP32 can go."""
    import triton
    import triton.language as tl

    @triton.jit
    def dot(a_ptr, b_ptr, c_ptr, WIDEN: tl.constexpr):
        r = tl.arange(0, 16)
        a = tl.load(a_ptr + r[:, None] * 16 + r[None, :])
        b = tl.load(b_ptr + r[:, None] * 16 + r[None, :])
        if WIDEN:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        tl.store(c_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, b))

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    for dtype, widen, ok in ((torch.float32, False, True), (torch.float16, False, True),
                             (torch.bfloat16, False, False), (torch.bfloat16, True, True)):
        x, y = a.to(dtype), b.to(dtype)
        c = torch.empty(16, 16)
        dot[(1,)](x, y, c, WIDEN=widen)
        ref = x.float() @ y.float()
        assert (_rel(c, ref) <= 1e-2) == ok, (dtype, widen, _rel(c, ref))
        if not ok:  # exactly the raw 16-bit patterns multiplied as integers
            raw = x.view(torch.int16).to(torch.int32) & 0xFFFF
            assert _rel(c, raw.double() @ (y.view(torch.int16).to(torch.int32) & 0xFFFF).double()) <= 1e-6


def test_configs_come_from_the_shapes():
    big = gpu_config(4096, 4096, 4096, 1, torch.float16)
    assert big == {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}
    small = gpu_config(128, 512, 128, 1, torch.float32)
    assert small["BLOCK_K"] == 32 and small["num_stages"] == 3
    assert (128 // small["BLOCK_M"]) * (512 // small["BLOCK_N"]) >= 32  # enough tiles to spread over SMs
    assert gpu_config(64, 64, 16, 1, torch.float32)["num_stages"] == 2  # one K step: nothing to pipeline
    assert interpreter_config(35, 40, 24)["BLOCK_M"] == 64  # big tiles, one program where it fits


def test_split_domain():
    from fusionlab.epilogue import MatmulSpec

    def spec(op, batch, m, n):
        node = type("Node", (), {"target": op})()
        return MatmulSpec(node, None, None, None, 1.0, 1.0, batch, m, n, 16)

    mm = spec(torch.ops.aten.mm.default, 1, 128, 512)
    assert split_domain((2, 64, 512), mm) == ((), (0, 1), (2,))
    assert split_domain((128, 8, 64), mm) == ((), (0,), (1, 2))
    assert split_domain((64, 1024), mm) is None  # rows and columns mixed
    bmm = spec(torch.ops.aten.bmm.default, 8, 64, 32)
    assert split_domain((2, 4, 64, 32), bmm) == ((0, 1), (2,), (3,))
    assert split_domain((8, 32, 64), bmm) is None


def test_gpt2_block_mlp_is_one_kernel_and_three_adamw_steps_equal_eager(zoo_model, zoo_plan):
    from test_backend import run_steps

    zm = zoo_model("gpt2-block")
    plan = zoo_plan("gpt2-block")
    fused = plan.compile(copy.deepcopy(zm.model))
    run_steps(zm, fused, copy.deepcopy(zm.model), "adamw")
    used = {st.candidate for st in fused.report.used}
    assert "fw0.matmul+bias+gelu.0" in used and "bw0.matmul+gelu_backward.0" in used, str(fused.report)
    assert len(fused.report.used) == len(plan.selected), str(fused.report)
    cand = plan.candidates.by_id("fw0.matmul+bias+gelu.0")
    assert "aten.addmm.default" in cand.ops and "aten.tanh.default" in cand.ops
    summary = plan.summary()
    assert summary.matmul_epilogues == 2 and "2 with a fused epilogue" in str(summary)
    assert summary.nonmatmul_after == summary.kernels_after - summary.matmul_kernels


@pytest.mark.slow
def test_gpt2_two_layers_mlp_is_one_kernel_and_three_adamw_steps_equal_eager(zoo_model, zoo_plan):
    from test_backend import run_steps

    zm = zoo_model("gpt2-tiny")
    plan = zoo_plan("gpt2-tiny")
    fused = plan.compile(copy.deepcopy(zm.model))
    run_steps(zm, fused, copy.deepcopy(zm.model), "adamw")
    used = [st.candidate for st in fused.report.used]
    assert sum(c.startswith("fw0.matmul+bias+gelu.") for c in used) == 2, str(fused.report)
    assert len(fused.report.used) == len(plan.selected), str(fused.report)


def test_matmul_without_pointwise_epilogue_says_why(zoo_candidates):
    why = zoo_candidates("gpt2-block").why_not(limit=200)
    assert "matmul aten.addmm.default runs as a library kernel: its result feeds a reduction" in why
    assert "no pointwise op reads its result" in why


def test_subgraph_is_the_eager_reference(captures):
    cap = captures(torch.float32)
    plan = fl.FusionPlan(cap)
    cand = next(c for c in plan.candidates if c.pattern == "bmm+scale")
    sub = extract_subgraph(cap.graphs[0].gm, cand)
    assert [n.target for n in sub.graph.nodes if n.op == "call_function"][0] is torch.ops.aten.bmm.default


def test_bf16_kernel_compiles_to_tensor_core_dots(captures, tmp_path, monkeypatch):
    """What the interpreter cannot run: the bf16 dot on tensor cores. It compiles for sm_80
    and sm_90 to mma instructions, with DOT_FP32 off, as a GPU launch would get it (these
    small tiles give mma.sync on sm_90 too: Triton uses wgmma from 64-row tiles, 4 warps).
    fp16 takes the same code path with another operand type (not compiled here, to keep this
    file fast; fp16 kernels run in the interpreter without any widening)."""
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path))
    for dtype in (torch.bfloat16,):
        k = next(k for k in _kernels(captures(dtype)) if k.source.pattern == "matmul+bias+gelu")
        for target, instr in (("sm_80", "mma.sync"), ("sm_90", "mma")):
            rep = k.inspect(target, cache=False)
            assert rep.ok, rep.error
            assert instr in rep.ptx, (dtype, target)


@pytest.mark.slow
def test_gpt2_two_layers_matmul_kernels_compile_for_sm80_and_sm90(zoo_plan):
    plan = zoo_plan("gpt2-tiny", select=None)
    plan.select(*[c for c in plan.candidates if c.kind == "matmul"])
    kernels = plan.kernels(validate=False)
    assert len(kernels) == 4 and all(k.source.kind == "matmul" for k in kernels)
    for target in ("sm_80", "sm_90"):
        reps = kernels.inspect(target, workers=2, progress=False)
        assert all(r.ok for r in reps), [r.error for r in reps if not r.ok]
        assert all("tt.dot" in r.stages["ttir"] and r.registers for r in reps)
