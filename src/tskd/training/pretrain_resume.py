"""What a pretraining keeps in its checkpoint beside the engine's state: settings and time.

The engine refuses a checkpoint made with other training settings (``TrainConfig``), but a
pretraining's scenes, image size, prompts and architecture lie outside them. ``PieceRecord``
keeps them in the checkpoint (``extra.safetensors`` metadata) and adds up the training seconds
of every resumed piece; ``check_resume`` refuses a resume that asks for other settings, or
that finds a finished run, before anything is loaded.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tskd.callbacks import Callback, RunControl, TrainState
from tskd.checkpoint import Checkpoint, CheckpointExtra
from tskd.errors import TskdInputError, TskdWarning
from tskd.models.mini_sam import MiniSamConfig
from tskd.training.pretrain_config import PretrainConfig

SETTINGS_KEY = "pretrain.settings"
SECONDS_KEY = "pretrain.train_seconds"


def run_settings(cfg: PretrainConfig, arch: MiniSamConfig) -> dict[str, Any]:
    """The settings a resumed pretraining must share with its checkpoint, beyond the engine's.

    Args:
        cfg: The pretraining settings; ``train`` is left out (the engine checks it).
        arch: The architecture.

    Returns:
        ``asdict(cfg)`` without ``train``, with ``model``: ``arch.to_dict()``; JSON-ready.
    """
    settings = {k: v for k, v in asdict(cfg).items() if k != "train"}
    return json.loads(json.dumps(settings | {"model": arch.to_dict()}))


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``name checkpoint-value (this run: value)`` for each differing setting (into ``model``)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"model.{d}" for d in _differences(a, b)]
        elif a != b:
            out.append(f"{key} {a!r} (this run: {b!r})")
    return out


class PieceRecord(Callback):
    """Keep a pretraining's settings and training time in its checkpoint.

    Args:
        settings: ``run_settings`` of this run.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._earlier = 0.0  # seconds of the pieces before this one
        self._start: float | None = None
        self._end: float | None = None

    def seconds(self) -> float:
        """Training seconds of every piece so far (resumed pieces add up), wall clock."""
        if self._start is None:
            return self._earlier
        return self._earlier + ((self._end or time.perf_counter()) - self._start)

    def on_train_begin(self, state: TrainState) -> None:
        """Start this piece's clock.

        Args:
            state: the run as it stands.
        """
        self._start = time.perf_counter()

    def on_train_end(self, state: TrainState) -> None:
        """Stop the clock.

        Args:
            state: the run as it stands.
        """
        self._end = time.perf_counter()

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra:
        """The settings (JSON) and the seconds so far, as the checkpoint's string metadata.

        Args:
            state: the run as it stands.
        """
        return {}, {SETTINGS_KEY: json.dumps(self.settings, sort_keys=True),
                    SECONDS_KEY: repr(self.seconds())}

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        """Take the earlier pieces' seconds (``check_resume`` compared the settings before).

        Args:
            state: the run, as the checkpoint left it.
            extra: the checkpoint's callback state; None from a checkpoint without any.
        """
        self._earlier = float((extra[1] if extra is not None else {}).get(SECONDS_KEY, 0.0))


def check_resume(weights: Path, control: RunControl | None, settings: dict[str, Any],
                 overwrite: bool = False) -> None:
    """Check, before any model loads, that a resume can go on and a fresh start loses nothing.

    A fresh start would replace an interrupted run's checkpoint at its first save.

    A pretraining removes its checkpoint once ``weights`` are written, so a resume into a
    finished folder would start again from step 0 (with ``--overwrite``) or fail on the
    existing files; a checkpoint of another image size or architecture would not even load.

    Args:
        weights: The finished weights' path in the output folder.
        control: The run's control; nothing is checked without a checkpoint folder
            (``checkpoint_dir``).
        settings: ``run_settings`` of the run that asks to resume.
        overwrite: A fresh start may replace an interrupted run's checkpoint.

    Warns:
        TskdWarning: there is no checkpoint and no finished run (a mistyped folder?):
            training starts at step 0.

    Raises:
        TskdInputError: a fresh start without ``overwrite`` finds a checkpoint; a resume finds
            ``weights`` and no checkpoint, or a checkpoint made with other settings (each is
            named; one of an earlier version, which kept no settings, passes).
    """
    if control is None or control.checkpoint_dir is None:
        return
    checkpoint_dir = Path(control.checkpoint_dir)
    meta = Checkpoint(checkpoint_dir).extra_metadata()
    if not control.resume:
        if meta is not None and not overwrite:
            raise TskdInputError(
                f"{checkpoint_dir} holds the checkpoint of an interrupted pretraining: add "
                "--resume to go on from it, or --overwrite to start again and replace it")
        return
    if meta is None and not weights.is_file():
        warnings.warn(f"no checkpoint in {checkpoint_dir} to resume: training starts at step 0",
                      TskdWarning, stacklevel=3)
    if meta is None:
        if weights.is_file():
            raise TskdInputError(
                f"nothing to resume: {weights.parent} holds a finished pretraining "
                f"({weights.name}) and {checkpoint_dir} no checkpoint. Keep it, write elsewhere "
                "with --out, or train again with --overwrite (without --resume)")
        return
    if SETTINGS_KEY in meta:
        differ = _differences(json.loads(meta[SETTINGS_KEY]), settings)
        if differ:
            raise TskdInputError(
                f"cannot resume: the checkpoint in {checkpoint_dir} was made with other "
                f"pretraining settings: {'; '.join(differ)}. Resume with the checkpoint's "
                "options (its command line), or start again without --resume")
