"""Candidates of the optimizer update: per-parameter chains, and one horizontal group per dtype.

- ``opt0.adamw.<i>`` / ``opt0.sgd_momentum.<i>``: the update chain of parameter ``i`` (one
  kernel per parameter instead of one per op).
- ``opt0.multi_tensor_adamw.<group>``: every parameter of one param group and dtype in one
  launch (horizontal fusion), each tensor read once. It overlaps the per-parameter chains:
  pick one or the other (``fusionlab.optim.fused_update(cap, form="multi_tensor"|"param")``).
- ``opt0.clip_grad_norm.0``: the global norm, a reduction across all gradients whose result
  scales every update on the device.

Bytes are modeled: unfused, every op reads its inputs and writes its result; fused, each
tensor is read once and each result written once.
"""

from __future__ import annotations

from ..candidates import Candidate
from ..nodecost import group_costs
from .capture import ALL, OptimizerStep


def _candidate(step: OptimizerStep, cid: str, pattern: str, members: list[str], domain, reduce=()) -> Candidate:
    gm = step.graph.gm
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = [by_name[m] for m in members]
    mine = set(members)
    inputs = sorted({a.name for n in nodes for a in n.all_input_nodes if a.name not in mine})
    outputs = [n.name for n in nodes if any(u.name not in mine for u in n.users)]
    kernels, unfused, fused = group_costs(nodes, [by_name[i] for i in inputs], [by_name[o] for o in outputs])
    modules = tuple(sorted({step.updates.get(m, "") for m in members} - {""}))
    return Candidate(id=cid, graph="opt0", pattern=pattern, nodes=tuple(members), inputs=tuple(inputs),
                     outputs=tuple(outputs), domain=tuple(domain), reduce_dims=tuple(reduce),
                     kernels_unfused=kernels, bytes_unfused=unfused, bytes_fused=fused, modules=modules,
                     ops=tuple(sorted({step.graph.nodes[m].op for m in members})))


def optimizer_candidates(step: OptimizerStep | None) -> list[Candidate]:
    """The candidates of ``capture.optimizer`` (none when there is none, or it runs unfused)."""
    if step is None or not step.fused or step.graph is None:
        return []
    g = step.graph
    calls = [n.name for n in g.gm.graph.nodes if n.op == "call_function"]
    by_param: dict[str, list[str]] = {}
    for n in calls:
        owner = step.updates.get(n, "")
        if owner and owner != ALL:
            by_param.setdefault(owner, []).append(n)
    out: list[Candidate] = []
    kind = step.kind
    for i, name in enumerate(step.param_names):
        members = by_param.get(name, [])
        if members:
            out.append(_candidate(step, f"opt0.{kind}.{i}", kind, members, g.nodes[members[-1]].shape or ()))
    for grp in step.groups:
        names = {step.param_names[i] for i in grp.params}
        members = [n for n in calls if step.updates.get(n, "") in names]
        numel = sum(step.params[i].numel() for i in grp.params)
        dt = str(grp.dtype).removeprefix("torch.")
        out.append(_candidate(step, f"opt0.multi_tensor_{kind}.g{grp.param_group}.{dt}", f"multi_tensor_{kind}", members,
                              (numel,)))
    clip = [n for n in calls if step.updates.get(n) == ALL and g.nodes[n].shape == ()]
    if clip:
        numel = sum(p.numel() for p in step.params)
        out.append(_candidate(step, "opt0.clip_grad_norm.0", "clip_grad_norm", clip, (numel,), (0,)))
    return out
