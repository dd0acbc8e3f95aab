"""``tskd demo``: the whole method on a procedural task, against its baselines, in minutes.

It writes a task's train/unlabelled/test folders, then runs four models through the same
pipeline functions a user calls, sharing what can be shared (teacher, transfer set, teacher
cache) so the comparison is fair and cheap:

- student from scratch (fine-tuned on the labels only),
- student after task-agnostic KD (features of the un-adapted teacher), then fine-tuned,
- student after task-specific KD (the LoRA-adapted teacher), then fine-tuned,
- the adapted teacher itself.

Every model is scored on the held-out test images, which nothing else ever looks at. The
comparison is the TS-KD paper's (Fig. 1 and Fig. 3: from scratch, task-agnostic KD and
task-specific KD); what it measured is in docs/demo.md.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tskd import atomic
from tskd.atomic import write_json
from tskd.config import SYNTH_EPOCH_STEPS, RunConfig, TrainConfig
from tskd.engine import CancelToken, ProgressCallback
from tskd.errors import CheckpointError, TskdInputError

DEMO_FILES = ("report.json", "report.md", "examples.png")  # written directly into --out

METHODS = ("scratch", "task_agnostic_kd", "ts_kd", "teacher")
LABELS = {
    "scratch": "student from scratch",
    "task_agnostic_kd": "student, task-agnostic KD",
    "ts_kd": "student, TS-KD",
    "teacher": "adapted teacher (LoRA)",
}


@dataclass(frozen=True)
class Budget:
    """How much work each stage gets; `small` is the default that fits 15 minutes on 2 cores.

    Counts of generated images (``n_unlabelled``, ``n_test``) and of synthetic images
    (``synth_images``, 0: none); epochs of the teacher, distillation and student stages;
    ``synth_steps`` diffusion training steps at ``synth_resolution`` pixels. See docs/demo.md.
    """

    n_unlabelled: int
    n_test: int
    teacher_epochs: int
    synth_images: int
    synth_steps: int
    synth_resolution: int
    distill_epochs: int
    student_epochs: int


BUDGETS = {
    "tiny": Budget(8, 8, 2, 4, 4, 16, 1, 2),
    "small": Budget(40, 30, 30, 24, 120, 32, 8, 40),
    "full": Budget(200, 60, 60, 200, 2000, 64, 40, 80),
}


def demo_config(
    data_root: Path,
    run_dir: Path,
    budget: Budget,
    seed: int,
    teacher: str = "mini",
    checkpoint: str | None = None,
    device: str = "auto",
    teacher_size: int | None = None,
) -> RunConfig:
    """The TS-KD configuration the demo uses; the baselines are variants of it.

    Learning rates and batch sizes are the demo's fixed choices; no validation split (10 labels
    are too few), nothing tuned on the test split.

    Args:
        data_root: folder holding the task's ``train/`` and ``unlabelled/``.
        run_dir: the TS-KD run folder.
        budget: the work each stage gets (a row of ``BUDGETS``).
        seed: seeds every stage's training and the synthesis.
        teacher: ``"mini"`` (built in) or an official SAM type (``vit_b`` ...).
        checkpoint: the SAM checkpoint file; None for the built-in mini SAM.
        device: the run's device (every stage and prediction).
        teacher_size: the teacher's input size in pixels; None: 128 for the mini teacher (its
            pretraining size), 512 for official SAMs (as SAMed, Zhang & Liu 2023).
    """
    cfg = RunConfig(run_dir=str(run_dir), device=device)
    cfg.data.labelled = str(data_root / "train")
    cfg.data.unlabelled = str(data_root / "unlabelled")
    cfg.data.val_fraction = 0.0  # 10 labels are too few to hold some out; nothing is tuned on test
    cfg.teacher.model_type = teacher
    cfg.teacher.checkpoint = checkpoint
    # the mini teacher was pretrained at 128 px; official SAMs run at 512 as SAMed does
    cfg.teacher.input_size = teacher_size or (128 if teacher == "mini" else 512)
    cfg.teacher.train = TrainConfig(epochs=budget.teacher_epochs, batch_size=4, lr=3e-3,
                                    seed=seed)
    cfg.synth.n_images = budget.synth_images
    cfg.synth.train.set_steps(budget.synth_steps, SYNTH_EPOCH_STEPS)
    cfg.synth.train.seed = seed
    cfg.synth.resolution = budget.synth_resolution
    cfg.synth.enabled = budget.synth_images > 0
    cfg.distill.train = TrainConfig(epochs=budget.distill_epochs, batch_size=8, lr=1e-3,
                                    seed=seed)
    cfg.student.train = TrainConfig(epochs=budget.student_epochs, batch_size=4, lr=5e-4,
                                    seed=seed)
    return cfg


def _variant(base: RunConfig, run_dir: Path, **flags: bool) -> RunConfig:
    import copy

    cfg = copy.deepcopy(base)
    cfg.run_dir = str(run_dir)
    cfg.distill.task_agnostic = flags.get("task_agnostic", False)
    cfg.student.from_scratch = flags.get("from_scratch", False)
    return cfg


def _share(src: Path, dst: Path) -> None:
    """Copy a finished stage folder into another run so it is skipped there (same inputs)."""
    if src.is_dir() and not dst.exists():
        shutil.copytree(src, dst)


def _check_teacher(teacher: str, checkpoint: str | None) -> None:
    """Refuse a teacher that cannot load before anything is written (``CheckpointError``)."""
    from tskd.models.mini_sam import BUILTIN_JSON, BUILTIN_WEIGHTS, OFFICIAL_TYPES

    if teacher not in ("mini", *OFFICIAL_TYPES):
        raise CheckpointError(
            f"unknown teacher '{teacher}'; choose mini, {', '.join(OFFICIAL_TYPES)}"
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError(
            f"SAM checkpoint not found: {checkpoint}; give the path of an existing .pth or "
            ".safetensors file."
        )
    if checkpoint is None and teacher != "mini":
        raise CheckpointError(
            f"the {teacher} teacher needs its checkpoint file; pass --checkpoint PATH (official "
            f"weights: tskd.models.sam_checkpoint.download_checkpoint('{teacher}'))."
        )
    if checkpoint is None and not (BUILTIN_WEIGHTS.is_file() and BUILTIN_JSON.is_file()):
        raise CheckpointError(
            f"the built-in mini SAM weights {BUILTIN_WEIGHTS} are missing; reinstall the "
            "package or pass --checkpoint PATH."
        )


@contextmanager
def _demo_folder(out: Path, task: str, n_labels: int, b: Budget) -> Iterator[None]:
    """Hold ``out``'s lock and record what the demo writes directly in it.

    Its data and reports go in ``out/.tskd-manifest.json``; the three run folders keep their
    own manifests. ``out`` may hold other files: they are never removed or replaced. Data and
    reports of an earlier demo are removed only where the manifest lists them; any other file
    where the demo would write (a report, or an image in ``data/<split>/images|labels``, which
    would join the task) stops the demo before it writes anything (``TskdInputError``).
    """
    from tskd.data import outputs
    from tskd.pipeline import lock, manifest

    outputs.check_output_folder(out)
    with lock.run_lock(out, "demo", allow_foreign=True):
        owned = manifest.owned_files(out)
        for name in DEMO_FILES:
            if (out / name).exists() and name not in owned:
                raise TskdInputError(
                    f"{out / name} was not written by tskd demo, so it is not replaced; move it "
                    "or choose another --out."
                )
        data_root = out / "data"
        if data_root.exists():
            # check first, so a refused demo removes nothing; then an earlier demo's data goes,
            # as far as the manifest lists it
            outputs.check_task_folder(task, data_root, n_labels, b.n_unlabelled, b.n_test,
                                      flag=None, owned=[out / f for f in owned])
            manifest.remove_owned(out, under="data")
        with manifest.tracked(out, "demo", [data_root, *(out / n for n in DEMO_FILES)]):
            yield


def run_demo(
    task: str = "kidney_us",
    n_labels: int = 10,
    seed: int = 0,
    budget: str = "small",
    teacher: str = "mini",
    checkpoint: str | None = None,
    out: str | Path = "runs/demo",
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    check_pretraining: bool = False,
    teacher_size: int | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the report dict (also written as report.json and report.md).

    ``out`` may hold other files; the demo never removes or replaces them (``_demo_folder``).

    Args:
        task: a procedural task of ``tskd.data.phantoms.TASKS`` (e.g. ``kidney_us``).
        n_labels: labelled training images (at least 1).
        seed: draws the task's images and seeds every stage.
        budget: a key of ``BUDGETS`` (``tiny``, ``small``, ``full``).
        teacher: ``"mini"`` (built in) or an official SAM type (``vit_b`` ...).
        checkpoint: the SAM checkpoint file; required for official types.
        out: the output folder.
        device: device of every stage and of scoring (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: called with ``tskd.engine.Progress`` reports.
        cancel: checked every training step.
        check_pretraining: also train the teacher's architecture from random initialisation
            with the same budget (``report["pretraining_check"]``).
        teacher_size: the teacher's input size in pixels; None: 128 for the mini SAM (its
            native size), 512 for official SAMs.

    Raises:
        TskdInputError: before writing anything: bad task, budget or label count, or files in
            ``out`` the demo did not write where it would write.
        CheckpointError: before writing anything: unknown teacher, missing checkpoint.
        RunFolderError: another process holds ``out`` or one of its run folders.
        Cancelled: ``cancel`` was set.
        DiskFullError: the disk holding ``out`` is full.
    """
    from tskd.data import phantoms

    if task not in phantoms.TASKS:
        raise TskdInputError(f"unknown task '{task}'; choose one of {', '.join(phantoms.TASKS)}")
    if budget not in BUDGETS:
        raise TskdInputError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    if n_labels < 1:
        raise TskdInputError("the demo needs at least one labelled image (--labels)")
    _check_teacher(teacher, checkpoint)
    b = BUDGETS[budget]
    out = Path(out)
    with _demo_folder(out, task, n_labels, b):
        return _run_demo(task, n_labels, seed, budget, b, teacher, checkpoint, out, device,
                         progress, cancel, check_pretraining, teacher_size)


def _run_demo(
    task: str, n_labels: int, seed: int, budget: str, b: Budget, teacher: str,
    checkpoint: str | None, out: Path, device: str, progress: ProgressCallback | None,
    cancel: CancelToken | None, check_pretraining: bool, teacher_size: int | None,
) -> dict[str, Any]:
    from tskd.data import phantoms
    from tskd.pipeline import registry, run_folder
    from tskd.pipeline.run_folder import RunPaths

    t_start = time.perf_counter()
    data_root = out / "data"
    # the task's images depend on the seed too: every seed is a fresh draw of data
    phantoms.write_task_folders(task, data_root, n_labels, b.n_unlabelled, b.n_test, 256, seed)

    base = demo_config(data_root, out / "ts_kd", b, seed, teacher, checkpoint, device,
                       teacher_size)
    runs = {
        "ts_kd": base,
        "task_agnostic_kd": _variant(base, out / "task_agnostic_kd", task_agnostic=True),
        "scratch": _variant(base, out / "scratch", from_scratch=True),
    }
    results: dict[str, Any] = {}
    for name in ("ts_kd", "task_agnostic_kd", "scratch"):
        cfg = runs[name]
        if name == "task_agnostic_kd":  # same transfer set and teacher cache folder
            target = RunPaths(out / name).transfer
            with run_folder.writing(out / name, "share", [target]):
                _share(RunPaths(out / "ts_kd").transfer, target)
        results[name] = registry.run_pipeline(
            cfg, progress=progress, cancel=cancel, overwrite=True
        )
    methods: dict[str, Any] = {}
    test = data_root / "test"
    for name in ("scratch", "task_agnostic_kd", "ts_kd"):
        methods[name] = _score(runs[name], "student", test)
    methods["teacher"] = _score(runs["ts_kd"], "teacher", test)
    report = {
        "task": task,
        "n_labels": n_labels,
        "seed": seed,
        "budget": budget,
        "teacher_model": teacher,
        "teacher_input_size": base.teacher.input_size,
        "n_test": b.n_test,
        "methods": methods,
        "seconds": time.perf_counter() - t_start,
    }
    if check_pretraining:
        from tskd.apps.pretraining_check import random_init_teacher

        report["pretraining_check"] = {
            "lora_on_pretrained": {k: methods["teacher"][k] for k in ("dice_mean", "dice_std")},
            "random_init_all_trained": random_init_teacher(base, test),
        }
    write_json(out / "report.json", report)
    table = markdown_table(methods)
    report["table"] = table
    _write_markdown(out, report, runs)
    return report


def _score(cfg: RunConfig, model: str, test: Path) -> dict[str, float]:
    """Dice/HD95 mean and spread over test images, parameter count and CPU speed."""
    from tskd.inference.predict import segmenter_from_bundle
    from tskd.pipeline import stages
    from tskd.pipeline.run_folder import RunPaths

    summary = stages.stage_evaluate(cfg, model=model, test_folder=test)
    paths = RunPaths(Path(cfg.run_dir))
    seg, _ = segmenter_from_bundle(paths.student if model == "student" else paths.teacher,
                                   device=cfg.device_of("predict"))
    return {
        "dice_mean": summary["dice_mean"],
        "dice_std": summary["dice_std"],
        "hd95_mean": summary["hd95_mean"],
        "hd95_std": summary["hd95_std"],
        "params": int(sum(p.numel() for p in seg.model.parameters())),
        "ms_per_image": _ms_per_image(seg),
    }


def _ms_per_image(seg: Any, repeats: int = 10) -> float:
    """Median wall time (ms) of one 256x256 image through ``seg`` (forward + pre/post)."""
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
    """Write the demo's result table in Markdown: a header, then one row per ``METHODS`` entry.

    Args:
        methods: ``{method: _score's metrics}`` (Dice, HD95 in px, parameters, ms per image).

    Raises:
        KeyError: a method of ``METHODS`` is missing from ``methods``.
    """
    rows = [
        "| model | Dice | HD95 (px) | parameters | ms per 256x256 image |",
        "|---|---|---|---|---|",
    ]
    for key in METHODS:
        m = methods[key]
        rows.append(
            f"| {LABELS[key]} | {m['dice_mean']:.3f} ± {m['dice_std']:.3f} "
            f"| {m['hd95_mean']:.1f} ± {m['hd95_std']:.1f} | {m['params'] / 1e6:.2f} M "
            f"| {m['ms_per_image']:.1f} |"
        )
    return "\n".join(rows)


def _write_markdown(out: Path, report: dict[str, Any], runs: dict[str, RunConfig]) -> None:
    from tskd.apps import demo_figures

    figure = demo_figures.write_figures(out, runs)
    lines = [
        f"# TS-KD demo: {report['task']}, {report['n_labels']} labels, seed {report['seed']}",
        "",
        f"Budget `{report['budget']}`, teacher `{report['teacher_model']}` at "
        f"{report['teacher_input_size']} px, "
        f"{report['n_test']} held-out test images, {report['seconds'] / 60:.1f} min in all. "
        "Dice and HD95 over foreground classes, mean ± standard deviation over test images "
        "(MONAI; HD95 is the larger of the two directed 95th percentiles, in pixels).",
        "",
        report["table"],
        "",
    ]
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
