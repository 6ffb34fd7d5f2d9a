"""Inductor's fusion decisions for a Capture, as groups of the capture's own nodes (plain data).

``inductor_decisions(capture)`` compiles each graph as torch.compile's Inductor would
(:mod:`fusionlab.inductor.compile`) and maps what it generated back to the FX nodes:

* :class:`InductorKernel`: one loop nest (CPU; its C++ and the function that holds it) or
  one kernel (GPU), or one library call (``extern_kernels.mm``, an ATen fallback), with the
  nodes it computes. A node Inductor computes in several kernels (a cheap pointwise op
  inlined into each reader) is listed in each, and ``recomputed`` says so;
* ``owner(graph, node)``: every node of a compiled graph has exactly one: the kernel that
  stores its value (else the first that computes it), a library call, or ``"no kernel"``
  (views, getitems, inputs, ops Inductor folded away), with ``why_no_kernel`` saying which;
* :class:`Refusal`: the scheduler's "cannot fuse A with B: reason" for nodes of this capture,
  its category the reason Inductor logs ("no shared data", "intermediate nodes between node1
  & node2", ...; on CPU also "loop ranges differ" from the C++ backend, which logs nothing).

A graph Inductor cannot compile gets ``error`` naming the graph and Inductor's error; the
other graphs are still there. Compiles are kept per process (by graph code and input shapes).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .. import ops
from ..captured import Capture, CapturedGraph
from .compile import InductorUnavailable, RawCompile, compile_graph

NO_KERNEL = "no kernel"
LIBRARY = "library call"


@dataclass
class InductorKernel:
    """One Inductor kernel (a loop nest on CPU) or library call, as nodes of the capture."""

    id: str  # "fw0.k3" (generated code) or "fw0.lib1" (library call)
    graph: str
    kind: str  # "pointwise" | "reduction" | "template" | "library call"
    nodes: tuple[str, ...]  # the capture's nodes it computes, graph order
    recomputed: tuple[str, ...] = ()  # of those, the ones another kernel computes too
    code: str = ""  # C++ loop nest (CPU); "" for a library call
    function: str = ""  # the generated function holding it, or the library call (extern_kernels.mm)
    outer_loop: bool = False  # CPU: nests that share one outer loop (Inductor's outer-loop fusion)

    @property
    def fused(self) -> bool:
        """Two or more ops in one kernel (a library call is never a fusion)."""
        return self.kind != LIBRARY and len(self.nodes) >= 2

    def __repr__(self) -> str:
        re = f", recomputes {len(self.recomputed)}" if self.recomputed else ""
        return f"<InductorKernel {self.id} ({self.kind}{', ' + self.function if self.function else ''}): " \
               f"{len(self.nodes)} nodes{re}>"


@dataclass
class Refusal:
    """Inductor's scheduler refused to fuse two groups of this graph's nodes."""

    graph: str
    first: tuple[str, ...]
    second: tuple[str, ...]
    category: str  # the reason as Inductor phrases it, without its arguments
    text: str  # the reason with its arguments

    def involves(self, node: str) -> bool:
        return node in self.first or node in self.second

    def __str__(self) -> str:
        return f"{self.graph}: cannot fuse {_names(self.first)} with {_names(self.second)}: {self.text}"


def _names(nodes: tuple[str, ...], limit: int = 3) -> str:
    more = f", +{len(nodes) - limit}" if len(nodes) > limit else ""
    return "[" + ", ".join(nodes[:limit]) + more + "]"


@dataclass
class GraphDecisions:
    """Inductor's decisions for one captured graph."""

    tag: str
    kind: str
    kernels: list[InductorKernel] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)  # every node -> kernel id or NO_KERNEL
    why_no_kernel: dict[str, str] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    metrics_kernels: int = 0  # torch._inductor.metrics.generated_kernel_count for this compile
    outer_loop_trials: int = 0  # CPU: trial nests of outer-loop fusions the metric also counts
    source: str = ""  # Inductor's generated code
    device: str = "cpu"
    seconds: float = 0.0
    error: str | None = None  # Inductor could not compile this graph: why
    note: str = ""  # how this compile differs from torch.compile's, where it does

    @property
    def generated(self) -> list[InductorKernel]:
        return [k for k in self.kernels if k.kind != LIBRARY]

    @property
    def library_calls(self) -> list[InductorKernel]:
        return [k for k in self.kernels if k.kind == LIBRARY]

    @property
    def functions(self) -> list[str]:
        """The generated functions (C++ on CPU) in the order Inductor wrote them."""
        return list(dict.fromkeys(k.function for k in self.generated if k.function))

    def line(self) -> str:
        if self.error:
            return f"{self.tag}: {self.error}"
        fused = sum(1 for k in self.kernels if k.fused)
        where = f" in {len(self.functions)} C++ functions" if self.device == "cpu" and self.functions else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.tag}: {len(self.generated)} {'loop nests' if self.device == 'cpu' else 'kernels'}"
                f"{where} ({fused} fuse two or more ops), {len(self.library_calls)} library calls, "
                f"{len(self.refusals)} refused fusions{note}")


@dataclass
class InductorDecisions:
    """Inductor's kernels and refusals for every graph of a capture (see the module docstring)."""

    model_name: str
    graphs: list[GraphDecisions]

    def graph(self, tag: str) -> GraphDecisions:
        for g in self.graphs:
            if g.tag == tag:
                return g
        raise KeyError(f"no graph {tag!r}; graphs are {[g.tag for g in self.graphs]}")

    @property
    def kernels(self) -> list[InductorKernel]:
        return [k for g in self.graphs for k in g.kernels]

    @property
    def fusions(self) -> list[InductorKernel]:
        """The kernels that compute two or more ops."""
        return [k for k in self.kernels if k.fused]

    @property
    def refusals(self) -> list[Refusal]:
        return [r for g in self.graphs for r in g.refusals]

    @property
    def errors(self) -> list[str]:
        return [f"{g.tag}: {g.error}" for g in self.graphs if g.error]

    def kernel(self, kid: str) -> InductorKernel:
        for k in self.kernels:
            if k.id == kid:
                return k
        raise KeyError(f"no Inductor kernel {kid!r}")

    def owner(self, graph: str, node: str) -> str | None:
        """The id of the kernel or library call that computes `node`, NO_KERNEL, or None when
        Inductor could not compile the graph."""
        return self.graph(graph).owner.get(node)

    def kernels_of(self, graph: str, node: str) -> list[InductorKernel]:
        """Every kernel that computes `node` (more than one where Inductor recomputes it)."""
        return [k for k in self.graph(graph).kernels if node in k.nodes]

    def reasons(self, graph: str, node: str) -> list[str]:
        """Inductor's refusals that involve `node`, one line each (for a hover)."""
        return [str(r) for r in self.graph(graph).refusals if r.involves(node)]

    def overlay(self) -> dict:
        """What a graph view needs, plain: {graph: {node: {"kernel", "kind", "recomputed_in", "reasons"}}}."""
        out: dict = {}
        for g in self.graphs:
            kinds = {k.id: k.kind for k in g.kernels}
            rows = {}
            for node, kid in g.owner.items():
                rows[node] = {"kernel": kid, "kind": kinds.get(kid, NO_KERNEL),
                              "recomputed_in": [k.id for k in g.kernels if node in k.recomputed and k.id != kid],
                              "why_no_kernel": g.why_no_kernel.get(node, ""),
                              "reasons": [str(r) for r in g.refusals if r.involves(node)]}
            out[g.tag] = rows
        return out

    def summary(self) -> str:
        lines = [f"Inductor's decisions for {self.model_name} (torch.compile's Inductor, default config, "
                 f"on {self.graphs[0].device if self.graphs else 'cpu'})"]
        lines += ["  " + g.line() for g in self.graphs]
        return "\n".join(lines)

    def table(self) -> str:
        lines = [f"{'kernel':10} {'kind':12} {'nodes':>5}  function / ops"]
        for k in self.kernels:
            body = ", ".join(k.nodes[:4]) + (f", ... ({len(k.nodes)})" if len(k.nodes) > 4 else "")
            re = f"  [recomputes {', '.join(k.recomputed)}]" if k.recomputed else ""
            lines.append(f"{k.id:10} {k.kind:12} {len(k.nodes):5d}  {k.function}: {body}{re}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(self.summary() + "\n" + self.table()) + "</pre>"


_MEMO: dict[tuple, GraphDecisions] = {}


def _memo_key(graph: CapturedGraph) -> tuple:
    import torch

    metas = []
    for n in graph.gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta.get("val")
            metas.append(repr((tuple(v.shape), tuple(v.stride()), v.dtype, v.device))
                         if isinstance(v, torch.Tensor) else repr(v))
    return (graph.kind, graph.gm.code, tuple(metas), torch.__version__, torch.get_num_threads())


def graph_decisions(graph: CapturedGraph) -> GraphDecisions:
    """Inductor's decisions for one graph; a graph Inductor cannot compile gets ``error``."""
    key = _memo_key(graph)
    if key in _MEMO:
        return _MEMO[key]
    note = ""
    try:
        try:
            raw = compile_graph(graph.gm, graph.kind)
        except Exception as e:  # noqa: BLE001 - random ops: compiled again as ATen calls, said in `note`
            if "replace_random" not in str(e):
                raise
            raw = compile_graph(graph.gm, graph.kind, fallback_random=True)
            note = ("random ops are ATen calls here (fallback_random): torch.compile rewrites them in a "
                    "joint-graph pass that runs before the point fusionlab captures")
    except InductorUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - one graph's failure is a result; the others still show
        text = str(e).strip()
        inner = text.split("raised:", 1)[-1].strip() if "raised:" in text else text
        first = next((ln.strip() for ln in inner.splitlines() if ln.strip()), "")
        return GraphDecisions(graph.tag, graph.kind,
                              error=f"Inductor could not compile {graph.tag}: {type(e).__name__}: {first}")
    out = _assign(graph, raw)
    out.note = note
    _MEMO[key] = out
    return out


def _assign(graph: CapturedGraph, raw: RawCompile) -> GraphDecisions:
    """Inductor's scheduler names -> the capture's nodes; one owner per node."""
    order = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    kind = {name: info.kind for name, info in graph.nodes.items()}
    compute = {n for n, k in kind.items() if ops.launches_kernel(k)}

    stored_in: dict[str, set[str]] = {}  # FX node -> buffers that hold its value
    for s, fx in raw.stored.items():
        stored_in.setdefault(fx, set()).update(raw.writes.get(s, ()))

    def nodes_of(snodes, keep_other=False, library=False) -> tuple[str, ...]:
        """The capture's nodes these scheduler nodes compute. Inductor's origins over-approximate
        (an op lowered while another is realized carries both): a value this kernel loads from
        the buffer another kernel stored is read, not computed; a loop nest computes no matmul;
        a library call computes the node it was lowered from."""
        if library:
            own = {raw.stored[s] for s in snodes if raw.stored.get(s) in order}
            if own:
                return tuple(sorted(own, key=order.__getitem__))
        writes = {b for s in snodes for b in raw.writes.get(s, ())}
        reads = {b for s in snodes for b in raw.reads.get(s, ())}
        found = {o for s in snodes for o in raw.origins.get(s, ()) if o in order}
        mine = set()
        for o in found:
            if o not in compute or (not library and kind[o] == "matmul"):
                continue
            held = stored_in.get(o, set())
            if held and not (held & writes) and (held & reads):
                continue  # loaded from memory
            mine.add(o)
        if not mine and keep_other:  # a kernel that only copies (a view Inductor materialized)
            mine = {o for o in found if kind.get(o) in ("view", "matmul")}
        return tuple(sorted(mine, key=order.__getitem__))

    gd = GraphDecisions(graph.tag, graph.kind, metrics_kernels=raw.metrics_kernels,
                        outer_loop_trials=raw.outer_loop_trials, source=raw.source, device=raw.device,
                        seconds=raw.seconds)
    stores: dict[str, str] = {}  # FX node -> kernel id whose buffer holds it
    for i, rk in enumerate(raw.kernels):
        k = InductorKernel(f"{graph.tag}.k{i}", graph.tag, rk.kind, nodes_of(rk.snodes, keep_other=True),
                           code=rk.code, function=rk.function, outer_loop=rk.outer_loop)
        gd.kernels.append(k)
        for s in rk.snodes:
            if s in raw.stored:
                stores.setdefault(raw.stored[s], k.id)
    for i, (sname, call) in enumerate(raw.library):
        k = InductorKernel(f"{graph.tag}.lib{i}", graph.tag, LIBRARY, nodes_of([sname], library=True),
                           function=call)
        gd.kernels.append(k)
        if sname in raw.stored:
            stores.setdefault(raw.stored[sname], k.id)
    computed_by: dict[str, list[str]] = {}
    for k in gd.kernels:
        for n in k.nodes:
            computed_by.setdefault(n, []).append(k.id)
    for k in gd.kernels:
        k.recomputed = tuple(n for n in k.nodes if len(computed_by[n]) > 1)
    for n in graph.gm.graph.nodes:
        ids = computed_by.get(n.name)
        if ids:
            gd.owner[n.name] = stores.get(n.name) if stores.get(n.name) in ids else ids[0]
            continue
        gd.owner[n.name] = NO_KERNEL
        gd.why_no_kernel[n.name] = _why_no_kernel(n, kind.get(n.name, ""))
    gd.refusals = _refusals(graph.tag, raw, nodes_of)
    return gd


def _why_no_kernel(node, kind: str) -> str:
    if node.op == "placeholder":
        return "graph input"
    if node.op == "output":
        return "graph output"
    if kind == "view":
        return "view: index arithmetic inside the kernels that read it"
    if kind == "getitem":
        return "picks one result of a multi-output op"
    if kind == "constant":
        return "constant"
    return "Inductor generated no code for it (folded into its readers' indexing, or its value is unused)"


def _refusals(tag: str, raw: RawCompile, nodes_of) -> list[Refusal]:
    out, seen = [], set()
    for name1, name2, category, text in raw.refusals:
        a, b = nodes_of(name1.split("_")), nodes_of(name2.split("_"))
        if not a or not b:
            continue
        key = (frozenset((frozenset(a), frozenset(b))), category)
        if key in seen:
            continue
        seen.add(key)
        out.append(Refusal(tag, a, b, category, text))
    return out


def inductor_decisions(capture: Capture, graphs: list[str] | None = None) -> InductorDecisions:
    """Inductor's kernels, node owners and refusals for `capture` (each graph, or the tags in `graphs`)."""
    if not isinstance(capture, Capture):
        raise TypeError("inductor_decisions takes the Capture returned by fusionlab.capture(...), "
                        f"got {type(capture).__name__}")
    chosen = capture.graphs if graphs is None else [capture.graph(t) for t in graphs]
    return InductorDecisions(capture.model_name, [graph_decisions(g) for g in chosen])
