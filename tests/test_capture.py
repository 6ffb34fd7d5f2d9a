"""Tests for fusionlab.capture: graphs, node facts, graph breaks, inference, state, bad input."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import fusionlab
import fusionlab.zoo as zoo
from fusionlab import CaptureError
from fusionlab.capture import Capture, CapturedGraph, NodeInfo, normalize_module_path

ZOO = ["mlp", "cnn-bn", "gpt2-block", "llama-block", "gpt2-tiny"]
KINDS = {"pointwise", "reduction", "view", "getitem", "matmul", "opaque", "placeholder", "output",
         "constant"}


def _line_of(fn, text: str) -> int:
    """Line number of the first source line of `fn` that contains `text`."""
    lines, start = inspect.getsourcelines(fn)
    for i, line in enumerate(lines):
        if text in line:
            return start + i
    raise AssertionError(f"{text!r} not in {fn}")


def _by_op(graph: CapturedGraph, op: str) -> list[NodeInfo]:
    return [i for i in graph.nodes.values() if i.op == op]


# --------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", ZOO)
def test_zoo_training_step_gives_forward_and_backward(zoo_model, zoo_capture, name):
    cap = zoo_capture(name)
    assert isinstance(cap, Capture) and cap.train
    assert [g.tag for g in cap.graphs] == ["fw0", "bw0"]
    assert [g.kind for g in cap.graphs] == ["forward", "backward"]
    assert cap.breaks == []
    assert cap.forward_graphs == [cap.graphs[0]] and cap.backward_graphs == [cap.graphs[1]]
    assert cap.graph("bw0") is cap.graphs[1]
    assert cap.num_nodes() == sum(len(g.gm.graph.nodes) for g in cap.graphs)
    for g in cap.graphs:
        assert list(g.nodes) == [n.name for n in g.gm.graph.nodes]  # one NodeInfo per node, in order
        assert g.kernel_nodes(), g
        assert sum(i.kind == "output" for i in g.nodes.values()) == 1
        assert sum(i.kind == "matmul" for i in g.nodes.values()) >= 1
    text = repr(cap)
    assert type(zoo_model(name).model).__name__ in text and "fw0" in text and "bw0" in text
    assert "<table>" in cap._repr_html_()


def test_graph_lookup_error_lists_tags(zoo_capture):
    with pytest.raises(KeyError, match="fw0"):
        zoo_capture("mlp").graph("fw7")


@pytest.mark.parametrize("name", ZOO)
def test_every_node_carries_its_facts(zoo_capture, name):
    cap = zoo_capture(name)
    for g in cap.graphs:
        for node in g.gm.graph.nodes:
            info = g.nodes[node.name]
            assert info.name == node.name
            assert isinstance(info.op, str) and info.op
            assert info.kind in KINDS, (node.name, info.kind)
            assert isinstance(info.module, str) and isinstance(info.source, str)
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                assert info.shape == tuple(val.shape)
                assert info.dtype == val.dtype
                assert info.stride == tuple(val.stride())
                assert len(info.stride) == len(info.shape)
                assert info.nbytes == val.numel() * val.dtype.itemsize
            if node.op == "call_function" and g.kind == "forward" and info.op != "aten.copy_.default":
                # every op of the forward graph points back at a line of Python (the copy_
                # epilogue that writes mutated buffers back, e.g. BN running stats, has none)
                assert info.source, (g.tag, node.name, info.op)
                assert ".py:" in info.source
            assert node.name in repr(info)


def test_gpt2_block_module_paths_and_source_lines(zoo_capture):
    cap = zoo_capture("gpt2-block")
    fw, bw = cap.graph("fw0"), cap.graph("bw0")
    mlp_line = _line_of(zoo.GPT2MLP.forward, "return self.c_proj(self.act(self.c_fc(x)))")
    (tanh,) = _by_op(fw, "aten.tanh.default")
    assert tanh.module == "mlp.act"
    assert tanh.source == f"models.py:{mlp_line}  return self.c_proj(self.act(self.c_fc(x)))"
    assert tanh.shape == (2, 64, 512) and tanh.dtype == torch.float32
    assert tanh.stride == (64 * 512, 512, 1) and tanh.nbytes == 2 * 64 * 512 * 4
    var_means = _by_op(fw, "aten.var_mean.correction")
    assert [v.module for v in var_means] == ["ln_1", "ln_2"]
    assert {i.module for i in _by_op(fw, "aten.addmm.default")} == {
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"
    }
    (amax,) = _by_op(fw, "aten.amax.default")
    assert amax.module == "attn" and "torch.softmax(att, dim=-1)" in amax.source
    # backward nodes get the module and line of the forward op they differentiate
    assert {i.module for i in _by_op(bw, "aten.tanh.default")} == {"mlp.act"}
    bw_modules = {i.module for i in bw.nodes.values()}
    assert {"ln_1", "ln_2", "attn", "attn.c_attn", "attn.c_proj", "mlp.act", "mlp.c_fc",
            "mlp.c_proj"} <= bw_modules
    for i in _by_op(bw, "aten.mm.default"):
        assert i.module.startswith(("attn.", "mlp.")) and i.source.startswith("models.py:")


def test_hf_gpt2_module_paths(zoo_model):
    """A 2-layer transformers GPT2LMHeadModel: paths like transformer.h.0.mlp.act."""
    zm = zoo_model("gpt2-tiny")
    lm, ids = zm.model.model, zm.inputs[0]
    cap = fusionlab.capture(lm, ids)  # default loss: the logits' sum
    assert [g.tag for g in cap.graphs] == ["fw0", "bw0"]
    fw_modules = {i.module for i in cap.graph("fw0").nodes.values()}
    for layer in (0, 1):
        assert {f"transformer.h.{layer}.ln_1", f"transformer.h.{layer}.attn",
                f"transformer.h.{layer}.mlp.act", f"transformer.h.{layer}.mlp.c_fc"} <= fw_modules
    assert {"transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head"} <= fw_modules
    tanhs = _by_op(cap.graph("fw0"), "aten.tanh.default")
    assert [t.module for t in tanhs] == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert all(t.source.startswith("activations.py:") and "torch.tanh" in t.source for t in tanhs)
    bw_modules = {i.module for i in cap.graph("bw0").nodes.values()}
    assert {"transformer.h.0.mlp.act", "transformer.h.1.ln_2"} <= bw_modules


def test_wrapped_hf_gpt2_paths_are_relative_to_the_model_given(zoo_capture):
    # zoo's gpt2-tiny wraps GPT2LMHeadModel as `.model`; paths are relative to the wrapper
    fw = zoo_capture("gpt2-tiny").graph("fw0")
    assert "model.transformer.h.0.mlp.act" in {i.module for i in fw.nodes.values()}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("L['self'].h[0].mlp.act", "h.0.mlp.act"),
        ("L['self']._modules['h']._modules['0'].mlp", "h.0.mlp"),
        ("L['self']", ""),
        ("self", ""),
        ("self.encoder.layer.0", "encoder.layer.0"),
    ],
)
def test_normalize_module_path(raw, expected):
    assert normalize_module_path(raw) == expected


# --------------------------------------------------------------------------- graph breaks


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)

    def forward(self, x):
        h = self.l1(x)
        if h.sum() > 0:  # data-dependent control flow: dynamo breaks the graph here
            h = torch.relu(h)
        else:
            h = torch.sigmoid(h)
        return self.l2(h)


class Printing(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        print("fusionlab test: a print() in forward")
        return self.l2(h).tanh()


class ExplicitBreak(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        torch._dynamo.graph_break()
        return self.l2(h).tanh()


@pytest.mark.parametrize(
    "model_cls, marker, reason",
    [
        (DataDependent, "if h.sum() > 0:", ""),
        (Printing, "print(", ""),
        (ExplicitBreak, "torch._dynamo.graph_break()", "graph_break"),
    ],
)
def test_graph_break_gives_several_graphs_and_says_where(model_cls, marker, reason, capsys):
    torch.manual_seed(0)
    cap = fusionlab.capture(model_cls(), torch.randn(4, 8))
    fws, bws = cap.forward_graphs, cap.backward_graphs
    assert len(fws) >= 2 and len(bws) == len(fws)
    tags = [g.tag for g in cap.graphs]
    assert len(set(tags)) == len(tags)
    assert {g.index for g in fws} == set(range(len(fws)))
    assert len(cap.breaks) >= 1
    br = cap.breaks[0]
    line = _line_of(model_cls.forward, marker)
    assert br.where == f"test_capture.py:{line} in forward"
    assert br.reason and "\n" not in br.reason and reason in br.reason
    assert "graph break" in cap.summary() and f"test_capture.py:{line}" in cap.summary()
    assert str(br).startswith(br.where)
    # the linears before and after the break are both captured
    matmuls = sum(i.kind == "matmul" for g in fws for i in g.nodes.values())
    assert matmuls == 2


def test_inference_capture_after_graph_break():
    cap = fusionlab.capture(DataDependent(), torch.randn(4, 8), train=False)
    assert [g.tag for g in cap.graphs] == ["inf0", "inf1"]
    assert len(cap.breaks) == 1


# --------------------------------------------------------------------------- inference


def test_train_false_captures_inference_only():
    m = zoo.get("gpt2-block")
    cap = fusionlab.capture(m.model, *m.inputs, train=False)
    assert not cap.train
    assert [(g.tag, g.kind) for g in cap.graphs] == [("inf0", "inference")]
    assert cap.backward_graphs == [] and cap.forward_graphs == cap.graphs
    assert "inference" in cap.summary()
    assert all(p.grad is None for p in m.model.parameters())
    assert m.model.training  # mode restored
    # the model's output is the graph's output: no loss was added
    ops = {i.op for i in cap.graphs[0].nodes.values()}
    assert "aten.pow.Tensor_Scalar" not in ops


def test_inference_module_paths_match_training(zoo_capture):
    m = zoo.get("gpt2-block")
    inf = fusionlab.capture(m.model, *m.inputs, train=False).graph("inf0")
    fw = zoo_capture("gpt2-block").graph("fw0")
    common = [n for n in inf.nodes if n in fw.nodes and inf.nodes[n].op == fw.nodes[n].op]
    assert len(common) > 50
    wrong = [(n, inf.nodes[n].module, fw.nodes[n].module) for n in common
             if inf.nodes[n].module != fw.nodes[n].module]
    assert not wrong


def test_train_false_uses_eval_mode_batch_norm():
    m = zoo.get("cnn-bn")
    cap = fusionlab.capture(m.model, *m.inputs, train=False)
    ops = {i.op for i in cap.graphs[0].nodes.values()}
    assert "aten.var_mean.correction" not in ops  # running statistics, not batch statistics
    assert "aten.copy_.default" not in ops  # running stats are not updated
    assert m.model.training


def test_train_false_needs_no_grad():
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU()).requires_grad_(False)
    cap = fusionlab.capture(model, torch.randn(2, 8), train=False)
    assert [g.kind for g in cap.graphs] == ["inference"]


# --------------------------------------------------------------------------- model untouched


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["modes"] == b["modes"]
    assert a["requires_grad"] == b["requires_grad"]
    for part in ("state", "params", "grads"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            w = b[part][k]
            assert (v is None) == (w is None), (part, k)
            if v is not None:
                assert torch.equal(v, w), (part, k)


@pytest.mark.parametrize("train", [True, False])
def test_capture_leaves_batch_norm_model_untouched(train):
    m = zoo.get("cnn-bn")
    model = m.model
    model.bn2.eval()  # a mixed train/eval model keeps each module's mode
    before = _snapshot(model)
    assert before["state"]["bn1.num_batches_tracked"].item() == 0
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    fusionlab.capture(model, *m.inputs, loss_fn=m.loss_fn, train=train)
    assert torch.equal(rng, torch.get_rng_state())
    _assert_same(before, _snapshot(model))


def test_capture_in_eval_mode_stays_in_eval_mode():
    m = zoo.get("cnn-bn")
    m.model.eval()
    before = _snapshot(m.model)
    cap = fusionlab.capture(m.model, *m.inputs, loss_fn=m.loss_fn)
    assert cap.backward_graphs
    _assert_same(before, _snapshot(m.model))


def test_capture_leaves_rng_state_alone_with_dropout():
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 4))
    x = torch.randn(8, 16)
    torch.manual_seed(7)
    expected_next = torch.rand(5)
    torch.manual_seed(7)
    cap = fusionlab.capture(model, x)
    assert any(i.op == "aten.rand.default" or "dropout" in i.op or "bernoulli" in i.op
               for g in cap.graphs for i in g.nodes.values())
    assert torch.equal(torch.rand(5), expected_next)


def test_capture_keeps_existing_gradients():
    m = zoo.get("mlp")
    for p in m.model.parameters():
        p.grad = torch.ones_like(p)
    before = _snapshot(m.model)
    fusionlab.capture(m.model, *m.inputs, loss_fn=m.loss_fn)
    _assert_same(before, _snapshot(m.model))


def test_capture_of_callable_leaves_its_leaves_alone():
    w = torch.randn(8, 8, requires_grad=True)

    def fn(x):
        return torch.tanh(x @ w).sum()

    cap = fusionlab.capture(fn, torch.randn(4, 8))
    assert [g.tag for g in cap.graphs] == ["fw0", "bw0"]
    assert w.grad is None


def test_repeated_captures():
    """Capturing many times never hits dynamo's recompile limit (or reuses a stale graph)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    for i in range(10):  # more than torch._dynamo.config.recompile_limit (8)
        cap = fusionlab.capture(model, torch.randn(i + 1, 8))
        assert [g.tag for g in cap.graphs] == ["fw0", "bw0"], i
        assert cap.breaks == [] and cap.input_shapes == [(i + 1, 8)]
        assert cap.graph("fw0").nodes["primals_3"].shape == (i + 1, 8)
    assert cap.model_name == "Sequential"
    assert all(p.grad is None for p in model.parameters())


def test_plain_function_is_a_model():
    def gelu_tanh(x):
        return torch.nn.functional.gelu(x, approximate="tanh") * 2

    cap = fusionlab.capture(gelu_tanh, torch.randn(4, 8), train=False)
    assert cap.model_name == "gelu_tanh"
    assert [g.tag for g in cap.graphs] == ["inf0"]
    assert {"aten.tanh.default", "aten.mul.Tensor"} <= {i.op for i in cap.graphs[0].nodes.values()}


# --------------------------------------------------------------------------- bad input


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        raise ValueError("boom: this model always fails")


class ReturnsInts(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x).argmax(-1)


@torch._dynamo.disable
def _outside_dynamo(x, w):
    return (x @ w).sum()


class Untraceable(nn.Module):
    """Everything happens in a function dynamo is told to skip: no graph at all."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return _outside_dynamo(x, self.w)


def _assert_clear(err: CaptureError, *needles: str) -> None:
    msg = str(err)
    assert "Traceback" not in msg and len(msg.splitlines()) <= 3 and len(msg) < 600, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("model", [42, "gpt2", None, torch.randn(3)])
def test_not_a_model(model):
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(model, torch.randn(2, 4))
    _assert_clear(e.value, "torch.nn.Module or a callable")


def test_no_inputs():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(nn.Linear(4, 4))
    _assert_clear(e.value, "example inputs")


@pytest.mark.parametrize("bad, type_name", [("text", "str"), ({"x": 1}, "dict"), (object(), "object"),
                                            ([torch.randn(2), "a"], "list")])
def test_input_of_wrong_type(bad, type_name):
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(nn.Linear(4, 4), bad)
    _assert_clear(e.value, f"example input 0 is a {type_name}")


def test_input_on_another_device():
    x = torch.randn(2, 4, device="meta")
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(nn.Linear(4, 4), x)
    _assert_clear(e.value, "meta", "cpu", "same device")


def test_inputs_on_several_devices():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(lambda a, b: (a + b).sum(), torch.randn(2), torch.randn(2, device="meta"))
    _assert_clear(e.value, "several devices")


def test_model_that_raises():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(Boom(), torch.randn(2, 4))
    _assert_clear(e.value, "Boom", "ValueError", "boom: this model always fails")
    assert isinstance(e.value.__cause__, ValueError)


def test_model_dynamo_cannot_trace():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(Untraceable(), torch.randn(2, 4))
    _assert_clear(e.value, "no graph")


def test_shape_mismatch_is_a_capture_error_that_names_the_cause():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(nn.Linear(8, 8), torch.randn(3, 5))
    _assert_clear(e.value, "Linear", "[3, 5]")


def test_loss_must_be_a_scalar():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(nn.Linear(4, 4), torch.randn(2, 4), loss_fn=lambda out: out)
    _assert_clear(e.value, "scalar", "(2, 4)")


def test_output_without_floats():
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(ReturnsInts(), torch.randn(2, 4))
    _assert_clear(e.value, "loss_fn")


def test_training_needs_something_to_differentiate():
    model = nn.Linear(4, 4).requires_grad_(False)
    with pytest.raises(CaptureError) as e:
        fusionlab.capture(model, torch.randn(2, 4))
    _assert_clear(e.value, "does not require grad", "train=False")
    assert fusionlab.capture(model, torch.randn(2, 4), train=False).graphs

