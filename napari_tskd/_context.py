"""What the widgets docked in one viewer share: the run folder, its config and one job runner.

Not a global singleton: there is one ``RunContext`` per viewer (a weak mapping, so a closed viewer
takes its context with it). The run's truth stays on disk (``run/config.yaml``, the stage
artefacts), so the CLI and the widgets always agree; the context only remembers which run folder
is open and keeps one training process at a time.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Signal

from napari_tskd._jobs import Job, JobRunner
from napari_tskd._models import ModelCache
from napari_tskd._run_config import ConfigEdits
from napari_tskd._settings import Settings, load_settings, save_settings

if TYPE_CHECKING:
    from tskd.config import RunConfig

_CONTEXTS: weakref.WeakKeyDictionary[Any, RunContext] = weakref.WeakKeyDictionary()


class RunContext(QObject):
    """The open run folder, the settings and the job runner of one viewer."""

    run_dir_changed = Signal(str)
    settings_changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings: Settings = load_settings()
        self.runner = JobRunner(self)
        self.models = ModelCache()  # Segment and Loop share the loaded model
        self.edits = ConfigEdits()  # what the user changed in the tabs (_run_config.py)
        self._widgets = 0

    # -- run folder and config ------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.settings.run_dir).expanduser()

    def set_run_dir(self, path: str | Path) -> None:
        """Open another run folder (remembered across restarts)."""
        path = str(Path(path).expanduser())
        if path == self.settings.run_dir:
            return
        self.settings.run_dir = path
        save_settings(self.settings)
        self.edits.clear()  # the tabs show the other run's config
        self.run_dir_changed.emit(path)

    def update_settings(self, **changes: str) -> None:
        """Change settings fields, write them to disk and tell the widgets."""
        run_dir = self.settings.run_dir
        for key, value in changes.items():
            setattr(self.settings, key, value)
        save_settings(self.settings)
        self.settings_changed.emit()
        if self.settings.run_dir != run_dir:
            self.edits.clear()
            self.run_dir_changed.emit(self.settings.run_dir)

    def config(self) -> RunConfig:
        """The run's config as the tabs show it: ``config.yaml`` (the defaults when the folder
        holds no run) with the user's changes in the tabs (``self.edits``)."""
        from tskd.config import RunConfig, load_config

        path = self.paths().config
        cfg = load_config(path) if path.is_file() else RunConfig()
        cfg.run_dir = str(self.run_dir)
        if not path.is_file():
            cfg.device = self.settings.device  # the run's device (a stage may set its own)
        return self.edits.apply(cfg)

    def paths(self) -> Any:
        """``tskd.pipeline.run_folder.RunPaths`` of the open run folder."""
        from tskd.pipeline.run_folder import RunPaths

        return RunPaths(self.run_dir)

    # -- jobs -----------------------------------------------------------------------------
    def start_job(
        self, label: str, steps: list[dict[str, Any]], cfg: RunConfig, owner: Any,
        prepare: bool = True,
    ) -> Job:
        """Write ``config.yaml`` (refusing another run's folder) and start the job's process.

        Raises ``TskdError`` (the caller shows it) before any process starts.
        """
        from tskd.config import to_dict
        from tskd.pipeline.run_folder import prepare_run_dir

        if self.runner.running:
            from tskd.errors import TskdError

            raise TskdError(f"'{self.runner.job.label}' is still running; cancel it or wait")
        self.edits.check()  # a field showing an unusable value: refused, nothing started
        if prepare:
            prepare_run_dir(cfg)
        env = {"TSKD_CACHE_DIR": self.settings.cache_dir, **child_env()}
        return self.runner.start(Job(label, steps, to_dict(cfg), owner=owner, env=env))

    # -- lifetime -------------------------------------------------------------------------
    def attach(self, widget: QObject) -> None:
        """Count a widget. Closing a widget (or the whole dock) leaves a job running: the
        dock opened again re-attaches to it; only the viewer closing stops it (``watch``)."""
        self._widgets += 1

    def watch(self, viewer: Any) -> None:
        """Cancel a running job, with a checkpoint, when ``viewer``'s window closes.

        Args:
            viewer: a napari viewer; its Qt main window is deleted when it closes (napari sets
                ``WA_DeleteOnClose``), and the application quitting ends every viewer.
        """
        from qtpy.QtWidgets import QApplication

        window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        if window is not None:
            window.destroyed.connect(lambda *_: self.stop())  # keeps this context to the end
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop)

    def stop(self) -> None:
        """Cancel the running job, if any, and wait for its checkpoint (viewer closing)."""
        with contextlib.suppress(RuntimeError):  # Qt objects already deleted at exit
            self.runner.shutdown()


def child_env() -> dict[str, str]:
    """Environment of a training process: OpenMP threads sleep instead of spinning while they
    wait (unless the user chose otherwise). The child shares the CPU with napari; measured on two
    busy cores, spinning made fine-tuning 2-20x slower (0.16 against 3.2 steps/s at worst)."""
    import os

    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def context_for(viewer: Any) -> RunContext:
    """The context of ``viewer`` (created on first use); a new one when viewer is None."""
    if viewer is None:
        return RunContext()
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands widgets a proxy
    ctx = _CONTEXTS.get(viewer)
    if ctx is None:
        ctx = _CONTEXTS[viewer] = RunContext()
        ctx.watch(viewer)
    return ctx
