"""A real browser for the explorer's end-to-end tests and benchmarks: JupyterLab started
headless on localhost and Debian's Chromium driven by Playwright (``executable_path``:
no browser download), offline, with no ``dot`` binary on the PATH.

Used by ``tests/test_explorer_browser.py``, ``tests/test_explorer_snapshot.py`` and
``bench/explorer_browser.py``:

>>> with jupyter_lab(root, {"explorer.ipynb": ["import fusionlab", "ex = fusionlab.explore('mlp')\\nex"]}) as url:
...     with chromium() as ctx:
...         page = offline_page(ctx)
...         page.goto(f"{url}/lab/tree/explorer.ipynb?reset")
...         run_cell(page, 0)

``missing()`` says why a browser cannot run here (or None): tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = os.environ.get("FUSIONLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
LOCAL = ("http://127.0.0.1", "data:", "blob:", "file:")


def missing(lab: bool = False) -> str | None:
    """Why the browser tests cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FUSIONLAB_CHROMIUM)"
    if lab and importlib.util.find_spec("jupyterlab") is None:
        return "JupyterLab is not installed (pip install jupyterlab)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def path_without_dot() -> str:
    """PATH with every directory holding a `dot` left out (the widget needs none)."""
    dirs = [str(Path(sys.executable).parent)]
    dirs += [d for d in os.environ.get("PATH", "").split(os.pathsep)
             if d and not (Path(d) / "dot").exists() and d not in dirs]
    return os.pathsep.join(dirs)


def write_notebook(path: Path, cells: list[str]) -> Path:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": src} for src in cells],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


@contextlib.contextmanager
def jupyter_lab(root: Path, notebooks: dict[str, list[str]], timeout_s: float = 120):
    """A JupyterLab server on localhost serving ``root`` with ``notebooks`` (name -> cells);
    yields its URL. The kernel imports this checkout of fusionlab; no ``dot`` on its PATH."""
    root = Path(root)
    for name, cells in notebooks.items():
        write_notebook(root / name, cells)
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    env = dict(os.environ, PATH=path_without_dot(),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"),
               JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               JUPYTER_CONFIG_DIR=str(root / ".config"))
    env.pop("JUPYTER_PLATFORM_DIRS", None)
    assert shutil.which("dot", path=env["PATH"]) is None
    log_path = root / "lab.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url + "/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def chromium(viewport=(1500, 1300), profile_dir: str | None = None):
    """A headless Chromium context with a fresh user-data dir (Playwright, executable_path)."""
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        if profile_dir is None:
            profile_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fusionlab-chromium-"))
        p = stack.enter_context(sync_playwright())
        ctx = p.chromium.launch_persistent_context(
            profile_dir, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        try:
            yield ctx
        finally:
            ctx.close()


def offline_page(ctx):
    """A new page that may reach only localhost, data:, blob: and file: URLs; ``page.errors``
    collects its uncaught JavaScript errors."""
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(LOCAL) else r.abort())
    return page


def dismiss_dialogs(page) -> list[str]:
    """Accept each JupyterLab dialog in the way (a kernel picker that a slow kernel start on a
    busy machine can bring up); their texts are kept in ``page.dialogs`` and returned."""
    seen: list[str] = []
    dialogs = page.locator(".jp-Dialog")
    for _ in range(3):
        if not dialogs.count():
            break
        d = dialogs.first
        seen.append(d.inner_text()[:300])
        accept = d.locator(".jp-Dialog-button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    page.dialogs = getattr(page, "dialogs", []) + seen
    return seen


def run_cell(page, index: int = 0, tries: int = 12) -> None:
    """Run notebook cell ``index`` through JupyterLab's UI (Ctrl+Enter), resending while the
    kernel still connects (a request sent then can be lost), until its prompt shows it ran."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    for _ in range(tries):
        dismiss_dialogs(page)
        before = cell.locator(".jp-InputPrompt").inner_text()
        try:
            cell.locator(".cm-content").click(timeout=10_000)
        except PlaywrightTimeout:  # a dialog came up in the way: accepted on the next try
            continue
        page.keyboard.press("Control+Enter")
        try:
            page.wait_for_function(
                f"(i) => {{ const p = document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
                f".querySelector('.jp-InputPrompt').innerText; return p !== {json.dumps(before)} "
                "&& !/\\[\\s*\\]/.test(p); }", arg=index, timeout=10_000)
            return
        except PlaywrightTimeout:
            if "*" in cell.locator(".jp-InputPrompt").inner_text():
                return  # running (a long cell): it was received
            continue
    raise RuntimeError(f"cell {index} did not run")


def wait_idle(page, timeout_ms: int = 600_000) -> None:
    """Until the notebook's kernel is idle."""
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout_ms)


def wait_cell_done(page, index: int, timeout_ms: int = 600_000) -> None:
    """Until cell ``index`` has finished running: its prompt holds a number (``[3]:``)."""
    page.wait_for_function(
        "(i) => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        ".querySelector('.jp-InputPrompt').innerText)", arg=index, timeout=timeout_ms)
