"""Settings on several processes: fingerprints of the global batch, refusals naming the setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tskd.config import RunConfig, SynthConfig


def _synth(batch_size: int, accum: int = 1) -> SynthConfig:
    cfg = SynthConfig()
    cfg.train = replace(cfg.train, batch_size=batch_size, grad_accum_steps=accum)
    return cfg


def test_transfer_set_fingerprint_counts_the_global_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.pipeline.fingerprints import synth_settings
    from tskd.pipeline.markers import fingerprint
    from tskd.training.synthesize import _model_fingerprint

    def fps(cfg: SynthConfig) -> tuple[str, dict]:
        return fingerprint("x", synth_settings(cfg)), _model_fingerprint(cfg, "d")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # one process without accumulation: the values of earlier versions
    alone = fps(_synth(16))
    assert alone[0] == "4240c69469c42a1a"
    assert alone[1] == {"resolution": 64, "base_channels": 32, "train_steps": 300,
                        "batch_size": 16, "lr": 0.0002, "ema_decay": 0.995, "seed": 0,
                        "data": "d"}
    half = fps(_synth(8))
    assert half[0] != alone[0]
    assert fps(_synth(8, accum=2)) == alone  # 8 x 2 accumulated = 16
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert fps(_synth(8)) == alone  # 8 x 2 processes = 16: the same transfer set
    assert fps(_synth(16))[0] not in (alone[0], half[0])  # 32 images per step: another one


def test_settings_fingerprints_keep_the_global_batch_of_every_stage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.pipeline.fingerprints import _settings_fp

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = RunConfig()
    sections = (cfg.teacher, cfg.distill, cfg.student)
    for section in sections:
        section.train.batch_size = 2
    two = [_settings_fp(s) for s in sections]
    monkeypatch.setenv("WORLD_SIZE", "1")
    for section in sections:
        section.train.batch_size = 4
    assert [_settings_fp(s) for s in sections] == two


def test_refused_resume_names_the_stage_whose_global_batch_changed(
        tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.errors import RunFolderError
    from tskd.pipeline.batches import stage_batches
    from tskd.pipeline.markers import checkpoint_inputs

    folder = tmp_path / "student"  # type: ignore[operator]
    (folder / "ckpt").mkdir(parents=True)
    cfg = RunConfig()
    for section in (cfg.teacher, cfg.synth, cfg.distill, cfg.student):
        section.train.batch_size = 2
    cfg.teacher.train.batch_size = 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    checkpoint_inputs(folder, "a" * 16, False, stage_batches(cfg, "student"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    for section in (cfg.synth, cfg.distill, cfg.student):  # all scaled but the teacher's
        section.train.batch_size = 4
    with pytest.raises(RunFolderError) as err:
        checkpoint_inputs(folder, "b" * 16, True, stage_batches(cfg, "student"))
    assert str(err.value) == (
        f"cannot resume the checkpoint in {folder}: teacher.train.batch_size: the run was made "
        "with a global batch of 2 (1 x 2 processes), this one gives 1 (1 x 1 process); every "
        "stage's global batch (batch_size x grad_accum_steps x processes) must stay the same, "
        "so scale that stage's batch_size or grad_accum_steps, or run again without --resume "
        "to start over")
    cfg.teacher.train.grad_accum_steps = 2  # 1 x 2 accumulation steps: the same 2
    assert checkpoint_inputs(folder, "a" * 16, True, stage_batches(cfg, "student")) == folder
    # another difference than a global batch: the general message
    with pytest.raises(RunFolderError, match=r"was made from other inputs \(data, teacher"):
        checkpoint_inputs(folder, "c" * 16, True, stage_batches(cfg, "student"))


def test_stage_batches_follow_what_each_stage_builds_on() -> None:
    from tskd.pipeline.batches import stage_batches

    cfg = RunConfig()
    assert list(stage_batches(cfg, "teacher")) == ["teacher.train.batch_size"]
    assert list(stage_batches(cfg, "synthesize")) == ["synth.train.batch_size"]
    assert list(stage_batches(cfg, "distill")) == [
        "distill.train.batch_size", "synth.train.batch_size", "teacher.train.batch_size"]
    cfg.distill.task_agnostic = True
    assert "teacher.train.batch_size" not in stage_batches(cfg, "student")
    cfg.student.from_scratch = True
    assert list(stage_batches(cfg, "student")) == ["student.train.batch_size"]


INT_FIELDS = ["epochs", "batch_size", "seed", "max_steps", "patience", "val_every",
              "grad_accum_steps"]


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_for_an_int_training_setting_is_refused(name: str, value: bool) -> None:
    from tskd.config import from_dict
    from tskd.errors import TskdInputError
    from tskd.pipeline.settings_check import check_settings

    with pytest.raises(TskdInputError) as err:  # as read from a YAML file
        from_dict(RunConfig, {"teacher": {"train": {name: value}}})
    assert str(err.value) == f"config: 'teacher.train.{name}' must be int, got {value}"
    cfg = RunConfig()  # as built in code (the viewer's settings)
    setattr(cfg.synth.train, name, value)
    with pytest.raises(TskdInputError) as err:
        check_settings(cfg)
    assert str(err.value) == f"config: 'synth.train.{name}' must be int, got {value}"


def test_int_fields_list_is_every_int_field_of_train_config() -> None:
    import typing
    from dataclasses import fields

    from tskd.config import TrainConfig
    from tskd.pipeline.settings_check import _INT_FIELDS

    hints = typing.get_type_hints(TrainConfig)
    ints = [f.name for f in fields(TrainConfig) if hints[f.name] in (int, int | None)]
    assert sorted(ints) == sorted(_INT_FIELDS) == sorted(INT_FIELDS)


@pytest.mark.parametrize(("section", "from_scratch"),
                         [("student", False), ("distill", False), ("student", True)])
def test_a_batch_norm_student_with_one_image_per_process_is_refused(
        section: str, from_scratch: bool) -> None:
    from tskd.errors import TskdInputError
    from tskd.pipeline.settings_check import check_settings

    cfg = RunConfig()
    cfg.student.architecture = "conv"
    cfg.student.backbone = "mobilenetv3_small_050"  # timm's BatchNorm
    cfg.student.from_scratch = from_scratch
    getattr(cfg, section).train.batch_size = 1
    with pytest.raises(TskdInputError) as err:
        check_settings(cfg)
    assert str(err.value) == (
        f"config: '{section}.train.batch_size' is 1, but the CNN student ('student.backbone' "
        "mobilenetv3_small_050) uses BatchNorm and needs at least 2 images per process batch; "
        "set it to 2 or more (with fewer processes or grad_accum_steps to keep the global "
        "batch)")


def test_batch_of_one_passes_where_no_batch_norm_trains() -> None:
    from tskd.pipeline.settings_check import check_settings

    cfg = RunConfig()
    cfg.student.architecture = "conv"
    cfg.student.backbone = "mobilenetv3_small_050"
    cfg.student.from_scratch = True
    cfg.distill.train.batch_size = 1  # distillation does not run from scratch
    check_settings(cfg)
    vit = RunConfig()
    vit.student.architecture = "vit_tiny"  # LayerNorm only
    vit.student.train.batch_size = vit.distill.train.batch_size = 1
    check_settings(vit)
    unet = RunConfig()  # the default student: MONAI's BasicUNet, instance norm
    unet.student.train.batch_size = unet.distill.train.batch_size = 1
    check_settings(unet)
