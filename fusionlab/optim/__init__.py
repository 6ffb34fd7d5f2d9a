"""The optimizer update as part of the captured training step: capture, candidates, kernels.

    cap = fusionlab.capture(model, x, loss_fn=..., optimizer="adamw", lr=1e-3, clip_grad_norm=1.0)
    cap.optimizer            -> OptimizerStep: the opt0 ATen graph, which node updates which parameter
    find_candidates(cap).optimizer -> the per-parameter chains and the horizontal multi-tensor groups
    upd = fusionlab.optim.fused_update(cap)   -> runs the update with one Triton launch per group
    upd.step()                                 # after loss.backward(), instead of optimizer.step()
    fusionlab.optim.sync_report(cap)           -> which host syncs remain in the captured step

Stages: capture.py (tracing), candidates.py, selection.py (the form a FusionPlan picks),
kernels.py (codegen of the Triton kernels), fused.py (running them on the optimizer's own
state), cpu.py (the update compiled by Inductor, what a CPU times), check.py (vs eager), sync.py.
"""

from .capture import OptimizerStep, UpdateGroup
from .check import UpdateCheck, check_update
from .fused import FusedUpdate, fused_update
from .sync import SyncReport, sync_report


def update_for_profile(model, optimizer, cuda: bool, form: str | None = "multi_tensor"):
    """(step function, how it runs) of the fused update of ``optimizer`` for ``fl.profile``'s
    fusionlab variant, in the plan's ``form`` (``plan.optimizer_form``): fusionlab's Triton kernels
    on a GPU, the update compiled by Inductor on a CPU (the interpreter is never timed; one
    compiled function either form); ``(None, reason)`` when it runs as eager ``optimizer.step()``."""
    from .capture import capture_optimizer

    if form is None:
        return None, "eager optimizer.step() (the plan selects no form of the update)"
    step = capture_optimizer(model, optimizer, {}, None)
    if not step.fused:
        return None, f"eager optimizer.step() ({step.reason})"
    if cuda:
        what = "multi-tensor" if form == "multi_tensor" else "per-parameter"
        return FusedUpdate(step, form=form).step, f"fusionlab {what} Triton kernels"
    from .cpu import CompiledUpdate

    return CompiledUpdate(step).step, "fused (opt0 compiled by Inductor, cpp)"

__all__ = ["FusedUpdate", "OptimizerStep", "SyncReport", "UpdateCheck", "UpdateGroup", "check_update",
           "fused_update", "sync_report", "update_for_profile"]
