"""The methods ``tskd demo`` compares: each one's run configuration and what it shares.

Every method is a variant of the TS-KD run (``demo_config``): another student architecture,
task-agnostic KD, or training from scratch. Runs with the same inputs for a stage copy that
stage's finished folder instead of recomputing it (``SHARED``), so the comparison is fair and
cheap.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tskd.config import RunConfig


def _variant(base: RunConfig, run_dir: Path, architecture: str | None = None,
             task_agnostic: bool = False, from_scratch: bool = False,
             unet_width: int | None = None) -> RunConfig:
    """``base`` for another method: its run folder, student architecture and flags."""
    import copy

    cfg = copy.deepcopy(base)
    cfg.run_dir = str(run_dir)
    if architecture is not None:  # else the base's: the default student
        cfg.student.architecture = architecture  # type: ignore[assignment]
    cfg.distill.task_agnostic = task_agnostic
    cfg.student.from_scratch = from_scratch
    if unet_width is not None:
        cfg.student.unet_width = unet_width
    return cfg


def demo_runs(base: RunConfig, out: Path, cnn_students: bool = False) -> dict[str, RunConfig]:
    """Every student method's run configuration, in the order they run (``ts_kd`` first).

    ``ts_kd``, ``task_agnostic_kd`` and ``scratch`` are the base's (the default) student;
    ``vit_*`` the paper's ViT-Tiny; ``cnn_*`` the CNN student; ``unet`` the plain U-Net
    baseline at MONAI's default width.

    Args:
        base: The TS-KD run (``demo_config``) with the default student.
        out: The demo folder; each method runs in ``out/<method>``.
        cnn_students: Also the CNN student, from scratch, after task-agnostic KD and after
            TS-KD (``Budget.cnn_students``).

    Returns:
        {method: configuration}; the U-Net (``unet``) gets its time budget later, from what
        TS-KD took.
    """
    flags: dict[str, dict[str, Any]] = {
        "ts_kd": {}, "vit_ts_kd": {"architecture": "vit_tiny"},
        "task_agnostic_kd": {"task_agnostic": True},
        "vit_task_agnostic_kd": {"architecture": "vit_tiny", "task_agnostic": True},
        "scratch": {"from_scratch": True},
        "vit_scratch": {"architecture": "vit_tiny", "from_scratch": True},
        "unet": {"architecture": "unet", "from_scratch": True, "unet_width": BASELINE_UNET_WIDTH},
    }
    if cnn_students:
        cnn = {"architecture": "conv"}
        flags |= {"cnn_ts_kd": cnn, "cnn_scratch": cnn | {"from_scratch": True},
                  "cnn_task_agnostic_kd": cnn | {"task_agnostic": True}}
    return {name: base if name == "ts_kd" else _variant(base, out / name, **f)
            for name, f in flags.items()}


# what each run copies from a finished one before it starts (same inputs, so the stages skip)
SHARED = {
    "vit_ts_kd": ("ts_kd", ("teacher", "transfer", "cache")),
    "task_agnostic_kd": ("ts_kd", ("transfer",)),
    "vit_task_agnostic_kd": ("task_agnostic_kd", ("transfer", "cache")),
    "cnn_ts_kd": ("ts_kd", ("teacher", "transfer", "cache")),
    "cnn_task_agnostic_kd": ("task_agnostic_kd", ("transfer", "cache")),
}
BASELINE_UNET_WIDTH = 32  # the plain U-Net a user would train: MONAI BasicUNet's default


def _share(src: Path, dst: Path) -> None:
    """Copy a finished stage folder into another run so it is skipped there (same inputs)."""
    if src.is_dir() and not dst.exists():
        shutil.copytree(src, dst)


def share_from(out: Path, name: str) -> None:
    """Copy the finished stage folders ``SHARED`` names into run ``name`` (same inputs).

    Args:
        out: The demo folder, holding each method's run folder.
        name: The method about to run; nothing happens unless ``SHARED`` names it.

    Raises:
        RunFolderError: Another process holds ``out / name``, or it holds files that are not a
            run's.
    """
    from tskd.pipeline import run_folder
    from tskd.pipeline.run_folder import RunPaths

    if name not in SHARED:
        return
    source, parts = SHARED[name]
    src, dst = RunPaths(out / source), RunPaths(out / name)
    targets = [getattr(dst, part) for part in parts]
    with run_folder.writing(out / name, "share", targets):
        for part, target in zip(parts, targets):
            _share(getattr(src, part), target)
