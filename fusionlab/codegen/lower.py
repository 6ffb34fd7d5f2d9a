"""Lowering: a candidate's FX nodes -> a small kernel IR (loads, one statement per op, stores).

Each value is named after the FX node it comes from and keeps its ATen op and source
module for the comment beside it. Values are held in fp32 when their tensor is fp16/bf16
(loads upcast, stores round back), in their own dtype otherwise (ints, bools).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx

from .. import ops
from ..candidates import Candidate
from ..capture import CapturedGraph
from .domain import Layout, aligned_strides, make_layout, mapped_strides

RESERVED = {
    "xindex", "xoffset", "xmask", "rindex", "roffset", "rmask", "mask", "xnumel", "rnumel",
    "n_rows", "n_cols", "XBLOCK", "RBLOCK", "tl", "triton", "torch", "float", "int", "range",
    # the matmul template's own names (codegen/matmul.py)
    "pid", "pid_m", "pid_n", "pid_b", "rm", "rn", "rk", "k0", "kk", "m_mask", "n_mask", "acc", "a_tile",
    "b_tile", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "DOT_FP32", "group_id", "group_size_m", "first_pid_m",
}


class LoweringError(Exception):
    """The codegen cannot write a kernel for this candidate; the message says why."""


@dataclass
class Stmt:
    name: str
    kind: str  # "load" | "op" | "reduce" | "alias"
    tile: str  # "s" scalar, "x" per row (or per element in pointwise kernels), "xr" per element of a row
    deps: tuple[str, ...]
    comment: str
    expr: str = ""  # op: the right-hand side
    load: str = ""  # load: tensor key
    dtype: torch.dtype = torch.float32  # value's compute dtype
    reduce: str = ""  # reduce: sum | amax | amin | any
    arg: str = ""  # reduce: the value reduced
    scale: str = ""  # reduce: optional final expression applied to the reduced value ("{} / 768")


@dataclass
class TensorArg:
    key: str  # kernel parameter name
    node: str  # FX node name
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    for_backward: bool = False  # an output only the backward reads (saved by the forward graph)


@dataclass
class Store:
    key: str
    value: str
    comment: str


@dataclass
class KernelIR:
    name: str
    candidate: Candidate
    layout: Layout
    stmts: list[Stmt]
    stores: list[Store]
    inputs: list[TensorArg]
    outputs: list[TensorArg]
    notes: list[str] = field(default_factory=list)

    @property
    def is_reduction(self) -> bool:
        return bool(self.candidate.reduce_dims)

    def stmt(self, name: str) -> Stmt:
        return self._by_name[name]

    def __post_init__(self):
        self._by_name = {s.name: s for s in self.stmts}


_PLACEMENT_KWARGS = {"layout", "device", "pin_memory", "memory_format", "non_blocking", "dtype"}
_CASTS = (ops.prims.convert_element_type.default, ops.aten._to_copy.default)
_CONDITION_ARG = {
    ops.aten.where.self: 0, ops.aten.where.ScalarSelf: 0, ops.aten.where.ScalarOther: 0,
    ops.aten.where.Scalar: 0, ops.aten.masked_fill.Scalar: 1, ops.aten.masked_fill.Tensor: 1,
}


def _val(node: torch.fx.Node):
    v = node.meta.get("val")
    return v


def saved_for_backward(node: torch.fx.Node, graph: CapturedGraph, members) -> bool:
    """Whether `node` leaves the kernel only to be saved for the backward: a forward graph
    returns it as a saved tensor (AOTAutograd's output descriptors say which outputs are
    those) and no op outside `members` reads it."""
    if graph.kind != "forward":
        return False
    out = next(n for n in graph.gm.graph.nodes if n.op == "output")
    results, descs = out.args[0], out.meta.get("desc")
    if not isinstance(results, (list, tuple)) or not descs or len(descs) != len(results):
        return False
    saved = {r for r, d in zip(results, descs) if type(d).__name__ == "SavedForBackwardsAOTOutput"}
    unsaved = {r for r, d in zip(results, descs) if type(d).__name__ != "SavedForBackwardsAOTOutput"}

    def only_saved(n) -> bool:  # through views (alias, view) of it that are saved in its place
        return n not in unsaved and all(
            u in members or (u is out and n in saved) or (ops.kind_of(u) == "view" and only_saved(u))
            for u in n.users
        )

    return only_saved(node)  # a kernel output has a user outside the kernel: this one is saved


def safe_name(name: str) -> str:
    """`name`, or `name_v` where it would shadow a name the kernel itself uses."""
    return name + "_v" if name in RESERVED else name


class Lowerer:
    """One candidate's members -> statements (one per op) and the tensors the kernel reads
    and writes; :mod:`.matmul` extends it for a matmul's epilogue."""

    def __init__(self, cand: Candidate, graph: CapturedGraph, kernel_name: str):
        self.cand = cand
        self.graph = graph
        self.name = kernel_name
        self.nodes = {n.name: n for n in graph.gm.graph.nodes}
        self.members = [self.nodes[n] for n in cand.nodes]
        self.mset = set(self.members)
        self.domain = cand.domain
        self.rdims = cand.reduce_dims
        self.stmts: list[Stmt] = []
        self.value: dict[str, str] = {}  # fx node name -> value name
        self.tile: dict[str, str] = {}  # value name -> tile
        self.dtype: dict[str, torch.dtype] = {}
        self.inputs: list[TensorArg] = []
        self.outputs: list[TensorArg] = []
        self.tensor_strides: dict[str, tuple[int, ...]] = {}
        self.loaded: dict[str, str] = {}
        self._plan_tensors()
        self.layout = make_layout(self.domain, self.rdims, self.tensor_strides)

    # ------------------------------------------------------------------ tensors

    def _plan_tensors(self) -> None:
        for name in self.cand.inputs:
            node = self.nodes[name]
            v = _val(node)
            if not isinstance(v, torch.Tensor):
                raise LoweringError(f"input {name} is not a tensor ({type(v).__name__})")
            if v.dtype not in ops.TL_DTYPE or v.dtype in ops.UNSUPPORTED_DTYPES:
                raise LoweringError(f"input {name} has unsupported dtype {v.dtype}")
            key = "in_" + name
            shape, stride = tuple(v.shape), tuple(v.stride())
            self.inputs.append(TensorArg(key, name, v.dtype, shape, stride))
            self.tensor_strides[key] = aligned_strides(shape, stride, self.domain)
        for name in self.cand.outputs:
            node = self.nodes[name]
            v = _val(node)
            if not isinstance(v, torch.Tensor):
                raise LoweringError(f"output {name} is not a tensor")
            key = "out_" + name
            shape, stride = tuple(v.shape), tuple(v.stride())
            self.outputs.append(TensorArg(key, name, v.dtype, shape, stride,
                                          saved_for_backward(node, self.graph, self.mset)))
            self.tensor_strides[key] = self._output_strides(node, shape, stride)

    def _output_strides(self, node, shape, stride):
        src = node.args[0] if node.target is operator.getitem else node
        if ops.kind_of(src) == "reduction":
            spec = ops.reduction_spec(src)
            if not spec.keepdim:
                kept = [d for d in range(len(self.domain)) if d not in spec.dims]
                return mapped_strides(stride, kept, self.domain)
        return aligned_strides(shape, stride, self.domain)

    # ------------------------------------------------------------------ values

    def _comment(self, node: torch.fx.Node) -> str:
        info = self.graph.nodes[node.name]
        return f"{info.op}" + (f"  {info.module}" if info.module else "")

    def _emit(self, st: Stmt) -> str:
        self.stmts.append(st)
        self.tile[st.name] = st.tile
        self.dtype[st.name] = st.dtype
        return st.name

    def _load(self, node: torch.fx.Node) -> str:
        if node.name in self.loaded:
            return self.loaded[node.name]
        key = "in_" + node.name
        if self.rdims:
            tile = "xr" if self.layout.varies(key, "r") else ("x" if self.layout.varies(key, "x") else "s")
        else:
            tile = "x" if self.layout.varies(key, "x") else "s"
        dt = _val(node).dtype
        name = safe_name(node.name)
        self._emit(Stmt(name=name, kind="load", tile=tile, deps=(), comment=f"load {node.name}",
                        load=key, dtype=ops.compute_dtype(dt)))
        self.loaded[node.name] = name
        return name

    def _arg(self, a, deps: list) -> str:
        if isinstance(a, torch.fx.Node):
            if a in self.mset:
                v = self.value[a.name]
            else:
                v = self._load(a)
            deps.append(v)
            return v
        if isinstance(a, (bool, int, float)) or a is None:
            return ops.literal(a)
        if isinstance(a, torch.dtype):
            return ops.literal(a)
        if isinstance(a, str):
            return repr(a)
        if isinstance(a, (list, tuple)):
            return repr(a)  # sizes (full, view) — not used in expressions
        raise LoweringError(f"argument of type {type(a).__name__} is not supported")

    def _tile_of(self, deps) -> str:
        tiles = {self.tile[d] for d in deps}
        if "xr" in tiles:
            return "xr"
        if "x" in tiles:
            return "x"
        return "s"

    def lower(self) -> KernelIR:
        for node in self.members:
            kind = ops.kind_of(node)
            if kind == "getitem":
                self._lower_getitem(node)
            elif kind == "pointwise":
                self._lower_pointwise(node)
            elif kind == "reduction":
                self._lower_reduction(node)
            else:
                raise LoweringError(f"{node.name} ({ops.op_name(node)}) is not pointwise or a reduction")
        return self.finish()

    def finish(self) -> KernelIR:
        """The IR once every member is lowered: a store of each output's value."""
        stores = [Store(out.key, self.value[out.node], f"store {out.node}") for out in self.outputs]
        return KernelIR(
            name=self.name, candidate=self.cand, layout=self.layout, stmts=self.stmts, stores=stores,
            inputs=self.inputs, outputs=self.outputs,
        )

    def _lower_getitem(self, node) -> None:
        src, idx = node.args
        vals = self.value.get(src.name)
        if not isinstance(vals, tuple):
            raise LoweringError(f"{node.name} picks from {src.name}, which has a single result")
        self.value[node.name] = vals[idx]

    def _lower_pointwise(self, node) -> None:
        pw = ops.POINTWISE[node.target]
        deps: list[str] = []
        args = [self._arg(a, deps) for a in node.args]
        kwargs = {k: self._arg(v, deps) for k, v in node.kwargs.items() if k not in _PLACEMENT_KWARGS}
        out_dtype = _val(node).dtype
        cdt = ops.compute_dtype(out_dtype)
        # float results computed from integer/bool operands: promote the operands first
        # (a where/masked_fill condition stays boolean; a cast op does its own conversion)
        if cdt.is_floating_point and node.target not in _CASTS:
            keep = _CONDITION_ARG.get(node.target)
            args = [
                f"{a}.to(tl.float32)"
                if i != keep and a in self.dtype and not self.dtype[a].is_floating_point
                else a
                for i, a in enumerate(args)
            ]
        expr = pw.expr(args, kwargs, out_dtype)
        tile = self._tile_of(deps)
        if tile == "s" and not deps:
            # a constant (full, scalar_tensor ...): hold it as a typed scalar
            expr = f"tl.full([], {expr}, {ops.TL_DTYPE[cdt]})"
        if out_dtype in (torch.float16, torch.bfloat16) and node.target not in _CASTS:
            # eager rounds every fp16/bf16 op's result to its dtype; so does the kernel, so a
            # comparison or a where downstream sees the values eager sees (a constant is a
            # tl.full by now: a Python literal has no .to())
            expr = ops.cast_expr(f"({expr})", out_dtype)
        name = safe_name(node.name)
        self.value[node.name] = self._emit(
            Stmt(name=name, kind="op", tile=tile, deps=tuple(dict.fromkeys(deps)),
                 comment=self._comment(node), expr=expr, dtype=cdt)
        )

    def _reduce(self, name, op, arg, node, dtype, scale="") -> str:
        return self._emit(
            Stmt(name=name, kind="reduce", tile="x", deps=(arg,), comment=self._comment(node),
                 reduce=op, arg=arg, dtype=dtype, scale=scale)
        )

    def _lower_reduction(self, node) -> None:
        spec = ops.reduction_spec(node)
        deps: list[str] = []
        x = self._arg(spec.input, deps)
        if tuple(spec.dims) != tuple(self.rdims):
            raise LoweringError(f"{node.name} reduces dims {spec.dims}, the kernel's rows are {self.rdims}")
        n = 1
        for d in spec.dims:
            n *= self.domain[d]
        out_val = _val(node)
        out_dtype = (out_val[0] if isinstance(out_val, (list, tuple)) else out_val).dtype
        cdt = ops.compute_dtype(out_dtype)
        name = safe_name(node.name)
        if spec.op in ("sum", "mean"):
            if cdt.is_floating_point and not self.dtype[x].is_floating_point:
                x = self._cast_stmt(x, torch.float32, node)
            elif not cdt.is_floating_point and self.dtype[x] != cdt:
                x = self._cast_stmt(x, cdt, node)
            scale = f"{{}} / {float(n)!r}" if spec.op == "mean" else ""
            self.value[node.name] = self._reduce(name, "sum", x, node, cdt, scale)
        elif spec.op in ("amax", "amin"):
            self.value[node.name] = self._reduce(name, spec.op, x, node, cdt)
        elif spec.op == "any":
            self.value[node.name] = self._reduce(name, "any", x, node, torch.bool)
        elif spec.op in ("var_mean", "var"):
            if not self.dtype[x].is_floating_point:
                raise LoweringError(f"{node.name}: variance of an integer tensor")
            total = self._reduce(f"{name}_sum", "sum", x, node, torch.float32)
            mean = self._emit(Stmt(name=f"{name}_mean", kind="op", tile="x", deps=(total,),
                                   comment=self._comment(node) + "  (mean)", expr=f"{total} / {float(n)!r}"))
            dev = self._emit(Stmt(name=f"{name}_dev", kind="op", tile=self._tile_of([x, mean]), deps=(x, mean),
                                  comment=self._comment(node) + "  (x - mean)", expr=f"{x} - {mean}"))
            sq = self._emit(Stmt(name=f"{name}_dev2", kind="op", tile=self.tile[dev], deps=(dev,),
                                 comment=self._comment(node) + "  (squared)", expr=f"{dev} * {dev}"))
            denom = max(n - spec.correction, 0.0)
            var = self._reduce(f"{name}_var", "sum", sq, node, torch.float32,
                               scale=f"{{}} / {denom!r}" if denom else "{} * float(\"nan\")")
            self.value[node.name] = (var, mean) if spec.op == "var_mean" else var
        else:
            raise LoweringError(f"reduction {spec.op} is not generated by fusionlab")

    def _cast_stmt(self, x: str, dt: torch.dtype, node) -> str:
        return self._emit(Stmt(name=f"{x}_{str(dt).replace('torch.', '')}", kind="op", tile=self.tile[x],
                               deps=(x,), comment=self._comment(node) + "  (accumulate type)",
                               expr=f"{x}.to({ops.TL_DTYPE[dt]})", dtype=dt))


def lower(candidate: Candidate, graph: CapturedGraph, kernel_name: str) -> KernelIR:
    """The kernel IR of one candidate of `graph`."""
    try:
        return Lowerer(candidate, graph, kernel_name).lower()
    except LoweringError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise LoweringError(f"cannot lower {candidate.id}: {type(e).__name__}: {e}") from e
