"""fusionlab.inspect: what a GPU would run, compiled for a real target without a GPU.

* ``compile``: :func:`inspect_source` / :func:`inspect_many` compile generated kernels for
  ``"sm_80"``, ``"sm_89"``, ``"sm_90"`` (or ``"native"``) in worker processes -> ``CompileReport``;
* ``report``: :class:`CompileReport` (TTIR, TTGIR, LLVM IR, PTX, SASS, registers, spills,
  shared memory) and its views;
* ``occupancy``: the *modeled* occupancy from registers, shared memory and an SM's limits;
* ``configs``: each launch config of a kernel compiled and compared; ``tune`` on a GPU;
* ``summary``: many reports as one table; ``workers`` / ``_worker``: the compile processes.

Results are kept in the disk cache (:mod:`fusionlab.cache`).
"""

from __future__ import annotations

from .compile import TARGETS, inspect_many, inspect_source, resolve_target
from .occupancy import Occupancy, model_occupancy
from .report import CompileReport

__all__ = [
    "TARGETS", "CompileReport", "Occupancy", "inspect_many", "inspect_source", "model_occupancy",
    "resolve_target",
]
