"""The kernel inspector: what a GPU would run, compiled for real, without a GPU.

:func:`inspect_source` / :func:`inspect_many` compile generated kernels with Triton for a
named NVIDIA target (``"sm_80"``, ``"sm_89"``, ``"sm_90"``, or ``"native"`` for the local
GPU) and return a :class:`CompileReport` per kernel: every stage (Python -> TTIR -> TTGIR ->
LLVM IR -> PTX -> SASS), the registers, spills and shared memory ptxas gave it, and a
*modeled* occupancy. Compiles run in worker subprocesses (``workers.py``): a process that
used the Triton interpreter cannot compile for GPU targets, and a crash or hang in one
compile must not take the others down. Results are kept in a disk cache (``cache.py``).

Binaries: ptxas (``ptxas`` below sm_90, ``ptxas-blackwell`` from sm_90 on, in triton 3.9),
``nvdisasm`` (SASS, annotated with the Python source lines) and ``cuobjdump``
(``-res-usage``) come from the triton wheel (``triton/backends/nvidia/bin``) unless
``TRITON_PTXAS_PATH`` / ``TRITON_PTXAS_BLACKWELL_PATH`` / ``TRITON_NVDISASM_PATH`` /
``TRITON_CUOBJDUMP_PATH`` point elsewhere. Testing aid: ``FUSIONLAB_HIDE_NVIDIA_TOOLS=
"nvdisasm,cuobjdump"`` makes the workers behave as if those binaries were missing.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable

from fusionlab.codegen.source import KernelSource

from .. import _env
from .. import cache as _cache
from .occupancy import SM_LIMITS, model_occupancy
from .report import STAGE_ORDER, CompileReport
from .workers import WorkerPool, default_pool, progress_bar, task_env

TARGETS: dict[str, int] = {"sm_80": 80, "sm_89": 89, "sm_90": 90}
"""Named targets -> compute capability. "native" means the local CUDA GPU."""

# -- targets ----------------------------------------------------------------------------


def _valid_targets_text() -> str:
    return ", ".join(repr(t) for t in (*TARGETS, "native")) + " ('native': the local CUDA GPU)"


def resolve_target(target: str) -> tuple[str, int | None, str | None]:
    """``(label, arch, error)`` for a target name; ``error`` explains an unusable one."""
    if not isinstance(target, str):
        return (
            str(target),
            None,
            f"target must be a string such as 'sm_90'; valid targets: {_valid_targets_text()}",
        )
    t = target.strip().lower()
    if t in TARGETS:
        return t, TARGETS[t], None
    if t == "native":
        try:
            import torch

            if not torch.cuda.is_available():
                return (
                    "native",
                    None,
                    (
                        "target 'native' needs a local CUDA GPU and torch sees none "
                        "(torch.cuda.is_available() is False); compile for a named target instead: "
                        + ", ".join(repr(x) for x in TARGETS)
                    ),
                )
            if getattr(torch.version, "hip", None):
                return (
                    "native",
                    None,
                    (
                        "target 'native' is an AMD GPU; the inspector compiles for NVIDIA targets only: "
                        + ", ".join(repr(x) for x in TARGETS)
                    ),
                )
            major, minor = torch.cuda.get_device_capability()
        except Exception as e:  # noqa: BLE001
            return (
                "native",
                None,
                f"target 'native': could not query the local GPU ({type(e).__name__}: {e})",
            )
        arch = major * 10 + minor
        return f"sm_{arch}", arch, None
    return target, None, f"unknown target {target!r}; valid targets: {_valid_targets_text()}"


# -- turning worker results into reports -----------------------------------------------

_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_STACK = re.compile(r"(\d+) bytes stack frame")
_RE_RES = re.compile(r"\b(REG|SHARED|LOCAL):(\d+)")


_RE_SASS_LINE = re.compile(r'^(\s*)//## File "[^"]*", line (\d+)(.*)$', re.M)


def annotate_sass(sass: str, source: str) -> str:
    """Replace nvdisasm's ``//## File "...", line N`` markers with ``// N: <that Python line>``."""
    lines = source.splitlines()

    def sub(m: re.Match) -> str:
        n = int(m.group(2))
        text = lines[n - 1].strip() if 0 < n <= len(lines) else ""
        return f"{m.group(1)}// {n}: {text}{m.group(3)}"

    return _RE_SASS_LINE.sub(sub, sass)


def _report_from_result(ks: KernelSource, label: str, arch: int, res: dict) -> CompileReport:
    stages = {"triton": ks.source}
    stages.update(res.get("stages") or {})
    if "sass" in stages:
        stages["sass"] = annotate_sass(stages["sass"], ks.source)
    stages = {k: stages[k] for k in (*STAGE_ORDER, *stages) if k in stages}
    rep = CompileReport(
        name=ks.name,
        target=label,
        ok=bool(res.get("ok")),
        error=res.get("error"),
        stages=stages,
        compile_seconds=float(res.get("compile_seconds") or 0.0),
        triton_version=res.get("triton_version") or _env.triton_version() or "unknown",
        notes=list(res.get("notes") or []),
        timings={
            **(res.get("timings") or {}),
            **({"wall": res["wall_seconds"]} if "wall_seconds" in res else {}),
        },
        ptxas_log=res.get("log") or "",
        constexprs=dict(ks.constexprs),
    )
    if not rep.ok:
        return rep
    if res.get("cubin_b64"):
        rep.cubin = base64.b64decode(res["cubin_b64"])
    log = rep.ptxas_log
    res_usage = dict((k, int(v)) for k, v in _RE_RES.findall(res.get("res_usage") or ""))
    if m := _RE_REGS.search(log):
        rep.registers = int(m.group(1))
    elif "REG" in res_usage:
        rep.registers = res_usage["REG"]
    if m := _RE_SPILL.search(log):
        rep.spills = int(m.group(1))
    if m := _RE_STACK.search(log):
        rep.stack_bytes = int(m.group(1))
    rep.local_mem = res_usage.get("LOCAL")
    md = res.get("metadata") or {}
    shared = md.get("shared")
    if shared is not None or "SHARED" in res_usage:
        rep.shared_mem = int(shared or 0) + res_usage.get("SHARED", 0)
    rep.num_warps = int(md.get("num_warps") or ks.num_warps)
    if rep.registers is not None:
        occ = model_occupancy(arch, rep.registers, rep.shared_mem or 0, rep.num_warps)
        if occ is not None:
            rep.occupancy = occ.fraction
            rep.resident_warps = occ.resident_warps
            rep.occupancy_limiter = occ.limiter
        else:
            rep.notes.append(f"no occupancy model for sm_{arch} (known: {sorted(SM_LIMITS)})")
    return rep


def _failed(ks: KernelSource, label: str, error: str) -> CompileReport:
    return CompileReport(
        name=ks.name,
        target=label,
        ok=False,
        error=error,
        stages={"triton": ks.source},
        triton_version=_env.triton_version() or "unknown",
        constexprs=dict(ks.constexprs),
    )


# -- public API ----------------------------------------------------------------------


def inspect_many(
    sources: Iterable[KernelSource],
    target: str = "sm_90",
    *,
    workers: int = 2,
    cache: bool = True,
    timeout: float = 120,
    progress: bool = True,
    options: dict | None = None,
    pool: WorkerPool | None = None,
) -> list[CompileReport]:
    """Compile each kernel for ``target`` in up to ``workers`` worker processes.

    Returns one :class:`CompileReport` per source, in order. A kernel that fails to
    compile, crashes its worker or runs past ``timeout`` seconds gets a failed report
    (``ok=False``, ``error`` says why); the others are unaffected. With ``cache`` (the
    default) reports come from / go to the disk cache (``FUSIONLAB_CACHE_DIR``).
    ``options`` are extra ``triton.compile`` options (e.g. ``{"num_stages": 3}``);
    ``pool`` a :class:`WorkerPool` to use instead of the process-wide one.
    """
    sources = list(sources)
    for ks in sources:
        if not isinstance(ks, KernelSource):
            raise TypeError(f"inspect_many takes KernelSource objects, got {type(ks).__name__}")
    label, arch, err = resolve_target(target)
    if err is not None:
        return [_failed(ks, label, err) for ks in sources]
    n = len(sources)
    if n == 0:
        return []
    tversion = _env.triton_version() or "unknown"
    env = task_env()
    hide = [
        t
        for t in os.environ.get("FUSIONLAB_HIDE_NVIDIA_TOOLS", "").replace(" ", "").split(",")
        if t
    ]
    key_options = {"options": options or {}, "env": env, "hide": hide}
    # a kernel's own pipeline depth (matmul kernels choose theirs from M, N, K) unless `options` say
    kernel_options = [{**({"num_stages": ks.num_stages} if ks.num_stages else {}), **(options or {})}
                      for ks in sources]
    keys = [_cache.inspect_key(ks, label, tversion, {**key_options, "options": o})
            for ks, o in zip(sources, kernel_options)]

    reports: list[CompileReport | None] = [None] * n
    notes: dict[int, list[str]] = {}
    bar = progress_bar(n, f"compiling for {label}", progress)
    try:
        todo: dict[str, list[int]] = {}  # key -> indices (identical kernels compile once)
        for i, key in enumerate(keys):
            if cache:
                try:
                    payload = _cache.get(key)
                except _cache.CacheCorruptError as e:
                    payload = None
                    notes.setdefault(i, []).append(
                        f"cache entry was corrupt ({e.reason}); rebuilt it"
                    )
                except OSError as e:
                    payload = None
                    notes.setdefault(i, []).append(f"could not read the cache ({e})")
                if payload is not None:
                    try:
                        rep = CompileReport.from_dict(payload)
                        rep.cached = True
                        reports[i] = rep
                        if bar is not None:
                            bar.update(1)
                        continue
                    except (TypeError, ValueError) as e:
                        notes.setdefault(i, []).append(f"unreadable cache entry ({e}); rebuilt it")
            todo.setdefault(key, []).append(i)

        if todo:
            order = list(todo)
            tasks = []
            for key in order:
                ks = sources[todo[key][0]]
                tasks.append(
                    {
                        "name": ks.name,
                        "source": ks.source,
                        "signature": dict(ks.signature),
                        "constexprs": dict(ks.constexprs),
                        "int_args": dict(ks.int_args),
                        "num_warps": int(ks.num_warps),
                        "arch": arch,
                        "options": kernel_options[todo[key][0]],
                        "env": env,
                        "hide_tools": hide,
                    }
                )
            p = pool if pool is not None else default_pool(workers)

            def done(j: int, res: dict) -> None:
                if bar is not None:
                    bar.update(len(todo[order[j]]))

            results = p.map(tasks, timeout=timeout, workers=workers, on_done=done)
            for key, res in zip(order, results):
                idx = todo[key]
                rep = _report_from_result(sources[idx[0]], label, arch, res)
                if cache and rep.ok:
                    try:
                        _cache.put(key, rep.to_dict())
                    except OSError as e:
                        rep.notes.append(f"could not write the cache ({e})")
                for i in idx:
                    r = rep if i == idx[0] else CompileReport.from_dict(rep.to_dict())
                    if i != idx[0]:
                        r.name = sources[i].name
                    reports[i] = r
        for i, extra in notes.items():
            reports[i].notes[:0] = extra
    finally:
        if bar is not None:
            bar.close()
    return reports  # type: ignore[return-value]


def inspect_source(
    ks: KernelSource,
    target: str = "sm_90",
    *,
    cache: bool = True,
    timeout: float = 120,
    options: dict | None = None,
) -> CompileReport:
    """Compile one kernel for ``target`` (see :func:`inspect_many`) and return its report."""
    return inspect_many(
        [ks], target, workers=1, cache=cache, timeout=timeout, progress=False, options=options
    )[0]
