"""Where generated kernels run: decided once, before anything imports triton.

The Triton interpreter (``TRITON_INTERPRET=1``) must be switched on before ``triton`` is
imported, and a process that has used the interpreter cannot compile for a real GPU
target (the interpreter patches Triton's builder). So fusionlab decides at import:

* ``FUSIONLAB_INTERPRET=1`` forces the interpreter, ``FUSIONLAB_INTERPRET=0`` forbids it;
* otherwise the interpreter is used exactly when torch sees no CUDA device.

Real compiles for GPU targets (``Kernel.inspect``) always run in worker subprocesses
that start without the interpreter.
"""

from __future__ import annotations

import os
import sys
import warnings

FUSIONLAB_DEBUG = int(os.environ.get("FUSIONLAB_DEBUG", "0") or 0)


def _decide_interpreter() -> bool:
    forced = os.environ.get("FUSIONLAB_INTERPRET")
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in ("0", "false", "no", "off")
    import torch

    return not torch.cuda.is_available()


INTERPRET: bool = _decide_interpreter()

if INTERPRET:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        warnings.warn(
            "fusionlab: triton was imported before fusionlab without TRITON_INTERPRET=1, so "
            "generated kernels cannot run in the Triton interpreter in this process. "
            "Import fusionlab first (or set TRITON_INTERPRET=1 before starting Python).",
            RuntimeWarning,
            stacklevel=3,
        )
    os.environ["TRITON_INTERPRET"] = "1"


def executor_name() -> str:
    """Human-readable name of where kernels run in this process."""
    if INTERPRET:
        return "triton-interpreter (CPU)"
    import torch

    return f"triton-jit ({torch.cuda.get_device_name()})"


def debug(level: int, *msg: object) -> None:
    """Print ``msg`` when ``FUSIONLAB_DEBUG >= level`` (1: stages, 2: decisions, 3: code)."""
    if FUSIONLAB_DEBUG >= level:
        print("[fusionlab]", *msg, file=sys.stderr)
