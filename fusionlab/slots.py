"""Stage 6, backend: the slots of a fused step, one per ATen graph it runs.

AOTAutograd (or a capture's shared trace, :mod:`fusionlab.shared_trace`) calls a
:class:`Slot` for its graph; the backend (:func:`fusionlab.backend.make_backend`) fills it
with the code of the plan's selection, and fills it again on a replan. Compiling outside
Dynamo needs a tracing context (:func:`tracing_for`) and, for a backward, the strides its
forward's code gives the values it saves (:func:`restrided`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx

from .captured import CapturedGraph
from .kernels.kernel import KernelStatus


class Slot:
    """One graph AOTAutograd compiled through the backend: what runs it now, and how it came to be.

    AOTAutograd (or a shared trace's graph) keeps the slot, a boxed callable; the backend's ``replan`` swaps what
    it runs, so a new plan needs no new trace of the step."""

    def __init__(self, kind: str, gm, example, ref: CapturedGraph):
        self.kind, self.gm, self.example, self.ref = kind, gm, example, ref
        self._boxed_call = True  # on the instance: wrappers (torch._dynamo.disable) copy its __dict__
        self.wanted: frozenset | None = None  # the selected candidates it was compiled with
        self.fn = None
        self.statuses: list[KernelStatus] = []
        self.fallbacks: list[str] = []
        self.loops: dict[str, list[str]] = {}
        self.compiled = None  # the executor's record of the graph's compile (CompiledGraph), if any
        self.out_strides: list | None = None  # the strides its code gives its outputs, as reported
        self.forward: Slot | None = None  # a backward's forward: its code lays out what the backward reads

    def __call__(self, args):
        return self.fn(args)


@contextlib.contextmanager
def tracing_for(example):
    """Dynamo's tracing context, or one for compiling a graph outside it (Inductor's FX graph cache
    needs one: the fake mode of AOTAutograd's example inputs, and its shape env). Yields it (or
    None), with a list for the strides the compile reports for the graph's outputs."""
    from torch._guards import TracingContext, detect_fake_mode, tracing

    ctx = TracingContext.try_get()
    mode = detect_fake_mode(example) if ctx is None else None
    if mode is None:
        yield ctx
        return
    ctx = TracingContext(mode)
    ctx.output_strides = []
    with tracing(ctx):
        yield ctx


def restrided(bw: Slot, fw: Slot) -> list:
    """`bw`'s example inputs with the strides `fw`'s code gives the values it saves for it.

    Inductor may lay out a saved activation otherwise than eager (a convolution's, channels
    last). AOTAutograd restrides the backward's inputs for the graphs it hands over; a graph
    compiled again outside it (a replan, a shared trace) gets the same here. The backward's
    placeholders are named after the forward's outputs."""
    from torch._guards import detect_fake_mode

    if not fw.out_strides:
        return bw.example
    where = {a.name: i for i, a in enumerate(fw.gm.graph.output_node().args[0]) if isinstance(a, torch.fx.Node)}
    phs = [n.name for n in bw.gm.graph.nodes if n.op == "placeholder"]
    new = list(bw.example)
    for k, (name, val) in enumerate(zip(phs, bw.example)):
        i = where.get(name)
        try:
            want = tuple(int(x) for x in fw.out_strides[i]) if i is not None and i < len(fw.out_strides) else None
        except (TypeError, ValueError):  # a symbolic stride: left as AOTAutograd gave it
            want = None
        if isinstance(val, torch.Tensor) and want is not None and tuple(val.stride()) != want:
            with detect_fake_mode(bw.example) or contextlib.nullcontext():
                new[k] = val.as_strided(val.size(), want)
    return new if any(a is not b for a, b in zip(new, bw.example)) else bw.example
