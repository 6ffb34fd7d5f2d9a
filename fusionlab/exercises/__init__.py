"""Checked exercises for the tutorial notebooks (``notebooks/0N_*.ipynb``).

One module per notebook; every checker takes the student's answer (and what it needs to work
out the right one: the capture, the plan, the profile the student just made) and returns a
:class:`Feedback` that says, in words a student understands, what is right or wrong::

    from fusionlab import exercises as ex
    ex.op_by_op_bytes(my_count, cap)     # [1.1 bytes op by op] not yet right: ... counted only reads

An answer left as ``...`` gets "not answered yet" and a hint, so a notebook runs top to bottom
before it is done. ``bool(feedback)`` is True only for a right answer.
"""

from .capture_and_look import best_backward_candidate, kernel_counts, matmul_nodes
from .feedback import Feedback
from .own_fusion import (
    forward_writes,
    norm_apart_from_act,
    reference_rmsnorm_silu,
    rmsnorm_silu_module,
)
from .pick_and_generate import bias_gelu_kernel, fused_bytes
from .profile_step import best_group_on_gpu, inductor_only, speedup, verdict
from .why_fusion import fair_speedup, op_by_op_bytes, roofline_us

__all__ = [
    "Feedback", "best_backward_candidate", "best_group_on_gpu", "bias_gelu_kernel", "fair_speedup",
    "forward_writes", "fused_bytes", "inductor_only", "kernel_counts", "matmul_nodes", "norm_apart_from_act",
    "op_by_op_bytes",
    "reference_rmsnorm_silu", "rmsnorm_silu_module", "roofline_us", "speedup", "verdict",
]
