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

import contextlib
import gc
import os
import sys
import threading
import warnings

FUSIONLAB_DEBUG = int(os.environ.get("FUSIONLAB_DEBUG", "0") or 0)


MIN_TRITON = (3, 2)


def triton_version() -> str | None:
    """The version of the triton that `import triton` would load, without importing it."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    if spec.origin and spec.origin.endswith(".py"):
        try:
            with open(spec.origin) as f:
                found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read())
            if found:
                return found.group(1)
        except OSError:
            pass
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_triton_version() -> None:
    """Fail at import, naming the problem, when triton is missing or too old for fusionlab."""
    version = triton_version()
    if version is None:
        raise ImportError("fusionlab needs triton >= 3.2 (pip install triton); it is not installed")
    if version == "unknown":
        return
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_TRITON:
        raise ImportError(
            f"fusionlab needs triton >= {'.'.join(map(str, MIN_TRITON))}, found triton {version} "
            "(pip install -U triton)"
        )


_check_triton_version()


def _decide_interpreter() -> bool:
    forced = os.environ.get("FUSIONLAB_INTERPRET")
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in ("0", "false", "no", "off")
    import torch

    return not torch.cuda.is_available()


INTERPRET: bool = _decide_interpreter()

def _reinterpret_triton_language() -> None:
    """Triton was imported before the interpreter was switched on (``import torch._inductor``
    does that): its standard library (``tl.sum``, ``tl.max`` ...) was then decorated as
    compiled JIT functions, which an interpreted kernel cannot call. Re-wrap them the way
    ``@triton.jit`` does under ``TRITON_INTERPRET=1``."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for mod in {tl, tl.standard, tl.math}:
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction):
                setattr(mod, name, InterpretedFunction(obj.fn))


if INTERPRET:
    preimported = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
    os.environ["TRITON_INTERPRET"] = "1"
    if preimported:
        try:
            _reinterpret_triton_language()
        except Exception as e:  # noqa: BLE001 - say what to do instead of failing later
            warnings.warn(
                "fusionlab: triton was imported before fusionlab without TRITON_INTERPRET=1 and "
                f"could not be switched to the interpreter ({e}); generated kernels will fail "
                "their checks and run unfused. Import fusionlab first.",
                RuntimeWarning,
                stacklevel=3,
            )


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


_gc_lock = threading.Lock()
_gc_pauses = 0  # open gc_paused() blocks, all threads
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off inside (as torch.distributed's state-dict code does).

    A process that has traced and compiled a model holds millions of long-lived objects, and a
    full collection walks them all: 0.3 s here on the Llama block, 0.8 s of the 1.1 s of
    collections in a warm start, set off by the allocations of lowering and compiling. Inside,
    nothing is collected; objects are still freed when their last reference goes, and cycles
    made inside are collected after, as usual. Nested and concurrent blocks pause it once; a
    collector the process had turned off stays off."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()
