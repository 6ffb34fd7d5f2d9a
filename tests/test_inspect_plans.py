"""The kernel inspector on the kernels fusionlab generates (not hand-written ones).

Every kernel of the zoo models' select-all plans, plus a looped reduction, is compiled
for sm_80 and sm_90 once per session, in one shared pool of 2 workers, through a cache
in a session temp dir (under pytest-xdist the workers share that dir and take turns
behind a file lock, so the kernels compile once per session, not once per worker).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os

import pytest
import torch

from fusionlab.codegen import generate
from fusionlab.inspect.configs import cached_best_config, candidate_configs
from fusionlab.inspect.summary import CompileReports
from fusionlab.inspect.workers import WorkerPool
from fusionlab.kernels import Kernel, KernelSet, extract_subgraph

MODELS = ["mlp", "cnn-bn", "gpt2-block", "llama-block"]
TARGETS = ["sm_80", "sm_90"]
KINDS = ["pointwise", "reduction", "looped_reduction", "matmul"]


def _session_dir(tmp_path_factory, name: str):
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's root, shared by its xdist workers
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = _session_dir(tmp_path_factory, "fusionlab-inspect-plans-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(d))
        mp.delenv("FUSIONLAB_HIDE_NVIDIA_TOOLS", raising=False)
        for var in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH"):
            mp.delenv(var, raising=False)
        yield d


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(2) as p:
        yield p


@pytest.fixture(scope="module")
def plans(zoo_plan):
    return {name: zoo_plan(name) for name in MODELS}


@pytest.fixture(scope="module")
def kernel_sets(plans, cache_dir):
    return {name: plan.kernels(validate=False) for name, plan in plans.items()}


@pytest.fixture(scope="module")
def looped(plans, cache_dir):
    """gpt2-block's first layer_norm, generated as a looped reduction (rows of 128 > 16)."""
    plan = plans["gpt2-block"]
    cand = next(c for c in plan.selected if c.pattern == "layer_norm")
    graph = plan.capture.graph(cand.graph)
    ks = generate(cand, graph, model_name=plan.capture.model_name, persistent_max=16)
    assert ks.kind == "looped_reduction"
    return Kernel(ks, extract_subgraph(graph.gm, cand))


@pytest.fixture(scope="module")
def all_kernels(kernel_sets, looped):
    return KernelSet([k for ks in kernel_sets.values() for k in ks] + [looped])


@pytest.fixture(scope="module")
def inspected(all_kernels, pool, cache_dir):
    """{target: CompileReports for all_kernels}; compiled once per session."""
    out = {}
    with _locked(cache_dir / ".lock"):
        for target in TARGETS:
            out[target] = all_kernels.inspect(target, pool=pool, workers=2, progress=False)
    return out


def _first(kernels, kind):
    return next(i for i, k in enumerate(kernels) if k.source.kind == kind)


def _small(kernels, kind, n=1):
    """Indices of the `n` kernels of `kind` with the fewest output elements."""
    idx = [i for i, k in enumerate(kernels) if k.source.kind == kind]

    def numel(i):
        shape = kernels[i].source.meta["outputs"][0][2]
        return int(torch.Size(shape).numel())

    return sorted(idx, key=numel)[:n]


# -- every generated kernel compiles ----------------------------------------------------------


def test_plans_generate_kernels(plans, kernel_sets):
    for name, ks in kernel_sets.items():
        assert len(ks) > 0, f"{name}: no kernels ({ks.statuses})"
        # every selected candidate got a kernel, or says why not
        assert len(ks.statuses) == len(plans[name].selected)
        for st in ks.statuses:
            assert st.kernel or st.reason, st


@pytest.mark.parametrize("target", TARGETS)
def test_every_kernel_compiles(inspected, all_kernels, target):
    reps = inspected[target]
    assert isinstance(reps, CompileReports) and len(reps) == len(all_kernels)
    bad = [f"{r.name}: {r.error}" for r in reps if not r.ok]
    assert not bad, "\n".join(bad)
    for k, rep in zip(all_kernels, reps):
        assert rep.name == k.name and rep.target == target
        assert f".target sm_{target[3:]}" in rep.ptx.replace("\t", " "), k.name
        assert rep.sass and "EXIT" in rep.sass, k.name
        assert rep.registers and rep.registers > 0, k.name
        assert rep.spills is not None and rep.shared_mem is not None, k.name
        assert rep.num_warps == k.source.num_warps and rep.constexprs == k.source.constexprs
        assert rep.occupancy is not None and 0 < rep.occupancy <= 1, (k.name, rep.to_text())
        assert rep.stages["triton"] == k.source.source


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", KINDS)
def test_one_kernel_of_each_kind(inspected, all_kernels, target, kind):
    i = _first(all_kernels, kind)
    rep = inspected[target][i]
    assert rep.ok, rep.error
    assert list(rep.stages) == ["triton", "ttir", "ttgir", "llir", "ptx", "sass"]
    assert ".entry " + all_kernels[i].name in rep.ptx
    assert "tt.func" in rep.stages["ttir"] and "ttg." in rep.stages["ttgir"]
    assert rep.registers > 0 and rep.cubin[:4] == b"\x7fELF"
    # SASS lines carry the Python lines of the generated kernel
    assert "// " in rep.sass and "tl.load(" in rep.sass and "//## File" not in rep.sass
    if kind == "looped_reduction":
        assert "scf.for" in rep.stages["ttir"]
    if kind == "reduction":
        assert "scf.for" not in rep.stages["ttir"] and "tt.reduce" in rep.stages["ttir"]
    if kind == "matmul":  # the K loop of tl.dot, on tensor cores (mma / wgmma) or IEEE fp32 FMAs
        assert "scf.for" in rep.stages["ttir"] and "tt.dot" in rep.stages["ttir"]


def test_report_table(inspected, all_kernels):
    reps = inspected["sm_90"]
    text = reps.to_text()
    assert text.startswith(f"{len(all_kernels)} kernels compiled for sm_90: {len(all_kernels)} ok, 0 failed")
    assert all(k.name in text for k in all_kernels) and "looped_reduction" in text
    assert "occupancy (modeled)" in text and repr(reps) == text
    h = reps._repr_html_()
    assert h.count("<tr") == len(all_kernels) + 1 and "<script" not in h
    k = all_kernels[0]
    assert reps[k.name] is reps[0] and reps.failed == []
    with pytest.raises(KeyError, match="no report for kernel"):
        reps["nope"]


def test_kernel_inspect_is_served_from_cache(inspected, all_kernels, pool):
    i = _first(all_kernels, "reduction")
    rep = all_kernels[i].inspect("sm_80", pool=pool)
    first = inspected["sm_80"][i]
    assert rep.ok and rep.cached and rep.stages == first.stages and rep.registers == first.registers


# -- launch configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_configs(inspected, all_kernels, pool, kind):
    i = _first(all_kernels, kind)
    k = all_kernels[i]
    table = k.inspect_configs("sm_90", workers=2, pool=pool)
    cfgs = candidate_configs(k.source)
    assert table.configs == cfgs and len(cfgs) >= 2
    stages = {"num_stages": k.source.num_stages} if k.source.num_stages is not None else {}
    assert cfgs[0] == {**k.source.constexprs, "num_warps": k.source.num_warps, **stages}
    for cfg, rep in table:
        assert rep.ok, (cfg, rep.error)
        assert rep.num_warps == cfg["num_warps"]
        assert rep.constexprs == {n: v for n, v in cfg.items() if n not in ("num_warps", "num_stages")}
        assert rep.registers > 0 and rep.occupancy is not None
    # the default config is the kernel's own compile: served from the cache
    assert table[0][1].cached and table[0][1].stages == inspected["sm_90"][i].stages
    text = table.to_text()
    assert k.name in text and "modeled" in text and "default" in text
    assert all(f"num_warps={c['num_warps']}" in text for c in cfgs)
    assert text.count("\n") == len(cfgs) + 1  # title, header, one row per config
    h = table._repr_html_()
    assert h.count("<tr>") == len(cfgs) + 1


def test_kernel_set_inspect_configs(kernel_sets, pool):
    ks = KernelSet(kernel_sets["mlp"][:2])
    tables = ks.inspect_configs("sm_80", pool=pool, progress=False)
    assert list(tables) == [k.name for k in ks]
    assert all(rep.ok for t in tables.values() for _, rep in t)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_tune_without_gpu_says_what_to_do(all_kernels):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*inspect_configs"):
        all_kernels[0].tune()


def test_tune_picks_fastest_and_caches_it(all_kernels, cache_dir, monkeypatch):
    """The tuning logic, with a fake GPU: the kernel runs in the interpreter, do_bench is faked."""
    import triton.testing

    i = next(j for j in _small(all_kernels, "pointwise", 99) if len(candidate_configs(all_kernels[j].source)) >= 3)
    k = Kernel(all_kernels[i].source, all_kernels[i].subgraph)
    cfgs = candidate_configs(k.source)
    fake_ms = [5.0, 4.0, 1.0] + [9.0] * (len(cfgs) - 3)
    calls = []

    def fake_bench(fn, warmup=25, rep=100, **kw):
        fn()
        calls.append(1)
        return fake_ms[len(calls) - 1]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU (fusionlab test)")
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    inputs = k.random_inputs("cpu", seed=0)
    res = k.tune(inputs)
    assert not res.cached and len(calls) == len(cfgs)
    assert res.best == cfgs[2] and k.best_config == cfgs[2]
    assert [c for c, _, _ in res.timings] == cfgs and "<- best" in res.to_text()
    assert cached_best_config(k.source, "Fake GPU (fusionlab test)") == cfgs[2]
    assert cached_best_config(k.source, "Another GPU") is None
    # the tuned config computes the same thing as eager
    expected = k.subgraph(*inputs)
    got = k(*inputs, config=res.best)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=2e-5, atol=2e-5)
    # a fresh Kernel for the same source: served from the disk cache, nothing timed
    monkeypatch.setattr(triton.testing, "do_bench", lambda *a, **kw: pytest.fail("re-timed"))
    k2 = Kernel(k.source, k.subgraph)
    again = k2.tune(inputs)
    assert again.cached and again.best == cfgs[2] and k2.best_config == cfgs[2]
    # the config table marks it
    assert "tuned best" in k2.inspect_configs("sm_90").to_text()
    # CPU launches keep the interpreter's config
    assert k2._tuned_config(inputs) is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tune_on_gpu(all_kernels):
    i = _first(all_kernels, "reduction")
    k = Kernel(all_kernels[i].source, all_kernels[i].subgraph)
    res = k.tune(cache=False)
    assert res.best in candidate_configs(k.source) and k.best_config == res.best
    assert all(ms is None or ms > 0 for _, ms, _ in res.timings)
    assert k.check().ok  # launched with the tuned config
    cached = Kernel(k.source, k.subgraph).tune()
    assert cached.best in candidate_configs(k.source)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["sm_12", "rocm"])
def test_unknown_target(all_kernels, target):
    sub = KernelSet(all_kernels[:3])
    reps = sub.inspect(target, progress=False)
    assert [r.ok for r in reps] == [False] * 3
    for r in reps:
        assert f"unknown target {target!r}" in r.error and "'sm_90'" in r.error
        assert r.stages == {"triton": r.stages["triton"]}
    assert "FAILED: unknown target" in reps.to_text()
    table = all_kernels[0].inspect_configs(target)
    assert all(not rep.ok for _, rep in table) and "FAILED" in table.to_text()


def test_ptxas_overrides_that_do_not_run(all_kernels, pool, tmp_path, monkeypatch):
    """Triton 3.9 silently uses the wheel's ptxas when TRITON_PTXAS*_PATH does not run: say so.
    With no ptxas at all, every report fails with a message naming the variable to set."""
    monkeypatch.setenv("TRITON_PTXAS_PATH", str(tmp_path / "no-ptxas"))
    monkeypatch.setenv("TRITON_PTXAS_BLACKWELL_PATH", str(tmp_path / "no-ptxas-blackwell"))
    sub = KernelSet([all_kernels[i] for i in _small(all_kernels, "pointwise", 2)])
    for target, var in (("sm_80", "TRITON_PTXAS_PATH"), ("sm_90", "TRITON_PTXAS_BLACKWELL_PATH")):
        reps = sub.inspect(target, pool=pool, progress=False)
        for r in reps:
            assert r.ok and r.registers > 0, r.error
            assert any(n.startswith(f"{var}={tmp_path}") and "wheel's" in n for n in r.notes), r.notes
        assert f"note: {var}=" in reps.to_text()
    monkeypatch.setenv("FUSIONLAB_HIDE_NVIDIA_TOOLS", "ptxas,ptxas-blackwell")
    for target, var in (("sm_80", "TRITON_PTXAS_PATH"), ("sm_90", "TRITON_PTXAS_BLACKWELL_PATH")):
        reps = sub.inspect(target, pool=pool, progress=False)
        for r in reps:
            assert not r.ok and r.error.startswith("ptxas not found") and var in r.error
            assert r.notes == []


def test_a_kernel_that_fails_to_compile_fails_alone(inspected, all_kernels, pool):
    i_red, i_pw = _first(all_kernels, "reduction"), _first(all_kernels, "pointwise")
    i_loop = _first(all_kernels, "looped_reduction")
    good = [all_kernels[j] for j in (i_red, i_pw, i_loop)]
    src = good[0].source
    assert "tl.load(" in src.source
    no_attr = dataclasses.replace(src, source=src.source.replace("tl.load(", "tl.lod(", 1))
    syntax = dataclasses.replace(src, source=src.source.replace("@triton.jit\ndef ", "@triton.jit\ndef def ", 1))
    assert syntax.source != src.source
    batch = KernelSet([good[0], Kernel(no_attr), good[1], Kernel(syntax), good[2]])
    reps = batch.inspect("sm_90", pool=pool, progress=False)
    assert [r.ok for r in reps] == [True, False, True, False, True], [r.error for r in reps]
    assert "lod" in reps[1].error and "CompilationError" in reps[1].error
    assert "importing the kernel module failed" in reps[3].error and "SyntaxError" in reps[3].error
    for j, r in zip((i_red, i_pw, i_loop), (reps[0], reps[2], reps[4])):
        assert r.stages == inspected["sm_90"][j].stages
    assert len(reps.failed) == 2 and "2 failed" in reps.to_text()


def test_a_corrupt_cache_entry_is_rebuilt_alone(all_kernels, pool, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path))
    sub = KernelSet([all_kernels[i] for i in _small(all_kernels, "pointwise", 2)]
                    + [all_kernels[_first(all_kernels, "reduction")]])
    first = sub.inspect("sm_80", pool=pool, progress=False)
    assert all(r.ok and not r.cached for r in first)
    entries = sorted(tmp_path.rglob("*.entry"))
    assert len(entries) == 3
    data = entries[1].read_bytes()
    entries[1].write_bytes(data[: len(data) // 3])  # truncated
    data = entries[2].read_bytes()
    entries[2].write_bytes(b"{not json" + data[9:])  # garbled header
    again = sub.inspect("sm_80", pool=pool, progress=False)
    assert all(r.ok for r in again)
    assert sorted(r.cached for r in again) == [False, False, True]
    for r, f in zip(again, first):
        assert r.stages == f.stages and r.registers == f.registers
        if r.cached:
            assert r.notes == f.notes
        else:
            assert any("cache entry was corrupt" in n and "rebuilt it" in n for n in r.notes), r.notes
    reasons = " ".join(n for r in again for n in r.notes)
    assert "truncated" in reasons and "garbled" in reasons
    assert all(r.cached for r in sub.inspect("sm_80", pool=pool, progress=False))
