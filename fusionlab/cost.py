"""Cost model: bytes, FLOPs and kernel launches of a training step, and a GPU roofline.

Everything here is *modeled* from the captured ATen graphs, never measured:

* every node that launches a kernel when the graph runs node by node (pointwise,
  reduction, matmul, opaque) is one kernel that reads each of its input tensors once and
  writes its result once (``fusionlab.nodecost``, shared with the candidate search);
* a fused group (a selected candidate) is one kernel that reads each group input once and
  writes each group output once; what its members passed to each other stays on chip; a
  matmul with its fused epilogue is still a matmul kernel (counted with the matmuls, so
  non-matmul counts compare fairly with Inductor's, which leaves matmuls to a library);
* FLOPs: matmuls from their shapes (``2*M*N*K`` for mm, ...), every other op about one
  FLOP per element it produces (a reduction: per element it reads);
* time of one kernel on a GPU = ``max(bytes / bandwidth, flops / peak) + launch overhead``
  (the roofline), summed over the kernels of the step: no overlap between kernels.

Labels: every modeled figure is labeled ``"modeled (<GPU> spec)"`` and lives in columns of
its own; measured step times never mix with it.
"""

from __future__ import annotations

import copy
import html
import weakref
from dataclasses import dataclass, field

import torch

from . import ops
from .candidates import find_candidates
from .gpus import GPUS, GPUSpec, get_gpu
from .nodecost import fmt_bytes, group_bytes, matmul_flops, node_flops, node_reads_writes

__all__ = [
    "GPUS", "GPUSpec", "GroupTime", "KernelCost", "ModeledStep", "StepCost", "compare_gpus", "get_gpu",
    "kernel_seconds", "matmul_flops", "node_flops", "roofline", "step_cost", "step_kernels",
]

def _precision(dtype: torch.dtype | None, kind: str, tf32: bool) -> str:
    if kind != "matmul":
        return "fp32"  # pointwise and reductions run on CUDA cores
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    return "tf32" if tf32 else "fp32"


# --------------------------------------------------------------------------- step cost


@dataclass
class KernelCost:
    """One kernel of the modeled step (an eager op, or one fused group)."""

    name: str  # node name, or the candidate id of a fused group
    graph: str  # fw0 / bw0 / ...
    kind: str  # pointwise / reduction / matmul / opaque / fused
    reads: int
    writes: int
    flops: int
    precision: str = "fp32"
    ops: tuple = ()
    group: str | None = None  # candidate id this kernel is (fused) or belongs to (unfused member)
    seconds: float = 0.0  # modeled time, filled by roofline()
    bound: str = ""  # "memory" | "compute" | "launch"

    @property
    def bytes(self) -> int:
        return self.reads + self.writes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass
class StepCost:
    """Modeled bytes, FLOPs and kernel launches of one training step, kernel by kernel."""

    label: str  # "eager (unfused)" | "fusionlab (N groups fused)"
    kernels: list[KernelCost]
    fused_groups: tuple[str, ...] = ()

    @property
    def launches(self) -> int:
        return len(self.kernels)

    @property
    def reads(self) -> int:
        return sum(k.reads for k in self.kernels)

    @property
    def writes(self) -> int:
        return sum(k.writes for k in self.kernels)

    @property
    def bytes(self) -> int:
        return self.reads + self.writes

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    @property
    def matmul_launches(self) -> int:
        return sum(1 for k in self.kernels if k.kind == "matmul")

    @property
    def epilogue_launches(self) -> int:
        """Matmul kernels that apply a fused epilogue (a matmul candidate, fusionlab.epilogue)."""
        return sum(1 for k in self.kernels if k.kind == "matmul" and k.group is not None)

    @property
    def nonmatmul_launches(self) -> int:
        return self.launches - self.matmul_launches

    @property
    def nonmatmul_bytes(self) -> int:
        return sum(k.bytes for k in self.kernels if k.kind != "matmul")

    @property
    def matmul_bytes(self) -> int:
        return self.bytes - self.nonmatmul_bytes

    def by_graph(self) -> dict[str, tuple[int, int]]:
        """graph tag -> (kernels, bytes moved), for the graphs that launch any kernel."""
        out: dict[str, tuple[int, int]] = {}
        for k in self.kernels:
            n, b = out.get(k.graph, (0, 0))
            out[k.graph] = (n + 1, b + k.bytes)
        return out

    def __str__(self) -> str:
        return (
            f"{self.label}: {self.launches} kernels ({self.nonmatmul_launches} non-matmul), "
            f"{fmt_bytes(self.bytes)} moved (read {fmt_bytes(self.reads)}, write {fmt_bytes(self.writes)}; "
            f"non-matmul {fmt_bytes(self.nonmatmul_bytes)}), {self.flops / 1e9:.3f} GFLOP (modeled)"
        )

    __repr__ = __str__


def _plan_and_capture(plan_or_capture):
    from .capture import Capture
    from .plan import FusionPlan

    if isinstance(plan_or_capture, FusionPlan):
        return plan_or_capture, plan_or_capture.capture
    if isinstance(plan_or_capture, Capture):
        return None, plan_or_capture
    raise TypeError(f"expected a FusionPlan or a Capture, got {type(plan_or_capture).__name__}")


def step_cost(plan_or_capture, fused: bool = True, selected=None, tf32: bool = False) -> StepCost:
    """Kernels of one step: each eager op alone (``fused=False``) or with groups fused.

    With a FusionPlan, ``fused=True`` fuses its selected candidates; with a Capture, every
    candidate (select-all). ``selected`` (candidate ids) overrides which groups are fused,
    e.g. only those a backend actually used.
    """
    plan, cap = _plan_and_capture(plan_or_capture)
    if selected is not None:
        cands = plan.candidates if plan is not None else find_candidates(cap)
        ids = {c if isinstance(c, str) else c.id for c in selected}
        groups = [c for c in cands if c.id in ids]
    elif plan is not None:
        groups = plan.selected
    else:
        groups = list(find_candidates(cap))
    return step_kernels(cap, groups if fused else [], tf32=tf32)


def _node_kernel(n, g, tf32: bool = False) -> KernelCost:
    """One eager op of graph `g` as its own kernel."""
    info = g.nodes[n.name]
    r, w = node_reads_writes(n)
    return KernelCost(n.name, g.tag, info.kind, r, w, node_flops(n, info.kind),
                      _precision(info.dtype, info.kind, tf32), (ops.op_name(n),))


_MEMO: dict[int, tuple[weakref.ref, dict]] = {}  # id(capture) -> (ref, {key: kernels})
_MEMO_SIZE = 64  # selections remembered per capture


def _memo(cap) -> dict:
    """The remembered results of one capture (dropped with it)."""
    key = id(cap)
    got = _MEMO.get(key)
    if got is None or got[0]() is not cap:
        got = (weakref.ref(cap, lambda _r, k=key: _MEMO.pop(k, None)), {})
        _MEMO[key] = got
    return got[1]


def step_kernels(cap, groups, tf32: bool = False) -> StepCost:
    """The kernels of one step of `cap` with `groups` (candidates) fused, in graph order.

    The one model of kernels and bytes per step: ``step_cost``, ``roofline`` and
    ``FusionPlan.summary`` all count from it. A fused group is one kernel at its first
    member; every other node that launches a kernel is one kernel of its own.

    Computed once per (capture, set of groups, tf32): an explorer asks for the same step several
    times a click; a 12-layer GPT-2 takes 0.1 s a count (measured, CPU). Graphs do not change.
    """
    groups = list(groups)
    key = (tf32, frozenset((c.graph, c.id, tuple(c.nodes), tuple(c.inputs), tuple(c.outputs)) for c in groups))
    memo = _memo(cap)
    kernels = memo.get(key)
    if kernels is None:
        kernels = _step_kernels(cap, groups, tf32)
        if len(memo) >= _MEMO_SIZE:
            memo.pop(next(iter(memo)))
        memo[key] = kernels
    label = f"fusionlab ({len(groups)} groups fused)" if groups else "eager (unfused)"
    # copies: roofline() writes each kernel's modeled seconds for its GPU
    return StepCost(label, [copy.copy(k) for k in kernels], tuple(c.id for c in groups))


def _step_kernels(cap, groups, tf32: bool) -> list[KernelCost]:
    by_graph: dict[str, list] = {}
    for c in groups:
        by_graph.setdefault(c.graph, []).append(c)
    kernels: list[KernelCost] = []
    for g in cap.graphs:
        owner = {n: c for c in by_graph.get(g.tag, []) for n in c.nodes}
        nodes = {n.name: n for n in g.gm.graph.nodes}
        emitted: set[str] = set()
        for n in g.gm.graph.nodes:
            c = owner.get(n.name)
            if c is None:
                if ops.launches_kernel(g.nodes[n.name].kind):
                    kernels.append(_node_kernel(n, g, tf32))
                continue
            if c.id in emitted:
                continue
            emitted.add(c.id)
            reads, writes = group_bytes([nodes[i] for i in c.inputs], [nodes[o] for o in c.outputs])
            flops = sum(node_flops(nodes[m], g.nodes[m].kind) for m in c.nodes)
            mm = next((m for m in c.nodes if g.nodes[m].kind == "matmul"), None)
            if mm is not None:  # a matmul with its epilogue: a matmul kernel still (tensor-core FLOPs)
                kernels.append(KernelCost(c.id, g.tag, "matmul", reads, writes, flops,
                                          _precision(g.nodes[mm].dtype, "matmul", tf32), c.ops, c.id))
                continue
            kernels.append(KernelCost(c.id, g.tag, "fused", reads, writes, flops, "fp32", c.ops, c.id))
    return kernels


# --------------------------------------------------------------------------- roofline


@dataclass
class GroupTime:
    """One fusion group, modeled: its member kernels run one by one vs the group as one kernel."""

    id: str
    pattern: str
    graph: str
    kernels_unfused: int
    bytes_unfused: int
    bytes_fused: int
    flops: int
    seconds_unfused: float
    seconds_fused: float

    @property
    def speedup(self) -> float:
        return self.seconds_unfused / self.seconds_fused if self.seconds_fused else float("nan")


@dataclass
class ModeledStep:
    """A training step modeled on one GPU's spec (roofline per kernel + launch overhead)."""

    gpu: GPUSpec
    cost: StepCost
    fused: bool
    groups: list[GroupTime] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.gpu.label

    @property
    def kernels(self) -> list[KernelCost]:
        return self.cost.kernels

    @property
    def seconds(self) -> float:
        return sum(k.seconds for k in self.cost.kernels)

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    @property
    def launch_seconds(self) -> float:
        return self.gpu.launch_us * 1e-6 * self.cost.launches

    @property
    def memory_seconds(self) -> float:
        """Time of all bytes at full bandwidth (a lower bound ignoring compute and launches)."""
        return self.cost.bytes / self.gpu.bandwidth

    @property
    def compute_seconds(self) -> float:
        return sum(k.flops / self.gpu.peak(k.precision) for k in self.cost.kernels)

    @property
    def launches(self) -> int:
        return self.cost.launches

    @property
    def bytes(self) -> int:
        return self.cost.bytes

    @property
    def nonmatmul_bytes(self) -> int:
        return self.cost.nonmatmul_bytes

    @property
    def flops(self) -> int:
        return self.cost.flops

    def by_kind(self) -> dict[str, float]:
        """Modeled seconds per kernel kind (matmul / fused / pointwise / reduction / opaque)."""
        out: dict[str, float] = {}
        for k in self.cost.kernels:
            out[k.kind] = out.get(k.kind, 0.0) + k.seconds
        return out

    def __str__(self) -> str:
        what = "fused plan" if self.fused else "unfused (eager)"
        lines = [
            f"{self.label}, {what}: {self.ms:.3f} ms per step, {self.launches} kernels "
            f"(launch overhead {self.launch_seconds * 1e3:.3f} ms), {fmt_bytes(self.bytes)} moved "
            f"(non-matmul {fmt_bytes(self.nonmatmul_bytes)}), {self.flops / 1e9:.3f} GFLOP",
        ]
        for g in self.groups[:20]:
            lines.append(
                f"  {g.id:36} {g.kernels_unfused:3d}->1  {g.seconds_unfused * 1e6:8.1f} us -> "
                f"{g.seconds_fused * 1e6:8.1f} us  ({fmt_bytes(g.bytes_unfused)} -> {fmt_bytes(g.bytes_fused)})"
            )
        if len(self.groups) > 20:
            lines.append(f"  ... {len(self.groups) - 20} more groups")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


def kernel_seconds(k: KernelCost, gpu: GPUSpec) -> tuple[float, str]:
    """Roofline time of one kernel: max(bytes / bandwidth, flops / peak) + launch overhead."""
    mem = k.bytes / gpu.bandwidth
    comp = k.flops / gpu.peak(k.precision)
    launch = gpu.launch_us * 1e-6
    bound = "memory" if mem >= comp else "compute"
    if launch > max(mem, comp):
        bound = "launch"
    return max(mem, comp) + launch, bound


def roofline(plan_or_capture, gpu: str | GPUSpec = "h100", fused: bool = True, *, selected=None,
             tf32: bool = False) -> ModeledStep:
    """Model one training step on `gpu`: per kernel ``max(bytes/bw, flops/peak) + launch``.

    ``fused=True`` fuses the plan's selected groups (a Capture: all candidates; ``selected``
    overrides); ``fused=False`` is the eager step, one kernel per op. ``groups`` gives, for
    every group that would be fused, its modeled time unfused vs fused either way.
    ``tf32=True`` models fp32 matmuls on TF32 tensor cores (PyTorch's default is off).
    """
    spec = get_gpu(gpu)
    cost = step_cost(plan_or_capture, fused=fused, selected=selected, tf32=tf32)
    for k in cost.kernels:
        k.seconds, k.bound = kernel_seconds(k, spec)
    # per-group breakdown: the same groups, fused or not
    plan, cap = _plan_and_capture(plan_or_capture)
    fused_cost = cost if fused else step_cost(plan_or_capture, fused=True, selected=selected, tf32=tf32)
    cands = {c.id: c for c in (plan.candidates if plan is not None else find_candidates(cap))}
    groups = []
    for gid in fused_cost.fused_groups:
        c = cands[gid]
        g = cap.graph(c.graph)
        nodes = {n.name: n for n in g.gm.graph.nodes}
        members = [_node_kernel(nodes[m], g) for m in c.nodes if ops.launches_kernel(g.nodes[m].kind)]
        t_unfused = sum(kernel_seconds(k, spec)[0] for k in members)
        fk = next(k for k in fused_cost.kernels if k.name == gid)
        t_fused = kernel_seconds(fk, spec)[0]
        groups.append(GroupTime(gid, c.pattern, c.graph, len(members), sum(k.bytes for k in members),
                                fk.bytes, fk.flops, t_unfused, t_fused))
    return ModeledStep(spec, cost, fused, groups)


def compare_gpus(plan_or_capture, gpus=("t4", "a100", "h100", "rtx4090"), **kw):
    """{gpu key: (unfused ModeledStep, fused ModeledStep)} for several GPUs."""
    return {g: (roofline(plan_or_capture, g, fused=False, **kw), roofline(plan_or_capture, g, fused=True, **kw))
            for g in gpus}
