"""Launch configs of a generated kernel: list them without a GPU, time them with one.

Codegen gives every kernel a few GPU launch configs derived from its shapes
(``KernelSource.configs``: block sizes plus ``num_warps``; the first is the default).

* Without a GPU, :func:`inspect_configs` compiles the kernel once per config for a named
  target (in the compile workers, through the disk cache) and returns a
  :class:`ConfigTable`: per config the registers, spills and shared memory ptxas gave it
  and the *modeled* occupancy.
* With a GPU, :func:`tune` times each config with ``triton.testing.do_bench`` and keeps
  the fastest in the disk cache, keyed by the kernel's digest and the GPU's name;
  ``Kernel.__call__`` then launches CUDA inputs with it (:func:`cached_best_config`).
"""

from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass, field

from fusionlab.codegen.source import KernelSource

from .. import _env
from .. import cache as _cache
from ._table import html_table, text_lines
from .compile import CompileReport, inspect_many
from .summary import add_tool_notes

_LAUNCH = ("num_warps", "num_stages")  # launch options in a config; every other key is a constexpr


def default_config(ks: KernelSource) -> dict[str, int]:
    """The config the launcher uses on a GPU when none is given."""
    out = {**ks.constexprs, "num_warps": int(ks.num_warps)}
    if ks.num_stages is not None:
        out["num_stages"] = int(ks.num_stages)
    return {k: v for k, v in out.items() if k != "DOT_FP32"}


def candidate_configs(ks: KernelSource) -> list[dict[str, int]]:
    """``ks.configs`` (the default first, no duplicates), or just the default."""
    out = [default_config(ks)]
    for c in ks.configs:
        full = {**{k: v for k, v in ks.constexprs.items() if k != "DOT_FP32"}, **c}
        full.setdefault("num_warps", int(ks.num_warps))
        if ks.num_stages is not None:
            full.setdefault("num_stages", int(ks.num_stages))
        if full not in out:
            out.append(full)
    return out


def with_config(ks: KernelSource, config: dict) -> KernelSource:
    """``ks`` compiled with ``config``'s block sizes and num_warps (same module text)."""
    consts = {**ks.constexprs, **{k: int(v) for k, v in config.items() if k not in _LAUNCH}}
    stages = config.get("num_stages", ks.num_stages)
    return dataclasses.replace(
        ks, constexprs=consts, num_warps=int(config.get("num_warps", ks.num_warps)),
        num_stages=None if stages is None else int(stages),
    )


_RE_GRID = re.compile(r'triton\.cdiv\((\d+), meta\["XBLOCK"\]\)')


def programs(ks: KernelSource, config: dict) -> int | None:
    """Program instances (thread blocks) the launcher starts with ``config``, if known."""
    m = _RE_GRID.search(ks.source)
    xb = config.get("XBLOCK")
    if m is None or not xb:
        return None
    return -(-int(m.group(1)) // int(xb))


def config_text(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


# -- without a GPU: compile each config ------------------------------------------------------


class ConfigTable(list):
    """``[(config, CompileReport), ...]`` for one kernel and target, shown as a table.

    Registers, spills and shared memory come from ptxas; occupancy is modeled
    (resident warps per SM from those numbers and the target's limits), not measured.
    """

    def __init__(self, ks: KernelSource, target: str, rows, best: dict | None = None):
        super().__init__(rows)
        self.kernel = ks.name
        self.kind = ks.kind
        self.target = target
        self.default = default_config(ks)
        self.best = best  # a tuned config (from Kernel.tune), if known
        self._programs = [programs(ks, c) for c, _ in rows]

    @property
    def configs(self) -> list[dict]:
        return [c for c, _ in self]

    @property
    def reports(self) -> list[CompileReport]:
        return [r for _, r in self]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["config", "programs", "registers", "spills", "shared mem", "occupancy (modeled)", ""]
        rows = []
        for (cfg, rep), progs in zip(self, self._programs):
            marks = []
            if cfg == self.default:
                marks.append("default")
            if self.best is not None and cfg == self.best:
                marks.append("tuned best")
            if rep.ok:
                occ = "?"
                if rep.occupancy is not None:
                    occ = (
                        f"{rep.resident_warps} warps/SM ({rep.occupancy:.0%}), "
                        f"{rep.occupancy_limiter}"
                    )
                cells = [
                    "?" if rep.registers is None else str(rep.registers),
                    "?" if rep.spills is None else f"{rep.spills} B",
                    "?" if rep.shared_mem is None else f"{rep.shared_mem:,} B",
                    occ,
                ]
            else:
                err = (rep.error or "failed").strip().splitlines()[0]
                cells = ["FAILED", "", "", err[:100]]
            rows.append(
                [config_text(cfg), "?" if progs is None else str(progs), *cells, ", ".join(marks)]
            )
        return head, rows

    def to_text(self) -> str:
        head, rows = self._cells()
        lines = [
            f"launch configs of {self.kernel} ({self.kind}) compiled for {self.target}; "
            "occupancy is modeled, not measured"
        ]
        return "\n".join(lines + text_lines(head, rows))

    __repr__ = to_text

    def _repr_html_(self) -> str:
        e = html.escape
        head, rows = self._cells()
        return (f"<b>{e(self.kernel)}</b> ({e(self.kind)}): launch configs compiled for "
                f"<code>{e(self.target)}</code> (occupancy modeled, not measured)\n" + html_table(head, rows))


def inspect_configs_many(
    sources: list[KernelSource],
    target: str = "sm_90",
    *,
    workers: int = 2,
    best: list[dict | None] | None = None,
    **options,
) -> list[ConfigTable]:
    """One :class:`ConfigTable` per kernel; all compiles go to the workers as one batch."""
    plan = [(ks, candidate_configs(ks)) for ks in sources]
    flat = [with_config(ks, c) for ks, cfgs in plan for c in cfgs]
    options.setdefault("progress", False)
    reps = inspect_many(flat, target, workers=workers, **options)
    add_tool_notes(reps, target)
    out, i = [], 0
    for j, (ks, cfgs) in enumerate(plan):
        rows = list(zip(cfgs, reps[i : i + len(cfgs)]))
        i += len(cfgs)
        out.append(ConfigTable(ks, target, rows, best=best[j] if best else None))
    return out


def inspect_configs(
    ks: KernelSource, target: str = "sm_90", *, workers: int = 2, best: dict | None = None, **options
) -> ConfigTable:
    """Compile ``ks`` once per candidate config for ``target``; see :class:`ConfigTable`.

    ``options`` go to :func:`~fusionlab.inspect.compile.inspect_many` (``pool``, ``cache``...);
    ``best`` marks a tuned config in the table.
    """
    return inspect_configs_many([ks], target, workers=workers, best=[best], **options)[0]


# -- with a GPU: time each config --------------------------------------------------------------


@dataclass
class TuneResult:
    """Measured time of each launch config of one kernel on one GPU (``triton.testing.do_bench``)."""

    kernel: str
    device: str
    best: dict
    timings: list = field(default_factory=list)  # [(config, ms or None, error or None)]
    cached: bool = False

    def to_text(self) -> str:
        src = " (from the disk cache)" if self.cached else ""
        lines = [f"tuned {self.kernel} on {self.device}{src}: best {config_text(self.best)}"]
        for cfg, ms, err in self.timings:
            mark = "  <- best" if cfg == self.best else ""
            t = f"{ms * 1000:9.1f} us" if ms is not None else f"FAILED: {err}"
            lines.append(f"  {config_text(cfg):<40} {t}{mark}")
        return "\n".join(lines)

    __repr__ = to_text

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(self.to_text()) + "</pre>"


def _tune_key(ks: KernelSource, device: str, configs: list[dict]) -> str:
    return _cache.make_key("tune", ks.digest, device, _env.triton_version() or "unknown", configs)


# Tuned configs share the "inspect" namespace of the disk cache (their keys differ), so
# ``python -m fusionlab cache info|clear`` covers them.
_NAMESPACE = "inspect"


def cached_best_config(ks: KernelSource, device: str) -> dict | None:
    """The tuned config of ``ks`` on the GPU named ``device``, if one is cached."""
    try:
        payload = _cache.get(_tune_key(ks, device, candidate_configs(ks)), _NAMESPACE)
    except (_cache.CacheCorruptError, OSError, ValueError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("best"), dict):
        return payload["best"]
    return None


def tune(kernel, inputs=None, *, cache: bool = True, warmup: int = 25, rep: int = 100) -> TuneResult:
    """Time ``kernel`` with each candidate config on the local CUDA GPU; keep the fastest.

    ``inputs`` default to random tensors with the captured shapes, dtypes and strides.
    The result is cached on disk (kernel digest + GPU name), and ``kernel.best_config``
    is set, so later CUDA launches of this kernel use it.
    """
    import torch
    import triton.testing

    if not torch.cuda.is_available():
        raise RuntimeError(
            "Kernel.tune needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is "
            "False). Without one, Kernel.inspect_configs('sm_90') compiles each candidate config "
            "for a GPU target and lists the resources it would use."
        )
    if inputs is None:
        inputs = kernel.random_inputs("cuda", seed=0)
    dev = next((t.device for t in inputs if isinstance(t, torch.Tensor) and t.is_cuda), None)
    device = torch.cuda.get_device_name(dev)
    ks = kernel.source
    configs = candidate_configs(ks)
    key = _tune_key(ks, device, configs)
    if cache:
        try:
            payload = _cache.get(key, _NAMESPACE)
        except (_cache.CacheCorruptError, OSError):
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("best"), dict):
            kernel.best_config = payload["best"]
            timings = [tuple(t) for t in payload.get("timings") or []]
            return TuneResult(ks.name, device, payload["best"], timings, cached=True)
    timings = []
    for cfg in configs:
        try:
            kernel(*inputs, config=cfg)  # compile outside the timed region
            ms = float(triton.testing.do_bench(lambda c=cfg: kernel(*inputs, config=c), warmup=warmup, rep=rep))
            timings.append((cfg, ms, None))
        except Exception as e:  # noqa: BLE001 - a config that fails is a result
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            timings.append((cfg, None, f"{type(e).__name__}: {first}"))
    ok = [(ms, i) for i, (_, ms, _) in enumerate(timings) if ms is not None]
    if not ok:
        raise RuntimeError(
            f"every launch config of {ks.name} failed on {device}: "
            + "; ".join(f"{config_text(c)}: {err}" for c, _, err in timings)
        )
    best = timings[min(ok)[1]][0]
    kernel.best_config = best
    if cache:
        try:
            _cache.put(
                key,
                {"best": best, "device": device, "timings": [list(t) for t in timings]},
                _NAMESPACE,
            )
        except OSError:
            pass
    return TuneResult(ks.name, device, best, timings)
