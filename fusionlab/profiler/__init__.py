"""Profile whole training steps: eager vs the fused plan vs torch.compile, measured and modeled.

``profile(model, inputs)`` times complete training steps (forward, loss, backward,
optimizer step, zero_grad) of each variant on the same inputs:

* ``eager``      the model as it is;
* ``fusionlab``  the plan's fused step (``make_backend(plan, executor=...)``): on a GPU the
                 plan's Triton kernels; on CPU each selected group checked alone, then the
                 step compiled by Inductor under a policy that fuses only inside the groups
                 (:class:`fusionlab.executors.InductorGraphExecutor`), because the Triton
                 interpreter is for correctness, not speed;
* ``inductor``   plain ``torch.compile`` of the same step function (fuses everything it likes);
* ``unfused``    (optional) the fusionlab variant with nothing selected: with the CPU
                 ``inductor`` executor, the same whole-graph compile with every op on its
                 own, so fusionlab vs unfused is what the chosen fusions alone buy; with
                 the other executors, the captured, decomposed ATen graphs run op by op.

Every variant trains its own ``copy.deepcopy(model)`` with its own optimizer, so profiling
never changes the model. The variants run interleaved, one step each in turn (the order
rotating every round), so drift (thermal, other processes) hits them alike. On CUDA a step
is timed with CUDA events, on CPU with ``time.perf_counter`` (always after warm-up; the
first step of a compiled variant, which compiles, is reported apart). After timing, one
more step of each variant runs under ``torch.profiler`` for per-kernel names and times,
peak memory and, optionally, a Chrome trace.

Modeled figures (:mod:`fusionlab.cost`: bytes, FLOPs, launches on a GPU's spec sheet) are
labeled ``modeled (<GPU> spec)`` and kept in columns of their own.

The package, one job a module:

* ``measure``   ``profile()`` itself, as a sequence of named steps;
* ``harness``   a variant's own training step, optimizer and clock;
* ``events``    one step under torch.profiler: top kernels, peak memory, Chrome trace;
* ``kept``      compiled steps kept from one profile to the next (``profile(keep=KeptSteps())``);
* ``results``   :class:`ProfileResult` / :class:`VariantResult` and their text and tables.

The variant and executor names live in :mod:`fusionlab.profile_options` (the CLI, the
magic and the explorer read them without importing the profiler), the figure and HTML
report in :mod:`fusionlab.viz.profile_report`, and the fused-vs-eager numerics check in
:mod:`fusionlab.numerics`.
"""

from ..profile_options import DEFAULT_COMPARE, VARIANTS
from .kept import KeptSteps
from .measure import profile
from .results import ProfileResult, VariantResult

__all__ = ["DEFAULT_COMPARE", "VARIANTS", "KeptSteps", "ProfileResult", "VariantResult", "profile"]
