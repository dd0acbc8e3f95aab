"""Weights of a pretraining run at several lengths, for a curve of what more pretraining buys.

``benchmarks/pretraining_curve.py`` adapts each snapshot to a few development draws, so the
teacher's size and pretraining length are chosen on measured Dice, not guessed.
"""

from __future__ import annotations

import time
from pathlib import Path

from tskd.callbacks import Callback, TrainState
from tskd.models.mini_sam import MiniSamConfig
from tskd.models.mini_sam_files import save_mini_sam

SNAPSHOTS = "snapshots"


def snapshot_path(out_dir: str | Path, step: int) -> Path:
    """Where the snapshot after ``step`` optimiser steps of a pretraining into ``out_dir`` goes.

    Args:
        out_dir: the pretraining's output folder.
        step: optimiser steps done.

    Returns:
        ``out_dir/snapshots/step_<step, 6 digits>.safetensors`` (its JSON beside it).
    """
    return Path(out_dir) / SNAPSHOTS / f"step_{step:06d}.safetensors"


class Snapshots(Callback):
    """Save the SAM (fp16 safetensors + JSON) every ``every`` epochs of a pretraining.

    Each snapshot's JSON records under "info" the step, this run's seconds and the run's command.
    A snapshot is written whole or not at all (``save_mini_sam``); one already there (from a run
    that was resumed) is replaced by the same weights.

    Args:
        out_dir: the pretraining's output folder (``snapshot_path``).
        arch: the architecture being pretrained.
        every: epochs between snapshots (an epoch is ``PretrainConfig.steps_per_checkpoint``
            steps); at least 1.
        command: the command line, recorded in each snapshot.
    """

    def __init__(self, out_dir: str | Path, arch: MiniSamConfig, every: int,
                 command: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.arch = arch
        self.every = max(1, int(every))
        self.command = command
        self._t0 = time.perf_counter()

    def on_train_begin(self, state: TrainState) -> None:
        """Start this run's clock.

        Args:
            state: the run as it stands.
        """
        self._t0 = time.perf_counter()

    def on_epoch_end(self, state: TrainState) -> None:
        """Save a snapshot after every ``every``-th epoch.

        Args:
            state: the run as it stands (``state.model`` is the ``PromptableSam``).
        """
        if (state.epoch + 1) % self.every:
            return
        model = getattr(state.model, "module", state.model)  # unwrapped from DDP
        info = {"step": state.step, "epoch": state.epoch + 1, "command": self.command,
                "run_seconds": round(time.perf_counter() - self._t0, 1)}
        save_mini_sam(model.sam, self.arch, snapshot_path(self.out_dir, state.step), half=True,
                      extra=info)
