"""One segmentation of one Image layer into one prediction layer, and the worker thread that
runs it: the model is loaded and every slice segmented off the event loop; results are written
into the layer in the GUI thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_tskd import _layers


class Session:
    """(image layer, prediction layer, model folder): which slices are done, edited, pending.

    ``generation`` counts the Segment presses on this session: a result of an earlier press
    that arrives late is dropped, never written over a newer one.
    """

    def __init__(self, image: Any, labels: Any, folder: Path, device: str) -> None:
        self.image = image
        self.labels = labels
        self.folder = folder
        self.device = device
        self.model: Any = None  # napari_tskd._models.LoadedModel, set by the worker
        self.done: set[int] = set()
        self.edited: set[int] = {int(z) for z in labels.metadata.get("edited", [])}
        self.pending: set[int] = set()
        self.asked = 0  # slices asked for by the last press
        self.current = 0  # displayed slice, read by the worker to pick what is next
        self.lock = threading.Lock()
        self.worker: Any = None
        self.contrast: tuple[float, float] | None = None
        self.generation = 0
        self.undoable = False  # the layer held a prediction: rewrites go to napari's undo
        self.writing = False  # our own writes raise paint events too; they are not edits
        self.started = time.perf_counter()
        self.load_s = 0.0
        self.failed = False  # the last press ended in an error (notified)
        self.created = False  # this session made its layer (removed again if nothing came)

    def next_pending(self, generation: int) -> int | None:
        """The pending slice nearest to the displayed one (called from the worker thread);
        None when none is left or a newer press took over."""
        with self.lock:
            if not self.pending or generation != self.generation:
                return None
            z = min(self.pending, key=lambda i: (abs(i - self.current), i))
            self.pending.discard(z)
            return z

    def segment(self, z: int) -> np.ndarray:
        img = _layers.get_slice(self.image, z)
        return self.model.segmenter.segment(img, is_stack=False, contrast_limits=self.contrast)

    def write(self, z: int, label: np.ndarray) -> bool:
        """Put a prediction into the layer unless the user has painted that slice (GUI thread).

        A slice that held an earlier prediction is rewritten through ``Labels.data_setitem``,
        one undo step per slice (napari's Ctrl+Z on the layer brings the older result back).
        """
        if z in self.edited:
            return False
        layer = self.labels
        stack = _layers.is_stack(layer)
        old = np.asarray(layer.data[z] if stack else layer.data)
        changed = old != label
        if self.undoable and changed.any():
            index = np.nonzero(changed)
            if stack:
                index = (np.full(index[0].shape, z),) + index
            self.writing = True
            try:
                with layer.block_history():
                    layer.data_setitem(index, label[changed].astype(layer.data.dtype))
            finally:
                self.writing = False
        elif changed.any():
            if stack:
                layer.data[z] = label
            else:
                layer.data[...] = label
            layer.refresh()
        self.done.add(z)
        return True

    def mark_edited(self, z: int) -> None:
        self.edited.add(z)
        self.labels.metadata["edited"] = sorted(self.edited)

    def stop(self) -> None:
        with self.lock:
            self.pending.clear()
            self.generation += 1
        if self.worker is not None:
            self.worker.quit()
            self.worker = None


def start_worker(session: Session, models: Any, on_model: Callable[[Any], None],
                 on_slice: Callable[[int, np.ndarray, float], None],
                 on_error: Callable[[Exception], None], on_done: Callable[[], None]) -> None:
    """Load the model (``models.get``, cached) and segment ``session.pending`` in a thread.

    Args:
        session: the session; its ``generation`` at the call tags every result.
        models: a ``napari_tskd._models.ModelCache``.
        on_model: called in the GUI thread with the loaded model, before any slice.
        on_slice: called in the GUI thread with (slice, labels, milliseconds) of this press.
        on_error: called in the GUI thread when loading or segmenting raised.
        on_done: called in the GUI thread when the worker ended (any way).
    """
    if session.worker is not None:
        return
    from napari.qt.threading import thread_worker

    generation = session.generation

    @thread_worker
    def work() -> Any:
        if session.model is None:
            t0 = time.perf_counter()
            session.model = models.get(session.folder, session.device)
            session.load_s = time.perf_counter() - t0
            yield generation, "model", session.model, 0.0
        while True:
            z = session.next_pending(generation)
            if z is None:
                return
            t0 = time.perf_counter()
            label = session.segment(z)
            yield generation, z, label, 1000 * (time.perf_counter() - t0)

    worker = work()
    session.worker = worker

    def yielded(item: tuple[int, Any, Any, float]) -> None:
        gen, what, value, ms = item
        if gen != session.generation:
            return  # a newer press took over
        if what == "model":
            on_model(value)
        else:
            on_slice(int(what), value, ms)

    def finished() -> None:
        if session.worker is worker:
            session.worker = None
        on_done()

    def errored(exc: Exception) -> None:
        with session.lock:
            session.pending.clear()
        on_error(exc)

    worker.yielded.connect(yielded)
    worker.finished.connect(finished)
    worker.errored.connect(errored)
    worker.start()
