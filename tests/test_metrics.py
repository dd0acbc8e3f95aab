"""Dice, IoU and HD95 against values worked out by hand, the empty-mask policy, spacing, reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tskd.errors import TskdInputError
from tskd.inference.metrics import EMPTY_POLICY, evaluate, evaluate_folders, write_report


def _rec(report, image, cls=1):
    (r,) = [r for r in report.records if r["image"] == image and r["class"] == cls]
    return r


def test_two_squares_exact_dice_iou_hd95():
    # two 10x10 squares, the second 5 rows lower: overlap 50 px
    # Dice = 2*50/(100+100) = 0.5, IoU = 50/150 = 1/3.
    # HD95: the 36 edge pixels of A have distances to B's edge: 10 zeros (rows 5-9 of the side
    # columns lie on B's sides), 1,2,3,4 four times each (rows 1-4 of the sides; inner bottom
    # row), and 5 for the 10 pixels of the top row. The 95th percentile (index 0.95*35=33.25 of
    # the sorted list) falls among the ten 5s; B->A is the mirror image. So HD95 = 5.
    a = np.zeros((20, 20), np.int64)
    a[0:10, 0:10] = 1
    b = np.zeros((20, 20), np.int64)
    b[5:15, 0:10] = 1
    r = _rec(evaluate([a], [b], ["sq"], num_classes=2), "sq")
    assert r["dice"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx(1 / 3, rel=1e-6)
    assert r["hd95"] == pytest.approx(5.0)
    assert r["case"] == "ok"


def test_shifted_line_hd95_and_spacing():
    # a one-pixel-wide line and the same line 7 rows lower: every edge pixel is 7 px away
    a = np.zeros((30, 30), np.int64)
    a[5, 3:20] = 1
    b = np.zeros((30, 30), np.int64)
    b[12, 3:20] = 1
    assert _rec(evaluate([a], [b], ["l"], 2), "l")["hd95"] == pytest.approx(7.0)
    # spacing is per axis (row, column): rows 2.0 apart -> 14; columns do not matter here
    assert _rec(evaluate([a], [b], ["l"], 2, spacing=(2.0, 0.5)), "l")["hd95"] == pytest.approx(14)
    # a pixel 7 columns away: 7 * 0.5
    p = np.zeros((30, 30), np.int64)
    p[5, 5] = 1
    g = np.zeros((30, 30), np.int64)
    g[5, 12] = 1
    assert _rec(evaluate([p], [g], ["px"], 2, spacing=(2.0, 0.5)), "px")["hd95"] == 3.5
    assert _rec(evaluate([p], [g], ["px"], 2, spacing=3.0), "px")["hd95"] == pytest.approx(21)


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # pred: one pixel; gt: that pixel plus one 20 px away. pred->gt distances [0]; gt->pred
    # [0, 20] whose 95th percentile (linear) is 19. MONAI: max(0, 19) = 19. A pooled
    # definition (medpy) would take the 95th percentile of [0, 0, 20] = 18.
    p = np.zeros((10, 30), np.int64)
    p[5, 5] = 1
    g = p.copy()
    g[5, 25] = 1
    r = _rec(evaluate([p], [g], ["d"], 2), "d")
    assert r["hd95"] == pytest.approx(19.0)
    assert r["dice"] == pytest.approx(2 * 1 / 3)


def test_empty_mask_policy_and_counts():
    z = np.zeros((20, 40), np.int64)
    one = z.copy()
    one[2:6, 2:6] = 1
    two = z.copy()
    two[10:12, 30:33] = 2
    rep = evaluate(
        [z, one, z], [z, z, two], ["both", "fp", "fn"], num_classes=3, spacing=(1.0, 0.5)
    )
    diag = math.hypot(20 * 1.0, 40 * 0.5)
    both = _rec(rep, "both", 1)
    assert (both["dice"], both["iou"], both["hd95"], both["case"]) == (1.0, 1.0, 0.0, "both_empty")
    fp = _rec(rep, "fp", 1)  # prediction only
    assert (fp["dice"], fp["iou"], fp["case"]) == (0.0, 0.0, "one_empty")
    assert fp["hd95"] == pytest.approx(diag)
    fn = _rec(rep, "fn", 2)  # ground truth only
    assert (fn["dice"], fn["iou"], fn["case"]) == (0.0, 0.0, "one_empty")
    assert fn["hd95"] == pytest.approx(diag)
    s = rep.summary
    assert s["n_images"] == 3 and s["n_records"] == 6
    # class 1: both(1), fp(0), fn-image has no class 1 anywhere (1) -> both_empty 2, one_empty 1
    assert s["per_class"]["1"]["both_empty"] == 2 and s["per_class"]["1"]["one_empty"] == 1
    assert s["per_class"]["1"]["dice_mean"] == pytest.approx(2 / 3)
    assert s["per_class"]["1"]["dice_std"] == pytest.approx(np.std([1, 0, 1]))
    assert s["both_empty"] == 4 and s["one_empty"] == 2
    assert s["dice_mean"] == pytest.approx(4 / 6)
    assert s["hd95_mean"] == pytest.approx(2 * diag / 6)
    assert s["empty_policy"] == EMPTY_POLICY


def test_num_classes_inferred_and_class_names():
    g = np.zeros((8, 8), np.int64)
    g[1:3, 1:3] = 2
    rep = evaluate([g], [g], ["a"], class_names=["bg", "x", "y"])
    # only the class seen in the ground truth is scored: never the empty id 1
    assert rep.summary["num_classes"] == 2 and rep.summary["classes"] == [2]
    assert list(rep.summary["per_class"]) == ["2"]
    assert rep.summary["per_class"]["2"]["name"] == "y"
    assert _rec(rep, "a", 2)["dice"] == 1.0 and _rec(rep, "a", 2)["hd95"] == 0.0


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((8, 8), np.int64)
    with pytest.raises(TskdInputError, match="differ in shape"):
        evaluate([a], [np.zeros((8, 9), np.int64)], ["a"], 2)
    with pytest.raises(TskdInputError, match="outside 0..1"):
        evaluate([a + 3], [a], ["a"], 2)
    with pytest.raises(TskdInputError, match="2 predictions"):
        evaluate([a, a], [a], None, 2)
    with pytest.raises(TskdInputError, match="spacing"):
        evaluate([a], [a], ["a"], 2, spacing=(1.0, 1.0, 1.0))


def test_3d_volume_with_spacing():
    a = np.zeros((6, 10, 10), np.int64)
    a[2, 2:6, 2:6] = 1
    b = np.zeros_like(a)
    b[4, 2:6, 2:6] = 1  # two slices further along z
    r = _rec(evaluate([a], [b], ["v"], 2, spacing=(3.0, 1.0, 1.0)), "v")
    assert r["hd95"] == pytest.approx(6.0) and r["dice"] == 0.0


def test_write_report_json_and_csv(tmp_path: Path):
    a = np.zeros((10, 10), np.int64)
    a[2:5, 2:5] = 1
    rep = evaluate([a, a * 0], [a, a], ["x", "y"], 2)
    js, cs = write_report(rep, tmp_path / "out")
    data = json.loads(js.read_text())
    assert data["definitions"]["empty_policy"] == EMPTY_POLICY
    assert "max of the two directed" in data["definitions"]["hd95"]
    assert data["definitions"]["hd95_unit"] == "pixels"
    assert data["summary"]["dice_mean"] == pytest.approx(0.5)
    rows = list(csv.DictReader(cs.open()))
    assert [(r["image"], r["case"]) for r in rows] == [("x", "ok"), ("y", "one_empty")]


def test_evaluate_folders_matches_by_stem(tmp_path: Path):
    from tskd.data import files

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    a = np.zeros((16, 16), np.int64)
    a[2:8, 2:8] = 1
    b = np.zeros((16, 16), np.int64)
    b[2:8, 5:11] = 1
    files.write_label(gt_dir / "case1.png", a)
    files.write_label(gt_dir / "case2.png", a)
    files.write_label(pred_dir / "case1.tif", a)
    files.write_label(pred_dir / "case2_0000.png", b)  # named after an nnU-Net image
    rep = evaluate_folders(pred_dir, gt_dir)
    assert _rec(rep, "case1")["dice"] == 1.0
    assert _rec(rep, "case2")["dice"] == pytest.approx(0.5)
    (gt_dir / "case3.png").write_bytes((gt_dir / "case1.png").read_bytes())
    with pytest.raises(TskdInputError, match="case3"):
        evaluate_folders(pred_dir, gt_dir)
