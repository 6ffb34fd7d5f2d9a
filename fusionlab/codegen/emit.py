"""Emission: kernel IR -> readable Triton source and its launcher.

Three shapes of kernel:
  pointwise           one flat 1-D block of the domain per program
  reduction           persistent: a program holds XBLOCK whole rows (row fits one block)
  looped_reduction    rows longer than a block: one loop over the row per level of
                      reductions (softmax: max, then sum), then a last loop for stores

Block sizes are chosen from the shapes: GPU-sized for the code a GPU runs, larger for
the Triton interpreter, where each program instance costs Python time.
"""

from __future__ import annotations

import torch

from .. import ops
from .domain import next_pow2
from .lower import KernelIR, Stmt

PERSISTENT_MAX = 4096  # longest row held in one block (GPU registers)
GPU_MAX_TILE = 4096  # XBLOCK * RBLOCK for GPU launches of reductions
INTERP_MAX_TILE = 65536  # elements per program instance in the interpreter

HELPERS = '''
@triton.jit
def _max_nan(a, b):
    # maximum that propagates NaN, like torch.amax / torch.maximum
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _min_nan(a, b):
    # minimum that propagates NaN, like torch.amin / torch.minimum
    return tl.where((a < b) | (a != a), a, b)


@triton.jit
def _row_max(x):
    # max of each row (axis 1) that propagates NaN, like torch.amax
    m = tl.max(x, 1, keep_dims=True)
    has_nan = tl.max((x != x).to(tl.int32), 1, keep_dims=True) > 0
    return tl.where(has_nan, float("nan"), m)


@triton.jit
def _row_min(x):
    # min of each row (axis 1) that propagates NaN, like torch.amin
    m = tl.min(x, 1, keep_dims=True)
    has_nan = tl.max((x != x).to(tl.int32), 1, keep_dims=True) > 0
    return tl.where(has_nan, float("nan"), m)


@triton.jit
def _round_bf16(x):
    # fp32 -> the nearest bf16 value (ties to even), still held in fp32: torch rounds this
    # way, while a plain .to(tl.bfloat16) in the Triton interpreter truncates
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


@triton.jit
def _tanh(x):
    # 2 sigmoid(2x) - 1 cancels near 0: use the odd series there (error < 3e-8 relative)
    x2 = x * x
    series = x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    return tl.where(tl.abs(x) < 0.125, series, 2.0 * tl.sigmoid(2.0 * x) - 1.0)


@triton.jit
def _pow(x, y):
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    y_int = tl.floor(y) == y
    y_odd = y_int & (tl.floor(y * 0.5) * 2.0 != y)
    r = tl.where((x < 0) & y_odd, -r, r)
    r = tl.where((x < 0) & (~y_int), float("nan"), r)
    return tl.where(y == 0, 1.0, r)


@triton.jit
def _expm1(x):
    # exp(x) - 1 cancels near 0: Taylor series there
    s = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (1.0 / 720.0))))))
    return tl.where(tl.abs(x) < 0.125, s, tl.exp(x) - 1.0)


@triton.jit
def _log1p(x):
    # log(1 + x) loses x's low bits near 0: Taylor series there
    s = x * (1.0 - x * (0.5 - x * (1.0 / 3.0 - x * (0.25 - x * (0.2 - x * (1.0 / 6.0 - x * (1.0 / 7.0)))))))
    return tl.where(tl.abs(x) < 0.125, s, tl.log(1.0 + x))


@triton.jit
def _trunc(x):
    return tl.where(x < 0, tl.ceil(x), tl.floor(x))


@triton.jit
def _floordiv(a, b):
    q = a // b
    return tl.where((a % b != 0) & ((a < 0) != (b < 0)), q - 1, q)
'''

_HELPER_NAMES = ("_max_nan", "_min_nan", "_row_max", "_row_min", "_round_bf16", "_tanh", "_pow", "_expm1", "_log1p", "_trunc", "_floordiv")


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


def kind_of(ir: KernelIR, persistent_max: int = PERSISTENT_MAX) -> str:
    if not ir.is_reduction:
        return "pointwise"
    return "reduction" if next_pow2(ir.layout.rnumel) <= persistent_max else "looped_reduction"


def launch_config(ir: KernelIR, kind: str, device: str) -> dict[str, int]:
    """Block sizes and num_warps for a launch on `device` ("cuda" or "cpu" = interpreter)."""
    lay = ir.layout
    if kind == "pointwise":
        cap = 1024 if device == "cuda" else INTERP_MAX_TILE
        xb = min(next_pow2(lay.xnumel), cap)
        return {"XBLOCK": xb, "num_warps": max(1, min(8, xb // 256))}
    tile = GPU_MAX_TILE if device == "cuda" else INTERP_MAX_TILE
    if kind == "reduction":
        rb = next_pow2(lay.rnumel)
    else:
        rb = min(next_pow2(lay.rnumel), 1024 if device == "cuda" else 8192)
    xb = max(1, min(next_pow2(lay.xnumel), tile // rb))
    if device == "cuda":
        # keep enough programs to fill a GPU's SMs (~100+): fewer rows per program when rows are few
        while xb > 1 and -(-lay.xnumel // xb) < 128:
            xb //= 2
    return {"XBLOCK": xb, "RBLOCK": rb, "num_warps": max(1, min(8, (xb * rb) // 256))}


def gpu_configs(ir: KernelIR, kind: str) -> tuple[dict[str, int], ...]:
    """A few GPU launch configs derived from the shapes (for tuning on a GPU, listing without)."""
    lay = ir.layout
    base = launch_config(ir, kind, "cuda")
    out = [base]
    if kind == "pointwise":
        for xb in (256, 512, 1024, 2048):
            if xb <= max(next_pow2(lay.xnumel), 256):
                out.append({"XBLOCK": xb, "num_warps": max(1, min(8, xb // 256))})
    else:
        for mul in (0.5, 2.0):
            xb = max(1, int(base["XBLOCK"] * mul))
            if xb <= next_pow2(lay.xnumel) and xb * base["RBLOCK"] <= 16384:
                out.append({"XBLOCK": xb, "RBLOCK": base["RBLOCK"],
                            "num_warps": max(1, min(8, (xb * base["RBLOCK"]) // 256))})
        for nw in (2, 4, 8):
            out.append({**base, "num_warps": nw})
    uniq = []
    for c in out:
        if c not in uniq:
            uniq.append(c)
    return tuple(uniq)


# --------------------------------------------------------------------------- kernel body


class _Emitter:
    def __init__(self, ir: KernelIR, kind: str):
        self.ir = ir
        self.kind = kind
        self.lay = ir.layout
        self.w = _Writer()
        self.by_name = {s.name: s for s in ir.stmts}
        self.emitted: set[str] = set()

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
            off = self.lay.offset(s.load, cls)
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
        w(f"xnumel = {lay.xnumel}", "rows" if self.kind != "pointwise" else "elements")
        if self.kind != "pointwise":
            w(f"rnumel = {lay.rnumel}", "elements reduced per row")
        w(f"xoffset = {pid} * XBLOCK")
        if self.kind == "pointwise":
            w("xindex = xoffset + tl.arange(0, XBLOCK)")
        else:
            w("xindex = xoffset + tl.arange(0, XBLOCK)[:, None]")
        w("xmask = xindex < xnumel")
        for stmt, comment in self.lay.index_lines("x"):
            if len(self.lay.xdims) > 0:
                w(stmt, comment)

    def _r_setup(self, looped: bool) -> None:
        w = self.w
        if looped:
            w("rindex = roffset + tl.arange(0, RBLOCK)[None, :]")
        else:
            w("rindex = tl.arange(0, RBLOCK)[None, :]")
        w("rmask = rindex < rnumel")
        w("mask = xmask & rmask")
        for stmt, comment in self.lay.index_lines("r"):
            w(stmt, comment)

    # stores ---------------------------------------------------------------

    def _store(self, st, tile_cls: str) -> None:
        lay = self.lay
        cls = None if (self.kind == "pointwise" or tile_cls == "xr") else "x"
        off = lay.offset(st.key, cls)
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
        self.w(f"tl.store({ptr}, {val}, mask={mask})", f"{out.node}: {dt}[{'x'.join(map(str, out.shape)) or 'scalar'}]")

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
        xr = lambda s: s.tile == "xr"  # noqa: E731
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
            w("for roffset in range(0, rnumel, RBLOCK):")
            w.indent += 1
            self._r_setup(looped=True)
            for s in self._closure([g.arg for g in group], xr):
                self._emit_loop_stmt(s)
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
            w("for roffset in range(0, rnumel, RBLOCK):")
            w.indent += 1
            self._r_setup(looped=True)
            for s in self._closure([st.value for st in xr_stores], xr):
                self._emit_loop_stmt(s)
            for st in xr_stores:
                self._store(st, "xr")
            w.indent -= 1
        for st in self.ir.stores:
            if st not in xr_stores:
                self._store(st, "x")

    def _emit_loop_stmt(self, s: Stmt) -> None:
        """Emit an xr statement inside a loop (recomputed in each loop that needs it)."""
        self._emit_stmt(s)
        self.emitted.discard(s.name)


# --------------------------------------------------------------------------- module text


def _uses_helpers(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    return [h for h in _HELPER_NAMES if h + "(" in text or h + ", " in text or h + ")" in text]


def _helper_source(names: list[str]) -> str:
    blocks = HELPERS.strip().split("\n\n\n")
    keep = [b for b in blocks if any(f"def {n}(" in b for n in names)]
    return "\n\n\n".join(keep)


def emit(ir: KernelIR, *, persistent_max: int = PERSISTENT_MAX, header: str = "") -> dict:
    """The module text and launch facts of one kernel."""
    kind = kind_of(ir, persistent_max)
    body = _Emitter(ir, kind).body()
    params = [t.key for t in ir.inputs] + [t.key for t in ir.outputs]
    consts = ["XBLOCK"] if kind == "pointwise" else ["XBLOCK", "RBLOCK"]
    sig = ", ".join(params + [f"{c}: tl.constexpr" for c in consts])
    cand = ir.candidate
    lay = ir.layout
    doc = [
        f'    """{cand.pattern}: {len(cand.nodes)} ATen ops of {cand.graph} in one {kind.replace("_", " ")} kernel.',
        "",
        f"    Domain {list(lay.original)}"
        + (f", reducing dims {list(lay.reduce_dims)} ({lay.xnumel} rows of {lay.rnumel})" if ir.is_reduction
           else f" ({lay.xnumel} elements)") + ".",
        '    """',
    ]
    kernel = ["@triton.jit", f"def {ir.name}({sig}):"] + doc + body
    helpers = _uses_helpers(body)
    gpu = launch_config(ir, kind, "cuda")
    cpu = launch_config(ir, kind, "cpu")
    launcher = _launcher(ir, kind, gpu, cpu)
    parts = [header.rstrip(), "import torch\nimport triton\nimport triton.language as tl"]
    if helpers:
        parts.append(_helper_source(helpers))
    parts.append("\n".join(kernel))
    parts.append(launcher)
    source = "\n\n\n".join(p for p in parts if p) + "\n"
    signature = {}
    for t in ir.inputs + ir.outputs:
        signature[t.key] = "*" + ops.PTR_DTYPE[t.dtype]
    return {
        "source": source,
        "kind": kind,
        "signature": signature,
        "constexprs": {k: v for k, v in gpu.items() if k != "num_warps"},
        "num_warps": gpu["num_warps"],
        "configs": gpu_configs(ir, kind),
        "cpu_config": cpu,
    }


def _launcher(ir: KernelIR, kind: str, gpu: dict, cpu: dict) -> str:
    ins = [t.key for t in ir.inputs]
    lay = ir.layout
    lines = [f"def launch_{ir.name}({', '.join(ins)}, *, config=None):"]
    lines.append(f'    """Run {ir.name}: takes {", ".join(t.node for t in ir.inputs)}; '
                 f'returns {", ".join(t.node for t in ir.outputs)}."""')
    first = ins[0] if ins else None
    for t in ir.inputs:
        lines.append(f"    {t.key} = _check({t.key}, {t.shape!r}, {t.stride!r}, {t.dtype}, {t.node!r})")
    dev = f"{first}.device" if first else '"cuda"'
    for t in ir.outputs:
        lines.append(
            f"    {t.key} = torch.empty_strided({t.shape!r}, {t.stride!r}, dtype={t.dtype}, device={dev})"
        )
    lines.append("    if config is None:")
    lines.append(f"        config = {cpu!r} if {dev}.type == \"cpu\" else {gpu!r}")
    lines.append("    meta = dict(config)")
    lines.append("    num_warps = meta.pop(\"num_warps\")")
    lines.append(f"    grid = (triton.cdiv({lay.xnumel}, meta[\"XBLOCK\"]),)")
    args = ", ".join(ins + [t.key for t in ir.outputs])
    lines.append(f"    {ir.name}[grid]({args}, num_warps=num_warps, **meta)")
    outs = [t.key for t in ir.outputs]
    lines.append(f"    return {', '.join(outs)}" + ("," if len(outs) == 1 else ""))
    check = '''def _check(t, shape, stride, dtype, name):
    # the kernel's index math assumes these strides: another layout of the same tensor is
    # copied into it (size-1 dims may have any stride); another shape or dtype is an error
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(
            f"{name}: kernel was generated for shape {shape}, {dtype}; "
            f"got shape {tuple(t.shape)}, {t.dtype}"
        )
    if any(n > 1 and a != b for n, a, b in zip(shape, t.stride(), stride)):
        # a dim traced as expanded (stride 0) holds one copy of its values
        for d, (n, st) in enumerate(zip(shape, stride)):
            if n > 1 and st == 0:
                t = t.narrow(d, 0, 1)
        t = torch.empty_strided(tuple(t.shape), stride, dtype=dtype, device=t.device).copy_(t)
        t = t.expand(shape)
    return t'''
    return check + "\n\n\n" + "\n".join(lines)
