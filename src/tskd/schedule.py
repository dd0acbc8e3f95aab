"""The learning-rate schedule of every stage, and fitting it to a wall-clock budget.

``CosineSchedule`` is the engine's warm-up + cosine factor on the peak learning rate. A stage
with a time budget (``TrainConfig.max_seconds``) is stopped by ``tskd.stopping.TimeLimit`` at
whatever step the clock says; with a schedule planned over ``epochs`` that step can fall early
in the cosine, where the learning rate is still near its peak, and the run ends without the
low-rate steps that settle its weights. ``FitScheduleToTime`` (``TrainConfig.fit_to_time``)
measures the seconds a step takes once the warm-up is over and, when the planned steps would
not fit in what is left of the budget, ends the cosine (and the run) at the step that does,
so a capped run anneals as an uncapped one does. The planned step count is decided once, on
the main process, and the same on every rank.
"""

from __future__ import annotations

import math
import time

from tskd import distributed as dist
from tskd.callbacks import Callback, TrainState
from tskd.checkpoint import CheckpointExtra

# the share of the remaining budget planned for steps: the rest covers validation, checkpoints
# and the step-time noise (steps vary by ~10 % on a shared CPU; measured in the teacher's runs)
BUDGET_SHARE = 0.9
MIN_PROBE_STEPS = 5  # steps timed before the fit (the first one, with allocations, left out)
_KEY = "fit_to_time.total"  # the fitted step count in the engine's checkpoint


class CosineSchedule:
    """Linear warm-up to the peak rate, then a half cosine to 0 at step ``total``.

    A callable object rather than a function, so that ``LambdaLR.state_dict`` stores its
    ``total`` and ``warmup`` in the checkpoint (torch saves the ``__dict__`` of callable
    objects) and a resumed run continues a fitted schedule.

    Args:
        total: optimiser steps of the whole schedule (>= 0).
        warmup: steps of linear warm-up at its start (0: none).
    """

    def __init__(self, total: int, warmup: int) -> None:
        self.total = total
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        """The factor on the peak learning rate for 0-based ``step``, in [0, 1]."""
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class FitScheduleToTime(Callback):
    """End the cosine schedule, and the run, at the last step that fits a time budget.

    At the first step after ``max(MIN_PROBE_STEPS, warmup)`` (the same step on every rank) the
    main process divides the seconds since the end of this run's first step by the steps
    taken since; ``BUDGET_SHARE`` of what is left of ``seconds`` at that rate gives the steps
    still planned. If fewer than the run's ``state.total`` remain, ``schedule.total`` and
    ``state.total`` become that step, so the learning rate reaches 0 there and the engine ends
    the run (its last epoch: a validation score is taken). Runs whose steps fit are unchanged,
    bit for bit. ``tskd.stopping.TimeLimit`` still stops a run whose later steps run slower.

    Args:
        seconds: the wall-clock budget of this run's training, in seconds (> 0).
        schedule: the engine's schedule, changed in place.
    """

    def __init__(self, seconds: float, schedule: CosineSchedule) -> None:
        self.seconds = seconds
        self.schedule = schedule
        self.fitted: int | None = None  # the step count it chose, once it has
        self._t0 = 0.0
        self._t1: float | None = None  # the end of this run's first step
        self._first_step = 0

    def on_train_begin(self, state: TrainState) -> None:
        """Start the clock (a resumed run measures its own steps).

        Args:
            state: the run about to start.
        """
        self._t0 = time.perf_counter()
        self._t1, self._first_step = None, state.step

    def on_step_end(self, state: TrainState) -> None:
        """Time the steps; at the probe step, fit the schedule to what is left of the budget.

        Args:
            state: the run after a step.
        """
        if self._t1 is None:
            self._t1, self._first_step = time.perf_counter(), state.step
        probe = max(MIN_PROBE_STEPS, self.schedule.warmup)
        if self.fitted is not None or state.step - self._first_step < probe:
            return
        planned = dist.broadcast(self._plan(state.step, self._t1) if dist.is_main() else None)
        self.fitted = min(state.total, max(state.step + 1, planned))
        state.total = self.schedule.total = self.fitted

    def _plan(self, step: int, t1: float) -> int:
        """Steps in all (done and to come) that fit the budget at the rate measured since t1."""
        now = time.perf_counter()
        per_step = (now - t1) / max(1, step - self._first_step)
        left = self.seconds - (now - self._t0)
        return step + max(0, math.floor(BUDGET_SHARE * left / max(per_step, 1e-9)))

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra | None:
        """The fitted step count (None before the fit).

        Args:
            state: the run as it stands.

        Returns:
            ``({}, {"fit_to_time.total": str})`` once fitted, else None.
        """
        return None if self.fitted is None else ({}, {_KEY: str(self.fitted)})

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        """A run resumed after the fit keeps its step count and does not fit again.

        Args:
            state: the run as the checkpoint left it.
            extra: every callback's saved state, or None.
        """
        meta = extra[1] if extra is not None else {}
        if _KEY in meta:
            self.fitted = int(meta[_KEY])
            state.total = self.schedule.total = self.fitted
