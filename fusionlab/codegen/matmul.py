"""The matmul-epilogue template: a tiled ``tl.dot`` with the epilogue applied before the store.

A matmul candidate (:mod:`fusionlab.epilogue`) becomes one kernel in the form of Triton's
matmul tutorial: each program computes one ``BLOCK_M x BLOCK_N`` tile of the result
(programs walk ``GROUP_M`` row tiles per column of tiles, so neighbouring programs share
operand tiles in L2), accumulating ``tl.dot`` products over ``K`` in fp32; ``bmm`` runs one
batch per ``program_id(1)``. Operands are read through their own strides, so a transposed
weight (a ``permute`` view before ``mm``) costs no copy. Then the epilogue runs on the
tile, in registers: the same statements the pointwise kernels get from
:class:`.lower.Lowerer` (one op a line, named after its FX node, the ATen op and module in a
comment), with each epilogue tensor's offset split into the tile's rows and columns.

Precision: fp32 operands multiply in IEEE fp32 (``input_precision="ieee"``, no TF32, as
eager's default); fp16/bf16 operands on tensor cores with an fp32 accumulator, the result
rounded to the matmul's dtype as eager rounds it. The Triton interpreter (triton 3.9)
multiplies bf16 ``tl.dot`` operands as their raw 16-bit patterns (it keeps bf16 in numpy
as uint16 and its ``create_dot`` converts only 8-bit floats), so a bf16 kernel takes a
``DOT_FP32`` constexpr: the launcher sets it on CPU, where the operands are widened to fp32
before the dot (exact: every bf16 value is an fp32 value); a GPU compile keeps bf16.

Block sizes, ``num_warps`` and ``num_stages`` come from M, N, K (:func:`.launch.matmul_config`);
the interpreter gets big tiles (:func:`.launch.matmul_interpreter_config`): its cost is per
program instance.
"""

from __future__ import annotations

import math
import re

import torch

from .. import ops
from ..candidates import Candidate
from ..capture import CapturedGraph
from ..epilogue import MatmulSpec, is_matmul, matmul_spec, split_domain
from .domain import INT32_MAX, aligned_strides
from .helpers import helper_source, helpers_used
from .launch import (
    FIX_LAYOUT,
    launcher_head,
    matmul_config,
    matmul_configs,
    matmul_interpreter_config,
)
from .lower import KernelIR, Lowerer, LoweringError, Stmt, TensorArg, safe_name
from .source import KernelSource


def _contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def _split_strides(strides_bmn, parts, domain) -> tuple[int, ...]:
    """Strides over `domain` of a tensor given by its strides over [batch, M, N]: each of
    batch, M, N is split row-major into its dims of the domain."""
    out = [0] * len(domain)
    for stride, dims in zip(strides_bmn, parts):
        inner = 1
        for d in reversed(dims):
            out[d] = 0 if domain[d] == 1 else stride * inner
            inner *= domain[d]
    return tuple(out)


def _index_expr(var: str, dims, domain, strides) -> str:
    """Offset contributed by the dims `dims` of the domain, whose combined index is `var`
    (row-major over those dims). Dims a tensor walks contiguously are merged first."""
    sizes = [(domain[d], strides[d]) for d in dims if domain[d] != 1]
    merged: list[list[int]] = []
    for size, stride in sizes:
        if merged and merged[-1][1] == stride * size:
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    total = math.prod(s for s, _ in merged)
    terms, inner = [], 1
    for size, stride in reversed(merged):
        idx = var if inner == 1 else f"({var} // {inner})"
        if inner * size < total:
            idx = f"({idx} % {size})"
        if stride:
            terms.append(idx if stride == 1 else f"{idx} * {stride}")
        inner *= size
    return " + ".join(reversed(terms))


class MatmulLowerer(Lowerer):
    """The candidate's matmul -> ``acc`` (+ bias), its reshapes -> the same value, the
    epilogue -> :class:`.lower.Lowerer`'s statements."""

    def __init__(self, cand: Candidate, graph: CapturedGraph, kernel_name: str):
        nodes = {n.name: n for n in graph.gm.graph.nodes}
        mms = [nodes[n] for n in cand.nodes if is_matmul(nodes[n])]
        if len(mms) != 1:
            raise LoweringError(f"{cand.id}: a matmul-epilogue kernel computes exactly one matmul, found {len(mms)}")
        spec = matmul_spec(mms[0])
        if isinstance(spec, str):
            raise LoweringError(f"{mms[0].name}: {spec}")
        self.spec: MatmulSpec = spec
        self.parts = split_domain(tuple(cand.domain), spec)
        if self.parts is None:
            raise LoweringError(f"domain {list(cand.domain)} does not split into the matmul's batch, rows, columns")
        # the matmul and its reshapes in the group: stored (if at all) in the result's own order
        self.relabels = {n for n in cand.nodes if n == spec.node.name or ops.kind_of(nodes[n]) == "view"}
        super().__init__(cand, graph, kernel_name)

    def _plan_tensors(self) -> None:
        super()._plan_tensors()
        s = self.spec
        bmn = (s.batch, s.m, s.n) if s.batched else (1, s.m, s.n)
        for t in self.inputs + self.outputs:
            if t.node in self.relabels:
                # the matmul's result or a reshape of it: contiguous, its elements in the domain's order
                self.tensor_strides[t.key] = _contiguous_strides(tuple(self.domain))
            elif s.bias is not None and t.node == s.bias.name:
                # addmm's bias, broadcast to [M, N]: split onto the domain
                st = aligned_strides(t.shape, t.stride, bmn)
                self.tensor_strides[t.key] = _split_strides(st, self.parts, tuple(self.domain))
        if any(tuple(t.shape) != tuple(self.domain) and t.node not in self.relabels for t in self.outputs):
            raise LoweringError("an epilogue output does not have the output tile's shape")

    def lower(self) -> KernelIR:
        for node in self.members:
            kind = ops.kind_of(node)
            if node is self.spec.node:
                self._lower_matmul(node)
            elif kind == "view":
                if node.target not in (ops.aten.view.default, ops.aten._unsafe_view.default,
                                       ops.aten.reshape.default, ops.aten.alias.default):
                    raise LoweringError(f"{node.name}: {ops.op_name(node)} inside a matmul epilogue")
                self.value[node.name] = self.value[node.args[0].name]
            elif kind == "pointwise":
                self._lower_pointwise(node)
            else:
                raise LoweringError(f"{node.name} ({ops.op_name(node)}) is not pointwise: no matmul epilogue")
        return self.finish()

    def _lower_matmul(self, node) -> None:
        s = self.spec
        expr = "acc" if s.alpha == 1 else f"{ops.literal(s.alpha)} * acc"
        deps: list[str] = []
        if s.bias is not None:
            bias = self._arg(s.bias, deps)
            expr += f" + {bias}" if s.beta == 1 else f" + {ops.literal(s.beta)} * {bias}"
        out_dtype = node.meta["val"].dtype
        if out_dtype in (torch.float16, torch.bfloat16):
            expr = ops.cast_expr(f"({expr})", out_dtype)  # eager rounds the matmul's result to its dtype
        name = safe_name(node.name)
        self.value[node.name] = self._emit(Stmt(name=name, kind="op", tile="x", deps=tuple(deps),
                                                comment=self._comment(node), expr=expr, dtype=torch.float32))


# --------------------------------------------------------------------------- emission


class _Writer(list):
    def __call__(self, stmt: str, comment: str = "", indent: int = 1) -> None:
        text = "    " * indent + stmt
        self.append(f"{text:<{max(60, len(text) + 2)}}# {comment}" if comment else text)


def _dt(t: TensorArg) -> str:
    return f"{str(t.dtype).replace('torch.', '')}[{'x'.join(map(str, t.shape)) or 'scalar'}]"


class _Emitter:
    def __init__(self, ir: KernelIR, lw: MatmulLowerer):
        self.ir, self.lw, self.s = ir, lw, lw.spec
        self.w = _Writer()
        self.domain = tuple(lw.domain)
        self.strides = lw.tensor_strides
        self.by_key = {t.key: t for t in ir.inputs + ir.outputs}
        s = self.s
        extent = s.batch * s.m * s.n
        for t in ir.inputs + ir.outputs:
            extent = max(extent, 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride)))
        self.int64 = extent > INT32_MAX
        self.full: set[str] = set()  # values that vary along both rows and columns

    def _parts(self, key: str) -> tuple[str, str, str]:
        """(batch, row, column) offset expressions of tensor `key` ("" where it does not vary)."""
        bd, md, nd = self.lw.parts
        st = self.strides[key]
        return (_index_expr("pid_b", bd, self.domain, st), _index_expr("rm", md, self.domain, st),
                _index_expr("rn", nd, self.domain, st))

    def _pointer(self, key: str, full: bool = False) -> tuple[str, str, str]:
        """(pointer expression, mask, shape class "full" | "row" | "col" | "s") of tensor `key`."""
        b, m, n = self._parts(key)
        if full:
            m = m or "0 * rm"
            n = n or "0 * rn"
        terms = [b] if b else []
        if m:
            terms.append(m.replace("rm", "rm[:, None]"))
        if n:
            terms.append(n.replace("rn", "rn[None, :]"))
        ptr = key + (" + " + " + ".join(terms) if terms else "")
        if m and n:
            return ptr, "mask", "full"
        if m:
            return ptr, "m_mask[:, None]", "row"
        if n:
            return ptr, "n_mask[None, :]", "col"
        return ptr, "", "s"

    def _operand(self, which: str) -> tuple[str, str]:
        """The tl.load of one K-slice of operand A (``[BLOCK_M, BLOCK_K]``) or B (``[BLOCK_K, BLOCK_N]``)."""
        s = self.s
        node = s.a if which == "a" else s.b
        t = self.by_key["in_" + node.name]
        st = t.stride
        bs, r, c = (st[0], st[1], st[2]) if s.batched else (0, st[0], st[1])
        rows, cols = ("rm", "kk") if which == "a" else ("kk", "rn")
        terms = [f"pid_b * {bs}"] if s.batched and bs and s.batch > 1 else []
        terms.append(f"{rows}[:, None]" + (f" * {r}" if r != 1 else ""))
        terms.append(f"{cols}[None, :]" + (f" * {c}" if c != 1 else ""))
        mask = "m_mask[:, None] & (kk[None, :] < K)" if which == "a" else "(kk[:, None] < K) & n_mask[None, :]"
        how = "rows contiguous" if c == 1 else "columns contiguous (a transposed view, read by strides)" \
            if r == 1 else f"strides {st}"
        return (f"tl.load({t.key} + {' + '.join(terms)}, mask={mask}, other=0.0)",
                f"{node.name}: {_dt(t)}, {how}")

    def body(self) -> list[str]:
        w, s = self.w, self.s
        pid = "tl.program_id(0).to(tl.int64)" if self.int64 else "tl.program_id(0)"
        w(f"M, N, K = {s.m}, {s.n}, {s.k}", f"{'[' + str(s.batch) + '] ' if s.batched else ''}"
          f"[M, K] @ [K, N]")
        w(f"pid = {pid}", "which output tile: GROUP_M row tiles per column of tiles (L2 reuse)")
        w("num_pid_m = tl.cdiv(M, BLOCK_M)")
        w("num_pid_n = tl.cdiv(N, BLOCK_N)")
        w("group_id = pid // (GROUP_M * num_pid_n)")
        w("first_pid_m = group_id * GROUP_M")
        w("group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)")
        w("pid_m = first_pid_m + (pid % (GROUP_M * num_pid_n)) % group_size_m")
        w("pid_n = (pid % (GROUP_M * num_pid_n)) // group_size_m")
        if s.batched:
            w("pid_b = tl.program_id(1)" + (".to(tl.int64)" if self.int64 else ""), "one batch per program_id(1)")
        w("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)", "rows of the result this program computes")
        w("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)", "its columns")
        w("rk = tl.arange(0, BLOCK_K)")
        w("m_mask = rm < M")
        w("n_mask = rn < N")
        w("mask = m_mask[:, None] & n_mask[None, :]")
        w("acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)", "fp32 accumulator")
        w("for k0 in range(0, K, BLOCK_K):")
        w("kk = k0 + rk", indent=2)
        a, ca = self._operand("a")
        b, cb = self._operand("b")
        w(f"a_tile = {a}", ca, indent=2)
        w(f"b_tile = {b}", cb, indent=2)
        dtype = s.node.meta["val"].dtype
        if dtype == torch.bfloat16:
            w("if DOT_FP32:  # the Triton interpreter multiplies bf16 dot operands as raw bits", indent=2)
            w("a_tile = a_tile.to(tl.float32)", "exact: every bf16 value is an fp32 value", indent=3)
            w("b_tile = b_tile.to(tl.float32)", indent=3)
        prec = ', input_precision="ieee"' if dtype == torch.float32 else ""
        w(f"acc = tl.dot(a_tile, b_tile, acc{prec})",
          "IEEE fp32 products, no TF32 (as eager)" if prec else "tensor cores, fp32 accumulation", indent=2)
        w.append("")
        w("# epilogue: on the tile, in registers")
        self.full.add("acc")
        for st in self.ir.stmts:
            self._stmt(st)
        for store in self.ir.stores:
            t = self.by_key[store.key]
            ptr, _, _ = self._pointer(store.key, full=True)
            val = store.value
            if val not in self.full:
                val = f"tl.broadcast_to({val}, [BLOCK_M, BLOCK_N])"
            if t.dtype == torch.bfloat16:
                val = f"_round_bf16({val})"
            extra = ", stored only for the backward" if t.for_backward else ""
            w(f"tl.store({ptr}, {val}, mask=mask)", f"{t.node}: {_dt(t)}{extra}")
        return list(w)

    def _stmt(self, st: Stmt) -> None:
        w = self.w
        if st.kind == "load":
            t = self.by_key[st.load]
            ptr, mask, cls = self._pointer(st.load)
            if cls == "s":
                expr = f"tl.load({ptr})"
            else:
                other = "0.0" if t.dtype.is_floating_point else "0"
                expr = f"tl.load({ptr}, mask={mask}, other={other})"
            if t.dtype in (torch.float16, torch.bfloat16):
                expr += ".to(tl.float32)"
            if cls == "full":
                self.full.add(st.name)
            w(f"{st.name} = {expr}", f"{t.node}: {_dt(t)}")
        elif st.kind == "op":
            if re.search(r"\bacc\b", st.expr) or any(d in self.full for d in st.deps):
                self.full.add(st.name)
            w(f"{st.name} = {st.expr}", st.comment)
        else:
            raise LoweringError(f"{st.name}: a {st.kind} statement in a matmul epilogue")


def _kernel_def(ir: KernelIR, spec: MatmulSpec, bf16: bool) -> list[str]:
    ptrs = [t.key for t in ir.inputs + ir.outputs]
    consts = [f"{c}: tl.constexpr" for c in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")
              + (("DOT_FP32",) if bf16 else ())]
    one = f"def {ir.name}({', '.join(ptrs + consts)}):"
    head = [one] if len(one) <= 100 else [f"def {ir.name}(", f"    {', '.join(ptrs)},", f"    {', '.join(consts)},", "):"]
    cand = ir.candidate
    batch = f"{spec.batch} batches of " if spec.batched else ""
    return ["@triton.jit", *head,
            f'    """{cand.pattern}: {len(cand.nodes)} ATen nodes of {cand.graph} in one matmul kernel.',
            "",
            "    Each program computes one BLOCK_M x BLOCK_N tile of the result, summing tl.dot over K,",
            "    then applies the epilogue to the tile before storing it.",
            f"    Generated for {batch}[{spec.m}, {spec.k}] @ [{spec.k}, {spec.n}]"
            + (f", epilogue over {list(cand.domain)}." if len(cand.domain) != 2 + spec.batched else "."),
            '    """']


def _launcher(ir: KernelIR, spec: MatmulSpec, gpu: dict, cpu: dict, bf16: bool) -> str:
    ins = [t.key for t in ir.inputs]
    outs = [t.key for t in ir.outputs]
    dev = f"{ins[0]}.device"
    lines = launcher_head(ir, dev)
    lines += [
        "    if config is None:  # big tiles for the interpreter (CPU), GPU-sized ones for a GPU",
        f"        config = {cpu!r} if {dev}.type == \"cpu\" else {gpu!r}",
        f"    grid = (triton.cdiv({spec.m}, config[\"BLOCK_M\"]) * triton.cdiv({spec.n}, config[\"BLOCK_N\"]), "
        f"{spec.batch if spec.batched else 1})",
        f"    {ir.name}[grid](",
        f"        {', '.join(ins + outs)},",
        "        BLOCK_M=config[\"BLOCK_M\"], BLOCK_N=config[\"BLOCK_N\"], BLOCK_K=config[\"BLOCK_K\"], "
        "GROUP_M=config[\"GROUP_M\"],",
    ]
    if bf16:
        lines.append(f"        DOT_FP32={dev}.type == \"cpu\",  # the interpreter: widen bf16 dot operands")
    lines += [
        "        num_warps=config[\"num_warps\"], num_stages=config.get(\"num_stages\", 2),",
        "    )",
        f"    return {', '.join(outs)}" + ("," if len(outs) == 1 else ""),
    ]
    return FIX_LAYOUT + "\n\n\n" + "\n".join(lines)


def generate_matmul(candidate: Candidate, graph: CapturedGraph, name: str, header: str,
                    replaces: tuple[str, ...], model_name: str = "") -> KernelSource:
    """The KernelSource of one matmul candidate (see the module docstring)."""
    lw = MatmulLowerer(candidate, graph, name)
    ir = lw.lower()
    spec = lw.spec
    dtype = spec.node.meta["val"].dtype
    bf16 = dtype == torch.bfloat16
    body = _Emitter(ir, lw).body()
    gpu = matmul_config(spec.m, spec.n, spec.k, spec.batch, dtype)
    cpu = matmul_interpreter_config(spec.m, spec.n, spec.k)
    helpers = helpers_used(body)
    parts = [header.rstrip(), "import torch\nimport triton\nimport triton.language as tl"]
    if helpers:
        parts.append(helper_source(helpers))
    parts.append("\n".join(_kernel_def(ir, spec, bf16) + body))
    parts.append(_launcher(ir, spec, gpu, cpu, bf16))
    source = "\n\n\n".join(p for p in parts if p) + "\n"
    constexprs = {k: v for k, v in gpu.items() if k not in ("num_warps", "num_stages")}
    if bf16:
        constexprs["DOT_FP32"] = 0
    return KernelSource(
        name=name, launcher=f"launch_{name}", source=source,
        signature={t.key: "*" + ops.PTR_DTYPE[t.dtype] for t in ir.inputs + ir.outputs},
        constexprs=constexprs, num_warps=gpu["num_warps"], num_stages=gpu["num_stages"],
        configs=matmul_configs(spec.m, spec.n, spec.k, spec.batch, dtype),
        kind="matmul", candidate_id=candidate.id, pattern=candidate.pattern, replaces=replaces,
        modules=candidate.modules, model_name=model_name,
        meta={
            "cpu_config": cpu,
            "inputs": [(t.node, t.dtype, t.shape, t.stride) for t in ir.inputs],
            "outputs": [(t.node, t.dtype, t.shape, t.stride) for t in ir.outputs],
            "matmul": (spec.batch, spec.m, spec.n, spec.k),
        },
    )
