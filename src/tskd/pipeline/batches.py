"""The global batch of each stage a checkpoint builds on, recorded so a refused resume names it.

A stage's fingerprint covers its global batch (``batch_size x grad_accum_steps x processes``)
and the fingerprints of the stages it builds on, so a resume on another number of processes
continues only when every one of those stages keeps its global batch. ``stage_batches`` lists
them for a stage's checkpoint (``inputs.json``); ``batch_difference`` says which one changed.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["batch_difference", "processes", "stage_batches"]

# the config sections whose training a stage's artefact depends on (through the fingerprints)
_SECTIONS = {"teacher": ("teacher",), "synthesize": ("synth",),
             "distill": ("distill", "synth", "teacher"),
             "student": ("student", "distill", "synth", "teacher")}


def processes() -> int:
    """The processes of the job: ``WORLD_SIZE`` (set by torchrun / accelerate launch), else 1.

    Read from the environment, without importing torch (``tskd.distributed.world_size``).

    Returns:
        At least 1.
    """
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def stage_batches(cfg: Any, stage: str) -> dict[str, list[int]]:
    """How the global batch of ``stage`` and of each stage it builds on is split in this job.

    Args:
        cfg: the run configuration (``tskd.config.RunConfig``).
        stage: a checkpoint folder's name: teacher, synthesize, distill or student.

    Returns:
        ``{"<section>.train.batch_size": [batch_size, grad_accum_steps, processes]}`` for
        each section the stage depends on (the teacher's not when distillation is
        task-agnostic, the distilled chain's not for a student trained from scratch); {} for
        another name.
    """
    sections = list(_SECTIONS.get(stage, ()))
    if stage == "student" and cfg.student.from_scratch:
        sections = ["student"]
    if "teacher" in sections and stage != "teacher" and cfg.distill.task_agnostic:
        sections.remove("teacher")
    out = {}
    for name in sections:
        train = getattr(cfg, name).train
        out[f"{name}.train.batch_size"] = [int(train.batch_size), int(train.grad_accum_steps),
                                           processes()]
    return out


def _split(split: list[int]) -> str:
    batch, accum, procs = split
    text = f"{batch * accum * procs} ({batch} x {procs} process{'es' if procs > 1 else ''}"
    return text + (f" x {accum} accumulation steps)" if accum > 1 else ")")


def batch_difference(then: Any, now: dict[str, list[int]]) -> str | None:
    """Name the first stage whose global batch differs between a checkpoint and this run.

    Args:
        then: the ``stage_batches`` recorded with the checkpoint (None or malformed for a
            checkpoint of an earlier version).
        now: this run's ``stage_batches``.

    Returns:
        E.g. "teacher.train.batch_size: the run was made with a global batch of 2 (1 x 2
        processes), this one gives 1 (1 x 1 process)"; None when every global batch is the
        same or ``then`` cannot be read.
    """
    if not isinstance(then, dict):
        return None
    for key, split in now.items():
        old = then.get(key)
        if not (isinstance(old, list) and len(old) == 3 and all(isinstance(v, int) for v in old)):
            continue
        if old[0] * old[1] * old[2] != split[0] * split[1] * split[2]:
            return (f"{key}: the run was made with a global batch of {_split(old)}, this one "
                    f"gives {_split(split)}")
    return None
