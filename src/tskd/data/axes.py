"""How an array's axes are read: a 2D image, channels, or a stack of slices.

``image_axes`` is the one place that decides how an array's axes are read (a 2D image,
channels, or a stack of slices), for training, ``tskd predict`` and the napari widgets alike. It
uses the file's axes metadata (TIFF/OME/ImageJ axes, PNG/JPEG modes, a napari layer's ``rgb``
flag) and guesses from the shape only where there is none, saying so in one ``TskdWarning``.
Every reader returns the standard layout: (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C).
The pixel budget every reader is held to is ``tskd.data.pixel_budget``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tskd.errors import TskdInputError

CHANNEL_LETTERS = "CS"  # TIFF/OME/ImageJ: channel, sample (RGB)
_UNKNOWN_LETTERS = "QI"  # tifffile: unknown, generic page sequence


@dataclass(frozen=True)
class ImageAxes:
    """How the axes of an array are read; ``standard(array)`` lays it out as (Z,) H, W (, C).

    Attributes:
        shape: The array as stored or given.
        is_stack: Whether one axis holds slices.
        channel_axis: The axis of ``shape`` that holds channels; None: one channel.
        order: The transpose to the standard layout.
        source: How it was decided: "metadata" (file axes, PNG/JPEG mode, napari layer),
            "shape" (2D: nothing to decide), "caller" (``is_stack`` given), "label" (the reading
            that fits the label map's shape) or "guess" (from the shape alone).
        reason: The same in words.
    """

    shape: tuple[int, ...]
    is_stack: bool
    channel_axis: int | None
    order: tuple[int, ...]
    source: str
    reason: str

    @property
    def channels(self) -> int:
        """Number of channels: 1 without a channel axis."""
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

        A guessed stack has no axis of 4 or fewer entries, so reading one as channels would keep
        only three of them; channels-last with <= 4 is numpy's and napari's layout.
        """
        return (self.source == "guess" and self.channel_axis is not None
                and self.channel_axis != len(self.shape) - 1)

    def describe(self) -> str:
        """The reading in words: 'one 2-channel image (channels first)', 'a stack of 5 slices'."""
        c = self.channels
        if self.is_stack:
            return f"a stack of {self.spatial_shape[0]} slices" + (
                f" with {c} channels" if self.channel_axis is not None else "")
        if self.channel_axis is None:
            return "one single-channel image"
        first = " (channels first)" if self.channel_axis == 0 else ""
        return f"one {c}-channel image{first}"

    def standard(self, array: np.ndarray) -> np.ndarray:
        """Put ``array``'s axes in the standard layout this reading describes.

        Args:
            array: the array whose axes were read, of ``shape``, any dtype.

        Returns:
            ``array`` as (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C): a transposed view, or
            ``array`` itself when it is already in that order.

        Raises:
            ValueError: ``array`` is not of ``shape`` (a caller's mistake, not the user's).
        """
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array of shape {array.shape}, axes read for {self.shape}")
        return array if self.order == tuple(range(len(self.shape))) else array.transpose(
            self.order)


def axes_reading(shape: tuple[int, ...], stack: int | None, channel: int | None, source: str,
                 reason: str) -> ImageAxes:
    """The ``ImageAxes`` of ``shape`` with the stack and the channels on the given axes.

    Args:
        shape: The array's shape.
        stack: The axis of the slices; None: no stack.
        channel: The axis of the channels; None: one channel.
        source: ``ImageAxes.source``.
        reason: ``ImageAxes.reason``.

    Returns:
        The reading; the other axes are spatial, in their order.
    """
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
    chans = [i for i, a in enumerate(axes) if a in CHANNEL_LETTERS]
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
    return axes_reading(shape, stack, chans[0] if chans else None, "metadata",
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
        last = axes_reading(shape, None, 2, g, "the last axis is small, so it holds channels")
        first = axes_reading(shape, None, 0, g, "the first axis is small, so it holds channels")
        stack = axes_reading(shape, 0, None, g, "no axis is small enough to hold channels")
        if min(shape[0], shape[2]) <= 4:
            return [last, first, stack] if shape[2] <= shape[0] else [first, last, stack]
        return [stack, last, first]
    if nd == 4:
        zhwc = axes_reading(shape, 0, 3, g, "the last axis is small, so it holds channels")
        zchw = axes_reading(shape, 0, 1, g, "the second axis is small, so it holds channels "
                        "(ImageJ order Z, C, Y, X)")
        czhw = axes_reading(shape, 1, 0, g, "the first axis is small, so it holds channels")
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
    """Decide how the axes of an array are read: the one rule for training, predict, widgets.

    Precedence: ``rgb``, then ``axes``, then ``is_stack``, otherwise a guess from the shape: 2D
    is an image; 3D whose first or last axis has <= 4 entries is one image with channels on the
    smaller of the two (ties: last), else a stack; 4D is a stack with channels on the last,
    second or first axis, the first of these <= 4.

    Args:
        shape: The array's shape as stored.
        axes: Metadata letters (tifffile's ``series.axes``: 'YX', 'YXS', 'CYX', 'ZYX', 'ZCYX',
            ...; 'Q'/'I' axes count as unknown), C or S being channels and any one other letter
            (Z, T, ...) the stack axis; None or empty: no metadata.
        rgb: A napari layer's flag: the last axis is colour when True; every other axis is
            spatial, so three spatial axes are a stack, as napari shows them.
        is_stack: From a caller that knows: the array is then in the standard layout
            (H, W[, C]) or (Z, H, W[, C]), channels last.
        label_shape: The label map's shape: a guess takes the reading whose spatial shape
            equals it.
        where: What the messages name (a file, a layer).

    Returns:
        The reading.

    Raises:
        TskdInputError: No reading fits the shape (1D, 5D, a 4D array with no small axis, two
            stack axes or two channel axes in the metadata).
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if nd < 2 or (rgb and nd < 3):
        raise _shape_error(shape, is_stack, where)
    if rgb is not None:
        return _layer_axes(shape, rgb, where)
    if axes:
        found = _from_metadata(shape, axes, where)
        if found is not None:
            return found
    if nd == 2:
        return axes_reading(shape, None, None, "shape", "two dimensions")
    if is_stack is not None:
        return _caller_axes(shape, is_stack, where)
    return _guessed_axes(shape, label_shape, where)


def _layer_axes(shape: tuple[int, ...], rgb: bool, where: str) -> ImageAxes:
    """A napari layer's axes: colour last when ``rgb``, every other axis spatial."""
    nd = len(shape)
    spatial = nd - (1 if rgb else 0)
    if spatial not in (2, 3):
        raise TskdInputError(
            f"{where} has {spatial} spatial dimensions (shape {shape}); expected a 2D "
            "image or a 3D stack"
        )
    return axes_reading(shape, 0 if spatial == 3 else None, nd - 1 if rgb else None,
                        "metadata", f"napari layer with rgb={bool(rgb)}")


def _caller_axes(shape: tuple[int, ...], is_stack: bool, where: str) -> ImageAxes:
    """The standard layout (H, W[, C]) or (Z, H, W[, C]) a caller vouches for."""
    nd = len(shape)
    if is_stack and nd in (3, 4):
        return axes_reading(shape, 0, 3 if nd == 4 else None, "caller", "the caller says "
                            "it is a stack")
    if not is_stack and nd == 3:
        return axes_reading(shape, None, 2, "caller", "the caller says it is one image")
    raise _shape_error(shape, is_stack, where)


def _guessed_axes(shape: tuple[int, ...], label_shape: Sequence[int] | None,
                  where: str) -> ImageAxes:
    """The preferred guess from the shape, or the only one that fits ``label_shape``."""
    candidates = _candidates(shape)
    if not candidates:
        if len(shape) == 4:
            raise TskdInputError(
                f"{where}: cannot tell which axis of shape {shape} holds the channels (none "
                "has 4 or fewer entries); save it as a TIFF with axes metadata (e.g. "
                "tifffile.imwrite(path, image, metadata={'axes': 'ZCYX'}))"
            )
        raise _shape_error(shape, None, where)
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
