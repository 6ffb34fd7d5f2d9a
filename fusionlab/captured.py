"""What capture produces: a Capture, its CapturedGraphs and graph breaks (plain data).

Every later stage (candidates, plan, codegen, backend, profiler, UI) reads these; only
:mod:`fusionlab.capture` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from . import ops
from .facts import NodeInfo


class CaptureError(RuntimeError):
    """The model or its inputs cannot be captured; the message says why."""


@dataclass
class GraphBreak:
    reason: str
    where: str  # "file.py:12 in forward" (best effort)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


@dataclass
class CapturedGraph:
    """One ATen graph: the forward or backward of one dynamo graph (or an inference graph)."""

    index: int  # dynamo graph number (graph breaks make several)
    kind: str  # "forward" | "backward" | "inference" | "optimizer"
    gm: torch.fx.GraphModule
    nodes: dict[str, NodeInfo]

    @property
    def tag(self) -> str:
        """Short stable label: fw0, bw0, inf0, opt0 ..."""
        return {"forward": "fw", "backward": "bw", "inference": "inf", "optimizer": "opt"}[self.kind] + str(self.index)

    @property
    def signature(self) -> tuple:
        """Structure of the graph independent of shapes: used to recognise it again."""
        return tuple((n.op, str(n.target)) for n in self.gm.graph.nodes)

    def kernel_nodes(self) -> list[NodeInfo]:
        """Nodes that launch a kernel when run eagerly (no views, placeholders or output)."""
        return [i for i in self.nodes.values() if ops.launches_kernel(i.kind)]

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for info in self.nodes.values():
            counts[info.kind] = counts.get(info.kind, 0) + 1
        body = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return f"CapturedGraph({self.tag}, {len(self.nodes)} nodes: {body})"


@dataclass
class Capture:
    """Forward and backward ATen graphs of one training step, with node facts."""

    model_name: str
    graphs: list[CapturedGraph]
    breaks: list[GraphBreak]
    train: bool
    seconds: float
    input_shapes: list[tuple]
    meta: dict = field(default_factory=dict)
    # the optimizer update (fusionlab.optim.OptimizerStep) when capture(..., optimizer=) was given;
    # its graph opt0 is kept out of `graphs`, which are the forward and backward of the step
    optimizer: object = None
    # the step's Dynamo and AOTAutograd trace, which every FusedStep of this capture runs
    # (fusionlab.shared_trace.SharedTrace); None where it was not kept (graph breaks)
    trace: object = field(default=None, repr=False, compare=False)

    def graph(self, tag: str) -> CapturedGraph:
        for g in self.graphs:
            if g.tag == tag:
                return g
        opt = getattr(self.optimizer, "graph", None)
        if opt is not None and opt.tag == tag:
            return opt
        raise KeyError(f"no graph {tag!r}; graphs are {[g.tag for g in self.graphs]}")

    @property
    def forward_graphs(self) -> list[CapturedGraph]:
        return [g for g in self.graphs if g.kind in ("forward", "inference")]

    @property
    def backward_graphs(self) -> list[CapturedGraph]:
        return [g for g in self.graphs if g.kind == "backward"]

    def num_nodes(self) -> int:
        return sum(len(g.nodes) for g in self.graphs)

    def summary(self) -> str:
        lines = [
            f"Capture of {self.model_name}: {len(self.graphs)} graph(s), {self.num_nodes()} nodes, "
            f"{'training step' if self.train else 'inference'}, {self.seconds:.1f}s"
        ]
        for g in self.graphs:
            lines.append(f"  {g!r}")
        if self.optimizer is not None:
            lines.append(f"  {self.optimizer.summary()}")
        if self.breaks:
            lines.append(f"  {len(self.breaks)} graph break(s):")
            lines += [f"    - {b}" for b in self.breaks]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{g.tag}</td><td>{g.kind}</td><td>{len(g.nodes)}</td>"
            f"<td>{len(g.kernel_nodes())}</td></tr>"
            for g in self.graphs
        )
        breaks = "".join(f"<li>{html.escape(str(b))}</li>" for b in self.breaks)
        return (
            f"<b>Capture of {html.escape(self.model_name)}</b> ({self.seconds:.1f}s)"
            "<table><tr><th>graph</th><th>kind</th><th>nodes</th><th>kernels (eager)</th></tr>"
            f"{rows}</table>" + (f"<p>Graph breaks:</p><ul>{breaks}</ul>" if breaks else "")
        )
