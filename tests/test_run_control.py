"""``RunControl``: the one object that carries progress, cancel, checkpoint and resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ckpt_kill import CFG, build
from tskd import engine
from tskd.callbacks import RunControl


def test_defaults_are_a_fresh_silent_run_without_checkpoint() -> None:
    control = RunControl()
    assert (control.progress, control.cancel, control.resume, control.checkpoint_dir,
            control.keep_checkpoint) == (None, None, False, None, False)
    assert engine.RunControl is RunControl  # the engine re-exports it


def test_a_string_folder_becomes_a_path_and_the_object_is_frozen() -> None:
    control = RunControl(checkpoint_dir="runs/ckpt")
    assert control.checkpoint_dir == Path("runs/ckpt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        control.resume = True  # type: ignore[misc]


def test_the_engine_keeps_or_clears_the_checkpoint_as_the_control_says(tmp_path: Path) -> None:
    reports: list[int] = []
    engine.train(build(), CFG, control=RunControl(lambda p: reports.append(p.step),
                                                  checkpoint_dir=tmp_path / "a",
                                                  keep_checkpoint=True))
    assert reports == list(range(1, 25))
    assert (tmp_path / "a" / "ckpt" / "manifest.json").is_file()
    engine.train(build(), CFG, control=RunControl(checkpoint_dir=str(tmp_path / "b")))
    assert (tmp_path / "b" / "history.json").is_file()
    assert not (tmp_path / "b" / "ckpt").exists()


def test_a_stage_context_hands_its_settings_and_the_stage_checkpoint(tmp_path: Path) -> None:
    from tskd.config import RunConfig
    from tskd.pipeline.context import StageContext

    token = engine.CancelToken()
    ctx = StageContext(RunConfig(run_dir=str(tmp_path / "run")), print, token, resume=False)
    step = ctx.begin(tmp_path / "run" / "teacher", "0123456789abcdef", None,
                     tmp_path / "run" / "checkpoints" / "teacher")
    control = ctx.control(step)
    assert control == RunControl(print, token, False, tmp_path / "run" / "checkpoints" / "teacher",
                                 keep_checkpoint=True)
    assert ctx.control(step, keep_checkpoint=False).keep_checkpoint is False
