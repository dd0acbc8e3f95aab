"""``tskd pretrain-mini``'s options: each explained, its written-out defaults the code's own;
the check that re-runs a recorded command's first piece."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tskd.apps import pretrain_command
from tskd.apps.cli import build_parser
from tskd.data.phantoms.pretraining import SCENES
from tskd.models.mini_archs import MINI_ARCHS
from tskd.training.pretrain_config import PretrainConfig


def _subparser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["pretrain-mini"]


def test_every_pretrain_option_has_help() -> None:
    missing = [a.option_strings for a in _subparser()._actions if not a.help]
    assert missing == []


def test_the_written_out_defaults_are_the_codes() -> None:
    cfg = PretrainConfig()
    assert cfg.train.epochs * cfg.steps_per_checkpoint == pretrain_command.DEFAULT_STEPS
    assert cfg.train.batch_size == pretrain_command.DEFAULT_BATCH
    assert tuple(MINI_ARCHS) == pretrain_command.ARCHS
    assert pretrain_command.SCENES == SCENES
    defaults = {a.dest: a.default for a in _subparser()._actions}
    assert defaults["scenes"] == cfg.scenes and defaults["arch"] in MINI_ARCHS
    text = _subparser().format_help()
    assert f"default {cfg.train.epochs * cfg.steps_per_checkpoint}" in text
    assert f"default {defaults['arch']}" in text and f"default {cfg.scenes}" in text


def test_the_first_piece_check_runs_the_records_command_into_its_own_folder(tmp_path: Path) -> None:
    from bench_scripts import load_script

    script = load_script("pretraining_first_piece")
    argv, env = script.first_piece_command(
        "OMP_NUM_THREADS=1 tskd pretrain-mini --steps 1600 --out runs/x --seed 0", tmp_path)
    assert argv == ["pretrain-mini", "--steps", "1600", "--seed", "0", "--out", str(tmp_path)]
    assert env == {"OMP_NUM_THREADS": "1"}
    argv, env = script.first_piece_command("tskd pretrain-mini --arch small", tmp_path)
    assert argv == ["pretrain-mini", "--arch", "small", "--out", str(tmp_path)] and env == {}
    with pytest.raises(ValueError, match="not a `tskd pretrain-mini`"):
        script.first_piece_command("tskd distill --config c.yaml", tmp_path)


@pytest.mark.parametrize(("option", "value", "low"), [
    ("--batch-size", "0", 1), ("--steps", "-5", 1), ("--image-size", "4", 8),
    ("--snapshot-every", "-1", 0)])
def test_out_of_range_options_are_refused_in_the_options_words(
        option: str, value: str, low: int, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["pretrain-mini", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: must be at least {low}, got {value}" in capsys.readouterr().err
