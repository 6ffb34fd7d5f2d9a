"""Codegen against eager: random pointwise chains and reductions, every layout and dtype we claim.

Graphs come from make_fx with Inductor's decompositions (the same ATen level capture
produces, without dynamo's cost), so hypothesis can try many programs quickly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx

import fusionlab  # noqa: F401  (interpreter set-up before triton)
from fusionlab.candidates import graph_candidates
from fusionlab.capture import CapturedGraph, node_facts
from fusionlab.codegen import generate
from fusionlab.codegen.domain import make_layout
from fusionlab.kernels.kernel import Kernel, build_kernel, extract_subgraph

GOLDEN = Path(__file__).parent / "golden"
SIZES = [1, 2, 3, 5, 7, 13, 33]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def trace(fn, *inputs) -> CapturedGraph:
    gm = make_fx(fn, decomposition_table=select_decomp_table())(*inputs)
    return CapturedGraph(0, "inference", gm, node_facts(gm))


def check_all(graph: CapturedGraph, inputs=None, persistent_max: int = 4096, min_candidates: int = 1):
    """Every candidate of `graph` builds and matches eager; returns the kernels."""
    cands, _ = graph_candidates(graph)
    assert len(cands) >= min_candidates, f"expected candidates in\n{graph.gm.code}"
    kernels = []
    for c in cands:
        kernel, status = build_kernel(c, graph, persistent_max=persistent_max, validate=True, seed=0)
        assert kernel is not None, f"{status}\n{graph.gm.code}"
        if inputs is not None:
            res = kernel.check(inputs=inputs(c))
            assert res.ok, f"{res}\n{kernel.source.source}"
        kernels.append(kernel)
    return kernels


# --------------------------------------------------------------------------- strategies


@st.composite
def layouts(draw, ndim_min=1, ndim_max=3):
    """A shape and a way to lay the tensor out in memory."""
    ndim = draw(st.integers(ndim_min, ndim_max))
    shape = tuple(draw(st.sampled_from(SIZES)) for _ in range(ndim))
    layout = draw(st.sampled_from(["contiguous", "transposed", "expanded", "sliced"]))
    return shape, layout


def make_input(shape, layout, dtype, gen, special: bool = False) -> torch.Tensor:
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(shape[::-1], generator=gen).to(dtype).permute(*reversed(range(len(shape))))
    elif layout == "expanded" and len(shape) >= 1:
        base_shape = (1,) + shape[1:]
        t = torch.randn(base_shape, generator=gen).to(dtype).expand(shape)
    elif layout == "sliced" and len(shape) >= 1:
        t = torch.randn(shape[:-1] + (shape[-1] * 2,), generator=gen).to(dtype)[..., ::2]
    else:
        t = torch.randn(shape, generator=gen).to(dtype)
    if special and t.numel() >= 3 and layout != "expanded":
        flat = t.view(-1) if t.is_contiguous() else None
        if flat is not None:
            flat[0] = float("nan")
            flat[1] = float("inf")
            flat[2] = float("-inf")
    return t


UNARY = {
    "exp": torch.exp, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "gelu": torch.nn.functional.gelu, "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "silu": torch.nn.functional.silu, "abs": torch.abs, "neg": torch.neg, "sq": lambda x: x * x,
    "rsqrt_abs": lambda x: torch.rsqrt(x.abs() + 1), "log_abs": lambda x: torch.log(x.abs() + 1e-3),
    "sin": torch.sin, "pow3": lambda x: x.pow(3), "clamp": lambda x: x.clamp(-0.5, 0.5),
    "erf": torch.erf, "where": lambda x: torch.where(x > 0, x, 0.1 * x),
}
BINARY = {
    "add": torch.add, "mul": torch.mul, "sub": torch.sub, "div": lambda a, b: a / (b.abs() + 0.5),
    "max": torch.maximum, "min": torch.minimum,
}


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    lay=layouts(),
    dtype=st.sampled_from(DTYPES),
    ops=st.lists(st.sampled_from(sorted(UNARY) + sorted(BINARY)), min_size=2, max_size=6),
    bias_last=st.booleans(),
    special=st.booleans(),
)
def test_random_pointwise_chains(lay, dtype, ops, bias_last, special):
    shape, layout = lay
    gen = torch.Generator().manual_seed(0)
    x = make_input(shape, layout, dtype, gen, special)
    y = make_input((shape[-1],) if bias_last else shape, "contiguous", dtype, gen)

    def fn(x, y):
        h = x
        for op in ops:
            h = UNARY[op](h) if op in UNARY else BINARY[op](h, y)
        return h * 1.5

    graph = trace(fn, x, y)
    cands, _ = graph_candidates(graph)
    for c in cands:
        kernel, status = build_kernel(c, graph, validate=True, seed=1)
        assert kernel is not None, f"{status}\n{graph.gm.code}"
        # the captured inputs themselves (NaN, inf, strides) as well as fresh random ones
        env = dict(zip([n.name for n in graph.gm.graph.nodes if n.op == "placeholder"], (x, y)))
        ins = [env[i] for i in c.inputs if i in env]
        if len(ins) == len(c.inputs):
            res = kernel.check(inputs=ins)
            assert res.ok, f"{res}\n{kernel.source.source}"


REDUCTIONS = {
    "softmax": lambda x, d: torch.softmax(x, d),
    "log_softmax": lambda x, d: torch.log_softmax(x, d),
    "sum": lambda x, d: x.sum(d, keepdim=True) * x,
    "mean": lambda x, d: x - x.mean(d, keepdim=True),
    "amax": lambda x, d: x.amax(d, keepdim=True) + x,
    "var": lambda x, d: x.var(d, keepdim=True) + x,
    "layer_norm": lambda x, d: torch.nn.functional.layer_norm(x, x.shape[-1:]),
    "rms_norm": lambda x, d: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
    "sum_nokeep": lambda x, d: x.exp().sum(d),
}


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    lay=layouts(ndim_min=2, ndim_max=3),
    dtype=st.sampled_from(DTYPES),
    red=st.sampled_from(sorted(REDUCTIONS)),
    dim=st.integers(0, 2),
    long_rows=st.booleans(),
    prologue=st.sampled_from(["none", "scale", "bias"]),
)
def test_random_reductions(lay, dtype, red, dim, long_rows, prologue):
    shape, layout = lay
    dim = dim % len(shape)
    gen = torch.Generator().manual_seed(0)
    x = make_input(shape, layout, dtype, gen)
    b = make_input(shape[-1:], "contiguous", dtype, gen)

    def fn(x, b):
        h = x * 0.5 if prologue == "scale" else (x + b if prologue == "bias" else x)
        return REDUCTIONS[red](h, dim)

    graph = trace(fn, x, b)
    cands, _ = graph_candidates(graph)
    # persistent_max=4 forces the looped (multi-pass) kernel for rows longer than 4
    for c in cands:
        kernel, status = build_kernel(c, graph, persistent_max=4 if long_rows else 4096, validate=True, seed=2)
        assert kernel is not None, f"{status}\n{graph.gm.code}"


def test_softmax_one_kernel_and_looped_variant():
    x = torch.randn(6, 50)
    graph = trace(lambda x: torch.softmax(x, -1), x)
    cands, _ = graph_candidates(graph)
    assert len(cands) == 1 and cands[0].kernels_unfused == 5
    persistent = generate(cands[0], graph)
    looped = generate(cands[0], graph, persistent_max=16)
    assert persistent.kind == "reduction" and looped.kind == "looped_reduction"
    assert "for roffset in range(0, n_cols, RBLOCK):" in looped.source
    for ks in (persistent, looped):
        res = Kernel(ks, extract_subgraph(graph.gm, cands[0])).check(seed=3)
        assert res.ok, res


def test_nan_and_inf_propagate_like_eager():
    x = torch.tensor([[0.5, float("nan"), -1.0, 2.0], [float("inf"), 1.0, -float("inf"), 0.0]])
    graph = trace(lambda x: (torch.relu(x) + torch.maximum(x, x * 0.5)).amax(-1, keepdim=True) + x, x)
    for k in check_all(graph, inputs=lambda c: [x]):
        assert k.check_result.ok


def test_int_and_bool_values():
    x = torch.randn(4, 7)
    m = torch.rand(4, 7) > 0.5
    i = torch.randint(0, 5, (4, 7))

    def fn(x, m, i):
        keep = m & (x > 0)
        return torch.where(keep, x, -x) * i + (i + 1), keep.logical_not()

    check_all(trace(fn, x, m, i))


def test_reduction_over_non_last_dims_by_index_math():
    x = torch.randn(3, 5, 7).permute(2, 0, 1)  # non-contiguous
    graph = trace(lambda x: (x * 2).sum([0, 1]) + 1, x)
    (k,) = check_all(graph)
    assert "n_rows, n_cols = 5, 21" in k.source.source
    assert ".contiguous()" not in k.source.source and "clone" not in k.source.source


def test_multi_output_layer_norm_kernel():
    x = torch.randn(4, 33)
    w, b = torch.randn(33), torch.randn(33)
    graph = trace(lambda x, w, b: torch.ops.aten.native_layer_norm(x, [33], w, b, 1e-5), x, w, b)
    (k,) = check_all(graph)
    assert len(k.source.meta["outputs"]) == 3  # output, mean, rstd


def test_block_sizes_follow_shapes():
    small = trace(lambda x: torch.softmax(x, -1), torch.randn(2, 10))
    big = trace(lambda x: torch.softmax(x, -1), torch.randn(64, 1000))
    ks_small = generate(graph_candidates(small)[0][0], small)
    ks_big = generate(graph_candidates(big)[0][0], big)
    assert ks_small.constexprs["RBLOCK"] == 16 and ks_big.constexprs["RBLOCK"] == 1024
    assert ks_big.num_warps > ks_small.num_warps
    assert len(ks_big.configs) >= 2


def test_index_math_uses_int64_when_needed():
    lay = make_layout((70000, 40000), (), {"in_x": (40000, 1)})
    assert lay.needs_int64()
    assert not make_layout((1000, 1000), (), {"in_x": (1000, 1)}).needs_int64()


def test_kernel_refuses_inputs_it_was_not_generated_for():
    graph = trace(lambda x: torch.exp(x) * 2, torch.randn(4, 8))
    (k,) = check_all(graph)
    with pytest.raises(ValueError, match="generated for shape"):
        k(torch.randn(8, 4))


def _normalise(src: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", src.strip()) + "\n"


def test_golden_softmax_kernel():
    """Process replay: a change that alters generated code shows up as a diff here.

    Regenerate with FUSIONLAB_UPDATE_GOLDEN=1 after reviewing the change.
    """
    import os

    graph = trace(lambda x: torch.softmax(x * 0.125, -1), torch.randn(8, 96))
    ks = generate(graph_candidates(graph)[0][0], graph)
    path = GOLDEN / "softmax_8x96.py"
    if os.environ.get("FUSIONLAB_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(_normalise(ks.source))
    assert _normalise(ks.source) == path.read_text()
    # the tutorial's form: row length and strides are arguments, block sizes constexpr, and
    # the ATen program in the docstring keeps its constants
    assert "in_x_1_row_stride, out_div_row_stride, n_rows, n_cols," in ks.source
    assert "XBLOCK: tl.constexpr, RBLOCK: tl.constexpr" in ks.source
    assert "mul = aten.mul.Tensor(x_1, 0.125)" in ks.source
    assert set(ks.signature) >= {"in_x_1_row_stride", "n_rows", "n_cols"} and "RBLOCK" in ks.constexprs


def test_rows_of_any_stride_reach_the_kernel_as_arguments():
    """A kernel generated for contiguous rows, called on rows with padding and on a transpose:
    the launcher fixes the layout and passes the row strides; both match eager."""
    graph = trace(lambda x: torch.softmax(x * 0.5, -1) + 1, torch.randn(6, 40))
    (k,) = check_all(graph)
    padded = torch.randn(6, 64)[:, :40]
    transposed = torch.randn(40, 6).t()
    for x in (padded, transposed):
        (y,) = k(x)
        torch.testing.assert_close(y, torch.softmax(x * 0.5, -1) + 1)


def test_kernels_run_when_triton_was_imported_before_fusionlab():
    """`import torch._inductor` imports triton; the interpreter must still work afterwards."""
    import subprocess
    import sys

    code = (
        "import torch._inductor.decomposition, sys\n"
        "assert 'triton' in sys.modules\n"
        "import fusionlab, torch\n"
        "from fusionlab.candidates import graph_candidates\n"
        "from fusionlab.capture import CapturedGraph, node_facts\n"
        "from fusionlab.kernels.kernel import build_kernel\n"
        "from torch.fx.experimental.proxy_tensor import make_fx\n"
        "from torch._inductor.decomposition import select_decomp_table\n"
        "gm = make_fx(lambda x: torch.softmax(x, -1), decomposition_table=select_decomp_table())(torch.randn(3, 9))\n"
        "g = CapturedGraph(0, 'inference', gm, node_facts(gm))\n"
        "k, status = build_kernel(graph_candidates(g)[0][0], g, seed=0)\n"
        "assert status.used, status\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
