"""The step harness: one variant's own training step, optimizer and clock.

``fresh_step`` wraps a model and a loss in a ``TrainStep`` (forward, loss) with a code
object of its own; :class:`Variant` runs one whole training step of it (forward, loss,
backward, optimizer step, zero_grad) and times the optimizer update inside it (the
update's share of the step); :class:`Timer` times a step with CUDA events on a GPU and
``time.perf_counter`` on CPU. :func:`reference_forms` says which of PyTorch's own fused
optimizer forms (``foreach=True``, ``fused=True``) run on the device at hand.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from unittest import mock

import torch
from torch.profiler import record_function

from ..capture import TrainStep, fresh_entry
from .results import VariantResult

FWD_BWD = "fusionlab.profile: forward+backward"  # the torch.profiler range a kernel count reads


def fresh_step(model, loss_fn, train: bool = True) -> TrainStep:
    """A ``TrainStep`` whose forward is a code object of its own (``capture.fresh_entry``):
    Dynamo keeps compiled code per code object with a recompile limit, so each profiled
    variant gets its own, apart from ``capture``'s and ``FusedStep``'s."""
    step = TrainStep(model, loss_fn, train)
    step.forward = fresh_entry(step)
    return step


def make_optimizer(optimizer, params, lr: float):
    if optimizer is None or optimizer == "none":
        return None
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(params)
    name = str(optimizer).lower()
    table = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in table:
        raise ValueError(f"optimizer must be one of {', '.join(table)}, None or a callable(params), got {optimizer!r}")
    return table[name](params, lr=lr)


class Variant:
    """One variant under test: its own copy of the model, its optimizer, its step function.

    ``fn`` (set by whoever builds the variant) computes the loss; :meth:`step` runs one
    whole training step with it and returns the loss.
    """

    def __init__(self, name: str, model: torch.nn.Module, inputs: tuple, loss_fn, optimizer, lr: float,
                 device: str):
        self.name = name
        self.model = copy.deepcopy(model)
        self.model.train(True)
        self.model.zero_grad(set_to_none=True)
        self.inputs = inputs
        self.opt = make_optimizer(optimizer, [p for p in self.model.parameters() if p.requires_grad], lr)
        self.loss_fn = loss_fn
        self.fn: Callable = None
        self.result = VariantResult(name, "", device)
        self.codes: list[str] = []  # Inductor's generated code (the inductor variant's first step)
        self.executor = None  # what ran the fusionlab groups (None: fusionlab's Triton kernels)
        self.backend = None
        self.first_loss = None
        self.update = None  # the fused optimizer update, where one replaces self.opt.step
        self.cuda = False  # time the update with CUDA events (set by whoever builds the variant)
        self._update_clock = None  # the last step's update: seconds (CPU) or (start, end) CUDA events
        self.reused = False  # its compiled step was kept from an earlier profile (profiler.kept)

    def renew(self, inputs: tuple, make_opt) -> None:
        """Ready for a new profile with the same compiled step (:mod:`fusionlab.profiler.kept`): no
        gradients, a new optimizer (`make_opt(params)`), the new inputs, an empty result. The
        caller has loaded the weights."""
        self.model.train(True)
        self.model.zero_grad(set_to_none=True)
        self.inputs = inputs
        self.opt = make_opt([p for p in self.model.parameters() if p.requires_grad])
        self.result = VariantResult(self.name, self.result.executor, self.result.device)
        self.first_loss, self._update_clock = None, None

    def step(self, mark: bool = False):
        """One training step; `mark`: a torch.profiler range around forward + backward (the kernel count's window)."""
        with record_function(FWD_BWD) if mark else contextlib.nullcontext():
            loss = self.fn(*self.inputs)
            loss.backward()
        if self.opt is not None:
            update = self.update or self.opt.step
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                update()
                end.record()
                self._update_clock = (start, end)
            else:
                t0 = time.perf_counter()
                update()
                self._update_clock = time.perf_counter() - t0
            self.opt.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)
        return loss.detach()

    def update_seconds(self) -> float | None:
        """Seconds the last step's optimizer update took (None: no optimizer). On CUDA read it
        after the step's end was synchronized (``Timer.time`` does)."""
        clock, self._update_clock = self._update_clock, None
        if clock is None or not self.cuda:
            return clock
        return clock[0].elapsed_time(clock[1]) / 1e3


def trace_notes(live: list[Variant], plan) -> list[str]:
    """Which first steps ran the capture's trace instead of tracing the step themselves."""
    shared = [v.name for v in live if getattr(v.fn, "shares_trace", False)]
    if not shared:
        return []
    tc = " (torch.compile's first step includes its own)" if any(v.name == "inductor" for v in live) else ""
    return [f"{', '.join(shared)}: the first step ran the capture's Dynamo and AOTAutograd trace (made once by "
            f"fusionlab.capture in {plan.capture.seconds:.1f} s, not in these first-step times){tc}"]


def device_of(model, inputs) -> torch.device:
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class Timer:
    """Seconds one call takes: CUDA events on a GPU (synchronized), ``time.perf_counter`` on CPU."""

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


def capture_inductor_code(codes: list[str]):
    """Keep the wrapper code Inductor writes (compiles and cache hits alike) in `codes`.

    Not ``torch._inductor.utils.run_and_get_code``, which patches the same method: it also
    calls ``torch._dynamo.reset()``, which would drop the other variants' compiled steps
    (their next step would recompile inside the timed rounds), and it keeps each distinct
    source once, where the kernel count needs every graph's code.
    """
    from torch._inductor.graph import GraphLowering

    return mock.patch.object(GraphLowering, "save_output_code", lambda code: codes.append(code))


# PyTorch's own fused forms of an optimizer class, shown as reference rows in a profile
REFERENCE_FORMS = {torch.optim.AdamW: ("foreach", "fused"), torch.optim.Adam: ("foreach", "fused"),
                   torch.optim.SGD: ("foreach",)}


def reference_forms(opt, device: torch.device) -> tuple[list[str], list[str]]:
    """(forms that run, notes on forms that do not) of ``type(opt)`` on ``device``, each tried
    with a real call: an optimizer with ``form=True`` built on a small tensor there and stepped."""
    forms, notes = [], []
    for form in REFERENCE_FORMS.get(type(opt), ()):
        t = torch.zeros(8, device=device, requires_grad=True)
        t.grad = torch.ones_like(t)
        try:
            type(opt)([{**reference_settings(opt), "params": [t], form: True}], **{form: True}).step()
            forms.append(form)
        except Exception as e:  # noqa: BLE001 - "not offered here" is the answer, with its reason
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            notes.append(f"{type(opt).__name__}({form}=True) is not a reference row: it does not run on "
                         f"{device.type} with torch {torch.__version__} ({msg})")
    return forms, notes


def reference_settings(opt) -> dict:
    """``opt``'s settings (of its first param group) without its choice of implementation."""
    return {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "foreach", "fused")}


def reference_optimizer(opt, form: str):
    """A new optimizer of ``opt``'s class on ``opt``'s parameters and param groups, with ``form=True``."""
    groups = [{**{k: v for k, v in g.items() if k not in ("foreach", "fused")}, form: True}
              for g in opt.param_groups]
    return type(opt)(groups, **{form: True})


def reference_variants(variants, model, inputs, plan, loss_fn, optimizer, lr, dev, notes) -> list[Variant]:
    """The reference rows: eager forward/backward and each of PyTorch's fused forms of the update
    that runs on `dev` (none when the capture has no optimizer update or the profile none)."""
    probe = next((v.opt for v in variants if v.opt is not None), None)
    if probe is None or getattr(plan.capture, "optimizer", None) is None:
        return []
    forms, why_not = reference_forms(probe, dev)
    notes += why_not
    refs = []
    for form in forms:
        v = Variant(f"{form} (reference)", model, inputs, loss_fn, optimizer, lr, describe_device(dev))
        v.cuda = dev.type == "cuda"
        v.opt = reference_optimizer(v.opt, form)
        v.fn = fresh_step(v.model, loss_fn)
        v.result.reference = True
        v.result.executor = f"PyTorch eager; update: torch.optim.{type(v.opt).__name__}({form}=True) (reference)"
        refs.append(v)
    if refs:
        notes.append("reference rows (" + ", ".join(v.name for v in refs) + "): PyTorch's own fused forms of "
                     f"{type(probe).__name__} after an eager forward and backward, for comparison with the "
                     "variants' updates; not fusionlab plans")
    return refs
