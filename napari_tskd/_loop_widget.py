"""Loop widget: the annotate-train loop. Add a corrected slice to the run's labelled set,
retrain the student from where it stopped, and jump to the slice the student is least sure of.

*Corrected labels* follows the Labels layer the user selects (the one the brush paints in), and
*Image layer* follows the image that labels layer was segmented from (``_layers.provenance``);
*Add* refuses a pair whose shapes or recorded image do not match (``_layers.check_pair``).
Ranking, model loading included, runs in a worker thread."""

from __future__ import annotations

import time
from typing import Any

from magicgui.widgets import ComboBox, PushButton, SpinBox

from napari_tskd import _layers, _notify
from napari_tskd._base import DEVICES, StageWidget, budget, steps_box, wrapped_label
from tskd.data import samples

RANKINGS = ["student uncertainty", "teacher-student disagreement"]
ADD_TEXT = "Add displayed slice to training set"


class LoopWidget(StageWidget):
    """Segment (Segment widget) -> correct -> Add -> Retrain -> Suggest next -> ..."""

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        viewer = lambda: self.viewer  # noqa: E731
        self.image = ComboBox(label="Image layer",
                              choices=_layers.choices(viewer, "image"),
                              tooltip="follows the image the corrected labels were made from")
        self.labels = ComboBox(label="Corrected labels",
                               choices=_layers.choices(viewer, "labels"),
                               tooltip="follows the Labels layer you select to paint in")
        self.add_button = PushButton(text=ADD_TEXT)
        self.epochs = SpinBox(label="Retrain epochs", min=1, max=10000, value=10)
        self.max_steps = steps_box("Retrain max steps")
        self.retrain_button = PushButton(text="Retrain student")
        self.device = ComboBox(label="Device", choices=DEVICES, value=self.context.settings.device)
        self.rank_by = ComboBox(label="Rank by", choices=RANKINGS, value=RANKINGS[0],
                                tooltip="uncertainty: the student alone; disagreement: "
                                "1 - Dice between the run's teacher and student")
        self.suggest_button = PushButton(text="Suggest next slice")
        self.status = wrapped_label("")
        self.form.extend([self.image, self.labels, self.add_button, self.epochs, self.max_steps,
                          self.retrain_button, self.device, self.rank_by, self.suggest_button,
                          self.status])
        self.add_button.changed.connect(self.add_slice)
        self.retrain_button.changed.connect(self.retrain)
        self.suggest_button.changed.connect(self.suggest)
        self._worker: Any = None
        self.suggestion: tuple[Any, int, float] | None = None  # (layer, slice, score)
        self.labels.changed.connect(self._follow_source)
        if self.viewer is not None:
            self.connect_event(self.viewer.layers.selection.events.active, self._follow_active)
        self.reset_choices()
        self._follow_active()

    def job_buttons(self) -> list[Any]:
        return [self.retrain_button]

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[0]
        predictions = [layer for layer in _layers.layers_of(self.viewer, "labels")
                       if layer.metadata.get("tskd") == "prediction"]
        if self.labels.value is None and predictions:
            self.labels.value = predictions[-1]  # the latest prediction is what one corrects
        elif self.labels.value is None and self.labels.choices:
            self.labels.value = self.labels.choices[0]

    def _follow_active(self, *_: Any) -> None:
        """The Labels layer the user selects (to paint in) becomes *Corrected labels*."""
        import napari.layers

        layer = self.viewer.layers.selection.active if self.viewer is not None else None
        if not isinstance(layer, napari.layers.Labels) or _layers.is_plugin_layer(layer):
            return
        if layer not in self.labels.choices:
            self.reset_choices()
        if layer in self.labels.choices and self.labels.value is not layer:
            self.labels.value = layer

    def _follow_source(self, *_: Any) -> None:
        """*Image layer* becomes the image the chosen labels were segmented from (recorded), or
        the one they are named after ('<image> labels')."""
        labels = self.labels.value
        source = _layers.source_layer(self.viewer, labels)
        if source is None and labels is not None and not _layers.recorded_source(labels):
            source = _layers.named_owner(labels, _layers.layers_of(self.viewer, "image"))
        if source is not None and source in self.image.choices:
            self.image.value = source

    # -- add --------------------------------------------------------------------------------
    def add_slice(self, *_: Any) -> Any:
        """Copy the displayed (image, corrected labels) slice into the run's labelled set."""
        from tskd.errors import TskdError

        try:
            return self._add_slice()
        except TskdError as exc:
            _notify.user_error(exc)
        except OSError as exc:
            _notify.error(f"cannot add the slice: {exc}")
        self.status.value = "not added (the message says why)"  # not an earlier slice's line
        return None

    def _add_slice(self) -> Any:
        from napari_tskd._export import add_corrected, corrected_names, correction_name
        from tskd.errors import TskdInputError

        image, labels = self.image.value, self.labels.value
        _layers.check_pair(image, labels, ADD_TEXT, _layers.layers_of(self.viewer, "image"))
        cfg = self.context.config()
        run_dir = self.context.run_dir
        if cfg.data.labelled != str(self.context.paths().data):
            raise TskdInputError(
                f"run folder {run_dir} has no labelled set of its own; press 'Use this data' in "
                "the Data tab first"
            )
        z = _layers.current_index(self.viewer, image)
        base = _layers.safe_name(image.name)
        stack = _layers.is_stack(image)
        name = samples.slice_name(base, z) if stack else base
        source = f"{image.name}#z{z}" if stack else image.name
        wanted = name
        name, replaced = correction_name(name, source, run_dir)
        label = _layers.get_slice(labels, z)
        path = add_corrected(_layers.training_image(image, z), label, name, run_dir, source)
        n = len(corrected_names(run_dir))
        verb = "replaced" if replaced else "added"
        self.status.value = f"{verb} slice {z} of '{image.name}'; {n} correction(s) in the run"
        if name != wanted:
            _notify.warning(
                f"a correction of another layer is already named '{wanted}'; this one of "
                f"'{image.name}' is saved as '{name}' so neither is lost"
            )
        if not label.any():
            _notify.info(f"slice {z} was added with no labels: it teaches 'nothing here'")
        return path

    # -- retrain ----------------------------------------------------------------------------
    def retrain(self, *_: Any) -> None:
        """Fine-tune the run's student further on the labelled set (corrections included)."""
        cfg = self.context.config()
        cfg.student.train.epochs = int(self.epochs.value)
        cfg.student.train.max_steps = budget(self.max_steps.value)
        cfg.set_device(self.device.value)
        self.start("retrain", [{"target": "student", "kwargs": {"continue_from_last": True}}],
                   cfg)

    def on_job_finished(self, job: Any) -> None:
        if job.status == "done":
            self.status.value = "student retrained; Segment again or ask for the next slice"

    # -- suggest ----------------------------------------------------------------------------
    def suggest(self, *_: Any) -> None:
        """Rank the slices (or 2D image layers) not yet labelled and jump to the most useful."""
        from tskd.errors import TskdError

        try:
            self._suggest()
        except TskdError as exc:
            _notify.user_error(exc)

    def _candidates(self) -> list[tuple[Any, int]]:
        """Slices (or 2D layers) not yet in the run's labelled set, from layers or corrections."""
        from napari_tskd._export import correction_sources, labelled_names
        from tskd.errors import TskdInputError

        done = labelled_names(self.context.run_dir)
        sources = correction_sources(self.context.run_dir)
        corrected = set(sources.values())

        def is_done(name: str, source: str) -> bool:  # by provenance where it is recorded
            return source in corrected or (name in done and name not in sources)

        image = self.image.value
        _layers.check_layer(image, "image")
        if _layers.is_plugin_layer(image):
            raise TskdInputError(
                f"'{image.name}' is the plugin's own layer, not your data; choose your image "
                "as 'Image layer' before pressing 'Suggest next slice'")
        if _layers.is_stack(image):
            base = _layers.safe_name(image.name)
            return [(image, z) for z in range(_layers.n_slices(image))
                    if not is_done(samples.slice_name(base, z), f"{image.name}#z{z}")]
        return [(layer, 0) for layer in _layers.user_layers(self.viewer, "image")
                if not _layers.is_stack(layer)
                and not is_done(_layers.safe_name(layer.name), layer.name)]

    def _suggest(self) -> None:
        from napari.qt.threading import thread_worker

        from napari_tskd import _models
        from tskd.errors import TskdInputError

        if self._worker is not None:
            return
        paths = self.context.paths()
        folders = [paths.student] + ([paths.teacher] if self.rank_by.value == RANKINGS[1] else [])
        for folder in folders:
            self.context.models.meta(folder)  # no model: one sentence now, not from the worker
        candidates = self._candidates()
        if not candidates:
            raise TskdInputError("every slice is already in the training set")
        # GUI thread, once; loading and ranking go to the worker
        _models.import_backend(ranking=len(folders) > 1)
        _models.set_inference_threads(self.context.runner.running)
        views = [(_layers.snapshot(layer), z) for layer, z in candidates]
        device, cache = str(self.device.value), self.context.models
        self.status.value = f"ranking {len(views)} image(s) ..."
        t0 = time.perf_counter()

        @thread_worker
        def rank() -> list[tuple[int, float]]:
            from tskd.inference.predict import rank_for_annotation

            models = [cache.get(folder, device).segmenter for folder in folders]
            images = [_layers.training_image(view, z) for view, z in views]
            return rank_for_annotation(models[0], images, models[1] if len(models) > 1 else None)

        worker = rank()
        self._worker = worker

        def on_error(exc: Exception) -> None:
            from tskd.errors import TskdError

            self.status.value = "ranking failed"
            if isinstance(exc, TskdError):
                _notify.user_error(exc)
            else:
                _notify.error(f"ranking failed: {type(exc).__name__}: {exc}")

        def on_finished() -> None:
            self._worker = None

        worker.returned.connect(lambda ranking: self._show_suggestion(candidates, ranking, t0))
        worker.errored.connect(on_error)
        worker.finished.connect(on_finished)
        worker.start()

    def _show_suggestion(self, candidates: list[tuple[Any, int]],
                         ranking: list[tuple[int, float]], t0: float) -> None:
        index, score = ranking[0]
        layer, z = candidates[int(index)]
        if layer not in self.viewer.layers:
            self.status.value = f"'{layer.name}' was closed while ranking; suggest again"
            return
        self.suggestion = (layer, z, float(score))
        self._jump(layer, z)
        where = f"slice {z} of '{layer.name}'" if _layers.is_stack(layer) else f"'{layer.name}'"
        self.status.value = (f"next: {where} (score {float(score):.3g}, ranked in "
                             f"{time.perf_counter() - t0:.1f} s); done")

    def _jump(self, layer: Any, z: int) -> None:
        if _layers.is_stack(layer):
            _layers.jump_to(self.viewer, layer, z)
        else:
            self.viewer.layers.selection.active = layer
            layer.visible = True
            self.image.value = layer

    def wait(self, timeout: float = 30.0) -> bool:
        """Process events until a running ranking finished (scripts and tests)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self._worker is not None and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self._worker is None
