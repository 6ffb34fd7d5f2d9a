"""Executors: how the fused training step runs each selected group.

``make_backend(plan, executor=...)`` (and ``plan.compile(model, executor=...)``) calls
``executor(candidate, graph) -> (callable | None, KernelStatus)`` once per selected group
it finds in a graph; the callable takes the group's inputs and returns a tuple of its
outputs. The default (no executor) builds fusionlab's own Triton kernels, which run on a
GPU, or in the Triton interpreter on CPU: right, but far too slow to time.

:class:`InductorGroupExecutor` is what a CPU-only profile measures instead: it hands each
selected group's subgraph, *on its own*, to Inductor (``compile_fx``), which compiles it
into one C++/OpenMP kernel (or a few, where one group needs more than one loop nest on
CPU). Fusion therefore happens only inside the groups the user picked; every other op
runs as in eager. Each compiled group is checked against the eager subgraph on fresh
random inputs with the captured shapes, dtypes and strides, then once more with NaN, +inf
and -inf written into its floating inputs (Inductor's rules for them are not always
eager's: a var over one inf element is NaN in eager, 0 in Inductor), and refused (it runs
unfused, ``KernelStatus.used == False`` with the reason) on any mismatch.

:class:`InductorGraphExecutor` (what ``profile`` uses on CPU) checks the groups the same way,
then also implements ``compile_graph(kind, gm, example_inputs, groups, refused=...)``:
the backend hands it the whole forward or backward graph, which Inductor compiles in one
piece under a fusion policy (an op's value is stored unless every reader is in its group;
the scheduler merges loop nests only inside one group). The step then runs Inductor's
generated wrapper instead of the FX graph's Python code, which costs the per-group
executor several hundred microseconds a step in views, getitems and unfused ops.

Matmul epilogues (a matmul candidate, :mod:`fusionlab.epilogue`). Both executors hand the
group to Inductor like any other and fuse what Inductor's CPU backend can: checked on torch
2.13 (AVX2 CPU), Inductor compiles an mm/addmm/bmm as a library call
(``extern_kernels.addmm`` etc., oneDNN/MKL, as eager) and the whole epilogue as one C++
loop nest that reads the matmul's result back (gpt2-block: ``extern_kernels.addmm`` then
``cpp_fused_gelu_view``), so on CPU the group saves the epilogue's kernels and traffic but
not the matmul result's round trip. Inductor has C++ GEMM templates that apply an epilogue
in the matmul's own loop (``CppGemmTemplate``, ``CppBmmTemplate``), but only under
``max_autotune`` with ``"CPP"`` in ``max_autotune_gemm_backends``, and for mm/addmm only
when the weight is a constant (``use_cpp_gemm_template(require_constant_mat2=True)``:
frozen inference graphs), never in a training step, whose weights are graph inputs; bmm
would qualify (``cpp_fused_bmm_mul`` for a bmm+scale group), at the cost of autotuning every
matmul of the step, so the executors leave ``max_autotune`` off. A Triton kernel of
fusionlab's (``codegen/matmul.py``) is what keeps the result in registers, on a GPU.

Checks in one compile. Before a graph's groups are built, the backend hands them all to
``executor.prepare(graph, groups)``, which puts every group whose check is not known side by
side in one FX graph (:mod:`.bundle`) and compiles it once, under the same policy as the
whole graph (:mod:`.policy`), then checks each group's outputs on its own inputs. A C++
function holds one group's loop nests and its source carries no per-compile name, so the
whole graph's compile finds each group's code already built (Inductor's code cache is keyed
by source): the checks cost one lowering per graph, not one compile and C++ build per group.
A group that fails is refused alone; a bundle that cannot be built or run leaves every group
to be compiled and checked alone, as before. Twin groups (the same ops, wiring and inputs:
the same block in the next layer) are checked once, and the result kept for each.

Builds. Inductor builds each C++ function of a compile as a shared library of its own, one
``g++`` run per function, most of it spent on the headers every function includes. Under the
executors' compiles (:mod:`.builds`) the functions a compiled module asks for are built
together, as one library (two side by side where Inductor has two compile workers), on the
first call of any of them (compiles that run nothing in between share one build); each function stays findable by its own source, so a function built
once (a group checked in its bundle, then run in the whole graph; a toggle) is loaded from
the library that holds it, in this process or a later one, and never built again. The code
and compile flags are Inductor's; only the packaging differs, and the link, done by GNU gold
where the machine has it (a third of the default linker's time against libtorch).
``FUSIONLAB_BATCH_BUILDS=0`` turns batching off, ``FUSIONLAB_GOLD=0`` gold.

Pieces. A graph of more than twice :data:`.pieces.PIECE_OPS` computing ops is compiled as a few
pieces, cut only where no candidate (selected or not) spans, so the cuts never depend on the
plan: nothing fuses across a group boundary under the policy, and every value that crosses
one is stored anyway, so the pieces run the same loop nests as one compile would. A toggle
lowers only the piece that holds the changed group; the others are the same compiles, served
from Inductor's cache (:mod:`.pieces`). ``FusedStep.replan(plan)`` swaps a new selection into
a compiled step without a new Dynamo or AOTAutograd trace, keeping every graph whose selected
groups did not change; the profiler does so between profiles given ``keep=KeptSteps()``.

Caches. The fusion policy is part of Inductor's FX graph cache key (a post-fusion scheduler
pass whose ``uuid()`` hashes it), so a plan compiled once, in this process or an earlier
one, comes back from that cache, and one plan's code is never served for another. A hit
runs no lowering or scheduling, so the loop listing verified at the miss is kept in
fusionlab's cache (``fusionlab.cache``, namespace "graphs") under Inductor's key, read back
and verified again; a hit without one is compiled again with the cache off. Group check
results are kept by the group's ops, input shapes, strides and dtypes and what decides
Inductor's code for it (namespace "checks"): a toggle recompiles only the piece it changed
and rechecks only the groups it changed.
"""

from __future__ import annotations

from .groups import CompiledGroup, InductorGroupExecutor, clear_cache, count_generated_kernels
from .whole_graph import CompiledGraph, FusionPolicyError, InductorGraphExecutor, KernelOrigin

__all__ = [
    "CompiledGraph", "CompiledGroup", "FusionPolicyError", "InductorGraphExecutor", "InductorGroupExecutor",
    "KernelOrigin", "clear_cache", "count_generated_kernels",
]
