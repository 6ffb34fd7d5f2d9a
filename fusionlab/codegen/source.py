"""KernelSource: the plain-data result of codegen, read by build, inspect and export."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelSource:
    """Readable Triton source for one fused group, plus what is needed to launch or compile it.

    ``source`` is a complete, importable Python module (imports, small ``@triton.jit``
    helpers, the kernel ``name`` and the launcher ``launcher``). It depends only on torch
    and triton, so it can be written to a file and imported anywhere.
    """

    name: str  # the @triton.jit kernel function in `source`
    launcher: str  # the plain-Python launcher function in `source`
    source: str  # the whole module text
    signature: dict[str, str]  # kernel parameter -> Triton type ("*fp32", "i32", "i64"), constexprs excluded
    constexprs: dict[str, int]  # block sizes used for the GPU launch (e.g. {"XBLOCK": 1024})
    num_warps: int
    configs: tuple[dict[str, int], ...] = ()  # candidate GPU launch configs incl. "num_warps"
    kind: str = "pointwise"  # "pointwise" | "reduction" | "looped_reduction" | "matmul"
    num_stages: int | None = None  # software-pipeline stages of a GPU compile (matmul kernels; None: Triton's)
    candidate_id: str = ""
    pattern: str = ""
    replaces: tuple[str, ...] = ()  # "node_name = aten.op(...)  # module" lines
    modules: tuple[str, ...] = ()  # source module paths, e.g. "h.0.mlp.act"
    model_name: str = ""
    # the values the launcher passes for the kernel's integer arguments (n_rows, n_cols, row
    # strides): a GPU-target compile specializes on them as Triton's JIT would
    int_args: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def digest(self) -> str:
        """Content hash of the source and launch settings (used as a cache key part)."""
        h = hashlib.sha256(self.source.encode())
        h.update(repr(sorted(self.signature.items())).encode())
        h.update(repr(sorted(self.constexprs.items())).encode())
        h.update(str(self.num_warps).encode())
        if self.num_stages is not None:
            h.update(f"stages={self.num_stages}".encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"KernelSource({self.name!r}, kind={self.kind}, pattern={self.pattern!r}, "
            f"{len(self.source.splitlines())} lines)"
        )
