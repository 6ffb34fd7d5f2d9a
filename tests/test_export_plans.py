"""Exporting a real plan's kernels: the modules run in a fresh Python without fusionlab.

``plan.export(dir)`` for gpt2-block (everything selected) writes one module per kernel
plus an ``__init__.py``. A fresh interpreter (TRITON_INTERPRET=1, fusionlab never
imported) runs every exported launcher on CPU tensors with the captured shapes and
strides, and compares with the eager outputs the parent saved with ``torch.save``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest
import torch

PKG = "gpt2_block_kernels"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, zoo_plan):
    root = tmp_path_factory.mktemp("export-plans")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(root / "cache"))
        plan = zoo_plan("gpt2-block")
        paths = plan.export(root / PKG)  # generates and checks the kernels first
        kernels = plan.kernels()
    return root, paths, kernels


def test_export_writes_modules_and_init(exported):
    root, paths, kernels = exported
    assert len(kernels) > 0
    assert [p.name for p in paths] == [f"{k.name}.py" for k in kernels] + ["__init__.py"]
    init = paths[-1].read_text()
    ast.parse(init)
    for k, p in zip(kernels, paths):
        assert f"from .{k.name} import {k.source.launcher}" in init
        text = p.read_text()
        assert text.endswith(k.source.source) and "import fusionlab" not in text
        assert "It replaces these" in text and k.source.pattern in text
        assert f"Usage:\n    from {k.name} import {k.source.launcher}" in text


CHILD = textwrap.dedent(
    """
    import importlib, sys
    import torch
    root, pkg = sys.argv[1], sys.argv[2]
    sys.path[:0] = [root, root + "/" + pkg]
    package = importlib.import_module(pkg)
    assert "fusionlab" not in sys.modules, "exported kernels must not need fusionlab"
    RTOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
    refs = torch.load(root + "/refs.pt")
    for name, launcher, inputs, expected in refs:
        fn = getattr(package, launcher)  # its _check() insists on the captured shapes and strides
        got = fn(*inputs)
        assert len(got) == len(expected), (name, len(got), len(expected))
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype, (name, g.shape, e.shape)
            if not e.dtype.is_floating_point:
                assert torch.equal(g, e), name
                continue
            tol = RTOL[e.dtype]
            g, e = g.double(), e.double()
            diff = (g - e).abs()
            ok = (diff <= tol + tol * e.abs()) | (diff <= tol * e.abs().max())
            assert bool(ok.all()), (name, float(diff.max()))
        print("RAN", name)
    # each module also stands alone
    first = refs[0]
    mod = importlib.import_module(first[0])
    mod_out = getattr(mod, first[1])(*first[2])
    torch.testing.assert_close(mod_out[0], first[3][0], rtol=2e-5, atol=2e-5)
    assert "fusionlab" not in sys.modules
    print("EXPORT-OK", len(refs))
    """
)


def test_exported_kernels_run_without_fusionlab(exported):
    root, paths, kernels = exported
    refs = []
    for k in kernels:
        inputs = k.random_inputs("cpu", seed=1)
        for t, (_, dtype, shape, stride) in zip(inputs, k.source.meta["inputs"]):
            assert (tuple(t.shape), t.stride(), t.dtype) == (tuple(shape), tuple(stride), dtype)
        with torch.no_grad():
            expected = tuple(k.subgraph(*inputs))
        refs.append((k.name, k.source.launcher, inputs, expected))
    assert {k.source.kind for k in kernels} >= {"pointwise", "reduction"}
    torch.save(refs, root / "refs.pt")
    # torch.save keeps the captured strides (views, expanded inputs)
    back = torch.load(root / "refs.pt")
    for (_, _, a, _), (_, _, b, _) in zip(refs, back):
        assert [t.stride() for t in a] == [t.stride() for t in b]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSIONLAB_", "PYTHONPATH"))}
    env["TRITON_INTERPRET"] = "1"
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), PKG],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(root),
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"EXPORT-OK {len(kernels)}" in r.stdout
    assert all(f"RAN {k.name}" in r.stdout for k in kernels)


def test_kernels_that_failed_their_check_are_not_exported(exported, tmp_path):
    from fusionlab.kernels import CheckResult, Kernel, KernelSet

    _, _, kernels = exported
    bad = Kernel(kernels[1].source, kernels[1].subgraph)
    bad.check_result = CheckResult(kernel=bad.name, ok=False, error="MISMATCH (test)")
    ks = KernelSet([kernels[0], bad])
    with pytest.warns(RuntimeWarning, match=f"failed their check.*{bad.name}"):
        paths = ks.export(tmp_path / "a")
    assert [p.name for p in paths] == [f"{kernels[0].name}.py", "__init__.py"]
    paths = ks.export(tmp_path / "b", include_failed=True)
    assert len(paths) == 3
