"""One C++ build per compile (``fusionlab.executors.builds``): the functions of a compile built
as one library, each found again by its source in later compiles, and Inductor's own
one-library-per-function builds where a library cannot be built.

Each test runs against empty caches of its own (tests/conftest.py).
"""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from fusionlab.executors import builds
from fusionlab.executors.bundle import compile_bundle

pytestmark = pytest.mark.usefixtures("empty_caches")


def _a(x):
    return torch.relu(x) * 2.0


def _b(x):
    return torch.sigmoid(x) + 1.0


def _c(x):
    return torch.tanh(x).sum(1)


def _d(x):
    return torch.exp(x) - x


def _groups(*fns):
    gen = torch.Generator().manual_seed(0)
    examples = [[torch.randn(8, 64, generator=gen)] for _ in fns]
    subs = [make_fx(f)(*x) for f, x in zip(fns, examples)]
    return subs, [f.__name__.strip("_") for f in fns], examples


def _bundle_equals_eager(fns):
    subs, names, examples = _groups(*fns)
    b = compile_bundle(subs, names, examples)
    for f, x, out in zip(fns, examples, b.run([list(x) for x in examples])):
        torch.testing.assert_close(out[0], f(*x))
    return b


def _index() -> dict[str, dict]:
    """The functions built by fusionlab's libraries: key -> where."""
    root = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "fusionlab-functions")
    return {os.path.basename(p): json.load(open(p)) for p in glob.glob(f"{root}/*/*.json")}


def _libraries() -> set[str]:
    return set(glob.glob(os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "**", "*.so"), recursive=True))


def test_a_compiles_functions_are_built_as_one_library():
    before = builds.counts()
    b = _bundle_equals_eager([_a, _b, _c])
    after = builds.counts()
    assert (after["built"] - before["built"], after["libraries"] - before["libraries"]) == (3, 1)
    functions = {k.function for k in b.loops}
    assert len(functions) == 3, b.loops  # one C++ function per group
    where = _index()
    assert len(where) == 3 and len({w["path"] for w in where.values()}) == 1, where
    lib = next(iter(where.values()))["path"]
    source = open(lib.removesuffix(".so") + ".cpp").read()
    assert source.count("#define kernel kernel_") == 3


def test_a_function_built_before_is_loaded_not_built_again():
    _bundle_equals_eager([_a, _b, _c])
    before_index, before_libs = _index(), _libraries()
    builds.forget()  # as a new process: nothing loaded, the disk kept
    torch._inductor.codecache.CppPythonBindingsCodeCache.cache.clear()
    before = builds.counts()
    _bundle_equals_eager([_b, _c, _d])  # a different graph: a miss in the FX graph cache
    assert builds.counts()["found"] - before["found"] == 2 and builds.counts()["built"] - before["built"] == 1
    after = _index()
    assert set(before_index) < set(after) and len(after) == 4
    new = [after[k] for k in set(after) - set(before_index)]
    # the one new function is built alone (Inductor's own library for it); b and c are not rebuilt
    assert len(_libraries() - before_libs) == 1 and new[0]["path"] in _libraries() - before_libs


def test_a_library_that_fails_to_build_falls_back_to_one_per_function(monkeypatch):
    monkeypatch.setattr(builds, "library_source", lambda functions: "#error this library does not build\n")
    _bundle_equals_eager([_a, _b, _c])
    where = _index()
    assert len(where) == 3 and len({w["path"] for w in where.values()}) == 3, where  # one library each


def test_batching_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FUSIONLAB_BATCH_BUILDS", "0")
    _bundle_equals_eager([_a, _b, _c, _d])
    assert _index() == {}  # Inductor's builds, nothing of fusionlab's


def test_the_bindings_call_each_function_with_its_own_arguments():
    source = builds.library_source([(["const float*", "float*"], 'extern "C" void kernel(const float* a, float* b) {}'),
                                    (["const float*", "const float*", "float*", "int64_t"], 'extern "C" void kernel('
                                     'const float* a, const float* b, float* c, int64_t n) {}')])
    assert source.startswith("#include <torch/csrc/inductor/cpp_prefix.h>")
    assert '{"kernel_0", kernel_0_py' in source and '{"kernel_1", kernel_1_py' in source
    assert "kernel_1(parse_arg<float*>(args, 0), parse_arg<float*>(args, 1), parse_arg<float*>(args, 2), " \
           "parse_arg<int64_t>(args, 3))" in source
    assert "requires 4 args" in source and "requires 2 args" in source


def test_compiles_that_run_nothing_in_between_share_one_library():
    (subs1, names1, ex1), (subs2, names2, ex2) = _groups(_a, _b), _groups(_c, _d)
    first, second = compile_bundle(subs1, names1, ex1), compile_bundle(subs2, names2, ex2)
    assert _index() == {}  # nothing built yet: the functions are built on their first call
    for b, fns, examples in ((first, (_a, _b), ex1), (second, (_c, _d), ex2)):
        for f, x, out in zip(fns, examples, b.run([list(x) for x in examples])):
            torch.testing.assert_close(out[0], f(*x))
    where = _index()
    assert len(where) == 4 and len({w["path"] for w in where.values()}) == 1, where


def test_a_function_that_does_not_build_fails_only_where_it_is_called():
    subs, names, examples = _groups(_a, _b)
    good = compile_bundle(subs, names, examples)
    pending = builds._collecting
    assert pending is not None and len(pending.functions) == 2
    bad = pending.add("no-such-function", ["float*"], 'extern "C" void kernel(float* x) { this is not C++; }')
    for f, x, out in zip((_a, _b), examples, good.run([list(x) for x in examples])):
        torch.testing.assert_close(out[0], f(*x))
    with pytest.raises(Exception, match="(?i)error|failed"):
        bad(torch.zeros(1))


def test_a_torch_without_the_internals_builds_inductors_way(monkeypatch):
    assert builds._missing_internals() == []  # the torch it was written for has them all
    monkeypatch.setattr(builds, "_missing_internals", lambda: ["AsyncCompile.wait"])
    _bundle_equals_eager([_a, _b, _c])
    assert _index() == {}  # Inductor's builds, nothing of fusionlab's


def _linked_by_gold(path: str) -> bool:
    return b".note.gnu.gold-version" in open(path, "rb").read()


@pytest.mark.skipif(builds.link_flags() == (), reason="no GNU gold here (ld.gold), or not Linux")
def test_libraries_are_linked_by_gold_where_there_is_one():
    _bundle_equals_eager([_a, _b, _c])
    where = _index()
    assert where and all(_linked_by_gold(w["path"]) for w in where.values())


def test_a_linker_that_cannot_link_costs_a_build_not_a_library(monkeypatch):
    monkeypatch.setattr(builds, "_gold_failed", False)
    monkeypatch.setattr(builds, "link_flags", lambda: () if builds._gold_failed else ("-fuse-ld=no-such-linker",))
    _bundle_equals_eager([_a, _b, _c])  # built again with the default linker, and right
    assert builds._gold_failed  # and the default linker from then on
    assert len({w["path"] for w in _index().values()}) == 1  # still one library


def test_code_that_does_not_build_leaves_the_linker_alone(monkeypatch):
    monkeypatch.setattr(builds, "_gold_failed", False)
    out = builds._one_by_one([("bad", ["float*"], 'extern "C" void kernel(float* x) { this is not C++; }')])
    assert isinstance(out["bad"], Exception)  # its error, for where it is called
    assert not builds._gold_failed
