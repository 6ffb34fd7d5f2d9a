"""What each candidate buys, measured: its group compiled alone against the same ops run unfused.

For every candidate of a plan (or the ones named): the group is built and checked against
eager by :class:`fusionlab.executors.InductorGroupExecutor` (Inductor's C++ backend, the
group alone; the checks of all of a graph's candidates run first in one compile, then every
group is compiled alone before any is timed, so the C++ functions the checks did not build
are built together, as one library: ``executors.builds``), then the compiled group and the
same ops run unfused (the eager subgraph: one ATen call per op) are timed in interleaved rounds, and :func:`fusionlab.verdict.compare`
says whether the fused version is faster, slower or not measurably different (a bootstrap
interval of the ratio of medians beyond ±3 %). A group that fails its check is reported
with the reason and not timed. Modeled bytes saved stand beside the measured figures, labeled.

A candidate with the same ops, wiring and input shapes as one already measured in the run (the
same block in the next layer) gets that measurement, and its row says whose (``same_as``).
Results are kept in fusionlab's disk cache (namespace "values"), keyed by the group's ops and
wiring (not its node names), its input shapes, strides and dtypes, the rounds, the torch version, the CPU capability and
the thread count: a second run on the same model measures nothing again. On a GPU this would
time fusionlab's Triton kernel instead; that path is not built yet (``measure_candidates``
says so rather than timing the interpreter).
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .. import cache
from ..executors.checks import structure
from ..nodecost import fmt_bytes
from ..verdict import SLOWER, compare

VALUES = "values"  # fusionlab.cache namespace of measured candidate values


@dataclass
class CandidateValue:
    """One candidate, fused (Inductor, alone) vs unfused (eager ATen calls), measured on this CPU."""

    candidate: str
    unfused_ms: float  # median per call
    fused_ms: float
    unfused_iqr_ms: float
    fused_iqr_ms: float
    ratio: float  # unfused / fused median: > 1 means fusing is faster
    low: float  # the verdict's interval of the ratio
    high: float
    verdict: str  # fusionlab.verdict: "faster" | "slower" | "no measurable difference" ("" when not timed)
    rounds: int
    bytes_saved: int  # modeled
    device: str
    error: str = ""  # the group failed to compile or its check: not timed
    cached: bool = False
    same_as: str = ""  # the candidate with the same ops, wiring and input shapes whose measurement this is

    @property
    def slower(self) -> bool:
        return self.verdict == SLOWER

    @property
    def short(self) -> str:
        if self.error:
            return "not timed"
        if self.verdict == "faster":
            return f"{self.ratio:.2f}x faster"
        if self.verdict == SLOWER:
            return f"{1 / self.ratio:.2f}x slower"
        return "no measurable difference"


class CandidateValues(list):
    """:class:`CandidateValue` rows (a list) with a table; ``slower`` lists the ones fusing slows down."""

    def __init__(self, rows=(), device: str = "", seconds: float = 0.0):
        super().__init__(rows)
        self.device = device
        self.seconds = seconds  # wall-clock to produce the table

    @property
    def slower(self) -> list[CandidateValue]:
        return [v for v in self if v.slower]

    def get(self, cid: str) -> CandidateValue | None:
        return next((v for v in self if v.candidate == cid), None)

    def table(self) -> str:
        w = max([36] + [len(v.candidate) for v in self])
        lines = [f"measured on {self.device}: each group compiled alone by Inductor vs the same ops unfused "
                 "(eager), interleaved; bytes saved are modeled",
                 f"{'candidate':{w}} {'unfused ms':>10} {'fused ms':>9} {'IQR (u/f)':>13}  {'measured':26} "
                 f"{'saves (modeled)':>15}"]
        for v in self:
            if v.error:
                lines.append(f"{v.candidate:{w}} {'-':>10} {'-':>9} {'-':>13}  {'not timed':26} "
                             f"{fmt_bytes(v.bytes_saved):>15}  ({v.error})")
                continue
            iqr = f"{v.unfused_iqr_ms:.3f}/{v.fused_iqr_ms:.3f}"
            flag = ("  <- slower fused" if v.slower else "") + (f"  (= {v.same_as})" if v.same_as else "")
            lines.append(f"{v.candidate:{w}} {v.unfused_ms:10.3f} {v.fused_ms:9.3f} {iqr:>13}  {v.short:26} "
                         f"{fmt_bytes(v.bytes_saved):>15}{flag}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(self.table()) + "</pre>"


def _key(sub, metas, rounds: int, executor: str) -> str:
    return cache.make_key("candidate-value", executor, structure(sub), [repr(m[1:]) for m in metas], rounds,
                          torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())


def _time_pair(fused, unfused, inputs, rounds: int) -> tuple[list[float], list[float]]:
    """Interleaved: each round times one unfused and one fused call (order alternating)."""
    with torch.no_grad():
        for _ in range(2):  # warm-up
            unfused(*inputs)
            fused(*inputs)
        a, b = [], []
        for i in range(rounds):
            pair = ((unfused, a), (fused, b)) if i % 2 == 0 else ((fused, b), (unfused, a))
            for fn, out in pair:
                t0 = time.perf_counter()
                fn(*inputs)
                out.append(time.perf_counter() - t0)
    return a, b


def _iqr(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def _progress(total: int, enabled: bool):
    """tqdm where it is installed (a text bar on a terminal), else a line per candidate on stderr."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="measuring candidates", unit="cand", file=sys.stderr, leave=False)
    except ImportError:
        return None


def measure_candidates(plan, candidates=None, *, rounds: int = 30, progress: bool | None = None,
                       seed: int = 0, on_progress=None) -> CandidateValues:
    """Measured fused-vs-unfused value of each candidate of `plan` (all, or the ids/Candidates given).
    ``on_progress(done, total)`` is called after each candidate (the explorer's progress bar)."""
    from ..check import random_tensor
    from ..executors import InductorGroupExecutor
    from ..kernels.kernel import extract_subgraph

    if rounds < 8:
        raise ValueError(f"rounds must be at least 8 (fewer never give a verdict), got {rounds}")
    cands = list(plan.candidates) if candidates is None else [
        c if not isinstance(c, str) else plan.candidates.by_id(c) for c in candidates]
    device = {str(g.gm.graph.find_nodes(op="placeholder")[0].meta["val"].device.type)
              for g in plan.capture.graphs if g.gm.graph.find_nodes(op="placeholder")}
    if device - {"cpu"}:
        raise NotImplementedError("measuring candidates on a GPU (timing fusionlab's Triton kernels) is not "
                                  "built yet; capture on CPU to measure Inductor-compiled groups")
    where = f"cpu ({torch.get_num_threads()} threads, Inductor C++ per group)"
    executor = InductorGroupExecutor(seed=seed)
    bar = _progress(len(cands), sys.stderr.isatty() if progress is None else progress)
    start = time.perf_counter()
    rows, seen = [], {}
    try:
        built = _check_and_compile(executor, plan, cands, rounds)
        for c in cands:
            graph = plan.capture.graph(c.graph)
            if bar is not None:
                bar.set_postfix_str(c.id)
            row = _measure_one(executor, c, graph, rounds, seed, where, random_tensor, extract_subgraph, seen,
                               built)
            rows.append(row)
            if bar is not None:
                bar.update(1)
            if on_progress is not None:
                on_progress(len(rows), len(cands))
    finally:
        if bar is not None:
            bar.close()
    return CandidateValues(rows, where, time.perf_counter() - start)


def _check_and_compile(executor, plan, cands, rounds: int) -> dict[str, tuple]:
    """Every candidate not measured before: checked in one Inductor compile per graph (the group
    executor's ``prepare``) instead of one compile and C++ build per candidate, then compiled
    alone for its timing, before any is timed. Returns value key -> the executor's answer.

    A group's functions are mostly the same source as in its bundle (built there); the rest,
    across all the groups, are built as one library when the first group is timed
    (``executors.builds``), not one library per group."""
    from ..executors.groups import input_meta
    from ..kernels.kernel import extract_subgraph

    todo: dict[str, list] = {}
    for c in cands:
        graph = plan.capture.graph(c.graph)
        try:
            key = _key(extract_subgraph(graph.gm, c), input_meta(graph, c), rounds, executor.name)
            stored = cache.get(key, VALUES)
        except (cache.CacheCorruptError, OSError, ValueError):
            key, stored = None, None
        if not isinstance(stored, dict):
            todo.setdefault(c.graph, []).append((key, c))
    built: dict[str, tuple] = {}
    for tag, group in todo.items():
        graph = plan.capture.graph(tag)
        executor.prepare(graph, [c for _, c in group])
        for key, c in group:
            if key is not None and key not in built:  # a twin is compiled once
                built[key] = executor(c, graph)
    return built


def _measure_one(executor, c, graph, rounds, seed, where, random_tensor, extract_subgraph, seen,
                 built) -> CandidateValue:
    """One candidate's row; a candidate with the same ops, wiring and inputs as one measured in
    this run (the same block in another layer) gets that measurement, saying whose."""
    from ..executors.groups import input_meta  # the inputs as the group executor sees them

    metas = input_meta(graph, c)
    sub = extract_subgraph(graph.gm, c)
    key = _key(sub, metas, rounds, executor.name)
    if key in seen:
        first = seen[key]
        return dataclasses.replace(first, candidate=c.id, bytes_saved=c.bytes_saved, same_as=first.candidate)
    with contextlib.suppress(cache.CacheCorruptError, OSError):
        stored = cache.get(key, VALUES)
        if isinstance(stored, dict):
            with contextlib.suppress(TypeError):
                row = CandidateValue(**{**stored, "candidate": c.id, "bytes_saved": c.bytes_saved, "cached": True,
                                        "same_as": ""})
                seen[key] = row
                return row
    fn, status = built[key] if key in built else executor(c, graph)
    nan = math.nan
    if fn is None:
        row = CandidateValue(c.id, nan, nan, nan, nan, nan, nan, nan, "", 0, c.bytes_saved, where,
                             error=status.reason or "not built")
        seen[key] = row
        return row
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = [random_tensor(s, st, dt, dev, gen) for _, s, st, dt, dev in metas]
    unfused, fused = _time_pair(fn, sub, inputs, rounds)
    v = compare(unfused, fused, names=(c.id, "unfused"))
    row = CandidateValue(c.id, statistics.median(unfused) * 1e3, statistics.median(fused) * 1e3,
                         _iqr(unfused) * 1e3, _iqr(fused) * 1e3, v.ratio, v.low, v.high, v.call, rounds,
                         c.bytes_saved, where)
    with contextlib.suppress(OSError):
        cache.put(key, asdict(row), VALUES)
    seen[key] = row
    return row
