"""Folders of label maps for ``tskd evaluate``: predictions paired with ground truth by stem.

Both sides are read through the one label policy (``tskd.data.label_policy``). The ground
truth fixes the class map: declared by ``classes`` (as ``data.classes``), ``num_classes``
(classes 0..n-1) or a dataset.json beside the ground truth, else taken from its values. Each
prediction is read with that map: a predicted value that is not a class counts as background
(wrong for every class) and a ``TskdWarning`` names it. One exception, always stated in a
one-line note: for a binary ground truth (one foreground class), a prediction saved as a binary
mask 0/1 or 0/255 whose foreground is not that class is read as its foreground (a 0/1
prediction against 0/2 or 0/255 ground truth, a 0/255 prediction against 0/1 ground truth). So
a 0/1 prediction scores against 0/2 ground truth as its foreground (with the note), while a
0/2 prediction against 0/1 ground truth scores 0 (2 is not a class, with the warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tskd.data import label_map, label_policy
from tskd.data.declared import declared_from_config, declared_map
from tskd.data.files import list_images, read_label, stem
from tskd.data.label_map import LabelMap
from tskd.errors import TskdInputError, TskdWarning


def label_files(folder: Path) -> dict[str, Path]:
    """Find the label files of ``folder``, by stem.

    The folder's own images, else those of its ``labels/``, ``labelsTr/`` or ``labelsTs/`` (an
    images/+labels/ or nnU-Net folder given instead of the labels themselves).

    Args:
        folder: a folder of label maps (or the dataset folder above one).

    Returns:
        ``{stem: path}`` (``tskd.data.files.stem``: the name without its image suffix); empty
        when the folder holds no image file.

    Raises:
        TskdInputError: ``folder`` is not an existing folder.
    """
    if not folder.is_dir():
        raise TskdInputError(f"label folder not found: {folder}")
    found = list_images(folder)
    if not found:
        for sub in ("labels", "labelsTr", "labelsTs"):
            if (folder / sub).is_dir():
                found = list_images(folder / sub)
                break
    return {stem(f): f for f in found}


def _paired_files(pred_dir: Path, gt_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Pair the files by stem: (ground truth, predictions), each ground truth with a prediction.

    A prediction named after its nnU-Net image (``case_0000``) matches label ``case``. Raises
    ``TskdInputError`` when the ground truth is empty or a prediction is missing.
    """
    gt_files = label_files(gt_dir)
    pred_files = label_files(pred_dir)
    if not gt_files:
        raise TskdInputError(f"no label maps found in {gt_dir}")
    for name, path in list(pred_files.items()):
        if name.endswith("_0000") and name[:-5] not in pred_files:
            pred_files[name[:-5]] = path
    missing = sorted(set(gt_files) - set(pred_files))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise TskdInputError(f"no prediction in {pred_dir} for {len(missing)} label(s): {shown}")
    return gt_files, pred_files


def _declared(gt_dir: Path, num_classes: int | None, class_names: Sequence[str] | None,
              ignore_label: int | None, classes: Any) -> LabelMap | None:
    """Give the declared class map, or None when nothing declares one.

    ``classes``, else ``num_classes``, else a dataset.json in ``gt_dir`` or its parent.
    """
    if num_classes is not None and not 2 <= num_classes <= label_map.MAX_CLASSES:
        raise TskdInputError(f"num_classes must be in 2..{label_map.MAX_CLASSES} (background "
                             f"+ classes), got {num_classes}")
    declared = declared_from_config(classes, ignore_label)
    if declared is None and num_classes is not None:
        declared = LabelMap.identity(num_classes, class_names, ignore_label)
    if declared is None:
        for folder in (gt_dir, gt_dir.parent):
            declared = declared_map(folder, ignore_label)
            if declared is not None:
                break
    return declared


def _read_predictions(raw: list[np.ndarray], files: list[Path], lmap: LabelMap,
                      pred_dir: Path, stacklevel: int) -> list[np.ndarray]:
    """Read predictions as label values of ``lmap``.

    Binary masks are read as its foreground, values that are not classes as background, each
    kind said in one ``TskdWarning`` (at ``stacklevel``, as ``warnings.warn``'s from this
    function).
    """
    preds, strays, binary = [], {}, {}
    for path, p in zip(files, raw, strict=True):
        vals = label_policy.distinct_values(p)
        v = label_policy.binary_foreground_value({int(x) for x in vals}, lmap.values, None) \
            if lmap.num_classes == 2 else None
        if v is not None:  # a binary prediction saved with the other foreground value
            binary[str(path)] = v
            p = np.where(p == v, lmap.values[1], p)
            vals = label_policy.distinct_values(p)
        extra = sorted(set(vals.tolist()) - set(lmap.values))
        if extra:
            strays[str(path)] = extra
        preds.append(lmap.decode(lmap.encode(p, str(path), unknown="background")))
    if binary:
        shown = ", ".join(Path(f).name for f in list(binary)[:3]) + (
            f" and {len(binary) - 3} more" if len(binary) > 3 else "")
        saved = ", ".join(f"0/{v}" for v in sorted(set(binary.values())))
        fg = lmap.values[1]
        named = "" if lmap.names[1] == f"class {fg}" else f" ({lmap.names[1]})"
        warnings.warn(
            f"{len(binary)} prediction(s) in {pred_dir} ({shown}) are binary masks saved {saved}; "
            f"their foreground is read as the ground truth's one class, label value {fg}{named}",
            TskdWarning, stacklevel=stacklevel,
        )
    if strays:
        first = next(iter(strays))
        warnings.warn(
            f"{len(strays)} prediction(s) hold values that are not classes of the ground truth "
            f"(e.g. {first}: {', '.join(map(str, strays[first][:8]))}); they count as wrong for "
            "every class",
            TskdWarning, stacklevel=stacklevel,
        )
    return preds


def read_label_folders(
    pred_dir: str | Path, gt_dir: str | Path, num_classes: int | None = None,
    class_names: Sequence[str] | None = None, ignore_label: int | None = None,
    classes: Any = None, stacklevel: int = 2,
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], LabelMap]:
    """Read predictions and ground truth as label values of one class map.

    The ground truth fixes the map (see the module docstring); every ground-truth file needs a
    prediction of the same stem, extra predictions are ignored. Notes and warnings are
    ``TskdWarning``.

    Args:
        pred_dir: folder of predicted label maps (tif, png, jpg, npy; ``label_files``).
        gt_dir: folder of ground-truth label maps, or a dataset folder with ``labels/``,
            ``labelsTr/`` or ``labelsTs/``.
        num_classes: declares classes 0..n-1 (background included), n in
            2..``tskd.data.label_map.MAX_CLASSES``; None: not declared this way.
        class_names: names of the ``num_classes`` classes, by class index.
        ignore_label: a ground-truth value to leave out of scoring; None: none (unless a
            dataset.json names an ignore label).
        classes: the class map as the config's ``data.classes`` (names by position, or
            ``{value: name}``); takes precedence over ``num_classes``.
        stacklevel: where the warnings point, as ``warnings.warn``'s from this function.

    Returns:
        ``(names, predictions, ground truth, map)``: the ground truth's stems (sorted), int64
        label maps (H, W) or (Z, H, W) in the map's label values (ignored ground-truth pixels
        holding the map's ignore value), and the ``LabelMap``.

    Raises:
        TskdInputError: a missing folder, no ground truth, a missing prediction, an invalid
            label file or declaration, or ground truth the label policy refuses.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gt_files, pred_files = _paired_files(pred_dir, gt_dir)
    names = sorted(gt_files)
    gts_raw = [read_label(gt_files[n]) for n in names]
    preds_raw = [read_label(pred_files[n]) for n in names]
    declared = _declared(gt_dir, num_classes, class_names, ignore_label, classes)
    gt_dec = label_policy.infer_map(
        [(str(gt_files[n]), label_policy.distinct_values(g)) for n, g in zip(names, gts_raw)],
        declared, ignore_label, where=f"ground truth in {gt_dir}",
    )
    gt_dec.raise_first()
    gt_dec.emit(stacklevel=stacklevel + 1)
    lmap = gt_dec.label_map
    assert lmap is not None
    gts = [lmap.decode(label_policy.encode_file(g, str(gt_files[n]), gt_dec))
           for n, g in zip(names, gts_raw)]
    preds = _read_predictions(preds_raw, [pred_files[n] for n in names], lmap, pred_dir,
                              stacklevel + 1)
    return names, preds, gts, lmap
