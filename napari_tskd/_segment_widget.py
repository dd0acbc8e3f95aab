"""Segment widget: a student or teacher bundle segments an Image layer into a NEW Labels layer.

On a stack the displayed slice is segmented at once; the others follow in a background thread
(nearest to the displayed slice first, so scrolling stays ahead of the user), or only the slices
the user visits ("follow my slice"). "Live" re-segments when the image changes. Slices the user
has painted on are never overwritten; a live update of an edited layer goes to a new layer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton
from qtpy.QtCore import QTimer

from napari_tskd import _layers, _notify
from napari_tskd._base import DEVICES, StageWidget, wrapped_label

PALETTE = ("orange", "cyan", "magenta", "yellow", "lime", "red", "dodgerblue", "violet",
           "springgreen", "white")  # bright on gray images; cycles for more classes
SOURCES = ["run student", "run distilled", "run teacher", "folder"]
STACK_MODES = ["whole stack", "follow my slice", "displayed slice only"]


class Session:
    """One (image layer, prediction layer, model): which slices are done, edited, pending."""

    def __init__(self, image: Any, labels: Any, model: Any) -> None:
        self.image = image
        self.labels = labels
        self.model = model
        self.done: set[int] = set()
        self.edited: set[int] = set()
        self.pending: set[int] = set()
        self.current = 0  # displayed slice, read by the worker to pick what is next
        self.lock = threading.Lock()
        self.worker: Any = None
        self.contrast: tuple[float, float] | None = None

    def next_pending(self) -> int | None:
        """The pending slice nearest to the displayed one (called from the worker thread)."""
        with self.lock:
            if not self.pending:
                return None
            z = min(self.pending, key=lambda i: (abs(i - self.current), i))
            self.pending.discard(z)
            return z

    def segment(self, z: int) -> np.ndarray:
        img = _layers.get_slice(self.image, z)
        return self.model.segmenter.segment(img, is_stack=False, contrast_limits=self.contrast)

    def write(self, z: int, label: np.ndarray) -> bool:
        """Put a prediction into the layer unless the user has painted that slice."""
        if z in self.edited:
            return False
        if _layers.is_stack(self.labels):
            self.labels.data[z] = label
        else:
            self.labels.data[...] = label
        self.done.add(z)
        self.labels.refresh()
        return True

    def stop(self) -> None:
        with self.lock:
            self.pending.clear()
        if self.worker is not None:
            self.worker.quit()
            self.worker = None


class SegmentWidget(StageWidget):
    """Pick a model and an Image layer; press Segment (or let Live do it)."""

    has_jobs = False

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        viewer = lambda: self.viewer  # noqa: E731
        self.source = ComboBox(label="Model", choices=SOURCES, value=SOURCES[0])
        self.folder = FileEdit(label="Model folder", mode="d", nullable=True,
                               tooltip="a student or teacher folder (meta.json + safetensors)")
        self.image = ComboBox(label="Image layer", choices=_layers.choices(viewer, "image"))
        self.stack_mode = ComboBox(label="On a stack", choices=STACK_MODES,
                                   value=STACK_MODES[0])
        self.live = CheckBox(text="live: re-segment when the image changes", value=False)
        self.device = ComboBox(label="Device", choices=DEVICES, value=self.context.settings.device)
        self.segment_button = PushButton(text="Segment")
        self.status = wrapped_label("")
        self.form.extend([self.source, self.folder, self.image, self.stack_mode, self.live,
                          self.device, self.segment_button, self.status])
        self.session: Session | None = None
        self.last_ms: float | None = None
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(300)
        self._live_timer.timeout.connect(self._live_update)
        self.source.changed.connect(self._show_source)
        self.segment_button.changed.connect(self.segment)
        self.live.changed.connect(self._connect_live)
        self.image.changed.connect(self._connect_live)
        if self.viewer is not None:
            self.connect_event(self.viewer.dims.events.current_step, self._on_step)
            self.connect_event(self.viewer.layers.events.removed, self._on_removed)
        self._watched: Any = None
        self._show_source()
        self.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[0]

    def _show_source(self, *_: Any) -> None:
        self.folder.visible = self.source.value == "folder"

    def model_folder(self) -> Path:
        paths = self.context.paths()
        return {
            "run student": paths.student,
            "run distilled": paths.distilled,
            "run teacher": paths.teacher,
        }.get(self.source.value) or Path(self.folder.value or "")

    # -- segmenting -------------------------------------------------------------------------
    def segment(self, *_: Any) -> Any:
        """Segment the displayed slice now, the rest of a stack as the mode says."""
        from tskd.errors import TskdError

        try:
            return self._segment()
        except TskdError as exc:
            _notify.user_error(exc)
        except (OSError, ValueError, RuntimeError) as exc:
            _notify.error(f"segmentation failed: {type(exc).__name__}: {exc}")
        return None

    def _segment(self, new_layer: bool = False) -> Any:
        from napari_tskd._models import set_inference_threads

        image = self.image.value
        _layers.check_layer(image, "image")
        t_load = time.perf_counter()
        model = self.context.models.get(self.model_folder(), self.device.value)
        load_ms = 1000 * (time.perf_counter() - t_load)
        set_inference_threads(self.context.runner.running)
        session = self.session
        if (new_layer or session is None or session.image is not image
                or session.model.folder != model.folder or session.labels not in
                self.viewer.layers or session.model is not model):
            if session is not None:
                session.stop()
            session = self.session = Session(image, self._new_layer(image, model), model)
            session.labels.events.paint.connect(self._on_paint)
        else:
            session.stop()
            session.done.clear()
        session.contrast = (None if image.data.dtype == np.uint8
                            else tuple(float(v) for v in image.contrast_limits))
        z = _layers.current_index(self.viewer, image)
        session.current = z
        t0 = time.perf_counter()
        session.write(z, session.segment(z))
        self.last_ms = 1000 * (time.perf_counter() - t0)
        text = f"{model.name}: slice {z} in {self.last_ms:.0f} ms" if _layers.is_stack(
            image) else f"{model.name}: {self.last_ms:.0f} ms"
        if load_ms > 100:
            text += f" (model loaded in {load_ms / 1000:.1f} s)"
        if _layers.is_stack(image) and self.stack_mode.value == STACK_MODES[0]:
            with session.lock:
                session.pending = set(range(_layers.n_slices(image))) - session.done
            text += f"; {len(session.pending)} more in the background"
            self._start_worker(session)
        self.status.value = text
        return session.labels

    def _new_layer(self, image: Any, model: Any) -> Any:
        from napari.utils.colormaps import DirectLabelColormap

        from napari_tskd._models import label_values

        shape = _layers.spatial_shape(image)
        values = label_values(model.meta)  # the layer holds the user's label values
        top = max(values)
        dtype = np.uint8 if top <= 255 else np.int32 if top < 2**31 else np.int64
        colors = {None: "white", 0: "transparent"} | {
            c: PALETTE[(c - 1) % len(PALETTE)] for c in range(1, 11)} | {
            v: PALETTE[(k - 1) % len(PALETTE)] for k, v in enumerate(values) if k > 0}
        return self.viewer.add_labels(
            np.zeros(shape, dtype=dtype),
            name=f"{model.name} segmentation",
            colormap=DirectLabelColormap(color_dict=colors),
            scale=image.scale,
            translate=image.translate,
            metadata={"tskd": "prediction", "model": str(model.folder), "image": image.name},
        )

    def _start_worker(self, session: Session) -> None:
        """Segment ``session.pending`` in a thread; results are written in the GUI thread."""
        if session.worker is not None:
            return
        from napari.qt.threading import thread_worker

        @thread_worker
        def work() -> Any:
            while True:
                z = session.next_pending()
                if z is None:
                    return
                yield z, session.segment(z)

        worker = work()
        session.worker = worker

        def on_yield(item: tuple[int, np.ndarray]) -> None:
            if self.session is session:
                session.write(*item)

        def on_done() -> None:
            if session.worker is worker:
                session.worker = None
            if self.session is session and session.pending:
                self._start_worker(session)  # slices asked for while it was finishing

        def on_error(exc: Exception) -> None:
            _notify.error(f"background segmentation stopped: {type(exc).__name__}: {exc}")

        worker.yielded.connect(on_yield)
        worker.finished.connect(on_done)
        worker.errored.connect(on_error)
        worker.start()

    def wait(self, timeout: float = 30.0) -> bool:
        """Process events until the background segmentation finished (scripts and tests)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.session
            if s is None or (s.worker is None and not s.pending):
                return True
            QApplication.processEvents()
            time.sleep(0.005)
        return False

    # -- events -----------------------------------------------------------------------------
    def _on_step(self, *_: Any) -> None:
        s = self.session
        if s is None or not _layers.is_stack(s.image) or s.image not in self.viewer.layers:
            return
        z = _layers.current_index(self.viewer, s.image)
        s.current = z
        if self.stack_mode.value == STACK_MODES[1] and z not in s.done | s.edited:
            with s.lock:
                s.pending.add(z)
            self._start_worker(s)

    def _on_paint(self, *_: Any) -> None:
        s = self.session
        if s is not None:
            s.edited.add(_layers.current_index(self.viewer, s.labels))

    def _on_removed(self, event: Any) -> None:
        s = self.session
        if s is not None and event.value in (s.image, s.labels):
            s.stop()
            self.session = None

    def _connect_live(self, *_: Any) -> None:
        if self._watched is not None:
            for name in ("data", "contrast_limits"):
                getattr(self._watched.events, name).disconnect(self._schedule_live)
            self._watched = None
        if self.live.value and self.image.value is not None:
            self._watched = self.image.value
            for name in ("data", "contrast_limits"):
                getattr(self._watched.events, name).connect(self._schedule_live)

    def _schedule_live(self, *_: Any) -> None:
        self._live_timer.start()  # debounced: dragging a contrast slider segments once

    def _live_update(self) -> None:
        s = self.session
        image = self.image.value
        if not self.live.value or image is None:
            return
        edited = s is not None and s.image is image and bool(s.edited)
        from tskd.errors import TskdError

        try:
            self._segment(new_layer=edited)  # never overwrite the user's corrections
        except TskdError as exc:
            _notify.user_error(exc)
