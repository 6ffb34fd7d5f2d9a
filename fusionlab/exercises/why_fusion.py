"""Checkers for notebook 1, "Why fusion": bytes counted by hand, a roofline time, a fair speed-up.

Each checker works its reference answer out from what the notebook hands it (a capture, a
byte count, measured step times), never from a stored number, and names the usual slips
(reads only, elements for bytes, seconds for microseconds, a mean over compile steps).
"""

from __future__ import annotations

import statistics

from ..gpus import get_gpu
from ..nodecost import node_reads_writes
from ..ops import launches_kernel
from .feedback import Feedback, close, fmt, is_unanswered, number, right, unanswered, wrong


def _only_graph(capture):
    graphs = capture.graphs
    if len(graphs) != 1:
        raise ValueError(f"this exercise needs a forward-only capture (train=False) with one graph; "
                         f"this one has {[g.tag for g in graphs]}")
    return graphs[0]


def op_by_op_bytes(answer, capture) -> Feedback:
    """1.1: bytes moved when every op of `capture`'s graph runs as its own kernel (reads + writes)."""
    name = "1.1 bytes op by op"
    g = _only_graph(capture)
    reads = writes = 0
    itemsize = 4
    for node in g.gm.graph.nodes:
        if node.op == "call_function" and launches_kernel(g.nodes[node.name].kind):
            r, w = node_reads_writes(node)
            reads, writes = reads + r, writes + w
            itemsize = g.nodes[node.name].dtype.itemsize if g.nodes[node.name].dtype else itemsize
    total = reads + writes
    if is_unanswered(answer):
        return unanswered(name, "for every op, add the bytes of each tensor it reads and of the tensor it writes")
    value = number(answer)
    if value is None:
        return wrong(name, f"the answer should be one number of bytes, not {type(answer).__name__}")
    if close(value, total):
        return right(name, f"{fmt(total)} bytes: {fmt(reads)} read and {fmt(writes)} written, op by op")
    if close(value, total / itemsize):
        return wrong(name, f"{fmt(value)} is the number of elements; each float32 element is {itemsize} bytes")
    if close(value, reads):
        return wrong(name, "you counted what the ops read; each op also writes its result back to memory")
    if close(value, writes):
        return wrong(name, "you counted what the ops write; each op also reads its inputs from memory")
    fused = _fused_bytes(g)
    if fused is not None and close(value, fused):
        return wrong(name, "that is what one fused kernel moves (read x once, write y once); the question "
                           "is what the ops move when each runs as its own kernel")
    return wrong(name, f"{fmt(value)} bytes is not it: it is {_off(value, total)}; list the ops of the graph "
                       "and, for each, the tensors it reads and the one it writes")


def _fused_bytes(g) -> int | None:
    inputs = [n for n in g.gm.graph.nodes if n.op == "placeholder"]
    out = next(n for n in g.gm.graph.nodes if n.op == "output")
    outs = [a for a in out.all_input_nodes]
    vals = [n.meta.get("val") for n in inputs + outs]
    if any(v is None or not hasattr(v, "nbytes") for v in vals):
        return None
    return sum(v.nbytes for v in vals)


def _off(value: float, ref: float) -> str:
    if ref == 0:
        return "off"
    r = value / ref
    return f"{r:.2f}x the right count" if r > 0 else "negative"


def roofline_us(answer, nbytes: int, flops: int, gpu: str = "h100") -> Feedback:
    """1.2: the roofline time, in microseconds, of one kernel moving `nbytes` and doing `flops` on `gpu`
    (fp32 on CUDA cores, no launch overhead): max(bytes / bandwidth, flops / peak)."""
    spec = get_gpu(gpu)
    name = f"1.2 roofline time on {spec.name}"
    mem_us = nbytes / spec.bandwidth * 1e6
    comp_us = flops / spec.peak("fp32") * 1e6
    ref = max(mem_us, comp_us)
    if is_unanswered(answer):
        return unanswered(name, f"time = max(bytes / bandwidth, FLOPs / peak); {spec.name}: "
                                f"{spec.bandwidth_gbs:,.0f} GB/s, {spec.peak_tflops['fp32']} TFLOP/s fp32")
    value = number(answer)
    if value is None:
        return wrong(name, "the answer should be one number: microseconds")
    bound = "memory" if mem_us >= comp_us else "compute"
    if close(value, ref):
        return right(name, f"{ref:.3g} us (modeled, {spec.name} spec); it is {bound}-bound: moving the bytes takes "
                           f"{mem_us:.3g} us, the arithmetic {comp_us:.3g} us")
    if close(value, ref * 1e-6):
        return wrong(name, "that is in seconds; the question asks for microseconds (x 1e6)")
    if close(value, ref * 1e-3):
        return wrong(name, "that is in milliseconds; the question asks for microseconds (x 1e3)")
    if close(value, min(mem_us, comp_us)) and not close(mem_us, comp_us):
        return wrong(name, f"that is the {'compute' if bound == 'memory' else 'memory'} time alone; the kernel cannot "
                           "finish before both the bytes and the arithmetic are done: take the larger of the two")
    if close(value, mem_us * 1e9 / 2**30):
        return wrong(name, "a data sheet's GB/s means 10^9 bytes per second, not 2^30")
    if close(value, ref + spec.launch_us):
        return wrong(name, "that includes the launch overhead; the roofline time alone is asked for")
    return wrong(name, f"{fmt(value)} us is {_off(value, ref)}; divide the bytes by the bandwidth in bytes per "
                       "second, the FLOPs by the peak in FLOP/s, and take the larger")


def fair_speedup(answer, eager_s, compiled_s, warmup: int) -> Feedback:
    """1.3: the speed-up of `compiled` over `eager` from interleaved step times (seconds): the ratio of
    the medians of the steps after the first `warmup` ones (the compile and warm-up steps)."""
    name = "1.3 a fair speed-up"
    eager, comp = list(map(float, eager_s)), list(map(float, compiled_s))
    if len(eager) <= warmup or len(comp) <= warmup:
        raise ValueError(f"need more than warmup={warmup} steps of each variant")
    ref = statistics.median(eager[warmup:]) / statistics.median(comp[warmup:])
    if is_unanswered(answer):
        return unanswered(name, "leave out the warm-up steps, take the median of each, divide eager by compiled")
    value = number(answer)
    if value is None:
        return wrong(name, "the answer should be one number: how many times faster compiled is than eager")
    if close(value, ref, 0.005):
        return right(name, f"{ref:.3f}x (a ratio of medians of measured steps; whether it is more than noise "
                           "needs the spread too, see notebook 4)")
    if close(value, 1 / ref, 0.005):
        return wrong(name, "that is upside down: speed-up = eager time / compiled time (> 1 means compiled is faster)")
    slips = [
        (statistics.mean(eager) / statistics.mean(comp), "that is a ratio of means over every step, the first "
         "(compiling) step included: one step of seconds swamps hundreds of milliseconds"),
        (statistics.median(eager) / statistics.median(comp), "the warm-up steps are still in: leave out the first "
         f"{warmup} steps of each variant"),
        (statistics.mean(eager[warmup:]) / statistics.mean(comp[warmup:]), "that is a ratio of means: one slow step "
         "(the machine busy elsewhere) moves a mean; take medians"),
        (min(eager) / min(comp), "that is a ratio of the fastest steps: each one lucky moment, not the typical step"),
        (eager[0] / comp[0], "that compares the first steps: the compiled one includes compiling"),
    ]
    for slip, why in slips:
        if close(value, slip, 0.005) and not close(slip, ref, 0.005):
            return wrong(name, why)
    return wrong(name, f"{value:.3g}x is not it; median of eager[{warmup}:] divided by median of compiled[{warmup}:]")
