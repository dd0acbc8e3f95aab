"""Contact sheets of a sample task: images beside their label overlays, for the docs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tskd.data.phantoms import TASKS, generate


def _display(task: str, image: np.ndarray) -> np.ndarray:
    """An image as float RGB in [0, 1] for figures (CT in a soft-tissue window)."""
    if TASKS[task].dtype == "uint16":
        hu = image.astype(np.float32) - 1024
        img = np.clip((hu + 160) / 400, 0, 1)
    else:
        img = image.astype(np.float32) / 255
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def contact_sheet(
    task: str, n: int, path: str | Path, size: int = 256, seed: int = 0, cols: int = 4
) -> Path:
    """Save a PNG grid of ``n`` samples, each image beside its label overlay (for the docs).

    CT is shown in a soft-tissue window (-160 to 240 HU).

    Args:
        task: A key of ``tskd.data.phantoms.TASKS``.
        n: How many samples (indices 0..n-1).
        path: The PNG to write (its folder is created).
        size: Image side in pixels.
        seed: As ``tskd.data.phantoms.generate``.
        cols: Samples per row (each takes two panels).

    Returns:
        ``path``.

    Raises:
        TskdInputError: An unknown task.
        DiskFullError: The disk is full.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the process's backend alone

    colours = np.array([[0, 0, 0], [1, 0.2, 0.2], [0.2, 1, 0.2], [0.3, 0.5, 1], [1, 1, 0.2],
                        [1, 0.3, 1], [0.2, 1, 1]], np.float32)
    samples = generate(task, n, size, seed)  # refuses an unknown task
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(4 * cols, 2.2 * rows + 0.5))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (image, label) in enumerate(samples):
        r, c = divmod(k, cols)
        img = _display(task, image)
        axes[r, 2 * c].imshow(img)
        over = img.copy()
        fg = label > 0
        over[fg] = 0.45 * over[fg] + 0.55 * colours[label[fg] % len(colours)]
        axes[r, 2 * c + 1].imshow(over)
        axes[r, 2 * c].set_title(f"#{k}", fontsize=8)
    names = ", ".join(TASKS[task].class_names[1:])
    fig.suptitle(f"{task} ({names})", fontsize=10)
    fig.tight_layout()
    from tskd import atomic

    path = Path(path)
    atomic.mkdir(path.parent)
    with atomic.disk_errors(path.parent):
        fig.savefig(path, dpi=80)
    return path
