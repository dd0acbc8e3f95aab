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
from typing import Any

import numpy as np

from tskd.errors import TskdInputError, TskdWarning

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
    """Read a label map as int64; values must be non-negative integers.

    Palette PNGs give their indices; an RGB(A) label whose colour channels agree (a gray map
    saved in colour) gives one channel.
    """
    path = Path(path)
    arr = _validated(_read_raw(path, palette_indices=True), path)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and path.suffix.lower() not in _TIFF | {".npy"}:
        if not np.array_equal(arr[..., :3], np.repeat(arr[..., :1], 3, axis=-1)):
            raise TskdInputError(
                f"{path}: a label map must have one channel (gray or palette), not colours"
            )
        arr = arr[..., 0]
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, arr.round())):
        raise TskdInputError(
            f"{path}: label map has non-integer values; labels must be integers "
            "0 (background), 1, 2, ..."
        )
    if arr.min() < 0:
        raise TskdInputError(f"{path}: label map has negative values (lowest {arr.min()})")
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
    from tskd import atomic

    # encoded in memory, then written atomically: a full disk keeps an existing file as it was
    if suffix in _TIFF:
        import tifffile

        # Say what the last axis is, so a (3, H, W) stack is not stored as planar RGB.
        rgb = image.ndim in (3, 4) and image.shape[-1] in (3, 4)
        data = atomic.encode(
            lambda f: tifffile.imwrite(f, image, photometric="rgb" if rgb else "minisblack")
        )
    elif suffix == ".npy":
        data = atomic.encode(lambda f: np.save(f, image, allow_pickle=False))
    else:
        import imageio.v3 as iio

        data = iio.imwrite("<bytes>", image, extension=suffix)
    atomic.write_bytes(path, data)
    return path


def write_label(path: str | Path, label: np.ndarray) -> Path:
    """Write a label map with the smallest unsigned integer type that holds it."""
    label = np.asarray(label)
    if label.size and label.min() < 0:
        raise TskdInputError(f"{path}: label map has negative values")
    top = int(label.max(initial=0))
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


def _label_value(value: Any) -> int | None:
    """An nnU-Net label value: an int, a numeric string, or a region list (its first value)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def class_names(folder: str | Path) -> list[str] | None:
    """Class names (index = label value) from an nnU-Net ``dataset.json``, if there is one.

    Reads nnU-Net v2 (``"labels": {"background": 0, "liver": 1}``) and v1
    (``"labels": {"0": "background", "1": "liver"}``); missing values get ``"class N"``.
    """
    labels = _dataset_json(Path(folder)).get("labels")
    if not isinstance(labels, dict) or not labels:
        return None
    by_value: dict[int, str] = {}
    for key, value in labels.items():
        v2, v1 = _label_value(value), _label_value(key)
        if v2 is not None:
            by_value.setdefault(v2, str(key))
        elif v1 is not None:
            by_value.setdefault(v1, str(value))
    if not by_value:
        return None
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


def _binary_255_to_1(pairs: list[tuple[str, np.ndarray, np.ndarray]], where: Path) -> None:
    """Masks saved as 0/255 (a common export) become classes 0/1, with a warning."""
    labels = [lab for _, _, lab in pairs]
    if not labels or max(int(lab.max()) for lab in labels) != 255:
        return
    if any(np.any((lab != 0) & (lab != 255)) for lab in labels):
        return
    for i, (name, image, lab) in enumerate(pairs):
        pairs[i] = (name, image, lab // 255)
    warnings.warn(
        f"{where}: label maps hold only 0 and 255; reading 255 as class 1", TskdWarning,
        stacklevel=3,
    )


def _pairs_to_samples(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> list[Sample]:
    """2D samples from (name, image, label); a stack gives its slices that have labels."""
    samples: list[Sample] = []
    for name, image, label in pairs:
        if label.ndim == 3:
            samples += [Sample(f"{name}_z{z:03d}", image[z], label[z])
                        for z in range(label.shape[0]) if label[z].any()]
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


def load_labelled(folder: str | Path) -> list[Sample]:
    """All labelled 2D samples of a folder: images/+labels/ or the nnU-Net raw layout.

    Images without a label file are left out with one warning; stacks give their labelled
    slices (``name_z007``); mixed channel counts are converted to the most common one.
    """
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
    pairs, unlabelled = [], []
    for name, paths in sorted(cases.items()):
        if name not in labels:
            unlabelled.append(name)
            continue
        label = read_label(labels[name])
        pairs.append((name, _fit_to_label(_read_case(paths), label, paths[0], labels[name]),
                      label))
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image(s) in {image_dir} have no label file in {label_dir.name}/ "
            f"and are ignored for training (e.g. {unlabelled[0]})",
            TskdWarning,
            stacklevel=2,
        )
    _binary_255_to_1(pairs, folder)
    samples = _pairs_to_samples(pairs)
    if not pairs:
        raise TskdInputError(
            f"no labelled image found in {folder}: no image has a label file of the same name "
            f"(e.g. image {sorted(cases)[0]}, label {next(iter(sorted(labels)), 'none')})"
        )
    if not any(s.label is not None and s.label.any() for s in samples):
        raise TskdInputError(
            f"no labelled image found in {folder}: all label maps are empty (background only)"
        )
    return _conform(samples, folder)


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
