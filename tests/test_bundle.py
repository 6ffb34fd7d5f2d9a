"""A graph's group checks in one Inductor compile (``executors.bundle``), and the code it builds
reused by the whole graph's compile.

Each test runs against empty caches of its own (as tests/test_executor_cache.py does).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import fusionlab
from fusionlab import zoo
from fusionlab.check import random_tensor
from fusionlab.executors import InductorGraphExecutor, bundle
from fusionlab.executors.groups import input_meta
from fusionlab.kernels.kernel import extract_subgraph
from fusionlab.plan import plan_for

pytestmark = pytest.mark.usefixtures("empty_caches")  # tests/conftest.py


@pytest.fixture(scope="module")
def mlp():
    zm = zoo.get("mlp")
    return zm, plan_for(fusionlab.capture(zm.model, *zm.inputs, loss_fn=zm.loss_fn), "all")


def _step(zm, plan):
    ex = InductorGraphExecutor()
    fused = plan.compile(copy.deepcopy(zm.model), executor=ex)
    got = fused(*zm.inputs)
    got.backward()
    torch.testing.assert_close(got, copy.deepcopy(zm.model)(*zm.inputs), rtol=1e-5, atol=1e-6)
    return ex, fused.report


def _group_code(loops, source: str) -> dict[str, tuple]:
    """group -> (its loop nests as node sets, the C++ source of its functions)."""
    bodies = dict(re.findall(r"^(\w+) = async_compile\.cpp_pybinding\(\[.*?\], r'''(.*?)'''\)", source, re.S | re.M))
    out: dict[str, tuple] = {}
    for k in loops:
        if k.group is not None:
            nests, code = out.get(k.group, ((), ()))
            body = bodies.get(k.function) or next((b for b in bodies.values() if f'"{k.function}"' in b), None)
            out[k.group] = (tuple(sorted(nests + (k.nodes,))), tuple(sorted(set(code) | {body})))
    return out


def _same_code(built, ex) -> int:
    """How many groups have, byte for byte, the same C++ functions in their bundle and in their
    graph (Inductor's code cache, keyed by source, builds those once). Not every group: Inductor
    may fuse a group's nests differently in the two compiles (a reduction with its producer),
    and in some full-suite runs it parallelized one group's nest (``#pragma omp parallel``) in
    one compile and not the other, with the same nests and thread count (cause not found)."""
    whole = {}
    for g in ex.graphs:
        whole.update(_group_code(g.loops, g.source))
    same = 0
    for b in built:
        for group, (_, code) in _group_code(b.loops, b.source).items():
            same += None not in code and code == whole.get(group, ((), ()))[1]
    return same


def test_a_bundle_computes_every_group_as_eager(mlp):
    _, plan = mlp
    graph = plan.capture.graph("fw0")
    cands = [c for c in plan.selected if c.graph == "fw0"]
    subs = [extract_subgraph(graph.gm, c) for c in cands]
    gen = torch.Generator().manual_seed(0)
    examples = [[random_tensor(s, st, dt, dev, gen) for _, s, st, dt, dev in input_meta(graph, c)] for c in cands]
    b = bundle.compile_bundle(subs, [c.id for c in cands], examples)
    outs = b.run([list(x) for x in examples])
    assert len(outs) == len(cands)
    for sub, x, out in zip(subs, examples, outs):
        torch.testing.assert_close(list(out), list(sub(*x)), rtol=1e-5, atol=1e-6)
    # every loop nest computes one group's ops (none merged across groups)
    assert b.loops and all(k.group in {c.id for c in cands} for k in b.loops)


def test_the_whole_graph_builds_no_group_code_again(mlp, monkeypatch):
    zm, plan = mlp
    built = []
    compile_bundle = bundle.compile_bundle

    def keep(*a, **kw):
        b = compile_bundle(*a, **kw)
        built.append(b)
        return b

    monkeypatch.setattr(bundle, "compile_bundle", keep)
    ex, report = _step(zm, plan)
    assert len(built) == 2  # one compile for the checks of each graph, not one per group
    assert sorted(ex.bundled) == sorted(c.id for c in plan.selected) and not ex.reused_checks
    assert len(report.used) == len(plan.selected) and not report.failed
    # a group's C++ functions are, byte for byte, the same in its bundle and in its graph's compile
    assert _same_code(built, ex) >= len(plan.selected) // 2


def test_a_group_wrong_in_the_bundle_is_refused_alone(mlp, monkeypatch):
    zm, plan = mlp
    run = bundle.Bundle.run
    victim = "fw0.log_softmax.0"

    def wrong(self, inputs):
        outs = run(self, inputs)
        i = self.names.index(victim) if victim in self.names else None
        if i is not None:
            outs[i] = tuple(o + 1 for o in outs[i])
        return outs

    monkeypatch.setattr(bundle.Bundle, "run", wrong)
    ex, report = _step(zm, plan)  # still equal to eager: the refused group's ops run unfused
    failed = {s.candidate: s.reason for s in report.failed}
    assert list(failed) == [victim] and "check against eager failed" in failed[victim]
    assert len(report.used) == len(plan.selected) - 1


def test_a_bundle_that_fails_leaves_each_group_checked_alone(mlp, monkeypatch):
    zm, plan = mlp

    def broken(*a, **kw):
        raise RuntimeError("no bundle today")

    monkeypatch.setattr(bundle, "compile_bundle", broken)
    ex, report = _step(zm, plan)
    assert not ex.bundled and not ex.reused_checks
    assert len(report.used) == len(plan.selected) and all(s.check is not None and s.check.ok for s in report.used)


def test_kernel_profile_names_each_function_by_its_content(mlp, monkeypatch):
    zm, plan = mlp
    built = []
    compile_bundle = bundle.compile_bundle
    monkeypatch.setattr(bundle, "compile_bundle", lambda *a, **kw: built.append(compile_bundle(*a, **kw)) or built[-1])
    ex = InductorGraphExecutor(kernel_profile=True)
    fused = plan.compile(copy.deepcopy(zm.model), executor=ex)
    fused(*zm.inputs).backward()
    names = {k.function for g in ex.graphs for k in g.loops if k.group}
    # the ops it computes and a hash of its code: no graph id, no counter
    assert names and all(re.fullmatch(r"cpp_fused_\w+_[0-9a-f]{10}", n) for n in names), names
    assert _same_code(built, ex) >= 1  # the same names (and code) in the bundle and the graph
    with torch.profiler.profile() as prof:
        fused(*zm.inputs).backward()
    recorded = {e.key for e in prof.key_averages()}
    assert names <= recorded, names - recorded  # torch.profiler times each group's function


class _TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.LayerNorm(32)) for _ in range(2))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x.sum()


def test_twin_groups_are_checked_once(monkeypatch):
    torch.manual_seed(0)
    model, x = _TwoBlocks(), torch.randn(8, 32)
    plan = plan_for(fusionlab.capture(model, x), "all")
    built = []
    compile_bundle = bundle.compile_bundle
    monkeypatch.setattr(bundle, "compile_bundle", lambda *a, **kw: built.append(compile_bundle(*a, **kw)) or built[-1])
    ex = InductorGraphExecutor()
    fused = plan.compile(copy.deepcopy(model), executor=ex)
    got = fused(x)
    got.backward()
    torch.testing.assert_close(got, copy.deepcopy(model)(x), rtol=1e-5, atol=1e-5)
    in_bundles = [n for b in built for n in b.names]
    # the second block's groups are the first's twins (same ops, wiring and inputs): one check each
    assert len(in_bundles) < len(plan.selected)
    assert sorted(ex.bundled) == sorted(c.id for c in plan.selected) and not ex.reused_checks
    assert all(s.check.ok and s.check.kernel.endswith(s.candidate.replace(".", "_").replace("+", "_"))
               for s in fused.report.used)
