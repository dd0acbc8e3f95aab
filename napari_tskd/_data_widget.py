"""Data tab: the labelled set, the unlabelled images and the run folder.

The labelled set comes from Image + Labels layers or a folder, the unlabelled images from more
Image layers and/or a folder; the widget shows counts, classes and the split.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    PushButton,
    RadioButtons,
    Select,
    SpinBox,
)

from napari_tskd import _layers, _notify
from napari_tskd._base import StageWidget, wrapped_label
from napari_tskd._run_config import Field
from napari_tskd._train_plan import TrainPlan
from tskd.config import validation_count


class DataWidget(StageWidget):
    """Choose the data and the run folder; "Use this data" writes them into the run folder."""

    stages = ("teacher", "synthesize", "distill", "student")  # "Train" runs them

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        viewer = lambda: self.viewer  # noqa: E731 (choices are re-read on every reset)
        self.run_dir = FileEdit(label="Run folder", mode="d", value=str(self.context.run_dir))
        self.source = RadioButtons(label="Labelled from", choices=["layers", "folder"],
                                   value="layers", orientation="horizontal")
        self.image = ComboBox(label="Image layer", choices=_layers.choices(viewer, "image"))
        self.labels = ComboBox(label="Labels layer", choices=_layers.choices(viewer, "labels",
                                                                 skip_predictions=True))
        self.labelled_folder = FileEdit(label="Labelled folder", mode="d", nullable=True,
                                        tooltip="images/+labels/ or nnU-Net imagesTr/labelsTr")
        self.unlabelled_layers = Select(label="Unlabelled layers",
                                        choices=_layers.choices(viewer, "image"), value=[])
        self.unlabelled_layers.native.setMaximumHeight(90)
        self.unlabelled_folder = FileEdit(label="Unlabelled folder", mode="d", nullable=True)
        self.image_size = SpinBox(label="Student input size", min=64, max=2048, step=32,
                                  value=256)
        self.val_fraction = FloatSpinBox(label="Validation share", min=0.0, max=0.9, step=0.05,
                                         value=0.2)
        self.overwrite = CheckBox(text="replace a different run in this folder", value=False)
        self.summary = wrapped_label("")
        self.use_button = PushButton(text="Use this data")
        self.run_all_button = PushButton(
            text="Train", tooltip="every stage (teacher, transfer set, distillation, "
            "fine-tuning) in one go, with the settings the tabs show")
        self.form.extend([
            self.run_dir, self.source, self.image, self.labels, self.labelled_folder,
            self.unlabelled_layers, self.unlabelled_folder, self.image_size, self.val_fraction,
            self.overwrite, self.summary, self.use_button, self.run_all_button,
        ])
        for w in (self.source, self.image, self.labels, self.labelled_folder,
                  self.unlabelled_layers, self.unlabelled_folder, self.val_fraction):
            w.changed.connect(self.update_summary)
        self.source.changed.connect(self._show_source)
        self.run_dir.changed.connect(self._open_run)
        self._writer: Any = None  # the thread writing the data, while it runs
        self.use_button.changed.connect(lambda *_: self.use_data(wait=False))
        self.run_all_button.changed.connect(lambda *_: self.run_all(wait=False))
        self.context.edits.bind([Field("data.image_size", self.image_size, int),
                                 Field("data.val_fraction", self.val_fraction, float)], self)
        self.plan = TrainPlan(self)  # preset, time estimate and quality below Train
        self._load_from_run()
        self._show_source()
        self.reset_choices()

    def job_buttons(self) -> list[Any]:
        return [self.use_button, self.run_all_button]

    def on_job_finished(self, job: Any) -> None:
        """A job of a Data tab ended: the quality it reached below *Train*.

        Args:
            job: The ended ``Job``.
        """
        self.plan.finished(job)

    def set_busy(self, busy: bool) -> None:
        """Buttons off while a job runs or the data is being written.

        Args:
            busy: a training job runs.
        """
        super().set_busy(busy or self._writer is not None)

    def resume_steps(self, states: list[Any]) -> list[dict[str, Any]]:
        """Resume of *Train*: the pipeline again, each stage from its checkpoint.

        Args:
            states: ``StageState`` of ``stages``.

        Returns:
            ``[{"target": "pipeline", "kwargs": {"resume": True}}]`` when a stage has a
            checkpoint, else [].
        """
        if any(s.checkpoint is not None for s in states):
            return [{"target": "pipeline", "kwargs": {"resume": True}}]
        return []

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[0]
        if self.labels.value is None and self.labels.choices:
            self.labels.value = self.labels.choices[0]
        self.update_summary()

    def on_run_dir_changed(self) -> None:
        """Another run folder is open (typed here or chosen elsewhere): show its data settings."""
        if not hasattr(self, "run_dir"):
            return
        if Path(self.run_dir.value) != self.context.run_dir:
            self.run_dir.value = str(self.context.run_dir)
        self._load_from_run()

    def _open_run(self, *_: Any) -> None:
        """Another run folder typed or picked: every widget shows that run."""
        if self.run_dir.value and Path(self.run_dir.value) != self.context.run_dir:
            self.context.set_run_dir(self.run_dir.value)

    def _load_from_run(self) -> None:
        """Show the open run's data settings (``config.yaml``); a folder without one keeps
        what the tab shows (a new run takes it)."""
        if not self.context.paths().config.is_file():
            return
        try:
            cfg = self.context.config()
        except Exception:
            return
        with self.context.edits.loading():
            self.image_size.value = cfg.data.image_size
            self.val_fraction.value = cfg.data.val_fraction
        paths = self.context.paths()
        labelled, unlabelled = cfg.data.labelled, cfg.data.unlabelled
        if labelled and Path(labelled) != paths.data:  # the run reads a folder of the user's
            self.source.value = "folder"
            self.labelled_folder.value = labelled
        elif labelled:  # written from layers: choose them again
            self.source.value = "layers"
        own = not unlabelled or Path(unlabelled) == paths.unlabelled
        self.unlabelled_folder.value = None if own else unlabelled

    def _show_source(self, *_: Any) -> None:
        layers = self.source.value == "layers"
        self.image.visible = self.labels.visible = layers
        self.labelled_folder.visible = not layers

    # -- summary ----------------------------------------------------------------------------
    def update_summary(self, *_: Any) -> None:
        """Counts, classes and split of what is chosen, without writing anything."""
        try:
            self.summary.value = self._summary_text()
        except Exception as exc:  # the summary is informative only; "Use" reports errors
            self.summary.value = f"cannot read the data: {exc}"
        if getattr(self, "plan", None) is not None:
            self.plan.data_changed()

    def _summary_text(self) -> str:
        if self.source.value == "layers":
            if self.image.value is None or self.labels.value is None:
                return "choose an Image and a Labels layer (File > Open Sample > napari-tskd)"
            if _layers.spatial_shape(self.image.value) != _layers.spatial_shape(
                self.labels.value
            ):
                return "the Image and Labels layers differ in shape"
            n, classes = _layers.labelled_summary(self.image.value, self.labels.value)
            classes_text = layer_classes_text(self.labels.value.data) if classes else ""
        else:
            if not self.labelled_folder.value:
                return "choose a labelled folder"
            n, classes_text = folder_count(self.labelled_folder.value), ""
        n_unl = self.unlabelled_count()
        n_val = validation_count(n, float(self.val_fraction.value))
        text = f"{n} labelled image(s): train {n - n_val} / validation {n_val}"
        if classes_text:
            text += f"; {classes_text}"
        return text + f"; {n_unl} unlabelled image(s)"

    def unlabelled_count(self) -> int:
        """Unlabelled images chosen: layer slices plus the unlabelled folder's images."""
        n_unl = sum(_layers.n_slices(layer) for layer in self.unlabelled_layers.value or [])
        if self.unlabelled_folder.value:
            from tskd.data import folders

            n_unl += len(folders.unlabelled_files(self.unlabelled_folder.value))
        return n_unl

    # -- actions ----------------------------------------------------------------------------
    def use_data(self, *_: Any, wait: bool = True, then: Callable[[], Any] | None = None) -> bool:
        """Write the chosen data into the run folder and record it in ``config.yaml``.

        The layers are read here (milliseconds); the label checks and the writing (seconds on
        a slow disk) run in a thread when ``wait`` is False, so the viewer stays responsive;
        the *Use this data* button does that.

        Args:
            *_: the button's value (ignored).
            wait: write before returning (scripts, tests); False: write in a thread.
            then: called in the GUI thread once the data is written (not after an error).

        Returns:
            False when the input was refused (a notification says why); else True (with
            ``wait`` False: the writing started).
        """
        from tskd.errors import TskdError

        try:
            work = self._prepare_use()
        except TskdError as exc:
            _notify.user_error(exc)
            return False
        if wait:
            return self._written(_run(work), then)
        from napari.qt.threading import create_worker

        self.set_busy(True)
        self.summary.value = f"writing the data to {self.context.run_dir} ..."
        worker = create_worker(_run, work, _start_thread=False)
        worker.returned.connect(lambda outcome: self._written(outcome, then, busy=True))
        self._writer = worker  # kept until it reports
        worker.start()
        return True

    def _written(self, outcome: tuple[str, Any], then: Callable[[], Any] | None,
                 busy: bool = False) -> bool:
        """Report the outcome of ``_write_data`` (GUI thread)."""
        self._writer = None
        if busy:
            self.set_busy(self.context.runner.running)
        kind, value = outcome
        if kind == "user":
            _notify.user_error(value)
            self.update_summary()
            return False
        if kind == "os":
            _notify.error(f"cannot write the data: {value}")
            self.update_summary()
            return False
        for text in value["warnings"]:
            _notify.warning(text)
        self.summary.value = value["summary"]
        _notify.info(value["info"])
        self.refresh_run_state()
        if then is not None:
            then()
        return True

    def _prepare_use(self) -> Callable[[], dict[str, Any]]:
        """Read the layers and settings (GUI thread); return the writing, to run anywhere.

        Raises:
            TskdInputError: a layer or folder cannot be used (nothing is written).
        """
        from napari_tskd import _export  # noqa: F401  (first imports in the GUI thread)
        from tskd.errors import TskdInputError
        from tskd.pipeline import lock, run_folder  # noqa: F401

        layered = None
        if self.source.value == "layers":
            images, labels, names = _layers.labelled_slices(self.image.value, self.labels.value)
            layered = (images, labels, names, self.labels.value.metadata.get("class_names"),
                       self.labels.value.name)
        elif not self.labelled_folder.value:
            raise TskdInputError("no labelled folder chosen; choose one in 'Labelled folder'")
        unl_images, unl_names = _layers.unlabelled_slices(list(self.unlabelled_layers.value or []))
        unl_folder = self.unlabelled_folder.value
        if unl_folder and not Path(unl_folder).is_dir():
            raise TskdInputError(f"unlabelled folder not found: {unl_folder}")
        # what the tab shows now: opening the run folder below may show that run's settings
        shown = int(self.image_size.value), float(self.val_fraction.value)
        folder = None if layered else str(self.labelled_folder.value)
        overwrite = bool(self.overwrite.value)
        self.context.set_run_dir(self.run_dir.value)
        paths = self.context.paths()
        cfg = self._data_config(paths, bool(unl_images), unl_folder, shown)
        return lambda: _write_data(cfg, paths, layered, folder, (unl_images, unl_names),
                                   unl_folder, overwrite)

    def _data_config(self, paths: Any, unl_from_layers: bool, unl_folder: Any,
                     shown: tuple[int, float]) -> Any:
        """The run's config with this widget's data settings (not yet saved)."""
        cfg = self.context.config()
        cfg.data.labelled = str(paths.data)
        cfg.data.image_size, cfg.data.val_fraction = shown
        if unl_from_layers:
            cfg.data.unlabelled = str(paths.unlabelled)
        else:
            cfg.data.unlabelled = str(unl_folder) if unl_folder else None
        return cfg

    def run_all(self, *_: Any, wait: bool = True) -> None:
        """Train: use the data, then every stage in one training process.

        The run's config is the one the tabs show; a new run first takes the preset for this
        machine. A tab's field that cannot be used stops it before anything is written.

        Args:
            *_: the button's value (ignored).
            wait: write the data before returning; False (the button): in a thread, the job
                starting when it is written.
        """
        from tskd.errors import TskdError

        try:
            self.context.edits.check()  # a tab's unusable field: nothing written or started
        except TskdError as exc:
            _notify.user_error(exc)
            return
        preset = self.plan.apply_preset()
        self.use_data(wait=wait, then=lambda: self._start_all(preset))

    def _start_all(self, preset: str | None = None) -> None:
        if preset:
            _notify.info(f"preset for this machine: {preset} (Teacher tab)")
        self.start("Train (all stages)", [{"target": "pipeline"}], self.context.config())


def folder_count(folder: str | Path) -> int:
    """Images of a labelled folder (its ``images/`` when it has one, else the folder's own).

    Args:
        folder: The labelled folder the Data tab shows.
    """
    from tskd.data import files

    folder = Path(folder)
    return len(files.list_images(folder / "images")) if (folder / "images").is_dir() \
        else len(files.list_images(folder))


def _run(work: Callable[[], dict[str, Any]]) -> tuple[str, Any]:
    """Run ``work``; its user-fixable errors become an outcome, as threads cannot notify."""
    from tskd.errors import TskdError

    try:
        return "ok", work()
    except TskdError as exc:
        return "user", exc
    except OSError as exc:
        return "os", exc


def _read_folder(folder: str) -> tuple[list[Any], list[Any], list[str], Any, int | None,
                                       list[str]]:
    """The labelled set of a folder, through the backend's one label policy.

    Returns:
        ``(images, labels, names, class_names, ignore_label, warnings)``: labels in the user's
        values; class names and the ignore label None unless declared.

    Raises:
        TskdInputError: an empty folder, or labels the policy refuses.
    """
    from tskd.data.samples import read_labelled_set
    from tskd.errors import TskdInputError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, label_map = read_labelled_set(folder)
    if not samples:
        raise TskdInputError(f"no labelled images in {folder}")
    declared = label_map.declared
    return ([s.image for s in samples],
            [label_map.decode(s.label) for s in samples],  # the user's label values
            [s.name for s in samples],
            dict(zip(label_map.values, label_map.names)) if declared else None,
            label_map.ignore_label if declared else None,
            [str(w.message) for w in caught])


def _write_data(cfg: Any, paths: Any, layered: tuple[Any, ...] | None, folder: str | None,
                unlabelled: tuple[list[Any], list[str]], unl_folder: Any,
                overwrite: bool) -> dict[str, Any]:
    """Check the labels and write the data into the run folder (any thread; no Qt).

    Returns:
        ``{"warnings": [...], "summary": str, "info": str}`` for the GUI thread to show.

    Raises:
        TskdError: refused labels or run folder (nothing is written before the checks).
        OSError: a file cannot be written.
    """
    from napari_tskd._export import export_labelled, export_unlabelled
    from tskd.data import folders
    from tskd.pipeline.lock import run_lock
    from tskd.pipeline.run_folder import check_run_dir_inputs, prepare_run_dir

    if layered is not None:
        images, labels, names, class_names, layer = layered
        notes, ignore_label = _check_layer_labels(labels, class_names, layer), None
    else:
        images, labels, names, class_names, ignore_label, notes = _read_folder(str(folder))
    names, note = _layers.unique_names(names)  # one file per pair, never one for two
    unl_images, unl_names = unlabelled
    unl_names, unl_note = _layers.unique_names(unl_names)
    run_dir = paths.root
    check_run_dir_inputs(cfg)  # a run folder inside a data folder: refused, nothing made
    with run_lock(run_dir, "napari data widget"):  # no training process writes meanwhile
        if _has_results(run_dir):  # layers or a folder: both are copied into data/
            _replace_trained_set(run_dir, images, labels, names, overwrite)
        prepare_run_dir(cfg, overwrite=overwrite)
        export_labelled(images, labels, names, run_dir, class_names, ignore_label)
        if unl_images:
            extra = folders.unlabelled_files(unl_folder) if unl_folder else []
            export_unlabelled(unl_images, unl_names, paths.unlabelled, extra)
    for text, where in ((note, paths.data), (unl_note, paths.unlabelled)):
        if text:
            notes.append(f"{text[0].upper()}{text[1:]} (in {where}).")
    n_val = validation_count(len(images), cfg.data.val_fraction)
    return {"warnings": notes,
            "summary": f"wrote {len(images)} labelled image(s) (train {len(images) - n_val} / "
                       f"validation {n_val}) and {len(unl_images)} unlabelled layer slice(s) "
                       f"to {run_dir}",
            "info": f"data of run {run_dir.name} ready: {len(images)} labelled image(s)"}


def _has_results(run_dir: Path) -> bool:
    """Whether any stage of the run finished or left a checkpoint (``_run_state``)."""
    from napari_tskd._run_state import stage_states

    return any(s.done or s.checkpoint is not None
               for s in stage_states(run_dir, DataWidget.stages))


def _replace_trained_set(run_dir: Path, images: list[Any], labels: list[Any], names: list[str],
                         overwrite: bool) -> None:
    """Other layers for a run trained on its own labelled set (``run_dir/data``): refused unless
    ``overwrite``, which then removes the files that run wrote (``remove_owned``; its config,
    data and corrections stay until they are written over).

    Raises:
        RunFolderError: a different labelled set without ``overwrite`` (nothing changed).
    """
    from napari_tskd._export import labelled_set_differs
    from tskd.errors import RunFolderError
    from tskd.pipeline.manifest import remove_owned

    if not labelled_set_differs(images, labels, names, run_dir):
        return
    if not overwrite:
        raise RunFolderError(
            f"run folder {run_dir} holds a different run (trained on other labelled data); "
            "open a new run folder (Settings > New run folder, then Use this data) or tick "
            "'replace a different run in this folder' in the Data tab")
    remove_owned(run_dir, keep=("config.yaml",))


def _check_layer_labels(labels: list[Any], class_names: Any, layer: str) -> list[str]:
    """Apply the label policy to a Labels layer's slices before anything is written.

    Refuses what training would refuse (too many values, huge ids, values outside declared
    classes); returns its notes (e.g. the map of ids with gaps), to show as warnings.
    """
    from tskd.data import label_policy
    from tskd.data.declared import declared_from_config
    from tskd.data.label_map import check_values

    values = [label_policy.distinct_values(lab) for lab in labels]
    for v in values:
        check_values(v, f"labels layer '{layer}'")
    declared = None
    if isinstance(class_names, list | dict) and class_names:
        declared = declared_from_config(
            class_names, where=f"class names of labels layer '{layer}'")
    decision = label_policy.infer_map(
        [(f"labels layer '{layer}'", np.unique(np.concatenate(values)))], declared,
        where=f"labels layer '{layer}'")
    decision.raise_first()
    return [*decision.warnings, *decision.notes]


def layer_classes_text(data: Any) -> str:
    """The classes of a Labels layer as the label policy reads them (for the summary)."""
    from tskd.data import label_policy
    from tskd.data.label_map import check_values
    from tskd.errors import TskdError

    values = label_policy.distinct_values(np.asarray(data))
    try:
        check_values(values, "the labels")
        decision = label_policy.infer_map([("the labels", values)])
    except TskdError as exc:
        return f"labels cannot be used: {exc}"
    if decision.errors:
        return f"labels cannot be used: {decision.errors[0]}"
    lm = decision.label_map
    assert lm is not None
    shown = ", ".join(map(str, lm.values[1:]))
    if lm.is_identity:
        return f"classes {shown}"
    return f"classes {shown}, read as {lm.num_classes} classes {lm.describe()}"

