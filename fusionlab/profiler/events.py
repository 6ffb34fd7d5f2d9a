"""One step of each variant under torch.profiler, and what its events say.

``profiled_steps`` runs one more training step of each variant under ``torch.profiler``
and fills in its result: the largest ops and kernels (self time), peak memory (CUDA
allocator on a GPU, the profiler's CPU allocator events on CPU), eager's (and the reference rows') count of ATen
ops that compute, and optionally a Chrome trace of all variants side by side. Every
reading is best effort: a profiler that fails leaves the timed figures as they are.

Kineto, torch.profiler's C++ half, writes log lines straight to file descriptor 2
(``USDT:... profiler_start``, ``STAGE:... Completed Stage``), which ipykernel forwards to
the notebook; ``KINETO_LOG_LEVEL`` does not silence the USDT ones. So the profiled steps run
with fd 2 sent to a temporary file (:func:`quiet_kineto`), and every other line written
there is passed on to ``sys.stderr``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, record_function
from torch.profiler import profile as tprofile

from .. import _env
from ..executors import InductorGraphExecutor
from .harness import FWD_BWD, Variant
from .results import VariantResult

# ATen ops that launch no compute kernel: views, metadata, allocation
_NO_KERNEL = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "expand_as", "as_strided",
    "unsqueeze", "squeeze", "alias", "detach", "detach_", "slice", "select", "split", "split_with_sizes",
    "unbind", "chunk", "narrow", "view_as", "empty", "empty_like", "empty_strided", "resize_", "lift_fresh",
    "contiguous", "_reshape_alias", "unflatten", "flatten", "numpy_T", "_to_copy_noop", "set_", "to",
    "_has_compatible_shallow_copy_type", "is_nonzero", "item", "_local_scalar_dense", "result_type",
}


# kineto's own log lines: "USDT:2026-12-01 12:22:25 24751:24751 SyncActivityProfilerHandler.cpp:52] ..."
KINETO_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \S+\.(?:cpp|h):\d+\]")


@contextlib.contextmanager
def quiet_kineto():
    """Run the block with fd 2 sent to a temporary file; pass on what is not a kineto log line.

    Python's own ``sys.stderr`` writes inside the block are passed on too (in order, after
    the block). Where fd 2 cannot be duplicated the block runs as it is."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [ln for ln in text.splitlines(keepends=True) if not KINETO_LINE.match(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def profiled_steps(live: list[Variant], cuda: bool, trace) -> str | None:
    """One step of each variant under torch.profiler: top kernels, memory; optional Chrome trace.

    ``trace``: False, True (a file in the temp folder) or a path. Returns the trace's path."""
    with quiet_kineto():
        for v in live:
            try:
                profile_one_step(v, cuda)
            except Exception as e:  # noqa: BLE001 - profiling detail is best effort
                _env.debug(1, f"torch.profiler step of {v.name} failed: {e}")
        return chrome_trace(live, cuda, trace) if trace else None


def _activities(cuda: bool) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])


def profile_one_step(v: Variant, cuda: bool) -> None:
    """One step of `v` under torch.profiler; fills in its top kernels, peak memory (and eager's kernel count)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with tprofile(activities=_activities(cuda), profile_memory=not cuda) as prof:
        with record_function(f"fusionlab.profile: {v.name} step"):
            v.step(mark=True)
        if cuda:
            torch.cuda.synchronize()
    if not cuda and (v.name == "eager" or v.result.reference):  # eager forward/backward: count its ATen ops
        n = count_aten_kernels(prof)
        if n is not None:
            v.result.kernels_per_step = n
            v.result.kernels_how = "ATen compute ops in one profiled step (torch.profiler)"
    if cuda:
        v.result.peak_memory = torch.cuda.max_memory_allocated() - base
        v.result.peak_memory_how = "torch.cuda.max_memory_allocated above the step's start"
    else:
        v.result.peak_memory = peak_cpu_bytes(prof)
        v.result.peak_memory_how = "torch.profiler CPU allocator events (peak above the step's start)"
    top_kernels(v.result, prof, cuda)
    if isinstance(v.executor, InductorGraphExecutor):
        label_functions(v.result, v.executor)


def chrome_trace(live: list[Variant], cuda: bool, trace) -> str | None:
    """One more step of every variant in one session: one trace, the variants side by side."""
    if isinstance(trace, (str, os.PathLike)):
        path = os.fspath(trace)
    else:
        path = os.path.join(tempfile.gettempdir(), f"fusionlab-trace-{os.getpid()}-{int(time.time())}.json")
    try:
        with tprofile(activities=_activities(cuda)) as prof:
            for v in live:
                with record_function(f"fusionlab.profile: {v.name} step"):
                    v.step()
                if cuda:
                    torch.cuda.synchronize()
        prof.export_chrome_trace(path)
    except Exception as e:  # noqa: BLE001
        _env.debug(1, f"Chrome trace failed: {e}")
        return None
    return path


def peak_cpu_bytes(prof) -> int | None:
    """Largest CPU allocator total above the start of the profiled region (None: no memory events)."""
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:  # noqa: BLE001 - private API, best effort
        return None
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if "CPU" not in str(e.device_type()):
            continue
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def count_aten_kernels(prof) -> int | None:
    """Leaf ATen ops that compute (no views/allocations) inside the forward+backward range."""
    try:
        events = list(prof.events())
        window = [e for e in events if e.name == FWD_BWD]
        if not window:
            return None
        lo, hi = window[0].time_range.start, window[0].time_range.end
        n = 0
        for e in events:
            if not e.name.startswith("aten::") or not (lo <= e.time_range.start <= hi):
                continue
            if any(c.name.startswith("aten::") for c in e.cpu_children):
                continue
            if e.name[len("aten::"):] in _NO_KERNEL:
                continue
            n += 1
        return n
    except Exception:  # noqa: BLE001 - best effort
        return None


def top_kernels(r: VariantResult, prof, cuda: bool) -> None:
    """The 15 largest of one profiled step: CUDA kernels by device time (and their count), or CPU ops by self time."""
    avg = prof.key_averages()
    skip = ("fusionlab.profile", "ProfilerStep", "[memory]")
    if cuda:
        kern = [e for e in avg if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        if not kern:  # older layouts: device-only events have device time and no CPU time
            kern = [e for e in avg if getattr(e, "self_device_time_total", 0) > 0 and not e.cpu_time_total]
        r.kernels_measured = int(sum(e.count for e in kern))
        kern.sort(key=lambda e: -getattr(e, "self_device_time_total", 0))
        r.top_kernels = [(e.key, int(e.count), float(getattr(e, "self_device_time_total", 0))) for e in kern[:15]]
    else:
        rows = [e for e in avg if not e.key.startswith(skip)]
        rows.sort(key=lambda e: -e.self_cpu_time_total)
        r.top_kernels = [(e.key, int(e.count), float(e.self_cpu_time_total)) for e in rows[:15]]


def label_functions(r: VariantResult, ex: InductorGraphExecutor) -> None:
    """Name the groups (or single ops) each generated C++ function in the top list runs."""
    runs: dict[str, list[str]] = {}
    for g in ex.graphs:
        for fn, loops in g.functions().items():
            labels = runs.setdefault(fn, [])
            for k in loops:
                label = k.group or f"op {k.nodes[0]}"
                if label not in labels:
                    labels.append(label)
    r.top_kernels = [(f"{name} [{', '.join(runs[name])}]" if name in runs else name, n, t)
                     for name, n, t in r.top_kernels]
