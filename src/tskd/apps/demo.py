"""``tskd demo``: the whole method on a procedural task, against its baselines, in minutes.

It writes a task's train/unlabelled/test folders, then runs every method through the same
pipeline functions a user calls, sharing what can be shared (teacher, transfer set, teacher
cache) so the comparison is fair and cheap (``demo_methods``):

- the plain U-Net a user would train instead (MONAI ``BasicUNet``, from scratch on the labels),
  given the wall-clock the whole TS-KD pipeline took;
- the default (convolutional) student and the paper's ViT-Tiny student, each trained on the
  labels only, after task-agnostic KD (features of the un-adapted teacher) and after
  task-specific KD (the LoRA-adapted teacher), the last two then fine-tuned on the labels;
- the adapted teacher itself.

Every model is scored on the held-out test images, which nothing else ever looks at. The
comparison is the TS-KD paper's (Fig. 1 and Fig. 3: from scratch, task-agnostic KD and
task-specific KD); what it measured is in docs/demo.md.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tskd.apps import demo_methods
from tskd.atomic import write_json
from tskd.config import SYNTH_EPOCH_STEPS, RunConfig, TrainConfig
from tskd.engine import CancelToken, ProgressCallback
from tskd.errors import CheckpointError, TskdInputError

DEMO_FILES = ("report.json", "report.md", "examples.png")  # written directly into --out


@dataclass(frozen=True)
class Budget:
    """How much work each stage gets; `small` is the default that fits 15 minutes on 2 cores.

    Counts of generated images (``n_unlabelled``, ``n_test``) and of synthetic images
    (``synth_images``, 0: none); epochs of the teacher, distillation and student stages (at
    most, with ``patience``); ``synth_steps`` diffusion training steps at ``synth_resolution``
    pixels. With ``patience``, the teacher, distillation and the student stop once the Dice on
    the validation images (``val_fraction`` of the labelled set, never the test set) has not
    improved in ``patience`` evaluations (one every ``val_every`` steps), and ``stage_seconds``
    caps each training stage's wall-clock (teacher, synthesis, distillation, student);
    ``val_every`` is in optimiser steps here (``_validate_every`` turns it into each stage's
    epochs). See docs/demo.md.
    """

    n_unlabelled: int
    n_test: int
    teacher_epochs: int
    synth_images: int
    synth_steps: int
    synth_resolution: int
    distill_epochs: int
    student_epochs: int
    patience: int | None = None
    val_every: int = 1
    val_fraction: float = 0.0
    stage_seconds: tuple[float, float, float, float] | None = None
    cnn_students: bool = False  # demo_runs' CNN student too (run_demo's ``cnn_students``)


BUDGETS = {
    "tiny": Budget(8, 8, 2, 4, 4, 16, 1, 2),
    # 11 min for all eight methods on 2 cores (kidney_us, seed 0), so `make demo` from a fresh
    # clone, installation included, stays under 15 min
    "small": Budget(24, 30, 30, 24, 120, 32, 5, 50),
    # every stage until its validation Dice stops improving, within 8 minutes of TS-KD on 2 cores
    # (the CNN student's three methods would add ~10 min to a task and seed's ~30: on request)
    "converged": Budget(100, 60, 150, 100, 1500, 64, 40, 400, patience=4, val_every=50,
                        val_fraction=0.2, stage_seconds=(90.0, 60.0, 120.0, 120.0)),
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
    counts: tuple[int, int] | None = None,
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
        counts: (labelled, unlabelled) images of ``data_root`` (a user's folder, whose
            ``unlabelled/`` may be missing: 0); None: a sample task's, as the budget writes it.
    """
    cfg = RunConfig(run_dir=str(run_dir), device=device)
    cfg.data.labelled = str(data_root / "train")
    cfg.data.unlabelled = None if counts and not counts[1] else str(data_root / "unlabelled")
    cfg.data.val_fraction = budget.val_fraction  # validation images for early stopping only
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
    cfg.student.train = TrainConfig(epochs=budget.student_epochs, batch_size=4, lr=1e-3,
                                    seed=seed)
    # the U-Net recipe (AdamW 1e-3) for every student; the distilled encoder learns at a third
    # of the decoder's rate so fine-tuning keeps what distillation taught (a design choice, not
    # tuned)
    cfg.student.encoder_lr_scale = 0.3
    caps = budget.stage_seconds or (None, None, None, None)
    for train, cap in zip((cfg.teacher.train, cfg.synth.train, cfg.distill.train,
                           cfg.student.train), caps):
        train.max_seconds = cap
    if budget.patience is not None:
        _validate_every(cfg, budget, data_root, counts)
    return cfg


def _validate_every(cfg: RunConfig, budget: Budget, data_root: Path,
                    counts: tuple[int, int] | None) -> None:
    """Early stopping for the teacher, distillation and the student, scored every ~N steps.

    ``val_every`` is in epochs, and an epoch of 8 labelled images is 2 steps while one of the
    transfer set is 25: each stage scores its validation Dice every ``budget.val_every`` steps
    (rounded to whole epochs), so ``patience`` evaluations are the same number of steps for all.
    """
    from tskd.config import validation_count

    n_labelled, n_unlabelled = counts or (len(list((data_root / "train" / "images").iterdir())),
                                          budget.n_unlabelled)
    n_train = n_labelled - validation_count(n_labelled, budget.val_fraction)
    n_transfer = n_unlabelled + n_train + budget.synth_images
    for train, n in ((cfg.teacher.train, n_train), (cfg.distill.train, n_transfer),
                     (cfg.student.train, n_train)):
        steps_per_epoch = max(1, n // train.batch_size)
        train.patience = budget.patience
        train.val_every = max(1, round(budget.val_every / steps_per_epoch))


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
def _demo_folder(out: Path, task: str | None, n_labels: int, b: Budget) -> Iterator[None]:
    """Hold ``out``'s lock and record what the demo writes directly in it.

    Its data and reports go in ``out/.tskd-manifest.json``; the three run folders keep their
    own manifests. ``out`` may hold other files: they are never removed or replaced. Data and
    reports of an earlier demo are removed only where the manifest lists them; any other file
    where the demo would write (a report, or an image in ``data/<split>/images|labels``, which
    would join the task) stops the demo before it writes anything (``TskdInputError``).
    ``task`` None: the user's own data, read where it is; ``out/data`` is left alone.
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
        if task is not None and data_root.exists():
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
    data: str | Path | None = None,
    cnn_students: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns the report dict (also written as report.json and report.md).

    Args:
        task: a procedural task of ``tskd.data.phantoms.TASKS`` (e.g. ``kidney_us``).
        n_labels: labelled training images (at least 1).
        seed: draws the task's images and seeds every stage.
        budget: a key of ``BUDGETS`` (``tiny``, ``small``, ``converged``).
        teacher: ``"mini"`` (built in) or an official SAM type (``vit_b`` ...).
        checkpoint: the SAM checkpoint file; required for official types.
        out: the output folder; may hold other files, never removed or replaced.
        device: device of every stage and of scoring (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: called with ``tskd.engine.Progress`` reports.
        cancel: checked every training step.
        check_pretraining: also the teacher's architecture from random init (same budget).
        teacher_size: the teacher's input px; None: 128 for the mini SAM, 512 for SAMs.
        data: instead of ``task`` and ``n_labels``, the user's folder: labelled ``train/``
            and ``test/`` (scored only), optionally ``unlabelled/``; never written.
        cnn_students: also the CNN student's scratch, task-agnostic and TS-KD (``cnn_*``).

    Raises:
        TskdInputError: before writing anything: bad task, budget or label count, files in
            ``out`` the demo did not write where it would write, ``data`` without ``train/``
            or ``test/``, ``out`` inside ``data`` (or the other way round).
        CheckpointError: before writing anything: unknown teacher, missing checkpoint.
        RunFolderError: another process holds ``out`` or one of its run folders.
        Cancelled: ``cancel`` was set.
        DiskFullError: the disk holding ``out`` is full.
    """
    from tskd.data import phantoms

    if data is not None:
        return _run_on_own_data(Path(data), seed, budget, teacher, checkpoint, Path(out),
                                device, progress, cancel, check_pretraining, teacher_size)
    if task not in phantoms.TASKS:
        raise TskdInputError(f"unknown task '{task}'; choose one of {', '.join(phantoms.TASKS)}")
    if budget not in BUDGETS:
        raise TskdInputError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    if n_labels < 1:
        raise TskdInputError("the demo needs at least one labelled image (--labels)")
    _check_teacher(teacher, checkpoint)
    b = replace(BUDGETS[budget], cnn_students=cnn_students)
    with _demo_folder(Path(out), task, n_labels, b):
        return _run_demo(task, n_labels, seed, budget, b, teacher, checkpoint, Path(out),
                         device, progress, cancel, check_pretraining, teacher_size)


def _run_on_own_data(
    data: Path, seed: int, budget: str, teacher: str, checkpoint: str | None, out: Path,
    device: str, progress: ProgressCallback | None, cancel: CancelToken | None,
    check_pretraining: bool, teacher_size: int | None,
) -> dict[str, Any]:
    """``run_demo`` on a user's folder: every method, scored on its ``test/`` images."""
    from tskd.data import outputs, samples

    if budget not in BUDGETS:
        raise TskdInputError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    if not data.is_dir():
        raise TskdInputError(f"data folder not found: {data} (--data)")
    for split in ("train", "test"):
        if not (data / split).is_dir():
            raise TskdInputError(
                f"{data} has no {split}/ folder; the demo on your own data reads train/ and "
                "test/ (labelled: images/ + labels/) and optionally unlabelled/.")
    outputs.check_not_input(out, [data], what="demo output folder (--out)",
                            input_what="data folder (--data)")
    _check_teacher(teacher, checkpoint)
    with warnings.catch_warnings():  # counted here, read (and warned about) by the stages
        warnings.simplefilter("ignore")
        n_labels = len(samples.load_labelled(data / "train"))
        n_test = len(samples.load_labelled(data / "test"))
        unlabelled = data / "unlabelled"
        n_unlabelled = len(samples.load_unlabelled(unlabelled)) if unlabelled.is_dir() else 0
    with _demo_folder(out, None, n_labels, BUDGETS[budget]):
        return _run_demo(None, n_labels, seed, budget, BUDGETS[budget], teacher, checkpoint,
                         out, device, progress, cancel, check_pretraining, teacher_size,
                         own=(data, n_test, n_unlabelled))


def _run_demo(
    task: str | None, n_labels: int, seed: int, budget: str, b: Budget, teacher: str,
    checkpoint: str | None, out: Path, device: str, progress: ProgressCallback | None,
    cancel: CancelToken | None, check_pretraining: bool, teacher_size: int | None,
    own: tuple[Path, int, int] | None = None,
) -> dict[str, Any]:
    from tskd.apps import demo_report
    from tskd.data import phantoms
    from tskd.pipeline import registry

    t_start = time.perf_counter()
    if own is None:
        data_root, n_test, counts, n_unlabelled = out / "data", b.n_test, None, b.n_unlabelled
        # the task's images depend on the seed too: every seed is a fresh draw of data
        phantoms.write_task_folders(task, data_root, n_labels, b.n_unlabelled, n_test, 256, seed)
    else:  # the user's folder (``_run_on_own_data``)
        data_root, n_test, n_unlabelled = own
        counts = (n_labels, n_unlabelled)
    base = demo_config(data_root, out / "ts_kd", b, seed, teacher, checkpoint, device,
                       teacher_size, counts)
    runs = demo_methods.demo_runs(base, out, b.cnn_students)
    seconds: dict[str, dict[str, float]] = {}  # {method: {stage: wall-clock seconds}}
    for name, cfg in runs.items():
        if name == "unet":  # the same wall-clock as the TS-KD pipeline, to the end
            cfg.student.train.max_seconds = sum(seconds["ts_kd"].values())
            cfg.student.train.epochs *= 10  # the time budget, not the epochs, ends it
        demo_methods.share_from(out, name)
        results = registry.run_pipeline(cfg, progress=progress, cancel=cancel, overwrite=True)
        seconds[name] = {k: float(r.get("seconds", 0.0)) for k, r in results.items()
                         if k != "evaluate" and isinstance(r, dict)}
    methods: dict[str, Any] = {}
    test = data_root / "test"
    for name, cfg in runs.items():
        methods[name] = demo_report.score(cfg, "student", test) | {
            "seconds": sum(seconds[name].values()), "stage_seconds": seconds[name]}
    methods["teacher"] = demo_report.score(runs["ts_kd"], "teacher", test) | {
        "seconds": seconds["ts_kd"]["teacher"]}
    report = {
        "task": task if own is None else data_root.name,
        "data": None if own is None else str(data_root.resolve()),
        "n_labels": n_labels, "seed": seed, "budget": budget, "teacher_model": teacher,
        "n_unlabelled": n_unlabelled, "default_student": {"architecture": base.student.architecture,
                            "unet_width": base.student.unet_width},
        "teacher_input_size": base.teacher.input_size,
        "teacher_weights": demo_report.teacher_identity(base),
        "n_test": n_test,
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
    report["table"] = demo_report.markdown_table(methods)
    demo_report.write_markdown(out, report, runs)
    return report
