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
from tskd.config_compat import flat_synth
from tskd.pipeline.context import StageContext, data_files
from tskd.pipeline.run_folder import files_fingerprint, fingerprint

__all__ = ["base_teacher_id", "of", "synth_fp", "synth_settings", "teacher_fp"]


def _settings_fp(section: Any) -> dict[str, Any]:
    """A stage's config section with the training settings that change the result (not the
    device)."""
    train = to_dict(section.train)
    train.pop("device", None)
    return to_dict(section) | {"train": train}


def teacher_fp(cfg: RunConfig, data_fp: str) -> str:
    """The teacher's: its settings and the labelled set's fingerprint ``data_fp``."""
    return fingerprint("teacher", _settings_fp(cfg.teacher), data_fp)


def synth_settings(synth: SynthConfig) -> dict[str, Any]:
    """The transfer set's settings as its fingerprint reads them: the section in the flat shape
    it had before ``synth.train`` (``tskd.config_compat.flat_synth``; not the device), so runs
    of earlier versions keep their fingerprints."""
    return flat_synth(to_dict(synth), synth.train.total_steps(SYNTH_EPOCH_STEPS))


def synth_fp(cfg: RunConfig, data_fp: str) -> str:
    """The transfer set's: its settings (``synth_settings``), the labelled set's fingerprint
    ``data_fp``, the unlabelled files (as their reader reads them) and the student's input
    size."""
    unl = files_fingerprint(data_files(cfg.data.unlabelled, "unlabelled"))
    return fingerprint("synth", synth_settings(cfg.synth), data_fp, unl, cfg.data.image_size)


def base_teacher_id(cfg: RunConfig) -> str:
    """The identity of the un-adapted SAM: its teacher-cache key and its part of the
    distillation fingerprint (16 hex digits).

    From the model type, the checkpoint's content (sha256; "builtin" for the packaged mini
    SAM, so a moved copy is the same teacher and a replaced file another) and the input size.

    Raises:
        CheckpointError: ``teacher.checkpoint`` names no file.
    """
    from tskd.models import sam_checkpoint

    ckpt = cfg.teacher.checkpoint
    ckpt_id = sam_checkpoint.sha256_of(ckpt) if ckpt else "builtin"
    return fingerprint("base", cfg.teacher.model_type, ckpt_id, cfg.teacher.input_size)


def of(ctx: StageContext, stage: str) -> str:
    """The fingerprint of ``stage``'s artefact in the run of ``ctx``, computed once per context:
    later stages build on earlier stages' fingerprints, and some hash files (the unlabelled
    set, a SAM checkpoint of gigabytes).

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
    """
    cfg = ctx.cfg

    def distill() -> str:
        student_arch = to_dict(cfg.student)
        student_arch.pop("train")
        teacher = of(ctx, "base" if cfg.distill.task_agnostic else "teacher")
        return fingerprint("distill", _settings_fp(cfg.distill), student_arch, teacher,
                           of(ctx, "synthesize"), cfg.data.image_size)

    def student() -> str:
        init = "scratch" if cfg.student.from_scratch else of(ctx, "distill")
        return fingerprint("student", _settings_fp(cfg.student), init, ctx.data.fingerprint,
                           cfg.data.image_size)

    compute: dict[str, Callable[[], str]] = {
        "teacher": lambda: teacher_fp(cfg, ctx.data.fingerprint),
        "synthesize": lambda: synth_fp(cfg, ctx.data.fingerprint),
        "base": lambda: base_teacher_id(cfg),
        "distill": distill,
        "student": student,
    }
    return ctx.memo(f"fingerprint:{stage}", compute[stage])
