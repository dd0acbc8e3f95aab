"""The job runner: a training stage in a spawned process, progress back through a queue,
cancel within 2 s, errors and crashes as notifications (napari survives). Fake stages keep it
fast; the real stages are exercised in test_gui_pipeline.py."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")


@dataclass
class FakeProgress:  # the fields of tskd.engine.Progress, without importing torch in the child
    stage: str
    step: int
    total: int
    epoch: int = 0
    epochs: int = 1
    loss: float = 1.0
    eta_s: float | None = None
    logs: dict = field(default_factory=dict)
    message: str = ""


def fake_train(cfg, progress=None, cancel=None, resume=False, steps=20, delay=0.01):
    """A stage that reports ``steps`` steps and honours cancel like the engine does."""
    from tskd.errors import Cancelled

    start = 10 if resume else 0
    for step in range(start, steps):
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"fake: cancelled at step {step}/{steps}; resume to go on")
        time.sleep(delay)
        progress(FakeProgress("fake", step + 1, steps, loss=1.0 / (step + 1)))
    return {"steps": steps, "resumed": resume, "run_dir": cfg.run_dir}


def fake_user_error(cfg, progress=None, cancel=None, resume=False):
    from tskd.errors import TskdInputError

    raise TskdInputError("fake: labels folder /x/labels is missing")


def fake_crash(cfg, progress=None, cancel=None, resume=False):
    progress(FakeProgress("fake", 1, 10))
    time.sleep(0.2)
    os._exit(3)  # what an out-of-memory kill or a segfault looks like from outside


def fake_bug(cfg, progress=None, cancel=None, resume=False):
    raise ZeroDivisionError("division by zero")


def _job(target: str, **kwargs):
    from napari_tskd._jobs import Job

    from tskd.config import RunConfig, to_dict

    return Job("fake", [{"target": f"{__name__}:{target}", "kwargs": kwargs}],
               to_dict(RunConfig(run_dir="somewhere")))


@pytest.fixture
def runner(qtbot):
    from napari_tskd._jobs import JobRunner

    r = JobRunner()
    yield r
    r.shutdown()


def test_progress_streams_and_result_returns(runner, notes) -> None:
    seen = []
    runner.progress.connect(lambda job, p: seen.append(p))
    job = runner.start(_job("fake_train", steps=30))
    runner.wait(60)
    assert job.status == "done", job.message
    assert job.results[f"{__name__}:fake_train"] == {"steps": 30, "resumed": False,
                                                     "run_dir": "somewhere"}
    assert seen and seen[-1]["step"] == 30 and seen[-1]["total"] == 30  # the last always arrives
    assert all(isinstance(p, dict) for p in seen)  # plain dicts: the GUI needs no torch
    assert any("finished" in m for m in notes.infos())


def test_cancel_stops_within_two_seconds_and_resume_continues(runner, notes, qtbot) -> None:
    job = runner.start(_job("fake_train", steps=100000, delay=0.005))
    with pytest.raises(RuntimeError, match="still running"):  # one training job at a time
        runner.start(_job("fake_train"))
    qtbot.waitUntil(lambda: job.last_progress is not None, timeout=60000)
    runner.cancel()
    runner.wait(10)
    assert job.status == "cancelled"
    assert job.stop_seconds is not None and job.stop_seconds < 2.0
    assert "resume" in job.message
    again = runner.start(_job("fake_train", steps=12, resume=True))
    runner.wait(60)
    assert again.status == "done"
    assert again.results[f"{__name__}:fake_train"]["resumed"] is True


def test_user_error_becomes_one_sentence_notification(runner, notes) -> None:
    job = runner.start(_job("fake_user_error"))
    runner.wait(60)
    assert job.status == "error"
    assert notes.errors() == ["fake: labels folder /x/labels is missing"]


def test_bug_reports_type_and_points_to_terminal(runner, notes) -> None:
    job = runner.start(_job("fake_bug"))
    runner.wait(60)
    assert job.status == "error"
    assert "ZeroDivisionError" in notes.errors()[0] and "terminal" in notes.errors()[0]


def test_crash_of_child_is_reported_and_gui_survives(runner, notes) -> None:
    job = runner.start(_job("fake_crash"))
    runner.wait(60)
    assert job.status == "crashed"
    assert job.exitcode == 3
    assert "unexpectedly" in notes.errors()[0]
    assert not runner.running  # the GUI goes on; the next job may start


def test_panel_shows_progress_cancel_and_resume(qtbot, notes) -> None:
    from napari_tskd._job_panel import JobPanel
    from napari_tskd._jobs import JobRunner
    from qtpy.QtWidgets import QWidget

    owner = QWidget()
    qtbot.addWidget(owner)
    runner = JobRunner()
    panel = JobPanel(runner, owner)
    qtbot.addWidget(panel)
    job = _job("fake_train", steps=100000, delay=0.005)
    job.owner = owner
    runner.start(job)
    assert panel.cancel_button.isEnabled() and not panel.resume_button.isEnabled()
    qtbot.waitUntil(lambda: len(panel.plot.points) >= 2, timeout=60000)
    assert "fake: step" in panel.status.text()
    panel.cancel_button.click()
    runner.wait(10)
    assert panel.resume_button.isEnabled() and not panel.cancel_button.isEnabled()
    panel.resume_button.click()
    assert runner.running and runner.job.steps[0]["kwargs"]["resume"] is True
    runner.shutdown()


def test_loss_plot_keeps_the_last_curve_through_stages_without_a_loss(qtbot) -> None:
    """Sampling after diffusion training reports no loss: the training curve stays on show."""
    from napari_tskd._job_panel import JobPanel
    from napari_tskd._jobs import JobRunner
    from qtpy.QtWidgets import QWidget

    owner = QWidget()
    qtbot.addWidget(owner)
    panel = JobPanel(JobRunner(), owner)
    qtbot.addWidget(panel)
    job = _job("fake_train")
    job.owner = owner
    nan = float("nan")
    for stage, step, loss in (("train", 1, 0.9), ("train", 2, 0.7), ("sample", 1, nan),
                              ("sample", 2, nan)):
        panel._on_progress(job, {"stage": stage, "step": step, "total": 2, "loss": loss})
    assert panel.plot.title == "train" and len(panel.plot.points) == 2
    assert panel.status.text().startswith("sample: step 2/2")
    panel._on_progress(job, {"stage": "distill", "step": 1, "total": 5, "loss": 0.3})
    assert panel.plot.title == "distill" and panel.plot.points == [(1.0, 0.3)]
