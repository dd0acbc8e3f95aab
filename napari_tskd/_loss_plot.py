"""A tiny live loss plot drawn with QPainter.

Lighter than a matplotlib canvas: no import cost, and a repaint takes well under a millisecond,
so updating it at 20 Hz never shows up in the viewer's event-loop delay.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

MAX_POINTS = 2000  # older points are thinned out, so long runs stay cheap to draw


class LossPlot(QWidget):
    """Loss against optimiser step for the stage in progress (log scale when it spans >10x)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[tuple[float, float]] = []
        self.title = ""
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setToolTip("training loss per optimiser step")

    def clear(self, title: str = "") -> None:
        self.points = []
        self.title = title
        self.update()

    def add(self, step: float, loss: float) -> None:
        if not math.isfinite(loss):
            return
        self.points.append((float(step), float(loss)))
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]
        self.update()

    def paintEvent(self, event: object) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        rect = self.rect().adjusted(36, 14, -6, -14)
        fg = self.palette().color(self.foregroundRole())
        painter.setPen(QPen(fg, 1))
        painter.drawRect(rect)
        title = self.title or "loss"
        if not self.points:
            painter.drawText(rect, Qt.AlignCenter, f"{title}: no steps yet")
            painter.end()
            return
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        log = min(ys) > 0 and max(ys) / min(ys) > 10
        tr = [math.log10(y) for y in ys] if log else ys
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(tr), max(tr) if max(tr) > min(tr) else min(tr) + 1e-6
        poly = QPolygonF(
            [
                QPointF(
                    rect.left() + (x - x0) / (x1 - x0) * rect.width(),
                    rect.bottom() - (y - y0) / (y1 - y0) * rect.height(),
                )
                for x, y in zip(xs, tr)
            ]
        )
        painter.setPen(QPen(QColor(255, 140, 0), 1.5))
        painter.drawPolyline(poly)
        painter.setPen(QPen(fg, 1))
        small = painter.font()
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.8))
        painter.setFont(small)
        painter.drawText(2, rect.top() + 8, f"{max(ys):.3g}")
        painter.drawText(2, rect.bottom(), f"{min(ys):.3g}")
        scale = " (log)" if log else ""
        painter.drawText(rect.left(), rect.top() - 2,
                         f"{title}{scale}: {ys[-1]:.4g} at step {int(xs[-1])}")
        painter.end()
