"""Messages to the user through napari's notifications (never only in the terminal), in
viewer words (``_words.viewer_words``: buttons and fields, not command-line flags)."""

from __future__ import annotations

from napari_tskd._words import viewer_words


def error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(viewer_words(message))


def warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(viewer_words(message))


def info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(viewer_words(message))


def user_error(exc: BaseException) -> None:
    """Show a backend error: a ``TskdError`` is already one sentence; others get their type."""
    from tskd.errors import TskdError

    error(str(exc) if isinstance(exc, TskdError) else f"{type(exc).__name__}: {exc}")
