"""Progress bar, live loss plot, status line, Cancel and Resume for one stage widget."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_tskd._jobs import Job, JobRunner
from napari_tskd._loss_plot import LossPlot
from napari_tskd._words import viewer_words


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def describe_progress(p: dict[str, Any]) -> str:
    """One status line from a progress dict (the fields of ``tskd.engine.Progress``)."""
    text = f"{p.get('stage', '')}: step {p.get('step', 0)}/{p.get('total', 0)}"
    if p.get("epochs"):
        text += f", epoch {int(p.get('epoch', 0)) + 1}/{p['epochs']}"
    if p.get("loss") is not None:
        text += f", loss {float(p['loss']):.4g}"
    if p.get("eta_s") is not None:
        text += f", {_duration(p['eta_s'])} left"
    if p.get("message"):
        text += f" ({p['message']})"
    return text


class JobPanel(QWidget):
    """Shows the jobs its owner's kind of widget starts; disables the owner's buttons while any
    job runs.

    A job belongs to every panel whose owner is of the kind that started it (``Job.origin``), so
    a dock closed and opened again during a job re-attaches to it: its progress, loss curve and
    Cancel. Between jobs the panel shows the run folder's state of ``stages`` (done, or stopped
    with a checkpoint) and enables Resume where a checkpoint exists.

    Nothing here touches the owner before ``attach`` (called once the owner is fully built).
    """

    def __init__(
        self,
        runner: JobRunner,
        owner: QWidget,
        on_finished: Callable[[Job], None] | None = None,
        on_busy: Callable[[bool], None] | None = None,
        parent: QWidget | None = None,
        on_preview: Callable[[dict[str, Any], str], None] | None = None,
        auto_attach: bool = True,
    ) -> None:
        super().__init__(parent)
        self.runner = runner
        self.owner = owner
        self.origin = type(owner).__qualname__
        self.on_finished = on_finished
        self.on_busy = on_busy
        self.on_preview = on_preview
        self.last_job: Job | None = None
        self.disk_steps: list[dict[str, Any]] = []  # Resume from the run folder's checkpoints
        self.disk_job: Callable[[list[dict[str, Any]]], Job | None] | None = None
        self._attached = False
        self._build()
        # bound methods of this QObject: Qt drops the connections when the panel is destroyed
        runner.started.connect(self._on_started)
        runner.progress.connect(self._on_progress)
        runner.finished.connect(self._on_finished)
        runner.note.connect(self._on_note)
        if auto_attach:
            self.attach()

    def _build(self) -> None:
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.plot = LossPlot()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop at the next step; a resumable checkpoint is kept")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("continue the cancelled or crashed job from its checkpoint")
        self.cancel_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.resume_button.clicked.connect(self.resume)
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addLayout(buttons)

    def attach(self) -> None:
        """Show the job in progress, if any (its curve so far and Cancel), as if this panel
        had been there from its start. Call once the owner is fully built."""
        self._attached = True
        job = self.runner.job
        if job is None:
            return
        self._on_started(job)
        if not self._mine(job):
            return
        for stage, step, loss in list(job.history):
            if self.plot.title != stage:
                self.plot.clear(stage)
            self.plot.add(step, loss)
        if job.last_progress is not None:
            self._on_progress(job, {**job.last_progress, "preview": None})
        else:
            self._on_note(job, job.note)
        if job.cancel_requested_at is not None:
            self.cancel_button.setEnabled(False)
            self.status.setText(f"{job.label}: stopping ...")

    def _mine(self, job: Job | None) -> bool:
        return job is not None and (job.owner is self.owner or job.origin == self.origin)

    def show_run_state(self, states: list[Any], steps: list[dict[str, Any]]) -> None:
        """Between jobs: one line per stage of the run folder, Resume where it can continue.

        Args:
            states: ``napari_tskd._run_state.StageState`` of the owner's stages.
            steps: the job steps Resume starts (``[]``: Resume stays off unless the last job
                of this panel was cancelled or crashed).
        """
        if self.runner.running:
            return
        self.disk_steps = steps
        lines = [s.describe() for s in states]
        if self.last_job is not None and self.last_job.message:
            lines.insert(0, viewer_words(self.last_job.message))  # how its last job ended
        if lines:
            self.status.setText("\n".join(lines))
        can_resume_last = self.last_job is not None and self.last_job.status in (
            "cancelled", "crashed")
        self.resume_button.setEnabled(bool(steps) or can_resume_last)

    def _on_started(self, job: Job) -> None:
        if not self._attached:
            return
        if self.on_busy:
            self.on_busy(True)
        if not self._mine(job):
            self.status.setText(f"busy: '{job.label}' runs (one training job at a time)")
            self.resume_button.setEnabled(False)
            return
        self.last_job = job
        self.plot.clear(job.label)
        self.bar.setRange(0, 0)  # indeterminate until the child reports its first step
        self.status.setText(f"{job.label}: {job.note or 'starting the training process ...'}")
        self.cancel_button.setEnabled(True)
        self.resume_button.setEnabled(False)

    def _on_note(self, job: Job, note: str) -> None:
        if self._attached and self._mine(job) and job.last_progress is None and note:
            self.status.setText(f"{job.label}: {note}")

    def _on_progress(self, job: Job, p: dict[str, Any]) -> None:
        if not self._attached or not self._mine(job):
            return
        total, step = int(p.get("total") or 0), int(p.get("step") or 0)
        if total:
            self.bar.setRange(0, total)
            self.bar.setValue(min(step, total))
        stage, loss = str(p.get("stage", "")), float(p.get("loss", float("nan")))
        # a stage without a loss (sampling, caching) leaves the last curve on show
        if self.plot.title != stage and (math.isfinite(loss) or not self.plot.points):
            self.plot.clear(stage)
        if p.get("preview") is not None:
            if self.on_preview is not None:
                self.on_preview(p["preview"], stage)
            return  # the preview repeats the step's last report; the plot has it already
        if self.plot.title == stage and (not self.plot.points
                                         or self.plot.points[-1][0] != float(step)):
            self.plot.add(step, loss)
        self.status.setText(describe_progress(p))

    def _on_finished(self, job: Job) -> None:
        if not self._attached:
            return
        if self.on_busy:
            self.on_busy(False)
        if not self._mine(job):
            self.status.setText("idle")
            return
        self.last_job = job
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if job.status == "done" else 0)
        self.status.setText(viewer_words(job.message))
        self.resume_button.setEnabled(job.status in ("cancelled", "crashed"))
        if self.on_finished:
            self.on_finished(job)

    def resume(self) -> None:
        """Continue from the checkpoint: the last job again with ``resume=True`` in every step,
        or, in a panel that has not run one (the viewer was reopened), the run folder's steps."""
        from napari_tskd import _notify

        job = self.last_job
        if job is None or job.status not in ("cancelled", "crashed"):
            if self.disk_steps and self.disk_job is not None:
                self.disk_job(copy.deepcopy(self.disk_steps))
            return
        steps = copy.deepcopy(job.steps)
        for step in steps:
            step.setdefault("kwargs", {})["resume"] = True
        try:
            self.runner.start(Job(job.label, steps, job.config, owner=self.owner, env=job.env,
                                  origin=job.origin))
        except RuntimeError as exc:
            _notify.error(str(exc))

