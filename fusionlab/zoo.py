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
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
# Models
# --------------------------------------------------------------------------------------


class MLPClassifier(nn.Module):
    """Linear -> ReLU -> Linear -> GELU (exact) -> Linear, returning the cross-entropy loss."""

    def __init__(self, d_in: int = 64, d_hidden: int = 256, n_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(d_hidden, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x))
        h = self.act2(self.fc2(h))
        logits = self.head(h)
        return F.cross_entropy(logits, y)


class ConvBNClassifier(nn.Module):
    """Two Conv2d -> BatchNorm2d -> ReLU stages, global average pool and a linear head.

    Returns the cross-entropy loss. In training mode BatchNorm uses batch statistics and
    updates its running stats (buffer mutation in the captured graph).
    """

    def __init__(self, in_ch: int = 3, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.bn2(self.conv2(h)))
        h = torch.flatten(self.pool(h), 1)
        return F.cross_entropy(self.head(h), y)


def _causal_mask(n: int) -> torch.Tensor:
    """``[1, 1, n, n]`` bool, True where attention is allowed (key position <= query)."""
    return torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)


class CausalSelfAttention(nn.Module):
    """GPT-2 attention: one qkv Linear, explicit masked softmax (no SDPA), output Linear."""

    def __init__(self, n_embd: int, n_head: int, max_seq: int):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.register_buffer("mask", _causal_mask(max_seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    """Linear C->4C, GELU (tanh approximation), Linear 4C->C."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    """One GPT-2 pre-LayerNorm transformer block, written out by hand.

    ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; module paths match Hugging Face GPT-2
    (``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``).
    """

    def __init__(self, n_embd: int = 128, n_head: int = 4, max_seq: int = 128):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, max_seq)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = GPT2MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x**2, -1) + eps) * weight`` (Llama's RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope_tables(head_dim: int, max_seq: int, base: float = 10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    t = torch.arange(max_seq, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


class LlamaAttention(nn.Module):
    """Llama attention: bias-free q/k/v/o projections, rotary embeddings, causal softmax."""

    def __init__(self, dim: int, n_head: int, max_seq: int):
        super().__init__()
        assert dim % n_head == 0
        self.n_head = n_head
        self.head_dim = dim // n_head
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        cos, sin = _rope_tables(self.head_dim, max_seq)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", _causal_mask(max_seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        cos, sin = self.cos[:T], self.sin[:T]  # [T, D], broadcast over [B, H]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.o_proj(y)


class SwiGLU(nn.Module):
    """Llama MLP: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """One Llama decoder block: RMSNorm -> RoPE attention -> residual, RMSNorm -> SwiGLU -> residual.

    Module paths follow Hugging Face Llama (``input_layernorm``, ``self_attn.q_proj`` ...,
    ``post_attention_layernorm``, ``mlp.gate_proj`` ...).
    """

    def __init__(self, dim: int = 128, n_head: int = 4, hidden: int = 344, max_seq: int = 128):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, n_head, max_seq)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class HFCausalLM(nn.Module):
    """Wraps a Hugging Face causal LM so that ``model(input_ids)`` returns its LM loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, labels=input_ids).loss


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


def _build_gpt2_block(seed: int, batch: int) -> ZooModel:
    with _fork_rng(seed):
        model = GPT2Block(n_embd=128, n_head=4, max_seq=64)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 64, 128, generator=gen)
    return ZooModel(
        "gpt2-block",
        model,
        (x,),
        mean_square_loss,
        "hand-written GPT-2 pre-LN block (C=128, 4 heads, T=64): LayerNorm, causal "
        "softmax attention, tanh-GELU MLP",
    )


def _build_llama_block(seed: int, batch: int) -> ZooModel:
    with _fork_rng(seed):
        model = LlamaBlock(dim=128, n_head=4, hidden=344, max_seq=64)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 64, 128, generator=gen)
    return ZooModel(
        "llama-block",
        model,
        (x,),
        mean_square_loss,
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
