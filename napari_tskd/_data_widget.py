"""Data widget: the labelled set, the unlabelled images and the run folder.

The labelled set comes from Image + Labels layers or a folder, the unlabelled images from more
Image layers and/or a folder; the widget shows counts, classes and the split.
"""

from __future__ import annotations

import warnings
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

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        viewer = lambda: self.viewer  # noqa: E731 (choices are re-read on every reset)
        self.run_dir = FileEdit(label="Run folder", mode="d", value=str(self.context.run_dir))
        self.source = RadioButtons(label="Labelled from", choices=["layers", "folder"],
                                   value="layers", orientation="horizontal")
        self.image = ComboBox(label="Image layer", choices=_layers.choices(viewer, "image"))
        self.labels = ComboBox(label="Labels layer", choices=_layers.choices(viewer, "labels"))
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
        self.use_button.changed.connect(self.use_data)
        self.run_all_button.changed.connect(self.run_all)
        self.context.edits.bind([Field("data.image_size", self.image_size, int),
                                 Field("data.val_fraction", self.val_fraction, float)], self)
        self.plan = TrainPlan(self)  # preset, time estimate and quality below Train
        self._load_from_run()
        self._show_source()
        self.reset_choices()

    def job_buttons(self) -> list[Any]:
        return [self.use_button, self.run_all_button]

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[0]
        if self.labels.value is None and self.labels.choices:
            self.labels.value = self.labels.choices[0]
        self.update_summary()

    def on_run_dir_changed(self) -> None:
        if hasattr(self, "run_dir") and Path(self.run_dir.value) != self.context.run_dir:
            self.run_dir.value = str(self.context.run_dir)
            self._load_from_run()

    def _open_run(self, *_: Any) -> None:
        """Another run folder typed or picked: every widget shows that run."""
        if self.run_dir.value and Path(self.run_dir.value) != self.context.run_dir:
            self.context.set_run_dir(self.run_dir.value)

    def _load_from_run(self) -> None:
        try:
            cfg = self.context.config()
        except Exception:
            return
        with self.context.edits.loading():
            self.image_size.value = cfg.data.image_size
            self.val_fraction.value = cfg.data.val_fraction

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
            folder = self.labelled_folder.value
            if not folder:
                return "choose a labelled folder"
            from tskd.data import files

            n = len(files.list_images(Path(folder) / "images")) if (
                Path(folder) / "images").is_dir() else len(files.list_images(folder))
            classes_text = ""
        n_unl = sum(_layers.n_slices(layer) for layer in self.unlabelled_layers.value or [])
        if self.unlabelled_folder.value:
            from tskd.data import folders

            n_unl += len(folders.unlabelled_files(self.unlabelled_folder.value))
        n_val = validation_count(n, float(self.val_fraction.value))
        text = f"{n} labelled image(s): train {n - n_val} / validation {n_val}"
        if classes_text:
            text += f"; {classes_text}"
        return text + f"; {n_unl} unlabelled image(s)"

    # -- actions ----------------------------------------------------------------------------
    def use_data(self, *_: Any) -> bool:
        """Write the chosen data into the run folder and record it in ``config.yaml``."""
        from tskd.errors import TskdError

        try:
            self._use_data()
        except TskdError as exc:
            _notify.user_error(exc)
            return False
        except OSError as exc:
            _notify.error(f"cannot write the data: {exc}")
            return False
        return True

    def _use_data(self) -> None:
        from napari_tskd._export import export_labelled, export_unlabelled
        from tskd.data import folders
        from tskd.errors import TskdInputError
        from tskd.pipeline.lock import run_lock
        from tskd.pipeline.run_folder import check_run_dir_inputs, prepare_run_dir

        # read everything first, so a bad input changes nothing on disk
        images, labels, names, class_names, ignore_label = self._read_labelled()
        names, note = _layers.unique_names(names)  # one file per pair, never one for two
        unl_images, unl_names = _layers.unlabelled_slices(list(self.unlabelled_layers.value or []))
        unl_names, unl_note = _layers.unique_names(unl_names)
        unl_folder = self.unlabelled_folder.value
        if unl_folder and not Path(unl_folder).is_dir():
            raise TskdInputError(f"unlabelled folder not found: {unl_folder}")

        self.context.set_run_dir(self.run_dir.value)
        run_dir, paths = self.context.run_dir, self.context.paths()
        cfg = self._data_config(paths, bool(unl_images), unl_folder)
        check_run_dir_inputs(cfg)  # a run folder inside a data folder: refused, nothing made
        with run_lock(run_dir, "napari data widget"):  # no training process writes meanwhile
            prepare_run_dir(cfg, overwrite=bool(self.overwrite.value))
            export_labelled(images, labels, names, run_dir, class_names, ignore_label)
            if unl_images:
                extra = folders.unlabelled_files(unl_folder) if unl_folder else []
                export_unlabelled(unl_images, unl_names, paths.unlabelled, extra)
        for text, where in ((note, paths.data), (unl_note, paths.unlabelled)):
            if text:
                _notify.warning(f"{text[0].upper()}{text[1:]} (in {where}).")
        n_val = validation_count(len(images), cfg.data.val_fraction)
        self.summary.value = (
            f"wrote {len(images)} labelled image(s) (train {len(images) - n_val} / validation "
            f"{n_val}) and {len(unl_images)} unlabelled layer slice(s) to {run_dir}"
        )
        _notify.info(f"data of run {run_dir.name} ready: {len(images)} labelled image(s)")

    def _read_labelled(self) -> tuple[list[Any], list[Any], list[str], Any, int | None]:
        """The labelled set from the layers or the folder, read before anything is written.

        Labels go through the backend's one label policy (tskd.data.label_policy), its notes
        shown as warnings.

        Returns:
            ``(images, labels, names, class_names, ignore_label)``: labels in the user's
            values; class names and the ignore label None unless declared.

        Raises:
            TskdInputError: No folder chosen, an empty folder, or labels the policy refuses.
        """
        from tskd.errors import TskdInputError

        if self.source.value == "layers":
            images, labels, names = _layers.labelled_slices(self.image.value, self.labels.value)
            class_names = self.labels.value.metadata.get("class_names")
            _check_layer_labels(labels, class_names, self.labels.value.name)
            return images, labels, names, class_names, None
        from tskd.data.samples import read_labelled_set

        if not self.labelled_folder.value:
            raise TskdInputError("no labelled folder chosen")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            samples, label_map = read_labelled_set(self.labelled_folder.value)
        for w in caught:
            _notify.warning(str(w.message))
        if not samples:
            raise TskdInputError(f"no labelled images in {self.labelled_folder.value}")
        declared = label_map.declared
        return ([s.image for s in samples],
                [label_map.decode(s.label) for s in samples],  # the user's label values
                [s.name for s in samples],
                dict(zip(label_map.values, label_map.names)) if declared else None,
                label_map.ignore_label if declared else None)

    def _data_config(self, paths: Any, unl_from_layers: bool, unl_folder: Any) -> Any:
        """The run's config with this widget's data settings (not yet saved)."""
        cfg = self.context.config()
        cfg.data.labelled = str(paths.data)
        cfg.data.image_size = int(self.image_size.value)
        cfg.data.val_fraction = float(self.val_fraction.value)
        if unl_from_layers:
            cfg.data.unlabelled = str(paths.unlabelled)
        else:
            cfg.data.unlabelled = str(unl_folder) if unl_folder else None
        return cfg

    def run_all(self, *_: Any) -> None:
        """Train: use the data, then every stage in one training process, with the run's
        config as the tabs show it (a new run first takes the preset for this machine)."""
        from tskd.errors import TskdError

        try:
            self.context.edits.check()  # a tab's unusable field: nothing written or started
        except TskdError as exc:
            _notify.user_error(exc)
            return
        preset = self.plan.apply_preset()
        if not self.use_data():
            return
        if preset:
            _notify.info(f"preset for this machine: {preset} (Teacher tab)")
        self.start("Train (all stages)", [{"target": "pipeline"}], self.context.config())


def _check_layer_labels(labels: list[Any], class_names: Any, layer: str) -> None:
    """Apply the label policy to a Labels layer's slices before anything is written.

    Refuses what training would refuse (too many values, huge ids, values outside declared
    classes) and shows its notes (e.g. the map of ids with gaps) as warnings.
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
    for text in [*decision.warnings, *decision.notes]:
        _notify.warning(text)


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

