"""Stage 1, capture: a model and example inputs -> the ATen FX graphs of one training step.

TorchDynamo traces the Python, AOTAutograd splits forward from backward, and Inductor's
core decompositions lower softmax, layer_norm, gelu, ... to the primitive ops they cost.
Each node gets its facts (shape, dtype, strides, bytes, module path, source line).

Capturing never changes the model: parameters, buffers, gradients, train/eval mode and
the RNG state are the same afterwards as before.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from ._env import debug
from .captured import Capture, CapturedGraph, CaptureError, GraphBreak  # noqa: F401 (re-exported)
from .facts import NodeInfo, node_facts  # noqa: F401 (NodeInfo re-exported)
from .facts import normalize_module_path as normalize_module_path  # re-exported
from .shared_trace import SharedGraph, SharedTrace

# --------------------------------------------------------------------------- capture


class TrainStep(torch.nn.Module):
    """model(*inputs) followed by the loss, traced as one program."""

    def __init__(self, model: Callable, loss_fn: Callable | None, train: bool):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.train_step = train

    def forward(self, *inputs):
        out = self.model(*inputs)
        if not self.train_step:
            return out
        if self.loss_fn is not None:
            return self.loss_fn(out)
        return default_loss(out)


_FRESH = [0]


def fresh_entry(step: TrainStep) -> Callable:
    """``step.forward`` with a code object of its own.

    Dynamo caches compiled graphs per code object and, with nn modules inlined, its guards
    do not tell two wrappers of equal shape apart; a fresh code object per capture or fused
    model keeps one's compiled graphs (and backend) from being reused by another.
    """
    import types

    _FRESH[0] += 1
    fn = TrainStep.forward
    code = fn.__code__.replace(co_name=f"fusionlab_step_{_FRESH[0]}")
    fresh = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return types.MethodType(fresh, step)


def default_loss(out: Any) -> torch.Tensor:
    """The loss used when none is given: the output itself if it is a scalar, else its sum.

    A transformers-style output with a ``loss`` uses that; else ``logits``; a tuple or list
    uses its first floating tensor.
    """
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(out, dict) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        out = logits
    if isinstance(out, (tuple, list)):
        floats = [t for t in out if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not floats:
            raise CaptureError("the model returned no floating tensor to build a loss from; pass loss_fn=")
        out = floats[0]
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return out if out.dim() == 0 else out.sum()
    raise CaptureError(
        f"cannot build a loss from a model output of type {type(out).__name__}; "
        "pass loss_fn=lambda out: <scalar tensor>"
    )


def _model_name(model: Any) -> str:
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__name__", type(model).__name__)


def check_inputs(model: Any, inputs: tuple) -> None:
    """Raise CaptureError unless `model` is callable and `inputs` are tensors (or numbers, or
    lists of tensors) on one device, the device of the model's parameters."""
    if not (isinstance(model, torch.nn.Module) or callable(model)):
        raise CaptureError(
            f"fusionlab.capture needs a torch.nn.Module or a callable, got {type(model).__name__}"
        )
    if not inputs:
        raise CaptureError("fusionlab.capture needs example inputs: capture(model, x, ...)")
    devices = set()
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor):
            devices.add(x.device.type)  # float64/complex are accepted: the op table leaves them unfused
        elif isinstance(x, (int, float, bool)) or x is None:
            continue
        elif isinstance(x, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in x):
            devices.update(t.device.type for t in x)
        else:
            raise CaptureError(
                f"example input {i} is a {type(x).__name__}; fusionlab.capture takes tensors "
                "(or Python numbers, or lists of tensors) as example inputs"
            )
    if isinstance(model, torch.nn.Module):
        params = list(model.parameters()) + list(model.buffers())
        pdev = {p.device.type for p in params}
        if len(pdev) > 1:
            raise CaptureError(f"the model's parameters are on several devices: {sorted(pdev)}")
        if pdev and devices and pdev != devices:
            raise CaptureError(
                f"inputs are on {sorted(devices)} but the model's parameters are on {sorted(pdev)}; "
                "move them to the same device"
            )
    if len(devices) > 1:
        raise CaptureError(f"example inputs are on several devices: {sorted(devices)}")


@contextlib.contextmanager
def preserved_state(model: Any):
    """Restore parameters' grads, buffers, train/eval mode and RNG state on exit.

    The RNG state (CPU and every CUDA device) is ``torch.random.fork_rng``'s to restore.
    """
    module = model if isinstance(model, torch.nn.Module) else None
    if module is not None:
        was_training = {m: m.training for m in module.modules()}
        grads = {p: p.grad for p in module.parameters()}
        buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            if module is not None:
                with torch.no_grad():
                    for m, t in was_training.items():
                        m.training = t
                    for p, g in grads.items():
                        p.grad = g
                    for name, b in module.named_buffers():
                        if name in buffers:
                            b.copy_(buffers[name])


def aten_backend(on_graph: Callable[[str, torch.fx.GraphModule, list], Any]):
    """A dynamo backend: AOTAutograd with Inductor's decompositions; `on_graph(kind, gm, example_inputs)`.

    `on_graph` returns the callable to run for that graph (or None to run the graph as is).
    """
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    def compiler(kind):
        def compile_graph(gm: torch.fx.GraphModule, example_inputs):
            fn = on_graph(kind, gm, example_inputs)
            if getattr(fn, "_boxed_call", False):  # an Inductor-compiled graph: call(list of args)
                return fn
            return make_boxed_func(fn if fn is not None else gm.forward)

        return compile_graph

    return aot_autograd(
        fw_compiler=compiler("forward"),
        bw_compiler=compiler("backward"),
        inference_compiler=compiler("inference"),
        decompositions=select_decomp_table(),
        keep_inference_input_mutations=True,
    )


def capture(
    model: Any,
    *example_inputs: Any,
    loss_fn: Callable | None = None,
    train: bool = True,
    optimizer: Any = None,
    clip_grad_norm: float | None = None,
    **optimizer_settings: Any,
) -> Capture:
    """Capture the forward and backward ATen graphs of one training step of ``model``.

    ``loss_fn(output) -> scalar`` defaults to :func:`default_loss`. With ``train=False``
    only the inference graph is captured (under ``torch.no_grad``). Graph breaks give
    several graphs; ``Capture.breaks`` says where and why dynamo broke.

    ``optimizer=`` (a ``torch.optim.Optimizer`` on the model's parameters, or ``"adamw"`` /
    ``"adam"`` / ``"sgd"`` with its settings as keyword arguments or a dict with a ``"name"``)
    adds the update, with the optional global-norm clip ``clip_grad_norm=``, as the graph
    ``opt0`` in ``Capture.optimizer`` (see :mod:`fusionlab.optim`).
    """
    check_inputs(model, example_inputs)
    if optimizer is None and (optimizer_settings or clip_grad_norm is not None):
        extra = sorted(optimizer_settings) + (["clip_grad_norm"] if clip_grad_norm is not None else [])
        raise CaptureError(f"capture() got optimizer settings {extra} but no optimizer=")
    opt_step = None
    if optimizer is not None:
        if not train:
            raise CaptureError("optimizer= needs a training step (train=True)")
        from .optim.capture import capture_optimizer

        opt_step = capture_optimizer(model, optimizer, optimizer_settings, clip_grad_norm)
    from torch._dynamo.backends.debugging import ExplainWithBackend

    graphs: list[CapturedGraph] = []
    counters = {"forward": 0, "backward": 0, "inference": 0}

    shared: list[SharedGraph] = []

    def on_graph(kind: str, gm: torch.fx.GraphModule, example):
        index = counters[kind]
        counters[kind] += 1
        graphs.append(CapturedGraph(index=index, kind=kind, gm=gm, nodes=node_facts(gm)))
        forward = next((s for s in shared if s.ref.kind == "forward" and s.ref.index == index), None)
        shared.append(SharedGraph(graphs[-1], example, forward if kind == "backward" else None))
        return shared[-1]

    step = TrainStep(model, loss_fn, train)
    explain = ExplainWithBackend(aten_backend(on_graph))
    start = time.perf_counter()
    with preserved_state(model):
        if isinstance(model, torch.nn.Module):
            model.train(train)
        entry = fresh_entry(step).__func__  # compiled unbound: a fused step runs it with its own TrainStep
        compiled = torch.compile(entry, backend=explain, dynamic=False)
        kept = False
        try:
            with contextlib.ExitStack() as stack:
                if not train:
                    stack.enter_context(torch.no_grad())
                out = compiled(step, *example_inputs)
                if train:
                    if not isinstance(out, torch.Tensor) or out.dim() != 0:
                        raise CaptureError(
                            f"the loss must be a scalar tensor, got {type(out).__name__}"
                            + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
                        )
                    if not out.requires_grad:
                        raise CaptureError(
                            "the loss does not require grad: the model has no parameters that "
                            "require grad, or the output does not depend on them "
                            "(capture(..., train=False) captures inference only)"
                        )
                    # gradients of the leaves, returned rather than accumulated: the model's
                    # (and inputs') existing .grad stay exactly as they were
                    leaves = _leaves(out)
                    if leaves:
                        torch.autograd.grad(out, leaves, allow_unused=True)
            breaks = _breaks(explain)
            kept = breaks == [] and bool(graphs)  # None: unknown, so not kept
        except CaptureError:
            raise
        except Exception as e:  # noqa: BLE001 - turn deep torch errors into one clear message
            raise CaptureError(_explain_failure(model, e)) from e
        finally:
            if not kept:
                _forget_compiled_code(entry)
    seconds = time.perf_counter() - start
    breaks = breaks or []

    if not graphs:
        raise CaptureError(
            "dynamo produced no graph for this model (it ran entirely in Python)"
            + (f"; graph breaks: {'; '.join(map(str, breaks))}" if breaks else "")
        )
    graphs.sort(key=lambda g: (g.index, {"forward": 0, "inference": 0, "backward": 1}[g.kind]))
    shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in example_inputs]
    cap = Capture(
        model_name=_model_name(model),
        graphs=graphs,
        breaks=breaks,
        train=train,
        seconds=seconds,
        input_shapes=shapes,
        meta={"loss_fn": loss_fn, "model": model},
        optimizer=opt_step,
        trace=SharedTrace(compiled, entry.__code__, shared) if kept else None,
    )
    debug(1, cap.summary())
    return cap


def _breaks(explain) -> list[GraphBreak] | None:
    """Dynamo's graph breaks, from the ExplainWithBackend that wrapped the capture's backend
    (None if it could not say)."""
    try:
        report = explain.output()
    except Exception as e:  # noqa: BLE001 - break reporting is best effort
        debug(1, "could not read graph break reasons:", e)
        return None
    breaks = []
    for br in report.break_reasons:
        where = ""
        if br.user_stack:
            fr = br.user_stack[-1]
            where = f"{fr.filename.rsplit('/', 1)[-1]}:{fr.lineno} in {fr.name}"
        breaks.append(GraphBreak(reason=str(br.reason).strip().splitlines()[0], where=where))
    return breaks


def _leaves(out: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors `out` depends on (through AccumulateGrad nodes of its graph)."""
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor):
            if all(var is not v for v in leaves):
                leaves.append(var)
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


def _forget_compiled_code(entry) -> None:
    """Drop dynamo's cache entries for a capture's entry point (they are never used again)."""
    try:
        from torch._C._dynamo.eval_frame import reset_code

        reset_code(entry.__code__)
    except Exception:  # noqa: BLE001 - private API; a stale entry is harmless
        pass


def _explain_failure(model: Any, e: Exception) -> str:
    name = _model_name(model)
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if "raised:" in text and "backend=" in first:
        # BackendCompilerFailed: the real error is on the lines after "raised:"
        inner = [ln for ln in text.split("raised:", 1)[1].splitlines() if ln.strip()]
        if inner:
            first = inner[0].strip()
            hint = ""
            if "inplace operation" in first or "modified by an inplace" in text:
                hint = (" (this comes from the model itself: eager PyTorch raises it too when the "
                        "step's backward runs; use an out-of-place op)")
            return f"running one training step of {name} failed: {first}{hint}"
    cause = re.search(r"got (\w+Error)\((['\"])(.*?)\2\)", text, re.S)
    if cause:
        first = f"{first}: {cause.group(1)}: {cause.group(3)}"
    user = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text.split("from user code:")[-1]) if "from user code:" in text else []
    if user:
        file, line, fn = user[-1]
        first += f" (at {file.rsplit('/', 1)[-1]}:{line} in {fn})"
    kind = type(e).__name__
    if "Unsupported" in kind or "dynamo" in type(e).__module__:
        return f"TorchDynamo cannot trace {name}: {first}"
    return f"running one training step of {name} failed: {kind}: {first}"
