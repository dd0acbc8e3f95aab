"""Reading labelled and unlabelled sets: layouts, stacks, and a clear error for each bad input."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tskd import io
from tskd.errors import TskdInputError, TskdWarning


def _write_set(root: Path, n: int = 3, size: int = 16) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        io.write_image(root / "images" / f"c{i}.png", rng.integers(0, 255, (size, size), np.uint8))
        io.write_label(root / "labels" / f"c{i}.png", (rng.random((size, size)) > 0.5) * 1)


def test_images_labels_layout(tmp_path: Path) -> None:
    _write_set(tmp_path)
    samples = io.load_labelled(tmp_path)
    assert [s.name for s in samples] == ["c0", "c1", "c2"]
    assert samples[0].label.dtype == np.int64 and samples[0].image.shape == (16, 16)


def test_nnunet_layout_merges_channels_and_reads_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for case in ("a", "b"):
        for ch in range(2):
            tifffile.imwrite(tmp_path / "imagesTr" / f"{case}_{ch:04d}.tif",
                             rng.integers(0, 4000, (8, 8), np.uint16)) if (
                tmp_path / "imagesTr").mkdir(exist_ok=True) is None else None
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "labelsTr" / f"{case}.tif", np.eye(8, dtype=np.uint8) * 2)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1,
                                                                   "kidney": 2}}))
    samples = io.load_labelled(tmp_path)
    assert len(samples) == 2 and samples[0].image.shape == (8, 8, 2)
    assert io.class_names(tmp_path) == ["background", "liver", "kidney"]


def test_stack_slices_with_labels_become_samples(tmp_path: Path) -> None:
    image = np.zeros((5, 8, 8), np.uint16)
    label = np.zeros((5, 8, 8), np.uint8)
    label[1, 2:4, 2:4] = 1
    label[3, 0, 0] = 2
    io.write_image(tmp_path / "images" / "vol.tif", image)
    io.write_label(tmp_path / "labels" / "vol.tif", label)
    samples = io.load_labelled(tmp_path)
    assert [s.name for s in samples] == ["vol_z001", "vol_z003"]
    unl = io.load_unlabelled(tmp_path / "images")
    assert len(unl) == 5 and unl[0].label is None


def test_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match="not found"):
        io.load_labelled(tmp_path / "nope")
    with pytest.raises(TskdInputError, match="file not found"):
        io.read_image(tmp_path / "x.png")
    with pytest.raises(TskdInputError, match="must hold images/ and labels/"):
        io.load_labelled(tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    _write_set(tmp_path, n=1)
    (tmp_path / "images" / "c0.png").write_bytes(b"not a png")
    with pytest.raises(TskdInputError, match=r"c0\.png: cannot read"):
        io.load_labelled(tmp_path)


def test_size_mismatch(tmp_path: Path) -> None:
    _write_set(tmp_path, n=1)
    io.write_label(tmp_path / "labels" / "c0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(TskdInputError, match="differ in size"):
        io.load_labelled(tmp_path)


def test_non_integer_and_negative_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(TskdInputError, match="non-integer"):
        io.read_label(tmp_path / "f.npy")
    np.save(tmp_path / "n.npy", np.full((4, 4), -1, np.int16))
    with pytest.raises(TskdInputError, match="negative"):
        io.read_label(tmp_path / "n.npy")
    np.save(tmp_path / "ok.npy", np.ones((4, 4), np.float32))
    assert io.read_label(tmp_path / "ok.npy").dtype == np.int64


def test_no_labelled_image(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    io.write_image(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.warns(TskdWarning, match="no label file"), pytest.raises(
            TskdInputError, match="no labelled image"):
        io.load_labelled(tmp_path)


def test_mixed_channel_counts_are_converted_with_one_warning(tmp_path: Path) -> None:
    _write_set(tmp_path, n=3)
    io.write_image(tmp_path / "images" / "c0.png", np.zeros((16, 16, 3), np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = io.load_labelled(tmp_path)
    msgs = [str(w.message) for w in caught if issubclass(w.category, TskdWarning)]
    assert len(msgs) == 1 and "converted 1 image" in msgs[0]
    assert {s.image.shape for s in samples} == {(16, 16)}


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(TskdInputError, match="unsupported file type"):
        io.read_image(tmp_path / "a.bmp")
