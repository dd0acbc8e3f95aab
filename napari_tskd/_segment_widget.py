"""Segment widget: a student or teacher bundle segments an Image layer into the plugin's
prediction layer for that image and model (made on the first press, updated by later ones).

Nothing slow runs on the event loop: the model is loaded and every slice segmented in a worker
thread, the displayed slice first, then the others nearest to it (so scrolling stays ahead of
the user), or only the slices the user visits ("follow my slice"). "Live" re-segments when the
image changes. Slices the user has painted on are never overwritten; a rewrite of an earlier
prediction is one undo step per slice; the layer records the image it was made from
(``_layers.provenance``), which the Loop tab checks before adding a correction.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton
from qtpy.QtCore import QTimer

from napari_tskd import _layers, _notify, _own_layers
from napari_tskd._base import DEVICES, StageWidget, wrapped_label
from napari_tskd._segment_session import Session, start_worker

PALETTE = ("orange", "cyan", "magenta", "yellow", "lime", "red", "dodgerblue", "violet",
           "springgreen", "white")  # bright on gray images; cycles for more classes
SOURCES = ["run student", "run distilled", "run teacher", "folder"]
STACK_MODES = ["whole stack", "follow my slice", "displayed slice only"]


class SegmentWidget(StageWidget):
    """Pick a model and an Image layer; press Segment (or let Live do it)."""

    has_jobs = False

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        viewer = lambda: self.viewer  # noqa: E731
        self.source = ComboBox(label="Model", choices=SOURCES, value=SOURCES[0])
        self.folder = FileEdit(label="Model folder", mode="d", nullable=True,
                               tooltip="a student or teacher folder (meta.json + safetensors)")
        self.image = ComboBox(label="Image layer",
                              choices=_layers.choices(viewer, "image"))
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
        self._seen: set[int] = set()
        self._show_source()
        self.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer list; a newly opened sample's unlabelled stack is preselected
        (``_sample_data``: layer metadata ``tskd_sample`` "unlabelled")."""
        super().reset_choices()
        images = _layers.layers_of(self.viewer, "image")
        new = [ly for ly in images if id(ly) not in self._seen]
        self._seen = {id(ly) for ly in images}
        sample = [ly for ly in new if ly.metadata.get("tskd_sample") == "unlabelled"]
        if sample and sample[-1] in self.image.choices:
            self.image.value = sample[-1]
        elif self.image.value is None and self.image.choices:
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
        """Segment the displayed slice first, the rest of a stack as the mode says, in a worker
        thread. Returns the prediction layer (filled as results arrive; ``wait`` waits for
        them), or None after a notification."""
        from tskd.errors import TskdError

        try:
            return self._segment()
        except TskdError as exc:
            _notify.user_error(exc)
        except (OSError, ValueError, RuntimeError) as exc:
            _notify.error(f"segmentation failed: {type(exc).__name__}: {exc}")
        return None

    def _segment(self, live: bool = False) -> Any:
        from napari_tskd import _models

        image = self.image.value
        _layers.check_layer(image, "image")
        folder = self.model_folder()
        if _models.import_backend():  # once per session, in the GUI thread (see _models)
            self.status.value = "loaded the model libraries (once per session)"
        meta = self.context.models.meta(folder)
        _models.set_inference_threads(self.context.runner.running)
        # a live update never takes the selection (a new layer would): the brush stays put
        with _own_layers.keep_selection(self.viewer) if live else contextlib.nullcontext():
            session = self._session_for(image, folder, meta)
        session.contrast = (None if image.data.dtype == np.uint8
                            else tuple(float(v) for v in image.contrast_limits))
        z = _layers.current_index(self.viewer, image)
        whole = _layers.is_stack(image) and self.stack_mode.value == STACK_MODES[0]
        wanted = set(range(_layers.n_slices(image))) if whole else {z}
        with session.lock:
            session.current = z
            session.pending = wanted - session.edited
            session.asked = len(session.pending)
        session.done.clear()
        session.undoable = bool(session.labels.data.any())
        session.model = None  # the worker loads it (cached; reloaded when retrained)
        session.failed = False
        session.started = time.perf_counter()
        if not live:  # the user pressed Segment: the result is what they correct next
            image.visible = session.labels.visible = True
            self.viewer.layers.selection.active = session.labels
        self.status.value = f"{_models.bundle_name(folder)}: segmenting ..."
        self._start_worker(session)
        return session.labels

    def _session_for(self, image: Any, folder: Path, meta: dict[str, Any]) -> Session:
        """This press's session: the current one, or one on the image's existing prediction
        layer of this model (older duplicates hidden), or one on a new layer."""
        s = self.session
        device = str(self.device.value)
        if s is not None:
            s.stop()
        if (s is not None and s.image is image and s.folder == folder
                and s.labels in self.viewer.layers and self._still_fits(s.labels, image)):
            s.device = device
            s.labels.metadata.update(_layers.provenance(image))
            return s
        labels = self._existing_layer(image, folder)
        created = labels is None
        if labels is None:
            labels = self._new_layer(image, folder, meta)
        labels.metadata.update(_layers.provenance(image))
        session = self.session = Session(image, labels, folder, device)
        session.created = created
        self.connect_event(labels.events.paint, self._on_paint)
        return session

    def _still_fits(self, labels: Any, image: Any) -> bool:
        """A prediction layer may be rewritten for ``image`` unless the image's pixels changed
        under slices the user corrected (those corrections belong to the old pixels)."""
        if not labels.metadata.get("edited"):
            return True
        return labels.metadata.get("image_id") == _layers.fingerprint(image)

    def _existing_layer(self, image: Any, folder: Path) -> Any:
        """The newest prediction layer of ``folder``'s model made from ``image``; the older
        ones of that pair are hidden (they pile up no more)."""
        mine = [ly for ly in _layers.layers_of(self.viewer, "labels")
                if ly.metadata.get("tskd") == "prediction"
                and ly.metadata.get("model") == str(folder)
                and _layers.spatial_shape(ly) == _layers.spatial_shape(image)
                and _layers.source_layer(self.viewer, ly) is image]
        usable = [ly for ly in mine if self._still_fits(ly, image)]
        for layer in mine:
            if usable and layer is not usable[-1]:
                layer.visible = False
        return usable[-1] if usable else None

    def _new_layer(self, image: Any, folder: Path, meta: dict[str, Any]) -> Any:
        from napari.utils.colormaps import DirectLabelColormap

        from napari_tskd._models import bundle_name, label_values

        for layer in _layers.layers_of(self.viewer, "labels"):  # an older result: out of sight
            if layer.metadata.get("tskd") == "prediction" and \
                    layer.metadata.get("image") == image.name:
                layer.visible = False
        values = label_values(meta)  # the layer holds the user's label values
        top = max(values)
        dtype = np.uint8 if top <= 255 else np.int32 if top < 2**31 else np.int64
        colors = {None: "white", 0: "transparent"} | {
            c: PALETTE[(c - 1) % len(PALETTE)] for c in range(1, 11)} | {
            v: PALETTE[(k - 1) % len(PALETTE)] for k, v in enumerate(values) if k > 0}
        return self.viewer.add_labels(
            np.zeros(_layers.spatial_shape(image), dtype=dtype),
            name=f"{bundle_name(folder)} segmentation",
            colormap=DirectLabelColormap(color_dict=colors),
            scale=image.scale,
            translate=image.translate,
            metadata={"tskd": "prediction", "model": str(folder), **_layers.provenance(image)},
        )

    def _start_worker(self, session: Session) -> None:
        """Load the model and segment ``session.pending`` off the event loop."""

        def on_model(model: Any) -> None:
            if session.load_s > 0.1:
                self.status.value = f"{model.name}: model loaded in {session.load_s:.1f} s"

        def on_slice(z: int, label: np.ndarray, ms: float) -> None:
            if self.session is session and session.labels in self.viewer.layers:
                session.write(z, label)
                self.last_ms = self.last_ms if len(session.done) > 1 else ms
                self._report(session)

        def on_error(exc: Exception) -> None:
            from tskd.errors import TskdError

            self.status.value = "segmentation failed"
            session.failed = True
            if session.created and not session.done and session.labels in self.viewer.layers:
                self.viewer.layers.remove(session.labels)  # no empty layer left behind
            if isinstance(exc, TskdError):
                _notify.user_error(exc)
            else:
                _notify.error(f"segmentation failed: {type(exc).__name__}: {exc}")

        def on_done() -> None:
            if self.session is not session or session.worker is not None:
                return
            if session.pending:
                self._start_worker(session)  # slices asked for while it was finishing
            elif not session.failed:
                self._report(session, final=True)

        start_worker(session, self.context.models, on_model, on_slice, on_error, on_done)

    def _report(self, session: Session, final: bool = False) -> None:
        """'run1/student: slice 4 in 28 ms; 3 of 8 slices', at the end '8 slice(s) in 1.3 s;
        done' (the painted slices it kept named)."""
        name = session.model.name if session.model is not None else "model"
        first = f"{self.last_ms or 0:.0f} ms"
        if _layers.is_stack(session.image) and session.done:
            first = f"slice {min(session.done, key=lambda i: abs(i - session.current))} in {first}"
        if not final:
            self.status.value = f"{name}: {first}; {len(session.done)} of {session.asked} slices"
            return
        took = time.perf_counter() - session.started
        what = f"{len(session.done)} slice(s) in {took:.1f} s" if (
            session.asked != 1 or _layers.is_stack(session.image)) else first
        kept = f"; {len(session.edited)} slice(s) you painted kept" if session.edited else ""
        self.status.value = f"{name}: {what}{kept}; done"

    def wait(self, timeout: float = 30.0) -> bool:
        """Process events until the segmentation finished (scripts and tests)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.session
            if s is None or (s.worker is None and not s.pending):
                QApplication.processEvents()
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
                s.asked += 1
            self._start_worker(s)

    def _on_paint(self, event: Any = None) -> None:
        s = self.session
        source = getattr(event, "source", None)
        if s is not None and not s.writing and (source is None or source is s.labels):
            s.mark_edited(_layers.current_index(self.viewer, s.labels))

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
        if not self.live.value or self.image.value is None:
            return
        from tskd.errors import TskdError

        try:
            self._segment(live=True)  # corrections stay: see _still_fits
        except TskdError as exc:
            _notify.user_error(exc)
