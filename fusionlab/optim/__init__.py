"""The optimizer update as part of the captured training step: capture, candidates, kernels.

    cap = fusionlab.capture(model, x, loss_fn=..., optimizer="adamw", lr=1e-3, clip_grad_norm=1.0)
    cap.optimizer            -> OptimizerStep: the opt0 ATen graph, which node updates which parameter
    find_candidates(cap).optimizer -> the per-parameter chains and the horizontal multi-tensor groups
    upd = fusionlab.optim.fused_update(cap)   -> runs the update with one Triton launch per group
    upd.step()                                 # after loss.backward(), instead of optimizer.step()
    fusionlab.optim.sync_report(cap)           -> which host syncs remain in the captured step

Stages: capture.py (tracing), candidates.py, kernels.py (codegen of the Triton kernels),
fused.py (running them on the optimizer's own state), check.py (vs eager), sync.py.
"""

from .capture import OptimizerStep, UpdateGroup
from .check import UpdateCheck, check_update
from .fused import FusedUpdate, fused_update
from .sync import SyncReport, sync_report


def update_for_profile(model, optimizer, cuda: bool):
    """(step function, how it runs) of the fused update of ``optimizer`` for ``fl.profile``'s
    fusionlab variant: the Triton multi-tensor kernels on a GPU, the update compiled by Inductor
    on a CPU (the interpreter is never timed); ``(None, reason)`` when it runs unfused."""
    from .capture import capture_optimizer

    step = capture_optimizer(model, optimizer, {}, None)
    if not step.fused:
        return None, f"eager optimizer.step() ({step.reason})"
    if cuda:
        return FusedUpdate(step).step, "fusionlab multi-tensor Triton kernels"
    from .cpu import CompiledUpdate

    return CompiledUpdate(step).step, "fused (opt0 compiled by Inductor, cpp)"

__all__ = ["FusedUpdate", "OptimizerStep", "SyncReport", "UpdateCheck", "UpdateGroup", "check_update",
           "fused_update", "sync_report", "update_for_profile"]
