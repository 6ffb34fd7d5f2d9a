"""Tests for the %fusionlab / %%fusionlab magics through a real IPython shell."""

from __future__ import annotations

import pytest

pytest.importorskip("IPython")

import fusionlab  # noqa: E402
from fusionlab import zoo  # noqa: E402
from fusionlab.magics import USAGE, CellTiming, KernelTable  # noqa: E402
from fusionlab.profiler import ProfileResult  # noqa: E402


@pytest.fixture(scope="module")
def ip(ipython_shell):
    shell = ipython_shell
    fusionlab.load_ipython_extension(shell)
    fusionlab.load_ipython_extension(shell)  # loading twice is harmless
    return shell


def test_load_twice_keeps_one_state(ip):
    ext = ip._fusionlab_extension
    ip.run_line_magic("load_ext", "fusionlab")
    ip.extension_manager.reload_extension("fusionlab")
    assert ip._fusionlab_extension is ext
    assert ip.find_line_magic("fusionlab") is not None
    assert ip.find_cell_magic("fusionlab") is not None


def test_help_is_the_docstring(ip, capsys):
    doc = ip.find_line_magic("fusionlab").__doc__
    assert "%fusionlab profile MODEL" in doc and "%%fusionlab profile" in doc
    ip.run_line_magic("fusionlab", "help")
    out = capsys.readouterr().out
    assert "%fusionlab kernels" in out
    assert "measured steps at least (default 20)" in out and "--executor" in out and "--budget" in out  # the shared options, listed


def test_magic_and_cli_share_one_option_set():
    """%fusionlab profile and python -m fusionlab profile: the same options, the same defaults."""
    import argparse

    from fusionlab._cli_profile import add_profile_parser
    from fusionlab.magics import profile_parser

    cli = vars(add_profile_parser(argparse.ArgumentParser().add_subparsers()).parse_args([]))
    magic = vars(profile_parser().parse_args(["zoo:mlp"]))
    shared = set(cli) & set(magic) - {"model"}  # the CLI's --model is a zoo name, the magic's MODEL any model
    assert shared == {"steps", "warmup", "budget", "max_steps", "fuse", "compare", "gpu", "optimizer", "executor",
                      "html", "trace"}
    assert {k: cli[k] for k in shared} == {k: magic[k] for k in shared}
    assert set(cli) - shared == {"model", "batch", "threads", "func"}
    assert set(magic) - shared == {"model", "inputs", "loss"}
    assert magic["steps"] == 20 and magic["warmup"] == 5
    assert magic["budget"] is None and magic["max_steps"] == 400  # None: profile()'s default budget


def test_profile_zoo_model_then_kernels(ip, capsys):
    res = ip.run_line_magic("fusionlab", "profile zoo:gpt2-block --steps 2 --warmup 0 --compare eager,fusionlab")
    assert isinstance(res, ProfileResult)
    assert [v.name for v in res.variants] == ["eager", "fusionlab"]
    assert all(len(v.samples) == 2 for v in res.variants)
    assert res.model_name == "gpt2-block"
    ext = ip._fusionlab_extension
    assert ext.plan is res.plan and ext.last_result is res
    table = ip.run_line_magic("fusionlab", "kernels")
    assert isinstance(table, KernelTable)
    assert len(table.rows) == len(res.plan.selected)
    text = repr(table)
    assert "inductor-cpp (groups only)" in text
    for cand in res.plan.selected:
        assert cand.id in text
    assert all(r[3] == "ok, fused" for r in table.rows)
    # how Inductor compiled each group inside the whole step: its loop nests and C++ function
    assert all("loop nest" in r[4] and "cpp_fused_" in r[4] for r in table.rows), table.rows
    assert str(res["fusionlab"].report).count("loop nest") == len(res.plan.selected)
    assert ip.run_line_magic("fusionlab", "plan") is res.plan


def test_profile_names_from_the_user_namespace(ip, tmp_path):
    zm = zoo.get("mlp")
    ip.user_ns["net"] = zm.model
    ip.user_ns["batch"] = zm.inputs
    out = tmp_path / "r.html"
    res = ip.run_line_magic(
        "fusionlab", f"profile net batch --steps 2 --warmup 0 --compare eager,fusionlab --fuse gelu,gelu_backward "
                     f"--executor inductor-groups --html {out}"
    )
    assert isinstance(res, ProfileResult)
    assert res["fusionlab"].executor == "inductor-cpp (per group)"
    assert res.plan.selected and all(c.matches("gelu") or c.matches("gelu_backward") for c in res.plan.selected)
    assert out.exists() and out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("line, message", [
    ("profile", "model"),
    ("profile zoo:gpt2-block --steps many", "invalid int value"),
    ("profile zoo:no-such-model", "unknown zoo model"),
    ("profile undefined_model x", "not defined"),
    ("profile zoo:gpt2-block --compare eager,fastest", "--compare"),
    ("profile zoo:gpt2-block --gpu v99", "--gpu"),
    ("profile zoo:gpt2-block --executor fastest", "--executor: invalid choice: 'fastest'"),
    ("profile zoo:gpt2-block --steps 0", "--steps: must be >= 1"),
    ("profile zoo:gpt2-block --bogus 1", "unrecognized arguments"),
    ("frobnicate", "unknown command"),
    ("kernels extra", "no arguments"),
])
def test_bad_arguments_print_usage(ip, capsys, line, message):
    assert ip.run_line_magic("fusionlab", line) is None
    out = capsys.readouterr().out
    assert message in out
    assert USAGE.splitlines()[0] in out
    assert "Traceback" not in out


def test_bad_fuse_pattern_is_one_line(ip, capsys):
    assert ip.run_line_magic("fusionlab", "profile zoo:mlp --fuse nosuchpattern --steps 1") is None
    out = capsys.readouterr().out
    assert out.startswith("fusionlab: error: PlanError: no candidate matches 'nosuchpattern'")


def test_cell_magic_times_the_cell(ip):
    ip.user_ns["runs"] = 0
    timing = ip.run_cell_magic("fusionlab", "profile --steps 3 --warmup 1", "runs += 1\n")
    assert isinstance(timing, CellTiming)
    assert ip.user_ns["runs"] == 4
    assert len(timing.samples) == 3
    assert timing.min_ms <= timing.median_ms <= timing.max_ms
    assert "measured on cpu" in repr(timing)


def test_cell_magic_bad_args_print_usage(ip, capsys):
    assert ip.run_cell_magic("fusionlab", "profile --steps 0", "pass\n") is None
    assert "--steps: must be >= 1" in capsys.readouterr().out
    assert ip.run_cell_magic("fusionlab", "kernels", "pass\n") is None
    assert "cell magic takes 'profile'" in capsys.readouterr().out
