"""Tests for fusionlab.zoo: the reference models build, train one step, and are deterministic."""

from __future__ import annotations

import pytest
import torch

from fusionlab import zoo

SMALL = [n for n in zoo.names() if n != "gpt2-12l"]


def _loss(m: zoo.ZooModel) -> torch.Tensor:
    out = m.model(*m.inputs)
    return out if m.loss_fn is None else m.loss_fn(out)


def _state(m: zoo.ZooModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def _same_tensors(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_names():
    ns = zoo.names()
    assert ns == ["mlp", "cnn-bn", "gpt2-block", "llama-block", "gpt2-tiny", "gpt2-12l"]
    assert ns is not zoo.names()  # callers may mutate their copy


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_finite(name):
    m = zoo.get(name)
    assert m.name == name
    assert isinstance(m.model, torch.nn.Module) and m.model.training
    assert isinstance(m.inputs, tuple) and m.description
    loss = _loss(m)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    params = [p for p in m.model.parameters() if p.requires_grad]
    assert params
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()


def test_gpt2_12l_builds():
    m = zoo.get("gpt2-12l")
    assert m.name == "gpt2-12l"
    assert len(m.model.model.transformer.h) == 12
    assert m.inputs[0].shape == (2, 128)
    assert m.loss_fn is None


@pytest.mark.parametrize("name", SMALL)
def test_deterministic_seed(name):
    a, b, c = zoo.get(name, seed=3), zoo.get(name, seed=3), zoo.get(name, seed=4)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _same_tensors(a.inputs, b.inputs)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not _same_tensors(a.inputs, c.inputs)


@pytest.mark.parametrize("name", SMALL)
def test_get_leaves_global_rng_alone(name):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    zoo.get(name, seed=7)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("name", SMALL)
def test_batch_override(name):
    default = zoo.get(name)
    m = zoo.get(name, batch=3)
    for x, d in zip(m.inputs, default.inputs):
        assert x.shape[0] == 3
        assert x.shape[1:] == d.shape[1:]
    assert torch.isfinite(_loss(m))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", SMALL)
def test_dtype(name, dtype):
    m = zoo.get(name, dtype=dtype)
    floating = [t for t in [*m.model.parameters(), *m.model.buffers()] if t.is_floating_point()]
    assert floating and all(t.dtype == dtype for t in floating)
    # Non-floating buffers (causal masks, BatchNorm's step counter) keep their fp32-model dtype.
    fp32 = {k: b.dtype for k, b in zoo.get(name).model.named_buffers() if not b.is_floating_point()}
    assert {k: b.dtype for k, b in m.model.named_buffers() if k in fp32} == fp32
    for x in m.inputs:
        assert x.dtype == dtype if x.is_floating_point() else x.dtype == torch.int64
    if dtype == torch.bfloat16:
        with torch.no_grad():
            assert torch.isfinite(_loss(m).float())


def test_bad_arguments():
    with pytest.raises(ValueError, match="mlp.*gpt2-block.*gpt2-tiny"):
        zoo.get("resnet-9000")
    with pytest.raises(ValueError):
        zoo.get("mlp", batch=0)
    with pytest.raises(ValueError):
        zoo.get("mlp", dtype=torch.int32)


def test_repr_and_loss_fn():
    m = zoo.get("gpt2-block")
    r = repr(m)
    assert "gpt2-block" in r and "GPT2Block" in r and "float32[2, 64, 128]" in r
    assert len(r) < 200
    assert m.loss_fn is zoo.mean_square_loss
    assert zoo.get("mlp").loss_fn is None


def test_gpt2_block_structure():
    m = zoo.get("gpt2-block").model
    names = {n for n, _ in m.named_modules()}
    assert {
        "ln_1",
        "attn.c_attn",
        "attn.c_proj",
        "ln_2",
        "mlp.c_fc",
        "mlp.act",
        "mlp.c_proj",
    } <= names
    assert "mask" not in m.state_dict()  # non-persistent
    assert m.attn.mask.dtype == torch.bool


def test_gpt2_block_is_causal():
    m = zoo.get("gpt2-block")
    x = m.inputs[0]
    y = m.model(x)
    x2 = x.clone()
    x2[:, -1] += 1.0  # changing the last position must not change earlier outputs
    y2 = m.model(x2)
    torch.testing.assert_close(y[:, :-1], y2[:, :-1])
    assert not torch.allclose(y[:, -1], y2[:, -1])


def test_llama_block_is_causal_and_biasless():
    m = zoo.get("llama-block")
    assert all(mod.bias is None for mod in m.model.modules() if isinstance(mod, torch.nn.Linear))
    x = m.inputs[0]
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(m.model(x)[:, :-1], m.model(x2)[:, :-1])


def test_hf_gpt2_config():
    m = zoo.hf_gpt2(n_layer=1, seq=16, batch=1)
    assert isinstance(m.model, zoo.HFCausalLM)
    cfg = m.model.model.config
    assert cfg._attn_implementation == "eager"
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    assert cfg.use_cache is False
    assert m.inputs[0].shape == (1, 16) and m.inputs[0].dtype == torch.int64
    # dropout off, so two calls in training mode agree
    torch.testing.assert_close(m.model(*m.inputs), m.model(*m.inputs))
    with pytest.raises(ValueError):
        zoo.hf_gpt2(n_positions=32, seq=64)
