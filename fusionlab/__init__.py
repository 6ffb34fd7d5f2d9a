"""fusionlab: a Jupyter-first kernel-fusion explorer for PyTorch.

The pipeline, one stage a module, plain data between them::

    capture(model, *inputs)   -> Capture        forward/backward ATen graphs + node facts
    find_candidates(capture)  -> [Candidate]    groups one kernel could compute
    FusionPlan(capture)       -> selection      select / deselect / rules / summary / to_code
    pattern("name")(example)  -> Pattern        a named fusion of your own (list_patterns())
    plan.kernels()            -> [Kernel]       readable Triton, checked against eager
    plan.compile(model)       -> fused step     torch.compile with the plan's kernels

UI layers (widgets, plots, the ``%fusionlab`` magic) sit on top and are imported lazily.
"""

from . import _env  # noqa: F401  (decides the Triton interpreter before triton is imported)
from .candidates import Candidate, Candidates, find_candidates
from .capture import Capture, CaptureError, capture
from .kernels import Kernel
from .patterns import Pattern, PatternError, list_patterns, pattern, unregister
from .plan import FusionPlan, PlanError

__all__ = [
    "Candidate", "Candidates", "Capture", "CaptureError", "FusionPlan", "Kernel", "Pattern", "PatternError",
    "PlanError", "capture", "find_candidates", "list_patterns", "load_ipython_extension", "optim", "pattern",
    "profile", "unregister", "zoo", "KeptSteps",
]
__version__ = "0.1.0"


_LAZY = {"zoo": "fusionlab.zoo", "cost": "fusionlab.cost", "optim": "fusionlab.optim"}
_LAZY_ATTR = {"profile": ("fusionlab.profiler", "profile"), "explore": ("fusionlab.widgets", "explore"),
              "KeptSteps": ("fusionlab.profiler", "KeptSteps")}


def __getattr__(name):
    # heavier or optional parts load on first use
    import importlib

    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in _LAZY_ATTR:
        mod, attr = _LAZY_ATTR[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'fusionlab' has no attribute {name!r}")


def load_ipython_extension(ipython):
    """``%load_ext fusionlab``: registers the ``%fusionlab`` magics (safe to call twice)."""
    from .magics import load_ipython_extension as _load

    _load(ipython)
