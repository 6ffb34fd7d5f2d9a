"""fusionlab: a Jupyter-first kernel-fusion explorer for PyTorch.

capture -> find_candidates -> FusionPlan -> codegen -> build -> backend -> profile.
"""

from . import _env  # noqa: F401  (decides the Triton interpreter before triton is imported)
from .capture import Capture, CaptureError, capture

__all__ = ["Capture", "CaptureError", "capture"]
__version__ = "0.1.0"
