"""Tests for fusionlab.kernels.export: standalone kernel modules that run with torch + triton only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest
from _kernel_sources import BIAS_GELU as GELU
from _kernel_sources import SOFTMAX_LOOPED as SOFTMAX

from fusionlab.codegen.source import KernelSource
from fusionlab.kernels.export import export_kernels, kernel_docstring, save_kernel


def gelu_ks(**kw) -> KernelSource:
    base = dict(
        name="fused_bias_gelu_0",
        launcher="launch_fused_bias_gelu_0",
        source=GELU,
        signature={"in_x": "*fp32", "in_bias": "*fp32", "out_y": "*fp32", "xnumel": "i32"},
        constexprs={"XBLOCK": 1024},
        num_warps=4,
        kind="pointwise",
        candidate_id="c7",
        pattern="bias+gelu",
        model_name="gpt2-block",
        replaces=(
            "add = aten.add.Tensor(mm, bias)  # h.0.mlp.fc",
            'gelu = aten.gelu.default(add)  # h.0.mlp.act  """tricky\\quotes"""',
        ),
        modules=("h.0.mlp.fc", "h.0.mlp.act"),
        configs=({"XBLOCK": 512, "num_warps": 4}, {"XBLOCK": 2048, "num_warps": 8}),
    )
    base.update(kw)
    return KernelSource(**base)


def softmax_ks() -> KernelSource:
    return KernelSource(
        name="fused_softmax_1",
        launcher="launch_fused_softmax_1",
        source=SOFTMAX,
        signature={"in_x": "*fp32", "out_y": "*fp32", "xnumel": "i32", "rnumel": "i32"},
        constexprs={"XBLOCK": 1, "RBLOCK": 128},
        num_warps=4,
        kind="looped_reduction",
        pattern="softmax",
        replaces=("softmax = aten._softmax.default(x, -1, False)  # attn",),
    )


def test_save_kernel_docstring(tmp_path):
    ks = gelu_ks()
    path = save_kernel(ks, tmp_path)
    assert path == tmp_path / "fused_bias_gelu_0.py"
    text = path.read_text()
    mod = ast.parse(text)
    doc = ast.get_docstring(mod)
    assert doc == kernel_docstring(ks)
    for needle in (
        "add = aten.add.Tensor(mm, bias)  # h.0.mlp.fc",
        '"""tricky\\quotes"""',  # escaped in the file, intact in the docstring
        "h.0.mlp.fc, h.0.mlp.act",
        "gpt2-block",
        "bias+gelu",
        "c7",
        "from fused_bias_gelu_0 import launch_fused_bias_gelu_0",
        "launch_fused_bias_gelu_0(x, bias, XBLOCK=1024, num_warps=4)",
        "only torch and triton",
        "TRITON_INTERPRET=1",
        "XBLOCK=2048, num_warps=8",
    ):
        assert needle in doc, needle
    assert text.endswith(GELU)  # the generated source, unchanged
    # an explicit file name
    other = save_kernel(ks, tmp_path / "sub" / "gelu_kernel.py")
    assert (
        other.exists() and "from gelu_kernel import launch_fused_bias_gelu_0" in other.read_text()
    )


def test_save_kernel_rejects_broken_source(tmp_path):
    with pytest.raises(ValueError, match="not valid Python"):
        save_kernel(gelu_ks(source="def oops(:\n"), tmp_path)


def test_exported_package_runs_in_a_fresh_interpreter(tmp_path):
    """The exported modules import with nothing but torch + triton and match torch eager."""
    pkg = tmp_path / "mykernels"
    paths = export_kernels([gelu_ks(), softmax_ks()], pkg)
    assert [p.name for p in paths] == ["fused_bias_gelu_0.py", "fused_softmax_1.py", "__init__.py"]
    init = (pkg / "__init__.py").read_text()
    assert "from .fused_bias_gelu_0 import launch_fused_bias_gelu_0" in init
    assert "from .fused_softmax_1 import launch_fused_softmax_1" in init
    script = textwrap.dedent(
        """
        import sys
        sys.path[:0] = [sys.argv[1], sys.argv[1] + "/mykernels"]
        import torch
        import mykernels
        from fused_bias_gelu_0 import launch_fused_bias_gelu_0  # each module also stands alone
        assert "fusionlab" not in sys.modules, "exported kernels must not need fusionlab"
        torch.manual_seed(0)
        x, b = torch.randn(4, 768), torch.randn(768)
        y = mykernels.launch_fused_bias_gelu_0(x, b, XBLOCK=4096)
        torch.testing.assert_close(y, torch.nn.functional.gelu(x + b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(launch_fused_bias_gelu_0(x, b, XBLOCK=2048), y)
        s = torch.randn(5, 300)
        torch.testing.assert_close(mykernels.launch_fused_softmax_1(s), torch.softmax(s, -1), rtol=1e-5, atol=1e-6)
        print("EXPORT-OK", sorted(mykernels.__all__))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSIONLAB_", "PYTHONPATH"))}
    env["TRITON_INTERPRET"] = "1"
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "EXPORT-OK ['launch_fused_bias_gelu_0', 'launch_fused_softmax_1']" in r.stdout


def test_export_kernels_name_clashes(tmp_path):
    a = gelu_ks()
    b = gelu_ks(constexprs={"XBLOCK": 256})  # same kernel and launcher name
    paths = export_kernels([a, b], tmp_path / "pkg")
    assert [p.name for p in paths] == [
        "fused_bias_gelu_0.py",
        "fused_bias_gelu_0_2.py",
        "__init__.py",
    ]
    init = paths[-1].read_text()
    assert (
        "from . import fused_bias_gelu_0\n" in init
        and "from . import fused_bias_gelu_0_2\n" in init
    )
    ast.parse(init)
