"""Background work in the explorer: one status line per kind of job, with a progress bar
while it runs and the time it took when it is done.

A :class:`Task` runs a job (a check, a compile for a GPU target, a profile) in a daemon
thread when ``background`` is set (the explorer sets it inside a kernel: the notebook stays
usable), else in the caller's thread. While it runs its line shows a browser progress bar
(indeterminate, or ``done/total`` when the job reports counts) and the seconds so far,
ticking; when it ends, the time it took, or its error. An exception in a job is shown in
the line, never raised into the notebook. One job per task at a time: a second start while
one runs is refused in the line, or queued with ``queue=True`` (the latest queued wins).
"""

from __future__ import annotations

import html
import threading
import time

from . import _html

TICK_S = 0.5


def status_html(text: str, *, running: bool = False, done: int | None = None, total: int | None = None,
                kind: str = "info") -> str:
    """A status line: a progress bar (indeterminate unless ``done/total``) while running."""
    bar = ""
    if running:
        value = f" value='{done}' max='{total}'" if total else ""
        bar = f"<progress data-role='progress'{value} style='width:110px;height:10px;margin-right:6px'></progress>"
    if kind == "info":
        return f"<div style='font-size:12px;color:{_html.MUTED}'>{bar}{html.escape(text)}</div>"
    return _html.message(text, kind)


class Task:
    """One kind of background job and its status line (``task.status``, an HTML widget)."""

    def __init__(self, name: str):
        import ipywidgets as w

        self.name = name
        self.status = w.HTML()
        self.thread: threading.Thread | None = None
        self.started = 0.0
        self.seconds: float | None = None  # how long the last job took
        self.error: str = ""  # the last job's error, or ""
        self.what = ""
        self.counts: tuple[int, int] | None = None
        self.note = ""  # said after the running line (a refused or queued start)
        self._queued = None
        self._busy = False  # a job runs or is about to (guarded by _lock)
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._busy

    def progress(self, done: int, total: int) -> None:
        """For a job that can count its steps: shown as ``done/total`` in the bar."""
        self.counts = (done, total)
        self._show()

    def _show(self) -> None:
        done, total = self.counts or (None, None)
        count = f" ({done}/{total})" if total else ""
        self.status.value = status_html(f"{self.what}{count} ... {time.perf_counter() - self.started:.1f} s"
                                        f"{self.note}",
                                        running=True, done=done, total=total)

    def start(self, what: str, job, *, background: bool, done=None, queue: bool = False, after=None):
        """Run ``job()`` and then ``done(result)`` (both in the thread when ``background``),
        then ``after()`` whether it failed or not. Returns the result when run in the
        caller's thread, else None."""
        with self._lock:
            if self.running:
                if queue:
                    self._queued = (what, job, done, after)
                    self.note = "; another run is queued: it starts when this one ends"
                else:
                    self.note = f"; still running: '{what}' was not started"
                self._show()
                return None
            self.note = ""
            self.what, self.counts, self.error, self.seconds = what, None, "", None
            self.started = time.perf_counter()
            self._busy = True
            self._show()
            if background:
                self.thread = threading.Thread(target=self._loop, args=(job, done, after), daemon=True,
                                               name=f"fusionlab-{self.name}")
                self.thread.start()
                threading.Thread(target=self._tick, args=(self.thread,), daemon=True).start()
                return None
        return self._run(job, done, after)

    def _tick(self, thread) -> None:
        while thread.is_alive():
            thread.join(TICK_S)
            if self._busy and thread is self.thread and self.seconds is None:
                self._show()

    def _loop(self, job, done, after) -> None:
        self._run(job, done, after)
        while True:
            with self._lock:
                queued, self._queued = self._queued, None
                if queued is None:  # _run saw none and cleared _busy
                    return
                self.what, self.counts, self.error, self.seconds, self.note = queued[0], None, "", None, ""
                self.started = time.perf_counter()
            self._run(*queued[1:])

    def _run(self, job, done, after=None):
        result = None
        try:
            result = job()
            self.seconds = time.perf_counter() - self.started
            if done is not None:
                done(result)  # may set self.error: a job that returned a failure
            if self.error:
                raise RuntimeError(self.error)
            self.status.value = status_html(f"{self.what}: done in {self.seconds:.1f} s")
        except Exception as e:  # noqa: BLE001 - a job's error is shown in its line
            self.seconds = time.perf_counter() - self.started
            self.error = self.error or f"{type(e).__name__}: {e}"
            self.status.value = status_html(f"{self.what} failed after {self.seconds:.1f} s: {self.error}",
                                            kind="error")
        with self._lock:
            if self._queued is None:
                self._busy = False  # done: what `after` shows is no longer running
        if after is not None:
            try:
                after()
            except Exception as e:  # noqa: BLE001
                self.status.value += _html.message(f"{type(e).__name__}: {e}", "error")
        return result

    def wait(self, timeout: float | None = None) -> None:
        """Until the running job (and any queued one) has ended."""
        while self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout)
            if timeout is not None:
                return
