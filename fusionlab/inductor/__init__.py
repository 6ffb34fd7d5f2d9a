"""torch.compile's own fusions beside fusionlab's, and what each fusionlab candidate buys, measured.

Three stages over a :class:`~fusionlab.Capture`, plain data between them:

* :mod:`.decisions`: ``inductor_decisions(capture)`` -> :class:`InductorDecisions`: each
  graph compiled as torch.compile's Inductor would (default config, no fusion policy), its
  kernels as groups of the capture's nodes with their code, every node's one owner (kernel,
  library call or "no kernel"), and the scheduler's "cannot fuse" reasons. All use of
  Inductor internals for this sits in :mod:`.compile`, behind :func:`require_inductor`.
* :mod:`.diff`: ``inductor_diff(plan, decisions)`` -> :class:`InductorDiff`: groups both
  made, only fusionlab made, only Inductor made (each with why fusionlab has no candidate for
  it); ``select_like_inductor(plan, decisions)`` selects the candidates Inductor agrees with.
* :mod:`.value`: ``measure_candidates(plan)`` -> :class:`CandidateValues`: each candidate
  compiled alone (Inductor, CPU) against the same ops run unfused (eager), interleaved, with
  :mod:`fusionlab.verdict`'s verdict, next to its modeled bytes saved; cached per candidate
  and input shapes (``fusionlab.cache`` namespace "values").
"""

from __future__ import annotations

from .compile import InductorUnavailable, require_inductor
from .decisions import (
    LIBRARY,
    NO_KERNEL,
    GraphDecisions,
    InductorDecisions,
    InductorKernel,
    Refusal,
    inductor_decisions,
)
from .diff import InductorDiff, inductor_diff, select_like_inductor
from .value import CandidateValue, CandidateValues, measure_candidates

__all__ = [
    "LIBRARY", "NO_KERNEL", "CandidateValue", "CandidateValues", "GraphDecisions", "InductorDecisions",
    "InductorDiff", "InductorKernel", "InductorUnavailable", "Refusal", "inductor_decisions", "inductor_diff",
    "measure_candidates", "require_inductor", "select_like_inductor",
]
