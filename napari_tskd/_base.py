"""The shape every stage widget shares: a form (magicgui Container), a run-folder line and,
for training stages, a job panel. Subclasses only add fields and say what their button runs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, SpinBox
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_tskd import _notify, _own_layers
from napari_tskd._context import RunContext, context_for
from napari_tskd._job_panel import JobPanel
from napari_tskd._jobs import Job
from napari_tskd._layers import unwrap
from napari_tskd._torch_guard import prepare_torch_import

if TYPE_CHECKING:
    import napari.viewer


DEVICES = ["auto", "cpu", "cuda", "mps"]


PREVIEW_IMAGE, PREVIEW_LABELS = _own_layers.PREVIEW_IMAGE, _own_layers.PREVIEW_LABELS


class StageWidget(QWidget):
    """Base class: ``self.form`` holds the fields, ``self.panel`` the job display (optional)."""

    has_jobs = True

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
        if self.has_jobs:
            self.panel = JobPanel(
                self.context.runner, self, on_finished=self.on_job_finished,
                on_busy=self.set_busy, on_preview=self.show_preview,
            )
            self._layout.addWidget(self.panel)
        self._layout.addStretch(1)
        self.context.run_dir_changed.connect(self._show_run_dir)
        self._show_run_dir()
        self._connections: list[tuple[Any, Any]] = []
        connections = self._connections  # not self: the slot must not keep the widget alive
        self.destroyed.connect(lambda *_: _disconnect_all(connections))

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
        for button in self.job_buttons():
            button.enabled = not busy

    def _show_run_dir(self, *_: Any) -> None:
        self.run_label.setText(f"Run folder: {self.context.run_dir}")
        self.on_run_dir_changed()

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
                "then Use this data) or tick 'replace a different run' in the Data widget"
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
