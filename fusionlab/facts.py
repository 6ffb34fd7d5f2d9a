"""Node facts: what fusionlab knows about each node of a captured ATen graph.

Shape, dtype, strides and bytes from the node's fake value; the module it came from
("h.0.mlp.act", from dynamo's ``nn_module_stack``) and its source line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from . import ops


@dataclass
class NodeInfo:
    """What fusionlab knows about one FX node."""

    name: str
    op: str  # "aten.add.Tensor", "placeholder", "output", "getitem"
    kind: str  # ops kind: pointwise/reduction/view/matmul/opaque/placeholder/output
    shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    stride: tuple[int, ...] | None
    nbytes: int
    module: str  # "h.0.mlp.act" ("" when unknown)
    source: str  # "model.py:42  x = self.act(x)" ("" when unknown)
    module_type: str = ""  # class of that module, "GELU" ("" when unknown)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.shape)) if self.shape is not None else "-"
        dt = str(self.dtype).replace("torch.", "") if self.dtype is not None else ""
        where = f"  [{self.module}]" if self.module else ""
        return f"{self.name} = {self.op} {dt}[{shape}] ({self.kind}){where}"



_MODULE_KEY = re.compile(r"^L\['[^']*'\]\.?|^L\[\"[^\"]*\"\]\.?")


def normalize_module_path(path: str) -> str:
    """Dynamo's "L['self'].h[0].mlp.act" -> "h.0.mlp.act"."""
    path = _MODULE_KEY.sub("", path)
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    path = re.sub(r"_modules\['([^']*)'\]", r"\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    path = path.strip(".")
    if path == "self":
        return ""
    if path.startswith("self."):
        path = path[5:]
    return path


def _module_type_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack")
    if not stack:
        return ""
    _path, cls = list(stack.values())[-1]
    name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
    return "" if name == "TrainStep" else name


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack")
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    path = normalize_module_path(str(path))
    # the capture wraps the user's model in `TrainStep.model`
    if path == "model":
        return ""
    if path.startswith("model."):
        path = path[6:]
    return path


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _source_of(node: torch.fx.Node) -> str:
    trace = node.meta.get("stack_trace")
    if not trace:
        return ""
    frames = _FRAME.findall(trace)
    frames = [f for f in frames if "fusionlab/capture.py" not in f[0]]
    if not frames:
        return ""
    file, line, _fn, code = frames[-1]
    return f"{file.rsplit('/', 1)[-1]}:{line}  {code.strip()}"


def _tensor_meta(val: Any):
    if isinstance(val, torch.Tensor):
        try:
            shape = tuple(int(s) for s in val.shape)
            stride = tuple(int(s) for s in val.stride())
        except (TypeError, RuntimeError):  # symbolic sizes
            return None, val.dtype, None, 0
        nbytes = val.dtype.itemsize * math.prod(shape)
        return shape, val.dtype, stride, nbytes
    return None, None, None, 0


def node_facts(gm: torch.fx.GraphModule) -> dict[str, NodeInfo]:
    """NodeInfo for every node of an ATen graph, keyed by node name."""
    by_seq: dict[int, torch.fx.Node] = {}
    for n in gm.graph.nodes:
        if "seq_nr" in n.meta and (n.meta.get("nn_module_stack") or n.meta.get("fwd_nn_module_stack")):
            by_seq.setdefault(n.meta["seq_nr"], n)
    facts = {}
    for n in gm.graph.nodes:
        shape, dtype, stride, nbytes = _tensor_meta(n.meta.get("val"))
        module = _module_of(n)
        module_type = _module_type_of(n)
        has_stack = bool(n.meta.get("nn_module_stack") or n.meta.get("fwd_nn_module_stack"))
        if not module and not has_stack and "seq_nr" in n.meta and n.meta["seq_nr"] in by_seq:
            module = _module_of(by_seq[n.meta["seq_nr"]])
            module_type = _module_type_of(by_seq[n.meta["seq_nr"]])
        facts[n.name] = NodeInfo(
            name=n.name,
            op=ops.op_name(n),
            kind=ops.kind_of(n),
            shape=shape,
            dtype=dtype,
            stride=stride,
            nbytes=nbytes,
            module=module,
            source=_source_of(n),
            module_type=module_type,
        )
    return facts
