"""Bad settings are refused in one line before any stage runs (``tskd.pipeline.settings_check``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tskd.config import RunConfig
from tskd.errors import TskdInputError, TskdWarning
from tskd.pipeline.settings_check import check_settings


def _cfg(**student: object) -> RunConfig:
    cfg = RunConfig()
    for k, v in student.items():
        setattr(cfg.student, k, v)
    return cfg


@pytest.mark.parametrize("change,message", [
    (lambda c: (setattr(c.student, "architecture", "conv"),
                setattr(c.student, "backbone", "resnet999")),
     "student.backbone 'resnet999' is not a timm CNN"),
    (lambda c: (setattr(c.student, "architecture", "conv"), setattr(c.data, "image_size", 100)),
     "image size 100 is not a multiple of 32, which the convolutional student needs "
     "(set 'data.image_size' or 'student.backbone')"),
    (lambda c: (setattr(c.student, "architecture", "vit_tiny"), setattr(c.data, "image_size", 72)),
     "image size 72 is not a multiple of 16"),
    (lambda c: setattr(c.data, "image_size", 72),  # the default student, the U-Net
     "image size 72 is not a multiple of 16"),
    (lambda c: setattr(c.student, "encoder_lr_scale", 0.0),
     "'student.encoder_lr_scale' must be more than 0, got 0.0"),
    (lambda c: setattr(c.student.train, "patience", 0), "'student.train.patience' must be 1"),
    (lambda c: setattr(c.teacher.train, "val_every", 0), "'teacher.train.val_every' must be 1"),
    (lambda c: setattr(c.distill.train, "max_seconds", -5.0),
     "'distill.train.max_seconds' must be more than 0"),
], ids=["backbone", "conv-size", "vit-size", "unet-size", "encoder-lr", "patience-0",
        "val-every-0", "max-seconds-negative"])
def test_each_bad_setting_is_one_line(change, message: str) -> None:
    cfg = RunConfig()
    change(cfg)
    with pytest.raises(TskdInputError) as caught:
        check_settings(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_good_settings_pass_and_patience_without_validation_warns() -> None:
    check_settings(RunConfig())  # the defaults
    check_settings(_cfg(architecture="unet", from_scratch=True))
    check_settings(_cfg(architecture="unet"))  # a U-Net student can be distilled
    cfg = RunConfig()
    cfg.data.val_fraction = 0.0
    cfg.student.train.patience = 3
    with pytest.warns(TskdWarning, match="student.train.patience set, but data.val_fraction is 0"):
        check_settings(cfg)


def test_the_cli_refuses_before_the_run_folder_is_made(tmp_path: Path, capsys) -> None:
    from tskd.apps.cli import main

    (tmp_path / "data").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {{labelled: {tmp_path / 'data'}}}\n"
                      "student: {backbone: resnet999}\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tskd: error: config: the student") and "resnet999" in err
    assert not (tmp_path / "run").exists()
