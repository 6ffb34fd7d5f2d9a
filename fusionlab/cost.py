"""Cost model: bytes, FLOPs and kernel launches of a training step, and a GPU roofline.

Everything here is *modeled* from the captured ATen graphs, never measured:

* every node that launches a kernel when the graph runs node by node (pointwise,
  reduction, matmul, opaque) is one kernel that reads each of its input tensors once and
  writes its result once (``fusionlab.candidates.node_traffic``);
* a fused group (a selected candidate) is one kernel that reads each group input once and
  writes each group output once; what its members passed to each other stays on chip;
* FLOPs: matmuls from their shapes (``2*M*N*K`` for mm, ...), every other op about one
  FLOP per element it produces (a reduction: per element it reads);
* time of one kernel on a GPU = ``max(bytes / bandwidth, flops / peak) + launch overhead``
  (the roofline), summed over the kernels of the step: no overlap between kernels.

Labels: every modeled figure is labeled ``"modeled (<GPU> spec)"`` and lives in columns of
its own; measured step times never mix with it.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import torch
import torch.fx

from . import ops
from .candidates import _fmt_bytes, find_candidates, node_reads_writes, node_tensors, tensor_bytes

aten = torch.ops.aten

# --------------------------------------------------------------------------- GPU specs


@dataclass(frozen=True)
class GPUSpec:
    """Public data-sheet figures of one GPU (dense, no sparsity)."""

    key: str
    name: str
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (1e9 bytes/s)
    peak_tflops: dict  # dtype name -> TFLOP/s: "fp32" (CUDA cores), "tf32", "fp16", "bf16" (tensor cores)
    launch_us: float  # kernel launch overhead, microseconds (typical measured figure)
    source: str = ""

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9

    def peak(self, which: str) -> float:
        """FLOP/s for "fp32" | "tf32" | "fp16" | "bf16"."""
        return self.peak_tflops.get(which, self.peak_tflops["fp32"]) * 1e12

    @property
    def label(self) -> str:
        return f"modeled ({self.name} spec)"

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where fp32 CUDA-core compute and bandwidth meet."""
        return self.peak("fp32") / self.bandwidth


GPUS: dict[str, GPUSpec] = {
    # NVIDIA T4 data sheet (Turing, 2018): 320 GB/s GDDR6; 8.1 TFLOPS FP32; 65 TFLOPS
    # FP16 tensor cores (mixed precision). Turing has no TF32 and no BF16 tensor-core path,
    # so those fall back to the FP32 rate.
    "t4": GPUSpec("t4", "T4", 320.0, {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0, "bf16": 8.1}, 5.0,
                  "NVIDIA T4 Tensor Core GPU data sheet"),
    # NVIDIA A100 data sheet (Ampere), A100 80GB SXM: 2,039 GB/s HBM2e; FP32 19.5 TFLOPS;
    # TF32 tensor 156 TFLOPS; FP16/BF16 tensor 312 TFLOPS (dense; 2x with sparsity).
    "a100": GPUSpec("a100", "A100 80GB SXM", 2039.0, {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
                    4.0, "NVIDIA A100 Tensor Core GPU data sheet"),
    # NVIDIA H100 data sheet (Hopper), H100 SXM5: 3.35 TB/s HBM3; FP32 67 TFLOPS; TF32
    # tensor 494.7 TFLOPS, FP16/BF16 tensor 989.4 TFLOPS (dense; the sheet's 989/1,979 are
    # with sparsity).
    "h100": GPUSpec("h100", "H100 SXM", 3350.0, {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
                    3.0, "NVIDIA H100 Tensor Core GPU data sheet"),
    # NVIDIA Ada Lovelace architecture white paper, appendix (GeForce RTX 4090): 1,008 GB/s
    # GDDR6X; FP32 82.6 TFLOPS; TF32 tensor 82.6 TFLOPS; FP16/BF16 tensor with FP32
    # accumulate 165.2 TFLOPS (dense).
    "rtx4090": GPUSpec("rtx4090", "RTX 4090", 1008.0, {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2},
                       4.0, "NVIDIA Ada Lovelace GPU architecture white paper"),
}
_ALIASES = {"4090": "rtx4090", "rtx-4090": "rtx4090", "rtx_4090": "rtx4090", "a100-80gb": "a100",
            "h100-sxm": "h100"}


def get_gpu(gpu: str | GPUSpec) -> GPUSpec:
    """A GPUSpec by key ("h100", "a100", "t4", "rtx4090"; case-insensitive) or itself."""
    if isinstance(gpu, GPUSpec):
        return gpu
    key = str(gpu).lower().strip()
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    return GPUS[key]


# --------------------------------------------------------------------------- per node


# tensor_bytes: bytes of the tensor(s) a node produces, shared with the candidate search


def _numel(node) -> int:
    n = 0
    for v in node_tensors(node):
        try:
            n += v.numel()
        except TypeError:  # symbolic sizes
            pass
    return n


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
    out = _numel(node)
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
            groups = int(node.args[8]) if len(node.args) > 8 else 1
            bias = len(node.args) > 2 and node.args[2] is not None
            if transposed:  # weight [Cin, Cout/groups, *k]: every input element meets Cout/groups*k
                flops = 2 * _prod(a[0]) * w[1] * _prod(w[2:])
            else:  # weight [Cout, Cin/groups, *k]: every output element is a Cin/groups*k dot
                flops = 2 * out * _prod(w[1:])
            del groups
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
        return _numel(x) if x is not None else _numel(node)
    if kind in ("pointwise", "opaque"):
        return _numel(node)
    return 0


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
    def nonmatmul_launches(self) -> int:
        return self.launches - self.matmul_launches

    @property
    def nonmatmul_bytes(self) -> int:
        return sum(k.bytes for k in self.kernels if k.kind != "matmul")

    @property
    def matmul_bytes(self) -> int:
        return self.bytes - self.nonmatmul_bytes

    def __str__(self) -> str:
        return (
            f"{self.label}: {self.launches} kernels ({self.nonmatmul_launches} non-matmul), "
            f"{_fmt_bytes(self.bytes)} moved (read {_fmt_bytes(self.reads)}, write {_fmt_bytes(self.writes)}; "
            f"non-matmul {_fmt_bytes(self.nonmatmul_bytes)}), {self.flops / 1e9:.3f} GFLOP (modeled)"
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
    if not fused:
        groups = []
    by_graph: dict[str, list] = {}
    for c in groups:
        by_graph.setdefault(c.graph, []).append(c)
    kernels: list[KernelCost] = []
    for g in cap.graphs:
        owner = {n: c for c in by_graph.get(g.tag, []) for n in c.nodes}
        nodes = {n.name: n for n in g.gm.graph.nodes}
        emitted: set[str] = set()
        for n in g.gm.graph.nodes:
            kind = g.nodes[n.name].kind
            c = owner.get(n.name)
            if c is not None:
                if c.id in emitted:
                    continue
                emitted.add(c.id)
                members = [nodes[m] for m in c.nodes]
                reads = sum(tensor_bytes(nodes[i]) for i in c.inputs)
                writes = sum(tensor_bytes(nodes[o]) for o in c.outputs)
                flops = sum(node_flops(m, g.nodes[m.name].kind) for m in members)
                kernels.append(KernelCost(c.id, g.tag, "fused", reads, writes, flops, "fp32", c.ops, c.id))
                continue
            if not ops.launches_kernel(kind):
                continue
            r, w = node_reads_writes(n)
            dtype = g.nodes[n.name].dtype
            kernels.append(KernelCost(n.name, g.tag, kind, r, w, node_flops(n, kind),
                                      _precision(dtype, kind, tf32), (ops.op_name(n),)))
    if fused and groups:
        label = f"fusionlab ({len(groups)} groups fused)"
    else:
        label = "eager (unfused)"
    return StepCost(label, kernels, tuple(c.id for c in groups))


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
            f"(launch overhead {self.launch_seconds * 1e3:.3f} ms), {_fmt_bytes(self.bytes)} moved "
            f"(non-matmul {_fmt_bytes(self.nonmatmul_bytes)}), {self.flops / 1e9:.3f} GFLOP",
        ]
        for g in self.groups[:20]:
            lines.append(
                f"  {g.id:36} {g.kernels_unfused:3d}->1  {g.seconds_unfused * 1e6:8.1f} us -> "
                f"{g.seconds_fused * 1e6:8.1f} us  ({_fmt_bytes(g.bytes_unfused)} -> {_fmt_bytes(g.bytes_fused)})"
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
        members = []
        for m in c.nodes:
            kind = g.nodes[m].kind
            if not ops.launches_kernel(kind):
                continue
            r, w = node_reads_writes(nodes[m])
            members.append(KernelCost(m, g.tag, kind, r, w, node_flops(nodes[m], kind)))
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
