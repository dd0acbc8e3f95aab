"""The shape every stage widget shares: a form (magicgui Container), a run-folder line and,
for training stages, a job panel. Subclasses only add fields and say what their button runs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, SpinBox
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_tskd import _notify, _own_layers
from napari_tskd._context import RunContext, context_for
from napari_tskd._forms import hold_fields
from napari_tskd._job_panel import JobPanel
from napari_tskd._jobs import Job
from napari_tskd._layers import unwrap
from napari_tskd._torch_guard import prepare_torch_import

if TYPE_CHECKING:
    import napari.viewer


DEVICES = ["auto", "cpu", "cuda", "mps"]


PREVIEW_IMAGE, PREVIEW_LABELS = _own_layers.PREVIEW_IMAGE, _own_layers.PREVIEW_LABELS


class _AfterInit(type(QWidget)):  # type: ignore[misc]
    """Calls ``_after_init`` once the most derived ``__init__`` has returned."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        obj._after_init()
        return obj


class StageWidget(QWidget, metaclass=_AfterInit):
    """Base class: ``self.form`` holds the fields, ``self.panel`` the job display (optional).

    The panel attaches to a job in progress and shows the run folder's state of ``stages`` only
    once the subclass has built its fields and buttons (``_after_init``): a widget opened while
    a job runs must find its buttons to disable.
    """

    has_jobs = True
    stages: tuple[str, ...] = ()  # Stage.name of the stages this widget trains (run state, Resume)

    def __init__(
        self, napari_viewer: napari.viewer.Viewer | None = None, context: RunContext | None = None
    ) -> None:
        super().__init__()
        prepare_torch_import()  # before any torch import in this (OpenGL) process
        self.viewer = unwrap(napari_viewer)
        self.context = context or context_for(self.viewer)
        self.context.attach(self)
        self.form = Container(labels=True)
        self.run_label = QLabel()
        self.run_label.setWordWrap(True)
        self._layout = QVBoxLayout(self)
        self._layout.addWidget(self.run_label)
        self._layout.addWidget(self.form.native)
        self.panel: JobPanel | None = None
        self._ready = False
        if self.has_jobs:
            self.panel = JobPanel(
                self.context.runner, self, on_finished=self.on_job_finished,
                on_busy=self.set_busy, on_preview=self.show_preview, auto_attach=False,
            )
            self.panel.disk_job = self.resume_from_run
            self._layout.addWidget(self.panel)
        self._layout.addStretch(1)
        self._connections: list[tuple[Any, Any]] = []
        connections = self._connections  # not self: the slot must not keep the widget alive
        self.destroyed.connect(lambda *_: _disconnect_all(connections))
        # Qt signals: Qt drops the connection when this widget is destroyed (no _connections:
        # disconnecting from an already deleted context at exit crashed the interpreter)
        self.context.run_dir_changed.connect(self._show_run_dir)
        self._show_run_dir()

    def _after_init(self) -> None:
        """The widget is complete: attach to a running job and show the run folder's state."""
        self._ready = True
        if self.panel is not None:
            self.panel.attach()
            self.context.runner.finished.connect(self.refresh_run_state)
            self.refresh_run_state()

    def connect_event(self, emitter: Any, callback: Any) -> None:
        """Connect a napari event; disconnected when this widget is destroyed."""
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    # -- hooks for subclasses ---------------------------------------------------------------
    def job_buttons(self) -> list[Any]:
        """magicgui buttons disabled while a training job runs."""
        return []

    def on_job_finished(self, job: Job) -> None:
        """Called when a job this widget started ended (any status)."""

    # -- shared behaviour -----------------------------------------------------------------
    def reset_choices(self, *_: Any) -> None:
        """napari calls this when layers change: refresh the layer drop-downs."""
        self.form.reset_choices()

    def set_busy(self, busy: bool) -> None:
        """Buttons off while a job runs; so are the fields a stage tab binds to the run's config
        (``self.bound``), so its settings cannot change under the job (progress matches the form).

        Args:
            busy: a training job runs.
        """
        for button in self.job_buttons():
            button.enabled = not busy
        hold_fields(getattr(self, "bound", []), busy)  # called during __init__ too

    def _show_run_dir(self, *_: Any) -> None:
        self.run_label.setText(f"Run folder: {self.context.run_dir}")
        if self._ready:
            if self.panel is not None and not self.context.runner.running:
                self.panel.last_job = None  # Resume continues this run's checkpoints, not another's
            self.on_run_dir_changed()
            self.refresh_run_state()

    def refresh_run_state(self, *_: Any) -> None:
        """Show each of ``stages`` as the run folder has it; Resume where a checkpoint is.

        Args:
            *_: a finished ``Job`` when called by ``JobRunner.finished`` (ignored).
        """
        from napari_tskd._run_state import stage_states

        if self.panel is None or self.context.runner.running:
            return
        try:
            states = stage_states(self.context.run_dir, self.stages)
        except Exception:  # an unreadable run folder is reported when a stage starts
            return
        self.panel.show_run_state(states, self.resume_steps(states))
        self.show_results(states)

    def show_results(self, states: list[Any]) -> None:
        """Show what the run folder records of ``stages`` (a tab's result line): after any job
        and when a run is opened or reopened. Tabs without a result line ignore it.

        Args:
            states: ``StageState`` of ``stages``, in order.
        """

    def resume_steps(self, states: list[Any]) -> list[dict[str, Any]]:
        """The job steps Resume starts for a run reopened with checkpoints (see ``_run_state``).

        Args:
            states: ``StageState`` of ``stages``, in order.

        Returns:
            The steps; [] when nothing can be resumed.
        """
        from napari_tskd._run_state import resume_steps

        return resume_steps(states)

    def resume_from_run(self, steps: list[dict[str, Any]]) -> Job | None:
        """Start ``steps`` (with ``resume``) on the open run's ``config.yaml``.

        Args:
            steps: job steps, e.g. ``[{"target": "teacher", "kwargs": {"resume": True}}]``.

        Returns:
            The job, or None when it could not start (a notification says why).
        """
        from tskd.errors import TskdError
        from tskd.pipeline.registry import stage

        try:
            cfg = self.context.config()
        except TskdError as exc:
            _notify.user_error(exc)
            return None
        names = [s["target"] for s in steps]
        titles = [stage(n).title if n != "pipeline" else "Train (all stages)" for n in names]
        return self.start(" + ".join(titles), steps, cfg)

    def on_run_dir_changed(self) -> None:
        """Called when another run folder is opened."""

    def show_preview(self, preview: dict[str, Any], stage: str) -> None:
        """The training model's current prediction as the plugin's own two layers, beside the
        user's data, never selected (``napari_tskd._own_layers.show_preview``)."""
        _own_layers.show_preview(self.viewer, preview, stage)

    def start(self, label: str, steps: list[dict[str, Any]], cfg: Any) -> Job | None:
        """Start a training job; user-fixable problems become a notification, never a raise."""
        from tskd.errors import RunFolderError, TskdError

        try:
            return self.context.start_job(label, steps, cfg, owner=self)
        except RunFolderError as exc:
            _notify.error(
                f"{str(exc).split(';')[0]}: the data, image size or teacher model/checkpoint "
                "differ from this run's; open a new run folder (Settings > New run folder, "
                "then Use this data) or tick 'replace a different run in this folder' in the "
                "Data tab"
            )
        except TskdError as exc:
            _notify.user_error(exc)
        except (OSError, RuntimeError) as exc:
            _notify.error(f"{label}: {exc}")
        return None


def wrapped_label(value: str = "") -> Label:
    """A read-only text line that wraps instead of widening the dock."""
    label = Label(value=value)
    label.native.setWordWrap(True)
    return label


def _disconnect_all(connections: list[tuple[Any, Any]]) -> None:
    for emitter, callback in connections:
        with contextlib.suppress(RuntimeError, ValueError, TypeError):
            emitter.disconnect(callback)
    connections.clear()


def parse_float(text: str, name: str, low: float = 0.0, high: float = float("inf")) -> float:
    """A number typed into a text field, or ``TskdInputError`` naming the field."""
    from tskd.errors import TskdInputError

    try:
        value = float(str(text).strip())
    except ValueError:
        raise TskdInputError(f"{name} must be a number, got '{text}'") from None
    if not low < value <= high:
        raise TskdInputError(f"{name} must be in ({low:g}, {high:g}], got {value:g}")
    return value


def steps_box(label: str) -> SpinBox:
    """A 'max steps' field: a stage's optimiser-step budget, 0 for no limit."""
    return SpinBox(label=label, tooltip="0: no limit (all epochs)", min=0, max=10_000_000, value=0)


def budget(value: int) -> int | None:
    """0 in a 'max steps' field means no limit."""
    return int(value) or None
