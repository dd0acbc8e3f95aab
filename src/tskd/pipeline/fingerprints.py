"""Fingerprints: everything a stage's artefact depends on, as 16 hex digits.

A stage records its fingerprint in ``stage.json``; a later run skips the stage when the
fingerprint is the same and runs it again when an input changed. Each fingerprint covers the
stage's config section (without the device: moving to a GPU changes no result), the
fingerprints of the stages it builds on and content hashes of its input files, so changing the
student's budget re-runs only the student. The values are those of earlier versions: run
folders they wrote are still taken as done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tskd.config import SYNTH_EPOCH_STEPS, RunConfig, SynthConfig, to_dict
from tskd.config_compat import LEGACY_STUDENT, UNET_WIDTH_BEFORE_THE_KEY, flat_synth
from tskd.pipeline.batches import processes
from tskd.pipeline.context import StageContext, data_files
from tskd.pipeline.markers import files_fingerprint, fingerprint

__all__ = ["base_teacher_id", "of", "synth_fp", "synth_settings", "teacher_fp"]

# the sha256 (first 16 hex digits) of the first packaged mini SAM weights: "builtin" in the
# fingerprints of runs made with them, so those runs keep their fingerprints; other packaged
# weights are named by their content like any checkpoint
FIRST_BUILTIN_SHA = "d4daeaad8f390a84"


def _settings_fp(section: Any) -> dict[str, Any]:
    """A stage's config section with the training settings that change the result.

    The device is left out: moving to a GPU changes no result.
    """
    train = to_dict(section.train)
    train.pop("device", None)
    if train.get("patience") is None:  # runs of versions before early stopping keep their values
        train.pop("patience", None)
        train.pop("val_every", None)
    if train.get("max_seconds") is None:
        train.pop("max_seconds", None)
    # the global batch, however split: processes (WORLD_SIZE, set by torchrun / accelerate
    # launch: tskd.distributed) x batch_size x accumulation; one process without accumulation
    # keeps the fingerprints of earlier versions (read without importing torch)
    train["batch_size"] *= int(train.pop("grad_accum_steps", 1) or 1) * processes()
    settings = to_dict(section)
    settings.pop("gradient_checkpointing", None)  # the same result, with less memory
    return settings | {"train": train}


def _student_settings(student: dict[str, Any]) -> dict[str, Any]:
    """The student section without the keys of ``LEGACY_STUDENT`` when it is that student.

    Earlier versions had only that student and did not write the keys, so its runs keep their
    fingerprints; likewise ``unet_width`` at 32, the only U-Net width before the key existed,
    and at any value for the other students, which do not use it.
    """
    if (student.get("unet_width") == UNET_WIDTH_BEFORE_THE_KEY
            or student.get("architecture") != "unet"):
        student = {k: v for k, v in student.items() if k != "unet_width"}
    if all(student.get(k) == v for k, v in LEGACY_STUDENT.items()):
        return {k: v for k, v in student.items() if k not in (*LEGACY_STUDENT, "backbone")}
    return student


def teacher_fp(cfg: RunConfig, data_fp: str) -> str:
    """Fingerprint the teacher's artefact.

    Args:
        cfg: the run configuration; ``cfg.teacher`` (its ``train`` without the device) is
            hashed.
        data_fp: the labelled set's fingerprint (``LabelledData.fingerprint``).

    Returns:
        16 hex digits over the teacher's settings and ``data_fp``; for the packaged mini SAM
        also its weights' sha256 unless they are the first packaged ones, so a new version's
        weights adapt anew instead of reusing a teacher adapted from the old ones.
    """
    settings = _settings_fp(cfg.teacher)
    if not settings.get("refine_head", True):  # earlier versions had no head and no key
        settings.pop("refine_head")
    if cfg.teacher.checkpoint or cfg.teacher.model_type != "mini":
        return fingerprint("teacher", settings, data_fp)  # the checkpoint's path is a setting
    weights = _weights_id(cfg)  # the packaged weights, which a new version may replace
    if weights == "builtin":  # the first packaged weights: the fingerprint of earlier versions
        return fingerprint("teacher", settings, data_fp)
    return fingerprint("teacher", settings, data_fp, weights)


def _weights_id(cfg: RunConfig) -> str:
    """The un-adapted SAM's weights by content: "builtin" for the first packaged mini SAM.

    A checkpoint is named by its sha256 wherever it lies, so a moved copy is the same teacher
    and a file replaced at the same path another.
    """
    from tskd.models import sam_checkpoint

    if cfg.teacher.checkpoint:
        return sam_checkpoint.sha256_of(cfg.teacher.checkpoint)
    if cfg.teacher.model_type != "mini":
        return "builtin"  # refused when the teacher loads: official SAMs need a checkpoint
    from tskd.models.mini_sam import BUILTIN_WEIGHTS

    sha = sam_checkpoint.sha256_of(BUILTIN_WEIGHTS)
    return "builtin" if sha.startswith(FIRST_BUILTIN_SHA) else sha


def synth_settings(synth: SynthConfig) -> dict[str, Any]:
    """The transfer set's settings as its fingerprint reads them.

    Args:
        synth: The run's ``synth`` section.

    Returns:
        The section in the flat shape it had before ``synth.train``
        (``tskd.config_compat.flat_synth``; not the device; the global batch of this job's
        processes), so single-process runs of earlier versions keep their fingerprints.
    """
    return flat_synth(to_dict(synth), synth.train.total_steps(SYNTH_EPOCH_STEPS), processes())


def synth_fp(cfg: RunConfig, data_fp: str) -> str:
    """Fingerprint the transfer set (stage 2).

    Args:
        cfg: the run configuration; ``cfg.synth`` (as ``synth_settings`` reads it, without the
            device), the files of ``cfg.data.unlabelled`` and ``cfg.data.image_size`` are hashed.
        data_fp: the labelled set's fingerprint (``LabelledData.fingerprint``).

    Returns:
        16 hex digits over the transfer set's settings, ``data_fp``, the unlabelled files'
        names and contents (as their reader reads them) and the student's input size.

    Raises:
        TskdInputError: ``data.unlabelled`` names a missing or malformed folder.
    """
    unl = files_fingerprint(data_files(cfg.data.unlabelled, "unlabelled"))
    return fingerprint("synth", synth_settings(cfg.synth), data_fp, unl, cfg.data.image_size)


def base_teacher_id(cfg: RunConfig) -> str:
    """Identify the un-adapted SAM (16 hex digits).

    The id is the teacher-cache key and the base teacher's part of the distillation
    fingerprint. It is made from the model type, the checkpoint's content (sha256, so a moved
    copy is the same teacher and a replaced file another; "builtin" for the first packaged
    mini SAM, ``FIRST_BUILTIN_SHA``) and the input size. ``sam_checkpoint.sha256_of`` keeps
    the digest per (path, size, mtime) within the process, so a checkpoint of gigabytes is
    read once.

    Args:
        cfg: the run configuration; ``teacher.model_type``, ``teacher.checkpoint`` and
            ``teacher.input_size`` (pixels) are read.

    Returns:
        16 hex digits.

    Raises:
        CheckpointError: ``teacher.checkpoint`` names no file.
    """
    return fingerprint("base", cfg.teacher.model_type, _weights_id(cfg), cfg.teacher.input_size)


def of(ctx: StageContext, stage: str) -> str:
    """Return the fingerprint of ``stage``'s artefact in the run of ``ctx``.

    Computed once per context (``StageContext.memo``): later stages build on earlier
    stages' fingerprints, and some hash files (the unlabelled set, a SAM checkpoint of
    gigabytes). Distillation's covers its settings, the student's architecture, the teacher's
    fingerprint (the base SAM's when task-agnostic), the transfer set's and the input size;
    the student's its settings, the distilled student's fingerprint ("scratch" when trained
    from scratch), the labelled set's and the input size.

    Args:
        ctx: the run; its labelled set is read on first use.
        stage: a ``Stage.name`` (teacher, synthesize, distill, student), or "base" for the
            un-adapted SAM's id (``base_teacher_id``).

    Returns:
        16 hex digits.

    Raises:
        KeyError: ``stage`` is none of these.
        CheckpointError: ``teacher.checkpoint`` names no file ("base", and distill when
            task-agnostic).
        TskdInputError: the labelled or unlabelled set cannot be read.
    """
    cfg = ctx.cfg

    def distill() -> str:
        student_arch = _student_settings(to_dict(cfg.student))
        student_arch.pop("train")
        teacher = of(ctx, "base" if cfg.distill.task_agnostic else "teacher")
        return fingerprint("distill", _settings_fp(cfg.distill), student_arch, teacher,
                           of(ctx, "synthesize"), cfg.data.image_size)

    def student() -> str:
        init = "scratch" if cfg.student.from_scratch else of(ctx, "distill")
        return fingerprint("student", _student_settings(_settings_fp(cfg.student)), init,
                           ctx.data.fingerprint,
                           cfg.data.image_size)

    compute: dict[str, Callable[[], str]] = {
        "teacher": lambda: teacher_fp(cfg, ctx.data.fingerprint),
        "synthesize": lambda: synth_fp(cfg, ctx.data.fingerprint),
        "base": lambda: base_teacher_id(cfg),
        "distill": distill,
        "student": student,
    }
    return ctx.memo(f"fingerprint:{stage}", compute[stage])
