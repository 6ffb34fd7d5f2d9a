"""fusionlab.kernels: compile generated kernels for real GPU targets (no GPU needed), cache and export them.

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

    def inspect(self, target: str = "sm_90", *, workers: int = 2, progress: bool = True, pool=None,
                cache: bool = True, timeout: float = 120, options: dict | None = None):
        """Compile every kernel for ``target`` (``"sm_80"``, ``"sm_89"``, ``"sm_90"``, ``"native"``)
        in up to ``workers`` worker processes (or ``pool``), through the disk cache.

        Returns a :class:`~fusionlab.inspect.summary.CompileReports`: one CompileReport per
        kernel, in order, shown as a table. A kernel that fails to compile (or crashes or hangs
        its worker) gets a failed report with the reason; the others are unaffected.
        """
        from ..inspect.compile import inspect_many
        from ..inspect.summary import CompileReports, add_tool_notes

        reps = inspect_many([k.source for k in self], target, workers=workers, progress=progress,
                            pool=pool, cache=cache, timeout=timeout, options=options)
        add_tool_notes(reps, target)
        return CompileReports(reps, target, [k.source.kind for k in self])

    def inspect_configs(self, target: str = "sm_90", *, workers: int = 2, progress: bool = True, **options):
        """Every kernel's candidate launch configs compiled for ``target`` (one batch):
        ``{kernel name: ConfigTable}`` (see :meth:`Kernel.inspect_configs`)."""
        from ..inspect.configs import inspect_configs_many

        tables = inspect_configs_many([k.source for k in self], target, workers=workers, progress=progress,
                                      best=[k.best_config for k in self], **options)
        return {k.name: t for k, t in zip(self, tables)}

    def export(self, directory, *, include_failed: bool = False):
        """Write each kernel as a standalone module (torch + triton only) plus an ``__init__.py``.

        Kernels that failed their check against eager are left out (with a warning naming
        them) unless ``include_failed``. Returns the paths written, the ``__init__.py`` last.
        """
        import warnings

        from .export import export_kernels

        keep = [k for k in self if include_failed or k.check_result is None or k.check_result.ok]
        dropped = [k.name for k in self if k not in keep]
        if dropped:
            warnings.warn(
                f"not exporting {len(dropped)} kernel(s) that failed their check against eager: "
                f"{', '.join(dropped)} (include_failed=True exports them anyway)",
                RuntimeWarning,
                stacklevel=2,
            )
        return export_kernels([k.source for k in keep], directory)

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
