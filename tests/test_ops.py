"""Tests for fusionlab.ops: every op in the zoo's graphs has a deliberate kind; unknown ops are opaque."""

from __future__ import annotations

import ast
import operator
import re

import pytest
import torch
import torch.fx
from torch import nn

import fusionlab
from fusionlab import ops
from fusionlab.candidates import find_candidates
from fusionlab.capture import Capture

aten = torch.ops.aten

ZOO = ["mlp", "cnn-bn", "gpt2-block", "llama-block", "gpt2-tiny", "bert-tiny"]

# Ops of the zoo graphs that are opaque on purpose: indexing, gathers/scatters, concatenation,
# padding, scans, in-place write-backs of mutated buffers, and random numbers.
EXPECTED_OPAQUE = {
    "aten._unsafe_masked_index_put_accumulate.default",
    "aten.cat.default",
    "aten.constant_pad_nd.default",
    "aten.copy_.default",
    "aten.cumsum.default",
    "aten.embedding.default",
    "aten.embedding_dense_backward.default",
    "aten.gather.default",
    "aten.index.Tensor",
    "aten.index_put.default",
    "aten.rand.default",
    "aten.scatter.value",
    "prims.iota.default",
}

# Ops whose kind a student would take for granted.
EXPECTED_KIND = {
    "aten.mm.default": "matmul",
    "aten.addmm.default": "matmul",
    "aten.bmm.default": "matmul",
    "aten.convolution.default": "matmul",
    "aten.convolution_backward.default": "matmul",
    "aten.add.Tensor": "pointwise",
    "aten.mul.Tensor": "pointwise",
    "aten.tanh.default": "pointwise",
    "aten.erf.default": "pointwise",
    "aten.exp.default": "pointwise",
    "aten.rsqrt.default": "pointwise",
    "aten.where.self": "pointwise",
    "aten.relu.default": "pointwise",
    "aten.sigmoid.default": "pointwise",
    "prims.convert_element_type.default": "pointwise",
    "aten.amax.default": "reduction",
    "aten.sum.dim_IntList": "reduction",
    "aten.mean.dim": "reduction",
    "aten.var_mean.correction": "reduction",
    "aten.view.default": "view",
    "aten.permute.default": "view",
    "aten.expand.default": "view",
    "aten.embedding.default": "opaque",
    "aten.gather.default": "opaque",
    "aten.rand.default": "opaque",
}


def _bert():
    """A 1-layer transformers BertModel with dropout on (random ops in the graph)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=32)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(cfg).train()
        ids = torch.randint(0, 100, (2, 16))
    return model, (ids,), lambda out: out.last_hidden_state.pow(2).mean()


@pytest.fixture(scope="module")
def captured(zoo_capture):
    """captured(name) -> the capture of a zoo model's training step, or of tiny BERT's."""
    bert: list[Capture] = []

    def get(name: str) -> Capture:
        if name != "bert-tiny":
            return zoo_capture(name)
        if not bert:
            model, inputs, loss_fn = _bert()
            bert.append(fusionlab.capture(model, *inputs, loss_fn=loss_fn))
        return bert[0]

    return get


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_op_is_classified(captured, name):
    cap = captured(name)
    seen: dict[str, str] = {}
    for g in cap.graphs:
        for node in g.gm.graph.nodes:
            kind = ops.kind_of(node)
            assert kind == g.nodes[node.name].kind
            assert ops.op_name(node) == g.nodes[node.name].op
            seen[ops.op_name(node)] = kind if node.target is not operator.getitem else "getitem"
    unexpected = sorted(op for op, k in seen.items() if k == "opaque" and op not in EXPECTED_OPAQUE)
    assert not unexpected, f"ops that fell through the op table (opaque by accident): {unexpected}"
    for op, kind in seen.items():
        if op in EXPECTED_KIND:
            assert kind == EXPECTED_KIND[op], (op, kind)
    assert {"placeholder", "output", "matmul", "pointwise", "reduction", "view"} <= set(seen.values())


def test_bert_has_random_dropout_ops_left_opaque(captured):
    cap = captured("bert-tiny")
    cands = find_candidates(cap)
    rand = [(g.tag, i.name) for g in cap.graphs for i in g.nodes.values() if i.op == "aten.rand.default"]
    assert rand, "BERT in train mode should draw dropout masks"
    for key in rand:
        assert cands.left_out[key].startswith("random op aten.rand.default")
    # the exact GELU of BERT's intermediate layer is an erf
    assert any(i.op == "aten.erf.default" for i in cap.graph("fw0").nodes.values())


@pytest.mark.parametrize("name", ZOO)
def test_op_table_helpers_never_fail_on_zoo_nodes(captured, name):
    cap = captured(name)
    for g in cap.graphs:
        for node in g.gm.graph.nodes:
            kind = ops.kind_of(node)
            why = ops.why_not_fusable(node, kind)
            assert why is None or (isinstance(why, str) and why and "\n" not in why)
            if kind in ("matmul", "view", "opaque", "placeholder", "output"):
                assert why is not None, (node.name, kind)
            assert ops.launches_kernel(kind) == (kind in ("pointwise", "reduction", "matmul", "opaque"))
            if kind == "reduction":
                spec = ops.reduction_spec(node)
                assert spec.input is node.args[0]
                ndim = len(spec.input.meta["val"].shape)
                assert spec.dims == tuple(sorted(set(spec.dims)))
                assert all(0 <= d < ndim for d in spec.dims)
                assert spec.op in set(ops.REDUCTIONS.values())


def test_reduction_spec_normalises_dims():
    from torch.fx.experimental.proxy_tensor import make_fx

    def red(x):
        return x.sum([-1], keepdim=True), x.amax(1), x.mean(), torch.var_mean(x, -1, correction=0)

    gm = make_fx(red)(torch.randn(2, 3, 4))
    specs = {str(n.target): ops.reduction_spec(n) for n in gm.graph.nodes if n.target in ops.REDUCTIONS}
    assert specs["aten.sum.dim_IntList"].dims == (2,) and specs["aten.sum.dim_IntList"].keepdim
    assert specs["aten.amax.default"].dims == (1,) and not specs["aten.amax.default"].keepdim
    assert specs["aten.mean.default"].dims == (0, 1, 2)
    vm = specs["aten.var_mean.correction"]
    assert vm.op == "var_mean" and vm.dims == (2,) and vm.correction == 0.0


@pytest.mark.parametrize("target", list(ops.POINTWISE), ids=str)
def test_every_pointwise_entry_renders(target):
    """Each entry renders one Python expression over the argument names it is given, tl and
    the helpers every generated kernel defines (codegen.helpers.HELPERS), nothing else."""
    from fusionlab.codegen.helpers import HELPERS

    helpers = set(re.findall(r"^def (\w+)\(", HELPERS, re.MULTILINE))
    expr = ops.POINTWISE[target].expr(["arg0", "arg1", "arg2"], {}, torch.float32)
    tree = ast.parse(expr, mode="eval")  # a SyntaxError fails the test
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    unknown = names - {"arg0", "arg1", "arg2", "tl", "float"} - helpers
    assert not unknown, (expr, unknown)
    assert "libdevice" not in expr  # core tl only: runs in the interpreter and on any GPU


def _graph_with(target, *args):
    g = torch.fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(4, 8)
    y = g.call_function(target, (x, *args))
    y.meta["val"] = torch.empty(4, 8)
    g.output(y)
    return y


def _mystery_python(x):
    return x


@pytest.mark.parametrize(
    "target", [aten.cumsum.default, aten.sort.default, aten.bucketize.Tensor, _mystery_python],
    ids=lambda t: getattr(t, "__name__", str(t)),
)
def test_unknown_op_is_opaque_not_an_error(target):
    node = _graph_with(target)
    assert ops.kind_of(node) == "opaque"
    name = ops.op_name(node)
    assert isinstance(name, str) and name
    assert ops.why_not_fusable(node, "opaque") == f"opaque op {name}"
    assert ops.launches_kernel("opaque")


@torch.library.custom_op("fusionlab_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    """An op fusionlab has never heard of."""
    return x * 2


@mystery.register_fake
def _mystery_fake(x):
    return torch.empty_like(x)


def _mystery_backward(ctx, grad):
    return grad * 2


mystery.register_autograd(_mystery_backward)


class UsesMystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(mystery(torch.relu(self.lin(x)) + 1.0))


@pytest.mark.parametrize("train", [True, False])
def test_capture_with_unknown_op(train):
    cap = fusionlab.capture(UsesMystery(), torch.randn(4, 8), train=train)
    fw = cap.forward_graphs[0]
    (node,) = [i for i in fw.nodes.values() if "mystery" in i.op]
    assert node.op == "fusionlab_test.mystery.default" and node.kind == "opaque"
    assert node.shape == (4, 8) and node.dtype == torch.float32
    cands = find_candidates(cap)
    assert cands.left_out[(fw.tag, node.name)] == "opaque op fusionlab_test.mystery.default"
    for c in cands:  # nothing is fused across the unknown op
        assert node.name not in c.nodes and node.name not in c.outputs


def test_literals_and_casts():
    assert ops.literal(True) == "1" and ops.literal(3) == "3" and ops.literal(0.5) == "0.5"
    assert ops.literal(float("inf")) == 'float("inf")'
    assert ops.literal(float("-inf")) == 'float("-inf")'
    assert ops.literal(float("nan")) == 'float("nan")'
    assert ops.literal(torch.float16) == "tl.float16"
    assert ops.cast_expr("v", torch.bfloat16) == "_round_bf16(v.to(tl.float32))"
    assert ops.cast_expr("v", torch.float16) == "v.to(tl.float32).to(tl.float16).to(tl.float32)"
    assert ops.cast_expr("v", torch.bool) == "(v != 0)"
    assert ops.compute_dtype(torch.float16) == torch.float32
    assert ops.compute_dtype(torch.int32) == torch.int32


def test_unsupported_dtype_has_a_reason():
    g = torch.fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(4, dtype=torch.float64)
    y = g.call_function(aten.exp.default, (x,))
    y.meta["val"] = torch.empty(4, dtype=torch.float64)
    g.output(y)
    assert ops.kind_of(y) == "pointwise"
    assert "float64" in ops.why_not_fusable(y, "pointwise")
