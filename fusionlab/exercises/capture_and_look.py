"""Checkers for notebook 2, "Capture and look": kernels per graph, the best backward candidate,
which nodes are left out as matmuls. References come from the student's own capture."""

from __future__ import annotations

from .feedback import Feedback, fmt, is_unanswered, right, unanswered, wrong


def kernel_counts(answer, capture) -> Feedback:
    """2.1: {"fw0": n, "bw0": m}: how many nodes of each graph launch a kernel when run eagerly."""
    name = "2.1 kernels per graph"
    ref = {g.tag: len(g.kernel_nodes()) for g in capture.graphs}
    if is_unanswered(answer):
        return unanswered(name, "a dict like {'fw0': ..., 'bw0': ...}; graph.kernel_nodes() lists the nodes "
                                "that launch a kernel")
    if not isinstance(answer, dict):
        return wrong(name, f"the answer should be a dict of graph tag -> count, like {ref and {k: '...' for k in ref}}")
    missing = [t for t in ref if t not in answer]
    if missing:
        return wrong(name, f"the answer has no count for {', '.join(missing)} (the graphs are {', '.join(ref)})")
    bad = {t: answer[t] for t in ref if answer[t] != ref[t]}
    if not bad:
        return right(name, ", ".join(f"{t}: {n} kernels" for t, n in ref.items())
                     + ": the backward launches more, and so has more to fuse")
    tags = list(ref)
    if len(tags) == 2 and answer[tags[0]] == ref[tags[1]] and answer[tags[1]] == ref[tags[0]]:
        return wrong(name, f"the counts are swapped: {tags[0]} is the forward graph, {tags[1]} the backward")
    hints = []
    for t, v in bad.items():
        g = capture.graph(t)
        every = sum(1 for _ in g.gm.graph.nodes)
        calls = sum(1 for n in g.gm.graph.nodes if n.op == "call_function")
        if v == every:
            hints.append(f"{t}: {v} counts every node, placeholders (inputs) and the output included")
        elif v == calls:
            hints.append(f"{t}: {v} counts views too; a view (reshape, transpose, ...) only changes how memory "
                         "is addressed and launches no kernel")
        else:
            hints.append(f"{t}: {fmt(v)} is not it")
    return wrong(name, "; ".join(hints) + ". Count the nodes graph.kernel_nodes() returns")


def best_backward_candidate(answer, candidates) -> Feedback:
    """2.2: the id of the backward candidate that saves the most bytes (modeled)."""
    name = "2.2 the backward candidate worth most"
    bw = [c for c in candidates if c.graph.startswith("bw")]
    if not bw:
        raise ValueError("these candidates have no backward graph: capture a training step")
    best = max(bw, key=lambda c: c.bytes_saved)
    if is_unanswered(answer):
        return unanswered(name, "candidate ids start with their graph, like 'bw0.layer_norm_backward.0'; compare "
                                "their bytes_saved")
    cid = getattr(answer, "id", answer)
    if not isinstance(cid, str):
        return wrong(name, "the answer should be a candidate id (a string) or a Candidate")
    by_id = {c.id: c for c in candidates}
    if cid not in by_id:
        return wrong(name, f"there is no candidate {cid!r}; the ids are in print(cands), e.g. {bw[0].id!r}")
    c = by_id[cid]
    if c.bytes_saved == best.bytes_saved:
        return right(name, f"{cid} saves {fmt(c.bytes_saved)} bytes per step (modeled), the most of any "
                           "backward candidate")
    if not c.graph.startswith("bw"):
        return wrong(name, f"{cid} is in the forward graph ({c.graph}); the question is about the backward (bw0)")
    most_nodes = max(bw, key=lambda c: len(c.nodes))
    if c.id == most_nodes.id:
        return wrong(name, f"{cid} has the most nodes, but the question is bytes saved: it saves "
                           f"{fmt(c.bytes_saved)} bytes, another saves more")
    return wrong(name, f"{cid} saves {fmt(c.bytes_saved)} bytes (modeled); another backward candidate saves more")


def matmul_nodes(answer, candidates, graph: str = "fw0") -> Feedback:
    """2.3: the names of the matmul nodes of `graph` left out of every candidate (a matmul with a
    pointwise epilogue is in that epilogue's candidate, so it is not one of them)."""
    name = f"2.3 matmuls in {graph}"
    ref = {n for (g, n), r in candidates.left_out.items() if g == graph and r.startswith("matmul")}
    if is_unanswered(answer):
        return unanswered(name, f"cands.why_not() gives one line per node left out; keep the {graph} ones whose "
                                "reason starts with 'matmul'")
    if isinstance(answer, str) or not hasattr(answer, "__iter__"):
        return wrong(name, "the answer should be a list or set of node names, like ['addmm', 'bmm']")
    got = {str(a).removeprefix(f"{graph}.") for a in answer}
    if got == ref:
        return right(name, f"{len(ref)} matmuls ({', '.join(sorted(ref))}): they run as library kernels "
                           "(cuBLAS on a GPU); why_not() says why each has no epilogue to fuse")
    extra, missing = sorted(got - ref), sorted(ref - got)
    parts = []
    if extra:
        why = [f"{n} ({candidates.left_out.get((graph, n), 'not left out: it is in a candidate')})" for n in extra[:3]]
        parts.append("these are not matmuls left out: " + "; ".join(why))
    if missing:
        parts.append(f"{len(missing)} matmul{'s are' if len(missing) > 1 else ' is'} missing")
    return wrong(name, ". ".join(parts))
