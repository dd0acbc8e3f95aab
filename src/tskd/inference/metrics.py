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

Which classes are scored: those that exist, never empty ids. They are the declared classes
(``classes``, ``num_classes``, a model's or dataset.json's class map) or else the foreground
values seen in the ground truth. Label maps are compared by their label values (no one-hot of
``max value + 1``): a predicted value that is not a scored class counts as background, i.e.
wrong for every class. Pixels whose ground truth is the configured ignore value are left out.
``evaluate_folders`` reads ground truth and predictions through the one label policy
(``tskd.data.label_policy``). The ground truth fixes the classes; each prediction file is read with
the same map: a predicted value that is not a class counts as wrong for every class, and a
``TskdWarning`` names it. One exception, always stated in a one-line note: for a binary ground
truth (one foreground class), a prediction saved as a binary mask 0/1 or 0/255 whose foreground
is not that class is read as its foreground (a 0/1 prediction against 0/2 or 0/255 ground
truth, a 0/255 prediction against 0/1 ground truth). So a 0/1 prediction scores against 0/2
ground truth as its foreground (with the note), while a 0/2 prediction against 0/1 ground truth
scores 0 (2 is not a class, with the warning).

Summary statistics: per class and overall (over all image-class records) mean and population
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
from typing import Any, Literal

import numpy as np
import torch

from tskd.errors import TskdInputError, TskdWarning

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
    return _one_hot_batch(labels[None], num_classes)


def _one_hot_batch(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, spatial...) int -> (B, C, spatial...) float one-hot, the layout MONAI expects."""
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


def dice_per_class(
    pred: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
    reduction: Literal["none", "mean_batch"] = "none",
) -> torch.Tensor:
    """Dice of label maps per image and foreground class: the one Dice rule of tskd.

    Args:
        pred: predicted class indices, int (B, H, W) or (B, Z, H, W).
        truth: true class indices, same shape as ``pred``.
        num_classes: classes including the background (0); at least 2 are scored as if given
            (so a one-class model still has one foreground class).
        ignore_index: truth pixels with this value are left out (background in both maps).
        reduction: ``"none"`` gives (B, K) per image; ``"mean_batch"`` gives (K,), the mean
            over the images of each class (MONAI's names), K = max(num_classes, 2) - 1.

    Returns:
        float32 Dice in [0, 1] on ``pred``'s device. A class absent from both maps scores 1
        and a class in only one scores 0 (MONAI ``compute_dice`` with ``ignore_empty=False``,
        background excluded; ``EMPTY_POLICY``). A value outside 0..num_classes-1 counts as
        background.

    Raises:
        TskdInputError: when the shapes differ.
    """
    from monai.metrics import compute_dice

    if pred.shape != truth.shape:
        raise TskdInputError(
            f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs "
            f"{tuple(truth.shape)}"
        )
    k = max(int(num_classes), 2)
    pred, truth = pred.long(), truth.long().to(pred.device)
    if ignore_index is not None:
        keep = truth != ignore_index
        pred, truth = pred.where(keep, 0), truth.where(keep, 0)
    pred = pred.where((pred >= 0) & (pred < k), 0)
    truth = truth.where((truth >= 0) & (truth < k), 0)
    scores = compute_dice(_one_hot_batch(pred, k), _one_hot_batch(truth, k),
                          include_background=False, ignore_empty=False).float()
    return scores.mean(0) if reduction == "mean_batch" else scores


@torch.no_grad()
def validation_dice(
    model: torch.nn.Module, samples: Sequence[Any], size: int, num_classes: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """Dice per validation image and foreground class of a segmentation model.

    Args:
        model: maps float (B, 3, size, size) in [0, 1] to logits (B, C, size, size).
        samples: ``tskd.data.samples.Sample`` with labels (class indices; ``label_map.IGNORE_INDEX``
            pixels are left out), resized to ``size`` as in training (``tskd.data.dataset``).
        size: the model's input side in pixels.
        num_classes: classes including the background.
        batch_size: images per forward pass; the result does not depend on it.

    Returns:
        float32 (images, K) on the CPU (``dice_per_class``); the model is left in the
        train/eval mode it had.
    """
    from torch.utils.data import DataLoader

    from tskd.data.dataset import LabelledDataset
    from tskd.data.label_map import IGNORE_INDEX

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(LabelledDataset(list(samples), size, augment=False),
                        batch_size=max(1, batch_size), shuffle=False)
    scores = []
    try:
        for batch in loader:
            pred = model(batch["image"].to(device)).float().argmax(1)
            scores.append(dice_per_class(pred, batch["label"].to(device), num_classes,
                                         ignore_index=IGNORE_INDEX).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0, max(num_classes, 2) - 1)


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
    """The foreground label values to score: declared (``classes``, ``num_classes``) or seen
    in the ground truth; bounded before anything is allocated per class."""
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

    ``preds``/``gts``: integer label maps, 2D (H, W) or 3D (Z, H, W), compared by label value.
    Scored classes (records' ``class`` is the label value): ``classes`` (label values) when
    given, else 1..``num_classes``-1 (background included in the count; values outside raise),
    else the foreground values seen in the ground truth (at most
    ``label_policy.MAX_UNDECLARED_VALUES``). A predicted value that is not scored counts as
    background. ``ignore_label``: ground-truth pixels with this value are left out (both maps
    read as background there). ``spacing`` is per array axis (or one number for all); ``None``
    means pixels. ``class_names``: by label value (a list indexed by value, or a mapping).
    Raises ``TskdInputError`` for mismatched shapes or counts and invalid values.
    """
    from monai.metrics import HausdorffDistanceMetric, MeanIoU

    names = _check_inputs(preds, gts, names)
    preds = [_as_values(p, n, "prediction") for n, p in zip(names, preds)]
    gts = [_as_values(g, n, "ground truth") for n, g in zip(names, gts)]
    scored = _scored_classes(preds, gts, names, num_classes, classes, ignore_label)
    table = np.asarray(scored, dtype=np.int64)
    k_classes = len(scored) + 1

    iou_m = MeanIoU(include_background=False, reduction="none", ignore_empty=False)
    hd_m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")

    records: list[dict[str, Any]] = []
    for name, p, g in zip(names, preds, gts):
        if not scored:
            continue
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
        for k, value in enumerate(scored):
            pa, ga = bool(p_any[k]), bool(g_any[k])
            if pa and ga:
                case, vals = "ok", (float(dice[k]), float(iou[k]), float(hd[k]))
            elif not pa and not ga:
                case, vals = "both_empty", (1.0, 1.0, 0.0)
            else:
                case, vals = "one_empty", (0.0, 0.0, diagonal)
            records.append(
                {"image": name, "class": value, **dict(zip(METRIC_KEYS, vals)), "case": case}
            )
    for m in (iou_m, hd_m):
        m.reset()

    sp_out = None if spacing is None else list(_spacing_for(spacing, np.ndim(gts[0]) if gts else 2))
    definitions = {
        "dice": "MONAI DiceMetric, foreground classes, per image",
        "iou": "MONAI MeanIoU, foreground classes, per image",
        "hd95": HD95_DEFINITION,
        "hd95_unit": "pixels" if spacing is None else "spacing units",
        "spacing": sp_out,
        "empty_policy": EMPTY_POLICY,
        "classes": CLASSES_POLICY,
        "ignore_label": ignore_label,
        "std": "population standard deviation (ddof=0)",
    }
    summary = _summarise(records, scored, class_names)
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
    from tskd.data.files import list_images, stem

    if not folder.is_dir():
        raise TskdInputError(f"label folder not found: {folder}")
    files = list_images(folder)
    if not files:  # an images/+labels/ or nnU-Net folder given instead of the labels themselves
        for sub in ("labels", "labelsTr", "labelsTs"):
            if (folder / sub).is_dir():
                files = list_images(folder / sub)
                break
    return {stem(f): f for f in files}


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

    A prediction named after its nnU-Net image (``case_0000``) also matches label ``case``.
    Every ground-truth file needs a prediction; extra predictions are ignored. Both sides are
    read through ``tskd.data.label_policy``, as training reads labels: the class map is declared by
    ``classes`` (as ``data.classes``), ``num_classes`` (classes 0..n-1) or a dataset.json
    beside the ground truth (in ``gt_dir`` or its parent), else taken from the ground truth's
    values. Predictions are read with that map: values outside it count as background (wrong
    for every class; a ``TskdWarning`` names them), except that for a binary ground truth a
    prediction saved 0/1 or 0/255 is read as its foreground class, with one ``TskdWarning``
    note naming the files (see the module docstring). Scores cover the map's foreground
    classes and are reported by label value.
    """
    from tskd.data import label_map, label_policy
    from tskd.data.files import read_label

    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gt_files = _label_files(gt_dir)
    pred_files = _label_files(pred_dir)
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
    gts_raw = [read_label(gt_files[n]) for n in names]
    preds_raw = [read_label(pred_files[n]) for n in names]

    if num_classes is not None and not 2 <= num_classes <= label_map.MAX_CLASSES:
        raise TskdInputError(f"num_classes must be in 2..{label_map.MAX_CLASSES} (background "
                             f"+ classes), got {num_classes}")
    declared = label_map.declared_from_config(classes, ignore_label)
    if declared is None and num_classes is not None:
        declared = label_map.LabelMap.identity(num_classes, class_names, ignore_label)
    if declared is None:
        for folder in (gt_dir, gt_dir.parent):
            declared = label_map.declared_map(folder, ignore_label)
            if declared is not None:
                break
    gt_dec = label_policy.infer_map(
        [(str(gt_files[n]), label_policy.distinct_values(g)) for n, g in zip(names, gts_raw)],
        declared, ignore_label, where=f"ground truth in {gt_dir}",
    )
    gt_dec.raise_first()
    gt_dec.emit(stacklevel=3)
    lmap = gt_dec.label_map
    assert lmap is not None
    gts = [lmap.decode(label_policy.encode_file(g, str(gt_files[n]), gt_dec))
           for n, g in zip(names, gts_raw)]
    preds, strays, binary = [], {}, {}
    for n, p in zip(names, preds_raw):
        vals = label_policy.distinct_values(p)
        v = label_policy.binary_foreground_value({int(x) for x in vals}, lmap.values, None) \
            if lmap.num_classes == 2 else None
        if v is not None:  # a binary prediction saved with the other foreground value
            binary[str(pred_files[n])] = v
            p = np.where(p == v, lmap.values[1], p)
            vals = label_policy.distinct_values(p)
        extra = sorted(set(vals.tolist()) - set(lmap.values))
        if extra:
            strays[str(pred_files[n])] = extra
        preds.append(lmap.decode(lmap.encode(p, str(pred_files[n]), unknown="background")))
    if binary:
        shown = ", ".join(Path(f).name for f in list(binary)[:3]) + (
            f" and {len(binary) - 3} more" if len(binary) > 3 else "")
        saved = ", ".join(f"0/{v}" for v in sorted(set(binary.values())))
        fg = lmap.values[1]
        named = "" if lmap.names[1] == f"class {fg}" else f" ({lmap.names[1]})"
        warnings.warn(
            f"{len(binary)} prediction(s) in {pred_dir} ({shown}) are binary masks saved {saved}; "
            f"their foreground is read as the ground truth's one class, label value {fg}{named}",
            TskdWarning, stacklevel=2,
        )
    if strays:
        first = next(iter(strays))
        warnings.warn(
            f"{len(strays)} prediction(s) hold values that are not classes of the ground truth "
            f"(e.g. {first}: {', '.join(map(str, strays[first][:8]))}); they count as wrong for "
            "every class",
            TskdWarning, stacklevel=2,
        )
    # ignored ground truth decodes to the ignore value itself, which evaluate() leaves out
    return evaluate(preds, gts, names, spacing=spacing,
                    class_names=class_names or dict(zip(lmap.values, lmap.names)),
                    classes=list(lmap.values[1:]), ignore_label=lmap.ignore_label)
