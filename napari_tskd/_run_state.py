"""What a run folder says about its stages: done (and with what result), stopped with a
checkpoint (and at which step), or not started. Read from the files the stages write
(``<artefact>/stage.json``, ``checkpoints/<stage>/ckpt/state.json``), without importing torch,
so reopening a viewer on a run shows where it stands and offers *Resume*.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_DIRS = ("ckpt", "ckpt.old")  # tskd.checkpoint.Checkpoint.CURRENT / OLD
STATE_FILE = "state.json"  # tskd.checkpoint.Checkpoint.STATE
MARKER = "stage.json"  # tskd.pipeline.markers.MARKER


@dataclass
class StageState:
    """One stage of a run folder as its files show it.

    Attributes:
        name: the stage's ``Stage.name`` (teacher, synthesize, distill, student).
        title: what the widgets call it (``Stage.title``).
        done: its ``stage.json`` exists (the stage finished, perhaps from older inputs).
        result: the result ``stage.json`` records ({} when not done or unreadable).
        checkpoint: where its interrupted training stood (``step``, ``epoch`` 0-based,
            ``epochs``), or None when it has no checkpoint.
    """

    name: str
    title: str
    done: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, int] | None = None

    def describe(self) -> str:
        """One line for the job panel, e.g. ``Teacher: stopped at step 7 (epoch 2/30)``."""
        if self.checkpoint is not None:
            c = self.checkpoint
            where = f"step {c['step']}"
            if c.get("epochs"):
                where += f" (epoch {c['epoch'] + 1}/{c['epochs']})"
            return f"{self.title}: stopped at {where}; Resume continues from its checkpoint"
        if self.done:
            shown = [f"{k} {v:.3g}" for k, v in self.result.items()
                     if isinstance(v, int | float) and not isinstance(v, bool)][:4]
            return f"{self.title}: done" + (f" ({', '.join(shown)})" if shown else "")
        return f"{self.title}: not run yet"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_checkpoint(folder: Path) -> dict[str, int] | None:
    """Where the newest checkpoint under a stage's checkpoint folder stood.

    Args:
        folder: ``checkpoints/<stage>`` of a run folder; its checkpoints may sit in sub-folders
            (a stage that trains more than one model).

    Returns:
        ``{"step", "epoch", "epochs"}`` of the checkpoint with the most steps, or None when the
        folder holds no readable checkpoint.
    """
    best: dict[str, int] | None = None
    if not folder.is_dir():
        return None
    for name in CHECKPOINT_DIRS:
        for state_file in sorted(folder.rglob(f"{name}/{STATE_FILE}")):
            state = _read_json(state_file)
            if state is None or not isinstance(state.get("step"), int):
                continue
            cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
            found = {"step": int(state["step"]), "epoch": int(state.get("epoch") or 0),
                     "epochs": int(cfg.get("epochs") or 0)}
            if best is None or found["step"] > best["step"]:
                best = found
    return best


def stage_states(run_dir: str | Path, names: tuple[str, ...]) -> list[StageState]:
    """The state of each named stage in a run folder.

    Args:
        run_dir: the run folder (it may not exist yet: every stage is then not run).
        names: ``Stage.name`` of the stages to read, in the order to show them.

    Returns:
        One ``StageState`` per name.
    """
    from tskd.pipeline.registry import stage

    states = []
    for name in names:
        s = stage(name)
        marker = _read_json(s.artefact_dir(run_dir) / MARKER)
        result = marker.get("result") if marker else None
        states.append(StageState(
            name, s.title, done=marker is not None,
            result=result if isinstance(result, dict) else {},
            checkpoint=read_checkpoint(s.checkpoint_dir(run_dir))))
    return states


def resume_steps(states: list[StageState]) -> list[dict[str, Any]]:
    """The job steps that continue a run: from the first stage with a checkpoint to the last.

    Args:
        states: the widget's stages, in order (``stage_states``).

    Returns:
        ``[{"target": name, "kwargs": {"resume": True}}, ...]``; [] when no stage has a
        checkpoint.
    """
    first = next((i for i, s in enumerate(states) if s.checkpoint is not None), None)
    if first is None:
        return []
    return [{"target": s.name, "kwargs": {"resume": True}} for s in states[first:]]
