"""The data widget reads labels through the one label policy (tskd.data.label_policy).

The widget only lists the viewer's layers, so these tests give it napari layers in a stand-in
viewer: they need Qt but no OpenGL canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")


class _Viewer:
    """A stand-in viewer: its layer list is all the data widget reads."""

    def __init__(self, layers: list) -> None:
        self.layers = layers


@pytest.fixture
def make_viewer(qapp):
    """A stand-in viewer holding napari layers (no canvas): ``make_viewer(*layers)``."""
    return lambda *layers: _Viewer(list(layers))


def _layers(img: np.ndarray, lab: np.ndarray, lab_name: str = "scan labels") -> list:
    import napari.layers

    return [napari.layers.Image(img, name="scan"), napari.layers.Labels(lab, name=lab_name)]


def _pair(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((size, size), np.uint8)
    img[4:12, 4:12] = 120
    img[20:28, 20:28] = 240
    lab = np.zeros((size, size), np.int64)
    lab[4:12, 4:12] = 1
    lab[20:28, 20:28] = 5
    return img, lab


def test_layer_labels_with_gaps_show_the_map(make_viewer, tskd_gui_env, notes) -> None:
    from napari_tskd._data_widget import DataWidget

    from tskd.data import files

    img, lab = _pair()
    w = DataWidget(make_viewer(*_layers(img, lab)))
    assert "classes 1, 5, read as 3 classes {0: 0, 1: 1, 5: 2}" in w.summary.value
    assert w.use_data()
    warned = [m for s, m in notes.all() if s.lower() == "warning"]
    assert any("{0: 0, 1: 1, 5: 2}" in m for m in warned)
    written = files.read_label(tskd_gui_env / "data" / "labels" / "scan.tif")
    np.testing.assert_array_equal(written, lab)  # the user's ids are kept on disk
    assert not notes.errors()


def test_layer_with_too_many_values_is_refused_before_writing(make_viewer, tskd_gui_env,
                                                             notes) -> None:
    from napari_tskd._data_widget import DataWidget

    img, _ = _pair()
    lab = (np.arange(32 * 32).reshape(32, 32) % 100).astype(np.int64)  # 100 grey values
    w = DataWidget(make_viewer(*_layers(img, lab, "smooth")))
    assert "labels cannot be used" in w.summary.value and "more than 64" in w.summary.value
    assert not w.use_data()
    assert "holds 100 distinct label values, more than 64" in notes.errors()[-1]
    assert not (tskd_gui_env / "data").exists()


def test_folder_with_0_255_and_0_1_masks_exports_two_classes(make_viewer, tskd_gui_env,
                                                            tmp_path: Path, notes) -> None:
    from napari_tskd._data_widget import DataWidget

    from tskd.data import files, samples

    src = tmp_path / "src"
    img, lab = _pair()
    binary = (lab > 0).astype(np.uint8)
    files.write_image(src / "images" / "a.png", img)
    files.write_label(src / "labels" / "a.png", binary * 255)
    files.write_image(src / "images" / "b.png", img)
    files.write_label(src / "labels" / "b.png", binary)
    before = (src / "labels" / "a.png").read_bytes()
    w = DataWidget(make_viewer())
    w.source.value = "folder"
    w.labelled_folder.value = str(src)
    assert w.use_data()
    for name in ("a", "b"):
        written = files.read_label(tskd_gui_env / "data" / "labels" / f"{name}.tif")
        assert set(np.unique(written).tolist()) == {0, 1}
    assert any("binary label map" in m for s, m in notes.all() if s.lower() == "warning")
    assert (src / "labels" / "a.png").read_bytes() == before  # the user's folder is only read
    _, lmap = samples.read_labelled_set(tskd_gui_env / "data")
    assert lmap.values == (0, 1)


def test_loaded_model_segments_with_the_users_label_values(tmp_path: Path) -> None:
    """The Segment and Loop widgets show (and corrections keep) label values 0, 1, 5."""
    from napari_tskd._models import ValueSegmenter, label_values, load

    from tskd.config import StudentConfig
    from tskd.inference import bundle
    from tskd.models.student import Student

    student = Student(StudentConfig(embed_dim=16, depth=1, num_heads=2, decoder_channels=8), 3,
                      32)
    bundle.save_student(student, tmp_path / "m", {"label_values": [0, 1, 5],
                                                  "class_names": ["bg", "a", "b"]})
    model = load(tmp_path / "m", device="cpu")
    assert isinstance(model.segmenter, ValueSegmenter)
    assert label_values(model.meta) == (0, 1, 5) and model.segmenter.num_classes == 3
    image = np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)
    indices = model.segmenter._segmenter.segment(image)
    np.testing.assert_array_equal(model.segmenter.segment(image),
                                  np.array([0, 1, 5])[indices])
    assert label_values({"num_classes": 2}) == (0, 1)  # bundles from before the label map
