"""The correction loop never saves a wrong pair: a prediction layer records the image it was made
from, the Loop tab follows the layer the user paints in and its recorded image, and *Add*
refuses a pair whose shapes or provenance do not match. Re-segmenting updates one layer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")

ADD = "Add displayed slice to training set"


class Threshold:
    """A stand-in segmenter: pixels above ``level`` are class 1 (``delay`` s per call)."""

    def __init__(self, level: int = 127, delay: float = 0.0) -> None:
        self.level, self.delay = level, delay

    def segment(self, image, is_stack=None, contrast_limits=None):
        time.sleep(self.delay)
        image = np.asarray(image)
        if image.ndim == 3:
            image = image.max(axis=-1)
        return (image > self.level).astype(np.int64)


@pytest.fixture
def fake(monkeypatch):
    """Install a stand-in model (any folder) into a widget's model cache; returns a setter to
    swap the model, as a retrain does (same folder, new weights)."""
    from napari_tskd._models import LoadedModel

    state = {"model": None, "load_s": 0.0}

    def make(level: int = 127, delay: float = 0.0) -> LoadedModel:
        return LoadedModel(Threshold(level, delay), {"num_classes": 2}, "run1/student",
                           Path("/nonexistent/student"), ())

    def get(folder, device="auto"):
        time.sleep(state["load_s"])
        return state["model"]

    def install(widget, level: int = 127, delay: float = 0.0, load_s: float = 0.0):
        state["model"], state["load_s"] = make(level, delay), load_s
        monkeypatch.setattr(widget.context.models, "get", get)
        monkeypatch.setattr(widget.context.models, "meta", lambda folder: {"num_classes": 2},
                            raising=False)
        return state["model"]

    return install


def _labelled_run(ctx) -> None:
    """A run folder whose labelled set is its own (what 'Use this data' leaves behind)."""
    from tskd.config import save_config

    cfg = ctx.config()
    cfg.data.labelled = str(ctx.paths().data)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, ctx.paths().config)


def _sample_loop(make_napari_viewer, fake):
    from napari_tskd._loop_widget import LoopWidget
    from napari_tskd._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-tskd", "kidney_us")
    seg = SegmentWidget(viewer)
    loop = LoopWidget(viewer)
    fake(seg)
    _labelled_run(loop.context)
    return viewer, seg, loop


def _saved(run: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    from tskd.data import files

    return (files.read_image(run / "data" / "images" / f"{stem}.tif"),
            files.read_label(run / "data" / "labels" / f"{stem}.tif"))


def test_a_prediction_of_the_unlabelled_stack_is_paired_with_that_stack(
        make_napari_viewer, fake, tskd_gui_env, notes) -> None:
    """Issue (a): the Loop paired 'kidney_us' (the training stack) with the prediction made on
    'kidney_us unlabelled' and saved the wrong image with those labels."""
    from napari_tskd import _layers

    viewer, seg, loop = _sample_loop(make_napari_viewer, fake)
    unlabelled, training = viewer.layers["kidney_us unlabelled"], viewer.layers["kidney_us"]
    seg.image.value = unlabelled  # preselected now (see the test below); the user's choice
    viewer.dims.set_point(0, 2)
    pred = seg.segment()
    assert seg.wait(10)
    loop.reset_choices()  # what napari does when layers change
    pred.paint((2, 100, 100), 1)  # the user's correction (napari's undoable brush)
    path = loop.add_slice()
    assert path is not None and path.name == "corrected_kidney_us_unlabelled_z0002.tif"
    image, label = _saved(tskd_gui_env, "corrected_kidney_us_unlabelled_z0002")
    np.testing.assert_array_equal(image, _layers.training_image(unlabelled, 2))
    np.testing.assert_array_equal(label, pred.data[2])
    assert loop.labels.value is pred and loop.image.value is unlabelled
    assert seg.status.value.endswith("; done")
    assert pred.metadata["image"] == "kidney_us unlabelled"
    assert pred.metadata["image_shape"] == [8, 256, 256]
    assert pred.metadata["image_id"] == _layers.fingerprint(unlabelled)
    assert unlabelled.visible  # the image under the prediction is the one it was made from
    assert viewer.layers.selection.active is pred
    before = path.read_bytes()
    # the user picks the training stack by hand: refused, naming both layers and the button
    loop.image.value = training
    assert loop.add_slice() is None
    assert notes.errors()[-1] == (
        "labels layer 'run1/student segmentation' was segmented from image layer "
        f"'kidney_us unlabelled', not from 'kidney_us'; choose 'kidney_us unlabelled' as Image "
        f"layer before pressing '{ADD}'")
    assert path.read_bytes() == before
    assert not (tskd_gui_env / "data" / "labels" / "corrected_kidney_us_z0002.tif").exists()


def test_after_retrain_the_correction_painted_in_the_active_layer_is_saved(
        make_napari_viewer, fake, tskd_gui_env, notes) -> None:
    """Issue (b): after Retrain + Segment the new prediction was active but 'Corrected labels'
    stayed on the old layer, so the old, uncorrected labels were saved. Now Segment updates
    the one layer (undoable) and the Loop follows the layer the user paints in."""
    viewer, seg, loop = _sample_loop(make_napari_viewer, fake)
    viewer.dims.set_point(0, 3)
    first = seg.segment()
    assert seg.wait(10)
    loop.reset_choices()  # what napari does when layers change
    loop.image.value = viewer.layers["kidney_us unlabelled"]
    old = first.data.copy()
    fake(seg, level=60)  # "Retrain student": same folder, other weights
    seg.segment()
    assert seg.wait(10)
    loop.reset_choices()
    painting = viewer.layers.selection.active  # where the user's brush goes
    painting.paint((3, 50, 50), 1, refresh=True)
    assert loop.add_slice() is not None
    _, label = _saved(tskd_gui_env, "corrected_kidney_us_unlabelled_z0003")
    np.testing.assert_array_equal(label, painting.data[3])
    assert not notes.errors()
    predictions = [ly for ly in viewer.layers if ly.metadata.get("tskd") == "prediction"]
    assert predictions == [first] and painting is first  # no [1], [2], ... pile
    assert loop.labels.value is painting
    assert not np.array_equal(first.data[3][old[3] == 0], old[3][old[3] == 0])  # new model
    assert seg.status.value.endswith("; done")


def test_loop_follows_the_labels_layer_the_user_selects(make_napari_viewer, fake) -> None:
    """Selecting another Labels layer to paint in makes it 'Corrected labels'; its recorded
    image becomes 'Image layer'; the training preview is never a choice."""
    from napari_tskd._own_layers import show_preview

    viewer, seg, loop = _sample_loop(make_napari_viewer, fake)
    pred = seg.segment()
    assert seg.wait(10)
    user = viewer.layers["kidney_us labels"]
    viewer.layers.selection.active = user
    assert loop.labels.value is user  # the image follows the name: '<image> labels'
    assert loop.image.value is viewer.layers["kidney_us"]
    viewer.layers.selection.active = pred
    assert loop.labels.value is pred and loop.image.value is viewer.layers["kidney_us unlabelled"]
    show_preview(viewer, {"image": np.zeros((16, 16, 3), np.uint8),
                          "labels": np.zeros((16, 16), np.uint8)}, "finetune-student")
    loop.reset_choices()
    names = [ly.name for ly in loop.labels.choices] + [ly.name for ly in loop.image.choices]
    assert "TS-KD preview" not in names and "TS-KD preview image" not in names


def test_user_labels_named_after_another_image_are_refused(make_napari_viewer, fake,
                                                          tskd_gui_env, notes) -> None:
    """Labels without recorded provenance, named '<image> labels' after another open image of
    the same shape: refused (the sample's labels with its unlabelled stack)."""
    viewer, _seg, loop = _sample_loop(make_napari_viewer, fake)
    loop.reset_choices()
    loop.labels.value = viewer.layers["kidney_us labels"]
    loop.image.value = viewer.layers["kidney_us unlabelled"]
    assert loop.add_slice() is None
    assert notes.errors()[-1] == (
        "labels layer 'kidney_us labels' is named after image layer 'kidney_us', not "
        "'kidney_us unlabelled'; choose 'kidney_us' as Image layer (or rename the labels layer) "
        f"before pressing '{ADD}'")
    assert not (tskd_gui_env / "data" / "labels").exists()
    loop.image.value = viewer.layers["kidney_us"]
    assert loop.add_slice() is not None  # the right pair goes through


def test_live_update_never_takes_the_selection(make_napari_viewer, fake, qtbot) -> None:
    viewer, seg, _loop = _sample_loop(make_napari_viewer, fake)
    unlabelled = viewer.layers["kidney_us unlabelled"]
    pred = seg.segment()
    assert seg.wait(10)
    pred.paint((3, 5, 5), 1)  # a correction: a change of pixels now needs a new layer
    mine = viewer.layers["kidney_us labels"]
    viewer.layers.selection.active = mine
    seg.live.value = True
    unlabelled.data = unlabelled.data[:, ::-1].copy()
    qtbot.waitUntil(lambda: len([ly for ly in viewer.layers
                                 if ly.metadata.get("tskd") == "prediction"]) == 2, timeout=10000)
    assert seg.wait(10)
    assert viewer.layers.selection.active is mine and not pred.visible


@pytest.mark.parametrize("fault", ["shape", "changed", "renamed"])
def test_add_checks_shape_and_provenance(make_napari_viewer, fake, tskd_gui_env, notes,
                                         fault) -> None:
    """Sibling faults: another shape is refused; the image's pixels changed since it was
    segmented is refused; a renamed image with the same pixels is still its source."""
    viewer, seg, loop = _sample_loop(make_napari_viewer, fake)
    unlabelled = viewer.layers["kidney_us unlabelled"]
    pred = seg.segment()
    assert seg.wait(10)
    assert loop.labels.value is pred
    if fault == "shape":
        small = viewer.add_image(np.zeros((8, 128, 128), np.uint8), name="small")
        loop.reset_choices()
        loop.image.value, loop.labels.value = small, pred
        expected = ("image layer 'small' (8, 128, 128) and labels layer 'run1/student "
                    "segmentation' (8, 256, 256) differ in shape; choose the labels painted on "
                    f"'small' before pressing '{ADD}'")
    elif fault == "changed":
        unlabelled.data = unlabelled.data[:, ::-1].copy()
        expected = ("image layer 'kidney_us unlabelled' has changed since labels layer "
                    "'run1/student segmentation' was segmented from it; press 'Segment' again "
                    f"and correct the new prediction before pressing '{ADD}'")
    else:
        unlabelled.name = "renamed stack"
        loop.image.value = unlabelled
        assert loop.add_slice() is not None and not notes.errors()
        return
    assert loop.add_slice() is None
    assert notes.errors()[-1] == expected
    assert not (tskd_gui_env / "data" / "labels").exists()  # nothing written


def test_resegmenting_is_one_undo_step_per_slice_and_keeps_painted_slices(
        make_napari_viewer, fake) -> None:
    from napari_tskd._segment_widget import STACK_MODES

    viewer, seg, _loop = _sample_loop(make_napari_viewer, fake)
    seg.stack_mode.value = STACK_MODES[2]  # displayed slice only
    viewer.dims.set_point(0, 1)
    layer = seg.segment()
    assert seg.wait(10) and seg.status.value.endswith("; done")
    old = layer.data[1].copy()
    fake(seg, level=60)
    seg.segment()
    assert seg.wait(10)
    assert not np.array_equal(layer.data[1], old)
    layer.undo()  # napari's Ctrl+Z: the earlier prediction is back
    np.testing.assert_array_equal(layer.data[1], old)
    assert seg.session.edited == set()  # our own writes are not the user's edits
    layer.paint((1, 5, 5), 1)
    fake(seg, level=200)
    seg.segment()
    assert seg.wait(10)
    assert "1 slice(s) you painted kept; done" in seg.status.value
    assert layer.data[1, 5, 5] == 1


def test_plugin_layers_land_beside_the_data_visible_and_never_selected(
        make_napari_viewer, tmp_path) -> None:
    from napari_tskd._own_layers import PREVIEW_IMAGE, PREVIEW_LABELS, SYNTHETIC, show_preview
    from napari_tskd._transfer_widget import TransferWidget

    from tskd.data import files

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 40, 60), np.uint8), name="scan")
    mine = viewer.add_labels(np.zeros((4, 40, 60), np.uint8), name="my labels")
    assert viewer.layers.selection.active is mine
    preview = {"image": np.zeros((32, 32, 3), np.uint8), "labels": np.ones((32, 32), np.uint8)}
    show_preview(viewer, preview, "distill")
    show_preview(viewer, preview, "distill")  # an update: the same two layers
    folder = tmp_path / "synthetic"
    folder.mkdir()
    for k in range(3):
        files.write_image(folder / f"s{k}.png", np.full((24, 24), 40 * k, np.uint8))
    transfer = TransferWidget(viewer)
    synthetic = transfer.show_images(paths=sorted(folder.iterdir()))
    assert viewer.layers.selection.active is mine and set(viewer.layers.selection) == {mine}
    names = [ly.name for ly in viewer.layers]
    assert names.count(PREVIEW_IMAGE) == names.count(PREVIEW_LABELS) == names.count(SYNTHETIC) == 1
    for name in (PREVIEW_IMAGE, PREVIEW_LABELS, SYNTHETIC):
        layer = viewer.layers[name]
        assert layer.visible
        assert layer.extent.world[0][-1] >= 60  # right of the user's data, never over it
    assert synthetic.data.shape == (3, 24, 24)
    ext = viewer.layers.extent.world
    assert viewer.camera.center[-1] == pytest.approx((ext[0][-1] + ext[1][-1]) / 2, abs=1)


def test_sample_unlabelled_stack_is_preselected_only_when_it_appears(make_napari_viewer,
                                                                      fake) -> None:
    from napari_tskd._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.open_sample("napari-tskd", "kidney_us")
    seg.reset_choices()
    assert seg.image.value is viewer.layers["kidney_us unlabelled"]
    seg.image.value = viewer.layers["kidney_us"]  # the user's choice
    viewer.add_image(np.zeros((8, 8), np.uint8), name="other")
    seg.reset_choices()
    assert seg.image.value is viewer.layers["kidney_us"]


def _gaps_while(app, action, done, timeout: float = 30.0) -> float:
    """Longest gap (ms) between 10 ms timer ticks while ``action()`` runs until ``done()``."""
    from qtpy.QtCore import QTimer

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    end = time.monotonic() + 0.2
    while time.monotonic() < end:  # let the timer tick first
        app.processEvents()
        time.sleep(0.002)
    action()
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    assert done(), "did not finish"
    return max(1000 * (b - a) for a, b in zip(stamps, stamps[1:]))


def test_segment_and_suggest_never_block_the_event_loop(make_napari_viewer, fake, monkeypatch,
                                                        qapp) -> None:
    """A model that takes 1 s to load and 0.3 s per slice, a ranking of 0.8 s: the viewer's
    event loop never waits 100 ms (Segment and Suggest used to run these in the GUI thread).
    The first Segment of an image also adds the prediction layer: napari's own add_labels
    (0.2-0.4 s with software OpenGL) is left out, as the first import of torch is."""
    from napari_tskd._models import import_backend

    import tskd.inference.predict

    import_backend(ranking=True)  # the one allowed wait: the first heavy imports, once
    viewer, seg, loop = _sample_loop(make_napari_viewer, fake)
    seg.segment()  # the prediction layer now exists
    assert seg.wait(10)
    fake(seg, delay=0.3, load_s=1.0)  # "Retrain": a new model to load, then Segment again
    seg_gap = _gaps_while(qapp, seg.segment, lambda: seg.status.value.endswith("done"))
    assert seg.session.done == set(range(8))

    def slow_rank(segmenter, images, teacher_segmenter=None, contrast_limits=None):
        time.sleep(0.8)
        return [(1, 0.9), (0, 0.1)]

    monkeypatch.setattr(tskd.inference.predict, "rank_for_annotation", slow_rank)
    loop.image.value = viewer.layers["kidney_us unlabelled"]
    rank_gap = _gaps_while(qapp, loop.suggest, lambda: loop.suggestion is not None)
    print(f"longest event-loop gap: segment {seg_gap:.0f} ms, suggest {rank_gap:.0f} ms")
    assert seg_gap < 100 and rank_gap < 100
