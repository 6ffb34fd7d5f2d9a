"""A bounded pool of compile worker processes (see ``_worker.py``).

Each worker is a long-lived ``python .../fusionlab/inspect/_worker.py`` subprocess that
starts without ``TRITON_INTERPRET`` (so it can compile for GPU targets even when this
process runs kernels in the Triton interpreter) and imports triton and torch once.
Tasks go to it as JSON lines. A task that crashes its worker (segfault, abort) or runs
past its time limit (the worker is killed) fails alone: the pool starts a fresh worker
for the next task, and the other tasks complete.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
STARTUP_TIMEOUT = 180.0  # importing triton + torch on a loaded 2-core machine
_EOF = object()


class WorkerError(RuntimeError):
    """A worker died, hung, or never became ready."""


def worker_env() -> dict[str, str]:
    """The environment a worker starts with: ours, minus the Triton interpreter."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["FUSIONLAB_INTERPRET"] = "0"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, minus its warning
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def task_env() -> dict[str, str]:
    """The TRITON_* variables a task carries (read at call time, applied in the worker)."""
    env = {
        k: v for k, v in os.environ.items() if k.startswith("TRITON_") and k != "TRITON_INTERPRET"
    }
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class _Worker:
    """One worker subprocess, with a reader thread turning its output lines into messages."""

    def __init__(self, python: str):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [python, str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=worker_env(),
            cwd=tempfile.gettempdir(),
        )
        self._messages: queue.Queue = queue.Queue()
        self.ready = False
        self.startup_seconds: float | None = None
        self.workdir: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                try:
                    self._messages.put(json.loads(line))
                except ValueError:
                    self._messages.put(
                        {"event": "garbage", "line": line[:200].decode("utf-8", "replace")}
                    )
        except (OSError, ValueError):
            pass
        self._messages.put(_EOF)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - n))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _died(self, what: str) -> WorkerError:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        tail = self.stderr_tail()
        msg = f"compile worker {what} ({_describe_exit(self.proc.returncode)})"
        return WorkerError(msg + (f"; its stderr ends with:\n{tail}" if tail else ""))

    def wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while True:
            try:
                msg = self._messages.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                self.kill()
                raise WorkerError(f"compile worker did not start within {timeout:.0f} s") from None
            if msg is _EOF:
                raise self._died("failed to start")
            if msg.get("event") == "ready":
                self.ready = True
                self.startup_seconds = msg.get("startup_seconds")
                self.workdir = msg.get("workdir")
                return

    def request(self, task: dict, timeout: float) -> dict:
        """Send one task and wait for its answer; raise WorkerError on a crash or time-out."""
        try:
            self.proc.stdin.write((json.dumps(task) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died("died before the task was sent") from None
        deadline = time.perf_counter() + timeout
        while True:
            try:
                msg = self._messages.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                self.kill()
                raise WorkerError(
                    f"compile timed out after {timeout:g} s; the worker was killed"
                ) from None
            if msg is _EOF:
                raise self._died("crashed during the compile")
            if msg.get("id") == task["id"]:
                return msg

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is not None and self.workdir:
            if os.path.basename(self.workdir).startswith("fusionlab-worker-"):
                shutil.rmtree(self.workdir, ignore_errors=True)  # a killed worker cannot clean up
        self._close_pipes()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self._stderr):
            try:
                f.close()
            except (OSError, ValueError):
                pass


class WorkerPool:
    """Up to ``size`` reusable worker processes; ``map`` runs tasks on them.

    Workers start lazily (in parallel, one per busy slot) and stay up between calls, so
    only the first call pays for importing triton and torch. ``close()`` (or leaving a
    ``with`` block) stops them; the shared pool from :func:`default_pool` is closed at exit.
    """

    def __init__(
        self, size: int = 2, *, python: str | None = None, startup_timeout: float = STARTUP_TIMEOUT
    ):
        if size < 1:
            raise ValueError("a WorkerPool needs at least one worker")
        self.size = size
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self._slots: list[_Worker | None] = [None] * size
        self._lock = threading.Lock()
        self._closed = False
        self._next_id = 0
        self._id_lock = threading.Lock()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        live = sum(1 for w in self._slots if w is not None and w.alive())
        return f"WorkerPool(size={self.size}, live={live}{', closed' if self._closed else ''})"

    def resize(self, size: int) -> None:
        """Allow up to ``size`` workers (never stops running ones; a smaller ``map`` uses fewer)."""
        with self._lock:
            if size > self.size:
                self._slots.extend([None] * (size - self.size))
                self.size = size

    def start(self, n: int | None = None) -> None:
        """Start ``n`` (default: all) workers now, without waiting for them to be ready."""
        with self._lock:
            for i in range(min(n or self.size, self.size)):
                if self._slots[i] is None or not self._slots[i].alive():
                    self._slots[i] = _Worker(self.python)

    def _new_id(self) -> int:
        with self._id_lock:
            self._next_id += 1
            return self._next_id

    def _run_one(self, slot: int, task: dict, timeout: float) -> dict:
        t0 = time.perf_counter()
        w = self._slots[slot]
        try:
            if w is None or not w.alive():
                if w is not None:
                    w.kill()
                w = self._slots[slot] = _Worker(self.python)
            w.wait_ready(self.startup_timeout)
            result = w.request({**task, "id": self._new_id()}, timeout)
        except WorkerError as e:
            if w is not None:
                w.kill()
            self._slots[slot] = None
            result = {"ok": False, "error": str(e), "worker_failed": True}
        result["wall_seconds"] = time.perf_counter() - t0
        return result

    def map(
        self,
        tasks: Sequence[dict],
        *,
        timeout: float = 120.0,
        workers: int | None = None,
        on_done: Callable[[int, dict], None] | None = None,
    ) -> list[dict]:
        """Run ``tasks`` on up to ``workers`` (default ``size``) workers; results in task order.

        ``timeout`` limits each task's compile (not the worker's start-up). A failed task's
        result is ``{"ok": False, "error": ...}``; ``on_done(index, result)`` is called from
        the pool's threads as each task finishes.
        """
        if self._closed:
            raise RuntimeError("this WorkerPool is closed")
        tasks = list(tasks)
        if not tasks:
            return []
        n = max(1, min(workers or self.size, self.size, len(tasks)))
        results: list[dict | None] = [None] * len(tasks)
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(len(tasks)):
            todo.put(i)

        def loop(slot: int) -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[i] = self._run_one(slot, tasks[i], timeout)
                except BaseException as e:  # noqa: BLE001 - never lose a task's result
                    results[i] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                if on_done is not None:
                    try:
                        on_done(i, results[i])
                    except Exception:  # noqa: BLE001 - progress display must not fail the work
                        pass

        with self._lock:
            threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop all workers."""
        self._closed = True
        slots, self._slots = self._slots, [None] * self.size
        for w in slots:
            if w is not None:
                w.stop()


_default: WorkerPool | None = None
_default_lock = threading.Lock()


def default_pool(workers: int = 2) -> WorkerPool:
    """The process-wide pool, with room for at least ``workers`` workers."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = WorkerPool(max(1, workers))
        else:
            _default.resize(workers)
        return _default


def shutdown() -> None:
    """Stop the process-wide pool's workers (it restarts on next use)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None


atexit.register(shutdown)


# -- progress -----------------------------------------------------------------------


def _in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar (``tqdm.auto`` in a notebook), or None when disabled or tqdm is missing."""
    if not enabled or total <= 0:
        return None
    try:
        if _in_notebook():
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="kernel", leave=False)
