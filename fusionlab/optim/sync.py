"""Which host syncs remain in a captured training step, and where (measured on this device).

A host sync is a device-to-host read the host must wait for: ``aten._local_scalar_dense``
(``.item()``, ``float(t)``, ``if t:``), which a graph holds as a node and eager code
dispatches as an op; and a graph break, where dynamo hands control back to Python. On a
CPU nothing waits, so the report counts them: in the captured graphs (fw/bw/opt0), in one
eager ``optimizer.step()`` (with ``clip_grad_norm_`` when the capture clips) and in one
fused update, both run on copies under a dispatch mode that counts every op. On a GPU
``torch.cuda.set_sync_debug_mode("warn")`` confirms the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("aten._local_scalar_dense.default", "aten.item.default")


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@dataclass
class SyncReport:
    device: str
    in_graphs: dict[str, list[str]] = field(default_factory=dict)  # graph tag -> sync nodes
    breaks: list[str] = field(default_factory=list)
    eager_update: int | None = None  # host reads in one eager optimizer.step() (+ clip)
    fused_update: int | None = None  # host reads in one fused update
    fused_launches: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_in_step(self) -> int:
        """Host syncs left in a captured step run with the fused update."""
        return sum(len(v) for v in self.in_graphs.values()) + len(self.breaks) + (self.fused_update or 0)

    def __str__(self) -> str:
        lines = [f"host syncs in one captured training step (measured on {self.device}, counted, not timed):"]
        for tag, nodes in self.in_graphs.items():
            lines.append(f"  {tag}: {len(nodes)} aten._local_scalar_dense/item node(s)"
                         + (f" ({', '.join(nodes[:5])})" if nodes else ""))
        lines.append(f"  graph breaks: {len(self.breaks)}" + "".join(f"\n    - {b}" for b in self.breaks))
        if self.eager_update is not None:
            lines.append(f"  eager optimizer.step(): {self.eager_update} host read(s) per step")
        if self.fused_update is not None:
            lines.append(f"  fused update: {self.fused_update} host read(s) per step, "
                         f"{self.fused_launches} kernel launch(es)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def sync_report(capture) -> SyncReport:
    """Count the host syncs of ``capture`` (see the module docstring)."""
    from .check import copy_optimizer  # one way of copying an optimizer
    from .fused import FusedUpdate

    graphs = list(capture.graphs)
    step = capture.optimizer
    if step is not None and step.graph is not None:
        graphs.append(step.graph)
    device = str(step.params[0].device) if step is not None and step.params else "cpu"
    rep = SyncReport(device=device)
    for g in graphs:
        rep.in_graphs[g.tag] = [n.name for n in g.gm.graph.nodes
                                if n.op == "call_function" and str(n.target) in SYNC_OPS]
    rep.breaks = [str(b) for b in capture.breaks]
    if step is None:
        rep.notes.append("captured without optimizer=: the update is not part of this count")
        return rep
    opt, params = copy_optimizer(step.optimizer)
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype).to(p.device)
    counter = _CountSyncs()
    try:
        with counter:
            if step.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, step.clip_grad_norm)
            opt.step()
        rep.eager_update = counter.count
    except Exception as e:  # noqa: BLE001 - e.g. LBFGS needs a closure: say so, count nothing
        rep.notes.append(f"eager {step.name}.step() not counted: {type(e).__name__}: {e}")
    if rep.eager_update:
        rep.notes.append(f"eager {step.name} reads its step count (or lr) on the host: "
                         f"{rep.eager_update} read(s) for {len(params)} parameters")
    if step.fused:
        opt2, _ = copy_optimizer(step.optimizer)
        for p, q in zip((p for g in opt2.param_groups for p in g["params"]), params):
            p.grad = q.grad.clone()
        fused = FusedUpdate(step, optimizer=opt2)
        fused.step()  # the first step makes the state; count the second
        counter = _CountSyncs()
        with counter:
            fused.step()
        rep.fused_update = counter.count
        rep.fused_launches = fused.launches_per_step[-1]
    else:
        rep.notes.append(f"the update runs unfused: {step.reason}")
    return rep
