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
    """Shows the jobs its owner starts; disables the owner's buttons while any job runs."""

    def __init__(
        self,
        runner: JobRunner,
        owner: QWidget,
        on_finished: Callable[[Job], None] | None = None,
        on_busy: Callable[[bool], None] | None = None,
        parent: QWidget | None = None,
        on_preview: Callable[[dict[str, Any], str], None] | None = None,
    ) -> None:
        super().__init__(parent)
        self.runner = runner
        self.owner = owner
        self.on_finished = on_finished
        self.on_busy = on_busy
        self.on_preview = on_preview
        self.last_job: Job | None = None

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

        runner.started.connect(self._on_started)
        runner.progress.connect(self._on_progress)
        runner.finished.connect(self._on_finished)
        if runner.running:
            self._on_started(runner.job)

    def _mine(self, job: Job | None) -> bool:
        return job is not None and job.owner is self.owner

    def _on_started(self, job: Job) -> None:
        if self.on_busy:
            self.on_busy(True)
        if not self._mine(job):
            self.status.setText(f"busy: '{job.label}' runs (one training job at a time)")
            return
        self.last_job = job
        self.plot.clear(job.label)
        self.bar.setRange(0, 0)  # indeterminate until the child reports its first step
        self.status.setText(f"{job.label}: starting the training process ...")
        self.cancel_button.setEnabled(True)
        self.resume_button.setEnabled(False)

    def _on_progress(self, job: Job, p: dict[str, Any]) -> None:
        if not self._mine(job):
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
        if self.plot.title == stage:
            self.plot.add(step, loss)
        self.status.setText(describe_progress(p))

    def _on_finished(self, job: Job) -> None:
        if self.on_busy:
            self.on_busy(False)
        if not self._mine(job):
            self.status.setText("idle")
            return
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if job.status == "done" else 0)
        self.status.setText(viewer_words(job.message))
        self.resume_button.setEnabled(job.status in ("cancelled", "crashed"))
        if self.on_finished:
            self.on_finished(job)

    def resume(self) -> None:
        """Start the last job again with ``resume=True`` in every step."""
        from napari_tskd import _notify

        job = self.last_job
        if job is None:
            return
        steps = copy.deepcopy(job.steps)
        for step in steps:
            step.setdefault("kwargs", {})["resume"] = True
        try:
            self.runner.start(Job(job.label, steps, job.config, owner=job.owner, env=job.env))
        except RuntimeError as exc:
            _notify.error(str(exc))
