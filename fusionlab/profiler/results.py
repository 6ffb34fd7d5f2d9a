"""What a profile returns: measured figures per variant, the modeled ones beside them, as text.

:class:`VariantResult` holds one variant's measured step times (with median and IQR),
kernel counts, peak memory and top kernels; :class:`ProfileResult` holds all variants plus
the modeled GPU figures (:mod:`fusionlab.cost`), kept in columns of their own and labeled
so. Its renderers here are plain text, a pandas table and a small HTML table; the plotly
figure and the stand-alone HTML report live in :mod:`fusionlab.viz.profile_report`.
"""

from __future__ import annotations

import html
import math
import os
import statistics
from dataclasses import dataclass, field

from ..cost import GPUSpec, ModeledStep


@dataclass
class VariantResult:
    """Measured figures of one variant (``eager``, ``fusionlab`` or ``inductor``)."""

    name: str
    executor: str  # what ran it: "PyTorch eager (ATen)", "inductor-cpp (groups only)", ...
    device: str
    samples: list[float] = field(default_factory=list)  # seconds per measured step
    first_step_s: float = float("nan")  # the first step (compiles, for compiled variants)
    kernels_per_step: int | None = None  # fwd+bwd kernel launches
    kernels_how: str = ""
    kernels_measured: int | None = None  # CUDA: kernels in one profiled step (torch.profiler)
    loop_nests: int | None = None  # whole-graph executor: Inductor loop nests per step (not library calls)
    peak_memory: int | None = None  # bytes
    peak_memory_how: str = ""
    losses: list[float] = field(default_factory=list)
    top_kernels: list[tuple[str, int, float]] = field(default_factory=list)  # (name, calls, us)
    report: object = None  # fusionlab BackendReport
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    def _q(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        xs = sorted(self.samples)
        pos = (len(xs) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        return (xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)) * 1e3

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3 if self.samples else float("nan")

    @property
    def q1_ms(self) -> float:
        return self._q(0.25)

    @property
    def q3_ms(self) -> float:
        return self._q(0.75)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return min(self.samples) * 1e3 if self.samples else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.samples) * 1e3 if self.samples else float("nan")

    def __repr__(self) -> str:
        if self.error:
            return f"<{self.name}: failed: {self.error}>"
        return (f"<{self.name} [{self.executor}]: median {self.median_ms:.3f} ms "
                f"(IQR {self.q1_ms:.3f}-{self.q3_ms:.3f}) over {len(self.samples)} steps>")


def _fmt_mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


@dataclass
class ProfileResult:
    """Measured step times per variant, plus the modeled GPU figures in columns of their own."""

    model_name: str
    device: str
    steps: int
    warmup: int
    optimizer: str
    variants: list[VariantResult]
    plan: object = None
    gpu: GPUSpec | None = None
    modeled: dict = field(default_factory=dict)  # variant name -> ModeledStep
    chrome_trace: str | None = None
    notes: list[str] = field(default_factory=list)

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; variants: {[v.name for v in self.variants]}")

    def __getitem__(self, name: str) -> VariantResult:
        return self.variant(name)

    @property
    def modeled_label(self) -> str:
        return self.gpu.label if self.gpu is not None else "modeled"

    def ratio(self, name: str, base: str = "eager") -> float:
        """Speed-up of `name` over `base` (base median / name median; > 1 is faster)."""
        b, v = self._both(base, name)
        if not (b and b.ok and v and v.ok):
            return float("nan")
        return b.median_ms / v.median_ms

    def loss_rel_diff(self, name: str, base: str = "eager") -> float:
        """Largest relative difference of the per-step losses of `name` from `base`."""
        b, v = self._both(base, name)
        if not (b and b.losses and v and v.losses):
            return float("nan")
        return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(v.losses, b.losses))

    def _both(self, *names: str) -> list[VariantResult | None]:
        by_name = {v.name: v for v in self.variants}
        return [by_name.get(n) for n in names]

    # ------------------------------------------------------------------ table

    def _rows(self) -> list[dict]:
        gname = self.gpu.name if self.gpu is not None else "GPU"
        rows = []
        for v in self.variants:
            m: ModeledStep | None = self.modeled.get(v.name)
            row = {
                "variant": v.name,
                "executor": v.executor,
                "device": v.device,
                "median ms": v.median_ms,
                "IQR ms": v.iqr_ms,
                "min ms": v.min_ms,
                "max ms": v.max_ms,
                "speed-up vs eager": self.ratio(v.name),
                "kernels/step": v.kernels_per_step,
                "kernels counted from": v.kernels_how,
                "loop nests/step": v.loop_nests,
                "peak memory MiB": None if v.peak_memory is None else v.peak_memory / 2**20,
                "loss rel diff vs eager": self.loss_rel_diff(v.name) if v.name != "eager" else 0.0,
                "first step s": v.first_step_s,
                f"modeled {gname} ms": m.ms if m is not None else None,
                f"modeled {gname} kernels": m.launches if m is not None else None,
                "modeled MiB moved": m.bytes / 2**20 if m is not None else None,
                "modeled non-matmul MiB": m.nonmatmul_bytes / 2**20 if m is not None else None,
            }
            if any(x.kernels_measured is not None for x in self.variants):
                row["kernels/step (torch.profiler)"] = v.kernels_measured
            if v.error:
                row["error"] = v.error
            rows.append(row)
        return rows

    def table(self):
        """One row per variant (pandas DataFrame). Modeled columns are named ``modeled <GPU> ...``."""
        import pandas as pd

        df = pd.DataFrame(self._rows()).set_index("variant")
        df.attrs["measured"] = f"measured on {self.device}"
        df.attrs["modeled"] = self.modeled_label
        return df

    def text(self) -> str:
        """A plain-text table (no pandas needed)."""
        gname = self.gpu.name if self.gpu is not None else "GPU"
        head = (f"{'variant':10} {'executor':30} {'median ms':>10} {'IQR ms':>9} {'vs eager':>9} "
                f"{'kernels':>8} {'peak mem':>11} | {'modeled ' + gname + ' ms':>20} {'modeled MiB':>12}")
        lines = [
            f"fusionlab profile: {self.model_name}, {self.steps} measured steps after {self.warmup} warm-up "
            f"(interleaved), optimizer {self.optimizer}",
            f"measured on {self.device}; modeled columns: {self.modeled_label}",
            head,
            "-" * len(head),
        ]
        for v in self.variants:
            m = self.modeled.get(v.name)
            if v.error:
                lines.append(f"{v.name:10} {v.executor[:30]:30} FAILED: {v.error}")
                continue
            kern = "?" if v.kernels_per_step is None else str(v.kernels_per_step)
            mod_ms = f"{m.ms:.3f}" if m is not None else "-"
            mod_b = f"{m.bytes / 2**20:.2f}" if m is not None else "-"
            lines.append(
                f"{v.name:10} {v.executor[:30]:30} {v.median_ms:10.3f} {v.iqr_ms:9.3f} "
                f"{self.ratio(v.name):8.2f}x {kern:>8} {_fmt_mib(v.peak_memory):>11} | {mod_ms:>20} {mod_b:>12}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        if self.chrome_trace:
            lines.append(f"  Chrome trace: {self.chrome_trace}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        try:
            table = self.table().to_html(float_format=lambda x: f"{x:.4g}", na_rep="-")
        except ImportError:
            table = "<pre>" + html.escape(self.text()) + "</pre>"
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<b>fusionlab profile of {html.escape(self.model_name)}</b>: {self.steps} measured steps "
            f"after {self.warmup} warm-up, interleaved; optimizer {html.escape(self.optimizer)}.<br>"
            f"Measured on {html.escape(self.device)}. Columns named <i>modeled</i>: "
            f"{html.escape(self.modeled_label)} (never measured).{table}"
            + (f"<ul>{notes}</ul>" if notes else "")
        )

    # ------------------------------------------------------------------ figures

    def figure(self):
        """Plotly figure: step times with spread, bytes moved, per-group breakdown, roofline (modeled),
        and the top ops and kernels of one profiled step per variant (measured)."""
        from ..viz.profile_report import profile_figure

        return profile_figure(self)

    def to_html(self, path) -> str:
        """Write a stand-alone HTML report (plotly.js inlined: opens with no server, no network)."""
        from ..viz.profile_report import profile_html

        text = profile_html(self)
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
