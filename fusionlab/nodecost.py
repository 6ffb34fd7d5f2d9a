"""Modeled bytes and FLOPs of one node, or of one group of nodes run as one kernel.

The one place these figures are defined: the candidate search costs its groups with them,
and :mod:`fusionlab.cost` models whole training steps (``FusionPlan.summary`` included)
from them. Modeled, never measured:

* a node that launches a kernel reads each distinct input tensor once and writes its
  result once; a fused group reads each group input once and writes each group output
  once (what its members pass to each other stays on chip);
* FLOPs: matmuls from their shapes (``2*M*N*K`` for mm, ...), every other op about one
  FLOP per element it produces (a reduction: per element it reads).
"""

from __future__ import annotations

import math

import torch
import torch.fx

from . import ops

aten = torch.ops.aten


def fmt_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def node_tensors(node) -> list[torch.Tensor]:
    """The (fake) tensor(s) a node produces, from its ``meta["val"]``."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    vals = val if isinstance(val, (list, tuple)) else [val]
    return [v for v in vals if isinstance(v, torch.Tensor)]


def node_numel(node) -> int:
    """Elements of the tensor(s) a node produces (symbolic sizes count 0)."""
    n = 0
    for v in node_tensors(node):
        try:
            n += v.numel()
        except TypeError:  # symbolic sizes
            pass
    return n


def tensor_bytes(node) -> int:
    """Bytes of the tensor(s) a node produces (a multi-output node: all of them)."""
    total = 0
    for v in node_tensors(node):
        try:
            total += v.numel() * v.dtype.itemsize
        except TypeError:  # symbolic sizes
            pass
    return total


def node_reads_writes(node: torch.fx.Node) -> tuple[int, int]:
    """Modeled (bytes read, bytes written) of one node run as its own kernel."""
    if ops.kind_of(node) == "getitem":
        return 0, 0
    reads = sum(tensor_bytes(a) for a in dict.fromkeys(node.all_input_nodes))
    return reads, tensor_bytes(node)


def node_traffic(node: torch.fx.Node) -> int:
    """Modeled bytes one node moves when it runs as its own kernel: reads + writes."""
    return sum(node_reads_writes(node))


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return ()


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def matmul_flops(node: torch.fx.Node) -> int:
    """FLOPs of a matmul-kind node from its operand shapes (multiply-add = 2 FLOPs)."""
    t = node.target
    a = [_shape(x) if isinstance(x, torch.fx.Node) else () for x in node.args]
    out = node_numel(node)
    try:
        if t is aten.mm.default:
            (m, k), (_, n) = a[0], a[1]
            return 2 * m * k * n
        if t is aten.addmm.default:
            (m, k), (_, n) = a[1], a[2]
            return 2 * m * k * n + m * n
        if t is aten.bmm.default:
            (b, m, k), (_, _, n) = a[0], a[1]
            return 2 * b * m * k * n
        if t is aten.baddbmm.default:
            (b, m, k), (_, _, n) = a[1], a[2]
            return 2 * b * m * k * n + b * m * n
        if t is aten.addbmm.default:
            (b, m, k), (_, _, n) = a[1], a[2]
            return 2 * b * m * k * n + m * n
        if t is aten.dot.default:
            return 2 * a[0][0]
        if t is aten.mv.default:
            m, k = a[0]
            return 2 * m * k
        if t is aten.convolution.default:
            w = a[1]
            transposed = bool(node.args[6]) if len(node.args) > 6 else False
            bias = len(node.args) > 2 and node.args[2] is not None
            if transposed:  # weight [Cin, Cout/groups, *k]: every input element meets Cout/groups*k
                flops = 2 * _prod(a[0]) * w[1] * _prod(w[2:])
            else:  # weight [Cout, Cin/groups, *k]: every output element is a Cin/groups*k dot
                flops = 2 * out * _prod(w[1:])
            return flops + (out if bias else 0)
        if t is aten.convolution_backward.default:
            grad_out, _inp, w = a[0], a[1], a[2]
            mask = node.args[10] if len(node.args) > 10 else [True, True, True]
            fwd = 2 * _prod(grad_out) * _prod(w[1:])
            return fwd * (int(bool(mask[0])) + int(bool(mask[1]))) + (_prod(grad_out) if mask[2] else 0)
        name = str(t)
        if "scaled_dot_product" in name:
            q, k, v = (a[1], a[2], a[3]) if "backward" in name else (a[0], a[1], a[2])
            *batch, length, e = q
            s = k[-2]
            fwd = 2 * _prod(batch) * length * s * (e + v[-1])
            # backward: dQ, dK, dV, dP (twice the forward's matmuls) plus recomputing S
            return int(fwd * 2.5) if "backward" in name else fwd
    except (ValueError, IndexError, TypeError):
        pass
    return 2 * out  # unknown shape pattern: at least one multiply-add per output element


def node_flops(node: torch.fx.Node, kind: str | None = None) -> int:
    """Modeled FLOPs of one node: matmuls from shapes; else ~1 per element produced (reductions: read)."""
    kind = kind or ops.kind_of(node)
    if kind == "matmul":
        return matmul_flops(node)
    if kind == "reduction":
        x = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        return node_numel(x) if x is not None else node_numel(node)
    if kind in ("pointwise", "opaque"):
        return node_numel(node)
    return 0


def group_bytes(inputs, outputs) -> tuple[int, int]:
    """Modeled (bytes read, bytes written) of a group run as one kernel: each input and output once."""
    return sum(tensor_bytes(i) for i in inputs), sum(tensor_bytes(o) for o in outputs)


def group_costs(members, inputs, outputs) -> tuple[int, int, int]:
    """(kernels its members launch one by one, bytes they move so, bytes the group moves as one kernel)."""
    launching = [m for m in members if ops.launches_kernel(ops.kind_of(m))]  # a matmul's reshapes: no kernel
    unfused = sum(node_traffic(m) for m in launching)
    kernels = len(launching)
    return kernels, unfused, sum(group_bytes(inputs, outputs))
