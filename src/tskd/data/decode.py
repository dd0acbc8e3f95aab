"""Decoding one image file as stored: the supported types and the pixel budget from its header.

``read_raw`` decodes a tif, png, jpg or npy file in its own dtype, after checking the size its
header announces against the pixel budget (``tskd.data.pixel_budget``), so a decompression bomb
is refused before anything is decoded (Pillow's own limit is lifted only then). How the axes of
the result are read, and what a label file may hold, is ``tskd.data.files``'s.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tskd.data.axes import CHANNEL_LETTERS, image_axes
from tskd.data.pixel_budget import check_pixel_budget, resolve_budget
from tskd.errors import TskdInputError

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy"}
TIFF_SUFFIXES = {".tif", ".tiff"}


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



_PIL_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_unbounded() -> Iterator[None]:
    """Pillow's own decompression-bomb limit off: the pixel budget was checked first."""
    from PIL import Image

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in a .npy header (nothing else is read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
        else:  # 3.0 (utf-8 field names): a memory map reads only the header
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    return tuple(int(n) for n in shape)


def _budget_dims(shape: tuple[int, ...], axes: str | None) -> tuple[int, ...]:
    """Pixels per non-channel axis, as ``image_axes`` reads the shape (all axes if it can't)."""
    try:
        return image_axes(shape, axes).spatial_shape
    except TskdInputError:
        return shape


def decode(path: Path, palette_indices: bool = False,
           max_pixels: int | None = None) -> tuple[np.ndarray, str | None]:
    """Decode a file as stored, with the axes letters its metadata names.

    The decoded size is checked against the pixel budget from the header first.

    Args:
        path: A tif, png, jpg or npy file.
        palette_indices: Keep a palette PNG's indices instead of its colours (label maps).
        max_pixels: The pixel budget (pixels); None: ``default_max_pixels()``.

    Returns:
        ``(array, axes)``: the array as stored (any dtype); the TIFF series' axes letters
        (tifffile's, e.g. ``"ZYXS"``), ``"YX"``/``"YXS"`` for png and jpg, None for npy.

    Raises:
        TskdInputError: The file is missing, of an unsupported type, corrupt, or decodes to more
            than ``max_pixels`` pixels.
    """
    suffix = _checked_suffix(path)
    budget = resolve_budget(max_pixels)
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes
                check_pixel_budget(_budget_dims(tuple(series.shape), axes), budget, path)
                return series.asarray(), axes
        if suffix == ".npy":
            shape = _npy_shape(path)
            check_pixel_budget(_budget_dims(shape, None), budget, path)
            return np.load(path, allow_pickle=False), None
        import imageio.v3 as iio
        from PIL import Image

        with _pil_unbounded():
            with Image.open(path) as im:
                width, height = im.size
                palette = im.mode == "P"
            check_pixel_budget((height, width), budget, path)
            mode = {"mode": "P"} if palette_indices and palette else {}
            arr = iio.imread(path, **mode)
        return arr, "YX" if np.ndim(arr) == 2 else "YXS" if np.ndim(arr) == 3 else None
    except TskdInputError:
        raise
    except Exception:
        raise TskdInputError(
            f"cannot read {path}: the file is corrupt or not a valid {suffix} image"
        ) from None


def read_raw(path: Path, palette_indices: bool = False,
              max_pixels: int | None = None) -> np.ndarray:
    """Decode a file in its dtype; channel ('C') or sample ('S') axes its metadata names go last.

    Args:
        path: A tif, png, jpg or npy file.
        palette_indices: Keep a palette PNG's indices instead of its colours (label maps).
        max_pixels: The pixel budget (pixels); None: ``default_max_pixels()``.

    Returns:
        The array as stored (any dtype and number of axes), channel axes moved last.

    Raises:
        TskdInputError: The file is missing, of an unsupported type, corrupt, or decodes to more
            than ``max_pixels`` pixels (checked from its header before decoding).
    """
    arr, axes = decode(path, palette_indices, max_pixels)
    if axes and len(axes) == arr.ndim:
        for ax in CHANNEL_LETTERS[::-1]:  # S, then C
            i = axes.find(ax)
            if 0 <= i < arr.ndim - 1:
                arr = np.moveaxis(arr, i, -1)
                axes = axes[:i] + axes[i + 1 :] + ax
    return arr
