"""What a profile returns: measured figures per variant, the modeled ones beside them, as text.

:class:`VariantResult` holds one variant's measured step times (with median and IQR),
kernel counts, peak memory and top kernels; :class:`ProfileResult` holds all variants plus
the modeled GPU figures (:mod:`fusionlab.cost`), kept in columns of their own and labeled
so. A speed-up is shown as a verdict (:func:`variant_verdict`, :mod:`fusionlab.verdict`):
"1.10x faster" only where its 99 % interval lies beyond the noise, "no difference
measurable in N steps" otherwise, never a bare ratio. The default table is short
(variant, step time, verdict, kernels, modeled bytes); ``table(detail=True)`` and
``text(detail=True)`` have every column, the HTML keeps them behind a click. The plotly
figure and the stand-alone HTML report live in :mod:`fusionlab.viz.profile_report`.
"""

from __future__ import annotations

import html
import math
import os
import statistics
from dataclasses import dataclass, field

from ..cost import GPUSpec, ModeledStep
from ..verdict import UNDECIDED, Verdict, compare


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
    update_samples: list[float] = field(default_factory=list)  # seconds in the optimizer update, per measured step
    reference: bool = False  # a reference row (PyTorch's own fused optimizer form), not a fusionlab variant

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
    def update_ms(self) -> float:
        """Median time inside the optimizer update (measured in the same steps), ms."""
        return statistics.median(self.update_samples) * 1e3 if self.update_samples else float("nan")

    @property
    def update_share(self) -> float:
        """The update's share of the step: the median over measured steps of update time / step time
        (each between 0 and 1: the update is timed inside the step); NaN without an optimizer."""
        pairs = [u / s for u, s in zip(self.update_samples, self.samples) if s > 0]
        return statistics.median(pairs) if pairs else float("nan")

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


# A profile's verdicts use 99 % intervals, not verdict.CONFIDENCE's 95 %: the profiler looks at
# its data up to about nine times while deciding whether to measure on, and each look is one
# more chance to call a difference that is noise.
CONFIDENCE = 0.99


def variant_verdict(base: VariantResult, v: VariantResult, confidence: float = CONFIDENCE) -> Verdict:
    """``v`` against ``base`` over their measured steps, paired round by round (the rounds are
    interleaved). The rule both :meth:`ProfileResult.verdict` and the profiler's
    measure-until-decided loop apply."""
    return compare(base.samples if base.ok else [], v.samples if v.ok else [], names=(v.name, base.name),
                   confidence=confidence)


def verdict_cell(verdict: Verdict | None) -> str:
    """A table cell: "baseline", "1.10x faster", "2.00x slower", "no difference measurable in N steps"."""
    if verdict is None:
        return "baseline"
    if verdict.call == UNDECIDED:
        return verdict.short if verdict.short == "n/a" else f"no difference measurable in {verdict.steps} steps"
    return verdict.short


STOPPED = {  # why a profile stopped measuring -> how the notes say it
    "decided": "every comparison with {base} was decided",
    "budget": "the {budget:g} s measuring budget ran out",
    "cap": "the cap of {cap} steps per variant was reached",
    "alone": "there was nothing to compare with {base}",
}


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
    stopped: str = ""  # why measuring stopped: a key of STOPPED ("" : not recorded)
    budget_s: float | None = None  # the measuring budget it ran under

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

    @property
    def baseline(self) -> str:
        """The variant the others are compared with: eager, or the first that ran when eager was not run."""
        names = [v.name for v in self.variants if v.name == "eager" or v.error is None]
        return "eager" if "eager" in names or not names else names[0]

    @property
    def measured_steps(self) -> int:
        """Measured steps per variant (the requested ones and those run until a verdict was decided)."""
        return max((len(v.samples) for v in self.variants), default=0)

    def verdict(self, name: str, base: str | None = None) -> Verdict:
        """Is `name` faster than `base` (default :attr:`baseline`), or is the difference noise?

        The ratio of medians with a 99 % bootstrap interval (:data:`CONFIDENCE`) over the
        interleaved rounds, and a call: faster, slower or no measurable difference (see
        :mod:`fusionlab.verdict`)."""
        return variant_verdict(self.variant(base or self.baseline), self.variant(name))

    def ratio(self, name: str, base: str = "eager") -> float:
        """The bare ratio of medians, base / name (> 1: `name` is faster), for scripts.

        A ratio is not a verdict: it can be noise. Show :meth:`verdict` to a reader."""
        b, v = self._both(base, name)
        if not (b and b.ok and v and v.ok):
            return float("nan")
        return b.median_ms / v.median_ms

    def verdicts(self) -> dict[str, Verdict]:
        """Every other variant's verdict against :attr:`baseline` (failed ones included, as n/a)."""
        base = self.baseline
        return {v.name: self.verdict(v.name, base) for v in self.variants if v.name != base}

    @property
    def measuring(self) -> str:
        """One line: how many steps were measured and why measuring stopped."""
        n, base = self.measured_steps, self.baseline
        line = f"measured {n} steps per variant ({self.steps} requested)"
        if self.stopped in STOPPED:
            why = STOPPED[self.stopped].format(base=base, budget=self.budget_s or 0, cap=n)
            line += f"; stopped because {why}"
        return line

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

    @property
    def has_update_times(self) -> bool:
        """Whether the optimizer update was timed inside the steps (a profile with an optimizer)."""
        return any(v.update_samples for v in self.variants)

    def _short_columns(self) -> tuple[str, str, str]:
        """The names of the columns that change with the baseline and the GPU."""
        gname = self.gpu.name if self.gpu is not None else "GPU"
        return f"vs {self.baseline}", f"modeled {gname} MiB moved", gname

    def _rows(self, detail: bool) -> list[dict]:
        vs, mib, gname = self._short_columns()
        verdicts = self.verdicts()
        rows = []
        for v in self.variants:
            m: ModeledStep | None = self.modeled.get(v.name)
            vd = verdicts.get(v.name)
            row = {
                "variant": v.name,
                "median ms": v.median_ms,
                "IQR ms": v.iqr_ms,
                vs: verdict_cell(vd),
                "kernels/step": v.kernels_per_step,
                mib: m.bytes / 2**20 if m is not None else None,
            }
            if self.has_update_times:
                row["update share"] = v.update_share
            if detail:
                row.update({
                    "executor": v.executor,
                    "device": v.device,
                    "steps": len(v.samples),
                    "min ms": v.min_ms,
                    "max ms": v.max_ms,
                    f"speed-up vs {self.baseline} (ratio of medians)": self.ratio(v.name, self.baseline),
                    f"{CONFIDENCE:.0%} interval low": vd.low if vd is not None else None,
                    f"{CONFIDENCE:.0%} interval high": vd.high if vd is not None else None,
                    "kernels counted from": v.kernels_how,
                    "loop nests/step": v.loop_nests,
                    "peak memory MiB": None if v.peak_memory is None else v.peak_memory / 2**20,
                    f"loss rel diff vs {self.baseline}": (self.loss_rel_diff(v.name, self.baseline)
                                                          if vd is not None else 0.0),
                    "first step s": v.first_step_s,
                    "update ms": v.update_ms,
                    "reference row": v.reference,
                    f"modeled {gname} ms": m.ms if m is not None else None,
                    f"modeled {gname} kernels": m.launches if m is not None else None,
                    "modeled non-matmul MiB": m.nonmatmul_bytes / 2**20 if m is not None else None,
                })
                if any(x.kernels_measured is not None for x in self.variants):
                    row["kernels/step (torch.profiler)"] = v.kernels_measured
            if v.error:
                row["error"] = v.error
            rows.append(row)
        return rows

    def table(self, detail: bool = False):
        """One row per variant (pandas DataFrame): step time (median, IQR, measured), the verdict
        against eager, kernels/step, the modeled bytes moved and, with an optimizer, the update's
        share of the step (measured, 0..1). Rows named "... (reference)" are PyTorch's own fused
        optimizer forms, for comparison, not fusionlab plans. ``detail=True``: every column
        (executor, min/max, the bare ratio and its interval, peak memory, modeled ms, ...).
        Modeled columns are named ``modeled <GPU> ...``."""
        import pandas as pd

        df = pd.DataFrame(self._rows(detail)).set_index("variant")
        df.attrs["measured"] = f"measured on {self.device}, {self.measured_steps} steps per variant"
        df.attrs["modeled"] = self.modeled_label
        return df

    def _header(self) -> list[str]:
        return [
            f"fusionlab profile: {self.model_name}, {self.measured_steps} measured steps per variant after "
            f"{self.warmup} warm-up (interleaved), optimizer {self.optimizer}",
            f"measured on {self.device}; modeled columns: {self.modeled_label}",
        ]

    def _footer(self) -> list[str]:
        lines = [f"  {vd}" for vd in self.verdicts().values()]
        lines.append(f"  {self.measuring}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.chrome_trace:
            lines.append(f"  Chrome trace: {self.chrome_trace}")
        return lines

    def text(self, detail: bool = False) -> str:
        """A plain-text table (no pandas needed), the verdicts in full under it.

        ``detail=True``: the executor, min/max, peak memory and modeled step time too."""
        vs, _, gname = self._short_columns()
        verdicts = self.verdicts()
        width = max([len(vs), 12] + [len(verdict_cell(vd)) for vd in verdicts.values()])
        nw = max([10] + [len(v.name) for v in self.variants])
        share = self.has_update_times
        upd = f" {'update share':>12}" if share else ""
        head = f"{'variant':{nw}} {'median ms':>10} {'IQR ms':>9}  {vs:{width}} {'kernels/step':>12}{upd}"
        if detail:
            head = (f"{'variant':{nw}} {'executor':30} {'median ms':>10} {'IQR ms':>9} {'min ms':>9} {'max ms':>9}"
                    f"  {vs:{width}} {'kernels/step':>12} {'peak mem':>11}{upd}")
        mod = f" | {'modeled ' + gname + ' MiB moved':>24}" + (f" {'modeled ' + gname + ' ms':>20}" if detail else "")
        head += mod
        lines = self._header() + [head, "-" * len(head)]
        executors = []
        for v in self.variants:
            executors.append(f"{v.name} = {v.executor}")
            if v.error:
                lines.append(f"{v.name:{nw}} FAILED: {v.error}")
                continue
            m = self.modeled.get(v.name)
            kern = "?" if v.kernels_per_step is None else str(v.kernels_per_step)
            cell = verdict_cell(verdicts.get(v.name))
            mod_b = f"{m.bytes / 2**20:.2f}" if m is not None else "-"
            cut = (f" {v.update_share:>12.0%}" if v.update_samples else f" {'-':>12}") if share else ""
            if detail:
                line = (f"{v.name:{nw}} {v.executor[:30]:30} {v.median_ms:10.3f} {v.iqr_ms:9.3f} {v.min_ms:9.3f} "
                        f"{v.max_ms:9.3f}  {cell:{width}} {kern:>12} {_fmt_mib(v.peak_memory):>11}{cut} | "
                        f"{mod_b:>24} {(f'{m.ms:.3f}' if m is not None else '-'):>20}")
            else:
                line = (f"{v.name:{nw}} {v.median_ms:10.3f} {v.iqr_ms:9.3f}  {cell:{width}} {kern:>12}{cut} | "
                        f"{mod_b:>24}")
            lines.append(line)
        if not detail:
            lines.append("  ran: " + "; ".join(executors))
        return "\n".join(lines + self._footer())

    def __repr__(self) -> str:
        return self.text()

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        def html_table(detail: bool) -> str:
            try:
                # the update's share as a percent, as the text view shows it
                return self.table(detail).to_html(float_format=lambda x: f"{x:.4g}", na_rep="-",
                                                  formatters={"update share": lambda x: f"{x:.0%}"})
            except ImportError:
                return "<pre>" + html.escape(self.text(detail)) + "</pre>"

        verdicts = "".join(f"<li>{html.escape(str(vd))}</li>" for vd in self.verdicts().values())
        verdicts += f"<li>{html.escape(self.measuring)}</li>"
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<b>fusionlab profile of {html.escape(self.model_name)}</b>: {self.measured_steps} measured "
            f"steps per variant after {self.warmup} warm-up, interleaved; optimizer "
            f"{html.escape(self.optimizer)}.<br>Measured on {html.escape(self.device)}. Columns named "
            f"<i>modeled</i>: {html.escape(self.modeled_label)} (never measured).{html_table(False)}"
            + f"<ul>{verdicts}</ul>"
            + f"<details><summary>all columns (executor, min/max, ratio and interval, memory, "
              f"modeled ms)</summary>{html_table(True)}</details>"
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
