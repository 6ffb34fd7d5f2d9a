"""Launch facts of a kernel: its kind, block sizes and GPU configs, and the launcher text.

The launcher is the plain-Python function beside the kernel: it fixes each input's memory
layout to the one the kernel was generated for, allocates the outputs, picks the grid and
launches. Block sizes come from the shapes: GPU-sized for the code a GPU runs, larger for the
Triton interpreter, where each program instance costs Python time.
"""

from __future__ import annotations

import torch

from .domain import next_pow2
from .lower import KernelIR

PERSISTENT_MAX = 4096  # longest row held in one block (GPU registers)
GPU_MAX_TILE = 4096  # XBLOCK * RBLOCK for GPU launches of reductions
INTERP_MAX_TILE = 65536  # elements per program instance in the interpreter


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


# --------------------------------------------------------------------------- matmul kernels

SMS = 132  # streaming multiprocessors to fill (H100 SXM); fewer tiles leave SMs idle


def matmul_config(m: int, n: int, k: int, batch: int, dtype: torch.dtype) -> dict[str, int]:
    """Block sizes, num_warps and num_stages for a GPU launch, from the shapes.

    128x128 tiles where the result is big enough, halved (the larger side first) while the
    tiles would not fill ~132 SMs; BLOCK_K 32 for fp32 (twice the bytes per element), 64 for
    16-bit; 8 warps for 128x128 tiles, 4 below; pipeline stages 3 (fp32) or 4 (16-bit) when
    K takes several steps (shared memory: at most 96 KiB / 128 KiB, within sm_80's and
    sm_90's), 2 when it takes one.
    """
    bm = min(128, max(16, next_pow2(m)))
    bn = min(128, max(16, next_pow2(n)))
    bk = min(32 if dtype == torch.float32 else 64, max(16, next_pow2(k)))
    while batch * -(-m // bm) * -(-n // bn) < SMS and max(bm, bn) > 32:
        if bm >= bn:
            bm //= 2
        else:
            bn //= 2
    warps = 8 if bm * bn >= 128 * 128 else 4 if bm * bn >= 64 * 64 else 2
    stages = 2 if k <= bk else (3 if dtype == torch.float32 else 4)
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages}


def matmul_configs(m: int, n: int, k: int, batch: int, dtype: torch.dtype) -> tuple[dict[str, int], ...]:
    """The default GPU config first, then the usual matmul configs that fit the shapes (for
    ``Kernel.tune`` on a GPU, ``inspect_configs`` without one)."""
    base = matmul_config(m, n, k, batch, dtype)
    out = [base]
    bk = base["BLOCK_K"]
    for bm, bn, warps, stages in ((64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3),
                                  (32, 64, 2, 4), (64, 32, 2, 4)):
        if bm <= max(16, next_pow2(m)) and bn <= max(16, next_pow2(n)):
            c = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
                 "num_stages": stages if k > bk else 2}
            if c not in out:
                out.append(c)
    return tuple(out)


def matmul_interpreter_config(m: int, n: int, k: int) -> dict[str, int]:
    """Big tiles for the Triton interpreter (each program instance costs Python time)."""
    return {"BLOCK_M": min(256, max(16, next_pow2(m))), "BLOCK_N": min(256, max(16, next_pow2(n))),
            "BLOCK_K": min(256, max(16, next_pow2(k))), "GROUP_M": 8, "num_warps": 4, "num_stages": 1}


# Copied into every kernel module (which depends only on torch and triton).
FIX_LAYOUT = '''def _fix_layout(t, shape, stride, dtype, name):
    # the kernel was generated for this shape, dtype and memory layout: the same tensor in
    # another layout is copied into it (one copy of a dim traced as expanded, stride 0)
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(f"{name}: kernel was generated for shape {shape}, {dtype}; "
                         f"got shape {tuple(t.shape)}, {t.dtype}")
    if all(n == 1 or a == b for n, a, b in zip(shape, t.stride(), stride)):
        return t
    t = t[tuple(slice(0, 1) if st == 0 else slice(None) for st in stride)]
    return torch.empty_strided(t.shape, stride, dtype=dtype, device=t.device).copy_(t).expand(shape)'''


def launcher_head(ir: KernelIR, dev: str) -> list[str]:
    """The first lines of every ``launch_<kernel>``: its signature and docstring, each input
    brought to the layout the kernel was generated for, and the outputs allocated."""
    ins = [t.key for t in ir.inputs]
    lines = [
        f"def launch_{ir.name}({', '.join(ins + ['*', 'config=None'])}):",
        f'    """Run {ir.name}: takes {", ".join(t.node for t in ir.inputs)}; '
        f'returns {", ".join(t.node for t in ir.outputs)}."""',
    ]
    lines += [f"    {t.key} = _fix_layout({t.key}, {t.shape!r}, {t.stride!r}, {t.dtype}, {t.node!r})" for t in ir.inputs]
    lines += [f"    {t.key} = torch.empty_strided({t.shape!r}, {t.stride!r}, dtype={t.dtype}, device={dev})"
              for t in ir.outputs]
    return lines


def launcher_source(ir: KernelIR, kind: str, gpu: dict, cpu: dict, int_args: dict[str, str]) -> str:
    """The ``launch_<kernel>`` function; `int_args` maps each integer kernel argument to the
    expression the launcher passes for it."""
    ins = [t.key for t in ir.inputs]
    outs = [t.key for t in ir.outputs]
    dev = f"{ins[0]}.device" if ins else '"cuda"'
    lines = launcher_head(ir, dev)
    if kind != "pointwise":
        lines.append(f"    n_rows, n_cols = {ir.layout.xnumel}, {ir.layout.rnumel}")
    lines += [
        "    if config is None:  # big blocks for the interpreter (CPU), GPU-sized ones for a GPU",
        f"        config = {cpu!r} if {dev}.type == \"cpu\" else {gpu!r}",
        "    blocks = {k: v for k, v in config.items() if k != \"num_warps\"}",
        f"    grid = (triton.cdiv({'n_rows' if kind != 'pointwise' else ir.layout.xnumel}, config[\"XBLOCK\"]),)",
        f"    {ir.name}[grid](",
        f"        {', '.join(ins + outs)},",
    ]
    if int_args:
        lines.append(f"        {', '.join(int_args.values())},")
    lines += [
        "        num_warps=config[\"num_warps\"], **blocks,",
        "    )",
        f"    return {', '.join(outs)}" + ("," if len(outs) == 1 else ""),
    ]
    return FIX_LAYOUT + "\n\n\n" + "\n".join(lines)
