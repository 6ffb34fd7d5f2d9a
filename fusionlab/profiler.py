"""Profile whole training steps: eager vs the fused plan vs torch.compile, measured and modeled.

``profile(model, inputs)`` times complete training steps (forward, loss, backward,
optimizer step, zero_grad) of each variant on the same inputs:

* ``eager``      the model as it is;
* ``fusionlab``  the plan's fused step (``make_backend(plan, executor=...)``): on a GPU the
                 plan's Triton kernels; on CPU each selected group checked alone, then the
                 step compiled by Inductor under a policy that fuses only inside the groups
                 (:class:`fusionlab.executors.InductorGraphExecutor`), because the Triton
                 interpreter is for correctness, not speed;
* ``inductor``   plain ``torch.compile`` of the same step function (fuses everything it likes);
* ``unfused``    (optional) the fusionlab variant with nothing selected: with the CPU
                 ``inductor`` executor, the same whole-graph compile with every op on its
                 own, so fusionlab vs unfused is what the chosen fusions alone buy; with
                 the other executors, the captured, decomposed ATen graphs run op by op.

Every variant trains its own ``copy.deepcopy(model)`` with its own optimizer, so profiling
never changes the model. The variants run interleaved, one step each in turn (the order
rotating every round), so drift (thermal, other processes) hits them alike. On CUDA a step
is timed with CUDA events, on CPU with ``time.perf_counter`` (always after warm-up; the
first step of a compiled variant, which compiles, is reported apart). After timing, one
more step of each variant runs under ``torch.profiler`` for per-kernel names and times,
peak memory and, optionally, a Chrome trace.

Modeled figures (:mod:`fusionlab.cost`: bytes, FLOPs, launches on a GPU's spec sheet) are
labeled ``modeled (<GPU> spec)`` and kept in columns of their own.
"""

from __future__ import annotations

import copy
import gc
import html
import itertools
import math
import os
import statistics
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from unittest import mock

import torch

from . import _env
from .capture import _TrainStep, capture, preserved_state
from .cost import GPUSpec, ModeledStep, get_gpu, roofline
from .executors import InductorGraphExecutor, InductorGroupExecutor, count_generated_kernels

VARIANTS = ("eager", "fusionlab", "inductor", "unfused")
DEFAULT_COMPARE = ("eager", "fusionlab", "inductor")

# --------------------------------------------------------------------------- results


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
        try:
            b, v = self.variant(base), self.variant(name)
        except KeyError:
            return float("nan")
        if not (b.ok and v.ok):
            return float("nan")
        return b.median_ms / v.median_ms

    def loss_rel_diff(self, name: str, base: str = "eager") -> float:
        """Largest relative difference of the per-step losses of `name` from `base`."""
        try:
            b, v = self.variant(base), self.variant(name)
        except KeyError:
            return float("nan")
        if not (b.losses and v.losses):
            return float("nan")
        return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(v.losses, b.losses))

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
        return _profile_figure(self)

    def to_html(self, path) -> str:
        """Write a stand-alone HTML report (plotly.js inlined: opens with no server, no network)."""
        text = _profile_html(self)
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


# --------------------------------------------------------------------------- steps


_FRESH = itertools.count()
_FWD_BWD = "fusionlab.profile: forward+backward"
# ATen ops that launch no compute kernel: views, metadata, allocation
_NO_KERNEL = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "expand_as", "as_strided",
    "unsqueeze", "squeeze", "alias", "detach", "detach_", "slice", "select", "split", "split_with_sizes",
    "unbind", "chunk", "narrow", "view_as", "empty", "empty_like", "empty_strided", "resize_", "lift_fresh",
    "contiguous", "_reshape_alias", "unflatten", "flatten", "numpy_T", "_to_copy_noop", "set_", "to",
    "_has_compatible_shallow_copy_type", "is_nonzero", "item", "_local_scalar_dense", "result_type",
}


def _fresh_step(model, loss_fn, train: bool = True) -> _TrainStep:
    """A ``_TrainStep`` whose forward is a code object of its own.

    Dynamo keeps compiled code per code object with a recompile limit; a fresh code object
    per profiled variant keeps profiles from using up the limit of ``_TrainStep.forward``
    (shared with ``capture`` and ``FusedStep``), and keeps theirs from affecting ours.
    """
    n = next(_FRESH)
    fwd = _TrainStep.forward
    name = f"forward_profiled_{n}"
    kw = {"co_name": name}
    if hasattr(fwd.__code__, "co_qualname"):
        kw["co_qualname"] = f"_ProfiledStep{n}.{name}"
    code = fwd.__code__.replace(**kw)
    f = types.FunctionType(code, fwd.__globals__, name, fwd.__defaults__, fwd.__closure__)
    cls = type(f"_ProfiledStep{n}", (_TrainStep,), {"forward": f, "__module__": __name__})
    return cls(model, loss_fn, train)


def _make_optimizer(optimizer, params, lr: float):
    if optimizer is None or optimizer == "none":
        return None
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(params)
    name = str(optimizer).lower()
    table = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in table:
        raise ValueError(f"optimizer must be one of {', '.join(table)}, None or a callable(params), got {optimizer!r}")
    return table[name](params, lr=lr)


class _Variant:
    """One variant under test: its own model copy, optimizer and step function."""

    def __init__(self, name: str, model, loss_fn, optimizer, lr: float, device: str):
        self.name = name
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, torch.nn.Module) else []
        self.opt = _make_optimizer(optimizer, params, lr)
        self.loss_fn = loss_fn
        self.fn: Callable = None
        self.result = VariantResult(name, "", device)
        self.codes: list[str] = []
        self.executor = None
        self.backend = None

    def step(self, mark: bool = False):
        if mark:  # a torch.profiler range around forward + backward (the kernel count's window)
            from torch.profiler import record_function

            with record_function(_FWD_BWD):
                loss = self.fn(*self.inputs)
                loss.backward()
        else:
            loss = self.fn(*self.inputs)
            loss.backward()
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        elif isinstance(self.model, torch.nn.Module):
            self.model.zero_grad(set_to_none=True)
        return loss.detach()


def _device_of(model, inputs) -> torch.device:
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


EXECUTORS = ("auto", "inductor", "inductor-groups", "triton")  # the names ``executor=`` takes


def _resolve_executor(executor, dev: torch.device):
    """(executor or None for Triton, its name)."""
    if executor is None or executor == "auto":
        executor = "triton" if (dev.type == "cuda" and not _env.INTERPRET) else "inductor"
    if executor == "triton":
        return None, _env.executor_name()
    if executor in ("inductor", "inductor-groups"):
        ex = InductorGraphExecutor() if executor == "inductor" else InductorGroupExecutor()
        return ex, ex.name
    if callable(executor):
        return executor, getattr(executor, "name", type(executor).__name__)
    raise ValueError("executor must be 'auto', 'triton', 'inductor', 'inductor-groups' or a callable, "
                     f"got {executor!r}")


class _Timer:
    def __init__(self, cuda: bool):
        self.cuda = cuda

    def time(self, fn) -> tuple[float, object]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out


def _capture_inductor_code(codes: list[str]):
    """Keep the wrapper code Inductor writes (compiles and cache hits alike) in `codes`."""
    from torch._inductor.graph import GraphLowering

    return mock.patch.object(GraphLowering, "save_output_code", lambda code: codes.append(code))


# --------------------------------------------------------------------------- profile


def profile(
    model,
    inputs,
    plan=None,
    loss_fn: Callable | None = None,
    optimizer="adamw",
    steps: int = 20,
    warmup: int = 5,
    compare: Sequence[str] | str = DEFAULT_COMPARE,
    gpu: str | GPUSpec = "h100",
    lr: float = 1e-3,
    *,
    executor="auto",
    trace: bool | str = False,
    profile_step: bool = True,
    model_name: str | None = None,
    verbose: bool = False,
) -> ProfileResult:
    """Time whole training steps of `model` for each variant in `compare`; model the GPU cost.

    ``inputs``: a tuple of example inputs (a single tensor is accepted). ``plan``: a
    FusionPlan (``None``: capture the model and select every candidate). ``optimizer``:
    "adamw" | "adam" | "sgd" | None | ``callable(params) -> Optimizer``, the same in every
    variant. ``executor`` for the fusionlab variant: "auto" (Triton kernels on a GPU,
    "inductor" on CPU), "triton", "inductor" (whole graphs compiled by Inductor, fusing
    only inside the selected groups), "inductor-groups" (each group compiled alone and
    called from the FX graph's Python code) or a callable (see :mod:`fusionlab.executors`).
    ``trace``: True or a path: export a Chrome trace of one
    profiled step of each variant. The model itself is never changed.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"profile trains copies of the model: pass a torch.nn.Module, not {type(model).__name__}")
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    inputs = tuple(inputs)
    if isinstance(compare, str):
        compare = [c.strip() for c in compare.split(",") if c.strip()]
    compare = list(dict.fromkeys(compare))
    bad = [c for c in compare if c not in VARIANTS]
    if bad or not compare:
        raise ValueError(f"compare must name variants among {', '.join(VARIANTS)}; got {compare}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0 (got steps={steps}, warmup={warmup})")
    spec = get_gpu(gpu)
    dev = _device_of(model, inputs)
    cuda = dev.type == "cuda"
    device = _describe_device(dev)
    notes: list[str] = []

    with preserved_state(model):
        if plan is None:
            if verbose:
                print("fusionlab.profile: capturing one training step ...")
            cap = capture(model, *inputs, loss_fn=loss_fn)
            from .plan import FusionPlan

            plan = FusionPlan(cap).select_all()
            notes.append(f"plan: all {len(plan.selected)} candidates selected (no plan given)")
        else:
            if not plan.capture.train:
                raise ValueError("the plan was captured with train=False; profile times training steps")
            if loss_fn is None:
                loss_fn = plan.capture.meta.get("loss_fn")

        # one executor for the fusionlab variant; "unfused" runs the same kind with nothing selected
        fl_executor, fl_executor_name = (_resolve_executor(executor, dev) if {"fusionlab", "unfused"} & set(compare)
                                         else (None, ""))
        variants: list[_Variant] = []
        for name in compare:
            m = copy.deepcopy(model)
            if isinstance(m, torch.nn.Module):
                m.train(True)
                m.zero_grad(set_to_none=True)
            variants.append(_Variant(name, m, loss_fn, optimizer, lr, device))
        for v in variants:
            v.inputs = inputs
            step = _fresh_step(v.model, loss_fn)
            if v.name == "eager":
                v.fn = step
                v.result.executor = "PyTorch eager (ATen)"
            elif v.name == "fusionlab":
                from .backend import make_backend

                v.executor = fl_executor
                v.backend = make_backend(plan, executor=fl_executor)
                v.fn = torch.compile(step, backend=v.backend, dynamic=False)
                v.result.executor = fl_executor_name
                v.result.report = v.backend.report
            elif v.name == "unfused":
                from .backend import make_backend
                from .plan import FusionPlan

                if isinstance(fl_executor, InductorGraphExecutor):
                    # the fusionlab variant's executor with nothing selected: the two differ
                    # only by the fusions the user picked
                    same = InductorGraphExecutor(eager_outside_groups=fl_executor.eager_outside_groups)
                    v.executor = same
                    v.backend = make_backend(FusionPlan(plan.capture, plan.candidates), executor=same)
                    v.result.executor = "inductor-cpp (nothing fused)"
                else:
                    v.backend = make_backend(FusionPlan(plan.capture, plan.candidates))
                    v.result.executor = "captured ATen graphs, op by op"
                v.fn = torch.compile(step, backend=v.backend, dynamic=False)
            else:
                v.fn = torch.compile(step, dynamic=False)
                v.result.executor = f"torch.compile (inductor, {'triton' if cuda else 'cpp'})"

        timer = _Timer(cuda)
        # first step of each variant alone: compiles the compiled ones
        for v in list(variants):
            if verbose:
                print(f"fusionlab.profile: first step of {v.name} ({v.result.executor}) ...")
            try:
                if v.name == "inductor":
                    with _capture_inductor_code(v.codes):
                        dt, loss = timer.time(v.step)
                else:
                    dt, loss = timer.time(v.step)
                v.result.first_step_s = dt
                v.first_loss = loss
            except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                v.result.error = f"{type(e).__name__}: {msg}"
                if v.name == "eager":
                    raise
        live = [v for v in variants if v.result.error is None]
        if any(v.name == "fusionlab" for v in live):
            rep = next(v for v in live if v.name == "fusionlab").result.report
            if rep is not None and not rep.graphs:
                notes.append("fusionlab: the backend saw no graph (dynamo did not compile the step)")

        # interleaved warm-up and measured steps, the order rotating every round
        losses: dict[str, list] = {v.name: [v.first_loss] for v in live}
        gc.collect()
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for i in range(warmup + steps):
                k = i % len(live)
                for v in live[k:] + live[:k]:
                    dt, loss = timer.time(v.step)
                    losses[v.name].append(loss)
                    if i >= warmup:
                        v.result.samples.append(dt)
        finally:
            if gc_was:
                gc.enable()
        for v in live:
            v.result.losses = [float(x) for x in losses[v.name]]

        # kernels per step (fwd + bwd), from the graphs and generated code
        _count_kernels(plan, variants)

        # one profiled step each: kernel names and times, memory, optional Chrome trace
        trace_path = None
        if profile_step or trace:
            trace_path = _profiled_steps(live, cuda, trace)

        # modeled columns
        modeled = {}
        for v in variants:
            if v.name in ("eager", "unfused"):
                modeled[v.name] = roofline(plan, spec, fused=False)
        fl = next((v for v in variants if v.name == "fusionlab"), None)
        if fl is not None:
            rep = fl.result.report
            used = [s.candidate for s in rep.used] if rep is not None else []
            modeled["fusionlab"] = roofline(plan, spec, fused=True, selected=used)
            if rep is not None and rep.failed:
                notes.append(f"fusionlab: {len(rep.failed)} selected group(s) ran unfused: "
                             + "; ".join(f"{s.candidate}: {s.reason}" for s in rep.failed[:5]))

    notes.append("kernels/step: forward + backward only (the optimizer step, the same in every variant, "
                 "is not counted); " + "; ".join(f"{v.name}: {v.result.kernels_how}" for v in variants
                                                 if v.result.kernels_how))
    nests = [v for v in variants if v.result.loop_nests is not None]
    if nests:
        notes.append("Inductor counts C++ function calls there; a function may hold several loop nests, "
                     "each reading and writing memory: loop nests per step "
                     + ", ".join(f"{v.name} {v.result.loop_nests}" for v in nests))
    if not cuda:
        notes.append("peak memory: largest CPU allocator total above the step's start, from "
                     "torch.profiler memory events of one profiled step")
        if fl is not None and fl.executor is None:
            notes.append("fusionlab ran its Triton kernels in the Triton interpreter: correct, but its "
                         "times say nothing about speed (use executor='inductor' on CPU)")
        if fl is not None and getattr(fl.executor, "describe", None):
            notes.append("fusionlab on CPU: " + fl.executor.describe())
    name = model_name or plan.capture.model_name
    return ProfileResult(
        model_name=name, device=device, steps=steps, warmup=warmup,
        optimizer=str(optimizer if not callable(optimizer) else getattr(optimizer, "__name__", "custom")),
        variants=[v.result for v in variants], plan=plan, gpu=spec, modeled=modeled,
        chrome_trace=trace_path, notes=notes,
    )


def _count_kernels(plan, variants: list[_Variant]) -> None:
    from .cost import step_cost

    for v in variants:
        r = v.result
        if isinstance(v.executor, InductorGraphExecutor) and v.executor.graphs:
            r.kernels_per_step = sum(g.kernels for g in v.executor.graphs)
            r.kernels_how = "Inductor generated code"
            r.loop_nests = sum(len(g.loops) for g in v.executor.graphs)
        elif v.name in ("eager", "unfused"):
            r.kernels_per_step = step_cost(plan, fused=False).launches
            r.kernels_how = "captured graphs"
        elif v.name == "fusionlab" and r.report is not None:
            used = [s.candidate for s in r.report.used]
            n = step_cost(plan, fused=True, selected=used).launches
            if isinstance(v.executor, InductorGroupExecutor):
                # a group compiled by Inductor may need more than one loop nest on CPU
                n += sum(v.executor.groups[c].kernels - 1 for c in used
                         if c in v.executor.groups and v.executor.groups[c].kernels > 0)
            r.kernels_per_step = n
            r.kernels_how = "captured graphs + compiled groups"
        elif v.name == "inductor" and v.codes:
            r.kernels_per_step = sum(count_generated_kernels(c) for c in v.codes)
            r.kernels_how = "Inductor generated code"


def _peak_cpu_bytes(prof) -> int | None:
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


def _profiled_steps(live: list[_Variant], cuda: bool, trace) -> str | None:
    """One step of each variant under torch.profiler: top kernels, memory; optional Chrome trace."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for v in live:
        try:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            with tprofile(activities=acts, profile_memory=not cuda) as prof:
                with record_function(f"fusionlab.profile: {v.name} step"):
                    v.step(mark=True)
                if cuda:
                    torch.cuda.synchronize()
            if not cuda and v.name == "eager":
                n = _count_aten_kernels(prof)
                if n is not None:
                    v.result.kernels_per_step = n
                    v.result.kernels_how = "ATen compute ops in one profiled step (torch.profiler)"
            if cuda:
                v.result.peak_memory = torch.cuda.max_memory_allocated() - base
                v.result.peak_memory_how = "torch.cuda.max_memory_allocated above the step's start"
            else:
                v.result.peak_memory = _peak_cpu_bytes(prof)
                v.result.peak_memory_how = "torch.profiler CPU allocator events (peak above the step's start)"
            _top_kernels(v.result, prof, cuda)
            if isinstance(v.executor, InductorGraphExecutor):
                _label_functions(v.result, v.executor)
        except Exception as e:  # noqa: BLE001 - profiling detail is best effort
            _env.debug(1, f"torch.profiler step of {v.name} failed: {e}")
    if not trace:
        return None
    # one more step of every variant in one session: one trace, the variants side by side
    if isinstance(trace, (str, os.PathLike)):
        path = os.fspath(trace)
    else:
        path = os.path.join(tempfile.gettempdir(), f"fusionlab-trace-{os.getpid()}-{int(time.time())}.json")
    try:
        with tprofile(activities=acts) as prof:
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


def _count_aten_kernels(prof) -> int | None:
    """Leaf ATen ops that compute (no views/allocations) inside the forward+backward range."""
    try:
        events = list(prof.events())
        window = [e for e in events if e.name == _FWD_BWD]
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


def _top_kernels(r: VariantResult, prof, cuda: bool) -> None:
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


def _label_functions(r: VariantResult, ex: InductorGraphExecutor) -> None:
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


# --------------------------------------------------------------------------- figures


_COLORS = {"eager": "#7f7f7f", "unfused": "#bcbd22", "fusionlab": "#1f77b4", "inductor": "#ff7f0e"}


def _profile_figure(res: ProfileResult):
    """2x2 plotly figure; plotly is imported here, on first use."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    gname = res.gpu.name if res.gpu is not None else "GPU"
    fig = make_subplots(
        rows=3, cols=2,
        specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]],
        subplot_titles=(
            f"step time, measured on {res.device} (median, IQR)",
            f"bytes moved per step ({res.modeled_label})",
            f"per fusion group ({res.modeled_label})",
            f"roofline, {res.modeled_label}",
            f"top ops and kernels of one step, measured on {res.device} (torch.profiler self time)",
        ),
        vertical_spacing=0.09,
    )
    ok = [v for v in res.variants if v.ok]
    fig.add_trace(go.Bar(
        x=[f"{v.name}<br>{v.executor}" for v in ok], y=[v.median_ms for v in ok],
        error_y=dict(type="data", symmetric=False, array=[v.q3_ms - v.median_ms for v in ok],
                     arrayminus=[v.median_ms - v.q1_ms for v in ok]),
        text=[f"{v.median_ms:.2f} ms" for v in ok], name="measured step time", showlegend=False,
        marker_color=[_COLORS.get(v.name, "#17becf") for v in ok],
    ), row=1, col=1)
    fig.update_yaxes(title_text="ms per training step (measured)", row=1, col=1)

    names = list(res.modeled)
    mm = [(res.modeled[n].bytes - res.modeled[n].nonmatmul_bytes) / 2**20 for n in names]
    nm = [res.modeled[n].nonmatmul_bytes / 2**20 for n in names]
    fig.add_trace(go.Bar(x=names, y=nm, name="non-matmul (modeled)", marker_color="#2ca02c"), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=mm, name="matmul (modeled)", marker_color="#9467bd"), row=1, col=2)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="MiB per step (modeled)", row=1, col=2)

    fused = res.modeled.get("fusionlab")
    if fused is not None and fused.groups:
        ids = [g.id for g in fused.groups]
        fig.add_trace(go.Bar(x=ids, y=[g.seconds_unfused * 1e6 for g in fused.groups],
                             name=f"unfused, modeled {gname}", marker_color="#7f7f7f", offsetgroup="u"),
                      row=2, col=1)
        fig.add_trace(go.Bar(x=ids, y=[g.seconds_fused * 1e6 for g in fused.groups],
                             name=f"fused, modeled {gname}", marker_color="#1f77b4", offsetgroup="f"),
                      row=2, col=1)
        fig.update_yaxes(title_text="µs per step (modeled)", row=2, col=1)

    if res.gpu is not None and res.modeled:
        spec = res.gpu
        xs = [0.01, 1e4]
        for which, dash in (("fp32", "solid"), ("tf32", "dot"), ("bf16", "dash")):
            peak = spec.peak(which)
            ridge = peak / spec.bandwidth
            fig.add_trace(go.Scatter(
                x=[xs[0], ridge, xs[1]], y=[xs[0] * spec.bandwidth / 1e12, peak / 1e12, peak / 1e12],
                mode="lines", line=dict(dash=dash, color="black", width=1),
                name=f"{spec.name} roof ({which})"), row=2, col=2)
        for n, color in (("eager", "#7f7f7f"), ("fusionlab", "#1f77b4")):
            m = res.modeled.get(n)
            if m is None:
                continue
            ks = [k for k in m.kernels if k.bytes and k.flops and k.seconds]
            fig.add_trace(go.Scatter(
                x=[k.flops / k.bytes for k in ks], y=[k.flops / k.seconds / 1e12 for k in ks],
                mode="markers", marker=dict(color=color, size=6, opacity=0.7), name=f"{n} kernels",
                text=[f"{k.graph}.{k.name} ({k.kind}, {k.bound}-bound)" for k in ks]), row=2, col=2)
        fig.update_xaxes(type="log", title_text="FLOP / byte", row=2, col=2)
        fig.update_yaxes(type="log", title_text="TFLOP/s (modeled, incl. launch)", row=2, col=2)
    for v in ok:  # measured: the top of each variant's torch.profiler table
        top = v.top_kernels[:8]
        if not top:
            continue
        fig.add_trace(go.Bar(
            x=[f"{v.name}: {_short(name)}" for name, _, _ in top], y=[t for _, _, t in top],
            name=f"{v.name} top kernels (measured)", marker_color=_COLORS.get(v.name, "#17becf"),
            text=[f"{n} call(s)" for _, n, _ in top], hovertext=[name for name, _, _ in top],
        ), row=3, col=1)
    fig.update_yaxes(title_text="µs self time, one step (measured)", row=3, col=1)
    fig.update_layout(height=1150, title=f"fusionlab profile: {res.model_name}")
    return fig


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _html_table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _profile_html(res: ProfileResult) -> str:
    """A stand-alone HTML report; plotly.js is inlined when plotly is installed."""
    try:
        fig_html = res.figure().to_html(full_html=False, include_plotlyjs="inline")
    except ImportError:
        fig_html = "<p><i>plotly is not installed: no figures (pip install plotly)</i></p>"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>fusionlab profile: {html.escape(res.model_name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px} pre{background:#f6f6f6;padding:1em}"
        "</style></head><body>",
        f"<h1>fusionlab profile: {html.escape(res.model_name)}</h1>",
        res._repr_html_(),
        fig_html,
    ]
    for v in res.variants:
        parts.append(f"<h2>{html.escape(v.name)}: {html.escape(v.executor)}</h2>")
        if v.error:
            parts.append(f"<p>failed: {html.escape(v.error)}</p>")
        if v.report is not None:
            parts.append("<pre>" + html.escape(str(v.report)) + "</pre>")
        if v.top_kernels:
            unit = "device µs" if v.kernels_measured is not None else "CPU µs (self)"
            parts.append(f"<p>one profiled step (torch.profiler, measured on {html.escape(v.device)}):</p>")
            parts.append(_html_table([[n, c, f"{t:.1f}"] for n, c, t in v.top_kernels], ["op / kernel", "calls", unit]))
    for n, m in res.modeled.items():
        parts.append(f"<h2>{html.escape(n)}: {html.escape(m.label)}</h2><pre>{html.escape(str(m))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def make_plan(model, inputs, loss_fn=None, fuse="all"):
    """Capture `model` and select `fuse`: "all", "none", or comma-separated ids/patterns."""
    from .plan import FusionPlan

    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    plan = FusionPlan(capture(model, *inputs, loss_fn=loss_fn))
    if isinstance(fuse, str):
        fuse = fuse.strip()
        if fuse in ("all", ""):
            return plan.select_all()
        if fuse == "none":
            return plan
        fuse = [f.strip() for f in fuse.split(",") if f.strip()]
    if fuse:
        plan.select(*fuse)
    return plan


# --------------------------------------------------------------------------- numerics


@dataclass
class NumericsCheck:
    """Per step: relative error of the fused step's loss and gradients against eager.

    ``grad_rel``: the whole gradient, norm-wise, ``||g_fused - g_eager|| / ||g_eager||`` over
    all parameters at once. ``param_rel``: the worst single parameter, norm-wise; beware
    gradients that are mathematically zero (a conv bias before BatchNorm: ~1e-8 of rounding
    noise), whose relative error says nothing.
    """

    steps: int
    loss_rel: list[float]
    grad_rel: list[float]
    param_rel: list[float]
    worst_param: list[str]
    report: object = None

    @property
    def max_rel(self) -> float:
        """Largest of the loss and whole-gradient relative errors over all steps."""
        return max(self.loss_rel + self.grad_rel) if (self.loss_rel or self.grad_rel) else 0.0

    @property
    def max_param_rel(self) -> float:
        return max(self.param_rel) if self.param_rel else 0.0

    def ok(self, tol: float = 1e-5) -> bool:
        return self.max_rel <= tol

    def __repr__(self) -> str:
        rows = [f"step {i}: loss rel err {lo:.2e}, gradient rel err {g:.2e}, worst parameter {p:.2e} ({n})"
                for i, (lo, g, p, n) in enumerate(zip(self.loss_rel, self.grad_rel, self.param_rel,
                                                      self.worst_param))]
        return "NumericsCheck(fused vs eager)\n  " + "\n  ".join(rows)


def check_numerics(model, inputs, plan=None, loss_fn=None, steps: int = 3, executor="auto",
                   optimizer="sgd", lr: float = 1e-3) -> NumericsCheck:
    """Train two copies of `model` for `steps` steps, eager and fused; compare losses and grads.

    Relative errors are norm-wise (``||fused - eager|| / ||eager||``): of the loss, of the
    whole gradient, and of the worst single parameter (see :class:`NumericsCheck`).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"check_numerics trains copies of the model: pass a torch.nn.Module, not {type(model).__name__}")
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    inputs = tuple(inputs)
    with preserved_state(model):
        if plan is None:
            from .plan import FusionPlan

            plan = FusionPlan(capture(model, *inputs, loss_fn=loss_fn)).select_all()
        elif loss_fn is None:
            loss_fn = plan.capture.meta.get("loss_fn")
        dev = _device_of(model, inputs)
        ex, _ = _resolve_executor(executor, dev)
        from .backend import make_backend

        me, mf = copy.deepcopy(model), copy.deepcopy(model)
        me.train(True)
        mf.train(True)
        backend = make_backend(plan, executor=ex)
        fe = _fresh_step(me, loss_fn)
        ff = torch.compile(_fresh_step(mf, loss_fn), backend=backend, dynamic=False)
        oe = _make_optimizer(optimizer, list(me.parameters()), lr)
        of = _make_optimizer(optimizer, list(mf.parameters()), lr)
        loss_rel, grad_rel, param_rel, worst = [], [], [], []
        for _ in range(steps):
            le, lf = fe(*inputs), ff(*inputs)
            le.backward()
            lf.backward()
            loss_rel.append(float((lf.detach() - le.detach()).abs() / le.detach().abs().clamp_min(1e-30)))
            w, wn, num, den = 0.0, "", 0.0, 0.0
            for (n, pe), pf in zip(me.named_parameters(), mf.parameters()):
                if pe.grad is None and pf.grad is None:
                    continue
                if (pe.grad is None) != (pf.grad is None):
                    w, wn, num = float("inf"), n, float("inf")
                    continue
                d2 = (pf.grad.double() - pe.grad.double()).pow(2).sum().item()
                e2 = pe.grad.double().pow(2).sum().item()
                num, den = num + d2, den + e2
                rel = math.sqrt(d2 / e2) if e2 > 0 else math.sqrt(d2)
                if rel > w:
                    w, wn = rel, n
            grad_rel.append(math.sqrt(num / den) if den > 0 else math.sqrt(num))
            param_rel.append(w)
            worst.append(wn)
            for o, mm in ((oe, me), (of, mf)):
                if o is not None:
                    o.step()
                    o.zero_grad(set_to_none=True)
                else:
                    mm.zero_grad(set_to_none=True)
    return NumericsCheck(steps, loss_rel, grad_rel, param_rel, worst, backend.report)
