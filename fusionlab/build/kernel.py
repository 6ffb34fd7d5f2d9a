"""Stage 5, build: KernelSource -> a runnable Kernel, checked against eager PyTorch.

A Kernel imports its generated module (written to a file: Triton reads kernel source
from files) and runs its launcher: with Triton's JIT on CUDA, in the Triton interpreter
on CPU (see fusionlab._env). ``Kernel.check()`` runs the kernel and the eager subgraph it
replaces on the same fresh random inputs, with the captured shapes, dtypes and strides.

Tolerances (per element |fused - eager| <= atol + rtol * |eager|, or <= rtol * max|eager|
where cancellation left an element tiny next to the rest of its tensor; NaN and inf must
sit in the same places; integers and booleans must be equal). Where a long reduction
misses these only because it sums in another order, the kernel passes if its error
against a float64 run of the same subgraph is at most twice eager's:

    float32   rtol 2e-5, atol 2e-5   reassociated sums differ in the last bits
    float16   rtol 5e-3, atol 5e-3   fused kernels keep fp32 between ops; eager rounds
                                     to fp16 after every op (~5 fp16 ulps)
    bfloat16  rtol 4e-2, atol 4e-2   same, ~5 bf16 ulps (bf16 keeps 8 mantissa bits)
    integer/bool                     exact
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
from ..candidates import Candidate
from ..capture import CapturedGraph
from ..codegen.source import KernelSource

TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


def _module_dir() -> Path:
    base = os.environ.get("FUSIONLAB_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "fusionlab"
    )
    path = Path(base) / "modules"
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


@dataclass
class CheckResult:
    """Outcome of checking one kernel against the eager ops it replaces."""

    kernel: str
    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_output: str = ""
    dtype: str = ""
    shapes: tuple = ()
    error: str | None = None
    seconds: float = 0.0
    executor: str = ""

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        if self.error:
            return f"{self.kernel}: FAILED ({self.error}); inputs [{shapes}]"
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"{self.kernel}: {verdict}, max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g}"
            f"{' in ' + self.worst_output if self.worst_output else ''} ({self.dtype}; inputs [{shapes}]; "
            f"{self.executor})"
        )


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
            from .configs import cached_best_config

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
        with _real_tensors():
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
        except Exception as e:  # noqa: BLE001 - a failing kernel is a result, not a crash
            res.error = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            )
            res.seconds = time.perf_counter() - start
            self.check_result = res
            return res
        names = [n for n, *_ in self.source.meta["outputs"]]
        oracle = _float64_reference(self.subgraph, inputs)
        ok = True
        for i, (name, e, g) in enumerate(zip(names, expected, got)):
            good, abs_err, rel_err = compare(g, e)
            if not good and oracle is not None:
                good = no_less_accurate(g, e, oracle[i])
            if abs_err > res.max_abs or not good:
                res.worst_output = name if (abs_err > res.max_abs or not good) else res.worst_output
            res.max_abs = max(res.max_abs, abs_err)
            res.max_rel = max(res.max_rel, rel_err)
            ok &= good
        res.ok = ok
        res.seconds = time.perf_counter() - start
        self.check_result = res
        return res

    # ------------------------------------------------------------------ later stages

    def inspect(self, target: str = "sm_90", *, pool=None, cache: bool = True, timeout: float = 120,
                options: dict | None = None):
        """Compile for a GPU target (in a worker process) and report every stage.

        Returns a :class:`~fusionlab.build.inspect.CompileReport`: TTIR, TTGIR, LLVM IR, PTX
        and SASS, registers, spills, shared memory and a modeled occupancy. A kernel that
        fails to compile gets a report with ``ok=False`` and the reason, never an exception.
        ``pool``: a :class:`~fusionlab.build.workers.WorkerPool` (default: the shared one).
        """
        from .inspect import inspect_many
        from .summary import add_tool_notes

        rep = inspect_many([self.source], target, workers=1, cache=cache, timeout=timeout,
                           progress=False, options=options, pool=pool)[0]
        add_tool_notes([rep], target)
        return rep

    def inspect_configs(self, target: str = "sm_90", *, workers: int = 2, **options):
        """Compile the kernel once per candidate launch config (``source.configs``: block
        sizes, num_warps) for ``target``: a table of config -> registers, spills, shared
        memory and modeled occupancy (a list of ``(config, CompileReport)``).
        """
        from .configs import inspect_configs

        return inspect_configs(self.source, target, workers=workers, best=self.best_config, **options)

    def tune(self, inputs=None, *, cache: bool = True, warmup: int = 25, rep: int = 100):
        """On a CUDA GPU: time each candidate config (``triton.testing.do_bench``), keep the
        fastest as ``best_config`` (used by later CUDA launches) and in the disk cache, keyed
        by the kernel digest and the GPU's name. Raises RuntimeError without a GPU."""
        from .configs import tune

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


def _real_tensors():
    """Run on real tensors even when called from inside torch.compile (fake tensor mode)."""
    import contextlib

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    stack = contextlib.ExitStack()
    stack.enter_context(unset_fake_temporarily())
    stack.enter_context(torch.no_grad())
    return stack


def random_tensor(shape, stride, dtype, device, gen) -> torch.Tensor:
    """A tensor with exactly `shape` and `stride` (expanded/permuted included), random values."""
    shape, stride = tuple(shape), tuple(stride)
    extent = 1 + sum((s - 1) * st for s, st in zip(shape, stride) if s > 0)
    if dtype == torch.bool:
        base = torch.rand(extent, generator=gen) > 0.5
    elif dtype.is_floating_point:
        base = torch.randn(extent, generator=gen).to(dtype)
    else:
        base = torch.randint(0, 8, (extent,), generator=gen).to(dtype)
    return base.to(device).as_strided(shape, stride)


def _float64_reference(subgraph, inputs):
    """The subgraph run on float64 copies of the floating inputs (None when it cannot run)."""
    try:
        up = [x.double() if x.is_floating_point() else x for x in inputs]
        return [o.double() if isinstance(o, torch.Tensor) else o for o in subgraph(*up)]
    except Exception:  # noqa: BLE001 - an op without float64 support: no oracle
        return None


def no_less_accurate(got: torch.Tensor, expected: torch.Tensor, oracle: torch.Tensor) -> bool:
    """Long reductions: the kernel is at least as close to a float64 run as eager is.

    A sum over 16k elements in a different order differs from eager by more than an
    element-wise tolerance allows, while both are equally far from the exact result.
    """
    if not expected.dtype.is_floating_point or got.shape != expected.shape:
        return False
    g, e, o = got.double(), expected.double(), oracle.double()
    inf_e = torch.isinf(e)
    if (
        not torch.equal(torch.isnan(g), torch.isnan(e))
        or not torch.equal(g[inf_e], e[inf_e])
        or torch.isinf(g[~inf_e]).any()
    ):
        return False
    fin = torch.isfinite(e) & torch.isfinite(o)
    if not fin.any():
        return True
    eager_err = float((e[fin] - o[fin]).abs().max())
    fused_err = float((g[fin] - o[fin]).abs().max())
    tiny = torch.finfo(expected.dtype).tiny
    return fused_err <= 2 * eager_err + tiny


def compare(got: torch.Tensor, expected: torch.Tensor) -> tuple[bool, float, float]:
    """(within tolerance, max abs error, max relative error) for one output."""
    if got.shape != expected.shape:
        return False, float("inf"), float("inf")
    if not expected.dtype.is_floating_point:
        same = torch.equal(got.to(expected.dtype), expected)
        return same, 0.0 if same else float("inf"), 0.0 if same else float("inf")
    rtol, atol = TOLERANCES.get(expected.dtype, (2e-5, 2e-5))
    g, e = got.double(), expected.double()
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    if not torch.equal(nan_g, nan_e):
        return False, float("nan"), float("nan")
    inf_e = torch.isinf(e)
    if not torch.equal(g[inf_e], e[inf_e]) or torch.isinf(g[~inf_e]).any():
        return False, float("inf"), float("inf")
    finite = ~(nan_e | inf_e)
    if not finite.any():
        return True, 0.0, 0.0
    diff = (g[finite] - e[finite]).abs()
    max_abs = float(diff.max())
    max_rel = float((diff / e[finite].abs().clamp_min(1e-30)).max())
    scale = float(e[finite].abs().max())
    # element-wise, or against the tensor's scale where cancellation made an element tiny
    ok = bool(((diff <= atol + rtol * e[finite].abs()) | (diff <= rtol * scale)).all())
    return ok, max_abs, max_rel


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
