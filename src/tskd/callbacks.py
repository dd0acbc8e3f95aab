"""What the training loop calls out to: progress reports, the cancel flag and callbacks.

``tskd.engine.train`` runs the loop; what a caller or one stage needs beside it comes in
through this module's types. A ``ProgressCallback`` receives a picklable ``Progress`` after
every optimiser step (the CLI's bar, the plugin's progress bar and loss plot); a
``CancelToken`` is checked before every step; a ``RunControl`` carries both, with the
checkpoint folder and the resume flag, from a caller through a stage to the engine; a
``Callback`` has hooks at train begin, step end, epoch end, checkpoint, resume and train end,
each given the run's ``TrainState``. The
segmentation preview (``tskd.training.preview``) and the diffusion model's EMA
(``tskd.training.diffusion``) are callbacks; a callback's ``on_checkpoint`` state is saved in
the checkpoint unit (``tskd.checkpoint``) and handed back by ``on_resume``. ``tskd.engine``
re-exports every public name here, so a stage imports the engine's API from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from tskd.checkpoint import CheckpointExtra


@dataclass
class Progress:
    """One report from the engine: enough for a progress bar, a loss plot and an ETA.

    Picklable (it crosses from the training process to the plugin). Attributes:
    ``stage`` (the task's name), ``step`` (optimiser steps done, counting resumed ones),
    ``total`` (steps planned), ``epoch`` (0-based), ``epochs`` (planned), ``loss`` (the step's
    minimised loss), ``eta_s`` (seconds left, from this run's mean step time; 0 at the end),
    ``logs`` (every loss component of the step), ``message`` (free text of stages that report
    outside the engine) and ``preview`` (sent by ``tskd.training.preview.SegmentationPreview``).
    """

    stage: str
    step: int  # optimiser steps done (1-based after the first)
    total: int  # optimiser steps planned
    epoch: int  # 0-based epoch in progress
    epochs: int
    loss: float
    eta_s: float | None
    logs: dict[str, float] = field(default_factory=dict)
    message: str = ""
    # {"image": (S, S, 3) uint8, "labels": (S, S) uint8}: the model's current prediction on the
    # first training image (tskd.training.preview: at most every 5 s and after the last epoch)
    preview: dict[str, Any] | None = None


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """A flag a GUI or signal handler sets to stop training at the next step.

    Args:
        flag: any object with ``is_set()`` and ``set()`` (``threading.Event``, or
            ``multiprocessing.Event`` to cancel from another process); default a new
            ``threading.Event``.
    """

    def __init__(self, flag: Any | None = None) -> None:
        # any object with is_set()/set() works: threading.Event, multiprocessing.Event
        import threading

        self._flag = flag if flag is not None else threading.Event()

    def cancel(self) -> None:
        """Ask training to stop before its next step (it writes a checkpoint first)."""
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called (here or through the shared flag)."""
        return bool(self._flag.is_set())


@dataclass
class TrainState:
    """Where a training run stands; the engine updates it and hands it to every callback.

    Attributes:
        stage: the task's name (``TrainingTask.name``), as in ``Progress.stage``.
        model: the model as the engine runs it (prepared by ``accelerate``; on one device the
            task's own module), on ``device``.
        dataset: the task's training set (``TrainingTask.dataset()``), read once per run.
        device: where the model and batches live.
        total: optimiser steps planned (``cfg.epochs`` x batches per epoch, capped by
            ``cfg.max_steps``).
        epochs: epochs planned, the last possibly cut short by ``cfg.max_steps``.
        step: optimiser steps done, resumed runs included.
        epoch: 0-based epoch in progress (at ``on_epoch_end``: the epoch that ended).
        steps_in_epoch: optimiser steps this run took in the current epoch.
        logs: the last step's losses (``"loss"`` and the task's components), floats.
        history: one entry per finished epoch: the mean of each logged loss, and ``"epoch"``.
        stop: set by a callback to end training early (the reason, e.g. "no validation gain
            in 5 epochs"); the engine finishes after the step (``on_step_end``) or the epoch
            (``on_epoch_end``) in which it was set, and a resumed run stays stopped.
    """

    stage: str
    model: nn.Module
    dataset: Dataset
    device: torch.device
    total: int
    epochs: int
    step: int = 0
    epoch: int = 0
    steps_in_epoch: int = 0
    logs: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stop: str | None = None

    @property
    def last_epoch(self) -> bool:
        """Whether the epoch in progress is the run's last (planned, or reaching ``total``)."""
        return self.step >= self.total or self.epoch == self.epochs - 1


class Callback:
    """Hooks into ``train``; each does nothing unless a subclass overrides it.

    A callback serves one stage's needs beside the generic loop (a live preview, a weight
    average). It must not draw from the global random streams, or a run with it would train
    otherwise than one without; ``train`` calls the hooks of its ``callbacks`` in their order.
    """

    def on_train_begin(self, state: TrainState) -> None:
        """After the model is prepared and a checkpoint resumed, before the first step.

        Args:
            state: the run as it stands.
        """

    def on_step_end(self, state: TrainState) -> None:
        """After each optimiser step (``state.step`` counts it), before its progress report.

        Args:
            state: the run as it stands.
        """

    def on_epoch_end(self, state: TrainState) -> None:
        """After an epoch's history entry is written, before its checkpoint.

        The checkpoint then holds what the callback decided (its ``on_checkpoint`` state, and
        ``state.stop``), so a resumed run goes on as an unbroken one would.

        Also after a resumed, partly skipped epoch (``state.steps_in_epoch`` counts this run's
        steps only).

        Args:
            state: the run as it stands.
        """

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra | None:
        """State to keep in the checkpoint being written (every epoch end, and on cancel).

        Args:
            state: the run as it stands.

        Returns:
            Tensors and string metadata, saved in the checkpoint's ``extra.safetensors`` and
            verified with it; names must differ from other callbacks'. None keeps nothing.
        """
        return None

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        """After a checkpoint is loaded (``state.step`` and ``state.history`` restored).

        Args:
            state: the run, as the checkpoint left it.
            extra: every callback's ``on_checkpoint`` state merged, or None when the
                checkpoint holds none.
        """

    def on_train_end(self, state: TrainState) -> None:
        """When training has finished (not on cancel or error); the model is in eval mode.

        Args:
            state: the run as it stands.
        """


def checkpoint_extra(callbacks: Sequence[Callback], state: TrainState) -> CheckpointExtra | None:
    """Every callback's ``on_checkpoint`` state, merged into one for the checkpoint.

    Args:
        callbacks: the run's callbacks, in order.
        state: the run as it stands when the checkpoint is written.

    Returns:
        The tensors and the string metadata of all callbacks together; None when no callback
        keeps any state.

    Raises:
        ValueError: two callbacks keep state under one name.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    kept = False
    for callback in callbacks:
        extra = callback.on_checkpoint(state)
        if extra is None:
            continue
        kept = True
        clash = (set(extra[0]) & set(tensors)) | (set(extra[1]) & set(meta))
        if clash:
            raise ValueError(f"two callbacks keep checkpoint state under {sorted(clash)}")
        tensors |= extra[0]
        meta |= extra[1]
    return (tensors, meta) if kept else None


@dataclass(frozen=True)
class RunControl:
    """How a caller steers one training run: reports, cancelling, checkpoints and resume.

    Every training function (``tskd.training``: ``finetune_teacher``, ``synthesize`` and
    ``train_ddpm``, ``distill``, ``finetune_student``, ``pretrain_mini``) takes one and hands
    it on to ``tskd.engine.train``; None there means ``RunControl()``: no reports, no cancel,
    no checkpoint, a fresh start.

    Attributes:
        progress: called with a ``Progress`` after every optimiser step (and with a stage's
            own reports, e.g. while distillation caches teacher outputs); None sends none.
        cancel: checked before every step; None: the run cannot be cancelled.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` that verifies (one
            that does not is discarded with a ``TskdWarning``); without one, start afresh.
        checkpoint_dir: folder of the checkpoint written at every epoch end and on cancel
            (a ``str`` becomes a ``Path``); None writes none.
        keep_checkpoint: leave the checkpoint when training ends; the caller removes it
            (``tskd.checkpoint.clear_checkpoint``) once its artefact is written, so a full disk
            at that write loses no training (a resume then finds the finished state and runs
            no step). False (default): the engine removes it when training ends.
    """

    progress: ProgressCallback | None = None
    cancel: CancelToken | None = None
    resume: bool = False
    checkpoint_dir: Path | None = None
    keep_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, Path):
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))


class TrainingTask(Protocol):
    """What a stage hands to the engine: a name, the model and its data and loss.

    A task may also have ``lr_scales() -> dict[int, float]``: a factor on ``TrainConfig.lr``
    per parameter (keyed by ``id(parameter)``; others 1), e.g. a lower rate for a distilled
    encoder than for its decoder.
    """

    name: str  # the stage's name in progress reports and messages
    model: nn.Module  # owns every trainable parameter (requires_grad=True)

    def dataset(self) -> Dataset:
        """The training set, built once per run; items are collated into the step's batches.

        Returns:
            A map-style ``torch.utils.data.Dataset``; the engine shuffles it with a
            generator seeded from the seed and the epoch.
        """
        ...

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Forward one batch (already on the model's device); return scalar losses.

        Args:
            model: the task's model as the engine runs it (prepared by ``accelerate``).
            batch: the collated items of ``dataset()``, on the model's device.

        Returns:
            Scalar tensors: the one to minimise under ``"loss"``; the others are logged.
        """
        ...


@dataclass
class TrainResult:
    """What came out of a training run."""

    history: list[dict[str, float]]  # one entry per finished epoch: mean of each logged loss
    steps: int  # optimiser steps done, resumed ones included
    seconds: float  # wall time of this call from the first step on (not of resumed runs)
    resumed_from_epoch: int | None = None  # the epoch a checkpoint resumed at, or None
    stopped: str | None = None  # why it ended before its epochs (``TrainState.stop``), or None
