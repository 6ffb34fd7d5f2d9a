"""Emission: kernel IR -> readable Triton source (the kernel body, then the whole module).

Three shapes of kernel:
  pointwise           one flat 1-D block of the domain per program
  reduction           persistent: a program holds XBLOCK whole rows (row fits one block)
  looped_reduction    rows longer than a block: one loop over the row per level of
                      reductions (softmax: max, then sum), then a last loop for stores

A reduction kernel takes its row count and length (``n_rows``, ``n_cols``) and, when its
rows are one dim, each tensor's row stride as arguments, as in Triton's tutorial softmax.
Block sizes and the launcher are in :mod:`.launch`, the helpers in :mod:`.helpers`.
"""

from __future__ import annotations

import torch

from .. import ops
from .domain import INT32_MAX
from .helpers import helper_source, helpers_used
from .launch import PERSISTENT_MAX, gpu_configs, kind_of, launch_config, launcher_source
from .lower import KernelIR, Stmt


class _Writer:
    def __init__(self):
        self.lines: list[str] = []
        self.indent = 1

    def __call__(self, stmt: str, comment: str = "") -> None:
        pad = "    " * self.indent
        if comment:
            text = f"{pad}{stmt}"
            width = max(52, len(text) + 2)
            self.lines.append(f"{text:<{width}}# {comment}")
        else:
            self.lines.append(f"{pad}{stmt}")

    def blank(self) -> None:
        self.lines.append("")


# --------------------------------------------------------------------------- kernel body


class _Emitter:
    def __init__(self, ir: KernelIR, kind: str):
        self.ir = ir
        self.kind = kind
        self.lay = ir.layout
        self.w = _Writer()
        self.by_name = {s.name: s for s in ir.stmts}
        self.emitted: set[str] = set()
        # tensor key -> the kernel argument holding its row stride (see Layout.row_strides)
        self.row_stride = {k: f"{k}_row_stride" for k in self.lay.row_strides()}

    def _offset(self, key: str, cls: str | None) -> str:
        return self.lay.offset(key, cls, self.row_stride.get(key, ""))

    # values ---------------------------------------------------------------

    def _mask(self, tile: str) -> str:
        if self.kind == "pointwise":
            return "xmask"
        return "mask" if tile == "xr" else "xmask"

    def _emit_stmt(self, s: Stmt) -> None:
        if s.name in self.emitted:
            return
        self.emitted.add(s.name)
        if s.kind == "load":
            cls = "x" if s.tile == "x" and self.kind != "pointwise" else None
            off = self._offset(s.load, cls)
            src = self.ir_input(s.load)
            other = "0.0" if src.dtype.is_floating_point else "0"
            if s.tile == "s":
                expr = f"tl.load({s.load})" if off == "0" else f"tl.load({s.load} + {off})"
            else:
                ptr = f"{s.load} + {off}" if off != "0" else f"{s.load} + 0 * xindex"
                expr = f"tl.load({ptr}, mask={self._mask(s.tile)}, other={other})"
            if src.dtype in (torch.float16, torch.bfloat16):
                expr += ".to(tl.float32)"
            dt = str(src.dtype).replace("torch.", "")
            shape = "x".join(map(str, src.shape)) or "scalar"
            self.w(f"{s.name} = {expr}", f"{src.node}: {dt}[{shape}]")
        elif s.kind == "op":
            self.w(f"{s.name} = {s.expr}", s.comment)
        elif s.kind == "reduce":
            self._emit_reduce_persistent(s)

    def ir_input(self, key: str):
        for t in self.ir.inputs:
            if t.key == key:
                return t
        raise KeyError(key)

    def _closure(self, names, tile_filter) -> list[Stmt]:
        """Statements needed for `names`, in program order, limited by `tile_filter`."""
        need: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n in need or n in self.emitted:
                continue
            s = self.by_name[n]
            if not tile_filter(s):
                continue
            need.add(n)
            stack.extend(s.deps)
        return [s for s in self.ir.stmts if s.name in need]

    # reductions -------------------------------------------------------------

    @staticmethod
    def _identity(s: Stmt) -> str:
        if s.reduce == "sum":
            return "0.0" if s.dtype.is_floating_point else "0"
        if s.reduce == "amax":
            return 'float("-inf")' if s.dtype.is_floating_point else str(torch.iinfo(s.dtype).min)
        if s.reduce == "amin":
            return 'float("inf")' if s.dtype.is_floating_point else str(torch.iinfo(s.dtype).max)
        return "0"

    def _reduce_input(self, s: Stmt) -> str:
        arg = s.arg
        if self.by_name[arg].tile != "xr":
            arg = f"tl.broadcast_to({arg}, [XBLOCK, RBLOCK])"
        if s.reduce == "any":
            arg = f"({arg} != 0).to(tl.int32)"
        return f"tl.where(mask, {arg}, {self._identity(s)})"

    def _finish(self, s: Stmt, reduced: str) -> str:
        if s.reduce == "any":
            reduced = f"{reduced} != 0"
        return s.scale.format(reduced) if s.scale else reduced

    def _reduce_call(self, s: Stmt, tile: str) -> str:
        if s.reduce == "sum":
            return f"tl.sum({tile}, 1, keep_dims=True)"
        if s.reduce == "any":
            return f"tl.max({tile}, 1, keep_dims=True)"
        if s.reduce == "amax":
            return f"_row_max({tile})" if s.dtype.is_floating_point else f"tl.max({tile}, 1, keep_dims=True)"
        return f"_row_min({tile})" if s.dtype.is_floating_point else f"tl.min({tile}, 1, keep_dims=True)"

    def _emit_reduce_persistent(self, s: Stmt) -> None:
        self.w(f"{s.name} = {self._finish(s, self._reduce_call(s, self._reduce_input(s)))}", s.comment)

    # layout ---------------------------------------------------------------

    def _x_setup(self) -> None:
        w, lay = self.w, self.lay
        pid = "tl.program_id(0).to(tl.int64)" if lay.needs_int64() else "tl.program_id(0)"
        if self.kind == "pointwise":
            w(f"xnumel = {lay.xnumel}", "elements")
        w(f"xoffset = {pid} * XBLOCK", "first row of this program" if self.kind != "pointwise" else "")
        if self.kind == "pointwise":
            w("xindex = xoffset + tl.arange(0, XBLOCK)")
            w("xmask = xindex < xnumel")
        else:
            w("xindex = xoffset + tl.arange(0, XBLOCK)[:, None]", "XBLOCK rows")
            w("xmask = xindex < n_rows")
        for stmt, comment in self.lay.index_lines("x"):
            if len(self.lay.xdims) > 0:
                w(stmt, comment)

    def _r_setup(self, looped: bool) -> None:
        w = self.w
        if looped:
            w("rindex = roffset + tl.arange(0, RBLOCK)[None, :]")
        else:
            w("rindex = tl.arange(0, RBLOCK)[None, :]", "a whole row: RBLOCK >= n_cols")
        w("rmask = rindex < n_cols")
        w("mask = xmask & rmask")
        for stmt, comment in self.lay.index_lines("r"):
            w(stmt, comment)

    # stores ---------------------------------------------------------------

    def _store(self, st, tile_cls: str) -> None:
        lay = self.lay
        cls = None if (self.kind == "pointwise" or tile_cls == "xr") else "x"
        off = self._offset(st.key, cls)
        val = st.value
        vtile = self.by_name[val].tile
        if self.kind == "pointwise":
            if vtile == "s":
                val = f"tl.broadcast_to({val}, [XBLOCK])"
            mask = "xmask"
        elif tile_cls == "xr":
            if vtile != "xr":
                val = f"tl.broadcast_to({val}, [XBLOCK, RBLOCK])"
            mask = "mask"
        else:
            if vtile == "s":
                val = f"tl.broadcast_to({val}, [XBLOCK, 1])"
            mask = "xmask"
        conds = lay.broadcast_conditions(st.key, cls)
        if conds:
            mask = " & ".join([mask] + conds)
        out = next(o for o in self.ir.outputs if o.key == st.key)
        if out.dtype == torch.bfloat16:
            val = f"_round_bf16({val})"
        if off == "0" or (tile_cls == "xr" and not lay.varies(st.key, "x")):
            off = "0 * xindex" if off == "0" else f"{off} + 0 * xindex"  # a pointer per row
        ptr = f"{st.key} + {off}"
        dt = str(out.dtype).replace("torch.", "")
        comment = f"{out.node}: {dt}[{'x'.join(map(str, out.shape)) or 'scalar'}]"
        if out.for_backward:
            comment += ", stored only for the backward"
        self.w(f"tl.store({ptr}, {val}, mask={mask})", comment)

    def _store_class(self, st) -> str:
        if self.kind == "pointwise":
            return "x"
        return "xr" if self.lay.varies(st.key, "r") else "x"

    # bodies ---------------------------------------------------------------

    def body(self) -> list[str]:
        if self.kind == "pointwise":
            self._x_setup()
            for s in self.ir.stmts:
                self._emit_stmt(s)
            for st in self.ir.stores:
                self._store(st, "x")
        elif self.kind == "reduction":
            self._x_setup()
            self._r_setup(looped=False)
            for s in self.ir.stmts:
                self._emit_stmt(s)
            for st in self.ir.stores:
                self._store(st, self._store_class(st))
        else:
            self._looped_body()
        return self.w.lines

    def _levels(self) -> dict[str, int]:
        level: dict[str, int] = {}
        for s in self.ir.stmts:
            dep = max((level[d] for d in s.deps), default=0)
            level[s.name] = dep + 1 if s.kind == "reduce" else dep
        return level

    def _looped_body(self) -> None:
        w = self.w
        self._x_setup()
        level = self._levels()
        # loads and values that do not depend on the row position come first
        for s in self.ir.stmts:
            if s.tile in ("x", "s") and s.kind != "reduce" and level[s.name] == 0:
                self._emit_stmt(s)
        reduces = [s for s in self.ir.stmts if s.kind == "reduce"]
        for lv in sorted({level[s.name] for s in reduces}):
            group = [s for s in reduces if level[s.name] == lv]
            w.blank()
            w(f"# pass {lv}: {', '.join(s.name for s in group)}")
            for s in group:
                dt = ops.TL_DTYPE[s.dtype if s.reduce != "any" else torch.int32]
                if s.reduce == "any":
                    dt = "tl.int32"
                w(f"acc_{s.name} = tl.full([XBLOCK, RBLOCK], {self._identity(s)}, {dt})")
            self._loop_over_row([g.arg for g in group])
            for s in group:
                upd = self._reduce_input(s)
                if s.reduce == "sum":
                    w(f"acc_{s.name} = acc_{s.name} + {upd}", s.comment)
                elif s.reduce in ("amax", "any"):
                    w(f"acc_{s.name} = _max_nan(acc_{s.name}, {upd})", s.comment)
                else:
                    w(f"acc_{s.name} = _min_nan(acc_{s.name}, {upd})", s.comment)
            w.indent -= 1
            for s in group:
                self.emitted.add(s.name)
                w(f"{s.name} = {self._finish(s, self._reduce_call(s, f'acc_{s.name}'))}", s.comment)
            # values of rows that are now known
            for s in self.ir.stmts:
                if s.tile in ("x", "s") and s.kind != "reduce" and level[s.name] <= lv:
                    self._emit_stmt(s)
        xr_stores = [st for st in self.ir.stores if self._store_class(st) == "xr"]
        if xr_stores:
            w.blank()
            w("# last pass: results per element")
            self._loop_over_row([st.value for st in xr_stores])
            for st in xr_stores:
                self._store(st, "xr")
            w.indent -= 1
        for st in self.ir.stores:
            if st not in xr_stores:
                self._store(st, "x")

    def _loop_over_row(self, values: list[str]) -> None:
        """Open a loop over the row (left open, indented) that computes the per-element
        `values`, recomputed in each loop that needs them."""
        self.w("for roffset in range(0, n_cols, RBLOCK):")
        self.w.indent += 1
        self._r_setup(looped=True)
        for s in self._closure(values, lambda s: s.tile == "xr"):
            self._emit_stmt(s)
            self.emitted.discard(s.name)


# --------------------------------------------------------------------------- module text


def _int_args(ir: KernelIR, kind: str) -> dict[str, str]:
    """Integer kernel arguments -> what the launcher passes: each row stride (read from the
    tensor where one dim has it), then the row count and length. None for pointwise kernels."""
    if kind == "pointwise":
        return {}
    out = {}
    for key, stride in ir.layout.row_strides().items():
        t = next(t for t in ir.inputs + ir.outputs if t.key == key)
        dims = [d for d, (n, st) in enumerate(zip(t.shape, t.stride)) if n > 1 and st == stride]
        out[f"{key}_row_stride"] = f"{key}.stride({dims[0]})" if len(dims) == 1 else str(stride)
    return {**out, "n_rows": "n_rows", "n_cols": "n_cols"}


def _kernel_def(ir: KernelIR, kind: str, int_args: dict[str, str]) -> list[str]:
    """The @triton.jit line, the def and the docstring."""
    ptrs = [t.key for t in ir.inputs + ir.outputs]
    consts = [f"{c}: tl.constexpr" for c in (["XBLOCK"] if kind == "pointwise" else ["XBLOCK", "RBLOCK"])]
    one_line = f"def {ir.name}({', '.join(ptrs + list(int_args) + consts)}):"
    if len(one_line) <= 100:
        head = [one_line]
    else:
        groups = [g for g in (ptrs, list(int_args), consts) if g]
        head = [f"def {ir.name}("] + [f"    {', '.join(g)}," for g in groups] + ["):"]
    cand, lay = ir.candidate, ir.layout
    if kind == "pointwise":
        what = "Each program computes XBLOCK elements."
        shape = f"Generated for domain {list(lay.original)} ({lay.xnumel} elements)."
    else:
        what = "Each program computes XBLOCK rows of n_cols elements, " + (
            "a whole row in one block of RBLOCK." if kind == "reduction" else "walking each row in blocks of RBLOCK.")
        shape = (f"Generated for domain {list(lay.original)}, reducing dims {list(lay.reduce_dims)}: "
                 f"{lay.xnumel} rows of {lay.rnumel}.")
    return ["@triton.jit", *head,
            f'    """{cand.pattern}: {len(cand.nodes)} ATen ops of {cand.graph} in one {kind.replace("_", " ")} kernel.',
            "", f"    {what}", f"    {shape}", '    """']


def emit(ir: KernelIR, *, persistent_max: int = PERSISTENT_MAX, header: str = "") -> dict:
    """The module text and launch facts of one kernel."""
    kind = kind_of(ir, persistent_max)
    body = _Emitter(ir, kind).body()
    int_args = _int_args(ir, kind)
    helpers = helpers_used(body)
    gpu = launch_config(ir, kind, "cuda")
    cpu = launch_config(ir, kind, "cpu")
    parts = [header.rstrip(), "import torch\nimport triton\nimport triton.language as tl"]
    if helpers:
        parts.append(helper_source(helpers))
    parts.append("\n".join(_kernel_def(ir, kind, int_args) + body))
    parts.append(launcher_source(ir, kind, gpu, cpu, int_args))
    source = "\n\n\n".join(p for p in parts if p) + "\n"
    signature = {t.key: "*" + ops.PTR_DTYPE[t.dtype] for t in ir.inputs + ir.outputs}
    row_strides = ir.layout.row_strides()
    int_values = {}
    for name in int_args:
        value = row_strides.get(name.removesuffix("_row_stride"), 0)
        value = {"n_rows": ir.layout.xnumel, "n_cols": ir.layout.rnumel}.get(name, value)
        signature[name] = "i64" if abs(value) > INT32_MAX else "i32"
        int_values[name] = int(value)
    return {
        "source": source,
        "kind": kind,
        "signature": signature,
        "int_args": int_values,
        "constexprs": {k: v for k, v in gpu.items() if k != "num_warps"},
        "num_warps": gpu["num_warps"],
        "configs": gpu_configs(ir, kind),
        "cpu_config": cpu,
    }
