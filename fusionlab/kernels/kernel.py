"""Stage 5, build: KernelSource -> a runnable Kernel, checked against eager PyTorch.

A Kernel imports its generated module (written to a file: Triton reads kernel source
from files) and runs its launcher: with Triton's JIT on CUDA, in the Triton interpreter
on CPU (see fusionlab._env). ``Kernel.check()`` runs the kernel and the eager subgraph it
replaces on the same fresh random inputs, with the captured shapes, dtypes and strides.

What "equal to eager" means (the tolerance table, the float64 criterion for long
reductions) lives in :mod:`fusionlab.check`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx

from .. import _env
from ..cache import cache_dir
from ..candidates import Candidate
from ..capture import CapturedGraph
from ..check import (
    TOLERANCES,  # noqa: F401 - the table Kernel.check holds kernels to (tests check it is the one)
    CheckResult,
    check_outputs,
    float64_reference,
    random_tensor,
    real_tensors,
)
from ..codegen.source import KernelSource


def _module_dir() -> Path:
    """Where generated modules are written: ``<cache dir>/modules`` (see :mod:`fusionlab.cache`),
    or a folder under the system temp directory where that is not writable."""
    path = cache_dir() / "modules"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        path = Path(tempfile.gettempdir()) / "fusionlab-modules"
        path.mkdir(parents=True, exist_ok=True)
        return path


def load_module(ks: KernelSource):
    """Import the module text of `ks` from a content-addressed file (atomic write)."""
    digest = hashlib.sha256(ks.source.encode()).hexdigest()[:16]
    modname = f"fusionlab_kernel_{ks.name}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    path = _module_dir() / f"{modname}.py"
    if not path.exists() or path.read_text() != ks.source:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(ks.source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception:
        sys.modules.pop(modname, None)
        raise
    return mod


class Kernel:
    """A generated kernel that can run, be checked against eager, inspected and saved."""

    def __init__(self, source: KernelSource, subgraph: torch.fx.GraphModule | None = None):
        self.source = source
        self.subgraph = subgraph  # eager reference: inputs -> tuple of outputs
        self._module = None
        self.check_result: CheckResult | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def module(self):
        if self._module is None:
            self._module = load_module(self.source)
        return self._module

    best_config: dict | None = None  # set by tune() (or found in the disk cache): used for CUDA launches

    def __call__(self, *inputs, config=None):
        if config is None:
            config = self._tuned_config(inputs)
        return getattr(self.module, self.source.launcher)(*inputs, config=config)

    def _tuned_config(self, inputs) -> dict | None:
        """The tuned config for a launch on CUDA (looked up once in the disk cache), else None."""
        dev = next((t.device for t in inputs if isinstance(t, torch.Tensor)), None)
        if dev is None or dev.type != "cuda":
            return None
        if self.best_config is None and not getattr(self, "_tuned_lookup_done", False):
            self._tuned_lookup_done = True
            from ..inspect.configs import cached_best_config

            try:
                self.best_config = cached_best_config(self.source, torch.cuda.get_device_name(dev))
            except Exception:  # noqa: BLE001 - no tuned config: the launcher's default
                self.best_config = None
        return self.best_config

    run = __call__

    # ------------------------------------------------------------------ checks

    def random_inputs(
        self, device: str | torch.device = "cpu", seed: int | None = None
    ) -> list[torch.Tensor]:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        return [
            random_tensor(shape, stride, dtype, device, gen)
            for _, dtype, shape, stride in self.source.meta["inputs"]
        ]

    def check(
        self, inputs=None, device: str | torch.device | None = None, seed: int | None = None
    ) -> CheckResult:
        """Run the kernel and the eager subgraph on the same (fresh random) inputs and compare."""
        with real_tensors():
            return self._check(inputs, device, seed)

    def _check(self, inputs, device, seed) -> CheckResult:
        if device is None:
            device = "cpu" if _env.INTERPRET else "cuda"
        start = time.perf_counter()
        shapes = tuple(tuple(s) for _, _, s, _ in self.source.meta["inputs"])
        out_dtypes = {str(dt).replace("torch.", "") for _, dt, _, _ in self.source.meta["outputs"]}
        res = CheckResult(
            kernel=self.name,
            ok=False,
            dtype="/".join(sorted(out_dtypes)),
            shapes=shapes,
            executor=_env.executor_name(),
        )
        try:
            if inputs is None:
                inputs = self.random_inputs(device, seed)
            if self.subgraph is None:
                raise RuntimeError("no eager reference subgraph attached to this kernel")
            expected = self.subgraph(*inputs)
            got = self(*inputs)
            names = [n for n, *_ in self.source.meta["outputs"]]
            res.ok = check_outputs(res, got, expected, names,
                                   oracle=lambda: float64_reference(self.subgraph, inputs))
        except Exception as e:  # noqa: BLE001 - a failing kernel is a result, not a crash
            res.error = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            )
        res.seconds = time.perf_counter() - start
        self.check_result = res
        return res

    # ------------------------------------------------------------------ later stages

    def inspect(self, target: str = "sm_90", *, pool=None, cache: bool = True, timeout: float = 120,
                options: dict | None = None):
        """Compile for a GPU target (in a worker process) and report every stage.

        Returns a :class:`~fusionlab.inspect.compile.CompileReport`: TTIR, TTGIR, LLVM IR, PTX
        and SASS, registers, spills, shared memory and a modeled occupancy. A kernel that
        fails to compile gets a report with ``ok=False`` and the reason, never an exception.
        ``pool``: a :class:`~fusionlab.inspect.workers.WorkerPool` (default: the shared one).
        """
        from ..inspect.compile import inspect_many
        from ..inspect.summary import add_tool_notes

        rep = inspect_many([self.source], target, workers=1, cache=cache, timeout=timeout,
                           progress=False, options=options, pool=pool)[0]
        add_tool_notes([rep], target)
        return rep

    def inspect_configs(self, target: str = "sm_90", *, workers: int = 2, **options):
        """Compile the kernel once per candidate launch config (``source.configs``: block
        sizes, num_warps) for ``target``: a table of config -> registers, spills, shared
        memory and modeled occupancy (a list of ``(config, CompileReport)``).
        """
        from ..inspect.configs import inspect_configs

        return inspect_configs(self.source, target, workers=workers, best=self.best_config, **options)

    def tune(self, inputs=None, *, cache: bool = True, warmup: int = 25, rep: int = 100):
        """On a CUDA GPU: time each candidate config (``triton.testing.do_bench``), keep the
        fastest as ``best_config`` (used by later CUDA launches) and in the disk cache, keyed
        by the kernel digest and the GPU's name. Raises RuntimeError without a GPU."""
        from ..inspect.configs import tune

        return tune(self, inputs, cache=cache, warmup=warmup, rep=rep)

    def save(self, path):
        """Write a standalone importable .py module (depends only on torch and triton).

        ``path`` is a ``.py`` file or a directory (the module is then ``<name>.py`` in it).
        Returns the path written.
        """
        from .export import save_kernel

        return save_kernel(self.source, path)

    def __repr__(self) -> str:
        status = (
            ""
            if self.check_result is None
            else (" checked ok" if self.check_result.ok else " FAILED check")
        )
        return f"<Kernel {self.name} ({self.source.kind}, {self.source.pattern}){status}>"

    def _repr_html_(self) -> str:
        import html

        return f"<b>{html.escape(repr(self))}</b><pre>{html.escape(self.source.source)}</pre>"


@dataclass
class KernelStatus:
    candidate: str
    kernel: str
    used: bool
    reason: str = ""  # why it is not used
    check: CheckResult | None = None

    def __str__(self) -> str:
        if self.used:
            return f"{self.candidate}: fused ({self.check})" if self.check else f"{self.candidate}: fused"
        return f"{self.candidate}: NOT fused, runs eagerly: {self.reason}"


def extract_subgraph(gm: torch.fx.GraphModule, cand: Candidate) -> torch.fx.GraphModule:
    """The candidate's nodes as a stand-alone GraphModule: inputs -> tuple of outputs (eager)."""
    g = torch.fx.Graph()
    nodes = {n.name: n for n in gm.graph.nodes}
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for name in cand.inputs:
        ph = g.placeholder(name)
        ph.meta = dict(nodes[name].meta)
        env[nodes[name]] = ph
    for name in cand.nodes:
        n = nodes[name]
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[nodes[o]] for o in cand.outputs))
    return torch.fx.GraphModule(gm, g)


_KERNELS: dict[str, Kernel] = {}  # source digest -> built & checked kernel (per process)


def build_kernel(cand: Candidate, graph: CapturedGraph, *, model_name: str = "", validate: bool = True,
                 seed: int | None = None, **codegen) -> tuple[Kernel | None, KernelStatus]:
    """Generate, build and check one candidate's kernel. Never raises for a bad kernel."""
    from ..codegen import LoweringError, generate

    try:
        ks = generate(cand, graph, model_name=model_name, **codegen)
    except LoweringError as e:
        return None, KernelStatus(cand.id, "", False, f"codegen: {e}")
    except Exception as e:  # noqa: BLE001 - a codegen bug must not break the user's model
        return None, KernelStatus(cand.id, "", False, f"codegen failed: {type(e).__name__}: {e}")
    cached = _KERNELS.get(ks.digest)
    if cached is not None and cached.check_result is not None:
        k = cached
    else:
        k = Kernel(ks, extract_subgraph(graph.gm, cand))
        if validate:
            k.check(seed=seed)
        _KERNELS[ks.digest] = k
    res = k.check_result
    if validate and (res is None or not res.ok):
        return None, KernelStatus(cand.id, ks.name, False, f"check against eager failed: {res}", res)
    return k, KernelStatus(cand.id, ks.name, True, "", res)
