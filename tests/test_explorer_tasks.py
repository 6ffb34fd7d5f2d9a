"""The explorer's background work, tested by its state (no browser): the task status line
(progress while running, time taken, errors in the line), the kernel pane's inspector
(a real compile for a GPU target in worker processes) and export, and the loop line
(modeled at once, measured when it arrives, stale in between)."""

import html
import importlib.util
import re
import threading

import pytest

pytest.importorskip("ipywidgets")
from fusionlab.widgets import Explorer, explore  # noqa: E402
from fusionlab.widgets._tasks import Task  # noqa: E402


def text(widget) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


@pytest.fixture
def ex(zoo_model, zoo_capture):
    zm = zoo_model("mlp")
    return explore(zm.model, *zm.inputs, capture=zoo_capture("mlp"))


def gelu(ex) -> str:
    return next(c.id for c in ex.plan.candidates if c.pattern.endswith("gelu"))  # matmul+bias+gelu since epilogues


# ---------------------------------------------------------------------- Task


def test_task_shows_progress_while_running_then_the_time_it_took():
    task = Task("t")
    go, started = threading.Event(), threading.Event()

    def job():
        started.set()
        assert go.wait(10)
        return 42

    got = []
    assert task.start("waiting", job, background=True, done=got.append) is None
    assert started.wait(10)
    assert task.running and "<progress" in task.status.value and "waiting" in text(task.status)
    task.progress(1, 3)
    assert "(1/3)" in text(task.status) and "value='1' max='3'" in task.status.value
    # a second start while one runs is refused in the line, not raised
    assert task.start("another", lambda: 0, background=True) is None
    assert "'another' was not started" in text(task.status)
    go.set()
    task.wait()
    assert got == [42] and not task.running
    assert re.search(r"waiting: done in \d+\.\d s", text(task.status)) and task.seconds is not None


def test_task_error_is_shown_in_its_line_not_raised():
    task = Task("t")
    after = []
    assert task.start("boom", lambda: 1 / 0, background=False, after=lambda: after.append(1)) is None
    assert "boom failed after" in text(task.status) and "ZeroDivisionError" in text(task.status)
    assert task.error.startswith("ZeroDivisionError") and after == [1] and not task.running


def test_task_queue_runs_the_latest_queued_job_after_the_running_one():
    task = Task("t")
    go = threading.Event()
    ran = []
    task.start("first", lambda: go.wait(10), background=True, done=lambda r: ran.append("first"))
    task.start("second", lambda: 2, background=True, queue=True, done=lambda r: ran.append("second"))
    task.start("third", lambda: 3, background=True, queue=True, done=lambda r: ran.append("third"))
    assert "queued" in text(task.status)
    go.set()
    task.wait()
    assert ran == ["first", "third"] and "third: done in" in text(task.status)


# ---------------------------------------------------------------------- checks in the background


def test_check_in_the_background_reports_its_time(ex):
    cid = gelu(ex)
    ex.focus(cid)
    ex.kernel_pane.check(background=True)
    ex.wait()
    assert text(ex.kernel_pane.check_result).startswith("ok")
    assert re.search(rf"checking {re.escape(cid)} against PyTorch .*: done in \d", text(ex.kernel_pane.task.status))


# ---------------------------------------------------------------------- inspector and export


def test_inspector_compiles_the_focused_kernel_for_a_gpu_target(ex):
    cid = gelu(ex)
    ex.focus(cid)
    pane = ex.kernel_pane.inspector
    pane.target.value = "sm_80"
    pane.compile_button.click()  # background=False outside a kernel: runs here
    rep = pane.reports[(cid, "sm_80")]
    assert rep.ok and rep.registers and rep.ptx
    shown = text(pane.report)
    assert "compiled for sm_80" in shown and f"registers / thread{rep.registers}" in shown
    assert "(modeled)" in shown  # occupancy is modeled, and says so
    assert "data-stage='ptx'" in pane.report.value
    assert ("data-stage='sass'" in pane.report.value) == bool(rep.sass)
    assert "done in" in text(pane.task.status)
    # another target has no report yet; going back shows the one compiled
    pane.target.value = "sm_90"
    assert pane.report.value == ""
    pane.target.value = "sm_80"
    assert "compiled for sm_80" in text(pane.report)


def test_inspector_says_when_sass_tools_are_missing(ex, monkeypatch):
    monkeypatch.setenv("FUSIONLAB_HIDE_NVIDIA_TOOLS", "nvdisasm,cuobjdump")
    rep = ex.inspect(gelu(ex), "sm_90")
    assert rep.ok and not rep.sass and rep.ptx
    shown = text(ex.kernel_pane.inspector.report)
    assert "SASS: not available here" in shown and "nvdisasm" in shown


def test_inspector_errors_stay_in_the_widget(ex):
    pane = ex.kernel_pane.inspector
    assert pane.inspect() is None  # nothing focused
    assert "focus a candidate first" in text(pane.report)
    ex.focus(gelu(ex))
    assert pane.inspect(target="sm_70") is None
    assert "no GPU target 'sm_70'" in text(pane.report)


def test_export_writes_importable_modules_and_shows_the_folder(ex, tmp_path):
    cid = gelu(ex)
    ex.focus(cid)
    paths = ex.export(str(tmp_path / "k"))  # nothing selected: the focused kernel
    assert [p.name for p in paths][-1] == "__init__.py" and len(paths) == 2
    shown = text(ex.kernel_pane.inspector.exported)
    assert str(tmp_path / "k") in shown and f"not checked against PyTorch yet: {cid}" in shown
    spec = importlib.util.spec_from_file_location("exported_k", paths[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    other = next(c.id for c in ex.plan.candidates if c.graph == "bw0")
    ex.select(cid, other)
    ex.kernel(cid).check()
    paths = ex.export(str(tmp_path / "sel"))
    assert len(ex.plan.selected) == 2 and len(paths) == 3
    assert f"not checked against PyTorch yet: {other}" in text(ex.kernel_pane.inspector.exported)


def test_export_to_a_bad_folder_is_an_error_in_the_widget(ex, tmp_path):
    ex.focus(gelu(ex))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert ex.export(str(blocker / "sub")) == []
    assert "export failed" in text(ex.kernel_pane.inspector.exported)


# ---------------------------------------------------------------------- the loop line


def test_loop_line_modeled_at_once_measured_later_stale_in_between(zoo_model, zoo_capture):
    zm = zoo_model("mlp")
    ex = Explorer(zoo_capture("mlp"), model=zm.model, inputs=zm.inputs, loss_fn=zm.loss_fn)
    loop = lambda: text(ex.loop)  # noqa: E731
    assert "modeled" in loop() and "measured: not yet" in loop()
    ex.select("gelu")
    pane = ex.profile_pane
    result = ex.profile(steps=2, warmup=1, compare=("eager", "fusionlab"), executor="inductor-groups")
    assert result is not None and "current" in loop() and "cpu" in loop()
    assert re.search(r"took \d+\.\d s", loop()) and "inductor-cpp (per group)" in loop()

    # a toggle: the modeled line changes at once; the measurement is stale (auto off)
    pane.auto.value = False
    before = loop()
    ex.deselect("gelu")
    assert loop() != before and "stale" in loop() and pane.stale
    assert "STALE" in text(pane.html) and "data-role='stale'" in pane.html.value
    assert pane.output.layout.display == "none"  # the old figure is not shown as current
    # back to the measured selection: current again
    ex.select("gelu")
    assert not pane.stale and "current" in loop() and pane.output.layout.display is None

    # auto on, in the background: the re-measure runs, then the result is current
    pane.background = True
    pane.auto.value = True
    ex.deselect("gelu")
    assert pane.task.running and "re-measuring" in loop() and "stale" in loop()
    ex.wait()
    assert not pane.stale and "current" in loop() and pane.result is not result
    assert [c.id for c in pane.result.plan.selected] == []
