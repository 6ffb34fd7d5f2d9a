"""Index math: the iteration domain of a kernel and where each tensor's elements live.

A kernel iterates over the domain ``D`` of its group. Pointwise kernels walk ``D``
flat; reduction kernels walk rows: the kept ("x") dims of ``D`` and the reduced ("r")
dims, each flattened row-major, so reduced dims come last by index math, never by a copy.

Every tensor the kernel reads or writes is described by its strides aligned to ``D``
(0 where it broadcasts). Dims of size 1 are dropped and neighbouring dims that every
tensor walks contiguously are merged, so a contiguous same-shape tensor is addressed by
``xindex`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

INT32_MAX = 2**31 - 1


def aligned_strides(shape, stride, domain) -> tuple[int, ...]:
    """Strides of a tensor of `shape`/`stride` broadcast right-aligned onto `domain`."""
    out = [0] * len(domain)
    off = len(domain) - len(shape)
    for i, (s, st) in enumerate(zip(shape, stride)):
        d = off + i
        if d < 0:
            continue  # leading size-1 dims beyond the domain
        out[d] = 0 if s == 1 else st
    return tuple(out)


def mapped_strides(stride, kept_dims, domain) -> tuple[int, ...]:
    """Strides of a reduction result without keepdim: its dims are `kept_dims` of `domain`."""
    out = [0] * len(domain)
    for st, d in zip(stride, kept_dims):
        out[d] = 0 if domain[d] == 1 else st
    return tuple(out)


@dataclass(frozen=True)
class Dim:
    size: int
    cls: str  # "x" (kept) or "r" (reduced)
    name: str  # index variable name: x0, x1, r0 ...


@dataclass
class Layout:
    """Coalesced domain: x dims then r dims; per-tensor strides over them."""

    dims: list[Dim]
    strides: dict[str, tuple[int, ...]]  # tensor key -> stride per dim (same order as dims)
    xnumel: int
    rnumel: int
    original: tuple[int, ...]
    reduce_dims: tuple[int, ...]

    @property
    def xdims(self) -> list[Dim]:
        return [d for d in self.dims if d.cls == "x"]

    @property
    def rdims(self) -> list[Dim]:
        return [d for d in self.dims if d.cls == "r"]

    def needs_int64(self) -> bool:
        if self.xnumel * max(self.rnumel, 1) > INT32_MAX:
            return True
        for st in self.strides.values():
            extent = sum((d.size - 1) * abs(s) for d, s in zip(self.dims, st))
            if extent > INT32_MAX:
                return True
        return False

    def index_lines(self, cls: str) -> list[tuple[str, str]]:
        """(statement, comment) lines computing the index variables of class `cls`."""
        dims = [d for d in self.dims if d.cls == cls]
        src = "xindex" if cls == "x" else "rindex"
        lines = []
        inner = 1
        for i in range(len(dims) - 1, -1, -1):
            d = dims[i]
            expr = src if inner == 1 else f"{src} // {inner}"
            if i > 0:
                expr = f"({expr}) % {d.size}" if inner != 1 else f"{src} % {d.size}"
            lines.append((f"{d.name} = {expr}", f"size {d.size}"))
            inner *= d.size
        lines.reverse()
        return lines

    def offset(self, key: str, cls: str | None = None, row_stride: str = "") -> str:
        """Element offset of tensor `key` (over x dims only when cls == "x"), outermost dim
        first; `row_stride` names the kernel argument that holds the stride of the one x dim."""
        st = self.strides[key]
        terms = []
        for d, s in zip(self.dims, st):
            if s == 0 or (cls == "x" and d.cls == "r"):
                continue
            if row_stride and d.cls == "x":
                terms.append(f"{d.name} * {row_stride}")
            else:
                terms.append(d.name if s == 1 else f"{s} * {d.name}")
        return " + ".join(terms) or "0"

    def row_strides(self) -> dict[str, int]:
        """Tensor key -> row stride, for the tensors that move along the rows of a reduction.

        Only when the rows are one x dim: the kernel then takes each row stride (and the row
        count and length) as an argument, like Triton's tutorial softmax, and costs nothing
        for it on a GPU (the JIT specialises an int argument equal to 1 or divisible by 16,
        the facts the compiler would have read from a constant; a GPU-target compile by
        Kernel.inspect gets no such specialisation and may show a few more registers).
        With several x dims (a layout that does not coalesce) the x index is split by
        constant sizes and every stride stays a constant. Strides along the row stay
        constants: 1 in the common case, so a row is one contiguous run in every compile,
        specialised or not (what vector loads need).
        """
        if not self.rdims or len(self.xdims) != 1:
            return {}
        at = self.dims.index(self.xdims[0])
        return {k: st[at] for k, st in self.strides.items() if st[at] != 0}

    def varies(self, key: str, cls: str) -> bool:
        return any(s != 0 for d, s in zip(self.dims, self.strides[key]) if d.cls == cls)

    def broadcast_conditions(self, key: str, cls: str | None = None) -> list[str]:
        """Store guards for a tensor that is broadcast along some dims: write each element once."""
        return [
            f"({d.name} == 0)"
            for d, s in zip(self.dims, self.strides[key])
            if s == 0 and d.size > 1 and (cls is None or d.cls == cls)
        ]


def make_layout(domain, reduce_dims, tensors: dict[str, tuple[int, ...]]) -> Layout:
    """Coalesce `domain` for the aligned `tensors` (key -> strides over domain)."""
    domain = tuple(domain)
    rset = set(reduce_dims)
    order = [d for d in range(len(domain)) if d not in rset] + [d for d in range(len(domain)) if d in rset]
    # drop size-1 dims
    order = [d for d in order if domain[d] != 1]
    groups: list[list[int]] = []
    for d in order:
        if groups:
            prev = groups[-1][-1]
            same_cls = (prev in rset) == (d in rset)
            if same_cls and d == prev + 1 and all(
                st[prev] == st[d] * domain[d] for st in tensors.values()
            ):
                groups[-1].append(d)
                continue
        groups.append([d])
    dims = []
    strides: dict[str, list[int]] = {k: [] for k in tensors}
    xi = ri = 0
    for g in groups:
        size = 1
        for d in g:
            size *= domain[d]
        cls = "r" if g[0] in rset else "x"
        if cls == "x":
            name = f"x{xi}"
            xi += 1
        else:
            name = f"r{ri}"
            ri += 1
        dims.append(Dim(size, cls, name))
        for k, st in tensors.items():
            strides[k].append(st[g[-1]])
    # number x dims outermost-first for reading: rename so x0 is outermost
    xnumel = 1
    rnumel = 1
    for d in dims:
        if d.cls == "x":
            xnumel *= d.size
        else:
            rnumel *= d.size
    return Layout(
        dims=dims,
        strides={k: tuple(v) for k, v in strides.items()},
        xnumel=xnumel,
        rnumel=rnumel,
        original=domain,
        reduce_dims=tuple(sorted(rset)),
    )


def next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
