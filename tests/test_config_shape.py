"""One configuration shape: ``synth.train`` and ``PretrainConfig.train`` like the other stages,
the device once per run (a stage may set its own), and files of the earlier shape still read,
with the fingerprints they had (so their runs are not redone)."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tskd.config import (
    SYNTH_EPOCH_STEPS,
    RunConfig,
    StudentConfig,
    SynthConfig,
    TrainConfig,
    config_text,
    from_dict,
    load_config,
    save_config,
)
from tskd.config_compat import LEGACY_STUDENT
from tskd.errors import TskdInputError, TskdWarning
from tskd.pipeline import fingerprints
from tskd.pipeline.context import StageContext
from tskd.training.pretrain_config import PretrainConfig

STAGES = ("teacher", "synthesize", "distill", "student")
SECTIONS = ("teacher", "synth", "distill", "student", "predict")

# ``config.yaml`` of a default run as the version before ``synth.train`` wrote it
OLD_DEFAULT_YAML = r"""
run_dir: runs/default
data:
  labelled: null
  unlabelled: null
  test: null
  image_size: 256
  val_fraction: 0.2
  split_seed: 0
  augment: true
  max_pixels: 268435456
  classes: null
  ignore_label: null
teacher:
  model_type: mini
  checkpoint: null
  input_size: 256
  lora:
    rank: 32
    alpha: 32.0
    dropout: 0.0
    train_decoder: false
    targets:
    - image_encoder\.blocks\.\d+\.attn\.qkv
    - mask_decoder\.transformer\..*(q_proj|v_proj)
  train:
    epochs: 30
    batch_size: 4
    lr: 0.003
    weight_decay: 0.0001
    warmup_fraction: 0.05
    seed: 0
    device: auto
    mixed_precision: auto
    grad_clip: 1.0
    max_steps: null
  dice_weight: 0.8
  dice_include_background: false
synth:
  enabled: true
  n_images: 32
  resolution: 64
  base_channels: 32
  train_steps: 300
  batch_size: 16
  lr: 0.0002
  sample_steps: 25
  ema_decay: 0.995
  near_copy_threshold: 0.1
  seed: 0
  device: auto
distill:
  task_agnostic: false
  teacher_layers:
  - neck
  student_layers:
  - neck
  feature_loss: mse
  feature_weight: 1.0
  output_weight: 1.0
  temperature: 2.0
  train:
    epochs: 20
    batch_size: 4
    lr: 0.001
    weight_decay: 0.0001
    warmup_fraction: 0.05
    seed: 0
    device: auto
    mixed_precision: auto
    grad_clip: 1.0
    max_steps: null
student:
  embed_dim: 192
  depth: 12
  num_heads: 3
  patch_size: 16
  neck_dim: 256
  decoder_channels: 64
  from_scratch: false
  dice_weight: 0.5
  train:
    epochs: 40
    batch_size: 4
    lr: 0.0005
    weight_decay: 0.0001
    warmup_fraction: 0.05
    seed: 0
    device: auto
    mixed_precision: auto
    grad_clip: 1.0
    max_steps: null
predict:
  tile_size: null
  tile_overlap: null
  batch_size: 8
  device: auto

"""
# its fingerprints in that version, with the labelled set's fingerprint "0123456789abcdef"
OLD_DEFAULT_FPS = {"teacher": "1400e498d69a5f82", "synthesize": "1c4ae007bfcfda6f",
                   "distill": "e727eb38a2ffbca7", "student": "92c908d44e25556f"}

# a config of the earlier shape with other values, and its fingerprints in that version
OLD = {
    "run_dir": "runs/old",
    "teacher": {"train": {"epochs": 3, "device": "cpu"}},
    "synth": {"n_images": 4, "train_steps": 120, "batch_size": 8, "lr": 0.001, "seed": 2,
              "device": "auto"},
    "distill": {"train": {"epochs": 2}},
    "student": {"train": {"epochs": 5, "device": "auto"}},
    "predict": {"device": "auto"},
}
OLD_FPS = {"teacher": "0cec687ccdae8ef0", "synthesize": "7b023738776a73ab",
           "distill": "128854605268dd71", "student": "19d77bff9d4ffde9"}
# that config leaves the student to its default, which is now the U-Net student of width 16:
# its teacher and transfer set are still taken as done, its distillation and student run again
OLD_FPS_NOW = OLD_FPS | {"distill": "a12874010ea98b95", "student": "c2deb050aabe64b0"}


def _fingerprints(cfg: RunConfig) -> dict[str, str]:
    ctx = StageContext(cfg)
    ctx._memo["data"] = SimpleNamespace(fingerprint="0123456789abcdef")  # no data read
    return {s: fingerprints.of(ctx, s) for s in STAGES}


def _read_old(data: dict) -> tuple[RunConfig, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = from_dict(RunConfig, data)
    return cfg, [str(w.message) for w in caught if issubclass(w.category, TskdWarning)]


# -- files of the earlier shape ---------------------------------------------------------------

def test_a_run_folder_config_of_the_earlier_shape_reads_as_the_same_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD_DEFAULT_YAML)
    with pytest.warns(TskdWarning) as caught:
        cfg = load_config(path)
    assert [str(w.message) for w in caught] == [
        "config: the teacher section was written by an earlier version, without "
        "'refine_head': read as the teacher without the full-resolution head; set "
        "'teacher.refine_head' to choose, and silence this warning",
        "config: keys of an earlier version read in their new place (synth.train_steps -> "
        "synth.train.max_steps, synth.batch_size -> synth.train.batch_size, synth.lr -> "
        "synth.train.lr, synth.seed -> synth.train.seed, synth.device -> synth.train.device); "
        "write them there to silence this warning",
        "config: the student section lists the ViT-Tiny's embed_dim, depth, num_heads, "
        "patch_size but no architecture: read as the ViT-Tiny of earlier versions (transposed "
        "convolutions); set 'student.architecture' (unet, the default, conv or vit_tiny) to "
        "choose, and silence this warning"]
    # every value means what it meant ("auto": the run's device); its student section lists the
    # ViT's keys, so it stays the ViT-Tiny of that version (config_compat.LEGACY_STUDENT), and
    # its whole teacher section stays the teacher without the refine head
    old = RunConfig(student=StudentConfig(**LEGACY_STUDENT))
    old.teacher.refine_head = False
    assert cfg == old
    assert _fingerprints(cfg) == OLD_DEFAULT_FPS  # its stages are taken as done


def test_old_keys_map_to_the_same_training_and_the_same_fingerprints() -> None:
    cfg, messages = _read_old(OLD)
    assert len(messages) == 1 and "synth.train_steps -> synth.train.max_steps" in messages[0]
    train = cfg.synth.train
    assert (train.epochs, train.max_steps, train.batch_size, train.lr, train.seed) == \
        (3, 120, 8, 0.001, 2)
    assert train.total_steps(SYNTH_EPOCH_STEPS) == 120
    assert (train.weight_decay, train.device) == (0.0, None)  # synth's own defaults
    assert cfg.teacher.train.device == "cpu"  # a device other than "auto" stays the stage's
    assert cfg.student.train.device is None and cfg.predict.device is None  # "auto": the run's
    assert cfg.device_of("teacher") == "cpu" and cfg.device_of("student") == "auto"
    assert (cfg.student.architecture, cfg.student.unet_width) == ("unet", 16)
    # a partial teacher section takes the current default teacher, with the refine head: the
    # teacher and what depends on it run again, the transfer set does not
    assert cfg.teacher.refine_head is True
    now = _fingerprints(cfg)
    assert now["synthesize"] == OLD_FPS["synthesize"]
    assert all(now[s] != OLD_FPS[s] for s in ("teacher", "distill", "student"))
    cfg.teacher.refine_head = False  # the teacher of that version
    assert _fingerprints(cfg) == OLD_FPS_NOW
    cfg.student = StudentConfig(**LEGACY_STUDENT, train=cfg.student.train)
    assert _fingerprints(cfg) == OLD_FPS  # with the student of that version: nothing re-runs


@pytest.mark.parametrize("steps", [1, 6, 49, 50, 120, 300, 20000])
def test_old_train_steps_give_the_engine_the_settings_they_gave(steps: int) -> None:
    from tskd.training.diffusion import train_config

    cfg, _ = _read_old({"synth": {"train_steps": steps, "batch_size": 4, "lr": 0.01}})
    engine, per_epoch = train_config(cfg.synth)
    old_per_epoch = max(1, min(steps, 50))  # the rule of the earlier version
    assert per_epoch == old_per_epoch
    assert asdict(engine) == asdict(TrainConfig(
        epochs=-(-steps // old_per_epoch), batch_size=4, lr=0.01, weight_decay=0.0,
        warmup_fraction=0.05, seed=0, device=None, mixed_precision="auto", grad_clip=1.0,
        max_steps=steps))


def test_a_saved_diffusion_model_of_the_earlier_version_is_still_reused() -> None:
    from tskd.training.synthesize import _model_fingerprint

    cfg, _ = _read_old({"synth": {"train_steps": 300, "seed": 4}})
    assert _model_fingerprint(cfg.synth, "d") == {  # the keys and values the earlier version saved
        "resolution": 64, "base_channels": 32, "train_steps": 300, "batch_size": 16,
        "lr": 0.0002, "ema_decay": 0.995, "seed": 4, "data": "d"}
    cfg.synth.train.weight_decay = 0.01  # fixed then; a change now makes another model
    assert _model_fingerprint(cfg.synth, "d")["train"] == {"weight_decay": 0.01}


def test_an_old_run_folder_opens_and_takes_the_new_shape(tmp_path: Path) -> None:
    from tskd.pipeline.manifest import record_files
    from tskd.pipeline.run_folder import RunPaths, prepare_run_dir

    run = tmp_path / "run"
    prepare_run_dir(RunConfig(run_dir=str(run)))
    config = RunPaths(run).config
    config.write_text(OLD_DEFAULT_YAML.replace("runs/default", str(run)))
    record_files(run, [config])  # as the earlier version wrote it
    with pytest.warns(TskdWarning, match="synth.train_steps -> synth.train.max_steps"):
        cfg = load_config(config)
        prepare_run_dir(cfg)  # the same run: no refusal, nothing removed or renamed
    assert sorted(p.name for p in run.glob("config*")) == ["config.yaml"]
    new = yaml.safe_load(config.read_text())
    assert new["device"] == "auto" and "train_steps" not in new["synth"]
    assert new["synth"]["train"]["epochs"] == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(config) == cfg  # written in the new shape: read without a warning


def test_a_key_in_its_old_and_new_place_is_refused() -> None:
    for synth, new in (({"lr": 0.1, "train": {"lr": 0.2}}, "lr"),
                       ({"seed": 1, "train": {"seed": 2}}, "seed"),
                       ({"device": "cpu", "train": {"device": "cpu"}}, "device"),
                       ({"train_steps": 100, "train": {"epochs": 2}}, "max_steps"),
                       ({"train_steps": 100, "train": {"max_steps": 2}}, "max_steps")):
        old = next(k for k in synth if k != "train")
        with pytest.raises(TskdInputError) as info:
            from_dict(RunConfig, {"synth": synth})
        assert str(info.value) == (f"config: 'synth.{old}' is the old place of "
                                   f"'synth.train.{new}'; give only 'synth.train.{new}'")


def test_a_wrong_value_under_an_old_key_is_named_by_its_new_key() -> None:
    with pytest.raises(TskdInputError) as info:
        from_dict(RunConfig, {"synth": {"lr": 0.1, "train": [1]}})
    assert str(info.value) == "config: 'synth.train' must be a mapping, got [1]"
    with pytest.warns(TskdWarning), pytest.raises(TskdInputError, match=r"synth\.train\.max_steps"):
        from_dict(RunConfig, {"synth": {"train_steps": "many"}})
    with pytest.warns(TskdWarning), pytest.raises(TskdInputError, match=r"synth\.train\.lr"):
        from_dict(RunConfig, {"synth": {"lr": "fast"}})


def test_a_stage_counted_in_steps_needs_one_step_and_a_batch() -> None:
    from tskd.training.diffusion import train_config

    for train in (TrainConfig(epochs=0), TrainConfig(max_steps=0), TrainConfig(batch_size=0)):
        with pytest.raises(TskdInputError, match=r"^config: 'synth\.train' must give at least "
                                                 r"one step \(epochs, max_steps\) and a batch"):
            train_config(SynthConfig(train=train))
    with pytest.warns(TskdWarning), pytest.raises(TskdInputError, match="'synth.train' must"):
        train_config(from_dict(SynthConfig, {"train_steps": 0}, "synth"))


# -- the new shape ------------------------------------------------------------------------------

def test_the_new_shape_round_trips_without_a_warning(tmp_path: Path) -> None:
    cfg = RunConfig(run_dir="x", device="cuda:1")
    cfg.teacher.train.device = "cpu"
    cfg.predict.device = "cpu"
    cfg.synth.train.set_steps(70, SYNTH_EPOCH_STEPS)
    cfg.synth.train.lr = 0.01
    save_config(cfg, tmp_path / "c.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_config(tmp_path / "c.yaml")
    assert back == cfg
    assert (back.synth.train.epochs, back.synth.train.max_steps) == (2, 70)
    text = config_text(cfg)
    assert "train_steps" not in text and text.startswith("run_dir: x\ndevice: cuda:1\n")


def test_left_out_synth_training_keys_take_the_synth_defaults() -> None:
    cfg = from_dict(RunConfig, {"synth": {"train": {"epochs": 2}},
                                "teacher": {"train": {"lr": 1}}})
    t = cfg.synth.train
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay) == (2, 16, 2e-4, 0.0)
    assert t.total_steps(SYNTH_EPOCH_STEPS) == 100
    # teacher.train keeps reading left-out keys as TrainConfig's, as it always has
    assert (cfg.teacher.train.epochs, cfg.teacher.train.lr) == (10, 1.0)


def test_pretraining_has_a_train_section_counted_in_steps() -> None:
    cfg = PretrainConfig()
    assert cfg.train.total_steps(cfg.steps_per_checkpoint) == 1200  # the earlier default
    engine, per_epoch = cfg.train.in_steps(cfg.steps_per_checkpoint, "pretrain.train")
    assert (engine.epochs, engine.max_steps, per_epoch) == (12, 1200, 100)
    assert (engine.batch_size, engine.lr, engine.weight_decay) == (8, 3e-4, 0.01)
    cfg.train.set_steps(30, cfg.steps_per_checkpoint)
    assert cfg.train.in_steps(cfg.steps_per_checkpoint, "p")[0].max_steps == 30


# -- the device, once per run ---------------------------------------------------------------------

def test_the_run_device_reaches_every_stage_and_a_stage_device_wins() -> None:
    cfg = from_dict(RunConfig, {"device": "cpu", "student": {"train": {"device": "cuda:3"}}})
    assert {s: cfg.device_of(s) for s in SECTIONS} == {
        "teacher": "cpu", "synth": "cpu", "distill": "cpu", "student": "cuda:3", "predict": "cpu"}
    ctx = StageContext(cfg)
    assert ctx.section("teacher").train.device == "cpu"
    assert ctx.section("synth").train.device == "cpu"
    assert ctx.section("distill").train.device == "cpu"
    assert ctx.section("student").train.device == "cuda:3"
    assert ctx.section("predict").device == "cpu"
    assert cfg.teacher.train.device is None  # the run's config itself is left as it is
    cfg.set_device("mps")
    assert {cfg.device_of(s) for s in SECTIONS} == {"mps"} and cfg.student.train.device is None


def test_an_explicit_auto_stage_device_in_a_file_with_a_run_device_is_kept() -> None:
    cfg = from_dict(RunConfig, {"device": "cpu", "teacher": {"train": {"device": "auto"}}})
    assert cfg.device_of("teacher") == "auto" and cfg.device_of("distill") == "cpu"


def test_the_device_changes_no_fingerprint() -> None:
    base = _fingerprints(RunConfig())
    cfg = RunConfig(device="cuda:1")
    cfg.teacher.train.device, cfg.synth.train.device = "cpu", "mps"
    cfg.distill.train.device, cfg.student.train.device, cfg.predict.device = "cuda", "cpu", "cpu"
    assert _fingerprints(cfg) == base
    cfg.synth.train.lr = 0.001  # a training setting does change the transfer set and after
    changed = _fingerprints(cfg)
    assert changed["teacher"] == base["teacher"]
    assert all(changed[s] != base[s] for s in ("synthesize", "distill", "student"))


def test_the_cli_device_is_the_run_device(tmp_path: Path) -> None:
    from tskd.apps.cli import _config_from_args, build_parser

    path = tmp_path / "c.yaml"
    path.write_text("device: cpu\nteacher:\n  train: {device: cuda:1}\n")
    parser = build_parser()
    cfg = _config_from_args(parser.parse_args(["teacher", "--config", str(path)]))
    assert cfg.device_of("teacher") == "cuda:1" and cfg.device_of("distill") == "cpu"
    for command in ("teacher", "synthesize", "run"):
        cfg = _config_from_args(parser.parse_args([command, "--config", str(path), "--device",
                                                   "mps"]))
        assert cfg.device == "mps" and {cfg.device_of(s) for s in SECTIONS} == {"mps"}
        assert cfg.teacher.train.device is None  # the command line wins over the file


def test_synthesize_steps_and_epochs_on_the_command_line() -> None:
    from tskd.apps.cli import _config_from_args, build_parser

    parser = build_parser()
    for args, epochs, max_steps in ((["--steps", "120"], 3, 120), (["--steps", "100"], 2, None),
                                    (["--epochs", "4"], 4, None), (["--seed", "3"], 6, None)):
        cfg = _config_from_args(parser.parse_args(["synthesize", *args]))
        assert (cfg.synth.train.epochs, cfg.synth.train.max_steps) == (epochs, max_steps), args
    assert cfg.synth.train.seed == 3


def test_a_number_written_without_a_dot_is_a_number_and_text_is_refused() -> None:
    cfg = from_dict(RunConfig, {"teacher": {"train": {"lr": "1e-3"}}})  # YAML's reading of 1e-3
    assert cfg.teacher.train.lr == 0.001
    for value in ("fast", True, [1]):
        with pytest.raises(TskdInputError) as info:
            from_dict(RunConfig, {"student": {"train": {"lr": value}}})
        assert str(info.value) == f"config: 'student.train.lr' must be a number, got {value!r}"


def test_the_run_device_reaches_the_training_of_every_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole run with ``device`` set once and one stage's own: every place that resolves a
    device (the engine, sampling, the teacher cache, prediction) is handed the right one."""
    import importlib
    import inspect
    import pkgutil
    import sys

    import torch

    import tskd.inference
    import tskd.pipeline
    import tskd.training
    from tiny_setup import tiny_config, write_tiny_sam, write_tiny_task
    from tskd import engine
    from tskd.pipeline.registry import run_pipeline

    data = write_tiny_task(tmp_path / "data")
    sam = write_tiny_sam(tmp_path / "sam.safetensors")
    raw = tiny_config(data, sam, tmp_path / "run")
    raw["device"] = "cuda:5"  # never opened: the resolver below records it and runs on the CPU
    raw["student"]["train"] = raw["student"]["train"] | {"device": "cuda:6"}  # (shared dict)
    raw["predict"] = {"device": "cuda:7"}  # the test set's evaluation
    seen: list[tuple[str, str]] = []

    def resolve(device: str | None) -> torch.device:
        callers = [f.frame.f_globals.get("__name__", "") for f in inspect.stack()[1:]]
        stage = next((m for m in reversed(callers) if m.startswith("tskd.training.")), ".test")
        seen.append((stage.rsplit(".", 1)[1], str(device)))  # the module the stage called
        return torch.device("cpu")

    for package in (tskd.training, tskd.inference, tskd.pipeline):  # every module that may
        for info in pkgutil.iter_modules(package.__path__):  # resolve a device, imported first
            importlib.import_module(f"{package.__name__}.{info.name}")
    real = engine.resolve_device
    for module in [m for name, m in sys.modules.items() if name.startswith("tskd")]:
        if getattr(module, "resolve_device", None) is real:
            monkeypatch.setattr(module, "resolve_device", resolve)
    run_pipeline(from_dict(RunConfig, raw))
    assert {w: {d for m, d in seen if m == w} for w, _ in seen} == {
        "teacher": {"cuda:5"}, "synthesize": {"cuda:5"}, "distill": {"cuda:5"},
        "finetune": {"cuda:6"}, "test": {"cuda:7"}}


def test_the_cli_shows_an_old_key_as_one_warning_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tiny_setup import write_tiny_task
    from tskd.apps.cli import main

    data = write_tiny_task(tmp_path / "data")
    old = tmp_path / "old.yaml"
    old.write_text("synth:\n  train_steps: 150\n  lr: 0.001\n")
    assert main(["check-data", str(data / "train"), "--config", str(old)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["tskd: warning: config: keys of an earlier version read in their new "
                      "place (synth.train_steps -> synth.train.max_steps, synth.lr -> "
                      "synth.train.lr); write them there to silence this warning"]
    old.write_text("synth:\n  lr: 0.001\n  train: {lr: 0.002}\n")
    assert main(["check-data", str(data / "train"), "--config", str(old)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "tskd: error: config: 'synth.lr' is the old place of 'synth.train.lr'; give only "
        "'synth.train.lr'")


# the examples' fingerprints as their earlier shape (synth.train_steps ...) gave them, with the
# labelled set's fingerprint "x" and no unlabelled folder: rewritten, they redo nothing but the
# student's stages (distill, student: the last two), whose default is now the U-Net student of
# width 16 (tiny.yaml names the CNN student, and keeps all four)
EXAMPLE_FPS = {
    "kidney_us.yaml": ["a0e1b92b436b0e11", "73e7c8b04201f298", "c39e5588f3b22946",
                       "e7ec5ed1a4080d7b"],
    "sam_vit_b_gpu.yaml": ["8d707b676ff0ceaa", "6eb8b370c78dc244", "4221d6167e5ac82c",
                           "14d7780728de8314"],
    "tiny.yaml": ["8b203eeae76c22a9", "07b16eb4d918fcea", "2494b2387f26e1e8",
                  "81f1533311980f0b"],
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_FPS))
def test_the_examples_are_of_the_new_shape_and_keep_their_fingerprints(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(Path(__file__).parents[1] / "examples" / name)
    cfg.data.unlabelled = None
    ctx = StageContext(cfg)
    ctx._memo["data"] = SimpleNamespace(fingerprint="x")
    assert cfg.teacher.refine_head is True  # the examples take the default teacher ...
    with_head = [fingerprints.of(ctx, s) for s in STAGES]
    cfg.teacher.refine_head = False  # ... which is all that differs from the earlier versions'
    ctx = StageContext(cfg)
    ctx._memo["data"] = SimpleNamespace(fingerprint="x")
    assert [fingerprints.of(ctx, s) for s in STAGES] == EXAMPLE_FPS[name]
    assert with_head[1] == EXAMPLE_FPS[name][1]  # the transfer set does not use the teacher
    assert with_head[0] != EXAMPLE_FPS[name][0]


def test_the_unet_width_changes_only_what_a_unet_student_trains() -> None:
    """A U-Net section without ``student.unet_width`` reads as 32, the only width before it."""
    cfg, _ = _read_old(OLD | {"student": {"architecture": "unet", "from_scratch": True,
                                          "train": {"epochs": 5}}})
    before = _fingerprints(cfg)
    assert cfg.student.unet_width == 32
    cfg.student.unet_width = 16
    after = _fingerprints(cfg)
    assert after["student"] != before["student"]  # another network: trained again
    assert {s: after[s] for s in ("teacher", "synthesize")} == \
        {s: before[s] for s in ("teacher", "synthesize")}


def test_sections_of_the_cnn_default_read_as_they_were_meant() -> None:
    # a U-Net section without the width: 32, the only U-Net of the versions before the key
    cfg, messages = _read_old({"student": {"architecture": "unet", "from_scratch": True}})
    assert (cfg.student.architecture, cfg.student.unet_width, messages) == ("unet", 32, [])
    # a section that picks a timm backbone but no architecture meant the CNN student
    cfg, messages = _read_old({"student": {"backbone": "resnet10t"}})
    assert cfg.student.architecture == "conv" and cfg.student.backbone == "resnet10t"
    assert messages == [
        "config: the student section sets a 'backbone' but no architecture: read as the CNN "
        "student (architecture: conv), the default before the U-Net student; set "
        "'student.architecture' (unet, the default, conv or vit_tiny) to choose, and silence "
        "this warning"]
    # a section naming neither gets today's default, the U-Net student of width 16
    cfg, messages = _read_old({"student": {"train": {"epochs": 3}}})
    assert (cfg.student.architecture, cfg.student.unet_width, messages) == ("unet", 16, [])


def test_a_unet_student_saved_before_the_width_key_loads_at_width_32(tmp_path: Path) -> None:
    import json

    import torch

    from tskd.inference import bundle
    from tskd.models.student import build_student

    torch.manual_seed(0)
    s = build_student(StudentConfig(architecture="unet", unet_width=32), 2, 64).eval()
    bundle.save_student(s, tmp_path / "s", {})
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["student"]["unet_width"]  # as versions before the key wrote it
    meta_path.write_text(json.dumps(meta))
    loaded, _ = bundle.load_student(tmp_path / "s")  # weights of width 32 fit
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), s(x), atol=1e-6)
