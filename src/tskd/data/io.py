"""Reading and writing images and label maps, and finding labelled sets in folders.

Layouts: ``folder/images`` + ``folder/labels`` matched by file stem, or the nnU-Net raw layout
(``imagesTr/CASE_0000.ext`` channel files, ``labelsTr/CASE.ext``, ``dataset.json``). Stacks are
split into 2D slices; in a labelled stack only slices with labelled pixels become samples.
Every problem a user can fix raises ``TskdInputError`` with one sentence naming the file.

Axes: ``image_axes`` is the one place that decides how an array's axes are read (a 2D image,
channels, or a stack of slices), for training, ``tskd predict`` and the napari widgets alike. It
uses the file's axes metadata (TIFF/OME/ImageJ axes, PNG/JPEG modes, a napari layer's ``rgb``
flag) and guesses from the shape only where there is none, saying so in one ``TskdWarning``.
Every reader returns the standard layout: (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C).

Pixel budget: a file's decoded size is checked against a budget (``DEFAULT_MAX_PIXELS`` = 2^28
pixels; ``data.max_pixels``, ``--max-pixels`` or ``$TSKD_MAX_PIXELS`` raise it) from its header,
before anything is decoded.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tskd.data.label_policy import read_dataset_json
from tskd.errors import TskdInputError, TskdWarning

if TYPE_CHECKING:
    from tskd.data.label_policy import LabelMap

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


def slice_name(name: str, z: int) -> str:
    """The name of slice ``z`` (0-based) of the stack called ``name``: ``name_z0007``.

    The one naming rule for slices, in training samples and in the files the napari widgets
    write into a run folder (``run/data``, corrections). Four digits: run folders written by
    the widgets already hold such names (``scan_z0004``), and stacks up to 10 000 slices keep
    their order when the names are sorted.
    """
    return f"{name}_z{z:04d}"


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


# ------------------------------------------------------------------ pixel budget

DEFAULT_MAX_PIXELS = 2**28  # 268 M pixels: a 16384 x 16384 image; float RGB of it is 3 GiB
MAX_PIXELS_ENV = "TSKD_MAX_PIXELS"
_MAX_PIXELS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tskd_max_pixels", default=None
)


def _positive_budget(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TskdInputError(
            f"the pixel budget ({what}) must be a positive whole number of pixels, not {value!r}"
        )
    return int(value)


def default_max_pixels() -> int:
    """The pixel budget when none is passed: ``pixel_budget``'s, else ``$TSKD_MAX_PIXELS``,
    else ``DEFAULT_MAX_PIXELS`` (2^28). Raises ``TskdInputError`` for a malformed variable."""
    ctx = _MAX_PIXELS.get()
    if ctx is not None:
        return ctx
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value: Any = int(raw.replace("_", ""))
    except ValueError:
        value = raw
    return _positive_budget(value, f"environment variable {MAX_PIXELS_ENV}")


@contextlib.contextmanager
def pixel_budget(max_pixels: int | None) -> Iterator[int]:
    """Within the block, readers that get no explicit budget use ``max_pixels`` (None: keep
    the current default). This is how ``data.max_pixels`` reaches label maps and loaders."""
    value = default_max_pixels() if max_pixels is None else _positive_budget(
        max_pixels, "max_pixels")
    token = _MAX_PIXELS.set(value)
    try:
        yield value
    finally:
        _MAX_PIXELS.reset(token)


def _count(n: int) -> str:
    """900 M, 2.5 M, 4,096: pixel counts as a person reads them."""
    if n >= 10**7:
        return f"{n / 1e6:,.0f} M"
    if n >= 10**6:
        return f"{n / 1e6:.1f} M"
    return f"{n:,}"


def check_pixel_budget(
    dims: Sequence[int], max_pixels: int | None = None, path: str | Path | None = None
) -> None:
    """Raise ``TskdInputError`` when an image of ``dims`` (pixels along each non-channel axis,
    e.g. (Z, H, W)) is over the budget (``max_pixels``, or ``default_max_pixels()`` when None).

    Called from file headers before decoding, and by ``tskd.inference.predict.Segmenter`` before the
    float conversion of an array, so a decompression bomb never reaches memory.
    """
    budget = default_max_pixels() if max_pixels is None else _positive_budget(
        max_pixels, "max_pixels")
    pixels = math.prod(int(d) for d in dims)
    if pixels <= budget:
        return
    size = "x".join(str(int(d)) for d in dims)
    power = f" (2^{budget.bit_length() - 1})" if budget & (budget - 1) == 0 else ""
    what = (f"{path}: decodes to {size} = {_count(pixels)} pixels, over"
            if path is not None else f"an image of {size} = {_count(pixels)} pixels is over")
    raise TskdInputError(
        f"{what} the pixel budget of {_count(budget)}{power}; raise it with --max-pixels / "
        f"data.max_pixels (or {MAX_PIXELS_ENV}) or crop the image"
    )


# -------------------------------------------------------------------------- axes

_CHANNEL_LETTERS = "CS"  # TIFF/OME/ImageJ: channel, sample (RGB)
_UNKNOWN_LETTERS = "QI"  # tifffile: unknown, generic page sequence


@dataclass(frozen=True)
class ImageAxes:
    """How the axes of an array are read; ``standard(array)`` lays it out as (Z,) H, W (, C).

    ``shape`` is the array as stored or given; ``channel_axis`` indexes it (None: one channel);
    ``order`` is the transpose to the standard layout. ``source`` says how it was decided:
    "metadata" (file axes, PNG/JPEG mode, napari layer), "shape" (2D: nothing to decide),
    "caller" (``is_stack`` given), "label" (the reading that fits the label map's shape) or
    "guess" (from the shape alone); ``reason`` says it in words.
    """

    shape: tuple[int, ...]
    is_stack: bool
    channel_axis: int | None
    order: tuple[int, ...]
    source: str
    reason: str

    @property
    def channels(self) -> int:
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def rgb(self) -> bool:
        """Colour channels (3 or 4: RGB, RGBA), as napari's ``rgb`` flag and tif's photometric."""
        return self.channel_axis is not None and self.channels in (3, 4)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(H, W) or (Z, H, W): the standard shape without channels."""
        return tuple(self.shape[i] for i in self.order if i != self.channel_axis)

    @property
    def ambiguous(self) -> bool:
        """A guess that put channels elsewhere than last: a short stack fits it as well.

        (A guessed stack has no axis of 4 or fewer entries, so reading one as channels would
        keep only three of them; channels-last with <= 4 is numpy's and napari's layout.)
        """
        return (self.source == "guess" and self.channel_axis is not None
                and self.channel_axis != len(self.shape) - 1)

    def describe(self) -> str:
        """'one 2-channel image (channels first)', 'a stack of 5 slices', ..."""
        c = self.channels
        if self.is_stack:
            return f"a stack of {self.spatial_shape[0]} slices" + (
                f" with {c} channels" if self.channel_axis is not None else "")
        if self.channel_axis is None:
            return "one single-channel image"
        first = " (channels first)" if self.channel_axis == 0 else ""
        return f"one {c}-channel image{first}"

    def standard(self, array: np.ndarray) -> np.ndarray:
        """``array`` (of ``shape``) as (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array of shape {array.shape}, axes read for {self.shape}")
        return array if self.order == tuple(range(len(self.shape))) else array.transpose(
            self.order)


def _reading(shape: tuple[int, ...], stack: int | None, channel: int | None, source: str,
             reason: str) -> ImageAxes:
    rest = [i for i in range(len(shape)) if i not in (stack, channel)]
    order = tuple(([] if stack is None else [stack]) + rest
                  + ([] if channel is None else [channel]))
    return ImageAxes(shape, stack is not None, channel, order, source, reason)


def _from_metadata(shape: tuple[int, ...], axes: str, where: str) -> ImageAxes | None:
    """The reading named by axes letters (tifffile's), or None when they name nothing."""
    axes = axes.upper()
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        return None
    unknown = [i for i, a in enumerate(axes) if a in _UNKNOWN_LETTERS]
    chans = [i for i, a in enumerate(axes) if a in _CHANNEL_LETTERS]
    # an unknown page axis is a stack only when the samples are named (e.g. 'QYXS');
    # otherwise (e.g. 'QYX' of a (H, W, C) array saved as gray pages) even Y and X may be wrong
    if unknown and not (chans and len(unknown) == 1):
        return None
    if len(chans) > 1:
        raise TskdInputError(
            f"{where}: the axes {axes} of shape {shape} name channels twice; save one channel "
            "axis (C) with the image"
        )
    y, x = axes.index("Y"), axes.index("X")
    if y > x:
        return None  # transposed (X before Y): not tifffile's order; read by the shape instead
    stacks = [i for i in range(len(shape)) if i not in (y, x, *chans)]
    if len(stacks) > 1:
        letters = "".join(axes[i] for i in stacks)
        raise TskdInputError(
            f"{where}: shape {shape} with axes {axes} has {len(stacks)} stack axes ({letters}); "
            "tskd reads 2D images or stacks along one axis, so save one "
            f"{axes[stacks[0]]} at a time"
        )
    stack = stacks[0] if stacks else None
    return _reading(shape, stack, chans[0] if chans else None, "metadata",
                    f"axes {axes} from the file's metadata")


def _shape_error(shape: tuple[int, ...], is_stack: bool | None, where: str) -> TskdInputError:
    if len(shape) > 4:
        return TskdInputError(f"{where}: an image of shape {shape} is not supported (use "
                              "(H, W[, C]) or a stack (Z, H, W[, C]))")
    kind = {None: "an image or a stack", True: "a stack", False: "a 2D image"}[is_stack]
    return TskdInputError(
        f"{where}: cannot read an array of shape {shape} as {kind}; expected (H, W[, C]) or "
        "(Z, H, W[, C])"
    )


def _candidates(shape: tuple[int, ...]) -> list[ImageAxes]:
    """Every reading of a shape without metadata, the preferred guess first."""
    nd, g = len(shape), "guess"
    if nd == 3:
        last = _reading(shape, None, 2, g, "the last axis is small, so it holds channels")
        first = _reading(shape, None, 0, g, "the first axis is small, so it holds channels")
        stack = _reading(shape, 0, None, g, "no axis is small enough to hold channels")
        if min(shape[0], shape[2]) <= 4:
            return [last, first, stack] if shape[2] <= shape[0] else [first, last, stack]
        return [stack, last, first]
    if nd == 4:
        zhwc = _reading(shape, 0, 3, g, "the last axis is small, so it holds channels")
        zchw = _reading(shape, 0, 1, g, "the second axis is small, so it holds channels "
                        "(ImageJ order Z, C, Y, X)")
        czhw = _reading(shape, 1, 0, g, "the first axis is small, so it holds channels")
        if shape[3] <= 4:
            return [zhwc, zchw, czhw]
        if shape[1] <= 4:
            return [zchw, czhw, zhwc]
        if shape[0] <= 4:
            return [czhw, zchw, zhwc]
        return []
    return []


def image_axes(
    shape: Sequence[int],
    axes: str | None = None,
    *,
    rgb: bool | None = None,
    is_stack: bool | None = None,
    label_shape: Sequence[int] | None = None,
    where: str = "image",
) -> ImageAxes:
    """Decide how the axes of an array of ``shape`` are read: the one rule for training,
    ``tskd predict`` and the widgets.

    In order of precedence:
    - ``rgb`` (a napari layer: the last axis is colour when True; every other axis is spatial,
      so three spatial axes are a stack, as napari shows them);
    - ``axes`` metadata letters (tifffile's ``series.axes``: 'YX', 'YXS', 'CYX', 'ZYX',
      'ZCYX', ...; 'Q'/'I' axes count as unknown), C or S being channels and any one other
      letter (Z, T, ...) the stack axis;
    - ``is_stack`` from a caller that knows: the array is then in the standard layout
      (H, W[, C]) or (Z, H, W[, C]), channels last;
    - otherwise a guess from the shape: 2D is an image; 3D whose first or last axis has <= 4
      entries is one image with channels on the smaller of the two (ties: last), else a stack;
      4D is a stack with channels on the last, second or first axis, the first of these <= 4.
      With ``label_shape`` the reading whose spatial shape equals the label's is taken.

    Raises ``TskdInputError`` (naming ``where``) for shapes no reading fits (1D, 5D, a 4D
    array with no small axis, two stack axes in the metadata).
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if nd < 2 or (rgb and nd < 3):
        raise _shape_error(shape, is_stack, where)
    if rgb is not None:
        spatial = nd - (1 if rgb else 0)
        if spatial not in (2, 3):
            raise TskdInputError(
                f"{where} has {spatial} spatial dimensions (shape {shape}); expected a 2D "
                "image or a 3D stack"
            )
        return _reading(shape, 0 if spatial == 3 else None, nd - 1 if rgb else None,
                        "metadata", f"napari layer with rgb={bool(rgb)}")
    if axes:
        found = _from_metadata(shape, axes, where)
        if found is not None:
            return found
    if nd == 2:
        return _reading(shape, None, None, "shape", "two dimensions")
    if is_stack is not None:
        if is_stack and nd in (3, 4):
            return _reading(shape, 0, 3 if nd == 4 else None, "caller", "the caller says "
                            "it is a stack")
        if not is_stack and nd == 3:
            return _reading(shape, None, 2, "caller", "the caller says it is one image")
        raise _shape_error(shape, is_stack, where)
    candidates = _candidates(shape)
    if not candidates:
        if nd == 4:
            raise TskdInputError(
                f"{where}: cannot tell which axis of shape {shape} holds the channels (none "
                "has 4 or fewer entries); save it as a TIFF with axes metadata (e.g. "
                "tifffile.imwrite(path, image, metadata={'axes': 'ZCYX'}))"
            )
        raise _shape_error(shape, is_stack, where)
    if label_shape is not None:
        label_shape = tuple(int(n) for n in label_shape)
        fits = [c for c in candidates if c.spatial_shape == label_shape]
        if len(fits) == 1:
            c = fits[0]
            return ImageAxes(c.shape, c.is_stack, c.channel_axis, c.order, "label",
                             f"the only reading that fits its label map {label_shape}")
        if fits:
            return fits[0]
    return candidates[0]


_AXES_HINT = ("save it as a TIFF with axes metadata (e.g. tifffile.imwrite(path, image, "
              "metadata={'axes': 'CYX'}), or 'ZYX' for a stack) to choose")


def _axes_fragment(path: str | Path, ax: ImageAxes, plain: ImageAxes | None = None) -> str:
    """'a.tif (2, 64, 64) as one 2-channel image (channels first)' (+ what predict reads)."""
    text = f"{Path(path).name} {ax.shape} as {ax.describe()}"
    if plain is not None and plain.order != ax.order:
        text += (" to fit its label map, though without a label map (tskd predict) it reads "
                 f"as {plain.describe()}")
    return text


def axes_note(path: str | Path, ax: ImageAxes, plain: ImageAxes | None = None) -> str:
    """One sentence on a reading that was a guess (or that a label chose against the guess)."""
    return (f"{path}: no axes metadata; read {_axes_fragment(path, ax, plain)} ({ax.reason}); "
            + _AXES_HINT)


class _AxesNotes:
    """Readings of a folder that were guesses, said once in one warning."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.notes: list[str] = []

    def add(self, path: Path, ax: ImageAxes, plain: ImageAxes | None = None) -> None:
        if ax.ambiguous or (plain is not None and plain.order != ax.order):
            self.notes.append(_axes_fragment(path, ax, plain))

    def warn(self) -> None:
        if not self.notes:
            return
        more = f" and {len(self.notes) - 3} more" if len(self.notes) > 3 else ""
        warnings.warn(
            f"{self.where}: {len(self.notes)} image(s) have no axes metadata and were read by "
            f"their shape: {'; '.join(self.notes[:3])}{more}; " + _AXES_HINT.replace(
                "save it", "save them").replace("image, ", "images, "),
            TskdWarning, stacklevel=3,
        )


# ------------------------------------------------------------------ decoding

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


def _decode(path: Path, palette_indices: bool = False,
            max_pixels: int | None = None) -> tuple[np.ndarray, str | None]:
    """Decode a file as stored, with its axes letters (None: the file names none).

    The decoded size is checked against the pixel budget from the header first; ``palette_
    indices`` keeps a palette PNG's indices instead of its colours.
    """
    suffix = _checked_suffix(path)
    budget = default_max_pixels() if max_pixels is None else _positive_budget(
        max_pixels, "max_pixels")
    try:
        if suffix in _TIFF:
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


def _read_raw(path: Path, palette_indices: bool = False,
              max_pixels: int | None = None) -> np.ndarray:
    """Decode a file; channel ('C') or sample ('S') axes the metadata names are moved last."""
    arr, axes = _decode(path, palette_indices, max_pixels)
    if axes and len(axes) == arr.ndim:
        for ax in _CHANNEL_LETTERS[::-1]:  # S, then C
            i = axes.find(ax)
            if 0 <= i < arr.ndim - 1:
                arr = np.moveaxis(arr, i, -1)
                axes = axes[:i] + axes[i + 1 :] + ax
    return arr


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
    """``(sentence, all_bad)`` when a float image holds NaN or infinite values, else None.

    The sentence counts them and says what they become: ``tskd.data.dataset.to_float_rgb`` reads NaN
    and -inf as the lowest intensity (black) and +inf as the highest (white); ``all_bad`` is
    True when no value is finite (the image is then blank black).
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

    Returns ``(array, axes)``: the array is (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C) in the
    file's dtype; ``axes`` (``ImageAxes``) describes the stored array and how it was read
    (``image_axes``: metadata first, ``label_shape`` next, else a guess). A guess another
    reading fits as well gives one ``TskdWarning`` naming the file and its shape (``warn``).
    A float image with NaN or infinite values gives one ``TskdWarning`` counting them and
    saying what they become (``nonfinite_problem``; ``check_finite``). Raises
    ``TskdInputError`` for a missing, unsupported or corrupt file, a shape no reading fits, or
    a decoded size over ``max_pixels`` (default ``default_max_pixels()``, 2^28), checked
    from the header before decoding.
    """
    path = Path(path)
    arr, axes = _decode(path, max_pixels=max_pixels)
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

    Same reading, warnings and errors as ``read_image_axes``.
    """
    arr, _ = read_image_axes(path, max_pixels)
    return arr


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map's values as int64: (H, W) or a stack (Z, H, W), the user's ids unchanged.

    Palette PNGs give their indices; an RGB(A) label (PNG or TIFF) whose colour channels agree
    (a gray map saved in colour) gives one channel. Raises ``TskdInputError`` (checked before
    any cast or allocation per value, see ``tskd.data.label_policy``) for lossy files (JPEG, or TIFF
    with JPEG/WebP compression), colour label maps, non-integer, negative or too large values
    (above ``label_policy.MAX_LABEL_VALUE``). What the values mean (classes, binary 0/255,
    gaps) is decided for the whole set by ``tskd.data.label_policy``.
    """
    from tskd.data import label_policy

    path = Path(path)
    label_policy.check_label_file_format(path)
    return label_from_raw(_read_raw(path, palette_indices=True), path)


def label_from_raw(raw: Any, path: Path) -> np.ndarray:
    """``read_label`` after decoding: ``raw`` is the decoded file (palette indices kept)."""
    from tskd.data import label_policy

    arr = _validated(raw, path)
    suffix = path.suffix.lower()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2 and suffix not in _TIFF | {".npy"}:
        raise TskdInputError(  # an LA-mode (gray + alpha) PNG: a stack is not possible here
            f"{path}: the label map has 2 channels (gray and alpha); a label map must have one "
            "- save it as a gray or palette image without alpha"
        )
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


def write_image(path: str | Path, image: np.ndarray, is_stack: bool | None = None) -> Path:
    """Write an image in the standard layout (H, W[, C]) or (Z, H, W[, C]), channels last.

    tif/npy keep any dtype and stacks, png/jpg need uint8 (png also uint16). A tif records its
    axes ('YX', 'YXS', 'ZYX', 'ZYXS'), so it is read back the same way; ``is_stack`` None takes
    4D and 3D with more than 4 entries on the last axis as stacks.
    """
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
    """Write a label map with the smallest unsigned integer type that holds it."""
    from tskd.data.label_policy import MAX_LABEL_VALUE

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


def class_names(folder: str | Path) -> list[str] | None:
    """Class names (index = label value) from an nnU-Net ``dataset.json``, if there is one.

    Reads nnU-Net v2 (``"labels": {"background": 0, "liver": 1}``) and v1
    (``"labels": {"0": "background", "1": "liver"}``); missing values get ``"class N"``.
    The class map itself (values with gaps kept as given) is ``label_policy.declared_map``.
    """
    from tskd.data.label_policy import MAX_CLASSES, declared_from_dataset_labels

    folder = Path(folder)
    by_value, _ = declared_from_dataset_labels(read_dataset_json(folder).get("labels"),
                                               str(folder / "dataset.json"))
    if not by_value:
        return None
    if max(by_value) >= MAX_CLASSES:  # large ids: names in value order, nothing per value
        return [by_value[v] for v in sorted(by_value)]
    return [by_value.get(i, f"class {i}") for i in range(max(by_value) + 1)]


def _declared_channels(folder: Path) -> int | None:
    """How many channels ``dataset.json`` names (v2 ``channel_names``, v1 ``modality``)."""
    meta = read_dataset_json(folder)
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


def _nnunet_cases(
    folder: Path, n_channels: int | None = None, problems: dict[str, str] | None = None
) -> dict[str, list[Path]]:
    """nnU-Net image files grouped by case, each case's channel files in channel order.

    Every case needs the channel files ``CASE_0000`` to ``CASE_{n-1}``: ``n`` is the channel
    count ``dataset.json`` names (``n_channels``), else the case's own files must run from
    ``_0000`` without gaps. A case that breaks this raises ``TskdInputError`` naming the first
    such case and its missing files (and how many other cases fail); when ``problems`` is a
    dict, each failing case's sentence is put there instead (``tskd check-data``) and the case
    is still returned with the files it has.
    """
    channels: dict[str, dict[int, Path]] = {}
    for name, p in _by_stem(list_images(folder)).items():
        m = _NNUNET_CHANNEL.match(name)
        case, ch = (m.group("case"), int(m.group("ch"))) if m else (name, 0)
        if ch in channels.setdefault(case, {}):
            raise TskdInputError(f"{folder}: case {case} has two files for channel {ch:04d}")
        channels[case][ch] = p
    found: dict[str, str] = {}
    for case, files in sorted(channels.items()):
        problem = _nnunet_case_problem(folder, case, files, n_channels)
        if problem is not None:
            found[case] = problem
    if found and problems is None:
        first = next(iter(found.values()))
        more = (f"; {len(found) - 1} more case(s) have missing or extra channel files "
                "(tskd check-data lists them)") if len(found) > 1 else ""
        raise TskdInputError(first + more)
    if problems is not None:
        problems.update(found)
    return {case: [files[i] for i in sorted(files)] for case, files in channels.items()}


def _nnunet_case_problem(folder: Path, case: str, files: dict[int, Path],
                         n_channels: int | None) -> str | None:
    """One sentence on a case's missing or extra channel files, or None when they are right."""
    have = sorted(files)
    any_file = files[have[0]]
    ending = any_file.name[len(stem(any_file)):]

    def named(chs: list[int]) -> str:
        return ", ".join(f"{case}_{c:04d}{ending}" for c in chs)

    def count(n: int) -> str:
        return f"{n} channel file" + ("" if n == 1 else "s")

    if n_channels:
        missing = [c for c in range(n_channels) if c not in files]
        extra = [c for c in have if c >= n_channels]
        if missing:
            return (f"{folder}: case {case} has {count(len(files))} but dataset.json names "
                    f"{n_channels} channels: {named(missing)} is missing (each case needs "
                    f"{case}_0000 to {case}_{n_channels - 1:04d})")
        if extra:
            return (f"{folder}: case {case} has {count(len(files))} but dataset.json names "
                    f"{n_channels} channels: {named(extra)} is beyond them")
        return None
    if have != list(range(len(have))):
        missing = [c for c in range(have[-1]) if c not in files]
        return (f"{folder}: case {case} has channel files {have}; expected 0 to "
                f"{len(have) - 1} without gaps ({named(missing)} is missing)")
    return None


def _read_case(
    paths: list[Path], label_shape: Sequence[int] | None = None, notes: _AxesNotes | None = None,
    check_finite: bool = True,
) -> tuple[np.ndarray, ImageAxes]:
    """One image from its file, or from its channel files (nnU-Net) merged channels-last.

    Returns the standard layout and how it was read; readings that were guesses go to
    ``notes`` (one warning per folder) instead of one warning per file. Non-finite values are
    warned about once per file (``check_finite``).
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
    return merged, _reading(merged.shape, stack, merged.ndim - 1, "metadata",
                            "nnU-Net channel files")


def _slices(name: str, image: np.ndarray, ax: ImageAxes) -> list[Sample]:
    """An unlabelled image (standard layout) as 2D samples (a stack gives one per slice)."""
    if ax.is_stack:
        return [Sample(slice_name(name, z), image[z]) for z in range(image.shape[0])]
    return [Sample(name, image)]


# ------------------------------------------------------------- labelled pairs


def _fit_to_label(image: np.ndarray, label: np.ndarray, ipath: Path, lpath: Path,
                  ax: ImageAxes | None = None) -> np.ndarray:
    """The image (standard layout, read by ``ax``) checked against its label's size."""
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


# ------------------------------------------------------------- the files of a data folder
#
# One rule for which files a data folder contributes, used by the readers below and by
# everything that lists a data folder's files (the run's fingerprints, the transfer manifest,
# the widgets): never recursive, never a label folder.


def _unlabelled_cases(folder: str | Path) -> tuple[Path, dict[str, list[Path]]]:
    """(image folder, {case: channel files}) of an unlabelled folder: the images directly in
    ``folder``, else those of its ``images/``, ``imagesTr/`` or ``imagesTs/`` sub-folder (the
    first that exists). Never recursive; label folders are never read."""
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
    return folder, cases


def _labelled_cases(
    folder: Path,
) -> tuple[Path, Path, dict[str, list[Path]], dict[str, Path]]:
    """(image folder, label folder, {case: channel files}, {case: label file}) of a labelled
    folder (images/+labels/ or nnU-Net imagesTr/+labelsTr/). Never recursive."""
    if not folder.is_dir():
        raise TskdInputError(f"labelled data folder not found: {folder}")
    image_dir, label_dir, nnunet = _labelled_dirs(folder)
    if nnunet:
        cases = _nnunet_cases(image_dir, _declared_channels(folder))
    else:
        cases = {name: [p] for name, p in _by_stem(list_images(image_dir)).items()}
    return image_dir, label_dir, cases, _by_stem(list_images(label_dir))


def unlabelled_files(folder: str | Path) -> list[Path]:
    """The image files ``load_unlabelled`` reads from ``folder``, sorted by path.

    The images directly in ``folder``, else those of its ``images/``, ``imagesTr/`` or
    ``imagesTs/`` sub-folder; never files in other sub-folders (a dataset's ``labels/``, a run
    folder's outputs). Raises ``TskdInputError`` for a missing folder.
    """
    _, cases = _unlabelled_cases(folder)
    return sorted(p for paths in cases.values() for p in paths)


def labelled_files(folder: str | Path) -> list[Path]:
    """The files ``read_labelled_set`` reads from ``folder``, sorted by path: every image (all
    channel files of a case) that has a label file, and those label files. Images without a
    label and labels without an image are not read, so they are not listed. Raises
    ``TskdInputError`` for a folder that is not a labelled set."""
    _, _, cases, labels = _labelled_cases(Path(folder))
    files = [p for name, paths in cases.items() if name in labels for p in paths]
    files += [labels[name] for name in cases if name in labels]
    return sorted(files)


DATA_ROLES = ("labelled", "unlabelled", "test")


def data_files(folder: str | Path | None, role: str) -> list[Path]:
    """The files a data folder of ``role`` contributes, as its reader reads them.

    ``role``: ``labelled`` and ``test`` (read by ``read_labelled_set``: ``labelled_files``)
    or ``unlabelled`` (read by ``load_unlabelled``: ``unlabelled_files``). No folder (None or
    empty) gives an empty list. Raises ``TskdInputError`` for a missing or malformed folder.
    """
    if role not in DATA_ROLES:
        raise ValueError(f"unknown data role {role!r}; one of {DATA_ROLES}")
    if not folder:
        return []
    return unlabelled_files(folder) if role == "unlabelled" else labelled_files(folder)


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
    dataset.json, else inferred from the values seen (``tskd.data.label_policy``; notes and
    warnings are issued as ``TskdWarning``). Images without a label file are left out with one
    warning; stacks give their slices with foreground (``name_z0007``); mixed channel counts
    are converted to the most common one. Image axes are read by ``image_axes`` (metadata,
    else the reading that fits the label map, else the shape), readings that were guesses said
    in one warning; files are held to the pixel budget (``pixel_budget`` /
    ``default_max_pixels()``). Raises ``TskdInputError`` for every problem a user can fix (the
    first one found).
    """
    from tskd.data import label_policy

    folder = Path(folder)
    image_dir, label_dir, cases, labels = _labelled_cases(folder)
    if not cases:
        raise _no_images_error(image_dir)
    raw: list[tuple[str, np.ndarray, np.ndarray, Path]] = []
    unlabelled = []
    notes = _AxesNotes(image_dir)
    for name, paths in sorted(cases.items()):
        if name not in labels:
            unlabelled.append(name)
            continue
        label = read_label(labels[name])
        image, ax = _read_case(paths, label.shape, notes)
        raw.append((name, _fit_to_label(image, label, paths[0], labels[name], ax), label,
                    labels[name]))
    notes.warn()
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
    Axes are read by ``image_axes`` exactly as ``tskd predict`` reads them (guesses said in one
    warning); files are held to the pixel budget. An empty folder gives an empty list.
    """
    folder, cases = _unlabelled_cases(folder)
    samples: list[Sample] = []
    notes = _AxesNotes(folder)
    for name, paths in sorted(cases.items()):
        samples += _slices(name, *_read_case(paths, notes=notes))
    notes.warn()
    return _conform(samples, folder)
