"""CompileReport: what one kernel compiles to for one GPU target (stages, registers, occupancy)."""

from __future__ import annotations

import base64
import html
from dataclasses import asdict, dataclass, field, fields

STAGE_ORDER = ("triton", "ttir", "ttgir", "llir", "ptx", "sass")


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
