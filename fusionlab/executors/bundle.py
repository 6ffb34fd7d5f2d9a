"""A graph's groups side by side in one Inductor compile, for their checks.

Checking each group alone costs one ``compile_fx_inner`` per group: a lowering, a schedule,
a wrapper module and a C++ build of its loop nests. A bundle puts all the groups of a graph
that need a check into one FX graph (each with its own inputs and outputs, nothing shared)
and compiles it once, under the policy the whole graph is compiled with (fusion only inside
each group, every group output stored). Each group's loop nests come out as the same C++
functions, byte for byte, as in the whole graph's compile (see :mod:`.policy`), so
Inductor's code cache builds them once for both, and what is checked is the code that runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.fx

from .policy import KernelOrigin, compile_with_policy, policy_for


@dataclass
class Bundle:
    """The compiled bundle: ``run(inputs of each group) -> outputs of each group``."""

    compiled: object  # Inductor's boxed callable for the bundle graph
    names: list[str]  # the groups, in order
    counts: list[int]  # outputs per group, in order
    loops: list[KernelOrigin]
    seconds: float
    source: str

    def run(self, inputs: list[list[torch.Tensor]]) -> list[tuple]:
        flat = self.compiled([x for group in inputs for x in group])
        out, at = [], 0
        for n in self.counts:
            out.append(tuple(flat[at: at + n]))
            at += n
        return out


def bundle_graph(subs: list[torch.fx.GraphModule], names: list[str]) -> tuple[torch.fx.GraphModule, dict[str, str],
                                                                             list[int]]:
    """One FX graph holding every subgraph (group) side by side: (graph, node -> group name,
    outputs per group). Placeholders come in group order, then each group's inputs in order."""
    graph = torch.fx.Graph()
    group_of: dict[str, str] = {}
    outputs: list[torch.fx.Node] = []
    counts: list[int] = []
    for i, (sub, name) in enumerate(zip(subs, names)):
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for n in sub.graph.nodes:
            if n.op == "placeholder":
                env[n] = graph.placeholder(f"g{i}_{n.name}")
                env[n].meta = dict(n.meta)
            elif n.op == "output":
                vals = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
                outputs.extend(env[v] for v in vals)
                counts.append(len(vals))
            elif n.op == "call_function":
                env[n] = graph.node_copy(n, lambda a, env=env: env[a])
                group_of[env[n].name] = name
            else:
                raise ValueError(f"group {name}: a {n.op} node ({n.name}) cannot go into a bundle")
    graph.output(tuple(outputs))
    return torch.fx.GraphModule(torch.nn.Module(), graph), group_of, counts


def compile_bundle(subs: list[torch.fx.GraphModule], names: list[str], examples: list[list[torch.Tensor]], *,
                   kernel_profile: bool = False) -> Bundle:
    """Compile the groups `subs` (named `names`) in one Inductor call for `examples` (each
    group's example inputs: shapes, strides and dtypes are what the code is made for)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    start = time.perf_counter()
    gm, group_of, counts = bundle_graph(subs, names)
    mode = FakeTensorMode(shape_env=ShapeEnv())  # static shapes; lets Inductor's FX graph cache serve it
    fake = [mode.from_tensor(x, static_shapes=True) for group in examples for x in group]
    FakeTensorProp(gm, mode).propagate(*fake)
    policy = policy_for(gm, group_of, kernel_profile=kernel_profile)
    with torch._guards.tracing(torch._guards.TracingContext(mode)):
        compiled, loops, _, _ = compile_with_policy(gm, fake, policy)
    return Bundle(compiled, list(names), counts, loops, time.perf_counter() - start, getattr(compiled, "source_code", "") or "")
