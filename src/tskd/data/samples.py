"""Labelled sets and unlabelled folders read as 2D samples: the training data of every stage.

A labelled set pairs each image with its label map (``tskd.data.folders`` finds the files);
label values become class indices through the one label policy (``tskd.data.label_policy``).
Stacks are split into 2D slices (``slice_name``); in a labelled stack only slices with labelled
pixels become samples. Mixed channel counts are converted to the most common one. Every problem
a user can fix raises ``TskdInputError`` with one sentence naming the file.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tskd.data import label_policy
from tskd.data.axes import ImageAxes, axes_reading, image_axes
from tskd.data.axes_notes import AxesNotes
from tskd.data.files import read_image_axes, read_label
from tskd.data.folders import labelled_cases, no_images_error, unlabelled_cases
from tskd.errors import TskdInputError, TskdWarning

if TYPE_CHECKING:
    from tskd.data.label_map import LabelMap


@dataclass
class Sample:
    """One 2D image, (H, W) or channels-last (H, W, C), with its label map (H, W) if any.

    Attributes:
        name: The file stem, or ``slice_name(stem, z)`` for a slice of a stack.
        image: The image in its file's dtype (uint8, uint16, float, ...).
        label: Class indices (int64, 0..C-1, ignored pixels ``label_map.IGNORE_INDEX``) once
            read by ``read_labelled_set``; None for an unlabelled image.
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None = None


def slice_name(name: str, z: int) -> str:
    """The name of slice ``z`` (0-based) of the stack called ``name``: ``name_z0007``.

    The one naming rule for slices, in training samples and in the files the napari widgets
    write into a run folder (``run/data``, corrections). Four digits: run folders written by
    the widgets already hold such names (``scan_z0004``), and stacks up to 10 000 slices keep
    their order when the names are sorted.

    Args:
        name: The stack's name (its file stem).
        z: The slice index, from 0.

    Returns:
        ``name_z`` + ``z`` in four digits, e.g. ``scan_z0007``.
    """
    return f"{name}_z{z:04d}"



def read_case(
    paths: list[Path], label_shape: Sequence[int] | None = None, notes: AxesNotes | None = None,
    check_finite: bool = True,
) -> tuple[np.ndarray, ImageAxes]:
    """One image from its file, or from its channel files (nnU-Net) merged channels-last.

    Args:
        paths: The case's file, or its channel files in channel order.
        label_shape: Its label map's shape, which chooses among readings without axes metadata.
        notes: Where readings that were guesses go (one warning per folder); None: one warning
            per file.
        check_finite: Warn once per file about NaN or infinite values.

    Returns:
        ``(image, axes)``: the image in the standard layout (H, W[, C]) or (Z, H, W[, C]) in the
        files' dtype, and how it was read.

    Raises:
        TskdInputError: An error of ``read_image_axes``, a channel file with several channels,
            or channel files of different sizes.
    """
    read = []
    for p in paths:
        plain = None
        arr, ax = read_image_axes(p, label_shape=label_shape, warn=notes is None,
                                  check_finite=check_finite)
        if ax.source == "label":
            plain = image_axes(ax.shape, where=str(p))
        if notes is not None:
            notes.add(p, ax, plain)
        read.append((arr, ax))
    if len(read) == 1:
        return read[0]
    arrays = [a for a, _ in read]
    for p, (_, ax) in zip(paths, read, strict=True):
        if ax.channel_axis is not None:
            raise TskdInputError(
                f"{p}: an nnU-Net channel file must hold one channel, not {ax.channels}"
            )
    if len({a.shape for a in arrays}) != 1:
        shapes = ", ".join(f"{p.name} {a.shape}" for p, a in zip(paths, arrays, strict=True))
        raise TskdInputError(f"channel files of one case differ in size: {shapes}")
    merged = np.stack(arrays, axis=-1)
    stack = 0 if read[0][1].is_stack else None
    return merged, axes_reading(merged.shape, stack, merged.ndim - 1, "metadata",
                            "nnU-Net channel files")


def _slices(name: str, image: np.ndarray, ax: ImageAxes) -> list[Sample]:
    """An unlabelled image (standard layout) as 2D samples (a stack gives one per slice)."""
    if ax.is_stack:
        return [Sample(slice_name(name, z), image[z]) for z in range(image.shape[0])]
    return [Sample(name, image)]


def fit_to_label(image: np.ndarray, label: np.ndarray, ipath: Path, lpath: Path,
                  ax: ImageAxes | None = None) -> np.ndarray:
    """The image checked against its label map's size, returned unchanged.

    Args:
        image: The image in the standard layout (H, W[, C]) or (Z, H, W[, C]).
        label: Its label values, (H, W) or (Z, H, W).
        ipath: The image file, named in messages.
        lpath: The label file, named in messages.
        ax: How the image's axes were read (said in the message); None: 2D when ``image`` is.

    Returns:
        ``image``, unchanged.

    Raises:
        TskdInputError: The label map is not (H, W) or (Z, H, W), has channels, is a stack for a
            2D image, or its height and width differ from the image's.
    """
    if label.ndim not in (2, 3):
        raise TskdInputError(f"{lpath}: label map must be (H, W) or a stack (Z, H, W), "
                             f"not {label.shape}")
    spatial = image.shape[: label.ndim]
    extra = image.ndim - label.ndim
    image_2d = not ax.is_stack if ax is not None else image.ndim == 2
    if label.ndim == 3 and image_2d:  # a 2D image has one label map (H, W)
        if label.shape[:2] == image.shape[:2]:
            raise TskdInputError(
                f"{lpath}: the label map has {label.shape[2]} channels (shape {label.shape}); "
                f"a label map must have one - save the class ids of {ipath.name} as one "
                "gray or palette image (H, W)"
            )
        if label.shape[1:] == image.shape[:2]:
            raise TskdInputError(
                f"{lpath}: the label map is a stack of {label.shape[0]} slices "
                f"{label.shape} but its image {ipath.name} is 2D {image.shape}; a 2D image "
                "needs one label map (H, W)"
            )
    if spatial != label.shape or extra not in (0, 1):
        read = (f" read as {ax.describe()} ({ax.reason})"
                if ax is not None and len(ax.shape) > 2 else "")
        raise TskdInputError(
            f"{ipath.name} and its label {lpath.name} differ in size: image {image.shape}"
            f"{read}, label {label.shape} (height and width must match)"
        )
    return image


def _pairs_to_samples(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> list[Sample]:
    """2D samples from (name, image, label); a stack gives its slices that have labels."""
    samples: list[Sample] = []
    for name, image, label in pairs:
        if label.ndim == 3:
            samples += [Sample(slice_name(name, z), image[z], label[z])
                        for z in range(label.shape[0]) if (label[z] > 0).any()]
        else:
            samples.append(Sample(name, image, label))
    return samples


def _channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else image.shape[-1]


def _to_channels(image: np.ndarray, target: int) -> np.ndarray:
    """Convert (H, W[, C]) to ``target`` channels: repeat gray, drop alpha/extras, pad zeros."""
    c = _channels(image)
    if target == 1:
        if c in (3, 4):  # colour to gray by the mean of R, G, B
            gray = image[..., :3].mean(-1)
            return (gray if image.dtype.kind == "f" else np.rint(gray)).astype(image.dtype)
        return image if image.ndim == 2 else image[..., 0]
    if c == 1:
        gray = image if image.ndim == 2 else image[..., 0]
        return np.repeat(gray[..., None], target, axis=-1)
    if c > target:
        return image[..., :target]
    pad = np.zeros(image.shape[:-1] + (target - c,), image.dtype)
    return np.concatenate([image, pad], axis=-1)


def _conform(samples: list[Sample], where: Path) -> list[Sample]:
    """Give every image the most common channel count (ties: more channels), with one warning."""
    counts = Counter(_channels(s.image) for s in samples)
    if len(counts) <= 1:
        return samples
    target = max(counts, key=lambda c: (counts[c], c))
    n_converted = sum(n for c, n in counts.items() if c != target)
    found = ", ".join(f"{n} with {c}" for c, n in sorted(counts.items()))
    warnings.warn(
        f"{where}: images have different channel counts ({found}); converted {n_converted} "
        f"image(s) to {target} channel(s)",
        TskdWarning,
        stacklevel=3,
    )
    return [Sample(s.name, _to_channels(s.image, target), s.label) for s in samples]


def read_labelled_set(
    folder: str | Path,
    classes: Any = None,
    ignore_label: int | None = None,
    label_map: LabelMap | None = None,
) -> tuple[list[Sample], LabelMap]:
    """All labelled 2D samples of a folder and the class map they were read with.

    Images without a label file are left out with one warning; stacks give their slices with
    foreground (``name_z0007``); mixed channel counts are converted to the most common one (one
    warning). Image axes are read by ``image_axes`` (metadata, else the reading that fits the
    label map, else the shape), readings that were guesses said in one warning; files are held
    to the pixel budget (``pixel_budget`` / ``default_max_pixels()``). The policy's notes and
    warnings are issued as ``TskdWarning``.

    Args:
        folder: A labelled set: images/+labels/ or the nnU-Net raw layout.
        classes: The config's ``data.classes`` (list of names or ``{value: name}``), or None.
        ignore_label: The config's ``data.ignore_label`` (a label value), or None.
        label_map: A model's map, used as given (before ``classes`` and dataset.json).

    Returns:
        ``(samples, label_map)``: each sample's ``label`` holds class *indices* 0..C-1 (int64),
        ignored pixels ``label_map.IGNORE_INDEX``; the ``LabelMap`` turns them back into the
        user's label values. It is ``label_map`` when given, else declared by ``classes`` or
        the folder's dataset.json, else inferred from the values seen
        (``tskd.data.label_policy``).

    Raises:
        TskdInputError: Every problem a user can fix (the first one found): a folder that is
            not a labelled set, no image, no image with a label, unreadable files, sizes that
            differ, label values the map refuses, or label maps that are all background.
    """
    folder = Path(folder)
    image_dir, label_dir, cases, labels = labelled_cases(folder)
    if not cases:
        raise no_images_error(image_dir)
    notes = AxesNotes(image_dir)
    raw = _read_pairs(cases, labels, notes)
    notes.warn()
    _check_pairs(folder, image_dir, label_dir, cases, labels, bool(raw))
    decision = label_policy.resolve_map(
        [(str(lp), label_policy.distinct_values(lab)) for _, _, lab, lp in raw],
        folder, classes, ignore_label, label_map, where=str(label_dir),
    )
    decision.raise_first()
    decision.emit(stacklevel=3)
    pairs = [(name, image, label_policy.encode_file(lab, str(lp), decision))
             for name, image, lab, lp in raw]
    samples = _pairs_to_samples(pairs)
    if not any(s.label is not None and (s.label > 0).any() for s in samples):
        raise TskdInputError(
            f"no labelled image found in {folder}: all label maps are empty (background only)"
        )
    assert decision.label_map is not None
    return _conform(samples, folder), decision.label_map


def _check_pairs(folder: Path, image_dir: Path, label_dir: Path, cases: dict[str, list[Path]],
                 labels: dict[str, Path], any_pair: bool) -> None:
    """Warn (for ``read_labelled_set``'s caller) of images without labels; raise if none has one."""
    unlabelled = [name for name in sorted(cases) if name not in labels]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image(s) in {image_dir} have no label file in {label_dir.name}/ "
            f"and are ignored for training (e.g. {unlabelled[0]})",
            TskdWarning,
            stacklevel=3,
        )
    if not any_pair:
        raise TskdInputError(
            f"no labelled image found in {folder}: no image has a label file of the same name "
            f"(e.g. image {sorted(cases)[0]}, label {next(iter(sorted(labels)), 'none')})"
        )


def _read_pairs(cases: dict[str, list[Path]], labels: dict[str, Path],
                notes: AxesNotes) -> list[tuple[str, np.ndarray, np.ndarray, Path]]:
    """(name, image, label values, label file) of every case that has a label file."""
    raw = []
    for name, paths in sorted(cases.items()):
        if name in labels:
            label = read_label(labels[name])
            image, ax = read_case(paths, label.shape, notes)
            raw.append((name, fit_to_label(image, label, paths[0], labels[name], ax), label,
                        labels[name]))
    return raw


def load_labelled(
    folder: str | Path,
    classes: Any = None,
    ignore_label: int | None = None,
    label_map: LabelMap | None = None,
) -> list[Sample]:
    """Read the samples of ``read_labelled_set`` (labels as class indices), without the map.

    Same warnings as ``read_labelled_set``.

    Args:
        folder: A labelled set: images/+labels/ or the nnU-Net raw layout.
        classes: The config's ``data.classes``, or None.
        ignore_label: The config's ``data.ignore_label``, or None.
        label_map: A model's map, used as given.

    Returns:
        The 2D samples; each ``label`` holds int64 class indices 0..C-1, ignored pixels
        ``IGNORE_INDEX``.

    Raises:
        TskdInputError: As ``read_labelled_set``.
    """
    return read_labelled_set(folder, classes, ignore_label, label_map)[0]


def load_unlabelled(folder: str | Path) -> list[Sample]:
    """Every image of a folder (or of its images/, imagesTr/ or imagesTs/), stacks as slices.

    In nnU-Net image folders, a case's channel files (``CASE_0000``, ``CASE_0001``) are merged.
    Axes are read by ``image_axes`` exactly as ``tskd predict`` reads them (guesses said in one
    warning); files are held to the pixel budget; mixed channel counts are converted to the
    most common one (one warning).

    Args:
        folder: The unlabelled folder (``tskd.data.folders.unlabelled_cases``).

    Returns:
        Samples without labels, images in their files' dtype, sorted by case; an empty folder
        gives an empty list.

    Raises:
        TskdInputError: A missing folder, or a file that cannot be read (``read_case``).
    """
    folder, cases = unlabelled_cases(folder)
    samples: list[Sample] = []
    notes = AxesNotes(folder)
    for name, paths in sorted(cases.items()):
        samples += _slices(name, *read_case(paths, notes=notes))
    notes.warn()
    return _conform(samples, folder)
