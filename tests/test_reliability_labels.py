"""One label policy (tskd.data.label_policy) for training, prediction, evaluate and check-data.

Every case states its right value: the class count, the printed map, the Dice, the exit code
and the message.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from tskd.apps.cli import main
from tskd.data import files, label_map, label_policy
from tskd.data.label_map import IGNORE_INDEX, LabelMap
from tskd.data.samples import load_labelled, read_labelled_set
from tskd.errors import TskdInputError, TskdWarning
from tskd.inference.metrics import evaluate, evaluate_folders

RNG = np.random.default_rng(0)


def _gray(size: int = 16) -> np.ndarray:
    return RNG.integers(0, 255, (size, size), np.uint8)


def _square(value: int, size: int = 16, rows: slice = slice(2, 8),
            cols: slice = slice(2, 8)) -> np.ndarray:
    m = np.zeros((size, size), np.int64)
    m[rows, cols] = value
    return m


def _write_pair(root: Path, name: str, label: np.ndarray, suffix: str = ".png") -> Path:
    files.write_image(root / "images" / f"{name}.png", _gray(label.shape[-1]))
    path = root / "labels" / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, label)
    else:
        files.write_label(path, label)
    return path


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TskdWarning)]


# ------------------------------------------------------------------ reading a labelled set


def test_masks_saved_0_255_and_0_1_give_two_classes(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(255))
    _write_pair(tmp_path, "b", _square(1))
    _write_pair(tmp_path, "c", _square(255))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, lmap = read_labelled_set(tmp_path)
    assert lmap.num_classes == 2 and lmap.values == (0, 1)
    assert all(set(np.unique(s.label).tolist()) == {0, 1} for s in samples)
    (note,) = _messages(caught)
    assert "2 binary label map(s)" in note and "a.png" in note and "c.png" in note


def test_masks_all_0_255_are_binary_and_keep_their_values(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(255))
    _write_pair(tmp_path, "b", _square(255, cols=slice(4, 12)))
    with pytest.warns(TskdWarning, match="only 0 and 255; reading them as background/foreground"):
        samples, lmap = read_labelled_set(tmp_path)
    assert lmap.values == (0, 255) and lmap.num_classes == 2
    assert int(samples[0].label.max()) == 1


def test_jpeg_label_is_refused_saying_png_or_tif(tmp_path: Path) -> None:
    files.write_image(tmp_path / "images" / "a.png", _gray())
    files.write_image(tmp_path / "labels" / "a.jpg", (_square(1) * 255).astype(np.uint8))
    with pytest.raises(TskdInputError, match=r"a\.jpg: JPEG is lossy .* save the labels as PNG "
                                             r"or TIF instead"):
        load_labelled(tmp_path)
    for suffix in (".jpeg", ".JPG"):
        path = tmp_path / f"x{suffix}"
        path.write_bytes((tmp_path / "labels" / "a.jpg").read_bytes())
        with pytest.raises(TskdInputError, match="JPEG is lossy"):
            files.read_label(path)


def test_jpeg_compressed_tiff_label_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _square(1).astype(np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:  # mark it JPEG-compressed (tag 259 = 7)
        tif.pages[0].tags["Compression"].overwrite(7)
    with pytest.raises(TskdInputError, match=r"a\.tif: the TIFF is JPEG-compressed, which is "
                                             r"lossy .* save the labels as PNG or as TIF"):
        files.read_label(path)


def test_jpeg_like_many_grey_values_are_refused_without_declared_classes(tmp_path: Path) -> None:
    label = np.zeros((16, 16), np.uint8)
    label.flat[:100] = np.arange(100)  # 100 distinct values, as a smoothed or lossy mask has
    _write_pair(tmp_path, "a", label)
    with pytest.raises(TskdInputError, match=r"a\.png holds 100 distinct label values, more "
                                             r"than 64 without a declared class map"):
        load_labelled(tmp_path)
    # the sibling across files: 40 values in each of two files, 79 together
    other = tmp_path / "two"
    _write_pair(other, "a", np.arange(256).reshape(16, 16) % 40)
    _write_pair(other, "b", np.arange(256).reshape(16, 16) % 40 + 39)
    with pytest.raises(TskdInputError, match="holds 79 distinct label values"):
        load_labelled(other)


def test_many_classes_are_read_when_declared(tmp_path: Path) -> None:
    label = (np.arange(256).reshape(16, 16) % 100).astype(np.uint8)
    _write_pair(tmp_path, "a", label)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, **{f"c{i}": i for i in range(1, 100)}}}))
    _, lmap = read_labelled_set(tmp_path)
    assert lmap.num_classes == 100 and lmap.declared and lmap.names[7] == "c7"


def test_255_border_without_ignore_is_three_classes_with_the_printed_map(tmp_path: Path) -> None:
    label = _square(1)
    label[0, :] = label[-1, :] = 255  # an "ignore" border nobody configured
    _write_pair(tmp_path, "a", label)
    with pytest.warns(TskdWarning, match=r"\{0: 0, 1: 1, 255: 2\}"):
        (sample,), lmap = read_labelled_set(tmp_path)
    assert lmap.num_classes == 3 and lmap.values == (0, 1, 255)
    assert set(np.unique(sample.label).tolist()) == {0, 1, 2}


def test_255_border_with_ignore_label_is_two_classes_and_ignored(tmp_path: Path) -> None:
    label = _square(1)
    label[0, :] = 255
    _write_pair(tmp_path, "a", label)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TskdWarning)  # nothing to warn about
        (sample,), lmap = read_labelled_set(tmp_path, ignore_label=255)
    assert lmap.num_classes == 2 and lmap.ignore_label == 255
    assert (sample.label[0] == IGNORE_INDEX).all()
    assert set(np.unique(sample.label[1:]).tolist()) == {0, 1}
    np.testing.assert_array_equal(lmap.decode(sample.label), label)  # back to the user's values


def test_ignore_label_from_dataset_json(tmp_path: Path) -> None:
    label = _square(2)
    label[0, :] = 4
    _write_pair(tmp_path, "a", label)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 4}}))
    (sample,), lmap = read_labelled_set(tmp_path)
    assert lmap.values == (0, 1, 2) and lmap.ignore_label == 4
    assert (sample.label[0] == IGNORE_INDEX).all()


@pytest.mark.parametrize("value", [2**40, 2**32, 2**63 + 5])
def test_huge_label_value_is_one_clean_error(tmp_path: Path, value: int) -> None:
    label = _square(1).astype(np.uint64)
    label[0, 0] = value
    _write_pair(tmp_path, "a", label, ".npy")
    with pytest.raises(TskdInputError, match=rf"a\.npy: label value {value} is above "
                                             r"4294967295, the largest supported label value"):
        load_labelled(tmp_path)


def test_huge_float_label_value_is_one_clean_error(tmp_path: Path) -> None:
    label = _square(1).astype(np.float64)
    label[0, 0] = 1e20
    _write_pair(tmp_path, "a", label, ".npy")
    with pytest.raises(TskdInputError, match=r"label value 1e\+20 is above 4294967295"):
        load_labelled(tmp_path)


def test_large_ids_that_fit_are_remapped_not_allocated(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(4_000_000_000), ".npy")
    with pytest.warns(TskdWarning, match=r"\{0: 0, 4000000000: 1\}"):
        (sample,), lmap = read_labelled_set(tmp_path)
    assert lmap.num_classes == 2 and int(sample.label.max()) == 1


def test_class_ids_with_gaps_become_consecutive_classes(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(1) + _square(5, rows=slice(10, 14)))  # values 0, 1, 5
    _write_pair(tmp_path, "b", _square(5))
    with pytest.warns(TskdWarning, match=r"class ids 0, 1, 5 have gaps; they are read as 3 "
                                         r"consecutive classes \{0: 0, 1: 1, 5: 2\}"):
        samples, lmap = read_labelled_set(tmp_path)
    assert lmap.num_classes == 3 and lmap.values == (0, 1, 5)
    assert {int(v) for s in samples for v in np.unique(s.label)} == {0, 1, 2}


def test_declared_map_is_used_as_given(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(5))
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "liver": 1, "tumour": 5}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TskdWarning)  # declared: no gap warning
        (sample,), lmap = read_labelled_set(tmp_path)
    assert lmap.values == (0, 1, 5) and lmap.names == ("background", "liver", "tumour")
    assert int(sample.label.max()) == 2
    _write_pair(tmp_path, "b", _square(3))
    with pytest.raises(TskdInputError, match=r"b\.png: label value\(s\) 3 are not among the "
                                             r"declared classes 0, 1, 5"):
        load_labelled(tmp_path)


def test_config_classes_declare_the_map_and_win_over_dataset_json(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(2))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1}}))
    _, lmap = read_labelled_set(tmp_path, classes=["bg", "kidney", "cyst"])
    assert lmap.values == (0, 1, 2) and lmap.names == ("bg", "kidney", "cyst")
    _, lmap = read_labelled_set(tmp_path, classes={2: "cyst"})
    assert lmap.values == (0, 2) and lmap.names == ("background", "cyst")
    with pytest.raises(TskdInputError, match="config data.classes: 'x' is not a label value"):
        read_labelled_set(tmp_path, classes={"x": "cyst"})


def test_config_yaml_classes_forms(tmp_path: Path) -> None:
    from tskd.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  classes: {0: background, 5: tumour}\n  ignore_label: 255\n")
    cfg = load_config(path)
    assert cfg.data.classes == {0: "background", 5: "tumour"} and cfg.data.ignore_label == 255
    path.write_text("data:\n  classes: [background, tumour]\n")
    assert load_config(path).data.classes == ["background", "tumour"]
    path.write_text("data:\n  classes: {0: 3}\n")
    with pytest.raises(TskdInputError, match=r"data.classes\[0\]' must be str"):
        load_config(path)


def test_binary_declared_map_reads_a_0_255_file_as_its_foreground(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _square(1))
    _write_pair(tmp_path, "b", _square(255))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cell": 1}}))
    with pytest.warns(TskdWarning, match="1 binary label map"):
        samples, lmap = read_labelled_set(tmp_path)
    assert lmap.values == (0, 1) and [int(s.label.max()) for s in samples] == [1, 1]


def test_rgb_tif_label_gets_the_colours_message(tmp_path: Path) -> None:
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[2:6, 2:6] = (255, 0, 0)
    colour[8:12, 8:12] = (0, 255, 0)
    files.write_image(tmp_path / "images" / "a.png", _gray())
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "labels" / "a.tif", colour, photometric="rgb")
    with pytest.raises(TskdInputError, match=r"a\.tif: a label map must have one channel "
                                             r"\(gray or palette\), not colours - colours are "
                                             r"not classes"):
        load_labelled(tmp_path)
    files.write_image(tmp_path / "x.png", colour)  # the same message as a .png
    with pytest.raises(TskdInputError, match="colours are not classes"):
        files.read_label(tmp_path / "x.png")
    gray_rgb = np.repeat(_square(2).astype(np.uint8)[..., None], 3, axis=-1)
    tifffile.imwrite(tmp_path / "g.tif", gray_rgb, photometric="rgb")
    np.testing.assert_array_equal(files.read_label(tmp_path / "g.tif"), _square(2))


def test_rgb_npy_label_gets_the_colours_message(tmp_path: Path) -> None:
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[2:6, 2:6] = (255, 0, 0)
    _write_pair(tmp_path, "a", colour, ".npy")
    with pytest.raises(TskdInputError, match=r"a\.npy: .*colours are not classes"):
        load_labelled(tmp_path)
    stack = np.zeros((3, 16, 16), np.uint8)  # a (Z, H, W) stack stays a stack
    stack[1, 2:6, 2:6] = 1
    np.save(tmp_path / "s.npy", stack)
    assert files.read_label(tmp_path / "s.npy").shape == (3, 16, 16)


def test_evaluate_cli_num_classes_out_of_range_is_one_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", _square(1))
    files.write_label(tmp_path / "pred" / "a.png", _square(1))
    for n in ("1", str(2**40)):
        assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                     "-o", str(tmp_path / "m"), "--num-classes", n]) == 2
        assert f"num_classes must be in 2..256 (background + classes), got {n}" in \
            capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "-o", str(tmp_path / "m"), "--num-classes", "3"]) == 0
    summary = json.loads((tmp_path / "m" / "metrics.json").read_text())["summary"]
    assert summary["classes"] == [1, 2] and summary["per_class"]["2"]["both_empty"] == 1


def test_write_label_refuses_values_a_file_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match="label value 4294967296 is above 4294967295"):
        files.write_label(tmp_path / "a.tif", _square(2**32))
    assert not (tmp_path / "a.tif").exists()


def test_class_count_is_bounded_before_allocation() -> None:
    from tskd.data.dataset import num_classes
    from tskd.data.samples import Sample

    s = Sample("a", np.zeros((4, 4)), _square(2**40, size=4))
    with pytest.raises(TskdInputError, match="more than 256 classes"):
        num_classes([s])
    with pytest.raises(TskdInputError, match=r"num_classes must be in 2\.\.256"):
        evaluate([_square(1)], [_square(1)], ["a"], num_classes=2**40)


# ------------------------------------------------------------------ evaluate


def test_evaluate_0_255_ground_truth_and_empty_prediction_scores_dice_0(tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", _square(255))
    files.write_label(tmp_path / "pred" / "a.png", np.zeros((16, 16), np.int64))
    rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert rep.summary["dice_mean"] == 0.0 and rep.summary["n_records"] == 1
    assert rep.summary["classes"] == [255]
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "-o", str(tmp_path / "m")])
    assert code == 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["summary"]["dice_mean"] == 0


@pytest.mark.parametrize(("gt_value", "pred_value"), [(255, 1), (1, 255), (255, 255)])
def test_evaluate_binary_encodings_score_against_each_other(tmp_path: Path, gt_value: int,
                                                            pred_value: int) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", _square(gt_value))
    files.write_label(tmp_path / "pred" / "a.png", _square(pred_value))
    files.write_label(tmp_path / "gt" / "b.png", _square(gt_value))
    files.write_label(tmp_path / "pred" / "b.png", _square(pred_value, rows=slice(5, 11)))
    rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    dice = {r["image"]: r["dice"] for r in rep.records}
    assert dice["a"] == 1.0 and dice["b"] == pytest.approx(0.5)  # 18 of 36 pixels overlap
    assert rep.summary["n_records"] == 2


def _gap_case() -> tuple[np.ndarray, np.ndarray]:
    """Class 1: a 6x6 square against the same square 3 rows lower (18 of 36 px overlap):
    Dice 2*18/72 = 0.5. Class 5: 16 px, of which the prediction finds 8 and nothing else:
    Dice 2*8/(16+8) = 2/3. Mean over the two real classes: 7/12 = 0.5833."""
    gt = _square(1, size=20) + _square(5, size=20, rows=slice(12, 16), cols=slice(12, 16))
    pred = _square(1, size=20, rows=slice(5, 11))
    pred[12:14, 12:16] = 5
    return pred, gt


def test_evaluate_with_gaps_averages_over_real_classes_only(tmp_path: Path) -> None:
    pred, gt = _gap_case()
    rep = evaluate([pred], [gt], ["a"])
    assert rep.summary["classes"] == [1, 5]
    assert {r["class"]: round(r["dice"], 4) for r in rep.records} == {1: 0.5, 5: 0.6667}
    assert rep.summary["dice_mean"] == pytest.approx(7 / 12)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", gt)
    files.write_label(tmp_path / "pred" / "a.png", pred)
    with pytest.warns(TskdWarning, match=r"\{0: 0, 1: 1, 5: 2\}"):
        rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert rep.summary["dice_mean"] == pytest.approx(7 / 12)
    assert sorted(rep.summary["per_class"]) == ["1", "5"]


def test_evaluate_counts_a_predicted_non_class_as_wrong(tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", _square(1))
    files.write_label(tmp_path / "pred" / "a.png", _square(3))  # right place, a value never seen
    with pytest.warns(TskdWarning, match=r"not classes of the ground truth \(e\.g\. .*a\.png: 3\)"):
        rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert rep.summary["classes"] == [1] and rep.summary["dice_mean"] == 0.0


def test_evaluate_leaves_ignored_pixels_out(tmp_path: Path) -> None:
    gt = _square(1)
    gt[12:16, :] = 255  # ignore band
    pred = _square(1)
    pred[12:16, :] = 1  # predictions inside the ignore band are not false positives
    rep = evaluate([pred], [gt], ["a"], ignore_label=255)
    assert rep.summary["classes"] == [1] and rep.records[0]["dice"] == 1.0
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", gt)
    files.write_label(tmp_path / "pred" / "a.png", pred)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "-o", str(tmp_path / "m"), "--ignore-label", "255"]) == 0
    summary = json.loads((tmp_path / "m" / "metrics.json").read_text())["summary"]
    assert summary["dice_mean"] == 1.0 and summary["classes"] == [1]


def test_evaluate_cli_refuses_a_jpeg_ground_truth_in_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_image(tmp_path / "gt" / "a.jpg", (_square(1) * 255).astype(np.uint8))
    files.write_label(tmp_path / "pred" / "a.png", _square(1))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "JPEG is lossy" in err and "PNG or TIF" in err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ models keep the map


def test_label_map_meta_round_trip_and_old_bundles() -> None:
    lmap = LabelMap.from_values([1, 5], {1: "a", 5: "b"}, ignore_label=255)
    meta = {"num_classes": 3, **lmap.to_meta()}
    assert meta["label_values"] == [0, 1, 5] and meta["ignore_label"] == 255
    assert LabelMap.from_meta(meta) == LabelMap((0, 1, 5), ("background", "a", "b"), False, 255)
    old = LabelMap.from_meta({"num_classes": 3, "class_names": ["bg", "x", "y"]})
    assert old.values == (0, 1, 2) and old.names == ("bg", "x", "y")
    with pytest.raises(TskdInputError, match="2 label_values for 3 classes"):
        LabelMap.from_meta({"num_classes": 3, "label_values": [0, 1]})


class _ConstantModel(nn.Module):
    """Logits that put class k where the image's gray level is in the k-th third."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x[:, :1] * self.num_classes).clamp(max=self.num_classes - 0.5).floor()
        ks = torch.arange(self.num_classes, dtype=x.dtype).view(1, -1, 1, 1)
        return -(level - ks).abs() * 10 + self.w


def test_predictions_are_written_with_the_original_ids(tmp_path: Path) -> None:
    from tskd.inference.predict import predict_paths
    from tskd.inference.segmenter import Segmenter

    image = np.zeros((16, 16), np.uint8)
    image[:, 6:11] = 128
    image[:, 11:] = 255
    files.write_image(tmp_path / "in" / "a.png", image)
    seg = Segmenter(_ConstantModel(3), 16, 3, device="cpu")
    (out,) = predict_paths(seg, [tmp_path / "in" / "a.png"], tmp_path / "out",
                           label_values=(0, 1, 5))
    written = files.read_label(out)
    assert set(np.unique(written).tolist()) == {0, 1, 5}
    assert (written[:, 11:] == 5).all() and (written[:, :6] == 0).all()
    with pytest.raises(TskdInputError, match="2 label values for a model of 3 classes"):
        predict_paths(seg, [tmp_path / "in" / "a.png"], tmp_path / "out2", label_values=(0, 1))


def test_loss_ignores_ignored_pixels() -> None:
    from tskd.config import StudentConfig
    from tskd.models.student import Student
    from tskd.training.finetune import _SegTask

    student = Student(StudentConfig(embed_dim=16, depth=1, num_heads=2, decoder_channels=8),
                      2, 32)
    task = _SegTask(student, [], 0.5)
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, :4] = 1
    label[0, 6:] = IGNORE_INDEX
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    out = task.step(Fixed(), {"image": torch.zeros(1, 3, 8, 8), "label": label})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert logits.grad is not None
    assert float(logits.grad[0, :, 6:].abs().max()) == 0.0  # ignored rows: no gradient
    assert float(logits.grad[0, :, :6].abs().max()) > 0.0


# ------------------------------------------------------------------ check-data


def test_check_data_reports_every_file_and_exits_2(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    _write_pair(tmp_path, "good", _square(1))
    _write_pair(tmp_path, "white", _square(255))
    files.write_image(tmp_path / "images" / "lossy.png", _gray())
    files.write_image(tmp_path / "labels" / "lossy.jpg", (_square(1) * 255).astype(np.uint8))
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[2:6, 2:6] = (255, 0, 0)
    files.write_image(tmp_path / "images" / "colour.png", _gray())
    files.write_image(tmp_path / "labels" / "colour.png", colour)
    files.write_image(tmp_path / "images" / "small.png", _gray(8))
    files.write_label(tmp_path / "labels" / "small.png", _square(1))
    files.write_image(tmp_path / "images" / "nolabel.png", _gray())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "ERROR lossy:" in out and "JPEG is lossy" in out
    assert "ERROR colour:" in out and "colours are not classes" in out
    assert "ERROR small:" in out and "differ in size" in out
    assert "warn  nolabel:" in out and "no label file for nolabel" in out
    assert "ok    good:" in out and "values [0, 1]" in out
    assert "read: binary mask: 255 read as 1 (foreground)" in out
    assert "6 case(s), 3 error(s), 1 warning(s)" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_check_data_prints_the_map_and_exits_0(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    _write_pair(tmp_path, "a", _square(1) + _square(5, rows=slice(10, 14)))
    _write_pair(tmp_path, "b", _square(1))
    assert main(["check-data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "values remapped to classes {0: 0, 1: 1, 5: 2}" in out
    assert "classes (from the values seen): 3: 0 -> class 0 (background), 1 -> class 1 " \
           "(class 1), 5 -> class 2 (class 5)" in out
    assert "2 case(s), 0 error(s), 1 warning(s)" in out
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  classes: {0: bg, 1: kidney, 5: cyst}\n")
    assert main(["check-data", str(tmp_path), "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["label_values"] == [0, 1, 5] and report["classes_declared"] is True
    assert report["class_names"] == ["bg", "kidney", "cyst"] and report["n_errors"] == 0


def test_check_data_too_many_values_and_huge_value(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    _write_pair(tmp_path, "grey", (np.arange(256).reshape(16, 16) % 70).astype(np.uint8))
    _write_pair(tmp_path, "huge", _square(2**40), ".npy")
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "ERROR grey:" in out and "holds 70 distinct label values, more than 64" in out
    assert "ERROR huge:" in out and "label value 1099511627776 is above 4294967295" in out


def test_check_data_on_a_folder_that_is_not_a_set(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["check-data", str(tmp_path / "missing")]) == 2
    assert "labelled data folder not found" in capsys.readouterr().err


def test_policy_helpers_state_their_bounds() -> None:
    assert label_policy.MAX_UNDECLARED_VALUES == 64
    assert label_map.MAX_LABEL_VALUE == 2**32 - 1
    lmap = LabelMap.from_values([1, 5])
    np.testing.assert_array_equal(lmap.encode(np.array([0, 5, 1])), [0, 2, 1])
    np.testing.assert_array_equal(lmap.decode(np.array([0, 2, 1])), [0, 5, 1])
    with pytest.raises(TskdInputError, match=r"label value\(s\) 3 are not among the classes"):
        lmap.encode(np.array([3]), "x.png")
    np.testing.assert_array_equal(lmap.encode(np.array([3, 5]), unknown="background"), [0, 2])
    with pytest.raises(TskdInputError, match="ignore label 5 is also a class"):
        LabelMap.from_values([1, 5], ignore_label=5)


# ------------------------------------------------------------------ end to end


def test_gap_ids_train_store_the_map_and_predict_original_ids(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ids 0, 1, 5: a 3-class student, label_values [0, 1, 5] in meta.json, and `tskd predict`
    writes only 0, 1 and 5 (never the empty ids 2-4)."""
    import yaml

    from tskd.inference import bundle

    data = tmp_path / "data"
    for i in range(3):
        image = np.zeros((64, 64), np.uint8)
        image[8:24, 8:24] = 120
        image[40:56, 40:56] = 250
        files.write_image(data / "images" / f"c{i}.png", image)
        label = np.zeros((64, 64), np.uint8)
        label[8:24, 8:24] = 1
        label[40:56, 40:56] = 5
        files.write_label(data / "labels" / f"c{i}.png", label)
    train = {"epochs": 1, "batch_size": 2, "device": "cpu", "max_steps": 1}
    cfg = {"run_dir": str(tmp_path / "run"),
           "data": {"labelled": str(data), "image_size": 64, "val_fraction": 0.0},
           "student": {"embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_channels": 8,
                       "from_scratch": True, "train": train}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune-student", "--config", str(tmp_path / "c.yaml")]) == 0
    err = capsys.readouterr().err
    assert "class ids 0, 1, 5 have gaps" in err and "{0: 0, 1: 1, 5: 2}" in err
    meta = bundle.read_bundle_meta(tmp_path / "run" / "student")
    assert meta["num_classes"] == 3 and meta["label_values"] == [0, 1, 5]
    assert meta["class_names"] == ["background", "class 1", "class 5"]
    assert main(["predict", "--model", str(tmp_path / "run" / "student"),
                 str(data / "images"), "-o", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    from tskd.inference.segmenter import Segmenter

    model, _ = bundle.load_bundle(tmp_path / "run" / "student")
    seg = Segmenter(model, 64, 3, device="cpu")
    for i in range(3):
        written = files.read_label(tmp_path / "pred" / f"c{i}.png")
        indices = seg.segment(files.read_image(data / "images" / f"c{i}.png"))
        np.testing.assert_array_equal(written, np.array([0, 1, 5])[indices])
        assert set(np.unique(written).tolist()) <= {0, 1, 5}


def test_teacher_loss_ignores_ignored_pixels() -> None:
    from tskd.config import TeacherConfig
    from tskd.training.teacher import TeacherTask

    logits = torch.randn(2, 3, 8, 8, requires_grad=True)

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    task = TeacherTask(Fixed(), [], TeacherConfig(), augment=False)
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[:, :3] = 2
    label[:, 5:] = IGNORE_INDEX
    out = task.step(task.model, {"image": torch.zeros(2, 3, 8, 8), "label": label})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert float(logits.grad[:, :, 5:].abs().max()) == 0.0
    assert float(logits.grad[:, :, :5].abs().max()) > 0.0


def test_evaluate_folder_scores_every_class_of_the_model(tmp_path: Path) -> None:
    """A model of values 0, 1, 5 on a test set that only shows 5: classes 1 and 5 are scored
    (the model's classes), reported by value; a value the model lacks is one clear error."""
    from tskd.inference.predict import evaluate_folder
    from tskd.inference.segmenter import Segmenter

    image = np.zeros((16, 16), np.uint8)
    image[:, 11:] = 255  # the constant model predicts class 2 (value 5) there
    label = np.zeros((16, 16), np.uint8)
    label[:, 11:] = 5
    files.write_image(tmp_path / "images" / "a.png", image)
    files.write_label(tmp_path / "labels" / "a.png", label)
    seg = Segmenter(_ConstantModel(3), 16, 3, device="cpu")
    lmap = LabelMap.from_values([1, 5], {1: "kidney", 5: "cyst"})
    report, _ = evaluate_folder(seg, tmp_path, lmap)
    dice = {r["class"]: r["dice"] for r in report.records}
    assert report.summary["classes"] == [1, 5] and dice[5] == 1.0
    assert report.summary["per_class"]["5"]["name"] == "cyst"
    files.write_label(tmp_path / "labels" / "a.png", label // 5 * 7)  # value 7: not a class
    with pytest.raises(TskdInputError, match=r"a\.png: label value\(s\) 7 are not among the "
                                             r"declared classes 0, 1, 5"):
        evaluate_folder(seg, tmp_path, lmap)


# ------------------------------------------------------- one file never changes another's values

CONFLICT_TAIL = ("declare the classes (data.classes or dataset.json 'labels') or set "
                 "data.ignore_label: 255")


def _conflict_set(root: Path, other: int = 1) -> None:
    """a: 0/1, b: 0/255 (255 its only foreground), c: 0, ``other`` and 255 in one file."""
    _write_pair(root, "a", _square(1))
    _write_pair(root, "b", _square(255))
    _write_pair(root, "c", _square(other) + _square(255, rows=slice(10, 14)))


@pytest.mark.parametrize("other", [1, 2])
def test_255_as_one_files_foreground_and_another_files_third_value_is_refused(
        tmp_path: Path, other: int) -> None:
    _conflict_set(tmp_path, other)
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'labels'}: 255 is the foreground of b.png (saved 0/255) but a value "
        f"beside {other} in c.png; {CONFLICT_TAIL}")


def test_255_conflict_without_0_1_files_is_refused_too(tmp_path: Path) -> None:
    _write_pair(tmp_path, "b", _square(255))
    _write_pair(tmp_path, "d", _square(255, cols=slice(4, 12)))
    _write_pair(tmp_path, "c", _square(1) + _square(255, rows=slice(10, 14)))
    _write_pair(tmp_path, "e", _square(2) + _square(255, rows=slice(10, 14)))
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'labels'}: 255 is the foreground of b.png, d.png (saved 0/255) but a value "
        f"beside 1 in c.png; beside 2 in e.png; {CONFLICT_TAIL}")


def test_check_data_reports_the_255_conflict_per_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    _conflict_set(tmp_path)
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    b, c = tmp_path / "labels" / "b.png", tmp_path / "labels" / "c.png"
    assert "ok    a:" in out and "ERROR b:" in out and "ERROR c:" in out
    assert (f"error: {b}: 255 is this file's only foreground value (saved 0/255), but c.png "
            f"hold(s) 255 beside other values; {CONFLICT_TAIL}") in out
    assert (f"error: {c}: 255 is a value beside 1 here, but the only foreground of b.png "
            f"(saved 0/255); {CONFLICT_TAIL}") in out
    assert "3 case(s), 2 error(s), 0 warning(s)" in out


def test_255_conflict_with_ignore_label_ignores_255_everywhere(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture
                                                               ) -> None:
    _conflict_set(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, lmap = read_labelled_set(tmp_path, ignore_label=255)
    assert lmap.values == (0, 1) and lmap.ignore_label == 255
    by_name = {s.name: s.label for s in samples}
    assert set(np.unique(by_name["b"]).tolist()) == {0, IGNORE_INDEX}  # no foreground left
    assert int((by_name["b"] == IGNORE_INDEX).sum()) == 36
    assert set(np.unique(by_name["c"]).tolist()) == {0, 1, IGNORE_INDEX}
    assert _messages(caught) == [
        f"{tmp_path / 'labels'}: 1 label map(s) (b.png) hold only background 0 and the ignore "
        "value 255, so they are read as background + ignored pixels and teach no class (a mask "
        "saved 0/255 loses its foreground when 255 is the ignore value)"]
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  ignore_label: 255\n")
    assert main(["check-data", str(tmp_path), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "warn  b:" in out and "ok    a:" in out and "ok    c:" in out
    assert (f"warning: {tmp_path / 'labels' / 'b.png'}: only background 0 and the ignore value "
            "255; read as background + ignored pixels, it teaches no class") in out
    assert "3 case(s), 0 error(s), 1 warning(s)" in out


def test_255_conflict_with_declared_classes_reads_them_as_declared(tmp_path: Path) -> None:
    _conflict_set(tmp_path)
    samples, lmap = read_labelled_set(tmp_path, classes={0: "bg", 1: "cell", 255: "edge"})
    assert lmap.values == (0, 1, 255) and lmap.num_classes == 3
    by_name = {s.name: s.label for s in samples}
    assert set(np.unique(by_name["b"]).tolist()) == {0, 2}  # 255 is class 2, as declared


# ------------------------------------------------------------------ nnU-Net dataset.json labels


def test_nnunet_region_labels_are_refused_in_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    _write_pair(tmp_path, "a", _square(1) + _square(3, rows=slice(10, 14)))
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "kidney": [1, 3]}}))
    expected = (f"{tmp_path / 'dataset.json'}: label 'kidney' is the region [1, 3] (nnU-Net "
                "region-based training), which is not supported; declare plain classes, one "
                'label value per name (e.g. {"kidney": 1})')
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == expected
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"error: {expected}" in out and "1 case(s), 1 error(s)" in out


@pytest.mark.parametrize("labels", [
    {"0": "background", "1": "liver", "3": "ignore"},  # nnU-Net v1
    {"background": 0, "liver": 1, "ignore": 3},  # nnU-Net v2
], ids=["v1", "v2"])
def test_nnunet_ignore_label_in_both_forms(tmp_path: Path, labels: dict[str, Any]) -> None:
    label = _square(1)
    label[12:16, :] = 3  # the ignore band
    _write_pair(tmp_path, "a", label)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    samples, lmap = read_labelled_set(tmp_path)
    assert lmap.values == (0, 1) and lmap.names == ("background", "liver")
    assert lmap.ignore_label == 3 and lmap.num_classes == 2
    assert int((samples[0].label == IGNORE_INDEX).sum()) == 64
    assert int((samples[0].label == 1).sum()) == 36


# ------------------------------------------------------------- evaluate: the ground truth decides


def _eval_pair(root: Path, gt_value: int, pred_value: int) -> None:
    """a: the same 6x6 square; b: the square 3 rows lower (18 of 36 px overlap, Dice 0.5)."""
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    for name, rows in (("a", slice(2, 8)), ("b", slice(5, 11))):
        files.write_label(root / "gt" / f"{name}.png", _square(gt_value))
        files.write_label(root / "pred" / f"{name}.png", _square(pred_value, rows=rows))


@pytest.mark.parametrize(("gt_value", "pred_value"), [(2, 1), (2, 255), (255, 1), (1, 255)])
def test_evaluate_binary_prediction_for_binary_ground_truth_is_read_with_a_note(
        tmp_path: Path, gt_value: int, pred_value: int) -> None:
    _eval_pair(tmp_path, gt_value, pred_value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert {r["image"]: r["dice"] for r in rep.records} == {"a": 1.0, "b": 0.5}
    assert rep.summary["classes"] == [gt_value] and rep.summary["dice_mean"] == 0.75
    notes = [m for m in _messages(caught) if "prediction(s)" in m]
    assert notes == [
        f"2 prediction(s) in {tmp_path / 'pred'} (a.png, b.png) are binary masks saved "
        f"0/{pred_value}; their foreground is read as the ground truth's one class, label "
        f"value {gt_value}"]


def test_evaluate_prediction_0_2_against_ground_truth_0_1_scores_0_with_a_warning(
        tmp_path: Path) -> None:
    _eval_pair(tmp_path, 1, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert {r["image"]: r["dice"] for r in rep.records} == {"a": 0.0, "b": 0.0}
    assert rep.summary["classes"] == [1]
    assert _messages(caught) == [
        f"2 prediction(s) hold values that are not classes of the ground truth (e.g. "
        f"{tmp_path / 'pred' / 'a.png'}: 2); they count as wrong for every class"]


def test_evaluate_binary_prediction_against_multi_class_ground_truth_is_wrong(
        tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files.write_label(tmp_path / "gt" / "a.png", _square(1) + _square(2, rows=slice(10, 14)))
    files.write_label(tmp_path / "pred" / "a.png", _square(255))  # 255 is no class here
    with pytest.warns(TskdWarning, match=r"not classes of the ground truth \(e\.g\. .*: 255\)"):
        rep = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert {r["class"]: r["dice"] for r in rep.records} == {1: 0.0, 2: 0.0}


# ------------------------------------------------------ label maps with channels or extra slices


def test_la_png_label_says_it_has_2_channels(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    files.write_image(tmp_path / "images" / "a.png", _gray())
    (tmp_path / "labels").mkdir()
    la = np.stack([_square(1).astype(np.uint8), np.full((16, 16), 255, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "labels" / "a.png")
    expected = (f"{tmp_path / 'labels' / 'a.png'}: the label map has 2 channels (gray and alpha); "
                "a label map must have one - save it as a gray or palette image without alpha")
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == expected
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"error: {expected}" in out and "differ in size" not in out


def test_tiff_label_stack_for_a_2d_image_says_so(tmp_path: Path) -> None:
    files.write_image(tmp_path / "images" / "a.png", _gray(64))
    (tmp_path / "labels").mkdir()
    label = np.zeros((2, 64, 64), np.uint8)
    label[:, 2:8, 2:8] = 1
    tifffile.imwrite(tmp_path / "labels" / "a.tif", label)
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'labels' / 'a.tif'}: the label map is a stack of 2 slices (2, 64, 64) but "
        "its image a.png is 2D (64, 64); a 2D image needs one label map (H, W)")


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_label_with_channels_last_for_a_2d_image_says_channels(tmp_path: Path,
                                                              suffix: str) -> None:
    files.write_image(tmp_path / "images" / "a.png", _gray(64))
    (tmp_path / "labels").mkdir()
    label = np.zeros((64, 64, 2), np.uint8)
    label[2:8, 2:8] = 1
    path = tmp_path / "labels" / f"a{suffix}"
    if suffix == ".npy":
        np.save(path, label)
    else:
        tifffile.imwrite(path, label, photometric="minisblack", planarconfig="contig",
                         metadata={"axes": "YXS"})
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == (
        f"{path}: the label map has 2 channels (shape (64, 64, 2)); a label map must have one - "
        "save the class ids of a.png as one gray or palette image (H, W)")
