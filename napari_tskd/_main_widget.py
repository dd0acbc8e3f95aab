"""The "TS-KD" widget: every stage as a tab of one dock, sharing the viewer's run context."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from napari_tskd._context import context_for
from napari_tskd._data_widget import DataWidget
from napari_tskd._layers import unwrap
from napari_tskd._loop_widget import LoopWidget
from napari_tskd._segment_widget import SegmentWidget
from napari_tskd._settings_widget import SettingsWidget
from napari_tskd._student_widget import StudentWidget
from napari_tskd._teacher_widget import TeacherWidget
from napari_tskd._transfer_widget import TransferWidget
from tskd.pipeline.registry import stage

# the stage tabs carry the stages' titles (tskd.pipeline.registry); Student holds the student's
# two stages, distillation and fine-tuning
TABS = (
    ("Data", DataWidget),
    (stage("teacher").title, TeacherWidget),
    (stage("synthesize").title, TransferWidget),
    (stage("student").title, StudentWidget),
    ("Segment", SegmentWidget),
    ("Loop", LoopWidget),
    ("Settings", SettingsWidget),
)


class MainWidget(QWidget):
    """One dock with a tab per stage; the same widgets as the separate manifest widgets."""

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.context = context = context_for(self.viewer)
        self.tabs = readable_tabs()
        self.stages: dict[str, Any] = {}
        for title, cls in TABS:
            widget = cls(self.viewer, context=context)
            self.stages[title] = widget
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(widget)
            self.tabs.addTab(scroll, title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.loading = QLabel("")  # the backend's one import, once, when the dock opens
        self.loading.setWordWrap(True)
        layout.addWidget(self.loading)
        layout.addWidget(self.tabs)
        self.backend_ready = False
        if not _backend_imported():
            self.loading.setText("loading the segmentation backend ... (once per session)")
        QTimer.singleShot(50, self._import_backend)

    def _import_backend(self) -> None:
        """Import what Segment and Suggest need now (seconds, once per process), so that no
        button press pays it; the note above the tabs says so meanwhile."""
        from napari_tskd._models import import_backend

        try:
            import_backend(ranking=True)
        finally:
            self.backend_ready = True
            self.loading.setText("")
            self.loading.hide()

    def reset_choices(self, *_: Any) -> None:
        for widget in self.stages.values():
            widget.reset_choices()


def _backend_imported() -> bool:
    import sys

    from napari_tskd._models import BACKEND_MODULES, RANKING_MODULES

    return all(name in sys.modules for name in BACKEND_MODULES + RANKING_MODULES)


def readable_tabs() -> QTabWidget:
    """A tab widget whose titles are never cut ("Se..."): at the dock's default width the bar
    scrolls (arrow buttons) instead of eliding the titles."""
    tabs = QTabWidget()
    bar = tabs.tabBar()
    bar.setElideMode(Qt.TextElideMode.ElideNone)
    bar.setUsesScrollButtons(True)
    bar.setExpanding(False)
    tabs.setElideMode(Qt.TextElideMode.ElideNone)
    tabs.setUsesScrollButtons(True)
    return tabs
