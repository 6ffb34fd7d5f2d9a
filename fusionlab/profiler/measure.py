"""``profile()``: time whole training steps of each variant, profile one step, model the GPU.

Read ``profile`` top to bottom: it checks its arguments, picks the plan, builds one
:class:`~fusionlab.profiler.harness.Variant` per name in ``compare``, runs each one's first
(compiling) step alone, then the timed rounds, counts kernels, profiles one more step under
torch.profiler and puts the modeled GPU figures beside the measured ones.

The timed rounds run the requested steps, then keep going while a variant's verdict
against eager (:func:`~fusionlab.profiler.results.variant_verdict`) is undecided, the
measuring budget lasts and the step cap is not reached. Verdicts are checked each time
the step count has grown by half (not every round: from 20 to 400 steps that is nine
looks), and with 99 % intervals: fewer looks at the data and stricter ones, fewer chances
to stop on a lucky streak and call noise a speed-up.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence

import torch

from ..capture import capture, preserved_state
from ..cost import GPUSpec, get_gpu, roofline, step_cost
from ..executors import InductorGraphExecutor, InductorGroupExecutor, count_generated_kernels
from ..plan import FusionPlan, plan_for
from ..profile_options import (
    DEFAULT_COMPARE,
    MAX_STEPS,
    STEPS,
    VARIANTS,
    WARMUP,
    default_budget,
    parse_compare,
    resolve_executor,
)
from .events import profiled_steps
from .harness import (
    Timer,
    Variant,
    capture_inductor_code,
    describe_device,
    device_of,
    fresh_step,
    make_optimizer,
    reference_variants,
    trace_notes,
)
from .kept import kept_notes
from .results import ProfileResult, variant_verdict


def profile(
    model,
    inputs,
    plan=None,
    loss_fn: Callable | None = None,
    optimizer="adamw",
    steps: int = STEPS,
    warmup: int = WARMUP,
    compare: Sequence[str] | str = DEFAULT_COMPARE,
    gpu: str | GPUSpec = "h100",
    lr: float = 1e-3,
    *,
    executor="auto",
    budget_s: float | None = None,
    max_steps: int = MAX_STEPS,
    trace: bool | str = False,
    profile_step: bool = True,
    references: bool = True,
    model_name: str | None = None,
    verbose: bool = False,
    keep=None,
) -> ProfileResult:
    """Time whole training steps of `model` for each variant in `compare`; model the GPU cost.

    ``inputs``: a tuple of example inputs (a single tensor is accepted). ``plan``: a
    FusionPlan (``None``: capture the model and select every candidate). ``optimizer``:
    "adamw" | "adam" | "sgd" | None | ``callable(params) -> Optimizer``, the same in every
    variant. ``executor`` for the fusionlab variant: "auto" (Triton kernels on a GPU,
    "inductor" on CPU), "triton", "inductor" (whole graphs compiled by Inductor, fusing
    only inside the selected groups), "inductor-groups" (each group compiled alone and
    called from the FX graph's Python code) or a callable (see :mod:`fusionlab.executors`).
    ``steps`` measured steps are run at least; then, while a variant's verdict against
    eager is undecided (:meth:`ProfileResult.verdict`), more interleaved rounds, for up to
    ``budget_s`` seconds of timed rounds in all (default :data:`~fusionlab.profile_options.BUDGET_S`
    or ``$FUSIONLAB_PROFILE_BUDGET``; 0: exactly ``steps``) and ``max_steps`` steps per
    variant; the result's notes say how many steps were measured and why measuring stopped.
    ``trace``: True or a path: export a Chrome trace of one
    profiled step of each variant. The model itself is never changed.
    """
    inputs, compare = _check_arguments(model, inputs, compare, steps, warmup)
    budget = default_budget() if budget_s is None else float(budget_s)
    if not budget >= 0:
        raise ValueError(f"budget_s must be >= 0 seconds, got {budget_s}")
    spec = get_gpu(gpu)
    dev = device_of(model, inputs)
    cuda = dev.type == "cuda"
    notes: list[str] = []

    with preserved_state(model):
        plan, loss_fn = _plan_to_profile(model, inputs, plan, loss_fn, notes, verbose)
        variants = _build_variants(compare, model, inputs, plan, loss_fn, optimizer, lr, executor, dev, keep)
        if references:
            variants += reference_variants(variants, model, inputs, plan, loss_fn, optimizer, lr, dev, notes)
        timer = Timer(cuda)
        live = _first_steps(variants, timer, verbose)
        notes += _backend_notes(live) + kept_notes(variants) + trace_notes(live, plan)
        if keep is not None:
            for v in variants:
                keep.put(getattr(v, "keep_key", None), model, v)
        stopped = _timed_rounds(live, timer, warmup, steps, budget, max(max_steps, steps), verbose)
        _count_kernels(plan, variants)
        trace_path = profiled_steps(live, cuda, trace) if (profile_step or trace) else None
        modeled = _modeled(plan, variants, spec, notes)

    notes += _spread_notes(live) + _closing_notes(variants, cuda)
    return ProfileResult(
        model_name=model_name or plan.capture.model_name, device=describe_device(dev), steps=steps,
        warmup=warmup, optimizer=_optimizer_name(optimizer), variants=[v.result for v in variants],
        plan=plan, gpu=spec, modeled=modeled, chrome_trace=trace_path, notes=notes, stopped=stopped,
        budget_s=budget,
    )


# --------------------------------------------------------------------------- the steps of profile()


def _check_arguments(model, inputs, compare, steps: int, warmup: int) -> tuple[tuple, list[str]]:
    """(inputs as a tuple, the variants to compare), or a TypeError/ValueError saying what is wrong."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"profile trains copies of the model: pass a torch.nn.Module, not {type(model).__name__}")
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    if isinstance(compare, str):
        compare = parse_compare(compare)
    compare = list(dict.fromkeys(compare))
    if not compare or any(c not in VARIANTS for c in compare):
        raise ValueError(f"compare must name variants among {', '.join(VARIANTS)}; got {compare}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0 (got steps={steps}, warmup={warmup})")
    return tuple(inputs), compare


def _plan_to_profile(model, inputs, plan, loss_fn, notes: list[str], verbose: bool):
    """(the plan, the loss function): the given plan, or every candidate of a fresh capture."""
    if plan is None:
        if verbose:
            print("fusionlab.profile: capturing one training step ...")
        plan = plan_for(capture(model, *inputs, loss_fn=loss_fn))
        notes.append(f"plan: all {len(plan.selected)} candidates selected (no plan given)")
        return plan, loss_fn
    if not plan.capture.train:
        raise ValueError("the plan was captured with train=False; profile times training steps")
    return plan, loss_fn if loss_fn is not None else plan.capture.meta.get("loss_fn")


def _build_variants(compare, model, inputs, plan, loss_fn, optimizer, lr, executor, dev, keep=None) -> list[Variant]:
    """One Variant per name, each with its own model copy, optimizer and (compiled) step; with
    `keep`, the steps an earlier profile kept are taken back (:mod:`.kept`)."""
    device = describe_device(dev)
    resolved = None  # (executor, its name) for the fusionlab variant; "unfused" runs the same kind
    variants = []
    for name in compare:
        key = keep.key(name, model, inputs, plan, loss_fn, optimizer, lr, executor) if keep is not None else None
        v = keep.take(key, model, inputs, plan, lambda ps: make_optimizer(optimizer, ps, lr)) if key else None
        if v is None:
            if resolved is None and name in ("fusionlab", "unfused"):
                resolved = resolve_executor(executor, dev)
            v = Variant(name, model, inputs, loss_fn, optimizer, lr, device)
            v.cuda = dev.type == "cuda"
            _give_step(v, fresh_step(v.model, loss_fn), plan, *(resolved or (None, "")), cuda=v.cuda)
        v.keep_key = key
        variants.append(v)
    return variants



def _give_step(v: Variant, step, plan, executor, executor_name: str, cuda: bool) -> None:
    """Set `v.fn`: eager runs `step` as it is, the others through torch.compile."""
    from ..backend import make_backend
    from ..shared_trace import TracedStep

    if v.name == "eager":
        v.fn, v.result.executor = step, "PyTorch eager (ATen)"
        return
    if v.name == "inductor":
        v.fn = torch.compile(step, dynamic=False)
        v.result.executor = f"torch.compile (inductor, {'triton' if cuda else 'cpp'})"
        if v.opt is not None and getattr(plan.capture, "optimizer", None) is not None:
            opt = v.opt  # the compiled update, as torch documents torch.compile with an optimizer
            v.update = torch.compile(lambda: opt.step(), dynamic=False)
            v.result.executor += "; update: torch.compile(opt.step)"
        return
    if v.name == "fusionlab":
        v.executor, v.result.executor = executor, executor_name
        v.backend = make_backend(plan, executor=executor)
        v.result.report = v.backend.report
        if v.opt is not None and getattr(plan.capture, "optimizer", None) is not None:
            from ..optim import update_for_profile  # captured with optimizer=: the plan's form

            v.update, how = update_for_profile(v.model, v.opt, cuda, form=plan.optimizer_form)
            v.result.executor += f"; update: {how}"
    else:  # unfused: the same captured graphs with nothing selected
        nothing = FusionPlan(plan.capture, plan.candidates)
        if isinstance(executor, InductorGraphExecutor):
            # the fusionlab variant's executor with nothing selected: the two differ
            # only by the fusions the user picked
            v.executor = InductorGraphExecutor(eager_outside_groups=executor.eager_outside_groups)
            v.result.executor = "inductor-cpp (nothing fused)"
        else:
            v.result.executor = "captured ATen graphs, op by op"
        v.backend = make_backend(nothing, executor=v.executor)
    v.fn = TracedStep(step, v.backend, plan.capture)  # the capture's trace, where Dynamo's guards accept it


def _first_steps(variants: list[Variant], timer: Timer, verbose: bool) -> list[Variant]:
    """The first step of each variant alone (it compiles the compiled ones); returns those that ran.

    A variant that fails is kept with its error, so one failure does not lose the others;
    eager failing means the model itself fails, and that is raised."""
    for v in variants:
        if verbose:
            print(f"fusionlab.profile: first step of {v.name} ({v.result.executor}) ...")
        keep_code = capture_inductor_code(v.codes) if v.name == "inductor" else contextlib.nullcontext()
        try:
            with keep_code:
                v.result.first_step_s, v.first_loss = timer.time(v.step)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            v.result.error = f"{type(e).__name__}: {msg}"
            if v.name == "eager":
                raise
    return [v for v in variants if v.result.error is None]


def _backend_notes(live: list[Variant]) -> list[str]:
    fl = next((v for v in live if v.name == "fusionlab"), None)
    rep = fl.result.report if fl is not None else None
    if rep is not None and not rep.graphs:
        return ["fusionlab: the backend saw no graph (dynamo did not compile the step)"]
    return []


def _timed_rounds(live: list[Variant], timer: Timer, warmup: int, steps: int, budget_s: float,
                  max_steps: int, verbose: bool) -> str:
    """Interleaved warm-up and measured steps, one step of each variant a round, the order rotating;
    then more rounds until every verdict against eager (or the first variant) is decided.

    Returns why measuring stopped: "decided", "budget", "cap" or "alone" (one variant).
    The garbage collector is off during the rounds (a collection lands in no variant's
    time) and runs between them when the verdicts are looked at."""
    losses: dict[str, list] = {v.name: [v.first_loss] for v in live}
    rounds = 0

    def one_round(measured: bool) -> None:
        nonlocal rounds
        k = rounds % len(live)
        for v in live[k:] + live[:k]:
            dt, loss = timer.time(v.step)
            losses[v.name].append(loss)
            update = v.update_seconds()
            if measured:
                v.result.samples.append(dt)
                if update is not None:
                    v.result.update_samples.append(update)
        rounds += 1

    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        for i in range(warmup + steps):
            one_round(i >= warmup)
        stopped = _more_rounds(live, one_round, start, budget_s, max_steps, verbose)
    finally:
        if gc_was:
            gc.enable()
    for v in live:
        v.result.losses = [float(x) for x in losses[v.name]]
    return stopped


def _more_rounds(live: list[Variant], one_round, start: float, budget_s: float, max_steps: int,
                 verbose: bool) -> str:
    """Measured rounds while a verdict is undecided, the budget lasts and the cap is not reached."""
    base = next((v for v in live if v.name == "eager"), live[0])  # ProfileResult.baseline
    others = [v for v in live if v is not base and not v.result.reference]  # references never extend it
    if not others:
        return "alone"
    n = len(base.result.samples)
    check_at = n
    while True:
        if n >= check_at:
            gc.collect()
            undecided = [v.name for v in others if not variant_verdict(base.result, v.result).decided]
            if not undecided:
                return "decided"
            check_at = n + max(4, n // 2)
            if verbose:
                print(f"fusionlab.profile: {n} steps, undecided against {base.name}: {', '.join(undecided)}")
        if n >= max_steps:
            return "cap"
        elapsed = time.perf_counter() - start
        per_round = elapsed / max(1, n)  # warm-up rounds included: an overestimate
        if elapsed + per_round > budget_s:
            return "budget"
        one_round(True)
        n += 1


def _count_kernels(plan, variants: list[Variant]) -> None:
    """Kernels per step (forward + backward), from the generated code or the captured graphs."""
    for v in variants:
        r = v.result
        if isinstance(v.executor, InductorGraphExecutor) and v.executor.graphs:
            r.kernels_per_step = sum(g.kernels for g in v.executor.graphs)
            r.kernels_how = "Inductor generated code"
            r.loop_nests = sum(len(g.loops) for g in v.executor.graphs)
        elif v.name in ("eager", "unfused") or r.reference:
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


def _modeled(plan, variants: list[Variant], spec: GPUSpec, notes: list[str]) -> dict:
    """The modeled columns: each variant's step on `spec` (eager and unfused: nothing fused)."""
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
    return modeled


def _spread_notes(live: list[Variant]) -> list[str]:
    """A hint where the step times spread as wide as their median: the machine was busy."""
    wide = [v.result for v in live if v.result.ok and v.result.iqr_ms > 0.5 * v.result.median_ms]
    if not wide:
        return []
    threads = torch.get_num_threads()
    why = ("other processes share this machine" if threads == 1 else
           f"other processes share this machine, or torch's {threads} threads stall each other on cores "
           "others use too (try torch.set_num_threads(1))")
    return ["step times spread widely (" + ", ".join(f"{r.name}: IQR {r.iqr_ms:.1f} ms on a median of "
                                                      f"{r.median_ms:.1f} ms" for r in wide)
            + f"): {why}; verdicts then need more steps (a larger budget)"]


def _closing_notes(variants: list[Variant], cuda: bool) -> list[str]:
    """What the kernel counts and memory figures count, and what ran the fusionlab variant on CPU."""
    notes = ["kernels/step: forward + backward only (the optimizer step is not counted); " + "; ".join(f"{v.name}: {v.result.kernels_how}" for v in variants
                                             if v.result.kernels_how)]
    if any(v.result.update_samples for v in variants):
        how = "CUDA events" if cuda else "time.perf_counter"
        notes.append("update share: time inside the optimizer update (optimizer.step() or the fused update "
                     f"replacing it; zero_grad not counted) over the whole step, both measured ({how}) in the "
                     "same steps, the median over the measured steps")
    nests = [v for v in variants if v.result.loop_nests is not None]
    if nests:
        notes.append("Inductor counts C++ function calls there; a function may hold several loop nests, "
                     "each reading and writing memory: loop nests per step "
                     + ", ".join(f"{v.name} {v.result.loop_nests}" for v in nests))
    if cuda:
        return notes
    notes.append("peak memory: largest CPU allocator total above the step's start, from "
                 "torch.profiler memory events of one profiled step")
    fl = next((v for v in variants if v.name == "fusionlab"), None)
    if fl is not None and fl.executor is None:
        notes.append("fusionlab ran its Triton kernels in the Triton interpreter: correct, but its "
                     "times say nothing about speed (use executor='inductor' on CPU)")
    if fl is not None and getattr(fl.executor, "describe", None):
        notes.append("fusionlab on CPU: " + fl.executor.describe())
    return notes


def _optimizer_name(optimizer) -> str:
    return str(optimizer if not callable(optimizer) else getattr(optimizer, "__name__", "custom"))
