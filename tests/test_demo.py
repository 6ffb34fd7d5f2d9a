"""The README's main job (`make demo` runs `python -m fusionlab demo`) in a fresh process."""

import subprocess
import sys


def test_demo_prints_candidates_plan_and_a_checked_kernel():
    out = subprocess.run(
        [sys.executable, "-m", "fusionlab", "demo", "--model", "mlp", "--show-kernel", "gelu"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "fusion candidates" in text and "fw0.matmul+bias+gelu.0" in text
    assert "kernels per step:" in text and "(modeled)" in text
    assert "@triton.jit" in text and "aten.erf.default  act2" in text
    assert "checked" in text or ": ok," in text


def test_demo_bad_selection_is_a_clear_error():
    out = subprocess.run(
        [sys.executable, "-m", "fusionlab", "demo", "--model", "mlp", "--select", "no_such_pattern"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert "no candidate matches 'no_such_pattern'" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_unknown_model_is_a_clear_error():
    out = subprocess.run(
        [sys.executable, "-m", "fusionlab", "demo", "--model", "resnet9000"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and "mlp" in out.stderr
