"""The stage registry: every TS-KD stage once, with each name it goes by, and ``run_pipeline``.

One row per stage names its function, the ``tskd`` subcommand, the title the widgets and
docs show, the run-folder folder its artefact goes to and its checkpoint folder. The CLI
(``tskd.apps.cli``: subcommands and dispatch), the widgets' training process
(``napari_tskd._child``: job steps name stages by ``Stage.name``), the widgets (tab titles,
job labels) and docs/architecture.md ("Stages") all read this table; nothing else spells a
stage's identity. ``run_pipeline`` runs the rows in order.

| name | CLI | title | artefact | checkpoints |
|---|---|---|---|---|
| teacher | finetune-teacher (or teacher) | Teacher | teacher/ | checkpoints/teacher/ |
| synthesize | synthesize | Transfer set | transfer/ | checkpoints/synthesize/ |
| distill | distill | Distillation | distilled/ | checkpoints/distill/ |
| student | finetune-student (or student) | Student | student/ | checkpoints/student/ |

Importing this module does not import torch (the widgets read the titles in napari's
process); the stage functions import what they train with when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tskd.atomic import write_json
from tskd.config import RunConfig
from tskd.errors import TskdInputError
from tskd.pipeline.context import StageContext, StageFunction, writes
from tskd.pipeline.run_folder import RunPaths, prepare_run_dir
from tskd.pipeline.stages import (
    stage_distill,
    stage_evaluate,
    stage_finetune_student,
    stage_synthesize,
    stage_teacher,
)

if TYPE_CHECKING:
    from tskd.engine import CancelToken, ProgressCallback

__all__ = ["STAGES", "Stage", "by_cli_name", "run_pipeline", "stage", "stages_for"]


@dataclass(frozen=True)
class Stage:
    """One stage of TS-KD and every name it goes by.

    Attributes:
        name: the stage's name in code, job steps, the run folder's manifest, ``pipeline.json``
            and ``stage.json`` results.
        function: ``function(run, progress=None, cancel=None, resume=False, **options)``
            (``tskd.pipeline.stages``); ``run`` is a ``RunConfig`` or a ``StageContext``.
        cli_name: the ``tskd`` subcommand (kept as users' scripts know it).
        title: what the widgets and docs call the stage.
        summary: one line for ``tskd --help``.
        artefact: the folder, relative to the run folder, that holds the stage's result.
        checkpoint: the name of its folder under ``checkpoints/`` (resumable state).
        section: the config section of the stage's settings (``RunConfig`` attribute).
        options: keyword options of ``function`` beyond the common ones, set from the CLI
            arguments of the same name.
    """

    name: str
    function: StageFunction
    cli_name: str
    title: str
    summary: str
    artefact: str
    checkpoint: str
    section: str
    options: tuple[str, ...] = ()

    @property
    def cli_aliases(self) -> tuple[str, ...]:
        """Further ``tskd`` subcommands of the stage: its ``name`` when the CLI name differs."""
        return () if self.name == self.cli_name else (self.name,)

    def artefact_dir(self, run_dir: str | Path) -> Path:
        """Return the stage's artefact folder in a run folder.

        Args:
            run_dir: the run folder.

        Returns:
            ``run_dir / artefact`` (e.g. ``run/teacher``).
        """
        return Path(run_dir) / self.artefact

    def checkpoint_dir(self, run_dir: str | Path) -> Path:
        """Return the stage's checkpoint folder in a run folder.

        Args:
            run_dir: the run folder.

        Returns:
            ``run_dir/checkpoints/<checkpoint>`` (``RunPaths.checkpoints``).
        """
        return RunPaths(Path(run_dir)).checkpoints(self.checkpoint)


STAGES: tuple[Stage, ...] = (
    Stage("teacher", stage_teacher, "finetune-teacher", "Teacher",
          "adapt SAM to the task with LoRA", "teacher", "teacher", "teacher"),
    Stage("synthesize", stage_synthesize, "synthesize", "Transfer set",
          "synthesise transfer images with a DDPM", "transfer", "synthesize", "synth"),
    Stage("distill", stage_distill, "distill", "Distillation",
          "distil the teacher into the student", "distilled", "distill", "distill"),
    Stage("student", stage_finetune_student, "finetune-student", "Student",
          "fine-tune the student on the labels", "student", "student", "student",
          options=("continue_from_last",)),
)


def stage(name: str) -> Stage:
    """Look up a stage by its name in code.

    Args:
        name: a ``Stage.name`` (teacher, synthesize, distill, student).

    Returns:
        The stage's row of ``STAGES``.

    Raises:
        TskdInputError: no stage has that name (the message lists the names).
    """
    for s in STAGES:
        if s.name == name:
            return s
    raise TskdInputError(
        f"unknown stage '{name}'; choose one of {', '.join(s.name for s in STAGES)}")


def by_cli_name(command: str) -> Stage | None:
    """Look up the stage a ``tskd`` subcommand runs.

    Args:
        command: a subcommand, its CLI name or alias (e.g. ``finetune-teacher`` or
            ``teacher``).

    Returns:
        The stage, or None for a subcommand that runs no single stage (``run``,
        ``predict``, ...).
    """
    for s in STAGES:
        if command == s.cli_name or command in s.cli_aliases:
            return s
    return None


def stages_for(cfg: RunConfig) -> list[Stage]:
    """List the stages a whole run of ``cfg`` needs, in order.

    Task-agnostic distillation needs no teacher stage (the student learns from the
    un-adapted SAM, the baseline of the TS-KD paper, Fig. 1); a student from scratch needs
    the student stage only.

    Args:
        cfg: the run configuration; ``student.from_scratch`` and ``distill.task_agnostic``
            are read.

    Returns:
        Rows of ``STAGES``, in the order they run.
    """
    if cfg.student.from_scratch:
        return [stage("student")]
    if cfg.distill.task_agnostic:
        return [s for s in STAGES if s.name != "teacher"]
    return list(STAGES)


@writes("pipeline", lambda p: [p.reports / "pipeline.json"])
def run_pipeline(
    cfg: RunConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run every stage the config asks for, then the evaluation; write ``reports/pipeline.json``.

    The stages of ``stages_for`` run in order, skipping those already done with the same
    fingerprint, then the evaluation on ``data.test`` when given. One ``StageContext``
    serves every stage, so the labelled set is read and hashed once. Holds the run folder's
    lock throughout (a second writer gets ``RunFolderError`` naming this process).

    Args:
        cfg: the run configuration.
        progress: called with ``tskd.engine.Progress`` reports; None reports nothing.
        cancel: checked every training step; a cancelled stage raises ``Cancelled``.
        resume: continue training stages from their checkpoints.
        overwrite: replace a different run in ``cfg.run_dir``, removing only the files it
            wrote (``prepare_run_dir``).

    Returns:
        {stage name: its result} (and ``"evaluate"``: the test set's summary).

    Raises:
        RunFolderError: the run folder holds another run (without ``overwrite``), files that
            are not a run's, lies inside a data folder, or is held by another process.
        TskdInputError: the data cannot be used (the readers name the file).
        CheckpointError: the SAM checkpoint is missing or not a SAM file.
        Cancelled: ``cancel`` was set; the stage's checkpoint is kept for ``resume``.
        DiskFullError: the disk holding the run folder is full.
    """
    prepare_run_dir(cfg, overwrite=overwrite)
    ctx = StageContext(cfg, progress, cancel, resume)
    results: dict[str, Any] = {}
    for s in stages_for(cfg):
        results[s.name] = s.function(ctx)
    if cfg.data.test:
        results["evaluate"] = stage_evaluate(cfg)
    write_json(ctx.paths.reports / "pipeline.json", results)
    return results
