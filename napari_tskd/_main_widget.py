"""The "TS-KD" widget: every stage as a tab of one dock, sharing the viewer's run context."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

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
        layout.addWidget(self.tabs)

    def reset_choices(self, *_: Any) -> None:
        for widget in self.stages.values():
            widget.reset_choices()


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
