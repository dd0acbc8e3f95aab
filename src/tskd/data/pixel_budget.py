"""The pixel budget every image reader is held to, so a decompression bomb never reaches memory.

A file's decoded size is checked against a budget (``DEFAULT_MAX_PIXELS`` = 2^28 pixels;
``data.max_pixels``, ``--max-pixels`` or ``$TSKD_MAX_PIXELS`` raise it) from its header, before
anything is decoded (``tskd.data.files``), and an array's before its float conversion
(``tskd.inference.segmenter``). ``pixel_budget`` sets the budget for a block of code (how
``data.max_pixels`` reaches the label maps and loaders); ``check_pixel_budget`` refuses an image
over it with a message that says how to raise it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tskd.errors import TskdInputError

DEFAULT_MAX_PIXELS = 2**28  # 268 M pixels: a 16384 x 16384 image; float RGB of it is 3 GiB
MAX_PIXELS_ENV = "TSKD_MAX_PIXELS"
_MAX_PIXELS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tskd_max_pixels", default=None
)


def _positive_budget(value: Any, what: str) -> int:
    """``value`` as an int when it is a positive whole number; else a ``TskdInputError``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TskdInputError(
            f"the pixel budget ({what}) must be a positive whole number of pixels, not {value!r}"
        )
    return int(value)


def default_max_pixels() -> int:
    """The pixel budget when none is passed: ``pixel_budget``'s, else ``$TSKD_MAX_PIXELS``.

    Returns:
        The budget in pixels; ``DEFAULT_MAX_PIXELS`` (2^28) when neither is set.

    Raises:
        TskdInputError: ``$TSKD_MAX_PIXELS`` is not a positive whole number.
    """
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


def resolve_budget(max_pixels: int | None) -> int:
    """Return the budget in force for one read.

    Args:
        max_pixels: a budget in pixels given by the caller, or None.

    Returns:
        ``max_pixels`` once checked, or ``default_max_pixels()`` when None.

    Raises:
        TskdInputError: The budget is not a positive whole number.
    """
    return default_max_pixels() if max_pixels is None else _positive_budget(
        max_pixels, "max_pixels")


@contextlib.contextmanager
def pixel_budget(max_pixels: int | None) -> Iterator[int]:
    """Within the block, readers that get no explicit budget use ``max_pixels``.

    This is how ``data.max_pixels`` reaches label maps and loaders.

    Args:
        max_pixels: The budget in pixels; None keeps the current default.

    Yields:
        The budget in force inside the block, in pixels.

    Raises:
        TskdInputError: The budget is not a positive whole number.
    """
    value = resolve_budget(max_pixels)
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
    """Refuse an image whose pixel count is over the budget.

    Called from file headers before decoding, and by ``tskd.inference.segmenter.Segmenter`` before
    the float conversion of an array, so a decompression bomb never reaches memory.

    Args:
        dims: Pixels along each non-channel axis, e.g. (Z, H, W).
        max_pixels: The budget in pixels; None: ``default_max_pixels()``.
        path: The file the message names; None: "an image of HxW".

    Raises:
        TskdInputError: The product of ``dims`` is over the budget (the message says how to
            raise it), or the budget is not a positive whole number.
    """
    budget = resolve_budget(max_pixels)
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
