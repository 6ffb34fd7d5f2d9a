"""What a profile can be asked for, defined once: variants, executors, steps, and their options.

``python -m fusionlab profile`` and ``%fusionlab profile`` build their parsers with
:func:`add_profile_options` (one argparse definition, one set of defaults and help texts);
the explorer's profile tab reads :data:`EXECUTORS` and :data:`STEPS`. Nothing here imports
the profiler: the CLI, the magic and the widgets can show the choices before any profiling.
``resolve_executor`` turns a name into what :func:`fusionlab.profile` runs.

The magic shares plain argparse rather than ``IPython.core.magic_arguments``: the CLI runs
without IPython, and one parser definition serves both (magic_arguments decorates one
magic function and would leave the CLI with a second copy of the options).
"""

from __future__ import annotations

import argparse
import os

VARIANTS = ("eager", "fusionlab", "inductor", "unfused")  # what ``compare=`` can name
DEFAULT_COMPARE = ("eager", "fusionlab", "inductor")
EXECUTORS = ("auto", "inductor", "inductor-groups", "triton")  # the names ``executor=`` takes
STEPS = 20  # measured steps per variant: enough samples for a median and an IQR
WARMUP = 5  # warm-up steps per variant, after the first (compiling) step
BUDGET_S = 20.0  # seconds of timed rounds: past the requested steps, measure until every verdict is decided
MAX_STEPS = 400  # measured steps per variant, at most, however much budget is left
BUDGET_ENV = "FUSIONLAB_PROFILE_BUDGET"  # overrides BUDGET_S where no budget is given (tests set it low)


def default_budget() -> float:
    """The measuring budget a profile gets when none is given: $FUSIONLAB_PROFILE_BUDGET or BUDGET_S.

    Twenty seconds: on a 2-core CPU a small model's training step takes 1-50 ms, so the
    budget holds hundreds of interleaved rounds, enough to tell a 5 % difference from
    noise; a step that takes seconds gets its requested steps and a verdict only if it is
    clear in them."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return BUDGET_S
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be a number of seconds, got {text!r}") from None


def parse_compare(text: str) -> tuple[str, ...]:
    """ "eager,fusionlab" -> ("eager", "fusionlab"); ValueError on an unknown or empty list."""
    names = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    if not names or any(c not in VARIANTS for c in names):
        raise ValueError(f"compare must name variants among {', '.join(VARIANTS)}; got {text!r}")
    return names


def resolve_executor(executor, device):
    """(the executor for the fusionlab variant, its label); None stands for fusionlab's Triton kernels.

    ``executor``: a name in :data:`EXECUTORS` ("auto": Triton kernels on a GPU, "inductor" on
    CPU or under the interpreter) or a callable (see :mod:`fusionlab.executors`).
    """
    from . import _env

    if executor is None or executor == "auto":
        executor = "triton" if (device.type == "cuda" and not _env.INTERPRET) else "inductor"
    if executor == "triton":
        return None, _env.executor_name()
    if executor in ("inductor", "inductor-groups"):
        from .executors import InductorGraphExecutor, InductorGroupExecutor

        ex = InductorGraphExecutor() if executor == "inductor" else InductorGroupExecutor()
        return ex, ex.name
    if callable(executor):
        return executor, getattr(executor, "name", type(executor).__name__)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)} or a callable, got {executor!r}")


# --------------------------------------------------------------------------- argparse


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {n}")
        return n

    return parse


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return x


def _compare(text: str) -> tuple[str, ...]:
    try:
        return parse_compare(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _gpu(text: str) -> str:
    from .cost import get_gpu

    try:
        get_gpu(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_timing_options(p: argparse.ArgumentParser) -> None:
    """--steps and --warmup (also all the ``%%fusionlab profile`` cell magic takes)."""
    p.add_argument("--steps", type=_count(1), default=STEPS, metavar="N",
                   help=f"measured steps at least (default {STEPS})")
    p.add_argument("--warmup", type=_count(0), default=WARMUP, metavar="N",
                   help=f"warm-up steps before them (default {WARMUP})")


def add_budget_options(p: argparse.ArgumentParser) -> None:
    """--budget and --max-steps: keep measuring until each comparison with eager is decided."""
    p.add_argument("--budget", type=_seconds, default=None, metavar="SECONDS",
                   help=f"after the requested steps, keep measuring interleaved rounds while a comparison "
                        f"with eager is undecided, for up to this many seconds of timed rounds "
                        f"(default {BUDGET_S:g}, or ${BUDGET_ENV}; 0: exactly --steps)")
    p.add_argument("--max-steps", type=_count(1), default=MAX_STEPS, metavar="N",
                   help=f"measured steps per variant at most (default {MAX_STEPS})")


def add_profile_options(p: argparse.ArgumentParser) -> None:
    """The options of a training-step profile, shared by the CLI and the magic."""
    add_timing_options(p)
    add_budget_options(p)
    p.add_argument("--fuse", default="all", help="'all', 'none' or comma-separated candidate ids/patterns")
    p.add_argument("--compare", type=_compare, default=DEFAULT_COMPARE, metavar="V1,V2",
                   help=f"variants among {','.join(VARIANTS)} (default {','.join(DEFAULT_COMPARE)})")
    p.add_argument("--gpu", type=_gpu, default="h100",
                   help="GPU spec for the modeled columns: h100, a100, t4, rtx4090 (default h100)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adam", "sgd", "none"),
                   help="the same in every variant (default adamw)")
    p.add_argument("--executor", default="auto", choices=EXECUTORS,
                   help="what runs the fusionlab variant: auto (Triton on a GPU, inductor on CPU), "
                        "inductor (whole graphs, Inductor fusing only inside the groups), "
                        "inductor-groups (each group compiled alone, called from Python), "
                        "triton (fusionlab's kernels; the interpreter on CPU: correct, slow)")
    p.add_argument("--html", default=None, metavar="PATH", help="write a stand-alone HTML report here")
    p.add_argument("--trace", default=False, nargs="?", const=True, metavar="PATH",
                   help="export a Chrome trace of one profiled step (optionally: its path)")
