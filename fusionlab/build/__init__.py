"""fusionlab.build: compile generated kernels for real GPU targets (no GPU needed), cache and export them.

* ``inspect``: ``inspect_source`` / ``inspect_many`` -> ``CompileReport`` (TTIR, TTGIR, LLVM IR,
  PTX, SASS, registers, spills, shared memory, modeled occupancy);
* ``workers``: the pool of compile worker processes those run in;
* ``cache``: the content-addressed disk cache (``FUSIONLAB_CACHE_DIR``);
* ``export``: ``save_kernel`` / ``export_kernels`` write standalone kernel modules.
"""

from __future__ import annotations

from .kernel import CheckResult, Kernel, KernelStatus, build_kernel, extract_subgraph

__all__ = [
    "CheckResult", "Kernel", "KernelSet", "KernelStatus", "build_kernel", "extract_subgraph",
    "export_plan", "kernels_for_plan",
]


class KernelSet(list):
    """The kernels of a plan's selected candidates (a list of Kernel), with what happened to each."""

    def __init__(self, kernels=(), statuses=()):
        super().__init__(kernels)
        self.statuses = list(statuses)

    def inspect(self, target: str = "sm_90", *, workers: int = 2, progress: bool = True, **options):
        """Compile every kernel for `target` in worker processes; one CompileReport each."""
        from .inspect import inspect_many

        return inspect_many([k.source for k in self], target, workers=workers, progress=progress, **options)

    def export(self, directory):
        from .export import export_kernels

        return export_kernels([k.source for k in self], directory)

    def __repr__(self) -> str:
        lines = [f"{len(self)} kernels"]
        lines += ["  " + str(s) for s in self.statuses]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(repr(self)) + "</pre>"


def kernels_for_plan(plan, *, validate: bool = True, seed: int | None = None, **codegen) -> KernelSet:
    """Generate, build and (by default) check the kernel of every selected candidate.

    Kernels that fail their check are still returned (so they can be read and inspected);
    candidates the codegen cannot handle are listed in ``.statuses`` with the reason.
    """
    from ..codegen import LoweringError, generate

    kernels, statuses = [], []
    for cand in plan.selected:
        graph = plan.capture.graph(cand.graph)
        kernel, status = build_kernel(cand, graph, model_name=plan.capture.model_name,
                                      validate=validate, seed=seed, **codegen)
        if kernel is None and status.kernel:
            # generated but failed its check: keep it visible
            try:
                ks = generate(cand, graph, model_name=plan.capture.model_name, **codegen)
                kernel = Kernel(ks, extract_subgraph(graph.gm, cand))
                kernel.check_result = status.check
            except LoweringError:
                kernel = None
        if kernel is not None:
            kernels.append(kernel)
        statuses.append(status)
    return KernelSet(kernels, statuses)


def export_plan(plan, directory, **options):
    """Write each selected candidate's kernel as a standalone module (plus an __init__.py)."""
    return kernels_for_plan(plan, **options).export(directory)
