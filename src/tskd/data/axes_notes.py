"""How readings of an image's axes that were guesses are said to the user.

``tskd.data.axes.image_axes`` guesses from the shape only where a file names no axes; each
guess another reading fits as well (``ImageAxes.ambiguous``), and each reading a label map chose
against the plain guess, is said in one ``TskdWarning`` naming the file, its shape, the reading
and how to save the file so that nothing is guessed: per file (``axes_note``, for
``tskd.data.files.read_image_axes``) or once per folder (``AxesNotes``, for
``tskd.data.samples``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tskd.data.axes import ImageAxes
from tskd.errors import TskdWarning

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
    """One sentence on a reading that was a guess (or that a label chose against the guess).

    Args:
        path: The image file, as the sentence names it.
        ax: How its axes were read.
        plain: How they read without a label map (``tskd predict``'s reading), when the label
            map chose ``ax``; None otherwise.

    Returns:
        The sentence: the file, its shape, the reading and its reason, and how to save the file
        with axes metadata so that nothing is guessed.
    """
    return (f"{path}: no axes metadata; read {_axes_fragment(path, ax, plain)} ({ax.reason}); "
            + _AXES_HINT)


class AxesNotes:
    """Readings of a folder that were guesses, said once in one warning (``warn``).

    Args:
        where: The folder the warning names.

    Attributes:
        where: The folder the warning names.
        notes: One fragment per noted file ('a.tif (2, 64, 64) as one 2-channel image ...').
    """

    def __init__(self, where: Path) -> None:
        self.where = where
        self.notes: list[str] = []

    def add(self, path: Path, ax: ImageAxes, plain: ImageAxes | None = None) -> None:
        """Note a file whose reading is an ambiguous guess or was chosen by its label map.

        Args:
            path: The image file.
            ax: How its axes were read.
            plain: Its reading without a label map, when the label map chose ``ax``; a file is
                noted when the two differ.
        """
        if ax.ambiguous or (plain is not None and plain.order != ax.order):
            self.notes.append(_axes_fragment(path, ax, plain))

    def warn(self) -> None:
        """Issue one ``TskdWarning`` for all noted files (nothing when none was noted).

        It names the folder, how many files were read by their shape, the first three of them
        and how to save them with axes metadata.
        """
        if not self.notes:
            return
        more = f" and {len(self.notes) - 3} more" if len(self.notes) > 3 else ""
        warnings.warn(
            f"{self.where}: {len(self.notes)} image(s) have no axes metadata and were read by "
            f"their shape: {'; '.join(self.notes[:3])}{more}; " + _AXES_HINT.replace(
                "save it", "save them").replace("image, ", "images, "),
            TskdWarning, stacklevel=3,
        )
