"""The compile reports of a set of kernels, as one table; notes on NVIDIA tool overrides."""

from __future__ import annotations

import functools
import html
import os

from ._table import html_table, text_lines
from .compile import TARGETS, CompileReport


class CompileReports(list):
    """One :class:`CompileReport` per kernel (in order), shown as a summary table.

    Each report keeps every stage (``rep.stages["ptx"]``, ``rep.sass``...);
    ``reports["fused_fw0_gelu_0"]`` finds one by kernel name.
    """

    def __init__(self, reports=(), target: str = "", kinds=()):
        super().__init__(reports)
        self.target = target
        self.kinds = list(kinds) or [""] * len(self)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self:
                if r.name == key:
                    return r
            raise KeyError(f"no report for kernel {key!r}; kernels: {[r.name for r in self]}")
        return super().__getitem__(key)

    @property
    def failed(self) -> list[CompileReport]:
        return [r for r in self if not r.ok]

    def _cells(self):
        head = ["kernel", "kind", "status", "regs", "spills", "shared mem", "warps", "occupancy (modeled)", "compile"]
        rows = []
        for rep, kind in zip(self, self.kinds):
            if rep.ok:
                occ = "?" if rep.occupancy is None else f"{rep.occupancy:.0%} ({rep.occupancy_limiter})"
                cells = [
                    "ok",
                    "?" if rep.registers is None else str(rep.registers),
                    "?" if rep.spills is None else f"{rep.spills} B",
                    "?" if rep.shared_mem is None else f"{rep.shared_mem:,} B",
                    "?" if rep.num_warps is None else str(rep.num_warps),
                    occ,
                    "cached" if rep.cached else f"{rep.compile_seconds:.2f} s",
                ]
            else:
                err = (rep.error or "failed").strip().splitlines()[0]
                cells = ["FAILED: " + err[:120], "", "", "", "", "", ""]
            rows.append([rep.name, kind, *cells])
        return head, rows

    def to_text(self) -> str:
        head, rows = self._cells()
        n_ok = sum(r.ok for r in self)
        lines = [
            f"{len(self)} kernels compiled for {self.target or '?'}: {n_ok} ok, {len(self) - n_ok} failed "
            "(occupancy is modeled, not measured)"
        ]
        # a failed row's long message does not widen the columns
        lines += text_lines(head, rows, sizing=lambda r: not r[2].startswith("FAILED"))
        notes = sorted({n for r in self for n in r.notes})
        lines += [f"  note: {n}" for n in notes]
        return "\n".join(lines)

    __repr__ = to_text

    def _repr_html_(self) -> str:
        head, rows = self._cells()
        return (f"<b>{len(self)} kernels compiled for <code>{html.escape(self.target)}</code></b> "
                "(occupancy modeled, not measured)\n"
                + html_table(head, rows, row_style=lambda r: "" if r[2] == "ok" else "color:#cf222e"))


# -- NVIDIA tool overrides -----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _runs(path: str, mtime: float) -> bool:
    """Whether Triton would accept ``path`` as an NVIDIA tool (``path --version`` names a release)."""
    try:
        from triton.knobs import NvidiaTool

        return NvidiaTool.from_path(path) is not None
    except Exception:  # noqa: BLE001 - an older triton: the file check is the best we have
        return os.path.isfile(path) and os.access(path, os.X_OK)


def _usable(path: str) -> bool:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return False
    return _runs(path, mtime)


def tool_notes(target: str) -> list[str]:
    """Notes for TRITON_*_PATH overrides that Triton will not use for ``target``.

    Triton 3.9 silently falls back to the triton wheel's copy of a tool when the path in
    ``TRITON_PTXAS_PATH`` (and friends) does not run, and reads
    ``TRITON_PTXAS_BLACKWELL_PATH``, not ``TRITON_PTXAS_PATH``, from sm_90 on.
    """
    arch = TARGETS.get(str(target).strip().lower())
    if arch is None and str(target).startswith("sm_") and str(target)[3:].isdigit():
        arch = int(str(target)[3:])
    ptxas = "TRITON_PTXAS_BLACKWELL_PATH" if (arch or 0) >= 90 else "TRITON_PTXAS_PATH"
    notes = []
    for var in (ptxas, "TRITON_NVDISASM_PATH", "TRITON_CUOBJDUMP_PATH"):
        path = os.environ.get(var)
        if path and not _usable(path):
            tool = var[len("TRITON_") : -len("_PATH")].lower().replace("_", "-")
            notes.append(
                f"{var}={path} does not run ({'no such file' if not os.path.exists(path) else 'not a working ' + tool}); "
                f"Triton used the triton wheel's {tool} (triton/backends/nvidia/bin/{tool}) instead"
            )
    other = "TRITON_PTXAS_PATH" if ptxas != "TRITON_PTXAS_PATH" else "TRITON_PTXAS_BLACKWELL_PATH"
    if os.environ.get(other) and not os.environ.get(ptxas) and arch is not None:
        notes.append(
            f"{other} is set but not used for sm_{arch}: Triton reads {ptxas} "
            f"{'from sm_90 on' if arch >= 90 else 'below sm_90'}"
        )
    return notes


def add_tool_notes(reports, target: str) -> None:
    """Append :func:`tool_notes` to every successful report (in place)."""
    notes = tool_notes(target)
    if not notes:
        return
    for rep in reports:
        if rep.ok:
            rep.notes.extend(n for n in notes if n not in rep.notes)
