"""Dice, IoU and HD95 per image and per foreground class, computed with MONAI.

Definitions (also written into every report, so numbers are never read without them):

- Dice and IoU from MONAI's ``DiceMetric`` and ``MeanIoU`` on one-hot masks, background excluded.
- HD95 from MONAI's ``HausdorffDistanceMetric(percentile=95)``: the 95th percentile (linear
  interpolation) of the distances from each mask's edge pixels to the other mask's edge pixels,
  taken in both directions, and the larger of the two directed values is reported (this is not
  medpy's pooled definition). Units are pixels, or the spacing's units when a spacing is given
  (spacing per array axis, e.g. (row, column) for 2D).

Empty-mask policy, per image and class:

- ground truth and prediction both empty: Dice 1, IoU 1, HD95 0; counted as ``both_empty``;
- exactly one of them empty: Dice 0, IoU 0, HD95 = the image diagonal
  ``sqrt(sum((shape_i * spacing_i) ** 2))`` (the worst case); counted as ``one_empty``.

Summary statistics: per class and overall (over all image-class records) mean and population
standard deviation (ddof=0).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tskd.errors import TskdInputError

HD95_DEFINITION = (
    "MONAI HausdorffDistanceMetric(percentile=95): max of the two directed 95th percentiles of "
    "edge-to-edge Euclidean distances"
)
EMPTY_POLICY = (
    "both empty -> dice 1, iou 1, hd95 0 (counted as both_empty); exactly one empty -> dice 0, "
    "iou 0, hd95 = image diagonal (counted as one_empty)"
)
METRIC_KEYS = ("dice", "iou", "hd95")


@dataclass
class EvalReport:
    """Per-record metrics (one dict per image and foreground class) and their summary."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    definitions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"definitions": self.definitions, "summary": self.summary, "records": self.records}


def _check_inputs(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], names: Sequence[str] | None
) -> list[str]:
    if len(preds) != len(gts):
        raise TskdInputError(
            f"got {len(preds)} predictions but {len(gts)} ground-truth label maps"
        )
    names = list(names) if names is not None else [str(i) for i in range(len(gts))]
    if len(names) != len(gts):
        raise TskdInputError(f"got {len(names)} names for {len(gts)} label maps")
    for name, p, g in zip(names, preds, gts):
        if np.shape(p) != np.shape(g):
            raise TskdInputError(
                f"prediction and ground truth of '{name}' differ in shape: "
                f"{np.shape(p)} vs {np.shape(g)}"
            )
        if np.ndim(g) not in (2, 3):
            raise TskdInputError(f"label map '{name}' must be 2D or 3D, got shape {np.shape(g)}")
    return names


def _as_labels(arr: np.ndarray, name: str, num_classes: int, what: str) -> torch.Tensor:
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        if not np.all(a == np.round(a)):
            raise TskdInputError(f"{what} '{name}' holds non-integer values")
    elif a.dtype.kind not in "iub":
        raise TskdInputError(f"{what} '{name}' has unsupported dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise TskdInputError(
            f"{what} '{name}' has labels {int(a.min())}..{int(a.max())}, "
            f"outside 0..{num_classes - 1}"
        )
    return torch.from_numpy(a)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(spatial...) int -> (1, C, spatial...) float one-hot, the layout MONAI expects."""
    oh = torch.nn.functional.one_hot(labels, num_classes)
    return oh.movedim(-1, 0).unsqueeze(0).float()


def _spacing_for(
    spacing: float | Sequence[float] | None, ndim: int, name: str = "the label maps"
) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, int | float):
        return (float(spacing),) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) == 1:
        return sp * ndim
    if len(sp) != ndim:
        raise TskdInputError(
            f"spacing {sp} has {len(sp)} values but {name} has {ndim} dimensions"
        )
    if any(s <= 0 for s in sp):
        raise TskdInputError(f"spacing values must be positive, got {sp}")
    return sp


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def _summarise(
    records: list[dict[str, Any]], num_classes: int, class_names: Sequence[str] | None
) -> dict[str, Any]:
    def block(recs: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(recs)}
        for key in METRIC_KEYS:
            st = _stats([r[key] for r in recs])
            out[f"{key}_mean"], out[f"{key}_std"] = st["mean"], st["std"]
        out["both_empty"] = sum(r["case"] == "both_empty" for r in recs)
        out["one_empty"] = sum(r["case"] == "one_empty" for r in recs)
        return out

    per_class = {}
    for c in range(1, num_classes):
        entry = block([r for r in records if r["class"] == c])
        if class_names is not None and c < len(class_names):
            entry["name"] = class_names[c]
        per_class[str(c)] = entry
    overall = block(records)
    return {
        "n_images": len({r["image"] for r in records}),
        "num_classes": num_classes,
        **{k: v for k, v in overall.items() if k != "n"},
        "n_records": overall["n"],
        "per_class": per_class,
    }


def evaluate(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    num_classes: int | None = None,
    spacing: float | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> EvalReport:
    """Score predicted label maps against ground truth, per image and foreground class.

    ``num_classes`` includes background; ``None`` takes the largest label seen plus one (at
    least 2). ``spacing`` is per array axis (or one number for all); ``None`` means pixels.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    names = _check_inputs(preds, gts, names)
    if num_classes is None:
        top = max([int(np.max(a)) for a in (*preds, *gts) if np.size(a)], default=0)
        num_classes = max(2, top + 1)
    if num_classes < 2:
        raise TskdInputError(f"num_classes must be at least 2 (background + 1), got {num_classes}")

    dice_m = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    iou_m = MeanIoU(include_background=False, reduction="none", ignore_empty=False)
    hd_m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")

    records: list[dict[str, Any]] = []
    for name, p, g in zip(names, preds, gts):
        pt = _as_labels(p, name, num_classes, "prediction")
        gt = _as_labels(g, name, num_classes, "ground truth")
        sp = _spacing_for(spacing, gt.ndim, f"label map '{name}'")
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(gt.shape, sp)))
        p_oh, g_oh = _one_hot(pt, num_classes), _one_hot(gt, num_classes)
        p_any = p_oh[0, 1:].flatten(1).any(dim=1)
        g_any = g_oh[0, 1:].flatten(1).any(dim=1)
        dice = dice_m(y_pred=p_oh, y=g_oh)[0]
        iou = iou_m(y_pred=p_oh, y=g_oh)[0]
        if bool((p_any & g_any).any()):
            with warnings.catch_warnings():  # MONAI warns about empty classes; policy below
                warnings.simplefilter("ignore")
                hd = hd_m(y_pred=p_oh, y=g_oh, spacing=list(sp))[0]
        else:
            hd = torch.zeros(num_classes - 1)
        for k in range(num_classes - 1):
            pa, ga = bool(p_any[k]), bool(g_any[k])
            if pa and ga:
                case, vals = "ok", (float(dice[k]), float(iou[k]), float(hd[k]))
            elif not pa and not ga:
                case, vals = "both_empty", (1.0, 1.0, 0.0)
            else:
                case, vals = "one_empty", (0.0, 0.0, diagonal)
            records.append(
                {"image": name, "class": k + 1, **dict(zip(METRIC_KEYS, vals)), "case": case}
            )
    for m in (dice_m, iou_m, hd_m):
        m.reset()

    sp_out = None if spacing is None else list(_spacing_for(spacing, np.ndim(gts[0]) if gts else 2))
    definitions = {
        "dice": "MONAI DiceMetric, foreground classes, per image",
        "iou": "MONAI MeanIoU, foreground classes, per image",
        "hd95": HD95_DEFINITION,
        "hd95_unit": "pixels" if spacing is None else "spacing units",
        "spacing": sp_out,
        "empty_policy": EMPTY_POLICY,
        "std": "population standard deviation (ddof=0)",
    }
    summary = _summarise(records, num_classes, class_names)
    summary["hd95_unit"] = definitions["hd95_unit"]
    summary["empty_policy"] = EMPTY_POLICY
    return EvalReport(records=records, summary=summary, definitions=definitions)


def write_report(report: EvalReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` (definitions, summary, records) and ``metrics.csv`` (records).

    Both are written in full before either replaces an old one (``tskd.atomic``).
    """
    import io

    from tskd import atomic

    out = Path(out_dir)
    js, cs = out / "metrics.json", out / "metrics.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["image", "class", *METRIC_KEYS, "case"])
    writer.writeheader()
    writer.writerows(report.records)
    atomic.write_files({
        js: json.dumps(report.to_dict(), indent=1).encode("utf-8"),
        cs: text.getvalue().encode("utf-8"),
    })
    return js, cs


def _label_files(folder: Path) -> dict[str, Path]:
    from tskd import io

    if not folder.is_dir():
        raise TskdInputError(f"label folder not found: {folder}")
    files = io.list_images(folder)
    if not files:  # an images/+labels/ or nnU-Net folder given instead of the labels themselves
        for sub in ("labels", "labelsTr", "labelsTs"):
            if (folder / sub).is_dir():
                files = io.list_images(folder / sub)
                break
    return {io.stem(f): f for f in files}


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int | None = None,
    spacing: float | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> EvalReport:
    """Score a folder of predicted label maps against a folder of ground truth, matched by stem.

    A prediction named after its nnU-Net image (``case_0000``) also matches label ``case``.
    Every ground-truth file needs a prediction; extra predictions are ignored.
    """
    from tskd import io

    gt_files = _label_files(Path(gt_dir))
    pred_files = _label_files(Path(pred_dir))
    if not gt_files:
        raise TskdInputError(f"no label maps found in {gt_dir}")
    for stem, path in list(pred_files.items()):
        if stem.endswith("_0000") and stem[:-5] not in pred_files:
            pred_files[stem[:-5]] = path
    missing = sorted(set(gt_files) - set(pred_files))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise TskdInputError(f"no prediction in {pred_dir} for {len(missing)} label(s): {shown}")
    names = sorted(gt_files)
    preds = [io.read_label(pred_files[n]) for n in names]
    gts = [io.read_label(gt_files[n]) for n in names]
    if class_names is None:  # nnU-Net dataset.json beside labelsTr/ or in the given folder
        class_names = io.class_names(gt_dir) or io.class_names(Path(gt_dir).parent)
    return evaluate(preds, gts, names, num_classes, spacing, class_names)
