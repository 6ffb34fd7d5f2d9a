"""Tests for fusionlab.inspect.compile: real compiles for GPU targets, with no GPU.

The kernels are hand-written module texts of the shape codegen produces: a pointwise
kernel, a one-row-per-program reduction and a looped reduction.
"""

from __future__ import annotations

import pytest
from _kernel_sources import BIAS_GELU as POINTWISE
from _kernel_sources import RMSNORM as REDUCTION
from _kernel_sources import SOFTMAX_LOOPED as LOOPED

from fusionlab.codegen.source import KernelSource
from fusionlab.inspect import (
    CompileReport,
    inspect_many,
    inspect_source,
    model_occupancy,
    resolve_target,
    workers,
)
from fusionlab.inspect.compile import annotate_sass

PW_SIG = {"in_x": "*fp32", "in_bias": "*fp32", "out_y": "*fp32", "xnumel": "i32"}


def pointwise(xblock: int = 1024, source: str = POINTWISE, num_warps: int = 4) -> KernelSource:
    return KernelSource(
        name="fused_bias_gelu_0",
        launcher="launch_fused_bias_gelu_0",
        source=source,
        signature=PW_SIG,
        constexprs={"XBLOCK": xblock},
        num_warps=num_warps,
        kind="pointwise",
    )


def reduction(rblock: int = 1024, num_warps: int = 4) -> KernelSource:
    return KernelSource(
        name="fused_rmsnorm_0",
        launcher="launch_fused_rmsnorm_0",
        source=REDUCTION,
        signature={
            "in_x": "*fp32",
            "in_w": "*fp32",
            "out_y": "*fp32",
            "xnumel": "i32",
            "rnumel": "i32",
        },
        constexprs={"XBLOCK": 1, "RBLOCK": rblock},
        num_warps=num_warps,
        kind="reduction",
    )


def looped(rblock: int = 128, num_warps: int = 4) -> KernelSource:
    return KernelSource(
        name="fused_softmax_1",
        launcher="launch_fused_softmax_1",
        source=LOOPED,
        signature={"in_x": "*fp32", "out_y": "*fp32", "xnumel": "i32", "rnumel": "i32"},
        constexprs={"XBLOCK": 1, "RBLOCK": rblock},
        num_warps=num_warps,
        kind="looped_reduction",
    )


KERNELS = {"pointwise": pointwise, "reduction": reduction, "looped": looped}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fusionlab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(d))
        yield d


@pytest.fixture(scope="module")
def compiled(cache_dir):
    """One batch per target; sm_80's batch also holds a kernel that fails to compile."""
    broken = pointwise(xblock=1000)  # tl.arange needs a power of 2
    out = {}
    reps = inspect_many([f() for f in KERNELS.values()] + [broken], "sm_80", progress=True)
    out["sm_80"] = dict(zip([*KERNELS, "broken"], reps))
    reps = inspect_many([f() for f in KERNELS.values()], "sm_90", progress=False)
    out["sm_90"] = dict(zip(KERNELS, reps))
    return out


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_stages_and_resources(compiled, target, kind):
    rep = compiled[target][kind]
    assert rep.ok, rep.error
    assert rep.error is None and rep.target == target and not rep.cached
    assert list(rep.stages) == ["triton", "ttir", "ttgir", "llir", "ptx", "sass"]
    assert "tt.func" in rep.stages["ttir"] and "ttg." in rep.stages["ttgir"]
    assert "define" in rep.stages["llir"] and ".entry" in rep.stages["ptx"]
    assert f".target sm_{target[3:]}" in rep.stages["ptx"].replace("\t", " ")
    sass = rep.stages["sass"]
    assert "EXIT" in sass and ("LDG" in sass or "STG" in sass)
    assert rep.cubin and rep.cubin[:4] == b"\x7fELF"
    assert rep.registers and rep.registers > 0
    assert rep.spills == 0 and rep.shared_mem is not None and rep.num_warps == 4
    assert 0 < rep.occupancy <= 1 and rep.resident_warps > 0 and rep.occupancy_limiter
    assert rep.triton_version and rep.compile_seconds > 0
    assert rep.stages["triton"] == KERNELS[kind]().source


def test_reductions_use_shared_memory_and_loops(compiled):
    for t in ("sm_80", "sm_90"):
        assert (
            compiled[t]["reduction"].shared_mem > 0
        )  # cross-warp tl.sum goes through shared memory
        assert "scf.for" in compiled[t]["looped"].stages["ttir"]
        assert "scf.for" not in compiled[t]["reduction"].stages["ttir"]


def test_sass_is_annotated_with_python_lines(compiled):
    sass = compiled["sm_90"]["pointwise"].stages["sass"]
    assert "// 16: erf = tl.erf(mul)" in sass  # nvdisasm -g line info, shown as the Python line
    assert "//## File" not in sass and "/tmp/" not in sass
    text = 'X\n\t//## File "/tmp/a/k.py", line 2\n  /*0000*/ EXIT ;\n'
    assert annotate_sass(text, "a = 1\nb = a + 1\n") == "X\n\t// 2: b = a + 1\n  /*0000*/ EXIT ;\n"


def test_compile_error_fails_only_that_kernel(compiled):
    rep = compiled["sm_80"]["broken"]
    assert not rep.ok
    assert "CompilationError" in rep.error and "power of 2" in rep.error
    assert set(rep.stages) == {"triton"} and rep.registers is None
    assert all(compiled["sm_80"][k].ok for k in KERNELS)
    assert "FAILED" in repr(rep) and "power of 2" in rep.to_text()


def test_second_inspection_is_served_from_cache(compiled, cache_dir):
    again = inspect_many([f() for f in KERNELS.values()], "sm_90", progress=False)
    for kind, rep in zip(KERNELS, again):
        first = compiled["sm_90"][kind]
        assert rep.cached and rep.ok
        assert rep.stages == first.stages and rep.cubin == first.cubin
        assert rep.registers == first.registers and rep.occupancy == first.occupancy
    # ... and from FUSIONLAB_CACHE_DIR
    assert list((cache_dir / "inspect").rglob("*.entry"))
    one = inspect_source(pointwise(), "sm_80")
    assert one.cached and "served from the disk cache" in one.to_text()
    # a failed compile is not cached
    assert not inspect_source(pointwise(xblock=1000), "sm_80").cached


def test_duplicate_sources_compile_once(cache_dir):
    a, b = inspect_many([pointwise(xblock=64), pointwise(xblock=64)], "sm_80", progress=False)
    assert a.ok and b.ok and a.stages == b.stages and a is not b


def test_unknown_target_is_a_report_not_an_exception():
    rep = inspect_source(pointwise(), "sm_75")
    assert not rep.ok
    assert "unknown target 'sm_75'" in rep.error
    for t in ("sm_80", "sm_89", "sm_90", "native"):
        assert t in rep.error
    reps = inspect_many([pointwise(), reduction()], "volta", progress=False)
    assert [r.ok for r in reps] == [False, False] and "valid targets" in reps[1].error


def test_native_target_without_gpu():
    import torch

    if torch.cuda.is_available():
        label, arch, err = resolve_target("native")
        assert err is None and label == f"sm_{arch}"
        return
    rep = inspect_source(pointwise(), "native")
    assert not rep.ok and "no" in rep.error.lower() and "GPU" in rep.error and "sm_90" in rep.error


def test_hang_and_crash_fail_alone(cache_dir):
    hang = pointwise(source="import time\ntime.sleep(100)\n" + POINTWISE)
    crash = pointwise(
        source="import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n" + POINTWISE
    )
    ks = [pointwise(xblock=256), hang, crash, reduction(rblock=512), looped(rblock=256)]
    reps = inspect_many(ks, "sm_80", cache=False, timeout=8, progress=False)
    assert [r.ok for r in reps] == [True, False, False, True, True], [r.error for r in reps]
    assert "timed out after 8 s" in reps[1].error
    assert "crashed" in reps[2].error and "SIGSEGV" in reps[2].error
    # the pool replaced the dead workers
    assert inspect_source(pointwise(xblock=128), "sm_80", cache=False).ok


def test_import_error_and_missing_kernel(cache_dir):
    bad_import = pointwise(source="import not_a_module_fusionlab\n" + POINTWISE)
    wrong_name = KernelSource(
        name="nope",
        launcher="x",
        source=POINTWISE,
        signature=PW_SIG,
        constexprs={"XBLOCK": 1024},
        num_warps=4,
    )
    missing_param = KernelSource(
        name="fused_bias_gelu_0",
        launcher="x",
        source=POINTWISE,
        signature={"in_x": "*fp32"},
        constexprs={"XBLOCK": 1024},
        num_warps=4,
    )
    a, b, c = inspect_many([bad_import, wrong_name, missing_param], "sm_80", progress=False)
    assert "importing the kernel module failed" in a.error and "not_a_module_fusionlab" in a.error
    assert "defines no 'nope'" in b.error
    assert "in_bias" in c.error and "signature" in c.error


def test_missing_binaries(cache_dir, monkeypatch):
    monkeypatch.setenv("FUSIONLAB_HIDE_NVIDIA_TOOLS", "nvdisasm,cuobjdump")
    rep = inspect_source(pointwise(xblock=512), "sm_90")
    assert rep.ok and not rep.cached
    assert "sass" not in rep.stages and {"ttir", "ttgir", "llir", "ptx"} <= set(rep.stages)
    assert rep.registers > 0  # from the ptxas log
    assert any("SASS unavailable" in n and "cuobjdump" in n for n in rep.notes)
    monkeypatch.setenv("FUSIONLAB_HIDE_NVIDIA_TOOLS", "ptxas,ptxas-blackwell")
    (r80,) = inspect_many([pointwise(xblock=512)], "sm_80", progress=False)
    assert (
        not r80.ok and r80.error.startswith("ptxas not found") and "TRITON_PTXAS_PATH" in r80.error
    )
    r90 = inspect_source(pointwise(xblock=512), "sm_90")
    assert (
        not r90.ok and "ptxas not found" in r90.error and "TRITON_PTXAS_BLACKWELL_PATH" in r90.error
    )


def test_html_and_text(compiled):
    rep = compiled["sm_90"]["reduction"]
    h = rep._repr_html_()
    assert h.count("<details>") == len(rep.stages) + bool(rep.ptxas_log.strip())
    assert "<table>" in h and "registers / thread" in h and "modeled" in h
    assert "&lt;" in h and "tl.sum(x * x, 1)" in h  # escaped ttir/ptx text, readable source
    assert "<script" not in h
    t = rep.to_text()
    assert t.startswith("CompileReport fused_rmsnorm_0 @ sm_90: ok") and "occupancy" in t
    assert "ptx (" in t and ".entry" not in t  # summary, not the stage texts
    bad = compiled["sm_80"]["broken"]._repr_html_()
    assert "FAILED" in bad and "power of 2" in bad
    # round trip used by the cache
    assert CompileReport.from_dict(rep.to_dict()) == rep


def test_occupancy_model():
    full = model_occupancy(80, registers=32, shared_mem=0, num_warps=4)
    assert (full.resident_warps, full.fraction, full.limiter) == (64, 1.0, "warps")
    # 168 regs -> 5376 per warp -> 12 warps' worth of registers -> 3 blocks of 4 warps
    regs = model_occupancy(90, registers=168, shared_mem=0, num_warps=4)
    assert (regs.blocks, regs.resident_warps, regs.limiter) == (3, 12, "registers")
    # shared memory: (48 KiB + 1 KiB reserved) per block; 100 KiB on sm_89 -> 2 blocks
    smem = model_occupancy(89, registers=32, shared_mem=48 * 1024, num_warps=8)
    assert (smem.blocks, smem.resident_warps, smem.limiter) == (2, 16, "shared memory")
    assert smem.fraction == pytest.approx(16 / 48)
    assert model_occupancy(80, 32, 200 * 1024, 4).resident_warps == 0  # over the per-block limit
    assert model_occupancy(75, 32, 0, 4) is None


def test_pool_survives_and_is_reused():
    pool = workers.default_pool(2)
    assert pool is workers.default_pool(1) and pool.size >= 2
    assert "WorkerPool" in repr(pool)


def test_integer_arguments_specialize_as_the_jit_would():
    """Row lengths and strides are kernel arguments; Triton's JIT specializes on their values
    (divisible by 16: tt.divisibility), so the inspector does too: a row of 1024 floats loads
    with vector instructions, a row of 1000 cannot."""
    import dataclasses

    base = reduction()
    by16 = dataclasses.replace(base, int_args={"xnumel": 64, "rnumel": 1024})
    odd = dataclasses.replace(base, int_args={"xnumel": 64, "rnumel": 1000})
    r16, rodd = inspect_many([by16, odd], "sm_90", cache=False, progress=False)
    assert r16.error is None and rodd.error is None, (r16.error, rodd.error)
    assert "ld.global.v" in r16.stages["ptx"]
    assert "ld.global.v" not in rodd.stages["ptx"]
