"""Stage 2, candidates: which nodes of a captured graph one kernel could compute.

A candidate is a group of pointwise and reduction nodes of one graph that share one
iteration domain: every value in the group broadcasts (right-aligned, as torch does) to
the domain shape ``D``; a group with reductions reduces the same dims ``R`` of ``D`` in
all of them (softmax's amax and sum, layer_norm's var_mean). Such a group is one Triton
kernel: pointwise over ``D``, or rows of ``D`` with ``R`` brought last by index math.

A pointwise group that reads a matmul's whole result also takes the matmul (and the
reshapes between them): one tiled ``tl.dot`` kernel with the group as its epilogue
(:mod:`fusionlab.epilogue`, ``Candidate.kind == "matmul"``).

The search itself (greedy growth, merges refused when a path would leave the group and
re-enter it) lives in :mod:`fusionlab.grouping`; bytes and FLOPs in
:mod:`fusionlab.nodecost`. This module turns the groups into named, costed Candidates and
gives every node left out of all candidates a one-line reason.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
import torch.fx

from . import ops
from .capture import Capture, CapturedGraph
from .epilogue import attach_matmuls, epilogue_name, is_matmul
from .grouping import GroupFinder, aligns, node_shape
from .nodecost import fmt_bytes, group_costs

_shape = node_shape  # the pattern names below read shapes too
_MATMUL_OPS = ("aten.mm.default", "aten.addmm.default", "aten.bmm.default")
__all__ = ["Candidate", "Candidates", "aligns", "find_candidates", "graph_candidates", "pattern_name"]

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
    "where": "where",
}


@dataclass
class Candidate:
    """A group of nodes one kernel can compute."""

    id: str  # "fw0.layer_norm.1": graph tag, pattern, ordinal
    graph: str  # graph tag, "fw0" / "bw0" / "inf0"
    pattern: str
    nodes: tuple[str, ...]  # members, topological order
    inputs: tuple[str, ...]  # tensors read from outside the group
    outputs: tuple[str, ...]  # members read after the group (or graph outputs)
    domain: tuple[int, ...]  # iteration shape D
    reduce_dims: tuple[int, ...]  # R (empty for pointwise groups)
    kernels_unfused: int  # kernels the members launch when run one by one
    bytes_unfused: int  # modeled: each member reads its inputs and writes its result
    bytes_fused: int  # modeled: read each group input once, write each output once
    modules: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if any(o in _MATMUL_OPS for o in self.ops):
            return "matmul"  # a matmul with its epilogue (fusionlab.epilogue)
        return "reduction" if self.reduce_dims else "pointwise"

    @property
    def bytes_saved(self) -> int:
        return self.bytes_unfused - self.bytes_fused

    def matches(self, key: str) -> bool:
        """Selected by `key`: its id, its pattern, or one component of its pattern."""
        return key == self.id or key == self.pattern or key in self.pattern.split("+")

    def __repr__(self) -> str:
        mods = f" [{', '.join(self.modules[:2])}{', ...' if len(self.modules) > 2 else ''}]" if self.modules else ""
        return (
            f"<Candidate {self.id}: {len(self.nodes)} nodes, {self.kernels_unfused} kernels -> 1, "
            f"saves {fmt_bytes(self.bytes_saved)} (modeled){mods}>"
        )


class Candidates(list):
    """The candidates of a capture (a list) plus why every other node was left out.

    ``left_out`` maps (graph tag, node name) to the reason.
    """

    def __init__(self, items=(), capture=None, left_out=None):
        super().__init__(items)
        self.capture = capture
        self.left_out = left_out or {}
        self.optimizer: list[Candidate] = []  # candidates of the optimizer update (fusionlab.optim)

    def by_id(self, cid: str) -> Candidate:
        for c in self:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def reason(self, graph: str, node: str) -> str | None:
        return self.left_out.get((graph, node))

    def table(self) -> str:
        lines = [f"{'id':34} {'nodes':>5} {'kernels':>7} {'saves (modeled)':>15}  modules"]
        for c in self:
            lines.append(
                f"{c.id:34} {len(c.nodes):5d} {c.kernels_unfused:4d}->1 {fmt_bytes(c.bytes_saved):>15}  "
                + ", ".join(c.modules[:3])
            )
        return "\n".join(lines)

    def why_not(self, limit: int = 20, views: bool = False) -> str:
        """Reasons for nodes left out of every candidate (views only when `views=True`)."""
        lines = []
        for (g, n), r in self.left_out.items():
            if views or not r.startswith("view "):
                lines.append(f"{g}.{n}: {r}")
        extra = len(lines) - limit
        return "\n".join(lines[:limit] + ([f"... {extra} more"] if extra > 0 else []))

    def __repr__(self) -> str:
        return f"{len(self)} fusion candidates\n" + self.table()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(c.id)}</code></td><td>{len(c.nodes)}</td>"
            f"<td>{c.kernels_unfused}&rarr;1</td><td>{fmt_bytes(c.bytes_saved)}</td>"
            f"<td>{html.escape(', '.join(c.modules[:3]))}</td></tr>"
            for c in self
        )
        return (
            f"<b>{len(self)} fusion candidates</b> (bytes are modeled)<table><tr><th>id</th>"
            "<th>nodes</th><th>kernels</th><th>saves</th><th>modules</th></tr>" + rows + "</table>"
        )


# --------------------------------------------------------------------------- naming & costs


MODULE_NAMES = [  # substring of a module's class name -> pattern name
    ("RMSNorm", "rms_norm"), ("LayerNorm", "layer_norm"), ("BatchNorm", "batch_norm"),
    ("GELU", "gelu"), ("Gelu", "gelu"), ("SiLU", "silu"), ("Swish", "silu"), ("Softmax", "softmax"),
    ("ReLU", "relu"), ("Tanh", "tanh"), ("Sigmoid", "sigmoid"), ("Rotary", "rope"),
]


def _module_component(module_type: str, backward: bool) -> str | None:
    for key, name in MODULE_NAMES:
        if key in module_type:
            return name + ("_backward" if backward else "")
    return None


def _component(node: torch.fx.Node) -> tuple[str, bool]:
    """(name, is_named) for pattern naming: the high-level op a node came from."""
    orig = node.meta.get("original_aten")
    base = orig.__name__.split(".")[0] if orig is not None and hasattr(orig, "__name__") else ""
    if not base and orig is not None:
        base = str(orig).split(".")[1] if "." in str(orig) else str(orig)
    own = ops.op_name(node).split(".")[1] if "." in ops.op_name(node) else ops.op_name(node)
    if base in FRIENDLY and base != own:
        return FRIENDLY[base], True
    if own in ("relu", "sigmoid", "tanh", "threshold_backward", "where", "masked_fill"):
        return FRIENDLY.get(own, own), own not in ("where",)
    if own == "add" and any(
        isinstance(a, torch.fx.Node) and (_shape(a) or ()) and len(_shape(a)) == 1 and _shape(node) and len(_shape(node)) > 1
        for a in node.args
    ):
        return "bias", False
    return own, False


def _is_rms_norm(members: list[torch.fx.Node]) -> bool:
    names = [ops.op_name(m) for m in members]
    if "aten.rsqrt.default" not in names:
        return False
    for m in members:
        if m.target in (ops.aten.mean.dim,) and isinstance(m.args[0], torch.fx.Node):
            src = m.args[0]
            if src.target is ops.aten.pow.Tensor_Scalar and src.args[1] == 2:
                return True
            if src.target is ops.aten.mul.Tensor and len(set(src.args)) == 1:
                return True
    return False


def pattern_name(members: list[torch.fx.Node], backward: bool, facts: dict | None = None) -> str:
    comps: list[str] = []
    named = False
    for m in members:
        if m.op != "call_function" or m.target.__class__.__name__ == "builtin_function_or_method":
            continue
        name, is_named = _component(m)
        if not is_named and facts is not None and m.name in facts and facts[m.name].module:
            # named after the (non-root) module it came from: RMSNorm, NewGELUActivation ...
            by_module = _module_component(facts[m.name].module_type, backward)
            if by_module:
                name, is_named = by_module, True
        named |= is_named
        if name not in comps:
            comps.append(name)
    if _is_rms_norm(members) and "rms_norm" not in comps:  # not when RMSNorm's module named it already
        at = comps.index("pow") if "pow" in comps else comps.index("mean") if "mean" in comps else 0
        comps.insert(at, "rms_norm")
        named = True
    if named:
        keep = []
        first_named = next((i for i, c in enumerate(comps) if _is_named(c)), 0)
        for i, c in enumerate(comps):
            if _is_named(c) or (i < first_named and c in ("add", "bias")):
                keep.append(c)
        return "+".join(keep[:4])
    if comps and all(c in ("clone", "_to_copy", "copy", "convert_element_type") for c in comps):
        return "copy"
    kind = "reduction" if any(ops.kind_of(m) == "reduction" for m in members) else "pointwise"
    return kind


_NAMED = set(FRIENDLY.values()) | {n for _, n in MODULE_NAMES} | {"rms_norm"}


def _is_named(c: str) -> bool:
    return c in _NAMED or c.removesuffix("_backward") in _NAMED


# --------------------------------------------------------------------------- entry point


def graph_candidates(graph: CapturedGraph, min_kernels: int = 2) -> tuple[list[Candidate], dict]:
    """Candidates of one captured graph and reasons for the nodes left out."""
    finder = GroupFinder(graph)
    groups = attach_matmuls(graph, finder, finder.run())  # mm/addmm/bmm join their pointwise epilogue
    counts: dict[str, int] = {}
    result = []
    left_out: dict[tuple[str, str], str] = {}
    in_group: set = set()
    for g in groups:
        members = g.members
        mset = set(members)
        kernels = sum(1 for m in members if ops.launches_kernel(finder.kind[m]))
        if kernels < min_kernels:
            for m in members:
                if ops.launches_kernel(finder.kind[m]):
                    why = finder.failed.get(m)
                    left_out[(graph.tag, m.name)] = (
                        f"not fusable with its neighbours: {why}" if why else "no fusable neighbour"
                    )
            continue
        in_group |= mset
        inputs = []
        for m in members:
            for a in m.all_input_nodes:
                if a not in mset and a not in inputs:
                    inputs.append(a)
        outputs = [m for m in members if any(u not in mset for u in m.users)]
        # a multi-output reduction is stored through its getitems
        outputs = [o for o in outputs if finder.kind[o] != "reduction" or not _is_multi(o)]
        backward = graph.kind == "backward"
        pattern = (epilogue_name if any(is_matmul(m) for m in members) else pattern_name)(members, backward, graph.nodes)
        k = counts.get(pattern, 0)
        counts[pattern] = k + 1
        kernels_unfused, bu, bf = group_costs(members, inputs, outputs)
        mods = []
        for m in members:
            mod = graph.nodes[m.name].module
            if mod and mod not in mods:
                mods.append(mod)
        result.append(
            Candidate(
                id=f"{graph.tag}.{pattern}.{k}",
                graph=graph.tag,
                pattern=pattern,
                nodes=tuple(m.name for m in members),
                inputs=tuple(a.name for a in inputs),
                outputs=tuple(o.name for o in outputs),
                domain=tuple(g.domain),
                reduce_dims=tuple(g.rdims or ()),
                kernels_unfused=kernels_unfused,
                bytes_unfused=bu,
                bytes_fused=bf,
                modules=tuple(mods),
                ops=tuple(dict.fromkeys(ops.op_name(m) for m in members)),
            )
        )
    for n, why in finder.reason.items():
        if n not in in_group and n.op == "call_function":
            left_out[(graph.tag, n.name)] = why
    return result, left_out


def _is_multi(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), (list, tuple))


def find_candidates(capture: Capture) -> Candidates:
    """Fusion candidates in every graph of `capture`, forward and backward."""
    if not isinstance(capture, Capture):
        raise TypeError(
            f"find_candidates takes the Capture returned by fusionlab.capture(...), got {type(capture).__name__}"
        )
    found = []
    left_out: dict = {}
    for g in capture.graphs:
        cands, why = graph_candidates(g)
        found += cands
        left_out.update(why)
    cands = Candidates(found, capture=capture, left_out=left_out)
    if capture.optimizer is not None:  # opt0: kept apart, the plan selects forward/backward groups
        from .optim.candidates import optimizer_candidates

        cands.optimizer = optimizer_candidates(capture.optimizer)
    return cands
