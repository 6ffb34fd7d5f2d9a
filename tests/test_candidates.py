"""Tests for fusionlab.candidates: groups one kernel could compute, their names, costs and reasons."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fusionlab
import fusionlab.zoo as zoo
from fusionlab import ops
from fusionlab.candidates import Candidate, Candidates, aligns, find_candidates
from fusionlab.capture import Capture

ZOO = ["mlp", "cnn-bn", "gpt2-block", "llama-block", "gpt2-tiny"]


def components(cands, graph_kind: str, cap: Capture) -> set[str]:
    kinds = {g.tag: g.kind for g in cap.graphs}
    return {p for c in cands if kinds[c.graph] == graph_kind for p in c.pattern.split("+")}


def only(cands, graph: str, component: str) -> list[Candidate]:
    return [c for c in cands if c.graph == graph and component in c.pattern.split("+")]


def contracted_is_acyclic(graph, groups: list[tuple[str, ...]]) -> bool:
    """Contract each group of node names to one vertex; is the result still a DAG? (Kahn)"""
    owner = {}
    for i, members in enumerate(groups):
        for n in members:
            owner[n] = f"#group{i}"
    succ: dict[str, set[str]] = {}
    verts = set()
    for node in graph.gm.graph.nodes:
        v = owner.get(node.name, node.name)
        verts.add(v)
        for u in node.users:
            w = owner.get(u.name, u.name)
            if w != v:
                succ.setdefault(v, set()).add(w)
    indeg = dict.fromkeys(verts, 0)
    for ws in succ.values():
        for w in ws:
            indeg[w] += 1
    ready = [v for v in verts if indeg[v] == 0]
    done = 0
    while ready:
        v = ready.pop()
        done += 1
        for w in succ.get(v, ()):
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return done == len(verts)


def _bytes(node) -> int:
    val = node.meta.get("val")
    vals = val if isinstance(val, (list, tuple)) else [val]
    return sum(v.numel() * v.dtype.itemsize for v in vals if isinstance(v, torch.Tensor))


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ZOO)
def test_candidates_are_well_formed(zoo_candidates, name):
    cands = zoo_candidates(name)
    cap = cands.capture
    assert isinstance(cands, Candidates) and cands.capture is cap
    assert cands, name
    owner: dict[tuple[str, str], str] = {}
    ids = [c.id for c in cands]
    assert len(set(ids)) == len(ids)
    for c in cands:
        g = cap.graph(c.graph)
        fx = {n.name: n for n in g.gm.graph.nodes}
        order = list(fx)
        assert c.id.startswith(f"{c.graph}.{c.pattern}.") and c.id.rsplit(".", 1)[1].isdigit()
        assert c.matches(c.id) and c.matches(c.pattern)
        # members: real nodes of that graph, fusable kinds, topological order, in one candidate
        for n in c.nodes:
            assert n in g.nodes, (c.id, n)
            # a matmul candidate (fusionlab.epilogue) also holds its matmul and the reshapes after it
            extra = ("matmul", "view") if c.kind == "matmul" else ()
            assert g.nodes[n].kind in ("pointwise", "reduction", "getitem") + extra, (c.id, n, g.nodes[n].kind)
            assert (c.graph, n) not in owner, f"{n} is in {owner.get((c.graph, n))} and {c.id}"
            owner[(c.graph, n)] = c.id
        assert list(c.nodes) == sorted(c.nodes, key=order.index)
        members = set(c.nodes)
        # inputs: read from outside; outputs: members read outside the group
        expect_inputs = {a.name for n in c.nodes for a in fx[n].all_input_nodes} - members
        assert set(c.inputs) == expect_inputs
        for o in c.outputs:
            assert o in members and any(u.name not in members for u in fx[o].users)
        for n in c.nodes:
            multi = isinstance(fx[n].meta.get("val"), (list, tuple))  # var_mean: via its getitems
            if any(u.name not in members for u in fx[n].users) and not multi:
                assert n in c.outputs, (c.id, n)
        # costs
        launching = [n for n in c.nodes if ops.launches_kernel(g.nodes[n].kind)]
        assert c.kernels_unfused == len(launching) >= 2
        assert c.bytes_fused == sum(_bytes(fx[i]) for i in c.inputs) + sum(_bytes(fx[o]) for o in c.outputs)
        # unfused: each member is its own kernel, reads each of its inputs and writes its
        # result (a getitem of var_mean moves nothing: var_mean wrote both results)
        assert c.bytes_unfused == sum(
            sum(_bytes(a) for a in dict.fromkeys(fx[n].all_input_nodes)) + _bytes(fx[n])
            for n in c.nodes if g.nodes[n].kind not in ("getitem", "view")
        ), c.id
        # a horizontal group (q/k/v copies) saves launches, not bytes
        assert c.bytes_saved >= 0
        assert c.bytes_saved > 0 or c.pattern == "copy"
        # domain: reduced dims lie in the domain; a reduction group has a reduction member
        assert all(0 <= d < len(c.domain) for d in c.reduce_dims)
        matmuls = [n for n in c.nodes if g.nodes[n].kind == "matmul"]
        assert len(matmuls) <= 1 and (c.kind == "matmul") == bool(matmuls)
        assert c.kind == ("matmul" if matmuls else "reduction" if c.reduce_dims else "pointwise")
        assert any(g.nodes[n].kind == "reduction" for n in c.nodes) == bool(c.reduce_dims)
        assert all(m in {g.nodes[n].module for n in c.nodes} for m in c.modules)
        assert c.id in repr(c)
    assert cands.by_id(ids[0]) is cands[0]
    with pytest.raises(KeyError):
        cands.by_id("fw0.no_such_thing.0")


@pytest.mark.parametrize("name", ZOO)
def test_fusing_never_creates_a_cycle(zoo_candidates, name):
    cands = zoo_candidates(name)
    cap = cands.capture
    for g in cap.graphs:
        mine = [c.nodes for c in cands if c.graph == g.tag]
        assert contracted_is_acyclic(g, [])
        for nodes in mine:
            assert contracted_is_acyclic(g, [nodes])
        assert contracted_is_acyclic(g, mine), f"{g.tag}: selecting every candidate forms a cycle"


@pytest.mark.parametrize("name", ZOO)
def test_every_node_left_out_has_a_reason(zoo_candidates, name):
    cands = zoo_candidates(name)
    cap = cands.capture
    in_candidate = {(c.graph, n) for c in cands for n in c.nodes}
    for g in cap.graphs:
        for node in g.gm.graph.nodes:
            key = (g.tag, node.name)
            reason = cands.reason(*key)
            if key in in_candidate:
                assert reason is None, (key, reason)
            elif node.op == "call_function":
                assert isinstance(reason, str) and reason.strip(), key
                assert "\n" not in reason and len(reason) < 200, (key, reason)
    for tag, n in cands.left_out:
        assert n in cap.graph(tag).nodes
    # the kinds that can never be fused say why
    for (tag, n), reason in cands.left_out.items():
        kind = cap.graph(tag).nodes[n].kind
        if kind == "matmul":
            assert reason.startswith("matmul ")
        elif kind == "view":
            assert reason.startswith("view ")
        elif kind == "opaque":
            assert reason.startswith(("opaque op ", "random op "))
    text = cands.why_not(limit=5)
    assert len(text.splitlines()) <= 6
    assert "view " not in cands.why_not(limit=10_000)


# --------------------------------------------------------------------------- names


def test_gpt2_block_forward_patterns(zoo_candidates):
    cands = zoo_candidates("gpt2-block")
    cap = cands.capture
    assert {"softmax", "layer_norm", "gelu"} <= components(cands, "forward", cap)
    # the MLP's c_fc matmul joins its gelu (fusionlab.epilogue)
    (gelu,) = only(cands, "fw0", "gelu")
    assert gelu.pattern == "matmul+bias+gelu" and gelu.id == "fw0.matmul+bias+gelu.0"
    assert gelu.modules == ("mlp.c_fc", "mlp.act") and gelu.kind == "matmul"
    assert gelu.domain == (2, 64, 512) and "aten.tanh.default" in gelu.ops and "aten.addmm.default" in gelu.ops
    assert gelu.outputs == ("view_15", "mul_10")  # c_fc's result, saved for backward, and the activation
    assert gelu.kernels_unfused == len(gelu.nodes) - 1  # its reshape (view_15) launches nothing
    # reads the ln_2 output, weight and bias once; writes c_fc's result and the activation once
    assert gelu.bytes_fused == (128 * 128 + 128 * 512 + 512) * 4 + 2 * (2 * 64 * 512 * 4)
    (softmax,) = only(cands, "fw0", "softmax")
    assert softmax.reduce_dims == (3,) and softmax.domain == (2, 4, 64, 64)
    assert {"aten.amax.default", "aten.exp.default", "aten.sum.dim_IntList", "aten.div.Tensor"} <= set(
        softmax.ops
    )
    assert softmax.modules == ("attn",)
    norms = only(cands, "fw0", "layer_norm")
    assert [c.modules[-1] for c in norms] == ["ln_1", "ln_2"]
    for c in norms:
        assert c.reduce_dims == (2,) and c.domain == (2, 64, 128)
        assert "aten.var_mean.correction" in c.ops and "getitem" in c.ops
    # the residual add before ln_2 joins its layer norm
    assert norms[1].pattern == "add+layer_norm"


def test_gpt2_block_backward_patterns(zoo_candidates):
    cands = zoo_candidates("gpt2-block")
    cap = cands.capture
    assert {"softmax_backward", "layer_norm_backward", "gelu_backward"} <= components(
        cands, "backward", cap
    )
    (gelu_bw,) = only(cands, "bw0", "gelu_backward")
    assert gelu_bw.domain == (2, 64, 512) and not gelu_bw.reduce_dims
    # c_proj's input-gradient matmul joins it: its result is gelu_backward's incoming gradient
    assert gelu_bw.modules == ("mlp.c_proj", "mlp.act") and gelu_bw.pattern == "matmul+gelu_backward"
    assert "aten.mm.default" in gelu_bw.ops
    (softmax_bw,) = only(cands, "bw0", "softmax_backward")
    assert softmax_bw.reduce_dims == (3,) and softmax_bw.modules == ("attn",)
    norm_bw = only(cands, "bw0", "layer_norm_backward")
    assert {c.modules[0] for c in norm_bw} == {"ln_1", "ln_2"}
    (ln2_bw,) = [c for c in norm_bw if c.modules[0] == "ln_2"]
    assert ln2_bw.reduce_dims == (2,)  # row sums of the input gradient
    # no backward pattern leaks into the forward graph or vice versa
    assert all(c.graph == "bw0" for c in cands if "_backward" in c.pattern)


def test_mlp_cross_entropy_pieces(zoo_candidates):
    cands = zoo_candidates("mlp")
    cap = cands.capture
    fw, bw = components(cands, "forward", cap), components(cands, "backward", cap)
    assert {"gelu", "log_softmax", "nll_loss"} <= fw
    assert {"gelu_backward", "relu_backward", "log_softmax_backward", "nll_loss_backward"} <= bw
    (log_softmax,) = only(cands, "fw0", "log_softmax")
    assert log_softmax.reduce_dims == (1,) and log_softmax.domain == (32, 10)
    (gelu,) = only(cands, "fw0", "gelu")
    assert "aten.erf.default" in gelu.ops and gelu.modules == ("fc2", "act2") and gelu.kind == "matmul"


def test_cnn_batch_norm(zoo_candidates):
    cands = zoo_candidates("cnn-bn")
    cap = cands.capture
    assert {"batch_norm", "relu"} <= components(cands, "forward", cap)
    assert {"batch_norm_backward", "relu_backward"} <= components(cands, "backward", cap)
    main = [c for c in only(cands, "fw0", "batch_norm") if "relu" in c.pattern.split("+")]
    assert [c.modules for c in main] == [("bn1", "relu1"), ("bn2", "relu2")]
    for c in main:  # per-channel statistics: reduce N, H, W of NCHW
        assert c.reduce_dims == (0, 2, 3)


def test_llama_block_patterns(zoo_candidates):
    cands = zoo_candidates("llama-block")
    cap = cands.capture
    assert {"rms_norm", "softmax", "silu"} <= components(cands, "forward", cap)
    assert {"softmax_backward", "silu_backward"} <= components(cands, "backward", cap)
    norms = only(cands, "fw0", "rms_norm")
    assert [c.modules[-1] for c in norms] == ["input_layernorm", "post_attention_layernorm"]
    assert all(c.reduce_dims == (2,) for c in norms)


def test_llama_block_rms_norm_backward(zoo_candidates):
    cands = zoo_candidates("llama-block")
    cap = cands.capture
    assert "rms_norm_backward" in components(cands, "backward", cap)


def test_hf_gpt2_patterns(zoo_candidates):
    cands = zoo_candidates("gpt2-tiny")
    cap = cands.capture
    fw, bw = components(cands, "forward", cap), components(cands, "backward", cap)
    assert {"layer_norm", "softmax", "log_softmax", "nll_loss"} <= fw
    assert {"layer_norm_backward", "softmax_backward", "log_softmax_backward"} <= bw
    # one softmax and two layer norms per layer, plus ln_f
    assert len(only(cands, "fw0", "softmax")) == 2
    assert len(only(cands, "fw0", "layer_norm")) == 5
    assert len(only(cands, "bw0", "layer_norm_backward")) == 5
    assert any("model.transformer.h.1.mlp.act" in c.modules for c in cands)


def test_hf_gpt2_gelu_is_named_gelu(zoo_candidates):
    cands = zoo_candidates("gpt2-tiny")
    cap = cands.capture
    assert "gelu" in components(cands, "forward", cap)
    assert "gelu_backward" in components(cands, "backward", cap)


# --------------------------------------------------------------------------- stability


def _ids(cands):
    return [(c.id, c.pattern, c.nodes, c.inputs, c.outputs) for c in cands]


def test_ids_are_stable_across_captures(zoo_candidates):
    first = zoo_candidates("gpt2-block")
    m = zoo.get("gpt2-block")
    again = find_candidates(fusionlab.capture(m.model, *m.inputs, loss_fn=m.loss_fn))
    assert _ids(again) == _ids(first)
    assert [c.bytes_saved for c in again] == [c.bytes_saved for c in first]
    # the same capture searched twice gives the same answer
    cap = first.capture
    assert _ids(find_candidates(cap)) == _ids(first)


def test_ids_do_not_depend_on_the_batch_size(zoo_candidates):
    first = zoo_candidates("gpt2-block")
    m = zoo.get("gpt2-block", batch=3)
    other = find_candidates(fusionlab.capture(m.model, *m.inputs, loss_fn=m.loss_fn))
    assert _ids(other) == _ids(first)
    assert all(a.bytes_saved > b.bytes_saved or a.bytes_saved == b.bytes_saved == 0 for a, b in zip(other, first))


# --------------------------------------------------------------------------- small models


class BiasTanhSoftmax(nn.Module):
    """A per-feature scale and bias broadcast over rows, tanh, then a hand-written softmax."""

    def __init__(self, n: int = 16):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        y = torch.tanh(x * self.scale + self.bias)
        z = (y * 2).exp()
        return z / z.sum(-1, keepdim=True)


class TwoShapes(nn.Module):
    """Two pointwise chains on shapes that do not broadcast to each other."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(8))

    def forward(self, a, b):
        return (a * self.w).relu().sum() + (b.sin() * 3).cos().sum()


def test_broadcast_chain_and_reduction_fuse_forward_and_backward():
    cap = fusionlab.capture(BiasTanhSoftmax(), torch.randn(4, 16))
    cands = find_candidates(cap)
    fw = [c for c in cands if c.graph == "fw0"]
    (main,) = [c for c in fw if "aten.tanh.default" in c.ops]
    # [16] scale and bias broadcast into the [4, 16] chain, and the row sum joins with its
    # producers (exp) and consumer (div)
    assert {"primals_1", "primals_2"} <= set(main.inputs)
    assert main.domain == (4, 16) and main.reduce_dims == (1,)
    assert {"aten.mul.Tensor", "aten.add.Tensor", "aten.tanh.default", "aten.exp.default",
            "aten.sum.dim_IntList", "aten.div.Tensor"} <= set(main.ops)
    assert "bias" in main.pattern.split("+") and "tanh" in main.pattern.split("+")
    bw = [c for c in cands if c.graph == "bw0"]
    assert bw and any("tanh_backward" in c.pattern for c in bw)
    # the scale/bias gradients are column sums over the rows
    assert any(c.reduce_dims == (0,) for c in bw)
    for g in cap.graphs:
        assert contracted_is_acyclic(g, [c.nodes for c in cands if c.graph == g.tag])
    # the checker itself sees a cycle: the chain's ends without its middle
    assert not contracted_is_acyclic(cap.graph("fw0"), [(main.nodes[0], main.nodes[-1])])


def test_bytes_counted_by_hand_on_a_small_graph():
    """BiasTanhSoftmax on x[M, N] (inference), its one candidate's traffic counted by hand.

    Unfused, each op is its own kernel that reads its inputs and writes its result
    (elements; scale and bias are [N], the row sum is [M, 1]):

        mul  x * scale   reads MN + N   writes MN
        add  + bias      reads MN + N   writes MN
        tanh             reads MN       writes MN
        mul  * 2         reads MN       writes MN
        exp              reads MN       writes MN
        sum  (-1)        reads MN       writes M
        div  z / s       reads MN + M   writes MN
        total            reads 7MN + 2N + M, writes 6MN + M

    Fused: read x, scale and bias once (MN + 2N), write the result once (MN).
    """
    M, N = 4, 16
    cap = fusionlab.capture(BiasTanhSoftmax(N), torch.randn(M, N), train=False)
    (c,) = find_candidates(cap)
    assert c.kernels_unfused == 7 == len(c.nodes)
    assert c.bytes_unfused == 4 * (13 * M * N + 2 * N + 2 * M)
    assert c.bytes_fused == 4 * (2 * M * N + 2 * N)
    assert c.bytes_saved == 4 * (11 * M * N + 2 * M)


def test_shapes_that_do_not_broadcast_stay_apart():
    cap = fusionlab.capture(TwoShapes(), torch.randn(4, 8), torch.randn(3, 5))
    cands = find_candidates(cap)
    fx = cap.graph("fw0").nodes
    for c in cands:
        if c.graph != "fw0":
            continue
        shapes = {fx[n].shape for n in c.nodes if fx[n].kind == "pointwise" and fx[n].shape}
        assert not ({(4, 8), (3, 5)} <= shapes), c
    assert any(c.domain == (4, 8) for c in cands if c.graph == "fw0")
    assert any(c.domain == (3, 5) for c in cands if c.graph == "fw0")


def test_candidates_of_each_graph_after_a_graph_break():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            h = torch.tanh(self.lin(x) * 2 + 1)
            torch._dynamo.graph_break()
            return (h.exp() * 3).sum()

    cap = fusionlab.capture(Broken(), torch.randn(4, 8))
    cands = find_candidates(cap)
    tags = {c.graph for c in cands}
    assert {"fw0", "fw1"} <= tags
    assert all(c.id.startswith(c.graph + ".") for c in cands)


def test_find_candidates_needs_a_capture():
    with pytest.raises(TypeError, match="fusionlab.capture"):
        find_candidates(nn.Linear(2, 2))


def test_display(zoo_candidates):
    cands = zoo_candidates("gpt2-block")
    text = repr(cands)
    assert text.startswith(f"{len(cands)} fusion candidates")
    assert all(c.id in text for c in cands)
    html = cands._repr_html_()
    assert "<table>" in html and "fw0.matmul+bias+gelu.0" in html and "modeled" in html


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_aligns_is_torch_broadcasting(data):
    """aligns(shape, D) holds exactly when `shape` broadcasts to D without growing it."""
    domain = tuple(data.draw(st.lists(st.integers(1, 4), max_size=4), label="domain"))
    keep = data.draw(st.integers(0, len(domain)), label="trailing dims kept")
    how = data.draw(st.lists(st.sampled_from(["same", "one", "other"]), min_size=keep,
                             max_size=keep), label="per dim")
    lead = data.draw(st.integers(0, 2), label="extra leading dims")
    lead_size = data.draw(st.sampled_from([1, 2]), label="leading size")
    tail = domain[len(domain) - keep:]
    shape = (lead_size,) * lead + tuple(
        d if h == "same" else 1 if h == "one" else d + 1 for h, d in zip(how, tail)
    )
    try:
        out = torch.broadcast_shapes(shape, domain)
        extra = len(out) - len(domain)
        expected = out[extra:] == domain and all(s == 1 for s in out[:extra])
    except RuntimeError:
        expected = False
    assert aligns(shape, domain) == expected, (shape, domain)
