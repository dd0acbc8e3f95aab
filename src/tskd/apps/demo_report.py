"""The demo's scores and report: Dice, HD95, size and speed of each method, as JSON and Markdown.

``tskd.apps.demo`` trains the methods; this module scores each on the held-out test images
(``tskd.pipeline.stages.stage_evaluate``), times it on one 256x256 image and writes
``report.md`` with the table and the figures of ``tskd.apps.demo_figures``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tskd import atomic
from tskd.config import RunConfig

# every method of the demo, in the report's order: the U-Net a user would train instead, the
# default student (the U-Net student of width 16), the CNN student (converged budget) and the
# paper's ViT-Tiny, each from scratch, after task-agnostic KD and after TS-KD, and the adapted
# teacher
METHODS = ("unet", "scratch", "task_agnostic_kd", "ts_kd", "cnn_scratch", "cnn_task_agnostic_kd",
           "cnn_ts_kd", "vit_scratch", "vit_task_agnostic_kd", "vit_ts_kd", "teacher")
LABELS = {
    "unet": "U-Net baseline (MONAI BasicUNet, width 32)",
    "scratch": "U-Net student (width 16) from scratch",
    "task_agnostic_kd": "U-Net student (width 16), task-agnostic KD",
    "ts_kd": "U-Net student (width 16), TS-KD",
    "cnn_scratch": "CNN student from scratch",
    "cnn_task_agnostic_kd": "CNN student, task-agnostic KD",
    "cnn_ts_kd": "CNN student, TS-KD",
    "vit_scratch": "ViT-Tiny student from scratch",
    "vit_task_agnostic_kd": "ViT-Tiny student, task-agnostic KD",
    "vit_ts_kd": "ViT-Tiny student, TS-KD",
    "teacher": "adapted teacher (LoRA)",
}
# reports of versions whose default student was the CNN: their keys, read as today's
CNN_DEFAULT_KEYS = {"scratch": "cnn_scratch", "task_agnostic_kd": "cnn_task_agnostic_kd",
                     "ts_kd": "cnn_ts_kd", "unet16_scratch": "scratch",
                     "unet16_task_agnostic_kd": "task_agnostic_kd", "unet16_ts_kd": "ts_kd"}


def as_current(report: dict[str, Any]) -> dict[str, Any]:
    """A demo report with today's method keys, whichever version wrote it.

    Reports without ``default_student`` were written while the CNN was the default student:
    their ``ts_kd``, ``task_agnostic_kd`` and ``scratch`` are the CNN's (``cnn_*`` today) and
    their ``unet16_*`` the U-Net student's (today's default keys).

    Args:
        report: a ``report.json`` as read.

    Returns:
        ``report`` itself when current, else a copy with the methods renamed.
    """
    if "default_student" in report:
        return report
    methods = {CNN_DEFAULT_KEYS.get(k, k): v for k, v in report["methods"].items()}
    return report | {"methods": methods,
                     "default_student": {"architecture": "conv", "unet_width": None}}


def score(cfg: RunConfig, model: str, test: Path) -> dict[str, float]:
    """Score one method's model on the test images.

    Args:
        cfg: The method's run configuration (its run folder holds the model).
        model: "student" or "teacher".
        test: The labelled test folder.

    Returns:
        Dice and HD95 mean and standard deviation over the test images (``stage_evaluate``),
        ``params``, ``ms_per_image`` (CPU, one 256x256 image) and ``speck_share``: the mean
        over test images of the share of predicted foreground in specks of at most 4 pixels
        (``tskd.inference.artefacts.speck_share``; the grid artefact shows as specks).
    """
    import numpy as np

    from tskd.data import samples
    from tskd.inference.artefacts import speck_share
    from tskd.inference.predict import segmenter_from_bundle
    from tskd.pipeline import stages
    from tskd.pipeline.run_folder import RunPaths

    summary = stages.stage_evaluate(cfg, model=model, test_folder=test)
    paths = RunPaths(Path(cfg.run_dir))
    seg, _ = segmenter_from_bundle(paths.student if model == "student" else paths.teacher,
                                   device=cfg.device_of("predict"))
    specks = [speck_share(seg.segment(s.image)) for s in samples.load_labelled(test)]
    return {
        "dice_mean": summary["dice_mean"],
        "dice_std": summary["dice_std"],
        "hd95_mean": summary["hd95_mean"],
        "hd95_std": summary["hd95_std"],
        "params": int(sum(p.numel() for p in seg.model.parameters())),
        "ms_per_image": ms_per_image(seg),
        "speck_share": float(np.mean(specks)) if specks else 0.0,
    }


def ms_per_image(seg: Any, repeats: int = 10) -> float:
    """Median wall time of one 256x256 image through ``seg`` (forward + pre/post).

    Args:
        seg: A ``tskd.inference.segmenter.Segmenter``.
        repeats: Timed runs after one warm-up.

    Returns:
        Milliseconds.
    """
    import numpy as np
    import torch

    image = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    seg.segment(image)  # warm-up
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            seg.segment(image)
            times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def markdown_table(methods: dict[str, Any]) -> str:
    """The demo's result table in Markdown.

    Args:
        methods: {method: ``score``'s metrics and ``seconds``, the method's training time}.

    Returns:
        One row per method of ``METHODS`` present, in that order.
    """
    rows = [
        "| model | Dice | HD95 (px) | specks % | parameters | ms per 256x256 image "
        "| training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in METHODS:
        if key not in methods:
            continue
        m = methods[key]
        rows.append(
            f"| {LABELS[key]} | {m['dice_mean']:.3f} ± {m['dice_std']:.3f} "
            f"| {m['hd95_mean']:.1f} ± {m['hd95_std']:.1f} | {100 * m.get('speck_share', 0.0):.2f} "
            f"| {m['params'] / 1e6:.2f} M "
            f"| {m['ms_per_image']:.1f} | {m.get('seconds', 0.0):.0f} |"
        )
    return "\n".join(rows)


def write_markdown(out: Path, report: dict[str, Any], runs: dict[str, RunConfig]) -> None:
    """Write ``out/report.md``: the table, the figures and the pretraining check.

    Args:
        out: The demo folder.
        report: ``run_demo``'s report with its ``table``.
        runs: {method: run configuration}, for the figures.

    Raises:
        DiskFullError: The disk holding ``out`` is full.
    """
    from tskd.apps import demo_figures

    figure = demo_figures.write_figures(out, runs)
    lines = [
        f"# TS-KD demo: {report['task']}, {report['n_labels']} labels, seed {report['seed']}",
        "",
        f"Budget `{report['budget']}`, teacher `{report['teacher_model']}` at "
        f"{report['teacher_input_size']} px{_teacher_words(report.get('teacher_weights'))}, "
        f"{report.get('n_unlabelled', '?')} unlabelled images, "
        f"{report['n_test']} held-out test images, {report['seconds'] / 60:.1f} min in all. "
        "Dice and HD95 over foreground classes, mean ± standard deviation over test images "
        "(MONAI; HD95 is the larger of the two directed 95th percentiles, in pixels; a class "
        "present in only one of prediction and ground truth counts as the image diagonal).",
        "",
        report["table"],
        "",
        "*specks %*: the share of predicted foreground in components of at most 4 pixels "
        "(scattered dots, the grid artefact's signature). *training s*: wall-clock from the "
        "labels to the "
        "model; for TS-KD and task-agnostic KD it includes the teacher (TS-KD only), the transfer "
        "set and distillation, and the U-Net was given exactly the TS-KD pipeline's.",
        "",
    ]
    if report["budget"] == "tiny":
        lines += ["**Budget `tiny` is a smoke test: a few steps per stage, so these scores say "
                  "nothing about the methods.** Use `small` (the default) or `converged`.", ""]
    if figure:
        lines += [f"![examples and loss curves]({figure.name})", ""]
    check = report.get("pretraining_check")
    if check:
        a, b = check["lora_on_pretrained"], check["random_init_all_trained"]
        lines += [
            "Pretraining check (same teacher architecture, same labels and steps): LoRA on the "
            f"pretrained mini teacher Dice {a['dice_mean']:.3f} ± {a['dice_std']:.3f}; from "
            f"random initialisation, all parameters trained, Dice {b['dice_mean']:.3f} ± "
            f"{b['dice_std']:.3f}.",
            "",
        ]
    atomic.write_text(out / "report.md", "\n".join(lines))


def teacher_identity(cfg: RunConfig) -> dict[str, Any]:
    """Which teacher weights a run adapts, so reports of different teachers can be told apart.

    Args:
        cfg: the run's configuration.

    Returns:
        ``{"checkpoint": "builtin" or the file's name, "sha256": its first 12 hex digits,
        "token_grid": tokens per side at the teacher's input size (None for official SAMs,
        whose grid is input / 16), "refine_head": whether the adapted teacher has one}``.
    """
    from tskd.models.mini_sam import BUILTIN_WEIGHTS
    from tskd.models.mini_sam_files import read_mini_config
    from tskd.models.sam_checkpoint import sha256_of

    path = Path(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else BUILTIN_WEIGHTS
    arch = read_mini_config(path) if cfg.teacher.model_type == "mini" else None
    return {"checkpoint": "builtin" if cfg.teacher.checkpoint is None else path.name,
            "sha256": sha256_of(path)[:12] if path.is_file() else None,
            "token_grid": cfg.teacher.input_size // arch.patch_size if arch else None,
            "refine_head": bool(cfg.teacher.refine_head)}


def _teacher_words(identity: dict[str, Any] | None) -> str:
    """`` (weights ..., 16x16 tokens, refine head)`` for the report's first line."""
    if not identity:
        return ""
    words = [f"weights {identity['checkpoint']} {identity['sha256'] or ''}".rstrip()]
    if identity.get("token_grid"):
        words.append(f"{identity['token_grid']}x{identity['token_grid']} tokens")
    words.append("refine head" if identity.get("refine_head") else "no refine head")
    return " (" + ", ".join(words) + ")"
