"""`tskd run` end to end on a tiny task, stage skipping, and the run-folder guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_setup import tiny_config, write_config, write_tiny_sam, write_tiny_task
from tskd.apps.cli import main
from tskd.config import RunConfig, from_dict
from tskd.data import files
from tskd.errors import RunFolderError
from tskd.pipeline.manifest import record_files
from tskd.pipeline.run_folder import prepare_run_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    data = write_tiny_task(root / "data")
    sam = write_tiny_sam(root / "sam" / "tiny_sam.safetensors")
    cfg = tiny_config(data, sam, root / "run")
    config = write_config(root / "run.yaml", cfg)
    return {"root": root, "data": data, "sam": sam, "cfg": cfg, "config": config}


def test_run_end_to_end_then_skips_done_stages(tiny: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--config", str(tiny["config"])]) == 0
    run = Path(tiny["cfg"]["run_dir"])
    for f in ("config.yaml", "teacher/adapter.safetensors", "teacher/meta.json",
              "transfer/manifest.json", "distilled/model.safetensors", "student/model.safetensors",
              "student/meta.json", "reports/pipeline.json"):
        assert (run / f).is_file(), f
    assert list(run.glob("cache/**/*.safetensors")), "teacher outputs were cached"
    capsys.readouterr()

    # a second run with the same inputs skips every stage
    assert main(["run", "--config", str(tiny["config"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(result[s].get("skipped") for s in ("teacher", "synthesize", "distill", "student"))

    # the student's predictions have the input's shape, also for a larger gray image
    out = tiny["root"] / "pred"
    image = files.read_image(next((tiny["data"] / "test" / "images").iterdir()))
    big = np.pad(image, ((0, 37), (0, 11)))
    files.write_image(tiny["root"] / "big" / "big.png", big)
    assert main(["predict", "--model", str(run / "student"), str(tiny["data"] / "test" / "images"),
                 str(tiny["root"] / "big" / "big.png"), "-o", str(out)]) == 0
    pred = files.read_label(next(out.glob("big.*")))
    assert pred.shape == big.shape
    assert main(["evaluate", "--pred", str(out), "--gt", str(tiny["data"] / "test" / "labels"),
                 "-o", str(tiny["root"] / "metrics")]) == 0
    assert (tiny["root"] / "metrics" / "metrics.csv").is_file()


def test_changed_student_budget_reruns_only_the_student(tiny: dict,
                                                        capsys: pytest.CaptureFixture) -> None:
    cfg = json.loads(json.dumps(tiny["cfg"]))
    cfg["run_dir"] = str(tiny["root"] / "run2")
    config = write_config(tiny["root"] / "run2.yaml", cfg)
    assert main(["run", "--config", str(config)]) == 0
    cfg["student"]["train"]["lr"] = 2e-3
    write_config(config, cfg)
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["teacher"].get("skipped") and result["distill"].get("skipped")
    assert not result["student"].get("skipped")


def test_config_of_a_run_without_results_may_change(tmp_path: Path) -> None:
    a = from_dict(RunConfig, {"run_dir": str(tmp_path / "r"), "data": {"labelled": "x"}})
    prepare_run_dir(a)  # e.g. a first attempt that failed on a wrong path
    b = from_dict(RunConfig, {"run_dir": str(tmp_path / "r"), "data": {"labelled": "y"}})
    prepare_run_dir(b)


def test_run_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    a = from_dict(RunConfig, {"run_dir": str(tmp_path / "r"), "data": {"labelled": "x"}})
    prepare_run_dir(a)
    (tmp_path / "r" / "teacher").mkdir()
    (tmp_path / "r" / "teacher" / "stage.json").write_text("{}")
    record_files(tmp_path / "r", [tmp_path / "r" / "teacher"])  # as a finished stage does
    b = from_dict(RunConfig, {"run_dir": str(tmp_path / "r"), "data": {"labelled": "y"}})
    with pytest.raises(RunFolderError, match="different run"):
        prepare_run_dir(b)
    prepare_run_dir(b, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    c = from_dict(RunConfig, {"run_dir": str(tmp_path / "other")})
    with pytest.raises(RunFolderError, match="not a tskd run folder"):
        prepare_run_dir(c)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_stage_killed_after_writing_its_weights_is_not_taken_as_done(
        tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between its new weights and its stage.json, a stage must run again even when the
    user goes back to the inputs the old stage.json was made from."""
    from tskd.pipeline import stages
    from tskd.training import teacher

    raw = json.loads(json.dumps(tiny["cfg"])) | {"run_dir": str(tiny["root"] / "killed")}
    cfg = from_dict(RunConfig, raw)
    prepare_run_dir(cfg)
    assert not stages.stage_teacher(cfg).get("skipped")
    adapter = Path(cfg.run_dir) / "teacher" / "adapter.safetensors"
    first = adapter.read_bytes()

    raw2 = json.loads(json.dumps(raw))
    raw2["teacher"]["train"]["seed"] = 7  # other inputs: other weights
    real = teacher.finetune_teacher

    def killed_after_writing(*args: object, **kwargs: object) -> dict:
        real(*args, **kwargs)
        raise RuntimeError("killed before stage.json")

    monkeypatch.setattr(teacher, "finetune_teacher", killed_after_writing)
    with pytest.raises(RuntimeError, match="killed before stage.json"):
        stages.stage_teacher(from_dict(RunConfig, raw2))
    assert adapter.read_bytes() != first  # the new weights are on disk ...
    assert not (adapter.parent / "stage.json").exists()  # ... and no marker vouches for them
    monkeypatch.undo()
    again = stages.stage_teacher(cfg)  # back to the first inputs: trained again, not skipped
    assert not again.get("skipped")
    assert adapter.read_bytes() == first  # same seed, same weights (bit for bit on the CPU)


def test_resume_refuses_a_checkpoint_made_from_other_inputs(
        tiny: dict, tmp_path: Path) -> None:
    """A teacher cancelled on one labelled set must not be resumed on another one."""
    from tskd.data.phantoms import write_task_folders
    from tskd.engine import CancelToken
    from tskd.errors import Cancelled
    from tskd.pipeline import stages

    raw = json.loads(json.dumps(tiny["cfg"])) | {"run_dir": str(tmp_path / "run")}
    raw["teacher"]["train"] = raw["teacher"]["train"] | {"epochs": 3}
    cfg = from_dict(RunConfig, raw)
    prepare_run_dir(cfg)
    token = CancelToken()

    def stop(p: object) -> None:
        if p.step >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        stages.stage_teacher(cfg, progress=stop, cancel=token)
    ckpts = Path(cfg.run_dir) / "checkpoints" / "teacher"
    assert (ckpts / "ckpt" / "manifest.json").is_file()

    other = write_task_folders("skin_lesion", tmp_path / "other", 4, 1, 1, size=64, seed=3)
    raw_other = json.loads(json.dumps(raw))
    raw_other["data"]["labelled"] = str(other / "train")
    with pytest.raises(RunFolderError, match="made from other inputs"):
        stages.stage_teacher(from_dict(RunConfig, raw_other), resume=True)
    assert (ckpts / "ckpt" / "manifest.json").is_file()  # the refusal keeps the checkpoint
    result = stages.stage_teacher(cfg, resume=True)  # the same inputs resume
    assert not result.get("skipped")


def test_full_disk_at_the_final_write_keeps_the_training(
        tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills when the student is written: its finished training is kept, and
    --resume writes the same student without training again."""
    from tskd.errors import DiskFullError
    from tskd.inference import bundle
    from tskd.pipeline import stages

    raw = json.loads(json.dumps(tiny["cfg"])) | {"run_dir": str(tmp_path / "run")}
    raw["student"]["from_scratch"] = True
    cfg = from_dict(RunConfig, raw)
    prepare_run_dir(cfg)
    real = bundle.save_student

    def full(*args: object, **kwargs: object) -> None:
        raise DiskFullError("no space left on student, 1 MB needed")

    monkeypatch.setattr(bundle, "save_student", full)
    with pytest.raises(DiskFullError):
        stages.stage_finetune_student(cfg)
    ckpt = Path(cfg.run_dir) / "checkpoints" / "student" / "ckpt"
    assert (ckpt / "manifest.json").is_file()  # the finished training survives
    monkeypatch.setattr(bundle, "save_student", real)
    steps: list[int] = []
    result = stages.stage_finetune_student(cfg, resume=True,
                                             progress=lambda p: steps.append(p.step))
    assert not result.get("skipped") and steps == []  # written, not trained again
    assert not ckpt.exists()  # cleared once the student is on disk
    from safetensors.torch import load_file

    resumed = load_file(Path(cfg.run_dir) / "student" / "model.safetensors")

    raw2 = json.loads(json.dumps(raw)) | {"run_dir": str(tmp_path / "straight")}
    cfg2 = from_dict(RunConfig, raw2)
    prepare_run_dir(cfg2)
    stages.stage_finetune_student(cfg2)
    straight = load_file(Path(cfg2.run_dir) / "student" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # bit for bit


def test_a_unet_student_is_distilled_then_fine_tuned(tiny: dict, tmp_path: Path) -> None:
    """TS-KD into MONAI's U-Net: its bottleneck matched to the teacher, then the labels."""
    import copy

    from tskd.inference.bundle import load_student

    cfg = copy.deepcopy(tiny["cfg"])
    cfg["run_dir"] = str(tmp_path / "run")
    cfg["student"] |= {"architecture": "unet", "unet_width": 4}
    assert main(["run", "--config", str(write_config(tmp_path / "run.yaml", cfg))]) == 0
    student, meta = load_student(tmp_path / "run" / "student")
    assert meta["student"]["architecture"] == "unet" and meta["student"]["unet_width"] == 4
    distilled = json.loads((tmp_path / "run" / "distilled" / "meta.json").read_text())
    assert distilled["student"]["architecture"] == "unet"
    # the distilled weights are where fine-tuning started: not the random initialisation
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "distilled" / "model.safetensors")
    torch.manual_seed(0)
    from tskd.config import StudentConfig
    from tskd.models.student import build_student

    fresh = build_student(StudentConfig(architecture="unet", unet_width=4), 2, 64)
    name = "net.down_4.convs.conv_0.conv.weight"
    assert name in weights and not torch.equal(weights[name], fresh.state_dict()[name])
    assert student.feature_dims["neck"] == 32
