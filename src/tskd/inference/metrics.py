"""Dice, IoU and HD95 per image and per foreground class, computed with MONAI.

Definitions (also written into every report, so numbers are never read without them):

- Dice and IoU from MONAI's ``DiceMetric`` and ``MeanIoU`` on one-hot masks, background excluded.
- HD95 from MONAI's ``HausdorffDistanceMetric(percentile=95)``: the 95th percentile (linear
  interpolation) of the distances from each mask's edge pixels to the other mask's edge pixels,
  taken in both directions, and the larger of the two directed values is reported (this is not
  medpy's pooled definition). Units are pixels, or the spacing's units when a spacing is given
  (spacing per array axis, e.g. (row, column) for 2D).
- Empty masks, per image and class: both empty -> Dice 1, IoU 1, HD95 0 (``both_empty``);
  exactly one empty -> Dice 0, IoU 0, HD95 = the image diagonal
  ``sqrt(sum((shape_i * spacing_i) ** 2))``, the worst case (``one_empty``).
- Scored classes: those that exist, never empty ids: the declared classes (``classes``,
  ``num_classes``, a model's or dataset.json's class map), else the foreground values seen in
  the ground truth. Maps are compared by label value (no one-hot of ``max value + 1``): a
  predicted value that is not a scored class counts as background, i.e. wrong for every class.
  Pixels whose ground truth is the configured ignore value are left out.
- Summary statistics: per class and overall (over all image-class records) mean and population
  standard deviation (ddof=0).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tskd.errors import TskdInputError
from tskd.inference.dice import dice_per_class, one_hot_batch
from tskd.inference.label_folders import read_label_folders

HD95_DEFINITION = (
    "MONAI HausdorffDistanceMetric(percentile=95): max of the two directed 95th percentiles of "
    "edge-to-edge Euclidean distances"
)
EMPTY_POLICY = (
    "both empty -> dice 1, iou 1, hd95 0 (counted as both_empty); exactly one empty -> dice 0, "
    "iou 0, hd95 = image diagonal (counted as one_empty)"
)
CLASSES_POLICY = (
    "scored classes are the declared ones, else the foreground values seen in the ground truth; "
    "a predicted value that is not a scored class counts as background"
)
METRIC_KEYS = ("dice", "iou", "hd95")


@dataclass
class EvalReport:
    """Per-record metrics (one dict per image and foreground class), summary, definitions."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    definitions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Give the report as ``metrics.json`` holds it: definitions, summary, records."""
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


def _as_values(arr: np.ndarray, name: str, what: str) -> np.ndarray:
    """A label map's values as int64, refusing non-integer, negative or too large values."""
    from tskd.data.label_map import check_values

    a = np.asarray(arr)
    if a.dtype.kind not in "iubf":
        raise TskdInputError(f"{what} '{name}' has unsupported dtype {a.dtype}")
    try:
        check_values(a, f"{what} '{name}'")
    except TskdInputError as exc:
        raise TskdInputError(str(exc).replace("label map has non-integer values",
                                              "holds non-integer values")) from None
    return a.astype(np.int64)


def _to_slots(values: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Label values -> 0 (background / not a scored class) or 1..K (position in ``scored``)."""
    if scored.size == 0:
        return np.zeros(values.shape, np.int64)
    idx = np.searchsorted(scored, values)
    idx_c = np.minimum(idx, scored.size - 1)
    return np.where(scored[idx_c] == values, idx_c + 1, 0).astype(np.int64)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(spatial...) int -> (1, C, spatial...) float one-hot, the layout MONAI expects."""
    return one_hot_batch(labels[None], num_classes)


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


def _class_name(class_names: Sequence[str] | Mapping[int, str] | None, value: int) -> str | None:
    if class_names is None:
        return None
    if isinstance(class_names, Mapping):
        name = class_names.get(value)
        return None if name is None else str(name)
    return str(class_names[value]) if 0 <= value < len(class_names) else None


def _summarise(
    records: list[dict[str, Any]], scored: Sequence[int],
    class_names: Sequence[str] | Mapping[int, str] | None,
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
    for c in scored:
        entry = block([r for r in records if r["class"] == c])
        name = _class_name(class_names, c)
        if name is not None:
            entry["name"] = name
        per_class[str(c)] = entry
    overall = block(records)
    return {
        "n_images": len({r["image"] for r in records}),
        "num_classes": len(scored) + 1,
        "classes": [int(c) for c in scored],
        **{k: v for k, v in overall.items() if k != "n"},
        "n_records": overall["n"],
        "per_class": per_class,
    }


def _scored_classes(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], names: Sequence[str],
    num_classes: int | None, classes: Sequence[int] | None, ignore_label: int | None,
) -> list[int]:
    """Foreground label values to score, declared or seen; bounded before per-class allocation."""
    from tskd.data.label_map import MAX_CLASSES
    from tskd.data.label_policy import MAX_UNDECLARED_VALUES

    if classes is not None:
        scored = sorted({int(c) for c in classes} - {0})
        if len(scored) + 1 > MAX_CLASSES:
            raise TskdInputError(f"{len(scored) + 1} classes declared; at most {MAX_CLASSES} "
                                 "are supported")
        return scored
    if num_classes is not None:
        if not 2 <= num_classes <= MAX_CLASSES:
            raise TskdInputError(f"num_classes must be in 2..{MAX_CLASSES} (background + "
                                 f"classes), got {num_classes}")
        for name, p, g in zip(names, preds, gts):
            for what, a in (("prediction", p), ("ground truth", g)):
                valid = a if ignore_label is None or what == "prediction" else a[a != ignore_label]
                if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
                    raise TskdInputError(
                        f"{what} '{name}' has labels {int(valid.min())}..{int(valid.max())}, "
                        f"outside 0..{num_classes - 1}"
                    )
        return list(range(1, num_classes))
    seen: set[int] = set()
    for g in gts:
        seen |= {int(v) for v in np.unique(g)}
    seen -= {0} | ({ignore_label} if ignore_label is not None else set())
    if len(seen) + 1 > MAX_UNDECLARED_VALUES:
        raise TskdInputError(
            f"the ground truth holds {len(seen) + 1} distinct label values, more than "
            f"{MAX_UNDECLARED_VALUES} without declared classes; give the classes (a "
            "dataset.json 'labels' beside the ground truth, or the number of classes) or "
            "re-export lossy (JPEG) or smoothed label maps as PNG or TIF"
        )
    return sorted(seen)


def evaluate(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    num_classes: int | None = None,
    spacing: float | Sequence[float] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    classes: Sequence[int] | None = None,
    ignore_label: int | None = None,
) -> EvalReport:
    """Score predicted label maps against ground truth, per image and scored foreground class.

    Args:
        preds: integer label maps (H, W) or (Z, H, W), compared by label value.
        gts: ground truth, one per prediction, of its shape.
        names: one per image, for records and messages; default "0", "1", ...
        num_classes: score 1..num_classes-1 (background counted; values outside raise).
        spacing: per array axis (or one number for all), HD95's unit; None: pixels.
        class_names: by label value (a list indexed by value, or a mapping).
        classes: label values to score, before ``num_classes``; neither: those seen in the
            ground truth (at most ``label_policy.MAX_UNDECLARED_VALUES``).
        ignore_label: ground-truth pixels with this value are left out (background in both).

    Returns:
        Records keyed by label value (``class``), summary and definitions.

    Raises:
        TskdInputError: mismatched shapes or counts, invalid values or spacing.
    """
    from monai.metrics import HausdorffDistanceMetric, MeanIoU

    names = _check_inputs(preds, gts, names)
    preds = [_as_values(p, n, "prediction") for n, p in zip(names, preds)]
    gts = [_as_values(g, n, "ground truth") for n, g in zip(names, gts)]
    scored = _scored_classes(preds, gts, names, num_classes, classes, ignore_label)
    iou_m = MeanIoU(include_background=False, reduction="none", ignore_empty=False)
    hd_m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    records: list[dict[str, Any]] = []
    for name, p, g in zip(names, preds, gts):
        if scored:
            records += _score_image(name, p, g, scored, ignore_label, spacing, (iou_m, hd_m))
    for m in (iou_m, hd_m):
        m.reset()
    definitions = _definitions(spacing, np.ndim(gts[0]) if gts else 2, ignore_label)
    summary = _summarise(records, scored, class_names)
    summary["hd95_unit"] = definitions["hd95_unit"]
    summary["empty_policy"] = EMPTY_POLICY
    return EvalReport(records=records, summary=summary, definitions=definitions)


def _score_image(name: str, p: np.ndarray, g: np.ndarray, scored: list[int],
                 ignore_label: int | None, spacing: float | Sequence[float] | None,
                 monai_metrics: tuple[Any, Any]) -> list[dict[str, Any]]:
    """One record per scored class of one image: Dice, IoU, HD95 and the empty-mask case."""
    iou_m, hd_m = monai_metrics
    table = np.asarray(scored, dtype=np.int64)
    k_classes = len(scored) + 1
    ps, gs = _to_slots(p, table), _to_slots(g, table)
    if ignore_label is not None:
        ignored = g == ignore_label
        ps[ignored] = 0
        gs[ignored] = 0
    pt, gt = torch.from_numpy(ps), torch.from_numpy(gs)
    sp = _spacing_for(spacing, gt.ndim, f"label map '{name}'")
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(gt.shape, sp)))
    p_oh, g_oh = _one_hot(pt, k_classes), _one_hot(gt, k_classes)
    p_any = p_oh[0, 1:].flatten(1).any(dim=1)
    g_any = g_oh[0, 1:].flatten(1).any(dim=1)
    dice = dice_per_class(pt[None], gt[None], k_classes)[0]
    iou = iou_m(y_pred=p_oh, y=g_oh)[0]
    if bool((p_any & g_any).any()):
        with warnings.catch_warnings():  # MONAI warns about empty classes; policy below
            warnings.simplefilter("ignore")
            hd = hd_m(y_pred=p_oh, y=g_oh, spacing=list(sp))[0]
    else:
        hd = torch.zeros(k_classes - 1)
    records = []
    for k, value in enumerate(scored):
        pa, ga = bool(p_any[k]), bool(g_any[k])
        if pa and ga:
            case, vals = "ok", (float(dice[k]), float(iou[k]), float(hd[k]))
        elif not pa and not ga:
            case, vals = "both_empty", (1.0, 1.0, 0.0)
        else:
            case, vals = "one_empty", (0.0, 0.0, diagonal)
        records.append({"image": name, "class": value, **dict(zip(METRIC_KEYS, vals)),
                        "case": case})
    return records


def _definitions(spacing: float | Sequence[float] | None, ndim: int,
                 ignore_label: int | None) -> dict[str, Any]:
    """What the numbers of a report mean, written into the report."""
    return {
        "dice": "MONAI DiceMetric, foreground classes, per image",
        "iou": "MONAI MeanIoU, foreground classes, per image",
        "hd95": HD95_DEFINITION,
        "hd95_unit": "pixels" if spacing is None else "spacing units",
        "spacing": None if spacing is None else list(_spacing_for(spacing, ndim)),
        "empty_policy": EMPTY_POLICY,
        "classes": CLASSES_POLICY,
        "ignore_label": ignore_label,
        "std": "population standard deviation (ddof=0)",
    }


def write_report(report: EvalReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` (definitions, summary, records) and ``metrics.csv`` (records).

    Args:
        report: what ``evaluate`` returned.
        out_dir: the folder to write into (created if missing).

    Returns:
        The paths of ``metrics.json`` and ``metrics.csv``.

    Raises:
        DiskFullError: the disk is full. Both files are written in full before either
            replaces an old one (``tskd.atomic``), so the old ones are kept.
        TskdError: the folder cannot be written.
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


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int | None = None,
    spacing: float | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    ignore_label: int | None = None,
    classes: Any = None,
) -> EvalReport:
    """Score a folder of predicted label maps against a folder of ground truth, matched by stem.

    Both are read by ``label_folders.read_label_folders``, as training reads labels (its
    docstrings: which files pair up, how the class map is fixed and predictions are read).

    Args:
        pred_dir: folder of predicted label maps.
        gt_dir: folder of ground truth (or one with ``labels/``, ``labelsTr/``, ``labelsTs/``).
        num_classes: declares classes 0..n-1.
        spacing: as ``evaluate``'s.
        class_names: names by class index; default the class map's.
        ignore_label: a ground-truth value left out of scoring.
        classes: the class map as ``data.classes``; before ``num_classes``.

    Returns:
        The ``EvalReport`` of the map's foreground classes, reported by label value.

    Raises:
        TskdInputError: missing folders or predictions, invalid files or declarations.
    """
    names, preds, gts, lmap = read_label_folders(pred_dir, gt_dir, num_classes, class_names,
                                                  ignore_label, classes, stacklevel=3)
    # ignored ground truth decodes to the ignore value itself, which evaluate() leaves out
    return evaluate(preds, gts, names, spacing=spacing,
                    class_names=class_names or dict(zip(lmap.values, lmap.names)),
                    classes=list(lmap.values[1:]), ignore_label=lmap.ignore_label)
