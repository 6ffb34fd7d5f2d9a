"""The built-in patterns, registered exactly as a user's are.

Most are *components*: a node belongs to "gelu" when it came from a module whose class
says what it is (``NewGELUActivation`` -> gelu, ``LlamaRMSNorm`` -> rms_norm), else when
Inductor's decompositions made it out of ``aten._softmax`` (its ``original_aten``), or when its
own op is the named one (relu, tanh, masked_fill). rms_norm written out by hand is matched
by structure (``rsqrt(mean(x*x) + eps)``); "add" and "bias" are prefixes; "matmul" is the
hook for the matmul-epilogue search (its groups are named "matmul+bias+gelu").
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ops
from .registry import NodeView, Pattern, add

# original_aten op -> the name a student recognises
FRIENDLY = {
    "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "native_layer_norm": "layer_norm",
    "gelu": "gelu",
    "silu": "silu",
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "_softmax_backward_data": "softmax_backward",
    "_log_softmax_backward_data": "log_softmax_backward",
    "native_layer_norm_backward": "layer_norm_backward",
    "gelu_backward": "gelu_backward",
    "silu_backward": "silu_backward",
    "threshold_backward": "relu_backward",
    "sigmoid_backward": "sigmoid_backward",
    "tanh_backward": "tanh_backward",
    "nll_loss_forward": "nll_loss",
    "nll_loss_backward": "nll_loss_backward",
    "_native_batch_norm_legit_functional": "batch_norm",
    "native_batch_norm": "batch_norm",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "native_batch_norm_backward": "batch_norm_backward",
    "rms_norm": "rms_norm",
    "_fused_rms_norm": "rms_norm",
    "mse_loss": "mse_loss",
    "cross_entropy_loss": "cross_entropy",
    "native_dropout_backward": "dropout_backward",
    "masked_fill": "masked_fill",
}

MODULE_NAMES = [  # substring of a module's class name -> pattern name
    ("RMSNorm", "rms_norm"), ("LayerNorm", "layer_norm"), ("BatchNorm", "batch_norm"),
    ("GELU", "gelu"), ("Gelu", "gelu"), ("SiLU", "silu"), ("Swish", "silu"), ("Softmax", "softmax"),
    ("ReLU", "relu"), ("Tanh", "tanh"), ("Sigmoid", "sigmoid"), ("Rotary", "rope"),
]
OWN_OPS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "threshold_backward": "relu_backward",
           "masked_fill": "masked_fill"}

EXPLAIN = {
    "softmax": "exp(x - max) / sum: unfused, the row maximum, the shifted exponentials and their "
               "sum each go to memory and come back; one kernel reads each row once and writes the "
               "probabilities once.",
    "log_softmax": "x - max - log(sum(exp(x - max))): the exponentials and the row statistics stay "
                   "in registers instead of making three round trips through memory.",
    "layer_norm": "mean and variance of each row, then (x - mean) * rstd * weight + bias: the "
                  "centred values and the statistics never leave the kernel; x is read once.",
    "rms_norm": "x * rsqrt(mean(x*x) + eps) * weight: the squares and the per-row scale stay on "
                "chip, so the row is read once instead of three times.",
    "batch_norm": "per-channel mean and variance over batch and space, then the normalisation: the "
                  "centred tensor and the statistics are not written out between steps.",
    "gelu": "the erf or tanh form of GELU is 4-8 pointwise ops; fused, their intermediates stay in "
            "registers and the activation is read once and written once.",
    "silu": "x * sigmoid(x): the sigmoid is not written to memory and read back.",
    "relu": "max(x, 0) folded into its neighbours: its input is not written just to be read again.",
    "sigmoid": "1 / (1 + exp(-x)) folded into its neighbours: no temporaries in memory.",
    "tanh": "tanh folded into the ops around it: its input and output stay in registers.",
    "nll_loss": "the picked log-probabilities, the ignore mask and the mean in one pass: no "
                "gathered tensor in memory.",
    "cross_entropy": "log_softmax and nll_loss in one kernel: the log-probabilities are never stored.",
    "mse_loss": "(a - b)^2 and its mean in one pass: the squared differences are never stored.",
    "masked_fill": "where(mask, value, x) folded into its reader: the filled tensor is not written out.",
    "dropout": "the mask multiply and the scale folded into the neighbours: the masked tensor is not stored.",
    "rope": "the rotary embedding's rotate-half, cos and sin products in one pass: no rotated copy in memory.",
    "add": "a residual add in front of a norm or activation: the sum is consumed in registers instead "
           "of being written and read back.",
    "bias": "a per-feature bias broadcast over the rows: added where the value is produced, so the "
            "pre-bias tensor never goes to memory.",
    "matmul": "a matmul whose output tile gets its epilogue (bias, activation, scale, residual, cast) "
              "before the store: the raw product never goes to memory. Found by the matmul-epilogue search.",
}


def _base_and_own(node: torch.fx.Node) -> tuple[str, str]:
    orig = node.meta.get("original_aten")
    base = orig.__name__.split(".")[0] if orig is not None and hasattr(orig, "__name__") else ""
    if not base and orig is not None:
        base = str(orig).split(".")[1] if "." in str(orig) else str(orig)
    name = ops.op_name(node)
    return base, name.split(".")[1] if "." in name else name


def component(node: torch.fx.Node, view: NodeView) -> str | None:
    """The built-in component a node belongs to, or None (cached on the view)."""
    cache = view.__dict__.setdefault("_components", {})
    if node in cache:
        return cache[node]
    base, own = _base_and_own(node)
    found = None
    if view.module(node):  # first: the tanh inside NewGELUActivation (and its gradient) is gelu's
        mtype = view.module_type(node)
        named = {n for k, n in MODULE_NAMES if k in mtype}
        # a class that names one component names its nodes; one naming two ("RMSNormSiLU")
        # leaves each node to its own decomposition or structure
        found = next(iter(named)) + ("_backward" if view.backward else "") if len(named) == 1 else None
    if found is None and base in FRIENDLY and base != own:
        found = FRIENDLY[base]
    if found is None:
        found = OWN_OPS.get(own)
    cache[node] = found
    return found


def _component_matcher(name: str):
    def match(node, view):
        return component(node, view) == name

    match.__name__ = f"is_{name}"
    return match


def _is_1d_into_nd(node: torch.fx.Node) -> bool:
    def rank(n):
        v = n.meta.get("val")
        return v.dim() if isinstance(v, torch.Tensor) else None

    return rank(node) is not None and rank(node) > 1 and any(
        isinstance(a, torch.fx.Node) and rank(a) == 1 for a in node.args)


def match_bias(node, view):
    return node.target is ops.aten.add.Tensor and _is_1d_into_nd(node)


def match_add(node, view):
    return getattr(node.target, "overloadpacket", None) is ops.aten.add


def match_rms_norm(node, view):
    """rsqrt(mean(x*x or x**2) + eps): the scale of a hand-written RMSNorm."""
    if node.target is not ops.aten.rsqrt.default or not isinstance(node.args[0], torch.fx.Node):
        return None
    eps = node.args[0]
    mean = eps.args[0] if getattr(eps.target, "overloadpacket", None) is ops.aten.add else eps
    if not isinstance(mean, torch.fx.Node) or mean.target is not ops.aten.mean.dim:
        return None
    sq = mean.args[0]
    if not isinstance(sq, torch.fx.Node):
        return None
    if (sq.target is ops.aten.pow.Tensor_Scalar and sq.args[1] == 2) or (
            sq.target is ops.aten.mul.Tensor and len(set(sq.args)) == 1):
        return [sq, mean] + ([eps] if eps is not mean else []) + [node]
    return None


def match_matmul(node, view):
    return view.kind(node) == "matmul"


def _names() -> list[str]:
    names = list(dict.fromkeys(list(FRIENDLY.values()) + [n for _, n in MODULE_NAMES]))
    out = []
    for n in names:
        out.append(n.removesuffix("_backward"))
    base = list(dict.fromkeys(out))
    return [x for b in base for x in (b, b + "_backward")]


def _explain(name: str) -> str:
    base = name.removesuffix("_backward")
    text = EXPLAIN.get(base, f"the ops {base} decomposes into, in one kernel.")
    if name == base:
        return text
    return (f"the gradient of {base}: its pointwise terms and row or column sums in one kernel, so "
            f"the intermediate gradients are not stored (forward: {text})")


def register_builtins() -> None:
    add(Pattern("matmul", EXPLAIN["matmul"], match_matmul, builtin=True, anchor="matmul",
                source="a mm, addmm or bmm node"))
    add(Pattern("rms_norm", EXPLAIN["rms_norm"], _either(match_rms_norm, _component_matcher("rms_norm")),
                builtin=True, source="rsqrt(mean(x*x) + eps), or the RMSNorm module / op"))
    for name in _names():
        if name != "rms_norm":
            add(Pattern(name, _explain(name), _component_matcher(name), builtin=True,
                        source="decomposed from the ATen op, or a module of that class"))
    add(Pattern("bias", EXPLAIN["bias"], match_bias, builtin=True, prefix=True,
                source="an add of a 1-D tensor into a larger one"))
    add(Pattern("add", EXPLAIN["add"], match_add, builtin=True, prefix=True, source="aten.add"))


def _either(a, b):
    def match(node, view):
        return a(node, view) or b(node, view)

    match.__name__ = f"{a.__name__}_or_{b.__name__}"
    return match
