"""The one place that reads Inductor's internals for its fusion decisions (see the package docstring).

:func:`compile_graph` compiles one captured graph with ``compile_fx_inner`` under Inductor's
default configuration (no fusion policy, no pattern or fusion switches changed; only its FX
graph cache is off, so lowering and scheduling run and can be watched) and returns plain
data: every loop nest (CPU) or kernel Inductor generated with the ops it computes and its
code, every library call, the scheduler's "cannot fuse" decisions and Inductor's own kernel
counts. What it watches, all restored on exit:

* ``_post_fusion_custom_pass`` (a config hook): the scheduler's nodes after fusion, with
  their IR origins (the FX nodes each computes);
* the fusion log artifact (``TORCH_LOGS=fusion``): each ``WhyNoFuse`` record, its reason
  format string being the category Inductor uses ("no shared data", ...);
* on CPU, ``KernelGroup.finalize_kernel`` (the C++ of each loop nest), ``CppScheduling.
  define_kernel`` (the C++ function that holds it) and the C++ backend's ``can_fuse_vertical``/
  ``can_fuse_horizontal``, which refuse without a log line: a refusal there is recorded with
  the loop ranges of both sides;
* ``torch._inductor.metrics.generated_kernel_count`` before and after.

Every name used is checked by :func:`require_inductor`; a torch that moved one gets a clear
error naming it, not an AttributeError from inside a compile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch
import torch.fx

from ..check import random_tensor
from ..fxgraph import copy_graph

TESTED_TORCH = "2.13"  # the torch whose Inductor this module was written against


class InductorUnavailable(RuntimeError):
    """This torch's Inductor lacks an internal that fusionlab.inductor reads."""


def require_inductor():
    """The Inductor internals used here, as a namespace; InductorUnavailable if one is missing."""
    from types import SimpleNamespace

    try:
        from torch._inductor import config, ir, metrics
        from torch._inductor import scheduler as sched
        from torch._inductor.async_compile import AsyncCompile
        from torch._inductor.codegen.cpp import (
            CppScheduling,
            KernelGroup,
            OuterLoopFusedSchedulerNode,
        )
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.virtualized import V

        needed = [(sched, "WhyNoFuse"), (sched, "fusion_log"), (sched, "NopKernelSchedulerNode"),
                  (metrics, "generated_kernel_count"),
                  (ir, "MultiOutput"), (AsyncCompile, "cpp_pybinding"), (AsyncCompile, "cpp"),
                  (KernelGroup, "finalize_kernel"), (CppScheduling, "define_kernel"),
                  (CppScheduling, "can_fuse_vertical"), (CppScheduling, "can_fuse_horizontal")]
        for owner, name in needed:
            if not hasattr(owner, name):
                raise ImportError(f"{getattr(owner, '__name__', owner)}.{name}")
        if not hasattr(config, "_post_fusion_custom_pass"):
            raise ImportError("torch._inductor.config._post_fusion_custom_pass")
    except ImportError as e:
        raise InductorUnavailable(
            f"fusionlab.inductor reads Inductor internals that torch {torch.__version__} does not have "
            f"({e}); it was written against torch {TESTED_TORCH}") from None
    return SimpleNamespace(config=config, ir=ir, metrics=metrics, sched=sched, CppScheduling=CppScheduling,
                           KernelGroup=KernelGroup, OuterLoop=OuterLoopFusedSchedulerNode,
                           compile_fx_inner=compile_fx_inner, V=V, AsyncCompile=AsyncCompile)


@dataclass
class RawKernel:
    """One loop nest / kernel as Inductor generated it (scheduler names, not yet FX nodes)."""

    snodes: tuple[str, ...]  # Inductor's scheduler node names ("op3", ...)
    kind: str  # "pointwise" | "reduction" | "template"
    code: str = ""  # the C++ loop nest (CPU) or the kernel's source
    function: str = ""  # the generated function that holds it (cpp_fused_..._3)
    outer_loop: bool = False  # a CPU outer-loop fusion: several loop nests inside one shared outer loop


@dataclass
class RawCompile:
    """What one Inductor compile of one graph did, in Inductor's own names."""

    kernels: list[RawKernel] = field(default_factory=list)
    library: list[tuple[str, str]] = field(default_factory=list)  # (scheduler name, call: extern_kernels.mm)
    no_kernel: list[str] = field(default_factory=list)  # nop scheduler nodes and MultiOutput picks
    origins: dict[str, list[str]] = field(default_factory=dict)  # scheduler name -> FX node names it computes
    stored: dict[str, str] = field(default_factory=dict)  # scheduler name -> the FX node its buffer holds
    writes: dict[str, list[str]] = field(default_factory=dict)  # scheduler name -> buffers it writes
    reads: dict[str, list[str]] = field(default_factory=dict)  # scheduler name -> buffers it reads
    refusals: list[tuple[str, str, str, str]] = field(default_factory=list)  # (name1, name2, category, text)
    metrics_kernels: int = 0  # torch._inductor.metrics.generated_kernel_count for this compile
    outer_loop_trials: int = 0  # CPU: loop nests Inductor generated for outer-loop fusions it then dropped
    source: str = ""  # the generated wrapper (and kernels)
    device: str = "cpu"
    seconds: float = 0.0


def _example_inputs(gm: torch.fx.GraphModule):
    """Fake inputs in a fresh fake mode, with the captured shapes, strides and dtypes; the graph's
    metas re-derived under it (as the executors do)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    gen = torch.Generator(device="cpu").manual_seed(0)
    reals = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor):
            reals.append(random_tensor(tuple(v.shape), tuple(v.stride()), v.dtype, v.device, gen))
        else:
            reals.append(v)
    mode = FakeTensorMode(shape_env=ShapeEnv())
    fake = [mode.from_tensor(x, static_shapes=True) if isinstance(x, torch.Tensor) else x for x in reals]
    FakeTensorProp(gm, mode).propagate(*fake)
    return mode, fake


def _kind(snode) -> str:
    if snode.is_template():
        return "template"
    return "reduction" if snode.is_reduction() else "pointwise"


def _ranges(snode) -> str:
    try:
        _, (vars_, reduce_) = snode.group
        return f"{[str(v) for v in vars_]}" + (f" reducing {[str(r) for r in reduce_]}" if reduce_ else "")
    except (AttributeError, TypeError, ValueError):
        return "?"


def compile_graph(gm: torch.fx.GraphModule, kind: str, fallback_random: bool = False) -> RawCompile:
    """Compile one captured graph (a copy) as torch.compile's Inductor would, and watch it.

    ``fallback_random``: random ops as ATen calls (Inductor's config of that name); needed for a
    captured graph with random ops, whose rewrite (Inductor's joint-graph ``replace_random``
    pass) runs before the capture point in torch.compile."""
    from unittest import mock

    ind = require_inductor()
    gm = torch.fx.GraphModule(gm, copy_graph(gm.graph))  # Inductor's passes change the graph they get
    mode, fake = _example_inputs(gm)
    raw = RawCompile()
    finals: list = []
    finalize, define = ind.KernelGroup.finalize_kernel, ind.CppScheduling.define_kernel
    cpp_vertical, cpp_horizontal = ind.CppScheduling.can_fuse_vertical, ind.CppScheduling.can_fuse_horizontal
    nests: list[tuple[list[str], str]] = []
    function_of: dict[str, str] = {}

    def on_finalize(self, kernel, nodes):
        before = len(self.loops_code.getvalue())
        finalize(self, kernel, nodes)
        nests.append(([n.get_name() for n in nodes], self.loops_code.getvalue()[before:]))

    def on_define(self, src_code, nodes, kernel_args=None):
        name = define(self, src_code, nodes, kernel_args)
        for sn in nodes:
            function_of[sn.get_name()] = name
        return name

    def watch(original, how):
        def can_fuse(self, node1, node2):
            ok = original(self, node1, node2)
            if not ok:
                r1, r2 = _ranges(node1), _ranges(node2)
                category = "loop ranges differ" if r1 != r2 else "C++ backend cannot share one loop nest"
                raw.refusals.append((node1.get_name(), node2.get_name(), category,
                                     f"{category} ({how}: {r1} vs {r2})"))
            return ok
        return can_fuse

    class Log(logging.Handler):
        def emit(self, record):
            why = record.msg
            if isinstance(why, ind.sched.WhyNoFuse):
                with contextlib.suppress(Exception):
                    raw.refusals.append((why.name1, why.name2, str(why.reason), str(why).split(": ", 1)[-1]))

    def not_built(self, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("fusionlab.inductor lists Inductor's code for a graph; it does not build or run it")
        return call

    def post_fusion(nodes):
        finals[:] = list(nodes)
        return nodes

    log, handler = ind.sched.fusion_log, Log(logging.DEBUG)
    saved = (log.level, log.propagate, log.disabled)
    start_count = ind.metrics.generated_kernel_count
    start = time.perf_counter()
    try:
        user_sees = log.isEnabledFor(logging.DEBUG)  # TORCH_LOGS=fusion: their lines still go out
        log.setLevel(logging.DEBUG)
        log.propagate, log.disabled = user_sees and saved[1], False
        log.addHandler(handler)
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(ind.KernelGroup, "finalize_kernel", on_finalize))
            stack.enter_context(mock.patch.object(ind.CppScheduling, "define_kernel", on_define))
            # the C++ is generated as torch.compile would; it is read, never run, so not built
            stack.enter_context(mock.patch.object(ind.AsyncCompile, "cpp_pybinding", not_built))
            stack.enter_context(mock.patch.object(ind.AsyncCompile, "cpp", not_built))
            stack.enter_context(mock.patch.object(ind.CppScheduling, "can_fuse_vertical",
                                                  watch(cpp_vertical, "vertical")))
            stack.enter_context(mock.patch.object(ind.CppScheduling, "can_fuse_horizontal",
                                                  watch(cpp_horizontal, "horizontal")))
            stack.enter_context(ind.config.patch(fx_graph_cache=False, fx_graph_remote_cache=False,
                                                 _post_fusion_custom_pass=post_fusion,
                                                 **({"fallback_random": True} if fallback_random else {})))
            stack.enter_context(torch._guards.tracing(torch._guards.TracingContext(mode)))
            compiled = ind.compile_fx_inner(gm, fake, is_backward=kind == "backward",
                                            is_inference=kind == "inference")
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate, log.disabled = saved[1], saved[2]
    raw.seconds = time.perf_counter() - start
    raw.metrics_kernels = ind.metrics.generated_kernel_count - start_count
    raw.source = getattr(compiled, "source_code", "") or ""
    raw.device = next((str(a.device.type) for a in fake if isinstance(a, torch.Tensor)), "cpu")
    _read_schedule(ind, finals, nests, function_of, raw)
    if raw.device == "cpu":
        # the C++ backend first generates each outer-loop fusion's nests one by one as a trial
        # (counted by the metric, then merged into one nest or, failing that, generated again)
        outer = [sn for sn in finals if isinstance(sn, ind.OuterLoop)]
        raw.outer_loop_trials = sum(len(sn.get_outer_nodes()) for sn in outer)
    return raw


def _read_schedule(ind, finals, nests, function_of, raw: RawCompile) -> None:
    kind_of: dict[str, str] = {}
    for snode in finals:
        for sn in snode.get_nodes():
            name = sn.get_name()
            node = getattr(sn, "node", None)
            raw.origins[name] = sorted({o.name for o in node.get_origins()}) if node is not None else []
            origin = getattr(node, "origin_node", None)
            with contextlib.suppress(Exception):
                raw.writes[name] = sorted(sn.get_buffer_names())
                raw.reads[name] = sorted({d.name for d in sn.read_writes.reads})
            if origin is not None:
                raw.stored[name] = origin.name
            kind_of[name] = _kind(sn)
        if isinstance(snode, ind.sched.NopKernelSchedulerNode):
            raw.no_kernel.append(snode.get_name())
        elif snode.is_extern():
            node = snode.node
            if isinstance(node, ind.ir.MultiOutput):
                raw.no_kernel.append(snode.get_name())
            else:
                call = (getattr(node, "python_kernel_name", None) or getattr(node, "op_overload", None)
                        or type(node).__name__)
                raw.library.append((snode.get_name(), str(call)))
    outer_of = {}
    for snode in finals:
        if isinstance(snode, ind.OuterLoop):
            for sn in snode.get_nodes():
                outer_of[sn.get_name()] = snode.get_name()
    if nests:  # CPU: one kernel per loop nest Inductor wrote
        for names, code in nests:
            kinds = {kind_of.get(n, "pointwise") for n in names}
            kind = "template" if "template" in kinds else "reduction" if "reduction" in kinds else "pointwise"
            fn = next((function_of[n] for n in names if n in function_of), "")
            outer = len({outer_of.get(n) for n in names} - {None}) == 1 and len(names) > 1 and all(
                n in outer_of for n in names)
            raw.kernels.append(RawKernel(tuple(names), kind, code.strip("\n"), fn, outer))
        return
    for snode in finals:  # another backend: one kernel per fused scheduler node
        if snode.is_extern() or isinstance(snode, ind.sched.NopKernelSchedulerNode):
            continue
        names = tuple(sn.get_name() for sn in snode.get_nodes())
        raw.kernels.append(RawKernel(names, _kind(snode)))
