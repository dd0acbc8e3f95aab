"""The TS-KD training stages over one run folder, one function each.

Every training stage is ``stage_x(run, progress=None, cancel=None, resume=False)``, the shared
stage arguments: ``run`` is a ``RunConfig`` or the ``StageContext`` of a run in progress
(``run_pipeline`` passes one context to every stage, so the labelled set is read and hashed
once); ``progress`` is called with the engine's ``Progress`` after each step (None: no
reports); ``cancel``, a ``CancelToken``, is checked before each step; ``resume`` continues from
the stage's checkpoint. A stage reads its inputs from the configuration and the run folder,
writes its artefact into the run folder and returns a small JSON-able result; a stage whose
artefact exists with the same fingerprint is skipped. Besides what each names, every stage can
raise ``Cancelled`` (a checkpoint is written first), ``TskdInputError`` (the labelled set
cannot be read), ``RunFolderError`` (the run folder is, holds or lies inside a data folder, is
locked by another writer, or its checkpoint was made from other inputs) and ``DiskFullError``.
What every stage shares (paths, the labelled set, skip check, seeding, timing, marking done,
the run folder's lock: ``writes``) is ``tskd.pipeline.context``, what each artefact depends on
``tskd.pipeline.fingerprints``; the table of stages (names, CLI commands, titles, folders) is
``tskd.pipeline.registry``, which the CLI and the widgets read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tskd.atomic import write_json
from tskd.config import RunConfig, to_dict
from tskd.errors import TskdError, TskdInputError
from tskd.pipeline import fingerprints
from tskd.pipeline.context import (
    LabelledData,
    StageContext,
    data_files,
    writes,
)
from tskd.pipeline.run_folder import RunPaths

if TYPE_CHECKING:
    from tskd.engine import CancelToken, ProgressCallback

__all__ = ["stage_distill", "stage_evaluate", "stage_finetune_student",
           "stage_synthesize", "stage_teacher"]


# --- the four training stages -------------------------------------------------------------------

@writes("teacher", lambda p: [p.teacher, p.checkpoints("teacher")])
def stage_teacher(
    run: RunConfig | StageContext,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Stage 1, teacher: adapt SAM to the task with LoRA; writes ``run/teacher``.

    SAM with LoRA and one mask per class, trained on ``dice_weight`` * Dice + (1 -
    ``dice_weight``) * cross-entropy as SAMed (``tskd.training.teacher``).

    Args:
        run: a ``RunConfig``, or the ``StageContext`` of a run in progress.
        progress: called with the engine's ``Progress`` after each step; None: no reports.
        cancel: checked before each step; None: the stage cannot be cancelled.
        resume: continue from the stage's checkpoint (``run/checkpoints/teacher``).

    Returns:
        The validation metrics and ``seconds``; the recorded result with ``"skipped": True``
        when the teacher is already done with the same inputs.
    """
    from tskd.training import teacher

    ctx = StageContext.of(run, progress, cancel, resume)
    cfg, paths, data = ctx.cfg, ctx.paths, ctx.data
    step = ctx.begin(paths.teacher, fingerprints.of(ctx, "teacher"), cfg.teacher.train.seed,
                     paths.checkpoints("teacher"))
    if step.done is not None:
        return step.done
    metrics = teacher.finetune_teacher(
        ctx.section("teacher"), data.train, data.val, data.num_classes, paths.teacher,
        ctx.control(step),  # the checkpoint is kept until the artefact is written
        class_names=data.class_names,
        augment=cfg.data.augment,
        train_image_shape=list(data.image_shape),
        label_meta=data.label_map.to_meta() if data.label_map is not None else None,
    )
    return step.finish(dict(metrics))


@writes("synthesize", lambda p: [p.transfer, p.checkpoints("synthesize")])
def stage_synthesize(
    run: RunConfig | StageContext,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Stage 2, transfer set: a small DDPM trained on the task's images, sampled with DDIM.

    Writes ``run/transfer`` (its ``manifest.json`` lists the transfer set: the labelled
    images without labels, the unlabelled and the synthetic images).

    Args:
        run: a ``RunConfig``, or the ``StageContext`` of a run in progress.
        progress: called with the engine's ``Progress`` after each step; None: no reports.
        cancel: checked before each step; None: the stage cannot be cancelled.
        resume: continue from the stage's checkpoint (``run/checkpoints/synthesize``).

    Returns:
        The near-copy report (``n_generated``, ``n_kept``, ``n_dropped``, ``share_dropped``,
        ``paths``) and ``seconds``; zeros when ``synth.enabled`` is off or ``synth.n_images``
        is 0; the recorded result with ``"skipped": True`` when already done.
    """
    ctx = StageContext.of(run, progress, cancel, resume)
    cfg, paths, data = ctx.cfg, ctx.paths, ctx.data
    step = ctx.begin(paths.transfer, fingerprints.of(ctx, "synthesize"), cfg.synth.train.seed,
                     paths.checkpoints("synthesize"))
    if step.done is not None:
        return step.done
    if cfg.synth.enabled and cfg.synth.n_images > 0:
        from tskd.training import synthesize

        report = synthesize.synthesize(
            [s.image for s in data.train] + _unlabelled_images(cfg), ctx.section("synth"),
            paths.synthetic, ctx.control(step, keep_checkpoint=False), model_dir=paths.diffusion,
            out_size=cfg.data.image_size,
        )
        result = report.to_dict()
    else:
        result = {"n_generated": 0, "n_kept": 0, "n_dropped": 0, "share_dropped": 0.0, "paths": []}
    write_json(
        paths.transfer / "manifest.json",
        {
            "labelled_without_labels": [s.name for s in data.train],
            "unlabelled": [str(p) for p in data_files(cfg.data.unlabelled, "unlabelled")],
            "synthetic": [str(p) for p in result.get("paths", [])],
        },
    )
    return step.finish(result)


def _unlabelled_images(cfg: RunConfig) -> list[np.ndarray]:
    from tskd.data.pixel_budget import pixel_budget
    from tskd.data.samples import load_unlabelled

    if not cfg.data.unlabelled:
        return []
    with pixel_budget(cfg.data.max_pixels):
        return [s.image for s in load_unlabelled(cfg.data.unlabelled)]


def _transfer_images(ctx: StageContext) -> list[np.ndarray]:
    """Unlabelled real images + labelled images without labels + synthetic images."""
    from tskd.data.samples import load_unlabelled

    images = _unlabelled_images(ctx.cfg) + [s.image for s in ctx.data.train]
    synthetic = ctx.paths.synthetic
    if synthetic.is_dir() and any(synthetic.iterdir()):
        images += [s.image for s in load_unlabelled(synthetic)]
    return images


def _distill_teacher(ctx: StageContext) -> tuple[Any, str]:
    # the teacher distillation learns from and its id (the teacher cache's key): the adapted
    # teacher in run/teacher (TskdError when missing), or the un-adapted SAM when task-agnostic
    from tskd.models import lora

    cfg, folder = ctx.cfg, ctx.paths.teacher
    if cfg.distill.task_agnostic:
        from tskd.models.teacher import SemanticSam, build_sam

        sam = build_sam(cfg.teacher.model_type, cfg.teacher.checkpoint, cfg.teacher.input_size)
        return SemanticSam(sam, ctx.data.num_classes).eval(), fingerprints.of(ctx, "base")
    if not (folder / "meta.json").is_file():
        raise TskdError(f"no adapted teacher in {folder}; run finetune-teacher first")
    return lora.load_teacher(folder), lora.teacher_id(folder)


@writes("distill", lambda p: [p.distilled, p.cache, p.checkpoints("distill"),
                                p.reports / "distill_history.json"])
def stage_distill(
    run: RunConfig | StageContext,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Stage 3, distillation: distil the teacher into the student on the transfer set.

    Feature and output distillation (``tskd.training.distill``: the teacher's softened
    outputs at ``distill.temperature`` as Hinton et al. 2015). Writes ``run/distilled`` (a
    student bundle) and ``reports/distill_history.json``.

    Args:
        run: a ``RunConfig``, or the ``StageContext`` of a run in progress.
        progress: called with the engine's ``Progress`` after each step; None: no reports.
        cancel: checked before each step; None: the stage cannot be cancelled.
        resume: continue from the stage's checkpoint (``run/checkpoints/distill``).

    Returns:
        ``n_transfer_images``, ``final_losses``, ``seconds``, ``task_agnostic``; the recorded
        result with ``"skipped": True`` when already done.

    Raises:
        TskdError: no adapted teacher in the run folder (and not ``distill.task_agnostic``).
    """
    from tskd.engine import seed_everything
    from tskd.inference import bundle
    from tskd.models.student import build_student
    from tskd.training import distill

    ctx = StageContext.of(run, progress, cancel, resume)
    cfg, paths, data = ctx.cfg, ctx.paths, ctx.data
    step = ctx.begin(paths.distilled, fingerprints.of(ctx, "distill"), cfg.distill.train.seed,
                     paths.checkpoints("distill"))
    if step.done is not None:
        return step.done
    model, teacher_id = _distill_teacher(ctx)
    images = _transfer_images(ctx)
    seed_everything(cfg.distill.train.seed)  # the student's initialisation, whatever came before
    student = build_student(cfg.student, data.num_classes, cfg.data.image_size)
    result = distill.distill(
        model, images, ctx.section("distill"), student,
        teacher_input_size=cfg.teacher.input_size, teacher_id=teacher_id, cache_dir=paths.cache,
        control=ctx.control(step),  # the checkpoint is kept until the artefact is written
        val=data.val,
    )
    summary = {
        "n_transfer_images": len(images),
        "final_losses": result.history[-1] if result.history else {},
        "steps": result.steps,
        "stopped": result.stopped,
        "seconds": step.seconds(),
        "task_agnostic": cfg.distill.task_agnostic,
    }
    bundle.save_student(student, paths.distilled, _student_meta(cfg, data, summary))
    write_json(paths.reports / "distill_history.json", result.history)
    return step.finish(summary)


def _student_meta(cfg: RunConfig, data: LabelledData, extra: dict[str, Any]) -> dict[str, Any]:
    label_meta = data.label_map.to_meta() if data.label_map is not None else {}
    return {
        "student": to_dict(cfg.student),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        **label_meta,
        "input_size": cfg.data.image_size,
        "train_image_shape": list(data.image_shape),
        **extra,
    }


def _initial_student(ctx: StageContext, continue_from_last: bool) -> tuple[Any, str]:
    # the student fine-tuning starts from and what it is: "last" (run/student), "scratch"
    # (student.from_scratch) or "distilled" (run/distilled); TskdError when it is missing
    from tskd.inference import bundle
    from tskd.models.student import build_student

    cfg, paths = ctx.cfg, ctx.paths
    if continue_from_last:
        if not (paths.student / "meta.json").is_file():
            raise TskdError(f"no student in {paths.student} to continue from; train one first")
        return bundle.load_student(paths.student)[0], "last"
    if cfg.student.from_scratch:
        return build_student(cfg.student, ctx.data.num_classes, cfg.data.image_size), "scratch"
    if not (paths.distilled / "meta.json").is_file():
        raise TskdError(
            f"no distilled student in {paths.distilled}; run distill first or set "
            "student.from_scratch"
        )
    return bundle.load_student(paths.distilled)[0], "distilled"


@writes("student", lambda p: [p.student, p.checkpoints("student"),
                                p.reports / "student_history.json"])
def stage_finetune_student(
    run: RunConfig | StageContext,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    continue_from_last: bool = False,
) -> dict[str, Any]:
    """Stage 4, student: fine-tune the student on the labelled images.

    Writes ``run/student`` and ``reports/student_history.json``.

    Args:
        run: a ``RunConfig``, or the ``StageContext`` of a run in progress.
        progress: called with the engine's ``Progress`` after each step; None: no reports.
        cancel: checked before each step; None: the stage cannot be cancelled.
        resume: continue from the stage's checkpoint (``run/checkpoints/student``).
        continue_from_last: start from the last fine-tuned student (the annotate-train loop)
            and always train; otherwise the distilled student or, when
            ``student.from_scratch``, none is the start.

    Returns:
        ``init``, ``n_train``, ``n_val``, ``val`` (validation metrics) and ``seconds``; the
        recorded result with ``"skipped": True`` when already done.

    Raises:
        TskdError: the student to start from is not in the run folder.
    """
    from tskd.inference import bundle
    from tskd.training import finetune

    ctx = StageContext.of(run, progress, cancel, resume)
    cfg, paths, data = ctx.cfg, ctx.paths, ctx.data
    step = ctx.begin(paths.student, fingerprints.of(ctx, "student"), cfg.student.train.seed,
                     paths.checkpoints("student"), redo=continue_from_last)
    if step.done is not None:
        return step.done
    student, init = _initial_student(ctx, continue_from_last)
    result, metrics = finetune.finetune_student(
        student, data.train, data.val, ctx.section("student"), cfg.data.image_size,
        ctx.control(step),  # the checkpoint is kept until the artefact is written
    )
    summary = {"init": init, "n_train": len(data.train), "n_val": len(data.val), "val": metrics,
               "steps": result.steps, "stopped": result.stopped, "seconds": step.seconds()}
    bundle.save_student(student, paths.student, _student_meta(cfg, data, summary))
    write_json(paths.reports / "student_history.json", result.history)
    return step.finish(summary)


@writes("evaluate", lambda p: [p.reports / f"eval_{m}" for m in ("student", "teacher",
                                                                  "distilled")])
def stage_evaluate(
    cfg: RunConfig, model: str = "student", test_folder: str | Path | None = None
) -> dict[str, Any]:
    """Segment the held-out test set with one of the run's models and score it.

    Dice, IoU and HD95 per image and class (``tskd.inference.metrics``, with MONAI), written
    under ``reports/eval_<model>``.

    Args:
        cfg: The run configuration; ``predict`` and ``data`` settings are used.
        model: ``student``, ``teacher`` or ``distilled``.
        test_folder: A labelled folder; None takes ``data.test``.

    Returns:
        The report's summary (mean scores per class) and ``ms_per_image``, milliseconds of
        segmentation per image.

    Raises:
        TskdInputError: no test set is given, ``model`` is unknown, or a test file cannot be
            used.
        CheckpointError: the model folder is missing or its files are invalid.
    """
    from tskd.inference import metrics
    from tskd.inference.predict import evaluate_folder, segmenter_from_bundle

    paths = RunPaths(Path(cfg.run_dir))
    folder = test_folder or cfg.data.test
    if not folder:
        raise TskdInputError("no test set given (data.test / --test)")
    source = {"student": paths.student, "teacher": paths.teacher, "distilled": paths.distilled}
    if model not in source:
        raise TskdInputError(f"unknown model '{model}'; choose student, teacher or distilled")
    from tskd.data.label_map import LabelMap

    segmenter, meta = segmenter_from_bundle(
        source[model], device=cfg.device_of("predict"), tile_size=cfg.predict.tile_size,
        tile_overlap=cfg.predict.tile_overlap, batch_size=cfg.predict.batch_size,
        max_pixels=cfg.data.max_pixels,
    )
    label_map = LabelMap.from_meta(meta)
    if cfg.data.ignore_label is not None and label_map.ignore_label != cfg.data.ignore_label:
        label_map = LabelMap(label_map.values, label_map.names, label_map.declared,
                             cfg.data.ignore_label)
    report, ms = evaluate_folder(segmenter, folder, label_map)
    out = paths.reports / f"eval_{model}"
    metrics.write_report(report, out)
    return report.summary | {"ms_per_image": ms}
