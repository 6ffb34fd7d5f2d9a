"""The whole-graph executor: one Inductor compile per graph, fusion allowed only inside groups
(see the package docstring)."""

from __future__ import annotations

import dataclasses
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.fx

from ..candidates import Candidate
from ..fxgraph import copy_graph
from . import pieces
from .groups import InductorGroupExecutor, count_generated_kernels
from .policy import GRAPHS, FusionPolicyError, KernelOrigin, compile_with_policy, policy_for

__all__ = ["GRAPHS", "CompiledGraph", "FusionPolicyError", "InductorGraphExecutor", "KernelOrigin"]


@dataclass
class Part:
    """One piece of a graph's compile (:mod:`.pieces`)."""

    ops: int  # ops that compute in it
    cached: bool  # Inductor's FX graph cache served it
    key: str  # Inductor's key for it ("" when its cache was off)
    kernels: int  # C++ function and library calls per run


@dataclass
class CompiledGraph:
    """One forward or backward graph compiled whole by :class:`InductorGraphExecutor`."""

    kind: str
    groups: tuple[str, ...]  # the candidate ids fused in it
    kernels: int  # kernel calls per run (fused loop nests + library calls: mm, bmm, ...)
    loops: list[KernelOrigin]  # every loop nest Inductor generated, with its origin
    seconds: float
    source: str
    cached: bool = False  # Inductor's FX graph cache served the code; the listing came from fusionlab's
    cache_key: str = ""  # Inductor's FX graph cache key ("" when its cache was off); pieces: joined by "+"
    parts: list[Part] = field(default_factory=list)  # the pieces it was compiled as (one: the graph whole)

    def functions(self) -> dict[str, list[KernelOrigin]]:
        """C++ function name (as torch.profiler records it) -> the loop nests it runs."""
        out: dict[str, list[KernelOrigin]] = {}
        for k in self.loops:
            if k.function:
                out.setdefault(k.function, []).append(k)
        return out




class InductorGraphExecutor(InductorGroupExecutor):
    """Each graph compiled *whole* by Inductor, which may fuse only inside the selected groups.

    ``InductorGroupExecutor`` calls every compiled group from the FX graph's Python code,
    so each view, getitem and unfused op of the step pays Python dispatch (hundreds of
    microseconds a step on a small model). This executor first builds and checks every
    group alone exactly as ``InductorGroupExecutor`` does (a group that fails its check is
    not fused), then compiles the whole graph in one Inductor call under a fusion policy:

    * at lowering, the value of every op is materialized in a buffer unless all ops that
      read it are in the same group (Inductor cannot inline it into another group's loop);
    * the scheduler may merge two loop nests only when every op they compute belongs to
      one group (``InductorChoices.can_fuse``); inside a group every legal merge is taken.

    Views are free (index arithmetic), matmuls call the same BLAS library as eager, and the
    wrapper is generated Python without per-op dispatch. Every other op outside the groups
    is a loop nest of its own, Inductor's code for that one op (what torch.compile would run
    for it, unfused); with ``eager_outside_groups=True`` it is a call of the ATen op itself,
    exactly as eager computes it, at eager's per-call cost (measured on gpt2-tiny, 1 CPU
    thread: +14 % step time vs torch.compile, against +2 % by default). The ops of a
    selected group that failed its check are always ATen calls, since Inductor's version of
    them is what disagreed with eager. Random ops draw from torch's generator as in eager.

    After compiling, every generated loop nest is listed with the ops it computes and its
    C++ function (``graphs[i].loops``); one that mixes two groups, or a group with an op
    outside it, raises :class:`FusionPolicyError` and the backend falls back to the
    per-group executor's graph for that graph.
    """

    name = "inductor-cpp (groups only)"
    defer_compile = True  # a group is called only where its graph falls back

    def __init__(self, *, eager_outside_groups: bool = False, compile_unselected: bool = True, in_pieces: bool = True,
                 **kw):
        super().__init__(**kw)
        self.eager_outside_groups = eager_outside_groups
        # graphs with no selected group are compiled the same way (nothing fused), so a plan
        # and the empty plan differ only by the fusion decisions
        self.compile_unselected = compile_unselected
        self.graphs: list[CompiledGraph] = []
        self.in_pieces = in_pieces  # large graphs compiled as a few pieces (see compile_graph)
        # graph as handed over -> {what decides a piece's code: (compiled, loops, part, source, strides)}
        self._pieces_done: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<InductorGraphExecutor: {len(self.graphs)} graphs, {len(self.groups)} groups compiled>"

    def describe(self) -> str:
        loops = [k for g in self.graphs for k in g.loops]
        inside = sum(1 for k in loops if k.group is not None)
        text = ("each selected group is compiled by Inductor (C++) and checked against eager (all of a "
                "graph's groups in one compile); then "
                "each graph is compiled whole by Inductor with fusion allowed only inside the groups; "
                + ("every other op is an ATen call, as in eager" if self.eager_outside_groups else
                   "every other op runs on its own: a loop nest Inductor generates for it, or a library call"))
        if loops:
            text += (f": {len(loops)} loop nests ({inside} for groups, {len(loops) - inside} single ops), "
                     f"{sum(g.kernels for g in self.graphs)} C++ function or library calls per step "
                     "(a C++ function holds one group's loop nests, or consecutive ops outside the groups; each nest still reads and "
                     "writes memory)")
        return text

    def compile_graph(self, kind: str, gm: torch.fx.GraphModule, example_inputs, chosen: list[Candidate],
                      refused: list[Candidate] = (), candidates: list[Candidate] | None = None):
        """Compile `gm` whole (AOTAutograd's fake example inputs); returns a boxed callable.

        `chosen`: the groups to fuse; `refused`: selected groups whose check failed: their
        ops run as ATen calls (Inductor's version of them is what disagreed with eager).
        `candidates`: every candidate of the graph, selected or not; given, a large graph is
        compiled as a few pieces cut where no candidate spans (:mod:`.pieces`), so a toggle
        lowers only the piece holding the group it changed.
        """
        done = self._pieces_done.setdefault(gm, {})
        # a copy: Inductor's passes change the graph they compile, and the backend's fallback
        # (calling the separately compiled groups) needs `gm` as it came
        gm = torch.fx.GraphModule(gm, copy_graph(gm.graph))
        group_of = {n: c.id for c in chosen for n in c.nodes}
        as_eager = {n for c in refused for n in c.nodes}
        cuts = [[n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]]
        if candidates is not None and self.in_pieces:
            from ..ops import KERNEL_KINDS, kind_of

            compute = {n.name for n in gm.graph.nodes if kind_of(n) in KERNEL_KINDS}
            cuts = pieces.cut(gm, [c.nodes for c in candidates], compute)
        start = time.perf_counter()
        parts = None
        if len(cuts) > 1:
            try:
                compiled, loops, parts, source = self._compile_pieces(gm, example_inputs, cuts, group_of, as_eager,
                                                                      done)
            except PieceStrideError:  # never seen: compiled whole, as a small graph is
                parts = None
        if parts is None:
            policy = policy_for(gm, group_of, as_eager=as_eager, eager_outside_groups=self.eager_outside_groups,
                                kernel_profile=self.kernel_profile)
            compiled, loops, part, source = _compile_part(gm, example_inputs, policy)
            parts = [part]
        seconds = time.perf_counter() - start
        self.graphs.append(CompiledGraph(kind, tuple(c.id for c in chosen), sum(p.kernels for p in parts),
                                         loops, seconds, source, all(p.cached for p in parts),
                                         "+".join(p.key for p in parts) if all(p.key for p in parts) else "",
                                         parts))
        return compiled

    def _compile_pieces(self, gm, example_inputs, cuts, group_of, as_eager, done: dict):
        """Each piece compiled under its part of the policy; (one callable, loops, parts, source).

        `done`: the pieces of this graph compiled before in this process, by what decides their
        code; one found there is taken as it is (after a toggle, every piece but the toggled
        group's), without even the FX graph cache's lookup (hashing a piece's graph: about 60 ms)."""
        from torch._inductor import config as iconfig

        parts_gm = pieces.split(gm, cuts)
        given = {n.name: n.meta.get("val") for n in gm.graph.nodes}
        given.update(zip((n.name for n in gm.graph.nodes if n.op == "placeholder"), example_inputs))
        ctx = torch._guards.TracingContext.try_get()
        reported = ctx.output_strides if ctx is not None else None  # AOTAutograd's list, filled below
        strides: dict[str, object] = {}
        fns, loops, parts, sources = [], [], [], []
        try:
            for p in parts_gm:
                if reported is not None:
                    ctx.output_strides = []
                mine = set(p.nodes)
                groups = {n: g for n, g in group_of.items() if n in mine}
                examples = [given[x] for x in p.inputs]
                key = (tuple(p.nodes), tuple(sorted(groups.items())), tuple(sorted(as_eager & mine)),
                       self.eager_outside_groups, self.kernel_profile, _metas(examples), iconfig.get_hash(),
                       torch.get_num_threads())
                if key in done:
                    compiled, piece_loops, part, source, out_strides = done[key]
                    part = dataclasses.replace(part, cached=True)
                else:
                    policy = policy_for(p.gm, groups, as_eager=as_eager & mine,
                                        eager_outside_groups=self.eager_outside_groups,
                                        kernel_profile=self.kernel_profile)
                    # no size/stride assert on each piece's inputs (about 1.5 us an input, every
                    # step): a graph input's are Dynamo's guards, and every piece's outputs are
                    # checked below, once, to have the strides the next piece was compiled for
                    with iconfig.patch(size_asserts=False):
                        compiled, piece_loops, part, source = _compile_part(p.gm, examples, policy)
                    _check_strides(compiled, p, given)
                    out_strides = list(ctx.output_strides) if reported is not None else None
                    done[key] = (compiled, piece_loops, part, source, out_strides)
                if out_strides is not None:
                    strides.update(zip(p.outputs, out_strides))
                fns.append(compiled)
                loops += list(piece_loops)
                sources.append(source)
                parts.append(part)
        finally:
            if reported is not None:
                ctx.output_strides = reported
        if reported is not None:  # the strides of the graph's outputs, as one compile would report them
            (result,) = gm.graph.output_node().args
            for r in result:
                val = r.meta.get("val") if isinstance(r, torch.fx.Node) else None
                reported.append(strides[r.name] if isinstance(r, torch.fx.Node) and r.name in strides else
                                tuple(val.stride()) if isinstance(val, torch.Tensor) else None)
        return pieces.PiecewiseCall(gm, parts_gm, fns), loops, parts, "\n".join(sources)


def _metas(values) -> tuple:
    return tuple((tuple(v.shape), tuple(v.stride()), v.dtype, v.device.type) if isinstance(v, torch.Tensor)
                 else repr(v) for v in values)


def _compile_part(gm, example_inputs, policy):
    """``compile_with_policy``: (compiled, loops, its :class:`Part`, its wrapper source)."""
    compiled, loops, cached, key = compile_with_policy(gm, example_inputs, policy)
    source = getattr(compiled, "source_code", "") or ""
    return compiled, loops, Part(len(policy.compute), cached, key or "", count_generated_kernels(source)), source


class PieceStrideError(RuntimeError):
    """A piece's compiled output has other strides than the graph's value (the next piece reads it
    by those): the graph is compiled whole instead."""


def _check_strides(compiled, piece, vals: dict) -> None:
    """Every output of `piece` has the strides of the graph's value for it (dims of size 1 aside)."""
    got = getattr(compiled, "output_strides", None)
    if got is None or len(got) != len(piece.outputs):
        raise PieceStrideError(f"no output strides for {len(piece.outputs)} outputs")
    for name, exprs in zip(piece.outputs, got):
        val = vals.get(name)
        if not isinstance(val, torch.Tensor):
            continue
        try:
            strides = tuple(int(e) for e in exprs) if exprs is not None else None
        except (TypeError, ValueError):
            strides = None
        if strides is None or any(a != b for a, b, n in zip(strides, val.stride(), val.shape) if n > 1):
            raise PieceStrideError(f"{name}: strides {strides}, the graph's {tuple(val.stride())}")
