"""Faults a fresh user found in the viewer's correction loop, jobs and settings: a dock reopened
during Train, the plugin's own layers offered as data, a trained run's labelled set replaced
silently, another run folder's settings not shown, a renamed and changed source image, the
backend's import paid by a button, stage results not shown, old words. No training runs here:
jobs are captured where the process would start, and results are written as the stages write
them (``<stage folder>/stage.json``)."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")

ROOT = Path(__file__).resolve().parents[1]


def _stack(z: int = 6, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = (rng.random((z, size, size)) * 200).astype(np.uint8)
    lab = np.zeros((z, size, size), np.uint8)
    for k in range(z):
        img[k, 8:20, 8:20] += 50
        lab[k, 8:20, 8:20] = 1
    return img, lab


def _dock(viewer):
    dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    jobs: list = []
    main.context.runner.start = lambda job: jobs.append(job) or job  # type: ignore[method-assign]
    main.jobs = jobs
    return dock, main


def _stage_json(run_dir: Path, folder: str, result: dict) -> Path:
    path = run_dir / folder / "stage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": "0", "result": result}))
    return path


def test_dock_closed_and_reopened_during_train_shows_the_quality(make_napari_viewer,
                                                                  qtbot) -> None:
    """Before: the closed dock's TrainPlan slot hit its deleted QLabel ("wrapped C/C++ object
    of type QLabel has been deleted") and the reopened dock's quality line stayed empty."""
    from napari_tskd._jobs import Job
    from qtpy.QtCore import QCoreApplication, QEvent

    viewer = make_napari_viewer()
    dock, main = _dock(viewer)
    job = Job("Train (all stages)", [{"target": "pipeline"}], {}, owner=main.stages["Data"])
    old_label = main.stages["Data"].plan.quality.native
    viewer.window.remove_dock_widget(dock)
    del dock, main
    gc.collect()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    from qtpy import sip

    assert sip.isdeleted(old_label)  # the closed dock's widgets are gone
    _dock2, main2 = _dock(viewer)
    job.status, job.message = "done", "Train (all stages): finished"
    job.results = {"pipeline": {"teacher": {"val_dice": 0.9},
                                "student": {"val": {"dice": 0.8, "n_images": 2}}}}
    main2.context.runner.finished.emit(job)  # an exception in any slot fails the test
    assert main2.stages["Data"].plan.quality.value == (
        "Quality reached: teacher: validation Dice 0.900; student: validation Dice 0.800 on "
        "2 image(s)")


def test_plugin_layers_are_never_choices_nor_suggest_candidates(make_napari_viewer,
                                                                  tskd_gui_env) -> None:
    """Before: the Data tab, and Loop > Suggest on 2D images, offered 'TS-KD preview image'
    (Suggest then jumped to it: ValueError); prediction layers were the Data tab's Labels."""
    from napari_tskd import _own_layers

    viewer = make_napari_viewer()
    img, lab = _stack(z=1)
    viewer.add_image(img[0], name="cells")
    viewer.add_labels(lab[0], name="cells labels")
    _own_layers.show_preview(viewer, {"image": np.zeros((16, 16, 3), np.uint8),
                                      "labels": np.zeros((16, 16), np.uint8)}, "teacher")
    _own_layers.show_synthetic(viewer, np.zeros((2, 16, 16), np.uint8), rgb=False)
    viewer.add_labels(lab[0], name="cells prediction",
                      metadata={"tskd": "prediction", "image": "cells"})
    _dock_widget, main = _dock(viewer)
    main.reset_choices()
    data, seg, loop = main.stages["Data"], main.stages["Segment"], main.stages["Loop"]

    def names(widget):
        return sorted(c.name for c in widget.choices)

    assert names(data.image) == names(data.unlabelled_layers) == names(seg.image) == ["cells"]
    assert names(loop.image) == ["cells"]
    assert names(data.labels) == ["cells labels"]
    assert names(loop.labels) == ["cells labels", "cells prediction"]
    loop.image.value = viewer.layers["cells"]
    assert [(c[0].name, c[1]) for c in loop._candidates()] == [("cells", 0)]


def _use(data, image, labels, overwrite: bool = False) -> bool:
    data.source.value = "layers"
    data.image.value, data.labels.value = image, labels
    data.overwrite.value = overwrite
    return data.use_data(wait=True)


def test_use_this_data_refuses_to_replace_a_trained_runs_labelled_set(
        make_napari_viewer, tskd_gui_env, notes) -> None:
    """Before: other layers silently replaced data/ of a trained run (its teacher and student
    kept, trained on the old set)."""
    viewer = make_napari_viewer()
    img, lab = _stack()
    image = viewer.add_image(img, name="scan")
    labels = viewer.add_labels(lab, name="scan labels")
    other_img = viewer.add_image(img[:, ::-1].copy(), name="other")
    other_lab = viewer.add_labels(lab[:, ::-1].copy(), name="other labels")
    _d, main = _dock(viewer)
    data, run = main.stages["Data"], tskd_gui_env
    assert _use(data, image, labels)
    marker = _stage_json(run, "teacher", {"val_dice": 0.5})
    before = {p: p.read_bytes() for p in sorted((run / "data").rglob("*")) if p.is_file()}
    config = (run / "config.yaml").read_bytes()

    assert not _use(data, other_img, other_lab)
    assert any("holds a different run" in e and "replace a different run in this folder" in e
               for e in notes.errors()), notes.all()
    assert {p: p.read_bytes() for p in sorted((run / "data").rglob("*")) if p.is_file()} == before
    assert marker.is_file() and (run / "config.yaml").read_bytes() == config
    assert _use(data, image, labels)  # the same set again: the run continues
    assert _use(data, other_img, other_lab, overwrite=True)  # ticked: replaced
    assert {p: p.read_bytes() for p in sorted((run / "data").rglob("*")) if p.is_file()} != before


def test_use_this_data_refuses_another_labelled_folder_for_a_trained_run(
        make_napari_viewer, tskd_gui_env, tmp_path, notes) -> None:
    """The same fault with the labelled set from a folder (it is copied into data/ too)."""
    from tskd.data import files

    folders = []
    for name, value in (("first", 1), ("second", 2)):
        folder = tmp_path / name
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True)
        for k in range(3):
            img = np.full((16, 16), 40 * k + value, np.uint8)
            lab = np.zeros((16, 16), np.uint8)
            lab[4:12, 4:12] = 1
            files.write_image(folder / "images" / f"a{k}.tif", img)
            files.write_image(folder / "labels" / f"a{k}.tif", lab)
        folders.append(folder)
    viewer = make_napari_viewer()
    _d, main = _dock(viewer)
    data, run = main.stages["Data"], tskd_gui_env
    data.source.value = "folder"
    data.labelled_folder.value = str(folders[0])
    assert data.use_data(wait=True)
    _stage_json(run, "student", {"val": {}})
    before = {p: p.read_bytes() for p in sorted((run / "data").rglob("*")) if p.is_file()}
    data.labelled_folder.value = str(folders[1])
    assert not data.use_data(wait=True)
    assert any("holds a different run" in e for e in notes.errors()), notes.all()
    assert {p: p.read_bytes() for p in sorted((run / "data").rglob("*")) if p.is_file()} == before
    data.labelled_folder.value = str(folders[0])
    assert data.use_data(wait=True)


def test_opening_another_run_folder_shows_its_data_settings(make_napari_viewer, tmp_path,
                                                            notes) -> None:
    """Before: typing another run folder kept the previous run's Validation share, input size
    and source; the Teacher tab did reload."""
    from tskd.config import RunConfig, save_config

    labelled = tmp_path / "mydata"
    (labelled / "images").mkdir(parents=True)
    (labelled / "labels").mkdir()
    other = tmp_path / "runs" / "other"
    other.mkdir(parents=True)
    cfg = RunConfig()
    cfg.run_dir = str(other)
    cfg.data.labelled, cfg.data.image_size, cfg.data.val_fraction = str(labelled), 96, 0.35
    save_config(cfg, other / "config.yaml")
    viewer = make_napari_viewer()
    _d, main = _dock(viewer)
    data = main.stages["Data"]
    assert (data.image_size.value, data.source.value) == (256, "layers")
    data.run_dir.value = str(other)
    assert main.context.run_dir == other
    assert data.image_size.value == 96 and data.val_fraction.value == pytest.approx(0.35)
    assert data.source.value == "folder" and Path(data.labelled_folder.value) == labelled
    assert main.context.config().data.image_size == 96
    assert notes.errors() == []


def test_add_after_the_source_was_renamed_and_changed_says_it_changed(make_napari_viewer,
                                                                      tmp_path) -> None:
    """Before: "segmented from image layer 'old name' ... choose 'old name'" with no such
    layer open. An open layer of that name still gets "choose it"."""
    from napari.layers import Image, Labels
    from napari_tskd import _layers

    from tskd.errors import TskdInputError

    img, lab = _stack()
    image = Image(img, name="kidney")
    pred = Labels(lab, name="pred", metadata={"tskd": "prediction", **_layers.provenance(image)})
    image.name = "renamed kidney"
    image.data = img // 2
    with pytest.raises(TskdInputError) as caught:
        _layers.check_pair(image, pred, "Add", [image])
    text = str(caught.value)
    assert "has changed since labels layer 'pred' was segmented" in text
    assert "press 'Segment' again" in text and "choose 'kidney'" not in text
    original = Image(img, name="kidney")
    with pytest.raises(TskdInputError, match="choose 'kidney' as Image layer"):
        _layers.check_pair(image, pred, "Add", [image, original])


def test_the_dock_imports_the_backend_once_when_it_opens(make_napari_viewer, qtbot,
                                                         monkeypatch) -> None:
    """Before: the first Suggest by disagreement imported the backend on the GUI thread
    (2.4-5 s frozen). Now the dock does it once, with a note, and Suggest imports nothing."""
    from napari_tskd import _models

    calls: list[bool] = []
    real = _models.import_backend
    monkeypatch.setattr(_models, "import_backend",
                        lambda ranking=False: calls.append(ranking) or real(ranking))
    viewer = make_napari_viewer()
    _d, main = _dock(viewer)
    qtbot.waitUntil(lambda: main.backend_ready, timeout=60000)
    assert calls == [True] and main.loading.text() == ""
    assert all(m in sys.modules for m in _models.BACKEND_MODULES[:5] + _models.RANKING_MODULES)
    assert real(ranking=True) is False  # a later button press: nothing left to import


def test_stage_tabs_show_the_recorded_results(make_napari_viewer, tskd_gui_env, qtbot) -> None:
    """Before: Teacher, Transfer set and Student showed nothing after Train or a reopened run."""
    from napari_tskd._forms import NO_VALIDATION
    from napari_tskd._jobs import Job

    run = tskd_gui_env
    _stage_json(run, "teacher", {"val_dice": 0.8123, "train_loss": 0.5})
    _stage_json(run, "transfer", {"n_generated": 4, "n_kept": 3, "share_dropped": 0.25})
    _stage_json(run, "distilled", {"steps": 3})
    _stage_json(run, "student", {"val": {}, "n_train": 2})
    viewer = make_napari_viewer()
    _d, main = _dock(viewer)
    teacher, transfer, student = (main.stages[k] for k in ("Teacher", "Transfer set", "Student"))
    assert teacher.result.value == "teacher: validation Dice 0.812"
    assert student.result.value == f"distilled; student ready; student: {NO_VALIDATION}"
    assert transfer.result.value == "kept 3 of 4 synthetic images; 25.0% dropped as near-copies"
    _stage_json(run, "teacher", {"val_dice": None})
    _stage_json(run, "student", {"val": {"dice": 0.7, "n_images": 2}})
    job = Job("Train (all stages)", [], {}, owner=main.stages["Data"], status="done")
    main.context.runner.finished.emit(job)  # after Train: every tab reads the run again
    assert teacher.result.value == f"teacher: {NO_VALIDATION}"
    assert student.result.value == ("distilled; student ready; student: validation Dice "
                                    "0.700 on 2 image(s)")


def test_resumed_train_is_labelled_train_and_docs_name_train(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _d, main = _dock(viewer)
    job = main.stages["Data"].resume_from_run([{"target": "pipeline", "kwargs": {"resume": True}}])
    assert job is not None and job.label == "Train (all stages)"
    assert "Run all stages" not in (ROOT / "docs" / "user-guide.md").read_text()


def test_estimate_with_a_labelled_folder(make_napari_viewer, tmp_path) -> None:
    """Before: "shown once the labelled layers are chosen" with a labelled folder chosen."""
    from tskd.data import files

    folder = tmp_path / "mydata"
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for k in range(5):
        files.write_image(folder / "images" / f"a{k}.tif", np.zeros((16, 16), np.uint8))
        files.write_image(folder / "labels" / f"a{k}.tif", np.ones((16, 16), np.uint8))
    viewer = make_napari_viewer()
    _d, main = _dock(viewer)
    data = main.stages["Data"]
    data.source.value = "folder"
    data.labelled_folder.value = str(folder)
    assert data.plan.counts() == (4, 0)  # 5 images, 1 for validation at 0.2
    assert "Estimate: " in data.plan.estimate.value and "(teacher " in data.plan.estimate.value
    assert "shown once" not in data.plan.estimate.value


def test_a_refused_add_does_not_keep_the_last_added_line(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    img, lab = _stack()
    viewer.add_image(img, name="scan")
    viewer.add_labels(lab[:, :16], name="small labels")
    _d, main = _dock(viewer)
    loop = main.stages["Loop"]
    loop.status.value = "added slice 3 of 'scan'; 1 correction(s) in the run"
    loop.image.value, loop.labels.value = viewer.layers["scan"], viewer.layers["small labels"]
    assert loop.add_slice() is None
    assert loop.status.value == "not added (the message says why)"
