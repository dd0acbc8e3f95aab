"""Reading and writing images and label maps, and finding labelled sets in folders.

Layouts: ``folder/images`` + ``folder/labels`` matched by file stem, or the nnU-Net raw layout
(``imagesTr/CASE_0000.ext`` channel files, ``labelsTr/CASE.ext``, ``dataset.json``). Stacks are
split into 2D slices; in a labelled stack only slices with labelled pixels become samples.
Every problem a user can fix raises ``TskdInputError`` with one sentence naming the file.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tskd.errors import TskdInputError, TskdWarning

if TYPE_CHECKING:
    from tskd.label_policy import LabelMap

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy"}
_TIFF = {".tif", ".tiff"}
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_NNUNET_IMAGE_DIRS = ("imagesTr", "imagesTs")


@dataclass
class Sample:
    """One 2D image, (H, W) or channels-last (H, W, C), with its label map (H, W) if any."""

    name: str
    image: np.ndarray
    label: np.ndarray | None = None


# ---------------------------------------------------------------------------- files


def stem(path: str | Path) -> str:
    """File name without its image suffix; this is what pairs an image with its label."""
    path = Path(path)
    return path.name[: -len(path.suffix)] if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _checked_suffix(path: Path) -> str:
    """The lower-case suffix of an existing, supported file (else a clear error)."""
    if not path.is_file():
        raise TskdInputError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise TskdInputError(
            f"{path}: unsupported file type '{path.suffix}' "
            f"(supported: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return suffix


def _read_tiff(path: Path) -> np.ndarray:
    """A tif as channels-last: channel ('C') or sample ('S') axes are moved to the end."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    if len(axes) == arr.ndim:
        for ax in ("S", "C"):
            i = axes.find(ax)
            if 0 <= i < arr.ndim - 1:
                arr = np.moveaxis(arr, i, -1)
                axes = axes[:i] + axes[i + 1 :] + ax
    return arr


def _read_raw(path: Path, palette_indices: bool = False) -> np.ndarray:
    """Decode a file; ``palette_indices`` keeps a palette PNG's indices instead of its colours."""
    suffix = _checked_suffix(path)
    try:
        if suffix in _TIFF:
            return _read_tiff(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        import imageio.v3 as iio

        if palette_indices and iio.immeta(path).get("mode") == "P":
            return iio.imread(path, mode="P")
        return iio.imread(path)
    except Exception:
        raise TskdInputError(
            f"cannot read {path}: the file is corrupt or not a valid {suffix} image"
        ) from None


def _validated(arr: Any, path: Path) -> np.ndarray:
    """A numeric array of at least 2 dimensions, booleans as uint8."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise TskdInputError(f"{path}: data of type {arr.dtype} is not an image")
    if arr.ndim < 2 or min(arr.shape) == 0:
        raise TskdInputError(f"{path}: not an image (shape {arr.shape})")
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """Read an image (tif, png, jpg, npy) channels-last: (H, W), (H, W, C) or a stack."""
    path = Path(path)
    return _validated(_read_raw(path), path)


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map's values as int64: (H, W) or a stack (Z, H, W), the user's ids unchanged.

    Palette PNGs give their indices; an RGB(A) label (PNG or TIFF) whose colour channels agree
    (a gray map saved in colour) gives one channel. Raises ``TskdInputError`` (checked before
    any cast or allocation per value, see ``tskd.label_policy``) for lossy files (JPEG, or TIFF
    with JPEG/WebP compression), colour label maps, non-integer, negative or too large values
    (above ``label_policy.MAX_LABEL_VALUE``). What the values mean (classes, binary 0/255,
    gaps) is decided for the whole set by ``tskd.label_policy``.
    """
    from tskd import label_policy

    path = Path(path)
    label_policy.check_label_file_format(path)
    return label_from_raw(_read_raw(path, palette_indices=True), path)


def label_from_raw(raw: Any, path: Path) -> np.ndarray:
    """``read_label`` after decoding: ``raw`` is the decoded file (palette indices kept)."""
    from tskd import label_policy

    arr = _validated(raw, path)
    suffix = path.suffix.lower()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    colour = arr.ndim == 3 and arr.shape[-1] in (3, 4) and (
        suffix not in _TIFF | {".npy"} or (suffix in _TIFF and label_policy.tiff_is_colour(path))
        or (suffix == ".npy" and arr.shape[0] > 4 and arr.shape[1] > 4))  # (H, W, 3), not Z
    if colour:
        if not np.array_equal(arr[..., :3], np.repeat(arr[..., :1], 3, axis=-1)):
            raise TskdInputError(
                f"{path}: a label map must have one channel (gray or palette), not colours - "
                "colours are not classes; save the classes as values 0, 1, 2, ... in a gray or "
                "palette image"
            )
        arr = arr[..., 0]
    label_policy.check_values(arr, str(path))
    return arr.astype(np.int64)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an image; tif/npy keep any dtype and stacks, png/jpg need uint8 (png also uint16)."""
    path, image = Path(path), np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise TskdInputError(f"{path}: unsupported file type '{path.suffix}' for writing")
    allowed = {".png": (np.uint8, np.uint16)}.get(suffix, (np.uint8,))
    if suffix not in _TIFF | {".npy"} and image.dtype not in allowed:
        raise TskdInputError(f"{path}: {suffix} cannot hold {image.dtype} data; use .tif")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in _TIFF:
        import tifffile

        # Say what the last axis is, so a (3, H, W) stack is not stored as planar RGB.
        rgb = image.ndim in (3, 4) and image.shape[-1] in (3, 4)
        tifffile.imwrite(path, image, photometric="rgb" if rgb else "minisblack")
    elif suffix == ".npy":
        np.save(path, image, allow_pickle=False)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, image)
    return path


def write_label(path: str | Path, label: np.ndarray) -> Path:
    """Write a label map with the smallest unsigned integer type that holds it."""
    from tskd.label_policy import MAX_LABEL_VALUE

    label = np.asarray(label)
    if label.size and label.min() < 0:
        raise TskdInputError(f"{path}: label map has negative values")
    top = int(label.max(initial=0))
    if top > MAX_LABEL_VALUE:
        raise TskdInputError(f"{path}: label value {top} is above {MAX_LABEL_VALUE}, the largest "
                             "a label file can hold; use class ids 0, 1, 2, ...")
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return write_image(path, label.astype(dtype))


# ----------------------------------------------------------------- dataset.json


def _dataset_json(folder: Path) -> dict[str, Any]:
    """The nnU-Net ``dataset.json`` of a folder, or {} when there is none."""
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TskdInputError(f"{path} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise TskdInputError(f"{path} must hold a JSON object")
    return meta


def class_names(folder: str | Path) -> list[str] | None:
    """Class names (index = label value) from an nnU-Net ``dataset.json``, if there is one.

    Reads nnU-Net v2 (``"labels": {"background": 0, "liver": 1}``) and v1
    (``"labels": {"0": "background", "1": "liver"}``); missing values get ``"class N"``.
    The class map itself (values with gaps kept as given) is ``label_policy.declared_map``.
    """
    from tskd.label_policy import MAX_CLASSES, declared_from_dataset_labels

    folder = Path(folder)
    by_value, _ = declared_from_dataset_labels(_dataset_json(folder).get("labels"),
                                               str(folder / "dataset.json"))
    if not by_value:
        return None
    if max(by_value) >= MAX_CLASSES:  # large ids: names in value order, nothing per value
        return [by_value[v] for v in sorted(by_value)]
    return [by_value.get(i, f"class {i}") for i in range(max(by_value) + 1)]


def _declared_channels(folder: Path) -> int | None:
    """How many channels ``dataset.json`` names (v2 ``channel_names``, v1 ``modality``)."""
    meta = _dataset_json(folder)
    names = meta.get("channel_names", meta.get("modality"))
    return len(names) if isinstance(names, dict) and names else None


# ------------------------------------------------------------------- cases


def _by_stem(paths: list[Path]) -> dict[str, Path]:
    """Files keyed by stem; two files of one stem (a.png, a.tif) are ambiguous."""
    out: dict[str, Path] = {}
    for p in paths:
        if stem(p) in out:
            raise TskdInputError(
                f"{p.parent}: {out[stem(p)].name} and {p.name} have the same name; keep one"
            )
        out[stem(p)] = p
    return out


def _nnunet_cases(folder: Path, n_channels: int | None = None) -> dict[str, list[Path]]:
    """nnU-Net image files grouped by case, each case's channel files in channel order."""
    channels: dict[str, dict[int, Path]] = {}
    for name, p in _by_stem(list_images(folder)).items():
        m = _NNUNET_CHANNEL.match(name)
        case, ch = (m.group("case"), int(m.group("ch"))) if m else (name, 0)
        if ch in channels.setdefault(case, {}):
            raise TskdInputError(f"{folder}: case {case} has two files for channel {ch:04d}")
        channels[case][ch] = p
    for case, files in channels.items():
        if sorted(files) != list(range(len(files))):
            raise TskdInputError(
                f"{folder}: case {case} has channel files {sorted(files)}; expected 0 to "
                f"{len(files) - 1} without gaps"
            )
        if n_channels and len(files) > 1 and len(files) != n_channels:
            raise TskdInputError(
                f"{folder}: case {case} has {len(files)} channel files but dataset.json names "
                f"{n_channels} channels"
            )
    return {case: [files[i] for i in sorted(files)] for case, files in channels.items()}


def _read_case(paths: list[Path]) -> np.ndarray:
    """One image from its channel files (nnU-Net), merged channels-last."""
    arrays = [read_image(p) for p in paths]
    if len(arrays) == 1:
        return arrays[0]
    if len({a.shape for a in arrays}) != 1:
        shapes = ", ".join(f"{p.name} {a.shape}" for p, a in zip(paths, arrays, strict=True))
        raise TskdInputError(f"channel files of one case differ in size: {shapes}")
    return np.stack(arrays, axis=-1)


def _is_stack(image: np.ndarray) -> bool:
    """(Z, H, W[, C]) rather than (H, W, C): 4D, or 3D with more than 4 on the last axis."""
    return image.ndim == 4 or (image.ndim == 3 and image.shape[-1] > 4)


def _slices(name: str, image: np.ndarray, path: Path) -> list[Sample]:
    """An unlabelled image as 2D samples (a stack gives one per slice)."""
    if image.ndim > 4:
        raise TskdInputError(f"{path}: an image of shape {image.shape} is not supported "
                             "(use (H, W[, C]) or a stack (Z, H, W[, C]))")
    if _is_stack(image):
        return [Sample(f"{name}_z{z:03d}", image[z]) for z in range(image.shape[0])]
    return [Sample(name, image)]


# ------------------------------------------------------------- labelled pairs


def _fit_to_label(image: np.ndarray, label: np.ndarray, ipath: Path, lpath: Path) -> np.ndarray:
    """The image laid out like its label: channels-first (C, H, W) moved last; sizes checked."""
    if label.ndim not in (2, 3):
        raise TskdInputError(f"{lpath}: label map must be (H, W) or a stack (Z, H, W), "
                             f"not {label.shape}")
    if (label.ndim == 2 and image.ndim == 3 and image.shape[:2] != label.shape
            and image.shape[1:] == label.shape and image.shape[0] <= 4):
        image = np.moveaxis(image, 0, -1)
    spatial = image.shape[: label.ndim]
    extra = image.ndim - label.ndim
    if spatial != label.shape or extra not in (0, 1):
        raise TskdInputError(
            f"{ipath.name} and its label {lpath.name} differ in size: image {image.shape}, "
            f"label {label.shape} (height and width must match)"
        )
    return image


def _pairs_to_samples(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> list[Sample]:
    """2D samples from (name, image, label); a stack gives its slices that have labels."""
    samples: list[Sample] = []
    for name, image, label in pairs:
        if label.ndim == 3:
            samples += [Sample(f"{name}_z{z:03d}", image[z], label[z])
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


def _labelled_dirs(folder: Path) -> tuple[Path, Path, bool]:
    """(image folder, label folder, is nnU-Net) of a labelled set."""
    if (folder / "imagesTr").is_dir():
        if not (folder / "labelsTr").is_dir():
            raise TskdInputError(f"{folder} has imagesTr/ but no labelsTr/ folder")
        return folder / "imagesTr", folder / "labelsTr", True
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return folder / "images", folder / "labels", False
    raise TskdInputError(
        f"{folder} must hold images/ and labels/ (or nnU-Net imagesTr/ and labelsTr/)"
    )


def _no_images_error(folder: Path) -> TskdInputError:
    """The error for a folder without usable images, naming unsupported files if any."""
    def kind(p: Path) -> str:  # .bmp, or .nii.gz for compressed files
        n = 2 if p.suffix.lower() in (".gz", ".bz2", ".xz", ".zip") else 1
        return "".join(p.suffixes[-n:]) or p.name

    others = sorted({kind(p) for p in folder.iterdir()
                     if p.is_file() and not p.name.startswith(".")})
    if others:
        return TskdInputError(
            f"no image found in {folder}: files of type {', '.join(others)} are not supported "
            f"(use {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return TskdInputError(f"no image found in {folder}")


def read_labelled_set(
    folder: str | Path,
    classes: Any = None,
    ignore_label: int | None = None,
    label_map: LabelMap | None = None,
) -> tuple[list[Sample], LabelMap]:
    """All labelled 2D samples of a folder and the class map they were read with.

    Layouts: images/+labels/ or the nnU-Net raw layout. Each sample's ``label`` holds class
    *indices* 0..C-1 (int64), ignored pixels ``label_policy.IGNORE_INDEX``; the returned
    ``LabelMap`` turns them back into the user's label values. The map is ``label_map`` when
    given (a model's), else declared by ``classes`` (config ``data.classes``) or the folder's
    dataset.json, else inferred from the values seen (``tskd.label_policy``; notes and
    warnings are issued as ``TskdWarning``). Images without a label file are left out with one
    warning; stacks give their slices with foreground (``name_z007``); mixed channel counts
    are converted to the most common one. Raises ``TskdInputError`` for every problem a user
    can fix (the first one found).
    """
    from tskd import label_policy

    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"labelled data folder not found: {folder}")
    image_dir, label_dir, nnunet = _labelled_dirs(folder)
    if nnunet:
        cases = _nnunet_cases(image_dir, _declared_channels(folder))
    else:
        cases = {name: [p] for name, p in _by_stem(list_images(image_dir)).items()}
    if not cases:
        raise _no_images_error(image_dir)
    labels = _by_stem(list_images(label_dir))
    raw: list[tuple[str, np.ndarray, np.ndarray, Path]] = []
    unlabelled = []
    for name, paths in sorted(cases.items()):
        if name not in labels:
            unlabelled.append(name)
            continue
        label = read_label(labels[name])
        raw.append((name, _fit_to_label(_read_case(paths), label, paths[0], labels[name]),
                    label, labels[name]))
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image(s) in {image_dir} have no label file in {label_dir.name}/ "
            f"and are ignored for training (e.g. {unlabelled[0]})",
            TskdWarning,
            stacklevel=2,
        )
    if not raw:
        raise TskdInputError(
            f"no labelled image found in {folder}: no image has a label file of the same name "
            f"(e.g. image {sorted(cases)[0]}, label {next(iter(sorted(labels)), 'none')})"
        )
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


def load_labelled(
    folder: str | Path,
    classes: Any = None,
    ignore_label: int | None = None,
    label_map: LabelMap | None = None,
) -> list[Sample]:
    """The samples of ``read_labelled_set`` (labels as class indices), without the map."""
    return read_labelled_set(folder, classes, ignore_label, label_map)[0]


def load_unlabelled(folder: str | Path) -> list[Sample]:
    """Every image of a folder (or of its images/, imagesTr/ or imagesTs/), stacks as slices.

    In nnU-Net image folders, a case's channel files (``CASE_0000``, ``CASE_0001``) are merged.
    An empty folder gives an empty list.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"unlabelled data folder not found: {folder}")
    if not list_images(folder):
        for sub in ("images", *_NNUNET_IMAGE_DIRS):
            if (folder / sub).is_dir():
                folder = folder / sub
                break
    if folder.name in _NNUNET_IMAGE_DIRS:
        cases = _nnunet_cases(folder, _declared_channels(folder.parent))
    else:
        cases = {name: [p] for name, p in _by_stem(list_images(folder)).items()}
    samples: list[Sample] = []
    for name, paths in sorted(cases.items()):
        samples += _slices(name, _read_case(paths), paths[0])
    return _conform(samples, folder)
