"""Run training stages in a separate process and report back to the GUI.

Why a process and not a thread: a crash or an out-of-memory kill of the training takes only the
child down, never napari; the GIL is not shared, so the viewer stays responsive; and the
first-import-of-timm-in-a-thread segfault (see docs/architecture.md) cannot happen. The child is
started with the *spawn* context (no fork of a Qt process) and sends plain dicts through a queue,
which a QTimer drains in the GUI thread. Cancel sets a multiprocessing Event that the engine
checks every step; a child that does not stop within ``cancel_grace_s`` is terminated (the
engine's per-epoch checkpoint still allows resuming).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue as queue_module
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QObject, QTimer, Signal

from napari_tskd import _notify
from napari_tskd._child import run_job


@dataclass
class Job:
    """One request to the child process: steps run in order on one configuration."""

    label: str
    steps: list[dict[str, Any]]  # {"target": stage name or "module:function", "kwargs": {...}}
    config: dict[str, Any]  # RunConfig as a plain dict (tskd.config.to_dict)
    owner: Any = None  # the widget that started it (panels show only their own jobs)
    origin: str = ""  # the kind of widget that started it: a reopened one of that kind re-attaches
    env: dict[str, str] = field(default_factory=dict)
    nice: int = 10  # lower CPU priority of the training process (Unix), so napari stays smooth
    status: str = "pending"  # running | done | cancelled | error | crashed
    message: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    last_progress: dict[str, Any] | None = None
    started_at: float = 0.0
    cancel_requested_at: float | None = None
    stop_seconds: float | None = None  # cancel -> child stopped, for tests and benchmarks
    exitcode: int | None = None
    note: str = ""  # what the child does before its first step ("importing torch ...")
    history: list[tuple[str, int, float]] = field(default_factory=list)  # (stage, step, loss)

    def __post_init__(self) -> None:
        if not self.origin and self.owner is not None:
            self.origin = type(self.owner).__qualname__

    def add_point(self, stage: str, step: int, loss: float) -> None:
        """Keep the loss curve for a panel that attaches later (the last ``HISTORY_LIMIT``).

        Args:
            stage: ``Progress.stage`` of the report.
            step: its optimiser step.
            loss: its loss.
        """
        self.history.append((stage, step, loss))
        if len(self.history) > HISTORY_LIMIT:
            del self.history[:HISTORY_LIMIT // 5]


HISTORY_LIMIT = 5000  # progress points a job keeps for panels that attach later


@contextlib.contextmanager
def clean_main() -> Iterator[None]:
    """Start a spawned child without re-running the user's ``__main__``.

    multiprocessing's *spawn* makes the child import the parent's main script (or ``-m``
    module) as ``__mp_main__``; a script without ``if __name__ == "__main__":`` then runs again
    in the child (a second viewer opens, the first waits forever), and the re-import of
    ``napari``'s own ``__main__`` costs seconds. The child runs ``napari_tskd._child.run_job``
    and needs nothing from ``__main__``, so while it starts, ``__main__`` shows no file and no
    module spec (the two things spawn looks at), then gets them back.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    missing = object()
    saved = {name: main.__dict__.get(name, missing) for name in ("__file__", "__spec__")}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                main.__dict__.pop(name, None)
            else:
                main.__dict__[name] = value


class JobRunner(QObject):
    """At most one training process at a time; signals carry the ``Job`` and plain dicts."""

    started = Signal(object)  # Job
    progress = Signal(object, object)  # Job, progress dict
    stage_done = Signal(object, str, object)  # Job, stage target, result dict
    note = Signal(object, str)  # Job, what the child does before training ("importing torch")
    finished = Signal(object)  # Job (status: done | cancelled | error | crashed)

    def __init__(
        self, parent: QObject | None = None, poll_ms: int = 50, cancel_grace_s: float = 4.0
    ) -> None:
        super().__init__(parent)
        self.cancel_grace_s = cancel_grace_s
        self._ctx = multiprocessing.get_context("spawn")
        self._job: Job | None = None
        self._proc: Any = None
        self._queue: Any = None
        self._event: Any = None
        self._pbar: Any = None
        self._pbar_stage = ""
        self._zombies: list[Any] = []  # finished children not yet reaped (never block on join)
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self._poll)

    @property
    def job(self) -> Job | None:
        """The job in progress, or None."""
        return self._job

    @property
    def running(self) -> bool:
        return self._job is not None

    def start(self, job: Job) -> Job:
        """Start ``job`` in a fresh process; refuses while another job runs."""
        if self._job is not None:
            raise RuntimeError(f"'{self._job.label}' is still running; cancel it or wait")
        self._queue = self._ctx.Queue()
        self._event = self._ctx.Event()
        payload = {"steps": job.steps, "config": job.config, "env": job.env, "nice": job.nice}
        self._proc = self._ctx.Process(
            target=run_job, args=(payload, self._queue, self._event), daemon=True,
            name=f"tskd-{job.label}",
        )
        job.status, job.started_at = "running", time.monotonic()
        job.note = "starting Python ..."
        with clean_main():
            self._proc.start()
        self._job = job
        self._timer.start()
        self.started.emit(job)
        return job

    def cancel(self) -> None:
        """Ask the child to stop at its next step (it writes a resumable checkpoint)."""
        if self._job is None or self._job.cancel_requested_at is not None:
            return
        self._job.cancel_requested_at = time.monotonic()
        self._event.set()

    def shutdown(self) -> None:
        """Stop the child now (viewer closing): cancel, then terminate after a short wait."""
        if self._job is None:
            return
        label = self._job.label
        self.cancel()
        self._proc.join(timeout=self.cancel_grace_s)  # the engine checkpoints on cancel
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=2.0)
        self._finish("cancelled", f"{label}: stopped because the viewer closed; open the run "
                                  "folder again and press Resume to continue from its checkpoint")

    def wait(self, timeout: float = 60.0) -> Job | None:
        """Block (processing Qt events) until the job ends; for scripts and tests."""
        from qtpy.QtWidgets import QApplication

        job = self._job
        end = time.monotonic() + timeout
        while self._job is not None and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
        return job

    # -- polling (GUI thread) -------------------------------------------------------------
    def _poll(self) -> None:
        self._reap()
        job = self._job
        if job is None:
            if not self._zombies:
                self._timer.stop()
            return
        for _ in range(200):  # bounded, so a flood can never freeze the GUI
            try:
                msg = self._queue.get_nowait()
            except (queue_module.Empty, OSError, EOFError):
                break
            if self._handle(job, msg):
                return
        if not self._proc.is_alive():
            self._drain_after_exit(job)
            return
        if job.cancel_requested_at is not None:
            waited = time.monotonic() - job.cancel_requested_at
            if waited > self.cancel_grace_s + 2.0:
                self._proc.kill()
            elif waited > self.cancel_grace_s:
                self._proc.terminate()

    def _reap(self) -> None:
        for proc in list(self._zombies):
            if not proc.is_alive():
                proc.join(timeout=0)
                self._zombies.remove(proc)

    def _drain_after_exit(self, job: Job) -> None:
        """The child is gone: read what it left, else report a crash (or a forced stop)."""
        self._proc.join(timeout=1.0)
        while True:
            try:
                msg = self._queue.get(timeout=0.05)
            except (queue_module.Empty, OSError, EOFError):
                break
            if self._handle(job, msg):
                return
        job.exitcode = self._proc.exitcode
        if job.cancel_requested_at is not None:
            self._finish("cancelled", f"{job.label}: stopped; Resume continues from the last "
                                      "epoch checkpoint")
            return
        code = self._proc.exitcode
        hint = " (killed: out of memory?)" if code in (-9, 137) else ""
        self._finish(
            "crashed",
            f"{job.label}: the training process stopped unexpectedly (exit code {code}){hint}; "
            "napari is unaffected and Resume continues from the last checkpoint",
        )

    def _handle(self, job: Job, msg: dict[str, Any]) -> bool:
        """Act on one message; True when it ended the job."""
        kind = msg.get("kind")
        if kind == "progress":
            job.last_progress = msg
            loss = msg.get("loss")
            if msg.get("preview") is None and isinstance(loss, int | float):
                job.add_point(str(msg.get("stage", "")), int(msg.get("step") or 0), float(loss))
            self._update_pbar(msg)
            self.progress.emit(job, msg)
        elif kind == "note":
            job.note = str(msg.get("message", ""))
            self.note.emit(job, job.note)
        elif kind == "warning":
            _notify.warning(msg["message"])
        elif kind == "stage_done":
            job.results[msg["stage"]] = msg["result"]
            self.stage_done.emit(job, msg["stage"], msg["result"])
        elif kind == "done":
            job.results.update(msg.get("results", {}))
            self._finish("done", f"{job.label}: finished")
            return True
        elif kind == "cancelled":
            self._finish("cancelled", msg["message"])
            return True
        elif kind == "error":
            if not msg.get("user") and msg.get("traceback"):
                print(msg["traceback"], file=sys.stderr)
                self._finish("error", f"{job.label} failed: {msg['message']} (details in the "
                                      "terminal)")
            else:
                self._finish("error", msg["message"])
            return True
        return False

    def _update_pbar(self, msg: dict[str, Any]) -> None:
        from napari.utils import progress as napari_progress

        stage, total, step = str(msg.get("stage", "")), int(msg.get("total") or 0), int(
            msg.get("step") or 0)
        if self._pbar is None or stage != self._pbar_stage:
            self._close_pbar()
            self._pbar = napari_progress(total=total, desc=f"TS-KD {stage}")
            self._pbar_stage = stage
        if total and self._pbar.total != total:
            self._pbar.total = total
        if step > self._pbar.n:
            self._pbar.update(step - self._pbar.n)

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _finish(self, status: str, message: str) -> None:
        job = self._job
        if job is None:
            return
        job.status, job.message = status, message
        if job.cancel_requested_at is not None:
            job.stop_seconds = time.monotonic() - job.cancel_requested_at
        self._close_pbar()
        self._job = None
        proc, self._proc = self._proc, None
        if proc is not None:
            job.exitcode = proc.exitcode
            self._zombies.append(proc)  # it sent its last message; reaped by the timer
        if self._queue is not None:
            self._queue.close()
        self._queue = self._event = None
        if status == "done" or status == "cancelled":
            _notify.info(message)
        else:
            _notify.error(message)
        self.finished.emit(job)
