"""Widgets on tiny data: docking through napari's plugin machinery, the data from layers, bad input
as notifications, settings across restarts, and the Segment/Loop logic with a stand-in model
(the real models run in test_gui_pipeline.py)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")

WIDGETS = ["TS-KD", "1 Data", "2 Teacher", "3 Transfer set", "4 Distil and fine-tune student",
           "5 Segment", "6 Annotate-train loop", "Settings"]


def _stack(z: int = 4, size: int = 32, dtype=np.uint16) -> tuple[np.ndarray, np.ndarray]:
    """A stack with a bright square per slice; labels only on slices 1 and 3."""
    rng = np.random.default_rng(0)
    img = (rng.random((z, size, size)) * 200).astype(dtype)
    lab = np.zeros((z, size, size), np.uint8)
    for k in range(z):
        img[k, 8:20, 8 + k:20 + k] += 1000
    lab[1, 8:20, 9:21] = 1
    lab[3, 8:20, 11:23] = 2
    return img, lab


class FakeSegmenter:
    """Thresholds the image; records which thread ran each call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay

    def segment(self, image, is_stack=None, contrast_limits=None):
        self.calls.append(threading.current_thread().name)
        time.sleep(self.delay)
        image = np.asarray(image)
        if image.ndim == 3:  # RGB: brightest channel
            image = image.max(axis=-1)
        lo = contrast_limits[0] if contrast_limits else 0
        thresh = lo + 500 if image.dtype != np.uint8 else 127
        return (image > thresh).astype(np.int64)


@pytest.fixture
def fake_model(monkeypatch):
    from napari_tskd._models import LoadedModel

    model = LoadedModel(FakeSegmenter(0.02), {"num_classes": 3}, "run1/student",
                        Path("/nonexistent/student"), ())

    def install(widget):
        monkeypatch.setattr(widget.context.models, "get", lambda folder, device="auto": model)
        monkeypatch.setattr(widget.context.models, "meta", lambda folder: model.meta)
        return model

    return install


def test_every_manifest_widget_docks(make_napari_viewer) -> None:
    """Each widget of the manifest, opened through napari's plugin machinery, in one viewer."""
    from napari_tskd._context import RunContext

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="img")
    viewer.add_labels(np.zeros((3, 16, 16), np.uint8), name="lab")
    contexts, widgets = set(), {}
    for name in WIDGETS:
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-tskd", name)
        widgets[name] = widget
        assert isinstance(widget.context, RunContext)
        assert widget.viewer is viewer  # unwrapped from napari's proxy
        widget.reset_choices()
        contexts.add(id(widget.context))
    assert len(contexts) == 1
    data = widgets["1 Data"]
    assert data.image.value is viewer.layers["img"] and data.labels.value is viewer.layers["lab"]


def test_main_widget_tabs_share_one_run_context(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer()
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    _dock2, teacher = viewer.window.add_plugin_dock_widget("napari-tskd", "2 Teacher")
    assert main.tabs.count() == 7
    contexts = {id(w.context) for w in main.stages.values()} | {id(teacher.context)}
    assert len(contexts) == 1  # one viewer, one run folder, one training process at a time
    main.stages["Settings"].context.set_run_dir(tmp_path / "other")
    assert str(tmp_path / "other") in teacher.run_label.text()


def test_data_from_layers_writes_run_folder(make_napari_viewer, tskd_gui_env, notes) -> None:
    pytest.importorskip("tskd.data.files")
    from tskd.config import load_config
    from tskd.data import files

    viewer = make_napari_viewer()
    img, lab = _stack()
    image = viewer.add_image(img, name="scan", contrast_limits=(0, 1200))
    viewer.add_labels(lab, name="scan labels")
    unl = viewer.add_image(img[:2], name="more")
    from napari_tskd._data_widget import DataWidget

    w = DataWidget(viewer)
    w.image.value = image
    w.unlabelled_layers.value = [unl]
    assert "2 labelled image(s)" in w.summary.value and "classes 1, 2" in w.summary.value
    assert "2 unlabelled" in w.summary.value
    assert w.use_data()
    run = tskd_gui_env
    cfg = load_config(run / "config.yaml")
    assert Path(cfg.data.labelled) == run / "data"
    assert Path(cfg.data.unlabelled) == run / "unlabelled"
    names = sorted(p.stem for p in (run / "data" / "images").iterdir())
    assert names == ["scan_z0001", "scan_z0003"]  # only slices that have labels
    saved = files.read_image(run / "data" / "images" / "scan_z0003.tif")
    assert saved.dtype == np.uint8  # 16-bit mapped through the layer's contrast limits
    np.testing.assert_array_equal(files.read_label(run / "data" / "labels" / "scan_z0003.tif"),
                                  lab[3])
    assert len(list((run / "unlabelled").iterdir())) == 2
    # exporting again without changes rewrites nothing (stage fingerprints stay valid)
    before = {p: p.stat().st_mtime_ns for p in (run / "data" / "images").iterdir()}
    time.sleep(0.01)
    assert w.use_data()
    assert {p: p.stat().st_mtime_ns for p in (run / "data" / "images").iterdir()} == before
    assert not notes.errors()


def test_data_from_layers_with_an_unlabelled_folder_too(make_napari_viewer, tskd_gui_env, notes,
                                                         tmp_path) -> None:
    """Labelled layers plus unlabelled layers and folder: counted, then all written.

    The folder's files were once read only when the labelled set came from a folder, so this
    combination showed "cannot read the data" and "Use this data" failed with an unbound name.
    """
    import imageio.v3 as iio

    from tskd.config import load_config

    viewer = make_napari_viewer()
    img, lab = _stack()
    viewer.add_image(img, name="scan")
    viewer.add_labels(lab, name="scan labels")
    unl = viewer.add_image(img[:2], name="more")
    folder = tmp_path / "unlabelled_in"
    folder.mkdir()
    for k in range(3):
        iio.imwrite(folder / f"u{k}.png", np.full((24, 24), 40 * k, np.uint8))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    from napari_tskd._data_widget import DataWidget

    w = DataWidget(viewer)
    assert w.source.value == "layers"
    w.unlabelled_layers.value = [unl]
    w.unlabelled_folder.value = str(folder)
    assert w.summary.value == ("2 labelled image(s): train 2 / validation 0; classes 1, 2; "
                               "5 unlabelled image(s)")
    assert w.use_data()
    run = tskd_gui_env
    assert Path(load_config(run / "config.yaml").data.unlabelled) == run / "unlabelled"
    written = sorted(p.name for p in (run / "unlabelled").iterdir())
    assert written == ["folder_00000_u0.png", "folder_00001_u1.png", "folder_00002_u2.png",
                       "more_z0000.tif", "more_z0001.tif"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # input untouched
    assert not notes.errors()


def test_bad_inputs_show_notifications(make_napari_viewer, notes) -> None:
    from napari_tskd._data_widget import DataWidget
    from napari_tskd._teacher_widget import TeacherWidget

    viewer = make_napari_viewer()
    img, lab = _stack()
    viewer.add_image(img, name="scan")
    viewer.add_labels(np.zeros_like(lab), name="empty")
    w = DataWidget(viewer)
    assert not w.use_data()
    assert notes.errors()[-1] == "labels layer 'empty' holds no labels (all zero)"
    viewer.add_labels(lab[:, :16], name="cropped")
    w.reset_choices()  # what napari does for a docked widget when layers change
    w.labels.value = viewer.layers["cropped"]
    assert not w.use_data()
    assert "differ in shape" in notes.errors()[-1]
    t = TeacherWidget(viewer)
    t.lr.value = "fast"
    t.run()
    assert notes.errors()[-1] == "learning rate must be a number, got 'fast'"
    t.lr.value = "1e-3"
    t.checkpoint.value = "/no/such/sam.pth"
    t.run()
    assert "teacher checkpoint not found" in notes.errors()[-1]
    assert not t.context.runner.running


def test_training_image_uses_contrast_limits() -> None:
    import napari.layers
    from napari_tskd._layers import training_image

    data = np.array([[[100, 600], [1100, 5000]]], dtype=np.uint16)
    layer = napari.layers.Image(data, contrast_limits=(100, 1100))
    np.testing.assert_array_equal(training_image(layer, 0), [[0, 128], [255, 255]])
    rgb = napari.layers.Image(np.full((4, 4, 4), 7, np.uint8), rgb=True)
    assert training_image(rgb).shape == (4, 4, 3)  # alpha dropped, 8-bit kept as is


def test_settings_survive_a_restart(make_napari_viewer, tmp_path) -> None:
    from napari_tskd._context import RunContext
    from napari_tskd._settings import settings_path
    from napari_tskd._settings_widget import SettingsWidget

    viewer = make_napari_viewer()
    w = SettingsWidget(viewer)
    w.output_dir.value = tmp_path / "out"
    w.cache_dir.value = tmp_path / "cache2"
    w.device.value = "cpu"
    w.save()
    w.new_run()
    stored = json.loads(settings_path().read_text())
    assert stored["output_dir"] == str(tmp_path / "out")
    assert stored["run_dir"] == str(tmp_path / "out" / "run1")
    fresh = RunContext()  # what the next napari session reads
    assert fresh.settings.cache_dir == str(tmp_path / "cache2")
    assert fresh.run_dir == tmp_path / "out" / "run1"


def test_student_form_chooses_the_architecture(make_napari_viewer, tskd_gui_env) -> None:
    from napari_tskd._student_widget import ARCHITECTURES, StudentWidget

    from tskd.config import RunConfig, save_config

    viewer = make_napari_viewer()
    w = StudentWidget(viewer)
    assert ARCHITECTURES[w.architecture.value] == "unet"  # the default student
    w.architecture.value = "ViT-Tiny (the paper's)"
    assert w.build_config().student.architecture == "vit_tiny"
    cfg = RunConfig(run_dir=str(tskd_gui_env))
    cfg.student.architecture = "vit_tiny"
    tskd_gui_env.mkdir(parents=True)
    save_config(cfg, w.context.paths().config)
    fresh = StudentWidget(viewer)
    assert ARCHITECTURES[fresh.architecture.value] == "vit_tiny"  # read back from the run
    # a CNN student's run reads back as the CNN, not as the first choice (a new viewer: one
    # viewer keeps the run config it loaded)
    cfg.student.architecture = "conv"
    save_config(cfg, w.context.paths().config)
    assert ARCHITECTURES[StudentWidget(make_napari_viewer()).architecture.value] == "conv"


def test_teacher_form_and_preset(make_napari_viewer) -> None:
    from napari_tskd._presets import PRESETS, pick
    from napari_tskd._teacher_widget import TeacherWidget

    viewer = make_napari_viewer()
    t = TeacherWidget(viewer)
    t.model_type.value = "vit_b"
    t.input_size.value = 512
    t.lora_rank.value = 8
    t.lora_targets.value = r"image_encoder\.blocks\.\d+\.attn\.qkv"
    t.max_steps.value = 5
    cfg = t.build_config()
    assert (cfg.teacher.model_type, cfg.teacher.input_size, cfg.teacher.lora.rank) == (
        "vit_b", 512, 8)
    assert cfg.teacher.lora.targets == [r"image_encoder\.blocks\.\d+\.attn\.qkv"]
    assert cfg.teacher.train.max_steps == 5
    assert pick("cuda", 12.0).model_type == "vit_b" and pick("cuda", 12.0).input_size == 1024
    assert pick("cuda", 2.0).input_size == 256
    assert pick("cpu", 64.0).model_type == "mini"
    assert len({p.name for p in PRESETS}) == len(PRESETS)
    t.device.value = "cpu"
    t.apply_preset()
    assert t.model_type.value == "mini" and "GB free" in t.preset_info.value


def test_segment_stack_displayed_slice_first_rest_in_background(make_napari_viewer,
                                                                fake_model) -> None:
    from napari_tskd._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    img, lab = _stack(z=6)
    viewer.add_image(img, name="scan", contrast_limits=(0, 1200))
    user_labels = viewer.add_labels(lab.copy(), name="my labels")
    w = SegmentWidget(viewer)
    model = fake_model(w)
    viewer.dims.set_point(0, 4)
    layer = w.segment()
    assert layer is not None and layer is not user_labels
    assert layer.name == "run1/student segmentation" and layer.metadata["tskd"] == "prediction"
    assert w.wait(30)
    assert w.session.done == set(range(6))
    assert model.segmenter.calls[0] != threading.current_thread().name  # never the GUI thread
    assert all(c != threading.current_thread().name for c in model.segmenter.calls)
    assert w.status.value.endswith("; done") and "6 slice(s)" in w.status.value
    np.testing.assert_array_equal(user_labels.data, lab)  # the user's layer is untouched
    np.testing.assert_array_equal(layer.data[2], img[2] > 500)


def test_segment_follow_mode_and_edits_are_kept(make_napari_viewer, fake_model, qtbot) -> None:
    from napari_tskd._segment_widget import STACK_MODES, SegmentWidget

    viewer = make_napari_viewer()
    img, _ = _stack(z=6)
    image = viewer.add_image(img, name="scan", contrast_limits=(0, 1200))
    w = SegmentWidget(viewer)
    fake_model(w)
    w.stack_mode.value = STACK_MODES[1]
    viewer.dims.set_point(0, 0)
    layer = w.segment()
    assert w.wait(10) and w.session.done == {0}
    viewer.dims.set_point(0, 3)
    qtbot.waitUntil(lambda: 3 in w.session.done, timeout=10000)
    assert w.session.done == {0, 3}  # only what the user visited
    # the user corrects slice 3 (napari's paint API); pressing Segment again must not
    # overwrite it, and must update the same layer
    layer.paint((3, 1, 1), 2)
    layer.data[3] = 2
    assert w.session.edited == {3} and layer.metadata["edited"] == [3]
    assert w.segment() is layer
    assert w.wait(10)
    assert (layer.data[3] == 2).all()
    # live: the image's pixels change under a corrected layer -> a successor layer (the
    # corrections belong to the old pixels), the older one hidden, never rewritten
    w.live.value = True
    image.data = img[:, :, ::-1].copy()
    qtbot.waitUntil(lambda: len([ly for ly in viewer.layers
                                 if ly.metadata.get("tskd") == "prediction"]) == 2,
                    timeout=10000)
    assert (layer.data[3] == 2).all() and not layer.visible


def test_segment_2d_rgb(make_napari_viewer, fake_model) -> None:
    from napari_tskd._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:10, 5:10] = 255
    viewer.add_image(rgb, name="photo", rgb=True)
    w = SegmentWidget(viewer)
    fake_model(w)
    layer = w.segment()
    assert w.wait(10) and w.status.value.endswith("; done")
    assert layer.data.shape == (20, 30)
    assert layer.data[7, 7] == 1 and layer.data[0, 0] == 0


def test_segment_without_model_notifies(make_napari_viewer, notes) -> None:
    from napari_tskd._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.uint8), name="x")
    w = SegmentWidget(viewer)
    assert w.segment() is None
    assert "meta.json missing" in notes.errors()[-1]


def test_loop_add_and_suggest(make_napari_viewer, fake_model, tskd_gui_env, monkeypatch,
                              notes) -> None:
    pytest.importorskip("tskd.data.files")
    from napari_tskd._data_widget import DataWidget
    from napari_tskd._loop_widget import LoopWidget

    import tskd.inference.predict

    viewer = make_napari_viewer()
    img, lab = _stack(z=5)
    image = viewer.add_image(img, name="scan", contrast_limits=(0, 1200))
    viewer.add_labels(lab, name="scan labels")
    data = DataWidget(viewer)
    assert data.use_data()
    loop = LoopWidget(viewer)
    fake_model(loop)
    correction = viewer.add_labels(np.zeros_like(lab), name="fixed",
                                   metadata={"tskd": "prediction"})
    correction.data[2, 1:5, 1:5] = 1
    loop.reset_choices()
    assert loop.labels.value is correction
    viewer.dims.set_point(0, 2)
    path = loop.add_slice()
    assert path.name == "corrected_scan_z0002.tif"
    assert (tskd_gui_env / "data" / "images" / "corrected_scan_z0002.tif").is_file()
    assert "1 correction(s)" in loop.status.value
    # the data re-exported from layers keeps the corrections
    assert data.use_data()
    assert (tskd_gui_env / "data" / "images" / "corrected_scan_z0002.tif").is_file()

    seen = {}

    def fake_rank(segmenter, images, teacher_segmenter=None, contrast_limits=None):
        seen["n"] = len(images)
        return [(1, 0.9), (0, 0.1)]

    monkeypatch.setattr(tskd.inference.predict, "rank_for_annotation", fake_rank)
    loop.suggest()
    assert loop.wait(30)
    assert seen["n"] == 2  # slices 1 and 3 are labelled, slice 2 corrected
    layer, z, score = loop.suggestion
    assert layer is image and z == 4 and score == pytest.approx(0.9)  # candidates 0 and 4
    assert viewer.dims.current_step[0] == 4
    assert not notes.errors()


def test_sample_data_opens(make_napari_viewer) -> None:
    pytest.importorskip("tskd.data.phantoms")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-tskd", "kidney_us")
    names = [layer.name for layer in viewer.layers]
    assert names == ["kidney_us", "kidney_us labels", "kidney_us unlabelled"]
    assert viewer.layers["kidney_us"].data.shape[0] == 8
    assert viewer.layers["kidney_us labels"].data.max() >= 1


@pytest.mark.parametrize("task", ["skin_lesion", "ct_abdomen"])
def test_sample_layers_per_task(task) -> None:
    pytest.importorskip("tskd.data.phantoms")
    from napari_tskd._sample_data import make_sample

    (img, img_kw, kind), (lab, lab_kw, lkind), (_rest, rest_kw, _) = make_sample(
        task, n_labelled=2, n_unlabelled=1, size=32)
    assert (kind, lkind) == ("image", "labels")
    assert img.shape[:3] == (2, 32, 32) and lab.shape == (2, 32, 32)
    assert img_kw["rgb"] == (task == "skin_lesion")
    if task == "ct_abdomen":
        assert img_kw["contrast_limits"] == rest_kw["contrast_limits"] == (864, 1264)
        assert lab_kw["metadata"]["class_names"][0] == "background"


def test_split_summary_agrees_with_backend() -> None:
    pytest.importorskip("tskd.data.dataset")
    from tskd.config import validation_count
    from tskd.data.dataset import split_train_val

    for n in range(0, 30):
        for fraction in (0.0, 0.1, 0.2, 0.25, 0.5, 0.9):
            assert validation_count(n, fraction) == len(
                split_train_val(list(range(n)), fraction, 0)[1])


def test_triton_guard_blocks_only_with_mesa_llvm(monkeypatch) -> None:
    import sys

    from napari_tskd import _torch_guard

    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.setattr(_torch_guard, "llvm_loaded", lambda: False)
    assert _torch_guard.prepare_torch_import() is False and "triton" not in sys.modules
    monkeypatch.setattr(_torch_guard, "llvm_loaded", lambda: True)
    assert _torch_guard.prepare_torch_import() is True and sys.modules["triton"] is None
    with pytest.raises(ImportError):
        import triton  # noqa: F401


def test_model_cache_keeps_student_and_teacher_and_reloads_changed_files(monkeypatch,
                                                                         tmp_path) -> None:
    from napari_tskd import _models

    loads = []

    def fake_load(folder, device="auto"):
        loads.append(Path(folder).name)
        return _models.LoadedModel(None, {}, Path(folder).name, Path(folder),
                                   _models.bundle_stamp(Path(folder)))

    monkeypatch.setattr(_models, "load", fake_load)
    folders = {}
    for name in ("student", "teacher", "other"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "meta.json").write_text("{}")
    cache = _models.ModelCache()
    student = cache.get(folders["student"])
    assert cache.get(folders["teacher"]) is not student
    assert cache.get(folders["student"]) is student  # both kept: suggest-by-disagreement
    assert loads == ["student", "teacher"]
    cache.get(folders["other"])  # a third evicts the least recently used (the teacher)
    cache.get(folders["teacher"])
    assert loads == ["student", "teacher", "other", "teacher"]
    stat = (folders["student"] / "meta.json").stat()
    os.utime(folders["student"] / "meta.json", (stat.st_atime, stat.st_mtime + 5))
    assert cache.get(folders["student"]) is not student  # retrained: files changed


def test_training_previews_become_the_plugins_own_layers(make_napari_viewer) -> None:
    from napari_tskd._base import PREVIEW_IMAGE, PREVIEW_LABELS
    from napari_tskd._student_widget import StudentWidget

    viewer = make_napari_viewer()
    mine = viewer.add_labels(np.ones((8, 8), np.uint8), name="my labels")
    widget = StudentWidget(viewer)
    rgb = np.zeros((8, 8, 3), np.uint8)
    first = np.zeros((8, 8), np.uint8)
    widget.panel._on_progress(_own_job(widget), {"stage": "finetune-student", "step": 1,
                                                 "total": 2, "loss": 0.5,
                                                 "preview": {"image": rgb, "labels": first}})
    assert viewer.layers[PREVIEW_LABELS].data.max() == 0
    assert widget.panel.plot.points == []  # a preview is not another loss point
    second = first.copy()
    second[2:5, 2:5] = 1
    widget.show_preview({"image": rgb, "labels": second}, "finetune-student")
    names = [layer.name for layer in viewer.layers]
    assert names.count(PREVIEW_LABELS) == 1 and names.count(PREVIEW_IMAGE) == 1  # updated
    assert viewer.layers[PREVIEW_LABELS].data.sum() == 9
    assert mine.data.min() == 1 and "my labels" in names  # the user's layer is untouched
    assert viewer.layers[PREVIEW_LABELS].translate[-1] > 8  # beside the data, not over it


def _own_job(widget):
    from napari_tskd._jobs import Job

    from tskd.config import RunConfig, to_dict

    job = Job("fake", [], to_dict(RunConfig(run_dir="somewhere")))
    job.owner = widget
    return job


def test_loop_corrections_of_layers_whose_names_collide_are_both_kept(
        make_napari_viewer, tskd_gui_env, notes) -> None:
    """`case 1` and `case.1` sanitise alike: their corrections get two files, not one."""
    pytest.importorskip("tskd.data.files")
    from napari_tskd._data_widget import DataWidget
    from napari_tskd._loop_widget import LoopWidget

    viewer = make_napari_viewer()
    img, lab = _stack(z=4)
    viewer.add_image(img, name="scan")
    viewer.add_labels(lab, name="scan labels")
    assert DataWidget(viewer).use_data()
    loop = LoopWidget(viewer)
    for name in ("case 1", "case.1"):
        layer = viewer.add_image(img[0], name=name)
        fix = viewer.add_labels(np.zeros((32, 32), np.uint8), name=f"{name} fix")
        fix.data[4:9, 4:9] = 1 if name == "case 1" else 2
        loop.reset_choices()
        loop.image.value, loop.labels.value = layer, fix
        loop.add_slice()
    labels = tskd_gui_env / "data" / "labels"
    assert sorted(p.name for p in labels.glob("corrected_*")) == [
        "corrected_case_1.tif", "corrected_case_1_2.tif"]
    from tskd.data import files

    assert files.read_label(labels / "corrected_case_1.tif").max() == 1
    assert files.read_label(labels / "corrected_case_1_2.tif").max() == 2
    assert any("saved as 'case_1_2'" in m for _, m in notes.all())
    # correcting `case 1` again replaces its own file, not the other layer's
    loop.image.value, loop.labels.value = viewer.layers["case 1"], viewer.layers["case 1 fix"]
    loop.add_slice()
    assert loop.status.value.startswith("replaced")
    assert len(list(labels.glob("corrected_*"))) == 2


def test_a_widget_device_is_the_run_device(make_napari_viewer, tskd_gui_env) -> None:
    """The device is set once per run: a fresh run takes the settings' device, the teacher form
    shows its stage's device from config.yaml, and each stage widget's Device becomes the run's
    device for its job (no stage keeping its own)."""
    from napari_tskd._loop_widget import LoopWidget
    from napari_tskd._student_widget import StudentWidget
    from napari_tskd._teacher_widget import TeacherWidget
    from napari_tskd._transfer_widget import TransferWidget

    from tskd.config import SYNTH_EPOCH_STEPS, RunConfig, save_config

    sections = ("teacher", "synth", "distill", "student", "predict")
    viewer = make_napari_viewer()
    t = TeacherWidget(viewer)
    fresh = t.context.config()  # no config.yaml yet: the settings' device ("cpu"), once
    assert fresh.device == "cpu" and fresh.teacher.train.device is None
    cfg = RunConfig(run_dir=str(tskd_gui_env), device="auto")
    cfg.teacher.train.device = "mps"  # a stage's own, written in the file
    cfg.synth.train.set_steps(120, SYNTH_EPOCH_STEPS)
    tskd_gui_env.mkdir(parents=True)
    save_config(cfg, t.context.paths().config)
    t.load_from_run()
    assert t.device.value == "mps"
    transfer = TransferWidget(viewer)
    assert transfer.train_steps.value == 120
    transfer.train_steps.value = 100
    for widget in (t, transfer, StudentWidget(viewer)):
        widget.device.value = "cpu"
        built = widget.build_config()
        assert built.device == "cpu" and {built.device_of(s) for s in sections} == {"cpu"}
        assert built.teacher.train.device is None
    synth = transfer.build_config().synth.train
    assert (synth.epochs, synth.max_steps) == (2, None)  # 100 steps: two epochs of 50
    loop = LoopWidget(viewer)
    loop.device.value = "cpu"
    started = []
    loop.start = lambda label, steps, cfg: started.append(cfg)  # type: ignore[method-assign]
    loop.retrain()
    assert started[0].device == "cpu" and started[0].device_of("teacher") == "cpu"
