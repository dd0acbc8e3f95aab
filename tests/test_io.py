"""tskd.data.axes, files, folders and samples: files, layouts (images/+labels/, nnU-Net raw),
stacks, one clear error per bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tskd.data import decode, files, folders
from tskd.data.samples import load_labelled, load_unlabelled, read_labelled_set
from tskd.errors import TskdInputError, TskdWarning

RNG = np.random.default_rng(0)


def _gray(size: int = 16) -> np.ndarray:
    return RNG.integers(0, 255, (size, size), np.uint8)


def _mask(size: int = 16, value: int = 1) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[2:6, 3:9] = value
    return m


def _write_set(root: Path, n: int = 3, size: int = 16) -> None:
    for i in range(n):
        files.write_image(root / "images" / f"c{i}.png", _gray(size))
        files.write_label(root / "labels" / f"c{i}.png", _mask(size))


def _tskd_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TskdWarning)]


# ------------------------------------------------------------------- files


def test_list_images_filters_sorts_and_skips_hidden(tmp_path: Path) -> None:
    for name in ("b.png", "a.TIF", "c.npy", ".hidden.png", "notes.txt", "d.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in files.list_images(tmp_path)] == ["a.TIF", "b.png", "c.npy", "d.jpeg"]
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy"} == decode.IMAGE_SUFFIXES
    with pytest.raises(TskdInputError, match="folder not found: .*nope"):
        files.list_images(tmp_path / "nope")


def test_stem_pairs_image_and_label_names() -> None:
    assert files.stem(Path("x/case_01.tif")) == "case_01"
    assert files.stem("a.b.PNG") == "a.b"
    assert files.stem("scan.nii.gz") == "scan.nii.gz"  # not ours: left whole


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("gray.png", RNG.integers(0, 255, (9, 7), np.uint8)),
        ("deep.png", RNG.integers(0, 65535, (9, 7), np.uint16)),
        ("rgb.png", RNG.integers(0, 255, (9, 7, 3), np.uint8)),
        ("u16.tif", RNG.integers(0, 65535, (9, 7), np.uint16)),
        ("float.tiff", RNG.random((9, 7, 2)).astype(np.float32)),
        ("stack.tif", RNG.integers(0, 4000, (3, 9, 7), np.uint16)),  # 3 slices, not RGB
        ("stack_rgb.tif", RNG.integers(0, 255, (2, 9, 7, 3), np.uint8)),
        ("arr.npy", RNG.normal(size=(9, 7)).astype(np.float64)),
    ],
)
def test_write_then_read_round_trips(tmp_path: Path, name: str, array: np.ndarray) -> None:
    out = files.read_image(files.write_image(tmp_path / name, array))
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_jpg_is_read_with_its_shape(tmp_path: Path) -> None:
    image = np.full((8, 10, 3), 128, np.uint8)
    out = files.read_image(files.write_image(tmp_path / "a.jpg", image))
    assert out.shape == (8, 10, 3) and abs(int(out[4, 4, 0]) - 128) <= 2


def test_tif_channel_axes_are_moved_last(tmp_path: Path) -> None:
    planar = RNG.integers(0, 255, (3, 8, 6), np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    assert files.read_image(tmp_path / "planar.tif").shape == (8, 6, 3)
    hyper = RNG.integers(0, 255, (4, 2, 8, 6), np.uint8)  # ImageJ Z, C, Y, X
    tifffile.imwrite(tmp_path / "hyper.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    out = files.read_image(tmp_path / "hyper.tif")
    assert out.shape == (4, 8, 6, 2)
    np.testing.assert_array_equal(out[..., 1], hyper[:, 1])


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match=r"file not found: .*x\.png"):
        files.read_image(tmp_path / "x.png")
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(TskdInputError, match=r"a\.bmp: unsupported file type '\.bmp'"):
        files.read_image(tmp_path / "a.bmp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(TskdInputError, match=r"cannot read .*broken\.png: .*corrupt"):
        files.read_image(tmp_path / "broken.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(TskdInputError, match=r"cannot read .*broken\.tif"):
        files.read_image(tmp_path / "broken.tif")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TskdInputError, match=r"cannot read .*obj\.npy"):  # no pickles
        files.read_image(tmp_path / "obj.npy")
    np.save(tmp_path / "line.npy", np.zeros(5))
    with pytest.raises(TskdInputError, match=r"line\.npy: not an image \(shape \(5,\)\)"):
        files.read_image(tmp_path / "line.npy")


def test_read_label_accepts_integer_maps_in_many_forms(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.array([[0.0, 2.0], [1.0, 0.0]], np.float32))
    out = files.read_label(tmp_path / "f.npy")
    assert out.dtype == np.int64 and out.tolist() == [[0, 2], [1, 0]]
    np.save(tmp_path / "b.npy", np.eye(3, dtype=bool))
    assert files.read_label(tmp_path / "b.npy").tolist() == np.eye(3, dtype=int).tolist()
    pal = Image.fromarray(_mask(8, 2), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "palette.png")  # read as RGB it would be colours, not classes
    np.testing.assert_array_equal(files.read_label(tmp_path / "palette.png"), _mask(8, 2))
    files.write_image(tmp_path / "grayrgb.png", np.repeat(_mask(8, 3)[..., None], 3, axis=-1))
    np.testing.assert_array_equal(files.read_label(tmp_path / "grayrgb.png"), _mask(8, 3))


def test_read_label_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "frac.npy", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(TskdInputError, match=r"frac\.npy: label map has non-integer values"):
        files.read_label(tmp_path / "frac.npy")
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan, np.float32))
    with pytest.raises(TskdInputError, match=r"nan\.npy: label map has non-integer"):
        files.read_label(tmp_path / "nan.npy")
    np.save(tmp_path / "neg.npy", np.full((4, 4), -1, np.int16))
    with pytest.raises(TskdInputError, match=r"neg\.npy: label map has negative values"):
        files.read_label(tmp_path / "neg.npy")
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    files.write_image(tmp_path / "colour.png", colour)
    with pytest.raises(TskdInputError, match=r"colour\.png: a label map must have one channel"):
        files.read_label(tmp_path / "colour.png")


def test_write_errors_and_label_types(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match=r"a\.png: \.png cannot hold float32 data; use \.tif"):
        files.write_image(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(TskdInputError, match=r"a\.bmp: unsupported file type"):
        files.write_image(tmp_path / "a.bmp", np.zeros((4, 4), np.uint8))
    with pytest.raises(TskdInputError, match="negative"):
        files.write_label(tmp_path / "l.png", np.full((4, 4), -2))
    small = files.write_label(tmp_path / "s.tif", np.ones((4, 4), np.int64))
    assert files.read_image(small).dtype == np.uint8
    big = np.full((4, 4), 300, np.int64)
    assert files.read_image(files.write_label(tmp_path / "b.png", big)).dtype == np.uint16
    np.testing.assert_array_equal(files.read_label(tmp_path / "b.png"), big)


# ------------------------------------------------------------ labelled sets


def test_images_labels_layout_pairs_by_stem_across_types(tmp_path: Path) -> None:
    _write_set(tmp_path, n=2)
    files.write_image(tmp_path / "images" / "t.tif", RNG.integers(0, 4000, (16, 16), np.uint16))
    np.save(tmp_path / "labels" / "t.npy", _mask(16, 2).astype(np.int32))
    samples = load_labelled(tmp_path)
    assert [s.name for s in samples] == ["c0", "c1", "t"]
    assert all(s.label is not None and s.label.dtype == np.int64 for s in samples)
    assert samples[2].image.dtype == np.uint16 and samples[2].label.max() == 2


def test_images_without_labels_warn_and_are_left_out(tmp_path: Path) -> None:
    _write_set(tmp_path, n=2)
    files.write_image(tmp_path / "images" / "extra.png", _gray())
    with pytest.warns(TskdWarning, match=r"1 image\(s\) .* no label file .*ignored for training "
                                         r"\(e\.g\. extra\)"):
        samples = load_labelled(tmp_path)
    assert [s.name for s in samples] == ["c0", "c1"]


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match="labelled data folder not found: .*nope"):
        load_labelled(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(TskdInputError, match=r"must hold images/ and labels/ \(or nnU-Net"):
        load_labelled(tmp_path)
    (tmp_path / "nn" / "imagesTr").mkdir(parents=True)
    with pytest.raises(TskdInputError, match="has imagesTr/ but no labelsTr/"):
        load_labelled(tmp_path / "nn")


def test_no_labelled_image_says_why(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    files.write_image(tmp_path / "images" / "a.png", _gray())
    files.write_label(tmp_path / "labels" / "a_mask.png", _mask())
    with pytest.warns(TskdWarning, match="no label file"), pytest.raises(
        TskdInputError, match="no labelled image found in .*: no image has a label file of the "
                              r"same name \(e\.g\. image a, label a_mask\)"
    ):
        load_labelled(tmp_path)
    files.write_label(tmp_path / "labels" / "a.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(TskdInputError, match="no labelled image found .*all label maps are empty"):
        load_labelled(tmp_path)
    files.write_image(tmp_path / "images" / "b.png", _gray())
    files.write_label(tmp_path / "labels" / "b.png", _mask())
    assert [s.name for s in load_labelled(tmp_path)] == ["a", "b"]  # background-only kept


def test_unsupported_files_only(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.bmp").write_bytes(b"x")
    (tmp_path / "images" / "b.nii.gz").write_bytes(b"x")
    with pytest.raises(TskdInputError, match=r"no image found in .*images: files of type "
                                             r"\.bmp, \.nii\.gz are not supported"):
        load_labelled(tmp_path)


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _write_set(tmp_path, n=1)
    files.write_label(tmp_path / "labels" / "c0.png", np.zeros((8, 16), np.uint8))
    with pytest.raises(TskdInputError, match=r"c0\.png and its label c0\.png differ in size: "
                                             r"image \(16, 16\), label \(8, 16\)"):
        load_labelled(tmp_path)


def test_bad_label_in_a_set_names_the_label_file(tmp_path: Path) -> None:
    _write_set(tmp_path, n=2)
    (tmp_path / "labels" / "c1.png").unlink()
    np.save(tmp_path / "labels" / "c1.npy", np.full((16, 16), 0.5))
    with pytest.raises(TskdInputError, match=r"labels/c1\.npy: label map has non-integer"):
        load_labelled(tmp_path)


def test_duplicate_stems_are_an_error(tmp_path: Path) -> None:
    _write_set(tmp_path, n=1)
    files.write_image(tmp_path / "images" / "c0.tif", _gray())
    with pytest.raises(TskdInputError, match=r"c0\.png and c0\.tif have the same name"):
        load_labelled(tmp_path)


def test_channels_first_image_is_laid_out_like_its_label(tmp_path: Path) -> None:
    image = RNG.integers(0, 255, (2, 16, 12), np.uint8)
    (tmp_path / "images").mkdir()
    np.save(tmp_path / "images" / "a.npy", image)
    files.write_label(tmp_path / "labels" / "a.png", np.ones((16, 12), np.uint8))
    (sample,) = load_labelled(tmp_path)
    assert sample.image.shape == (16, 12, 2)
    np.testing.assert_array_equal(sample.image[..., 1], image[1])


def test_binary_masks_saved_as_255_become_class_1(tmp_path: Path) -> None:
    for i in range(2):
        files.write_image(tmp_path / "images" / f"c{i}.png", _gray())
        files.write_label(tmp_path / "labels" / f"c{i}.png", _mask(value=255))
    with pytest.warns(TskdWarning, match="only 0 and 255; reading them as background/foreground"):
        samples, label_map = read_labelled_set(tmp_path)
    assert {int(v) for s in samples for v in np.unique(s.label)} == {0, 1}
    assert label_map.values == (0, 255)


def test_multiclass_255_is_its_own_class_with_a_printed_map(tmp_path: Path) -> None:
    files.write_image(tmp_path / "images" / "a.png", _gray())
    label = _mask(value=255)
    label[10, 10] = 3
    files.write_label(tmp_path / "labels" / "a.png", label)
    with pytest.warns(TskdWarning, match=r"\{0: 0, 3: 1, 255: 2\}"):
        (sample,), label_map = read_labelled_set(tmp_path)
    assert sample.label.max() == 2 and label_map.values == (0, 3, 255)


# --------------------------------------------------------------------- stacks


def test_stack_slices_with_labels_become_samples(tmp_path: Path) -> None:
    image = RNG.integers(0, 4000, (5, 8, 8), np.uint16)
    label = np.zeros((5, 8, 8), np.uint8)
    label[1, 2:4, 2:4] = 1
    label[3, 0, 0] = 2
    files.write_image(tmp_path / "images" / "vol.tif", image)
    files.write_label(tmp_path / "labels" / "vol.tif", label)
    samples = load_labelled(tmp_path)
    assert [s.name for s in samples] == ["vol_z0001", "vol_z0003"]
    np.testing.assert_array_equal(samples[1].image, image[3])
    np.testing.assert_array_equal(samples[1].label, label[3])
    unl = load_unlabelled(tmp_path / "images")
    assert [s.name for s in unl] == [f"vol_z{z:04d}" for z in range(5)]
    assert all(s.label is None and s.image.shape == (8, 8) for s in unl)


def test_multichannel_stack_with_3d_label(tmp_path: Path) -> None:
    image = RNG.integers(0, 255, (3, 8, 8, 3), np.uint8)
    label = np.zeros((3, 8, 8), np.uint8)
    label[2, 1, 1] = 1
    files.write_image(tmp_path / "images" / "v.tif", image)
    files.write_label(tmp_path / "labels" / "v.tif", label)
    (sample,) = load_labelled(tmp_path)
    assert sample.name == "v_z0002" and sample.image.shape == (8, 8, 3)


def test_stack_with_label_of_other_depth(tmp_path: Path) -> None:
    files.write_image(tmp_path / "images" / "v.tif", np.zeros((4, 8, 8), np.uint8))
    files.write_label(tmp_path / "labels" / "v.tif", np.ones((3, 8, 8), np.uint8))
    with pytest.raises(TskdInputError, match=r"v\.tif and its label v\.tif differ in size"):
        load_labelled(tmp_path)


# --------------------------------------------------------------------- nnU-Net


def _nnunet(root: Path, cases: tuple[str, ...] = ("a", "b"), channels: int = 2) -> None:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in cases:
        for ch in range(channels):
            tifffile.imwrite(root / "imagesTr" / f"{case}_{ch:04d}.tif",
                             np.full((8, 8), 1000 * (ch + 1), np.uint16))
        files.write_label(root / "labelsTr" / f"{case}.png", np.eye(8, dtype=np.uint8) * 2)


def test_nnunet_layout_merges_channels(tmp_path: Path) -> None:
    _nnunet(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "liver": 1, "kidney": 2},
        "file_ending": ".tif",
    }))
    samples = load_labelled(tmp_path)
    assert [s.name for s in samples] == ["a", "b"]
    assert samples[0].image.shape == (8, 8, 2)
    assert samples[0].image[0, 0].tolist() == [1000, 2000]  # channel order kept
    assert samples[0].label.max() == 2
    assert folders.class_names(tmp_path) == ["background", "liver", "kidney"]


def test_nnunet_unlabelled_images_merge_channels(tmp_path: Path) -> None:
    _nnunet(tmp_path)
    (tmp_path / "imagesTs").mkdir()
    for ch in range(2):
        tifffile.imwrite(tmp_path / "imagesTs" / f"t_{ch:04d}.tif", np.zeros((8, 8)))
    assert [(s.name, s.image.shape) for s in load_unlabelled(tmp_path / "imagesTs")] == [
        ("t", (8, 8, 2))]
    assert [s.name for s in load_unlabelled(tmp_path)] == ["a", "b"]  # via imagesTr/


def test_nnunet_channel_file_errors(tmp_path: Path) -> None:
    _nnunet(tmp_path / "gap")
    (tmp_path / "gap" / "imagesTr" / "a_0001.tif").rename(tmp_path / "gap" / "imagesTr" /
                                                          "a_0002.tif")
    with pytest.raises(TskdInputError, match=r"case a has channel files \[0, 2\]; expected 0 "
                                             r"to 1 without gaps"):
        load_labelled(tmp_path / "gap")
    _nnunet(tmp_path / "count")
    (tmp_path / "count" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT", "1": "PET", "2": "MR"}}))
    with pytest.raises(TskdInputError, match="case a has 2 channel files but dataset.json names "
                                             "3 channels"):
        load_labelled(tmp_path / "count")
    _nnunet(tmp_path / "size", cases=("a",))
    tifffile.imwrite(tmp_path / "size" / "imagesTr" / "a_0001.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(TskdInputError, match=r"channel files of one case differ in size: "
                                             r"a_0000\.tif \(8, 8\), a_0001\.tif \(4, 4\)"):
        load_labelled(tmp_path / "size")


def test_class_names_from_dataset_json(tmp_path: Path) -> None:
    assert folders.class_names(tmp_path) is None
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}}))  # nnU-Net v1
    assert folders.class_names(tmp_path) == ["background", "tumour"]
    path.write_text(json.dumps({"labels": {"background": 0, "vessel": 2}}))  # a gap
    assert folders.class_names(tmp_path) == ["background", "class 1", "vessel"]
    path.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2}}))
    with pytest.raises(TskdInputError, match=r"label 'whole' is the region \[1, 2\] \(nnU-Net "
                                             r"region-based training\), which is not supported"):
        folders.class_names(tmp_path)  # regions
    path.write_text(json.dumps({"name": "no labels"}))
    assert folders.class_names(tmp_path) is None
    path.write_text("{not json")
    with pytest.raises(TskdInputError, match=r"dataset\.json is not valid JSON"):
        folders.class_names(tmp_path)


# ---------------------------------------------------------------- channels


def test_mixed_channel_counts_are_converted_with_one_warning(tmp_path: Path) -> None:
    _write_set(tmp_path, n=3)
    rgb = RNG.integers(0, 255, (16, 16, 3), np.uint8)
    files.write_image(tmp_path / "images" / "c0.png", rgb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_labelled(tmp_path)
    msgs = _tskd_warnings(caught)
    assert len(msgs) == 1 and "converted 1 image(s) to 1 channel(s)" in msgs[0]
    assert "1 with 1" not in msgs[0] and "2 with 1, 1 with 3" in msgs[0]
    assert {s.image.shape for s in samples} == {(16, 16)}
    np.testing.assert_array_equal(samples[0].image, np.rint(rgb.mean(-1)).astype(np.uint8))


def test_mixed_channels_to_rgb_repeat_gray_and_drop_alpha(tmp_path: Path) -> None:
    gray, rgba = _gray(), RNG.integers(0, 255, (16, 16, 4), np.uint8)
    rgbs = [RNG.integers(0, 255, (16, 16, 3), np.uint8) for _ in range(2)]
    for name, image in zip(("a", "b", "c", "d"), [gray, rgba, *rgbs], strict=True):
        files.write_image(tmp_path / f"{name}.png", image)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_unlabelled(tmp_path)
    msgs = _tskd_warnings(caught)
    assert len(msgs) == 1 and "converted 2 image(s) to 3 channel(s)" in msgs[0]
    assert all(s.image.shape == (16, 16, 3) for s in samples)
    np.testing.assert_array_equal(samples[0].image, np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(samples[1].image, rgba[..., :3])


def test_a_tie_in_channel_counts_keeps_more_channels(tmp_path: Path) -> None:
    files.write_image(tmp_path / "a.png", _gray())
    files.write_image(tmp_path / "b.png", RNG.integers(0, 255, (16, 16, 3), np.uint8))
    with pytest.warns(TskdWarning, match="converted 1 image"):
        samples = load_unlabelled(tmp_path)
    assert {s.image.shape for s in samples} == {(16, 16, 3)}


# ---------------------------------------------------------------- unlabelled


def test_unlabelled_folder_forms(tmp_path: Path) -> None:
    _write_set(tmp_path / "set", n=2)
    assert [s.name for s in load_unlabelled(tmp_path / "set")] == ["c0", "c1"]  # via images/
    assert [s.label for s in load_unlabelled(tmp_path / "set" / "images")] == [None, None]
    (tmp_path / "empty").mkdir()
    assert load_unlabelled(tmp_path / "empty") == []
    with pytest.raises(TskdInputError, match="unlabelled data folder not found: .*nope"):
        load_unlabelled(tmp_path / "nope")
    np.save(tmp_path / "empty" / "five.npy", np.zeros((2, 2, 3, 8, 8), np.uint8))
    with pytest.raises(TskdInputError, match=r"five\.npy: an image of shape \(2, 2, 3, 8, 8\) "
                                             "is not supported"):
        load_unlabelled(tmp_path / "empty")
