"""Figures of the demo report: test images with their masks, and the training loss curves.

Test images with ground truth, teacher and student masks, and the loss curves of the
distillation and student stages. Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tskd import atomic


def _overlay(ax: Any, image: np.ndarray, label: np.ndarray | None, title: str) -> None:
    from tskd.data.dataset import to_float_rgb

    ax.imshow(to_float_rgb(image))
    if label is not None and label.max() > 0:
        masked = np.ma.masked_where(label == 0, label)
        ax.imshow(masked, cmap="tab10", alpha=0.45, vmin=0, vmax=9, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def write_figures(out: Path, runs: dict[str, Any], n_examples: int = 4) -> Path | None:
    """Write ``out/examples.png``: test images with their masks, and the loss curves.

    One row per test image (the image, ground truth, the adapted teacher's and the three
    students' masks, segmented on CPU), then the loss per epoch of each run's distillation
    and student stages (``reports/<stage>_history.json``, log scale).

    Args:
        out: the demo's output folder, where ``examples.png`` goes.
        runs: {run name: its ``RunConfig``}: ``ts_kd``, ``task_agnostic_kd`` and
            ``scratch``, each with a trained student (``ts_kd`` also with its teacher). The
            test images are read from the ``test`` folder beside ``ts_kd``'s
            ``data.labelled``.
        n_examples: test images shown, at most.

    Returns:
        The path of ``examples.png``, or None (nothing written) when there is no test image.

    Raises:
        DiskFullError: the disk holding ``out`` is full.
        TskdError: ``out`` cannot be written to.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tskd.data import samples

    test = samples.load_labelled(Path(runs["ts_kd"].data.labelled).parent / "test")[:n_examples]
    if not test:
        return None
    models = _segmenters(runs)
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(test) + 1, cols, figsize=(2.1 * cols, 2.1 * (len(test) + 1)))
    for r, sample in enumerate(test):
        _overlay(axes[r, 0], sample.image, None, sample.name)
        _overlay(axes[r, 1], sample.image, sample.label, "ground truth")
        for c, (title, seg) in enumerate(models.items(), start=2):
            _overlay(axes[r, c], sample.image, seg.segment(sample.image), title)
    for ax in axes[-1]:
        ax.axis("off")
    _plot_losses(fig.add_subplot(len(test) + 1, 1, len(test) + 1), runs)
    fig.tight_layout()
    path = out / "examples.png"
    with atomic.disk_errors(out):
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _segmenters(runs: dict[str, Any]) -> dict[str, Any]:
    """{column title: CPU ``Segmenter``} of the adapted teacher and every student method."""
    from tskd.inference.predict import segmenter_from_bundle
    from tskd.pipeline.run_folder import RunPaths

    models: dict[str, Any] = {}
    for title, run, which in (
        ("teacher (LoRA)", "ts_kd", "teacher"),
        ("U-Net", "unet", "student"),
        ("U-Net16 scratch", "scratch", "student"),
        ("U-Net16 task-agn. KD", "task_agnostic_kd", "student"),
        ("U-Net16 TS-KD", "ts_kd", "student"),
        ("CNN scratch", "cnn_scratch", "student"),
        ("CNN task-agn. KD", "cnn_task_agnostic_kd", "student"),
        ("CNN TS-KD", "cnn_ts_kd", "student"),
        ("ViT scratch", "vit_scratch", "student"),
        ("ViT task-agn. KD", "vit_task_agnostic_kd", "student"),
        ("ViT TS-KD", "vit_ts_kd", "student"),
    ):
        if run not in runs:
            continue
        paths = RunPaths(Path(runs[run].run_dir))
        models[title], _ = segmenter_from_bundle(
            paths.teacher if which == "teacher" else paths.student, device="cpu")
    return models


def _plot_losses(curves: Any, runs: dict[str, Any]) -> None:
    """Plot each run's distillation and student loss per epoch on the axes ``curves`` (log)."""
    import matplotlib

    from tskd.pipeline.run_folder import RunPaths

    colours = iter(matplotlib.colormaps["tab20"].colors)  # one colour per curve, 20 at most
    for run, cfg in runs.items():
        reports = RunPaths(Path(cfg.run_dir)).reports
        for stage in ("distill", "student"):
            f = reports / f"{stage}_history.json"
            if f.is_file():
                hist = json.loads(f.read_text())
                curves.plot([h["loss"] for h in hist], label=f"{run}: {stage}",
                            color=next(colours))
    curves.set_xlabel("epoch")
    curves.set_ylabel("loss")
    curves.set_yscale("log")
    curves.legend(fontsize=6, ncol=3)
