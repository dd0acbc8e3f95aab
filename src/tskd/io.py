"""Reading and writing images and label maps, and finding labelled sets in folders.

Layouts: ``folder/images`` + ``folder/labels`` matched by file stem, or the nnU-Net raw layout
(``imagesTr/CASE_0000.ext`` channel files, ``labelsTr/CASE.ext``, ``dataset.json``). Stacks are
split into 2D slices; in a labelled stack only slices with labelled pixels become samples.
Every problem a user can fix raises ``TskdInputError`` naming the file.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tskd.errors import TskdInputError, TskdWarning

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy"}
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class Sample:
    """One 2D image (channels-last if it has channels) with its label map, if any."""

    name: str
    image: np.ndarray
    label: np.ndarray | None = None


def stem(path: Path) -> str:
    """File name without its image suffix (``a.nii.tif`` style double suffixes kept)."""
    return path.name[: -len(path.suffix)] if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"folder not found: {folder}")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image (tif, png, jpg, npy) as stored: (H, W), (H, W, C) or a stack."""
    path = Path(path)
    if not path.is_file():
        raise TskdInputError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise TskdInputError(
            f"{path}: unsupported file type '{suffix}' (use {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import imageio.v3 as iio

            arr = iio.imread(path)
    except Exception as exc:
        raise TskdInputError(f"{path}: cannot read the image ({type(exc).__name__})") from None
    arr = np.asarray(arr)
    if arr.ndim < 2 or arr.size == 0:
        raise TskdInputError(f"{path}: not an image (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as int64; values must be non-negative integers."""
    path = Path(path)
    arr = read_image(path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and path.suffix.lower() in (".png", ".jpg"):
        # an RGB(A) label PNG whose channels agree is a gray label map saved in colour
        if np.all(arr[..., :3] == arr[..., :1]):
            arr = arr[..., 0]
        else:
            raise TskdInputError(f"{path}: a label map must have one channel, not colour")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TskdInputError(f"{path}: label map has non-integer values; labels must be "
                                 "integers 0 (background), 1, 2, ...")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TskdInputError(f"{path}: label map of type {arr.dtype} is not integer")
    if arr.min() < 0:
        raise TskdInputError(f"{path}: label map has negative values")
    return arr.astype(np.int64)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an image; tif keeps any dtype and stacks, png/jpg need 2D or RGB uint8/uint16."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, np.asarray(image))
    elif suffix == ".npy":
        np.save(path, np.asarray(image), allow_pickle=False)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, np.asarray(image))
    return path


def write_label(path: str | Path, label: np.ndarray) -> Path:
    """Write a label map with the smallest integer type that holds it."""
    label = np.asarray(label)
    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    return write_image(path, label.astype(dtype))


def _is_stack(image: np.ndarray, label_ndim: int | None = None) -> bool:
    """(Z, H, W) or (Z, H, W, C); a 3D array whose last axis is short is channels-last 2D."""
    if image.ndim == 4:
        return True
    if image.ndim == 3:
        if label_ndim is not None:
            return label_ndim == 3
        return image.shape[-1] > 4
    return False


def _conform(images: list[np.ndarray], where: str) -> list[np.ndarray]:
    """Give every image the most common channel count, converting others with one warning."""
    def channels(a: np.ndarray) -> int:
        return 1 if a.ndim == 2 else a.shape[-1]

    counts = Counter(channels(a) for a in images)
    if len(counts) <= 1:
        return images
    target = counts.most_common(1)[0][0]
    out, converted = [], 0
    for a in images:
        c = channels(a)
        if c == target:
            out.append(a)
            continue
        converted += 1
        gray = a if a.ndim == 2 else (a[..., 0] if c < 3 else a[..., :3].mean(-1).astype(a.dtype))
        if target == 1:
            out.append(gray)
        elif c == 1:
            out.append(np.repeat(gray[..., None], target, axis=-1))
        elif c > target:
            out.append(a[..., :target])
        else:
            pad = np.zeros(a.shape[:-1] + (target - c,), a.dtype)
            out.append(np.concatenate([a, pad], axis=-1))
    warnings.warn(
        f"{where}: images have different channel counts ({dict(counts)}); converted {converted} "
        f"image(s) to {target} channel(s)",
        TskdWarning,
        stacklevel=3,
    )
    return out


def _check_pair(image: np.ndarray, label: np.ndarray, ipath: Path, lpath: Path) -> None:
    ishape = image.shape[:3] if _is_stack(image, label.ndim) else image.shape[:2]
    if ishape != label.shape:
        raise TskdInputError(
            f"{ipath.name} and its label {lpath.name} differ in size: image "
            f"{tuple(ishape)}, label {tuple(label.shape)}"
        )


def _pairs_to_samples(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> list[Sample]:
    samples: list[Sample] = []
    for name, image, label in pairs:
        if label.ndim == 3:
            for z in range(label.shape[0]):
                if label[z].any():
                    samples.append(Sample(f"{name}_z{z:03d}", image[z], label[z]))
        else:
            samples.append(Sample(name, image, label))
    return samples


def _nnunet_cases(folder: Path) -> dict[str, list[Path]]:
    cases: dict[str, list[Path]] = {}
    for p in list_images(folder):
        m = _NNUNET_CHANNEL.match(stem(p))
        case = m.group("case") if m else stem(p)
        cases.setdefault(case, []).append(p)
    return cases


def _read_case(paths: list[Path]) -> np.ndarray:
    arrays = [read_image(p) for p in sorted(paths)]
    if len(arrays) == 1:
        return arrays[0]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise TskdInputError(f"channel files of {paths[0].name} differ in size: {shapes}")
    return np.stack(arrays, axis=-1)


def load_labelled(folder: str | Path) -> list[Sample]:
    """All labelled 2D samples in a folder (images/+labels/ or nnU-Net raw layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"labelled data folder not found: {folder}")
    if (folder / "imagesTr").is_dir():
        image_dir, label_dir, nnunet = folder / "imagesTr", folder / "labelsTr", True
    else:
        image_dir, label_dir, nnunet = folder / "images", folder / "labels", False
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise TskdInputError(
            f"{folder} must hold images/ and labels/ (or nnU-Net imagesTr/ and labelsTr/)"
        )
    labels = {stem(p): p for p in list_images(label_dir)}
    cases = _nnunet_cases(image_dir) if nnunet else {stem(p): [p] for p in list_images(image_dir)}
    pairs, unlabelled = [], []
    for name, paths in sorted(cases.items()):
        if name not in labels:
            unlabelled.append(name)
            continue
        image, label = _read_case(paths), read_label(labels[name])
        _check_pair(image, label, paths[0], labels[name])
        pairs.append((name, image, label))
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image(s) in {image_dir} have no label file and are not used "
            f"for training (e.g. {unlabelled[0]})",
            TskdWarning,
            stacklevel=2,
        )
    samples = _pairs_to_samples(pairs)
    if not samples:
        raise TskdInputError(f"no labelled image found in {folder}")
    images = _conform([s.image for s in samples], str(folder))
    return [Sample(s.name, im, s.label) for s, im in zip(samples, images, strict=True)]


def load_unlabelled(folder: str | Path) -> list[Sample]:
    """Every image in a folder (or its images/ / imagesTr/ sub-folder), stacks as slices."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"unlabelled data folder not found: {folder}")
    for sub in ("images", "imagesTr", "imagesTs"):
        if (folder / sub).is_dir() and not list_images(folder):
            folder = folder / sub
            break
    samples: list[Sample] = []
    for path in list_images(folder):
        image = read_image(path)
        if _is_stack(image):
            samples += [Sample(f"{stem(path)}_z{z:03d}", image[z]) for z in range(image.shape[0])]
        else:
            samples.append(Sample(stem(path), image))
    images = _conform([s.image for s in samples], str(folder)) if samples else []
    return [Sample(s.name, im) for s, im in zip(samples, images, strict=True)]


def class_names(folder: str | Path) -> list[str] | None:
    """Class names from an nnU-Net ``dataset.json`` (``labels``: name -> value), if present."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text()).get("labels", {})
    except json.JSONDecodeError:
        raise TskdInputError(f"{path} is not valid JSON") from None
    if not labels:
        return None
    by_value = {int(v if not isinstance(v, list) else v[0]): k for k, v in labels.items()}
    n = max(by_value) + 1
    return [by_value.get(i, f"class {i}") for i in range(n)]
