"""The step harness: one variant's own training step, optimizer and clock.

``fresh_step`` wraps a model and a loss in a ``TrainStep`` (forward, loss) with a code
object of its own; :class:`Variant` runs one whole training step of it (forward, loss,
backward, optimizer step, zero_grad); :class:`Timer` times a step with CUDA events on a
GPU and ``time.perf_counter`` on CPU.
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

    def step(self, mark: bool = False):
        """One training step; `mark`: a torch.profiler range around forward + backward (the kernel count's window)."""
        with record_function(FWD_BWD) if mark else contextlib.nullcontext():
            loss = self.fn(*self.inputs)
            loss.backward()
        if self.opt is not None:
            (self.update or self.opt.step)()
            self.opt.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)
        return loss.detach()


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
