"""Tests for ``python -m fusionlab profile`` (run in a subprocess, as a user would)."""

from __future__ import annotations

import html.parser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=240):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "fusionlab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


def test_cli_profile_prints_table_and_writes_report(tmp_path):
    report = tmp_path / "report.html"
    p = _run("profile", "--model", "mlp", "--steps", "2", "--warmup", "0", "--compare", "eager,fusionlab",
             "--gpu", "a100", "--html", str(report))
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "fusionlab profile: mlp" in out
    assert "measured on cpu" in out and "modeled (A100 80GB SXM spec)" in out
    lines = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"eager", "fusionlab"} <= lines
    assert "inductor-cpp (groups only)" in out
    assert "fusionlab backend:" in out
    assert f"report written to {report}" in out
    parser = _Tags()
    parser.feed(report.read_text(encoding="utf-8"))
    assert {"html", "table", "script"} <= parser.tags


def test_cli_profile_bad_arguments():
    p = _run("profile", "--model", "no-such-model", "--steps", "1")
    assert p.returncode == 2
    assert "unknown zoo model 'no-such-model'" in p.stderr
    assert "Traceback" not in p.stderr
    p = _run("profile", "--model", "mlp", "--executor", "fastest")
    assert p.returncode == 2 and "--executor: invalid choice: 'fastest'" in p.stderr
