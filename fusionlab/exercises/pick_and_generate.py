"""Checkers for notebook 3, "Pick and generate": a bias+GELU Triton kernel written by the student,
checked against eager PyTorch on fresh random inputs, and the bytes one fused kernel moves."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .feedback import Feedback, close, fmt, is_unanswered, number, right, unanswered, wrong

SHAPES = ((4, 64), (3, 781), (2, 1000))  # a power of two, then rows no block size divides
RTOL, ATOL = 1.3e-6, 1e-5  # float32, as fusionlab.check.TOLERANCES


def _agrees(y, ref) -> bool:
    return y.shape == ref.shape and bool(torch.allclose(y, ref, rtol=RTOL, atol=ATOL))


GUARD = 1 << 16  # elements of NaN after each tensor: an unmasked load reads them, an unmasked store hits them


SENTINEL = -12345.0  # what lies past the end of y: a store there shows (a NaN store would not)


def _guarded(values: torch.Tensor, fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
    """(the tensor, its buffer): `values` copied to the front of a buffer GUARD elements longer, the rest `fill`.

    The Triton interpreter does not check pointers: a store past the end of a tensor's memory
    corrupts the Python process (it hangs or aborts). Past the end of these tensors lies the
    guard instead, so the checker can say what went wrong and the notebook's kernel lives on."""
    buf = torch.full((values.numel() + GUARD,), fill, dtype=values.dtype)
    view = buf[: values.numel()].view(values.shape)
    view.copy_(values)
    return view, buf


def bias_gelu_kernel(fn, shapes=SHAPES) -> Feedback:
    """3.1: ``fn(x, bias, y)`` writes ``gelu(x + bias)`` (exact, erf) into y, for float32 x and y of
    shape (M, N) and bias of shape (N,); checked against eager PyTorch on fresh random inputs of
    each shape. Each tensor is followed in memory by a guard, so a load past the end reads NaN
    and a store past the end is seen (and harms nothing)."""
    name = "3.1 your bias+GELU kernel"
    if is_unanswered(fn):
        return unanswered(name, "a function (x, bias, y) that launches your @triton.jit kernel to fill y; start "
                                "from the generated kernel above")
    if not callable(fn):
        return wrong(name, "the answer should be a function fn(x, bias, y) that fills y")
    worked = []
    for m, n in shapes:
        x, b = torch.randn(m, n), torch.randn(n)
        ref = F.gelu(x + b)
        xg, _ = _guarded(x)
        bg, _ = _guarded(b)
        y, ybuf = _guarded(torch.full((m, n), float("nan")), SENTINEL)
        try:
            fn(xg, bg, y)
        except Exception as e:  # the student's code: say what it raised, on which shape
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return wrong(name, f"on x of shape {(m, n)} your function raised {type(e).__name__}: {first}")
        if not bool((ybuf[m * n:] == SENTINEL).all()):
            return wrong(name, f"on shape {(m, n)} the kernel stored past the end of y: the last block of a row "
                               "runs past n_cols; mask the store (and the loads) with offsets < n_cols")
        if torch.isnan(y).any():
            if _agrees(y[:, : n // 2], ref[:, : n // 2]) or worked:
                return wrong(name, f"right where it wrote, but on shape {(m, n)} some elements of y were never "
                                   "written (or read past a row's end): does the grid cover every column, and "
                                   "does the bias load use the column offsets?")
            return wrong(name, f"y has NaNs on shape {(m, n)}: some elements were never written, or the kernel "
                               "read past the end of x or bias")
        if _agrees(y, ref):
            worked.append((m, n))
            continue
        if _agrees(y, F.gelu(x + b, approximate="tanh")):
            return wrong(name, "that is the tanh approximation of GELU; the exercise's is the exact one "
                               "(nn.GELU(), approximate='none'): 0.5 * v * (1 + erf(v / sqrt(2)))")
        if _agrees(y, F.gelu(x)):
            return wrong(name, "the bias is missing: GELU of x + bias, bias broadcast along each row")
        if _agrees(y, x + b):
            return wrong(name, "that is x + bias; the GELU is missing")
        err = (y - ref).abs().max().item()
        return wrong(name, f"y differs from gelu(x + bias) by up to {err:.3g} on shape {(m, n)}")
    return right(name, f"matches eager gelu(x + bias) on fresh random inputs of shapes {', '.join(map(str, worked))}")


def fused_bytes(answer, candidate, capture) -> Feedback:
    """3.2: the bytes one fused kernel for `candidate` moves: each group input read once, each group
    output written once (the values passed between its ops stay on chip)."""
    name = f"3.2 bytes of {candidate.id} fused"
    g = capture.graph(candidate.graph)

    def nbytes(names):
        return sum(g.nodes[n].nbytes for n in names)

    reads, writes = nbytes(candidate.inputs), nbytes(candidate.outputs)
    ref = candidate.bytes_fused
    if is_unanswered(answer):
        return unanswered(name, "sum the bytes of the candidate's inputs (read once) and outputs (written once); "
                                "graph.nodes[name].nbytes gives a tensor's bytes")
    value = number(answer)
    if value is None:
        return wrong(name, "the answer should be one number of bytes")
    if close(value, ref, 0.001):
        return right(name, f"{fmt(ref)} bytes: {fmt(reads)} read, {fmt(writes)} written; op by op it was "
                           f"{fmt(candidate.bytes_unfused)} (both modeled)")
    if close(value, candidate.bytes_unfused, 0.001):
        return wrong(name, "that is what the ops move one kernel each; fused, the values passed between them "
                           "never leave the chip")
    if close(value, reads, 0.001):
        return wrong(name, "you counted the inputs; the kernel also writes its outputs, every one a later op reads "
                           "(the backward included)")
    if close(value, writes, 0.001):
        return wrong(name, "you counted the outputs; the kernel also reads its inputs")
    if close(value, ref / 4, 0.001):
        return wrong(name, "that counts elements; a float32 element is 4 bytes")
    last = candidate.nodes[-1]
    if close(value, reads + g.nodes[last].nbytes, 0.001) and len(candidate.outputs) > 1:
        return wrong(name, f"you counted one output; the kernel writes {len(candidate.outputs)} "
                           f"({', '.join(candidate.outputs)}): values the backward reads must be stored too")
    return wrong(name, f"{fmt(value)} bytes is not it; inputs {', '.join(candidate.inputs)}, outputs "
                       f"{', '.join(candidate.outputs)}")
