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
import html
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

from fusionlab.codegen.source import KernelSource

from .. import cache as _cache
from .workers import WorkerPool, default_pool, progress_bar, task_env

TARGETS: dict[str, int] = {"sm_80": 80, "sm_89": 89, "sm_90": 90}
"""Named targets -> compute capability. "native" means the local CUDA GPU."""

STAGE_ORDER = ("triton", "ttir", "ttgir", "llir", "ptx", "sass")


@dataclass(frozen=True)
class GPUSpec:
    """Per-SM limits used by the occupancy model (CUDA programming guide, compute capabilities table)."""

    name: str
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    smem_per_sm: int = 164 * 1024  # bytes usable for shared memory per SM
    max_smem_per_block: int = 163 * 1024
    reserved_smem_per_block: int = 1024  # the CUDA runtime keeps 1 KiB per block (sm_80+)
    reg_alloc_unit: int = 256  # registers are allocated per warp, in units of 256
    max_regs_per_thread: int = 255


GPU_SPECS: dict[int, GPUSpec] = {
    80: GPUSpec("A100 class (sm_80)"),
    86: GPUSpec(
        "RTX 30 class (sm_86)",
        max_warps_per_sm=48,
        max_blocks_per_sm=16,
        smem_per_sm=100 * 1024,
        max_smem_per_block=99 * 1024,
    ),
    89: GPUSpec(
        "L4/L40/RTX 40 class (sm_89)",
        max_warps_per_sm=48,
        max_blocks_per_sm=24,
        smem_per_sm=100 * 1024,
        max_smem_per_block=99 * 1024,
    ),
    90: GPUSpec("H100/H200 class (sm_90)", smem_per_sm=228 * 1024, max_smem_per_block=227 * 1024),
}


@dataclass
class Occupancy:
    """Modeled residency of one kernel on one SM (no GPU was asked)."""

    blocks: int
    resident_warps: int
    max_warps: int
    limiter: str  # "registers" | "shared memory" | "warps" | "blocks"
    by_registers: int
    by_shared_memory: int
    by_warps: int

    @property
    def fraction(self) -> float:
        return self.resident_warps / self.max_warps if self.max_warps else 0.0


def model_occupancy(arch: int, registers: int, shared_mem: int, num_warps: int) -> Occupancy | None:
    """Resident warps per SM for a kernel using ``registers`` per thread, ``shared_mem`` bytes
    of shared memory per block and ``num_warps`` warps per block, on ``sm_<arch>``.

    Modeled, like CUDA's occupancy calculator: registers are allocated per warp, rounded
    up to 256; blocks per SM are the minimum of what registers, shared memory (plus the
    1 KiB the runtime reserves per block), the warp limit and the block limit allow.
    None when the architecture is not in :data:`GPU_SPECS`.
    """
    spec = GPU_SPECS.get(arch)
    if spec is None or num_warps <= 0:
        return None
    regs = max(1, registers)
    regs_per_warp = math.ceil(regs * 32 / spec.reg_alloc_unit) * spec.reg_alloc_unit
    by_regs = (
        (spec.regs_per_sm // regs_per_warp) // num_warps if regs <= spec.max_regs_per_thread else 0
    )
    if shared_mem > spec.max_smem_per_block:
        by_smem = 0
    else:
        by_smem = spec.smem_per_sm // (shared_mem + spec.reserved_smem_per_block)
    by_warps = spec.max_warps_per_sm // num_warps
    limits = {  # on a tie, name the SM's own limit rather than the kernel's use
        "warps": by_warps,
        "blocks": spec.max_blocks_per_sm,
        "registers": by_regs,
        "shared memory": by_smem,
    }
    limiter = min(limits, key=lambda k: limits[k])
    blocks = limits[limiter]
    return Occupancy(
        blocks, blocks * num_warps, spec.max_warps_per_sm, limiter, by_regs, by_smem, by_warps
    )


@dataclass
class CompileReport:
    """What one kernel compiles to for one target.

    ``stages`` maps a stage name to its text, in pipeline order: ``"triton"`` (the Python
    module), ``"ttir"``, ``"ttgir"``, ``"llir"``, ``"ptx"`` and ``"sass"`` (annotated with
    the Python source lines). ``cubin`` holds the binary. ``registers`` (per thread) and
    ``spills`` (bytes of spill stores) come from ptxas; ``shared_mem`` is bytes per block;
    ``occupancy`` (resident warps / the SM's maximum) and ``resident_warps`` are *modeled*
    from those numbers and the target's limits (:func:`model_occupancy`), not measured.
    """

    name: str
    target: str
    ok: bool
    error: str | None = None
    stages: dict[str, str] = field(default_factory=dict)
    registers: int | None = None
    spills: int | None = None
    shared_mem: int | None = None
    num_warps: int | None = None
    occupancy: float | None = None
    resident_warps: int | None = None
    occupancy_limiter: str | None = None
    compile_seconds: float = 0.0
    cached: bool = False
    triton_version: str = ""
    stack_bytes: int | None = None
    local_mem: int | None = None
    constexprs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds in the worker, by step
    ptxas_log: str = ""
    cubin: bytes | None = field(default=None, repr=False)

    # -- views ---------------------------------------------------------------------

    @property
    def sass(self) -> str | None:
        return self.stages.get("sass")

    @property
    def ptx(self) -> str | None:
        return self.stages.get("ptx")

    def stage(self, name: str) -> str:
        """The text of one stage (KeyError listing the available ones)."""
        if name not in self.stages:
            raise KeyError(f"no stage {name!r} in this report; it has {list(self.stages)}")
        return self.stages[name]

    def _resource_rows(self) -> list[tuple[str, str]]:
        def b(n):
            return "?" if n is None else f"{n:,} B"

        occ = "?"
        if self.occupancy is not None:
            occ = (
                f"{self.resident_warps} warps/SM ({self.occupancy:.0%}), "
                f"limited by {self.occupancy_limiter} (modeled)"
            )
        rows = [
            ("registers / thread", "?" if self.registers is None else str(self.registers)),
            ("spill stores", b(self.spills)),
            ("shared memory / block", b(self.shared_mem)),
            ("num_warps", "?" if self.num_warps is None else str(self.num_warps)),
            ("occupancy", occ),
        ]
        if self.stack_bytes:
            rows.append(("stack frame", b(self.stack_bytes)))
        if self.constexprs:
            rows.append(("constexprs", ", ".join(f"{k}={v}" for k, v in self.constexprs.items())))
        timing = f"{self.compile_seconds:.2f} s" + (
            " (served from the disk cache)" if self.cached else ""
        )
        rows.append(("compile time", timing))
        rows.append(("triton", self.triton_version or "?"))
        return rows

    def to_text(self) -> str:
        """A readable summary (no stage texts; see ``stages``)."""
        head = f"CompileReport {self.name} @ {self.target}: " + ("ok" if self.ok else "FAILED")
        lines = [head]
        if self.error:
            err = self.error.strip().splitlines()
            lines.append("  error: " + err[0])
            lines += ["    " + ln for ln in err[1:40]]
            if len(err) > 40:
                lines.append(f"    ... ({len(err) - 40} more lines)")
        if self.ok:
            for k, v in self._resource_rows():
                lines.append(f"  {k + ':':<23}{v}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.stages:
            stage_list = ", ".join(
                f"{k} ({len(v.splitlines())} lines)" for k, v in self.stages.items()
            )
            lines.append(f"  stages: {stage_list}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        e = html.escape
        status = (
            "<span style='color:#1a7f37'>ok</span>"
            if self.ok
            else "<span style='color:#cf222e'>FAILED</span>"
        )
        out = [
            "<div class='fusionlab-compile-report'>",
            f"<b>{e(self.name)}</b> @ <code>{e(self.target)}</code>: {status}",
        ]
        if self.error:
            out.append(f"<pre style='color:#cf222e;white-space:pre-wrap'>{e(self.error)}</pre>")
        if self.ok:
            out.append("<table>")
            for k, v in self._resource_rows():
                out.append(
                    f"<tr><th style='text-align:left'>{e(k)}</th><td style='text-align:left'>{e(v)}</td></tr>"
                )
            out.append("</table>")
        if self.notes:
            out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in self.notes) + "</ul>")
        for name, text in self.stages.items():
            n = len(text.splitlines())
            out.append(
                f"<details><summary><code>{e(name)}</code> ({n} lines)</summary>"
                f"<pre style='max-height:40em;overflow:auto'>{e(text)}</pre></details>"
            )
        if self.ptxas_log.strip():
            out.append(
                f"<details><summary>compiler log</summary><pre>{e(self.ptxas_log)}</pre></details>"
            )
        out.append("</div>")
        return "\n".join(out)

    # -- (de)serialisation for the cache ---------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cubin"] = base64.b64encode(self.cubin).decode("ascii") if self.cubin else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CompileReport:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("cubin"):
            d["cubin"] = base64.b64decode(d["cubin"])
        return cls(**d)


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


def _triton_version() -> str:
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # noqa: BLE001
        import triton

        return triton.__version__


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
        triton_version=res.get("triton_version") or _triton_version(),
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
            rep.notes.append(f"no occupancy model for sm_{arch} (known: {sorted(GPU_SPECS)})")
    return rep


def _failed(ks: KernelSource, label: str, error: str) -> CompileReport:
    return CompileReport(
        name=ks.name,
        target=label,
        ok=False,
        error=error,
        stages={"triton": ks.source},
        triton_version=_triton_version(),
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
    tversion = _triton_version()
    env = task_env()
    hide = [
        t
        for t in os.environ.get("FUSIONLAB_HIDE_NVIDIA_TOOLS", "").replace(" ", "").split(",")
        if t
    ]
    key_options = {"options": options or {}, "env": env, "hide": hide}
    keys = [_cache.inspect_key(ks, label, tversion, key_options) for ks in sources]

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
                        "num_warps": int(ks.num_warps),
                        "arch": arch,
                        "options": options or {},
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
