"""When a training stage stops: at a plateau of a validation score, or at a time budget.

Two engine callbacks (``tskd.callbacks.Callback``) that end a run early through
``TrainState.stop``:

- ``EarlyStopping`` scores the model on validation images every few epochs, keeps the best
  weights seen, stops once the score has not improved for ``patience`` evaluations and puts the
  best weights back at the end (its trainable parameters and buffers): the classic rule
  (Prechelt 1998, "Early stopping - but when?"; nnU-Net keeps its best validation checkpoint
  the same way). Its state (best weights, score, epoch) is saved in the engine's checkpoint, so
  a resumed run stops where an unbroken one would.
- ``TimeLimit`` stops after a wall-clock budget, so methods can be compared at equal cost.

Validation images come from the labelled set (``DataConfig.val_fraction``), never from a test
set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from tskd.callbacks import Callback, TrainState
from tskd.checkpoint import CheckpointExtra, rng_state, set_rng_state
from tskd.config import TrainConfig

PREFIX = "early_stopping."  # names of this callback's tensors in the checkpoint


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of what training changes: trainable parameters and every buffer.

    Frozen weights (a SAM encoder under LoRA) are left out: they are the same at every epoch.
    """
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k in trained or k in buffers}


class EarlyStopping(Callback):
    """Stop when a validation score stops improving; end with the best weights.

    Args:
        score: Maps the model (as the engine runs it) to a float, higher is better (e.g. the
            mean foreground Dice on validation images, ``tskd.inference.dice``). It must leave
            the model's train/eval mode as it found it; the global random streams are saved
            before and restored after it, so scoring changes no training draw.
        patience: Evaluations without a gain of more than ``min_delta`` before stopping.
        every: Evaluate at the end of every ``every``-th epoch, of the last one and of the
            one in which another callback (a time budget) stopped the run.
        min_delta: The smallest gain that counts as an improvement (score units).
        min_epochs: Never stop before this many epochs have run.

    Attributes:
        best: The best score so far (``-inf`` before the first evaluation).
        best_epoch: The 0-based epoch at whose end it was reached (-1 before).
        scores: ``(epoch, score)`` of every evaluation, in order.
    """

    def __init__(self, score: Callable[[nn.Module], float], patience: int = 5, every: int = 1,
                 min_delta: float = 1e-3, min_epochs: int = 0) -> None:
        if patience < 1 or every < 1:
            raise ValueError(f"patience and every must be >= 1, got {patience} and {every}")
        self.score, self.patience, self.every = score, patience, every
        self.min_delta, self.min_epochs = min_delta, min_epochs
        self.best = float("-inf")
        self.best_epoch = -1
        self.scores: list[tuple[int, float]] = []
        self._weights: dict[str, torch.Tensor] | None = None

    def _evaluate(self, model: nn.Module) -> float:
        saved = rng_state()
        try:
            with torch.no_grad():
                return float(self.score(model))
        finally:
            set_rng_state(saved)

    def on_epoch_end(self, state: TrainState) -> None:
        """Score the model (every ``every`` epochs, the last, a stopped one); keep the best; stop?

        The score is added to the epoch's history entry as ``"val_score"``.

        Args:
            state: The run at the end of an epoch.
        """
        epoch = state.epoch
        # a run another callback stops (a time budget) is scored at its end too
        if (epoch + 1) % self.every and not state.last_epoch and not state.stop:
            return
        value = self._evaluate(state.model)
        self.scores.append((epoch, value))
        if state.history:
            state.history[-1]["val_score"] = value
        if value > self.best + self.min_delta or self._weights is None:
            self.best, self.best_epoch = max(value, self.best), epoch
            self._weights = _trained_state(state.model)
            return
        waited = sum(1 for e, _ in self.scores if e > self.best_epoch)
        if waited >= self.patience and epoch + 1 >= self.min_epochs:
            state.stop = (f"validation score {self.best:.3f} (epoch {self.best_epoch + 1}) not "
                          f"improved in {waited} evaluations")

    def on_train_end(self, state: TrainState) -> None:
        """Load the best weights seen into the model.

        Args:
            state: The finished run.
        """
        if self._weights is not None:
            state.model.load_state_dict(self._weights, strict=False)

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra | None:
        """The best weights, the best score and epoch, and every evaluation so far.

        Args:
            state: The run as it stands.

        Returns:
            ``(tensors, meta)``: the best weights under ``PREFIX``; "best", "best_epoch" and
            "scores" as strings. None before the first evaluation.
        """
        if self._weights is None:
            return None
        tensors = {PREFIX + k: v.contiguous() for k, v in self._weights.items()}
        meta = {PREFIX + "best": repr(self.best), PREFIX + "best_epoch": str(self.best_epoch),
                PREFIX + "scores": ";".join(f"{e}:{v!r}" for e, v in self.scores)}
        return tensors, meta

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        """Restore what ``on_checkpoint`` saved.

        Args:
            state: The run as the checkpoint left it.
            extra: Every callback's saved state, or None.
        """
        tensors, meta = extra if extra is not None else ({}, {})
        if PREFIX + "best" not in meta:
            return
        self.best = float(meta[PREFIX + "best"])
        self.best_epoch = int(meta[PREFIX + "best_epoch"])
        pairs = [p.split(":") for p in meta[PREFIX + "scores"].split(";") if p]
        self.scores = [(int(e), float(v)) for e, v in pairs]
        self._weights = {k.removeprefix(PREFIX): v for k, v in tensors.items()
                         if k.startswith(PREFIX)}


def early_stopping(train: TrainConfig, validation: bool,
                   score: Callable[[nn.Module], float]) -> list[EarlyStopping]:
    """The one rule for when a stage stops early: validation images and ``train.patience``.

    Args:
        train: The stage's training settings (``patience``, ``val_every``).
        validation: Whether the stage has validation images (and a score to compute on them).
        score: As ``EarlyStopping``'s.

    Returns:
        ``[EarlyStopping(...)]``, or ``[]`` when either is missing.
    """
    if not (validation and train.patience):
        return []
    return [EarlyStopping(score, patience=train.patience, every=train.val_every)]


class TimeLimit(Callback):
    """Stop after ``seconds`` of wall-clock training (this run's, measured from its start).

    Args:
        seconds: The budget in seconds; the step that crosses it is the last.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._t0 = 0.0

    def on_train_begin(self, state: TrainState) -> None:
        """Start the clock.

        Args:
            state: The run about to start.
        """
        self._t0 = time.perf_counter()

    def on_step_end(self, state: TrainState) -> None:
        """Stop the run once the budget is spent.

        Args:
            state: The run after a step.
        """
        if time.perf_counter() - self._t0 >= self.seconds and not state.stop:
            state.stop = f"time budget of {self.seconds:.0f} s reached"
