"""Reading and writing one image or label file: tif, png, jpg and npy.

Every reader returns the standard layout (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C), its axes
read by ``tskd.data.axes.image_axes`` (metadata first, else a guess said in one warning), and
checks the decoded size against the pixel budget from the file's header before decoding
(``tskd.data.decode``). Label
files go through the label policy's checks (``tskd.data.label_policy``: lossy formats,
colours, non-integer or too large values). Every problem a user can fix raises
``TskdInputError`` with one sentence naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tskd.data.axes import ImageAxes, image_axes
from tskd.data.axes_notes import axes_note
from tskd.data.decode import IMAGE_SUFFIXES, TIFF_SUFFIXES, decode, read_raw
from tskd.data.label_formats import check_label_file_format, tiff_is_colour
from tskd.data.label_map import MAX_LABEL_VALUE, check_values
from tskd.errors import TskdInputError, TskdWarning


def stem(path: str | Path) -> str:
    """Return the name of ``path`` without its image suffix: the key that pairs image and label.

    Args:
        path: a file path.

    Returns:
        ``a.tif`` -> ``a``; a suffix not in ``IMAGE_SUFFIXES`` is kept (``c.nii.gz`` ->
        ``c.nii.gz``).
    """
    path = Path(path)
    return path.name[: -len(path.suffix)] if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def list_images(folder: str | Path) -> list[Path]:
    """List the image files directly in ``folder`` (hidden files skipped, never recursive).

    Args:
        folder: the folder to list.

    Returns:
        The files with a suffix of ``IMAGE_SUFFIXES`` (any case), sorted by path.

    Raises:
        TskdInputError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


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


def nonfinite_problem(path: str | Path, image: np.ndarray) -> tuple[str, bool] | None:
    """Describe the NaN or infinite values of a float image, for one warning.

    ``tskd.data.dataset.to_float_rgb`` reads NaN and -inf as the lowest intensity (black) and
    +inf as the highest (white).

    Args:
        path: the file the sentence names.
        image: the pixel values, any shape; only float dtypes can hold such values.

    Returns:
        ``(sentence, all_bad)``: the sentence counts the values of each kind and says what
        they become; ``all_bad`` is True when no value is finite (the image is then blank
        black). None when every value is finite.
    """
    arr = np.asarray(image)
    if arr.dtype.kind != "f":
        return None
    finite = np.isfinite(arr)
    bad = arr.size - int(np.count_nonzero(finite))
    if bad == 0:
        return None
    nan = int(np.count_nonzero(np.isnan(arr)))
    pos = int(np.count_nonzero(np.isposinf(arr)))
    kinds = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (pos, "+inf"),
                                                    (bad - nan - pos, "-inf")) if n)
    if bad == arr.size:
        return (f"{path}: all {arr.size} pixel values are not finite ({kinds}); the image holds "
                "no data and is read as a blank black image - re-export it with finite values",
                True)
    return (f"{path}: {bad} of {arr.size} pixel values are not finite ({kinds}); NaN and -inf "
            "are read as the lowest intensity (black), +inf as the highest (white)", False)


def read_image_axes(
    path: str | Path,
    max_pixels: int | None = None,
    label_shape: Sequence[int] | None = None,
    warn: bool = True,
    check_finite: bool = True,
) -> tuple[np.ndarray, ImageAxes]:
    """Read an image (tif, png, jpg, npy) in the standard layout, with how its axes were read.

    Args:
        path: The image file.
        max_pixels: The pixel budget (pixels), checked from the header before decoding; None:
            ``default_max_pixels()`` (2^28 unless raised).
        label_shape: The shape of its label map: chooses among readings of a shape without axes
            metadata (``image_axes``: metadata first, ``label_shape`` next, else a guess).
        warn: One ``TskdWarning`` naming the file and its shape when the reading is a guess
            another reading fits as well.
        check_finite: One ``TskdWarning`` counting a float image's NaN or infinite values and
            saying what they become (``nonfinite_problem``).

    Returns:
        ``(array, axes)``: the array is (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C) in the
        file's dtype (booleans as uint8); ``axes`` describes the stored array and its reading.

    Raises:
        TskdInputError: A missing, unsupported, corrupt or non-numeric file, a shape no reading
            fits, or a decoded size over ``max_pixels``.
    """
    path = Path(path)
    arr, axes = decode(path, max_pixels=max_pixels)
    arr = _validated(arr, path)
    ax = image_axes(arr.shape, axes, label_shape=label_shape, where=str(path))
    if warn and ax.ambiguous:
        warnings.warn(axes_note(path, ax), TskdWarning, stacklevel=2)
    problem = nonfinite_problem(path, arr) if check_finite else None
    if problem is not None:
        warnings.warn(problem[0], TskdWarning, stacklevel=2)
    return ax.standard(arr), ax


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image in the standard layout (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C).

    Same reading, dtype and warnings as ``read_image_axes``.

    Args:
        path: The image file (tif, png, jpg or npy).
        max_pixels: The pixel budget (pixels); None: ``default_max_pixels()``.

    Returns:
        The array in the file's dtype (booleans as uint8).

    Raises:
        TskdInputError: As ``read_image_axes``.
    """
    arr, _ = read_image_axes(path, max_pixels)
    return arr


def read_label(path: str | Path) -> np.ndarray:
    """Read a label file's values as int64: (H, W) or a stack (Z, H, W), the user's ids unchanged.

    Palette PNGs give their indices; an RGB(A) label (PNG or TIFF) whose colour channels agree
    (a gray map saved in colour) gives one channel. What the values mean (classes, binary
    0/255, gaps) is decided for the whole set by ``tskd.data.label_policy``.

    Args:
        path: The label file (png, tif or npy).

    Returns:
        int64 label values, (H, W) or (Z, H, W).

    Raises:
        TskdInputError: Checked before any cast or allocation per value (see
            ``tskd.data.label_policy``): lossy files (JPEG, or TIFF with JPEG/WebP compression),
            colour or gray+alpha label maps, non-integer, negative or too large values (above
            ``label_map.MAX_LABEL_VALUE``), and every error of ``read_raw``.
    """
    path = Path(path)
    check_label_file_format(path)
    return label_from_raw(read_raw(path, palette_indices=True), path)


def label_from_raw(raw: Any, path: Path) -> np.ndarray:
    """Finish ``read_label`` on a file already decoded.

    ``tskd check-data`` decodes first to report the stored dtype.

    Args:
        raw: ``tskd.data.decode.read_raw(path, palette_indices=True)``.
        path: the label file, named in messages; its suffix decides how channels are read.

    Returns:
        int64 label values, (H, W) or (Z, H, W), as ``read_label``.

    Raises:
        TskdInputError: As ``read_label``, for the checks made after decoding.
    """
    arr = _validated(raw, path)
    suffix = path.suffix.lower()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2 and suffix not in TIFF_SUFFIXES | {".npy"}:
        raise TskdInputError(  # an LA-mode (gray + alpha) PNG: a stack is not possible here
            f"{path}: the label map has 2 channels (gray and alpha); a label map must have one "
            "- save it as a gray or palette image without alpha"
        )
    colour = arr.ndim == 3 and arr.shape[-1] in (3, 4) and (
        suffix not in TIFF_SUFFIXES | {".npy"}
        or (suffix in TIFF_SUFFIXES and tiff_is_colour(path))
        or (suffix == ".npy" and arr.shape[0] > 4 and arr.shape[1] > 4))  # (H, W, 3), not Z
    if colour:
        if not np.array_equal(arr[..., :3], np.repeat(arr[..., :1], 3, axis=-1)):
            raise TskdInputError(
                f"{path}: a label map must have one channel (gray or palette), not colours - "
                "colours are not classes; save the classes as values 0, 1, 2, ... in a gray or "
                "palette image"
            )
        arr = arr[..., 0]
    check_values(arr, str(path))
    return arr.astype(np.int64)


def write_image(path: str | Path, image: np.ndarray, is_stack: bool | None = None) -> Path:
    """Write an image in the standard layout (H, W[, C]) or (Z, H, W[, C]), channels last.

    tif/npy keep any dtype and stacks, png/jpg need uint8 (png also uint16); booleans are
    written as uint8. A tif records its axes ('YX', 'YXS', 'ZYX', 'ZYXS'), so it is read back
    the same way. The file is written atomically (``tskd.atomic``): on error it keeps its old
    bytes.

    Args:
        path: The file; its suffix (tif, png, jpg or npy) picks the format.
        image: The array, channels last.
        is_stack: Whether the first axis is slices (tif only); None takes 4D and 3D with more
            than 4 entries on the last axis as stacks.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TskdInputError: An unsupported suffix, a dtype the format cannot hold, or (tif) a
            shape that is neither an image nor a stack.
        DiskFullError: The disk is full (a ``TskdError`` when the folder is not writable).
    """
    path, image = Path(path), np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise TskdInputError(f"{path}: unsupported file type '{path.suffix}' for writing")
    allowed = {".png": (np.uint8, np.uint16)}.get(suffix, (np.uint8,))
    if suffix not in TIFF_SUFFIXES | {".npy"} and image.dtype not in allowed:
        raise TskdInputError(f"{path}: {suffix} cannot hold {image.dtype} data; use .tif")
    from tskd import atomic

    # encoded in memory, then written atomically: a full disk keeps an existing file as it was
    if suffix in TIFF_SUFFIXES:
        import tifffile

        if is_stack is None:
            is_stack = image.ndim == 4 or (image.ndim == 3 and image.shape[-1] > 4)
        ax = image_axes(image.shape, is_stack=is_stack, where=str(path))
        kwargs: dict[str, Any] = {"photometric": "rgb" if ax.rgb else "minisblack"}
        if ax.channel_axis is not None:
            kwargs["planarconfig"] = "contig"
        axes = ("Z" if ax.is_stack else "") + "YX" + ("S" if ax.channel_axis is not None else "")
        data = atomic.encode(
            lambda f: tifffile.imwrite(f, image, metadata={"axes": axes}, **kwargs)
        )
    elif suffix == ".npy":
        data = atomic.encode(lambda f: np.save(f, image, allow_pickle=False))
    else:
        import imageio.v3 as iio

        data = iio.imwrite("<bytes>", image, extension=suffix)
    atomic.write_bytes(path, data)
    return path


def write_label(path: str | Path, label: np.ndarray) -> Path:
    """Write a label map with the smallest unsigned integer type that holds it.

    Args:
        path: The file (png, tif or npy: ``write_image``).
        label: Label values (H, W) or (Z, H, W), integers from 0 to ``MAX_LABEL_VALUE``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TskdInputError: Negative values, values above ``MAX_LABEL_VALUE``, or an error of
            ``write_image`` (e.g. a png cannot hold values of 2^16 and above).
        DiskFullError: The disk is full.
    """
    label = np.asarray(label)
    if label.size and label.min() < 0:
        raise TskdInputError(f"{path}: label map has negative values")
    top = int(label.max(initial=0))
    if top > MAX_LABEL_VALUE:
        raise TskdInputError(f"{path}: label value {top} is above {MAX_LABEL_VALUE}, the largest "
                             "a label file can hold; use class ids 0, 1, 2, ...")
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return write_image(path, label.astype(dtype))
