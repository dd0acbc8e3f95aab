"""Prediction from a model folder: label-map files, a labelled folder scored, annotation ranking.

``segmenter_from_bundle`` is the one way to build a ``Segmenter`` (``tskd.inference.segmenter``)
from a student or teacher folder; ``predict_paths`` segments image files and writes label maps
with the user's label values; ``evaluate_folder`` scores a model on a labelled folder;
``rank_for_annotation`` orders images or slices for the "suggest next" loop by the student's
entropy or the teacher-student disagreement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tskd.errors import TskdInputError, TskdWarning
from tskd.inference.segmenter import (
    DEFAULT_TILE_SIZE,
    TILE_ABOVE,
    ContrastLimits,
    Segmenter,
    array_axes,
)

if TYPE_CHECKING:
    from tskd.data.label_map import LabelMap
    from tskd.inference.metrics import EvalReport


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel predictive entropy of (B, C, H, W) logits, normalised to [0, 1]."""
    logp = logits.log_softmax(dim=1)
    ent = -(logp.exp() * logp).sum(dim=1).mean(dim=(1, 2))
    return ent / math.log(logits.shape[1]) if logits.shape[1] > 1 else ent


def _disagreement(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - Dice between label maps (B, H, W), averaged over foreground classes.

    A class absent from both maps agrees fully (Dice 1): ``tskd.inference.dice.dice_per_class``.
    """
    from tskd.inference.dice import dice_per_class

    return 1 - dice_per_class(a, b, num_classes).mean(dim=1)


def rank_for_annotation(
    segmenter: Segmenter,
    images: Sequence[np.ndarray] | np.ndarray,
    teacher_segmenter: Segmenter | None = None,
    contrast_limits: ContrastLimits = None,
) -> list[tuple[int, float]]:
    """Rank images (or the slices of a stack) by how much a label would help, most useful first.

    Score: the student's mean per-pixel predictive entropy, ``-sum_c p_c log p_c`` of the
    softmax divided by ``log C`` (C > 1) so it lies in [0, 1] (uncertainty sampling, Settles,
    "Active Learning Literature Survey", 2009), or, with a teacher, the teacher-student
    disagreement: 1 - Dice of their label maps, mean over foreground classes
    (``tskd.inference.dice.dice_per_class``; a class absent from both agrees fully).

    Args:
        segmenter: the student's ``Segmenter``.
        images: 2D images (H, W[, C]) of any dtype, or one array: a stack (Z, H, W[, C])
            gives its slices, a 2D image itself (axes read by ``array_axes``).
        teacher_segmenter: the teacher's ``Segmenter``; None ranks by the student's entropy.
        contrast_limits: (low, high) intensity window for non-8-bit images (e.g. napari's
            limits); None: per-channel 0.5/99.5 percentiles (``to_float_rgb``).

    Returns:
        ``[(index, score), ...]``, score in [0, 1], sorted by score, highest first (ties by
        index).

    Raises:
        TskdInputError: an array shape that is no image or stack, or an image over the
            segmenter's ``max_pixels``.
    """
    if isinstance(images, np.ndarray):
        ax = array_axes(images)
        images = ax.standard(images) if ax.is_stack else [ax.standard(images)]
    images = list(images)
    scores: list[float] = [0.0] * len(images)
    if teacher_segmenter is None:
        for start, lg in segmenter.iter_logits(images, contrast_limits):
            for k, v in enumerate(_entropy(lg).tolist()):
                scores[start + k] = v
    else:
        student = _labels_per_image(segmenter, images, contrast_limits)
        teacher = _labels_per_image(teacher_segmenter, images, contrast_limits)
        n = max(segmenter.num_classes, teacher_segmenter.num_classes)
        for i, (a, b) in enumerate(zip(student, teacher)):
            scores[i] = float(_disagreement(a[None], b[None], n)[0])
    return sorted(enumerate(scores), key=lambda t: (-t[1], t[0]))


def _labels_per_image(
    segmenter: Segmenter, images: Sequence[np.ndarray], contrast_limits: ContrastLimits
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for _, lg in segmenter.iter_logits(images, contrast_limits):
        out.extend(lg.max(dim=1).indices.cpu())
    return out


def _output_path(out_dir: Path, stem: str, labels: np.ndarray) -> Path:
    png = labels.ndim == 2 and (labels.size == 0 or int(labels.max()) <= 255)
    return out_dir / f"{stem}{'.png' if png else '.tif'}"


def predict_paths(
    segmenter: Segmenter,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    input_folders: Sequence[str | Path] = (),
    log: Callable[[str], None] | None = None,
    label_values: Sequence[int] | None = None,
) -> list[Path]:
    """Segment image files and write their label maps to ``out_dir``, named by the input stem.

    Files are read by ``tskd.data.files.read_image_axes`` (axes metadata first, as training reads
    them) within ``segmenter.max_pixels``. 2D label maps whose values fit in 8 bits are written
    as PNG, stacks and larger values as TIFF, each atomically. With ``overwrite`` the files
    replaced are named in one ``TskdWarning``.

    Args:
        segmenter: the model to run (``segmenter_from_bundle``).
        inputs: image files (tif, png, jpg, npy), 2D or stacks; their stems must differ.
        out_dir: the folder for the label maps; created if missing.
        progress: called as ``progress(done, total)`` after each file.
        overwrite: replace existing ``<stem>.png``/``<stem>.tif`` files in ``out_dir``.
        input_folders: the folders the user named, which ``out_dir`` may not be, contain or be
            inside.
        log: gets one line for each file that is tiled.
        label_values: ``label_values[k]`` is the label value written for class ``k`` (a
            model's ``label_values``, see ``tskd.data.label_map.LabelMap.from_meta``), so
            predictions carry the user's original ids (0, 1, 5 or 0/255); None writes class
            indices.

    Returns:
        The label-map files written, in the order of ``inputs``.

    Raises:
        TskdInputError: before anything is segmented: inputs sharing a stem, ``label_values``
            not one per class, an ``out_dir`` that is a file, the folder of an input file or
            is, contains or is inside one of ``input_folders``, a folder named
            ``<stem>.png``/``<stem>.tif`` in it (even with ``overwrite``) and, unless
            ``overwrite``, an existing ``<stem>.png``/``<stem>.tif``. While running: an
            unreadable image or one over ``segmenter.max_pixels``.
        DiskFullError: the output disk is full (a file being replaced keeps its old bytes).
    """
    paths = [Path(p) for p in inputs]
    stems = _unique_stems(paths)
    table = None if label_values is None else _label_table(label_values, segmenter.num_classes)
    out = _checked_output(out_dir, paths, stems, input_folders, overwrite)
    written: list[Path] = []
    replaced: list[Path] = []
    for i, (path, stem) in enumerate(zip(paths, stems)):
        target, existed = _segment_to_file(segmenter, path, out, stem, table, log)
        written.append(target)
        replaced += [target] if existed else []
        if progress is not None:
            progress(i + 1, len(paths))
    if replaced:  # one warning, to the caller
        names = ", ".join(p.name for p in replaced[:10]) + (" ..." if len(replaced) > 10 else "")
        warnings.warn(TskdWarning(f"replaced {len(replaced)} existing file(s) in {out}: {names}"),
                      stacklevel=2)
    return written


def _unique_stems(paths: list[Path]) -> list[str]:
    """The stems of ``paths`` (``tskd.data.files.stem``); TskdInputError if two share one."""
    from tskd.data import files

    stems = [files.stem(p) for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise TskdInputError(f"several inputs share the name {dup[0]!r}; outputs would collide")
    return stems


def _segment_to_file(segmenter: Segmenter, path: Path, out: Path, stem: str,
                     table: np.ndarray | None,
                     log: Callable[[str], None] | None) -> tuple[Path, bool]:
    """Segment one image file and write its label map (``_output_path``).

    Returns:
        The file written, and whether it replaced an existing one.
    """
    from tskd.data import files

    image, ax = files.read_image_axes(path, max_pixels=segmenter.max_pixels)
    note = segmenter.tiling_note(*ax.spatial_shape[-2:])
    if note and log is not None:
        log(f"{path.name}: {note}")
    labels = segmenter.segment(image, is_stack=ax.is_stack)
    if table is not None:
        labels = table[labels]
    target = _output_path(out, stem, labels)
    existed = target.exists()
    files.write_label(target, labels)
    return target, existed


def _label_table(label_values: Sequence[int], num_classes: int) -> np.ndarray:
    """``label_values`` as an int64 lookup table of one value per class."""
    table = np.asarray(label_values, dtype=np.int64)
    if table.shape != (num_classes,):
        raise TskdInputError(
            f"{len(table)} label values for a model of {num_classes} classes; "
            "the model's meta.json label_values do not fit it"
        )
    return table


def _checked_output(out_dir: str | Path, paths: list[Path], stems: list[str],
                    input_folders: Sequence[str | Path], overwrite: bool) -> Path:
    """Check the output folder against every refusal of ``predict_paths``, then create it.

    Raises ``TskdInputError`` before anything is written.
    """
    from tskd.data import outputs

    out = outputs.check_output_folder(out_dir)
    outputs.check_not_input(out, [*input_folders, *paths])
    candidates = [out / f"{stem}{suffix}" for stem in stems for suffix in (".png", ".tif")]
    outputs.check_no_folders(candidates)  # a folder where a file goes: refused in every case
    if not overwrite:
        outputs.check_replace(candidates, False, out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def segmenter_from_bundle(
    folder: str | Path,
    device: str = "auto",
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    batch_size: int = 8,
    max_pixels: int | None = None,
) -> tuple[Segmenter, dict[str, Any]]:
    """Load a student or teacher folder into a ``Segmenter``: the one way to build one.

    Args:
        folder: the model folder (or a file inside it).
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (``tskd.engine.resolve_device``).
        tile_size: tile side in pixels. None cuts tiles at the bundle's ``train_image_shape``
            (the median size of the labelled images it was trained on), so a tile is resized
            to the model input by the same factor as a training image was; images up to
            ``TILE_ABOVE`` (1.5) times that size are resized whole. A bundle without the key
            (an earlier version) tiles at ``DEFAULT_TILE_SIZE`` (1024) px, with a
            ``TskdWarning``.
        tile_overlap: pixels shared by neighbouring tiles; None: 64 px, at most a quarter of
            the tile's shorter side.
        batch_size: images or tiles per forward pass (``tskd.config.PredictConfig``: 8).
        max_pixels: most pixels of one 2D image; None:
            ``tskd.data.pixel_budget.default_max_pixels()``.

    Returns:
        ``(segmenter, meta)``: the ``Segmenter`` and the bundle's ``meta.json`` as a dict.

    Raises:
        CheckpointError: an unusable bundle (``ModelMetaError`` for its ``meta.json``).
        TskdInputError: tiles under ``MIN_TILE_SIZE`` (16) px (a given ``tile_size`` or a tiny
            ``train_image_shape``), an overlap not in [0, tile side), a bad pixel budget.
        TskdError: an unavailable device.
    """
    from tskd.inference import bundle

    folder = Path(folder)
    model, meta = bundle.load_bundle(folder)
    size = bundle.input_size(meta)
    tile, kwargs = _tiling(folder, meta, tile_size)
    side = min(tile) if isinstance(tile, tuple) else tile
    overlap = min(64, side // 4) if tile_overlap is None else int(tile_overlap)
    segmenter = Segmenter(model, size, int(meta["num_classes"]), device=device,
                          batch_size=batch_size, tile_size=tile, tile_overlap=overlap,
                          max_pixels=max_pixels, **kwargs)
    return segmenter, meta


def _tiling(folder: Path, meta: dict[str, Any],
            tile_size: int | None) -> tuple[int | tuple[int, int], dict[str, Any]]:
    """The tile size ``segmenter_from_bundle`` uses, and the ``Segmenter`` settings that go with it.

    A given ``tile_size``; else the bundle's ``train_image_shape`` (tiling only above
    ``TILE_ABOVE`` times it); else ``DEFAULT_TILE_SIZE`` with a ``TskdWarning`` to the caller's
    caller.
    """
    # checked by the bundle's schema (tskd.models.meta_schema) when it was loaded
    shape = meta.get("train_image_shape")
    trained = (int(shape[0]), int(shape[1])) if shape is not None else None
    kwargs: dict[str, Any] = {}
    if tile_size is not None:
        tile: int | tuple[int, int] = int(tile_size)
        kwargs["tile_origin"] = f"tile size {tile_size}"
    elif trained is not None:
        tile = trained
        kwargs.update(tile_above=TILE_ABOVE, tile_origin=f"the size of the model's training "
                      f"images, {trained[0]}x{trained[1]}")
    else:
        tile = DEFAULT_TILE_SIZE
        kwargs["tile_origin"] = f"{DEFAULT_TILE_SIZE} px, the default"
        warnings.warn(
            f"{folder}: the model does not record the size of the images it was trained on "
            f"(made by an earlier version), so large images are tiled at {DEFAULT_TILE_SIZE} px "
            "as before, whatever the training scale; retrain it, or pass --tile-size",
            TskdWarning, stacklevel=3,
        )
    return tile, kwargs


def evaluate_folder(
    segmenter: Segmenter, folder: str | Path, label_map: LabelMap | None = None
) -> tuple[EvalReport, float]:
    """Segment every image of a labelled folder and score it.

    The one path by which the pipeline, the pretraining check and the benchmarks score a model.
    Images and labels are read by ``tskd.data.samples.read_labelled_set`` within the
    segmenter's pixel budget; scores are ``tskd.inference.metrics.evaluate``'s.

    Args:
        segmenter: the model to score.
        folder: a labelled folder (images/+labels/ or the nnU-Net raw layout).
        label_map: the model's class map (``LabelMap.from_meta(meta)``): the folder's labels
            are read with it and every class of the model is scored, reported by label value.
            None: the folder's own map is used and must match the model's classes (as for
            models trained on classes 0..C-1).

    Returns:
        ``(report, ms)``: the ``EvalReport`` and the mean wall time of segmentation per image
        in milliseconds (reading and scoring not included).

    Raises:
        TskdInputError: an unreadable folder, a label value the model has no class for, or
            a folder read as another number of classes than the model predicts.
    """
    import time

    from tskd.data.label_map import LabelMap
    from tskd.data.pixel_budget import pixel_budget
    from tskd.data.samples import read_labelled_set
    from tskd.inference import metrics

    with pixel_budget(segmenter.max_pixels):
        samples, lmap = read_labelled_set(folder, label_map=label_map)
    if label_map is None and lmap.is_identity and lmap.num_classes < segmenter.num_classes:
        # a model of classes 0..C-1 on a folder that shows only some of them
        lmap = LabelMap.identity(segmenter.num_classes, None, lmap.ignore_label)
    if lmap.num_classes != segmenter.num_classes:
        raise TskdInputError(
            f"the labels in {folder} are read as {lmap.num_classes} classes "
            f"{lmap.describe()} but the model predicts {segmenter.num_classes}; evaluate with "
            "the model's class map (its meta.json label_values)"
        )
    t0 = time.perf_counter()
    preds = [segmenter.segment(s.image, is_stack=False) for s in samples]
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(samples))
    report = metrics.evaluate(
        [lmap.decode(p) for p in preds], [lmap.decode(s.label) for s in samples],
        [s.name for s in samples], classes=list(lmap.values[1:]),
        class_names=dict(zip(lmap.values, lmap.names)), ignore_label=lmap.ignore_label,
    )
    return report, ms
