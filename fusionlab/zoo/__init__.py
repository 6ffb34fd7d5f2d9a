"""Small reference models with example inputs, for tutorials, tests and benchmarks.

Every model is sized so that capturing one training step (TorchDynamo + AOTAutograd) takes
a few seconds at most on a small CPU, and an eager forward+backward well under a second.

>>> from fusionlab import zoo
>>> zoo.names()
['mlp', 'cnn-bn', 'gpt2-block', 'llama-block', 'gpt2-tiny', 'gpt2-12l']
>>> m = zoo.get("gpt2-block")
>>> loss = m.loss_fn(m.model(*m.inputs))

``get`` is deterministic (same seed, same weights and inputs) and leaves the caller's global
RNG state alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .models import (
    GPT2MLP,
    CausalSelfAttention,
    ConvBNClassifier,
    GPT2Block,
    HFCausalLM,
    LlamaAttention,
    LlamaBlock,
    MLPClassifier,
    RMSNorm,
    SwiGLU,
)

__all__ = [
    "ZooModel",
    "names",
    "get",
    "hf_gpt2",
    "HFCausalLM",
    "MLPClassifier",
    "ConvBNClassifier",
    "GPT2Block",
    "LlamaBlock",
    "RMSNorm",
    "GPT2MLP",
    "CausalSelfAttention",
    "LlamaAttention",
    "SwiGLU",
    "mean_square_loss",
]


@dataclass
class ZooModel:
    """A model, example inputs for ``model(*inputs)`` and how to turn its output into a loss."""

    name: str
    model: torch.nn.Module
    inputs: tuple
    loss_fn: Callable | None  # output -> scalar loss; None when the model returns the loss
    description: str

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        ins = ", ".join(_describe(x) for x in self.inputs)
        loss = "model returns loss" if self.loss_fn is None else _fn_name(self.loss_fn)
        return (
            f"ZooModel({self.name!r}: {type(self.model).__name__}, "
            f"{_human(n_params)} params, inputs=({ins}), loss={loss})"
        )


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        dt = str(x.dtype).removeprefix("torch.")
        return f"{dt}[{', '.join(str(s) for s in x.shape)}]"
    return type(x).__name__


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _human(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def mean_square_loss(out: torch.Tensor) -> torch.Tensor:
    """A scalar loss for models that return activations: ``out.pow(2).mean()``."""
    return out.pow(2).mean()


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fork_rng(seed: int):
    """Seed torch's CPU RNG for the block; restore the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def hf_gpt2(
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 128,
    vocab_size: int = 1000,
    batch: int = 2,
    seq: int = 64,
    seed: int = 0,
) -> ZooModel:
    """A randomly initialised Hugging Face ``GPT2LMHeadModel`` (nothing is downloaded).

    Eager attention (explicit softmax in the graph), no dropout, no KV cache. The model is
    wrapped in :class:`HFCausalLM`, so ``model(input_ids)`` returns the LM loss.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fusionlab.zoo.hf_gpt2 needs Hugging Face transformers: pip install transformers"
        ) from e
    if seq > n_positions:
        raise ValueError(f"seq={seq} is longer than n_positions={n_positions}")

    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        vocab_size=vocab_size,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        # GPT-2's default special tokens (50256) lie outside a small vocabulary.
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    config._attn_implementation = "eager"
    with _fork_rng(seed):
        lm = GPT2LMHeadModel(config)
        # transformers derives the loss from the class name, and "GPT2LMHeadModel" matches
        # no entry (it would warn and fall back to this same loss).
        lm.loss_type = "ForCausalLM"
        gen = torch.Generator().manual_seed(seed + 1)
        input_ids = torch.randint(0, vocab_size, (batch, seq), generator=gen)
    lm.train()
    desc = (
        f"Hugging Face GPT2LMHeadModel, {n_layer} layers, n_embd={n_embd}, n_head={n_head}, "
        f"vocab={vocab_size}, random weights, eager attention; returns the LM loss"
    )
    return ZooModel(
        name=f"hf-gpt2-{n_layer}l",
        model=HFCausalLM(lm),
        inputs=(input_ids,),
        loss_fn=None,
        description=desc,
    )


def _build_mlp(seed: int, batch: int) -> ZooModel:
    with _fork_rng(seed):
        model = MLPClassifier()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 64, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return ZooModel(
        "mlp",
        model,
        (x, y),
        None,
        "MLP classifier 64->256->256->10 with ReLU and exact GELU; returns cross-entropy",
    )


def _build_cnn_bn(seed: int, batch: int) -> ZooModel:
    with _fork_rng(seed):
        model = ConvBNClassifier()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return ZooModel(
        "cnn-bn",
        model,
        (x, y),
        None,
        "Conv-BatchNorm-ReLU x2, global avg pool, linear head on 3x16x16 images; "
        "returns cross-entropy",
    )


def _build_block(name: str, make: Callable[[], nn.Module], seed: int, batch: int, doc: str) -> ZooModel:
    """A transformer block on (batch, 64, 128) activations, trained on mean-square loss."""
    with _fork_rng(seed):
        model = make()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 64, 128, generator=gen)
    return ZooModel(name, model, (x,), mean_square_loss, doc)


def _build_gpt2_block(seed: int, batch: int) -> ZooModel:
    return _build_block(
        "gpt2-block", lambda: GPT2Block(n_embd=128, n_head=4, max_seq=64), seed, batch,
        "hand-written GPT-2 pre-LN block (C=128, 4 heads, T=64): LayerNorm, causal "
        "softmax attention, tanh-GELU MLP",
    )


def _build_llama_block(seed: int, batch: int) -> ZooModel:
    return _build_block(
        "llama-block", lambda: LlamaBlock(dim=128, n_head=4, hidden=344, max_seq=64), seed, batch,
        "hand-written Llama block (dim=128, 4 heads, T=64): RMSNorm, RoPE causal softmax "
        "attention, SwiGLU MLP (hidden=344), no biases",
    )


def _build_gpt2_tiny(seed: int, batch: int) -> ZooModel:
    m = hf_gpt2(batch=batch, seed=seed)
    m.name = "gpt2-tiny"
    return m


def _build_gpt2_12l(seed: int, batch: int) -> ZooModel:
    m = hf_gpt2(n_layer=12, n_embd=128, n_head=4, batch=batch, seq=128, seed=seed)
    m.name = "gpt2-12l"
    return m


# name -> (builder(seed, batch), default batch)
_REGISTRY: dict[str, tuple[Callable[[int, int], ZooModel], int]] = {
    "mlp": (_build_mlp, 32),
    "cnn-bn": (_build_cnn_bn, 8),
    "gpt2-block": (_build_gpt2_block, 2),
    "llama-block": (_build_llama_block, 2),
    "gpt2-tiny": (_build_gpt2_tiny, 2),
    "gpt2-12l": (_build_gpt2_12l, 2),
}

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def names() -> list[str]:
    """The registered model names, smallest first."""
    return list(_REGISTRY)


def get(
    name: str,
    *,
    seed: int = 0,
    batch: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> ZooModel:
    """Build the zoo model ``name`` with its example inputs.

    ``seed`` fixes weights and inputs (the caller's global RNG state is left untouched).
    ``batch`` overrides the batch size of the inputs. ``dtype`` casts the model's floating
    parameters and buffers and the floating inputs (float32, float16 or bfloat16).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown zoo model {name!r}; known models: {', '.join(names())}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(str(d) for d in _DTYPES)}, got {dtype}")
    builder, default_batch = _REGISTRY[name]
    if batch is None:
        batch = default_batch
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    zm = builder(seed, batch)
    zm.model.train()
    if dtype != torch.float32:
        zm.model.to(dtype)  # casts floating params/buffers only; bool masks stay bool
        zm.inputs = tuple(
            x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
            for x in zm.inputs
        )
        zm.description += f" [{str(dtype).removeprefix('torch.')}]"
    return zm
