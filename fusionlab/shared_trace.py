"""One Dynamo and AOTAutograd trace per capture, run by every fused step of it.

``capture`` traces the training step once (Dynamo, then AOTAutograd) to find its graphs.
Tracing again for each ``plan.compile`` cost as much again (2-4 s on a small transformer),
so the capture keeps its trace: a :class:`SharedTrace`, whose ATen graphs are each a
:class:`SharedGraph`, the callable AOTAutograd runs for that graph.

- On its own a SharedGraph runs its graph as traced: the eager ATen ops.
- :meth:`SharedTrace.run` runs the trace for one fused step, on that step's own model (with
  nn modules inlined, Dynamo passes the parameters to the graphs as inputs, so a model of the
  same structure passes its guards). Each SharedGraph runs the code the step's backend
  compiled for it (``backend.attach``: the forward before the step runs, the backward at its
  first call, as AOTAutograd compiles a backward).
- A backward runs the code of the step whose forward produced the tensors it was handed: each
  forward remembers where one activation it saves lies (the last few forwards), and the
  backward finds its step by that activation's data pointer (else the latest forward's).

When Dynamo's guards reject the trace (another model class, another input shape or dtype, a
dropout in eval mode), :meth:`SharedTrace.run` returns :data:`MISS` before anything ran or was
compiled (the guards are checked first, and the run is under
``torch.compiler.set_stance("fail_on_recompile")`` besides), and the step traces for itself.
Only a trace without graph breaks is kept: a guard failing at a resumed frame would come after
part of the step ran.
"""

from __future__ import annotations

import collections
import contextvars
import weakref

import torch

from .captured import CapturedGraph

MISS = object()  # SharedTrace.run: the trace does not fit this step; nothing ran
_RUNNING = contextvars.ContextVar("fusionlab_fused_step", default=None)  # the backend of the step running
_REMEMBERED = 4  # forwards whose outputs a backward can be matched to


def _saved_pair(fw: torch.fx.GraphModule, bw: torch.fx.GraphModule) -> tuple[int, int] | None:
    """(its place among the forward's outputs, among the backward's inputs) of one value the forward
    computes and saves for the backward (AOTAutograd names the backward's inputs after them)."""
    reads = {n.name: i for i, n in enumerate(n for n in bw.graph.nodes if n.op == "placeholder")}
    for k, a in enumerate(fw.graph.output_node().args[0]):
        if isinstance(a, torch.fx.Node) and a.op != "placeholder" and a.name in reads:
            return k, reads[a.name]
    return None


def _pointer(values, at: int | None) -> int | None:
    v = values[at] if at is not None and at < len(values) else None
    return v.data_ptr() if isinstance(v, torch.Tensor) else None


class SharedGraph:
    """One ATen graph of a capture's trace: the boxed callable AOTAutograd runs for it."""

    def __init__(self, ref: CapturedGraph, example, forward: SharedGraph | None = None):
        self.ref, self.example = ref, example  # the captured graph; AOTAutograd's (fake) example inputs
        self.forward = forward  # a backward's forward graph: its outputs say whose backward this is
        self._boxed_call = True
        self._recent: collections.deque = collections.deque(maxlen=_REMEMBERED)  # (data pointer, backend ref)
        self._saved_at = self._read_at = None  # a forward's output, its backward's input: the same tensor
        if forward is not None:
            forward._saved_at, self._read_at = _saved_pair(forward.gm, self.gm) or (None, None)

    @property
    def gm(self) -> torch.fx.GraphModule:
        return self.ref.gm

    def _backend(self, args):
        if self.forward is None:
            return _RUNNING.get()
        found = _pointer(args, self._read_at)
        recent = list(self.forward._recent)
        for pointer, ref in reversed(recent):
            if found is not None and pointer == found:
                return ref()
        return recent[-1][1]() if recent else None

    def __call__(self, args):
        backend = self._backend(args)
        if backend is not None and backend.attached(self) is None:  # a backward, at its first call
            backend.attach([self])
        fn = backend.attached(self) if backend is not None else None
        if fn is None:  # no fused step: the graph as traced
            values = list(args)
            args.clear()
            return self.gm(*values)
        if self.ref.kind != "forward":
            return fn(args)
        out = fn(args)
        self._recent.append((_pointer(out, self._saved_at), weakref.ref(backend)))
        return out


class SharedTrace:
    """A capture's compiled step (``fn(step, *inputs)``, compiled by Dynamo) and its graphs."""

    def __init__(self, fn, code, graphs: list[SharedGraph]):
        self.fn, self.code, self.graphs = fn, code, graphs

    def fits(self, step, inputs) -> bool:
        """Dynamo's guards accept `step` and `inputs` for the compiled code it still holds
        (``torch._dynamo.reset()`` drops it). The frame's locals are ``self`` and ``inputs``
        (``TrainStep.forward(self, *inputs)``)."""
        try:
            from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

            names = self.code.co_varnames
            frame = {names[0]: step, names[1]: tuple(inputs)}
            return any(e.guard_manager.check(frame) for e in _debug_get_cache_entry_list(self.code))
        except Exception:  # noqa: BLE001 - private API; without it every step traces for itself
            return False

    def run(self, step, backend, inputs, first: bool = True):
        """``step(*inputs)`` through this trace with `backend`'s code, or MISS (nothing ran, and
        `backend` compiled nothing for it). A `first` run checks Dynamo's guards before `backend`
        compiles anything; later runs leave that to Dynamo (about 0.2 ms a step saved)."""
        if first and not self.fits(step, inputs):
            return MISS
        # forwards: attached on the first run, and kept (a later run Dynamo rejects detaches
        # nothing: the graphs earlier runs ran stay in the report); backwards: at their first call
        new = [g for g in self.graphs if g.forward is None and backend.attached(g) is None] if first else []
        backend.attach(new)
        token = _RUNNING.set(backend)
        try:
            with torch.compiler.set_stance("fail_on_recompile"):  # if Dynamo disagrees: no trace of its own
                return self.fn(step, *inputs)
        except RuntimeError as e:
            if "fail_on_recompile" in str(e):  # rejected before anything ran
                if new:  # what this run compiled for nothing (graphs run before stay in the report)
                    backend.detach(new)
                return MISS
            raise
        finally:
            _RUNNING.reset(token)


class TracedStep:
    """``step(*inputs)`` with `backend`'s code: through `capture`'s Dynamo and AOTAutograd trace
    while Dynamo's guards accept it (above), else, from the first call
    they reject on, through a trace of its own (``torch.compile``, which recompiles as usual)."""

    def __init__(self, step, backend, capture):
        self.step, self.backend = step, backend
        self.trace = getattr(capture, "trace", None)
        self.compiled = None
        self.ran = False  # through the trace, once

    @property
    def shares_trace(self) -> bool:
        return self.trace is not None

    def __call__(self, *inputs):
        if self.trace is not None:
            out = self.trace.run(self.step, self.backend, inputs, first=not self.ran)
            if out is not MISS:
                self.ran = True
                return out
            self.trace = None
        if self.compiled is None:
            from .capture import fresh_entry  # (capture imports this module)

            self.compiled = torch.compile(fresh_entry(self.step), backend=self.backend, dynamic=False)
        return self.compiled(*inputs)
