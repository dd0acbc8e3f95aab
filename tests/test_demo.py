"""`tskd demo` end to end with tiny models: four methods scored, report.json shape, report.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_setup import TINY_SIZE, tiny_config, write_tiny_sam
from tskd.apps import demo
from tskd.config import RunConfig, from_dict


def _tiny_demo_config(monkeypatch: pytest.MonkeyPatch, sam: str) -> None:
    """Make ``run_demo`` build tiny models (``tiny_setup``) with the demo's data folders."""

    def tiny_demo_config(data_root: Path, run_dir: Path, budget: demo.Budget, seed: int,
                         teacher: str = "mini", checkpoint: str | None = None,
                         device: str = "auto", teacher_size: int | None = None,
                         counts: tuple[int, int] | None = None) -> RunConfig:
        cfg = from_dict(RunConfig, tiny_config(data_root, sam, run_dir))
        assert teacher_size is None  # run_demo passes the default through
        cfg.data.test = None
        if counts is not None and counts[1] == 0:  # a user's folder without unlabelled/
            cfg.data.unlabelled = None
        cfg.synth.train.seed = seed
        return cfg

    monkeypatch.setattr(demo, "demo_config", tiny_demo_config)


def test_demo_writes_report_of_the_documented_shape(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sam = write_tiny_sam(tmp_path / "sam" / "tiny.safetensors")
    _tiny_demo_config(monkeypatch, sam)
    report = demo.run_demo(task="kidney_us", n_labels=3, seed=1, budget="tiny",
                           out=tmp_path / "demo", device="cpu", check_pretraining=True)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert {"task", "n_labels", "seed", "methods"} <= set(saved)
    assert saved["task"] == "kidney_us" and saved["n_labels"] == 3 and saved["seed"] == 1
    assert set(saved["methods"]) == {"unet", "scratch", "task_agnostic_kd", "ts_kd",
                                     "vit_scratch", "vit_task_agnostic_kd", "vit_ts_kd",
                                     "teacher"}
    for m in saved["methods"].values():
        assert {"dice_mean", "dice_std", "hd95_mean", "hd95_std", "params", "ms_per_image",
                "speck_share", "seconds"} <= set(m)
        assert 0.0 <= m["dice_mean"] <= 1.0 and m["params"] > 0 and m["ms_per_image"] > 0
        assert 0.0 <= m["speck_share"] <= 1.0 and m["seconds"] > 0
    # the students of one architecture share it; the CNN, the ViT and the U-Net differ
    params = {k: v["params"] for k, v in saved["methods"].items()}
    assert params["scratch"] == params["task_agnostic_kd"] == params["ts_kd"]
    assert params["vit_scratch"] == params["vit_task_agnostic_kd"] == params["vit_ts_kd"]
    assert len({params["ts_kd"], params["vit_ts_kd"], params["unet"]}) == 3
    assert params["unet"] == 1_979_042  # MONAI BasicUNet, 3 input channels, 2 classes
    ts_kd = saved["methods"]["ts_kd"]["stage_seconds"]
    assert set(ts_kd) == {"teacher", "synthesize", "distill", "student"}
    assert saved["methods"]["teacher"]["seconds"] == ts_kd["teacher"]
    assert set(saved["methods"]["scratch"]["stage_seconds"]) == {"student"}
    # the U-Net had the TS-KD pipeline's wall-clock, and no more than one step beyond it
    assert saved["methods"]["unet"]["seconds"] <= saved["methods"]["ts_kd"]["seconds"] + 5.0
    assert "| U-Net student (width 16), TS-KD |" in report["table"]
    assert "| U-Net baseline (MONAI BasicUNet, width 32) |" in report["table"]
    assert saved["default_student"]["architecture"] == "conv"  # tiny_config's student
    check = saved["pretraining_check"]["random_init_all_trained"]
    assert 0.0 <= check["dice_mean"] <= 1.0 and check["trainable_params"] > 0
    assert saved["teacher_input_size"] == TINY_SIZE
    # which weights the teacher was: reports of different teachers are told apart
    from tskd.models.mini_sam_files import read_mini_config
    from tskd.models.sam_checkpoint import sha256_of

    identity = saved["teacher_weights"]
    assert identity["checkpoint"] == Path(sam).name
    assert identity["sha256"] == sha256_of(sam)[:12]
    assert identity["token_grid"] == TINY_SIZE // read_mini_config(sam).patch_size
    assert f"{identity['token_grid']}x{identity['token_grid']} tokens" in (
        tmp_path / "demo" / "report.md").read_text()
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "Pretraining check" in md
    assert "examples.png" in md and (tmp_path / "demo" / "examples.png").is_file()


def test_demo_config_teacher_size() -> None:
    b = demo.BUDGETS["tiny"]
    assert demo.demo_config(Path("d"), Path("r"), b, 0).teacher.input_size == 128  # mini native
    assert demo.demo_config(Path("d"), Path("r"), b, 0, "vit_b").teacher.input_size == 512
    assert demo.demo_config(Path("d"), Path("r"), b, 0, teacher_size=256).teacher.input_size == 256


def test_random_init_baseline_is_drawn_from_the_run_seed(tmp_path: Path) -> None:
    """Re-runs of the pretraining check start from the same weights, whatever came before."""
    import torch

    from tskd.apps.pretraining_check import random_init_model

    cfg = from_dict(RunConfig, tiny_config(tmp_path, write_tiny_sam(tmp_path / "sam.safetensors"),
                                           tmp_path / "run"))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = random_init_model(cfg, 2).state_dict()
    assert torch.rand(1) == before  # drawn from a forked generator
    torch.manual_seed(999)
    second = random_init_model(cfg, 2).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    cfg.teacher.train.seed += 1
    third = random_init_model(cfg, 2).state_dict()
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_full_fine_tuning_starts_from_the_pretrained_weights_every_parameter_trainable(
        tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from tskd.apps.pretraining_check import random_init_model

    sam = write_tiny_sam(tmp_path / "sam.safetensors")
    cfg = from_dict(RunConfig, tiny_config(tmp_path, sam, tmp_path / "run"))
    saved = load_file(str(sam))
    full = random_init_model(cfg, 2, pretrained=True)
    weights = {f"sam.{k}": v for k, v in saved.items()}
    state = full.state_dict()
    assert set(weights) <= set(state)  # every pretrained tensor is in the model ...
    # ... as saved (position tables are resampled to the run's input size)
    same = [k for k in weights if state[k].shape == weights[k].shape]
    assert len(same) >= len(weights) - 4
    assert all(torch.equal(state[k], weights[k]) for k in same)
    cfg.teacher.train.seed = 7  # the tiny SAM file was drawn from seed 0, as the run's is
    scratch = random_init_model(cfg, 2).state_dict()
    drawn = [k for k in same if k.endswith(("qkv.weight", "proj.weight"))]
    assert drawn and not any(torch.equal(scratch[k], weights[k]) for k in drawn)
    assert all(p.requires_grad for p in full.parameters())


def test_converged_budget_scores_every_stage_every_50_steps(tmp_path: Path) -> None:
    images = tmp_path / "train" / "images"
    images.mkdir(parents=True)
    for i in range(10):
        (images / f"{i}.png").write_bytes(b"")
    b = demo.BUDGETS["converged"]
    cfg = demo.demo_config(tmp_path, tmp_path / "run", b, 0)
    assert cfg.data.val_fraction == 0.2  # 2 of the 10 labels decide when stages stop
    # 8 training images in batches of 4: 2 steps an epoch -> every 25 epochs; the transfer
    # set (100 unlabelled + 8 + 100 synthetic) in batches of 8: 26 steps -> every 2 epochs
    assert (cfg.teacher.train.val_every, cfg.student.train.val_every) == (25, 25)
    assert cfg.distill.train.val_every == 2
    assert {cfg.teacher.train.patience, cfg.distill.train.patience,
            cfg.student.train.patience} == {4}
    assert cfg.synth.train.patience is None
    assert (cfg.teacher.train.max_seconds, cfg.distill.train.max_seconds) == (90.0, 120.0)
    small = demo.demo_config(tmp_path, tmp_path / "run", demo.BUDGETS["small"], 0)
    assert small.student.train.patience is None and small.data.val_fraction == 0.0


def test_the_cnn_student_comes_on_request_beside_the_default_unet_student(
        tmp_path: Path) -> None:
    from tskd.apps.demo_methods import BASELINE_UNET_WIDTH, SHARED, demo_runs
    from tskd.config import StudentConfig

    (tmp_path / "train" / "images").mkdir(parents=True)
    for i in range(10):
        (tmp_path / "train" / "images" / f"{i}.png").touch()
    base = demo.demo_config(tmp_path, Path("out/ts_kd"), demo.BUDGETS["converged"], 0)
    assert not demo.BUDGETS["converged"].cnn_students  # ~10 min more per task and seed
    runs = demo_runs(base, Path("out"), cnn_students=True)
    # the default student: the U-Net of width 16, from scratch, task-agnostic KD and TS-KD
    default = StudentConfig()
    assert (default.architecture, default.unet_width) == ("unet", 16)
    for name in ("ts_kd", "scratch", "task_agnostic_kd"):
        s = runs[name].student
        assert (s.architecture, s.unet_width) == ("unet", 16), name
    assert runs["scratch"].student.from_scratch and runs["task_agnostic_kd"].distill.task_agnostic
    cnn, scratch = runs["cnn_ts_kd"].student, runs["cnn_scratch"].student
    assert cnn.architecture == scratch.architecture == "conv"
    assert not cnn.from_scratch and scratch.from_scratch
    agnostic = runs["cnn_task_agnostic_kd"]
    assert agnostic.student.architecture == "conv" and agnostic.distill.task_agnostic
    assert (runs["unet"].student.unet_width == BASELINE_UNET_WIDTH == 32
            and runs["unet"].student.from_scratch)  # the baseline keeps MONAI's default
    assert SHARED["cnn_ts_kd"][0] == "ts_kd"  # the same teacher, transfer set and cache
    assert SHARED["cnn_task_agnostic_kd"][0] == "task_agnostic_kd"  # the same SAM cache
    # the small demo (make demo) stays at its eight methods
    assert "cnn_ts_kd" not in demo_runs(base, Path("out"), demo.BUDGETS["small"].cnn_students)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("with_unlabelled", [True, False])
def test_demo_on_own_data_scores_its_test_images_and_never_writes_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_unlabelled: bool) -> None:
    from tskd.data import phantoms

    sam = write_tiny_sam(tmp_path / "sam" / "tiny.safetensors")
    _tiny_demo_config(monkeypatch, sam)
    mine = tmp_path / "my cells"
    phantoms.write_task_folders("skin_lesion", mine, 4, 3 if with_unlabelled else 0, 5, 72, 3)
    if not with_unlabelled:
        import shutil

        shutil.rmtree(mine / "unlabelled")
    before = _tree(mine)
    report = demo.run_demo(data=mine, budget="tiny", out=tmp_path / "out", device="cpu",
                           task="not a task", n_labels=99)  # both unused with data
    assert report["task"] == "my cells" and report["data"] == str(mine.resolve())
    assert report["n_labels"] == 4 and report["n_test"] == 5
    assert report["n_unlabelled"] == (3 if with_unlabelled else 0)
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{report['n_unlabelled']} unlabelled images" in md
    assert {"unet", "ts_kd", "scratch", "teacher"} <= set(report["methods"])
    assert _tree(mine) == before  # read, never written
    assert not (tmp_path / "out" / "data").exists()  # no sample task was drawn


def test_demo_on_own_data_refuses_a_folder_without_test_and_an_output_inside_it(
        tmp_path: Path) -> None:
    from tskd.errors import TskdInputError

    with pytest.raises(TskdInputError, match="data folder not found"):
        demo.run_demo(data=tmp_path / "d", budget="tiny", out=tmp_path / "out")
    (tmp_path / "d" / "train" / "images").mkdir(parents=True)
    with pytest.raises(TskdInputError, match="no test/ folder"):
        demo.run_demo(data=tmp_path / "d", budget="tiny", out=tmp_path / "out")
    (tmp_path / "d" / "test").mkdir()
    with pytest.raises(TskdInputError, match="--data"):
        demo.run_demo(data=tmp_path / "d", budget="tiny", out=tmp_path / "d" / "runs")
    assert not (tmp_path / "out").exists() and not (tmp_path / "d" / "runs").exists()


def test_demo_on_own_data_counts_its_images_without_warning_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from tskd.data import phantoms

    mine = tmp_path / "mine"
    phantoms.write_task_folders("kidney_us", mine, 3, 0, 2, 64, 0)
    next((mine / "train" / "labels").iterdir()).unlink()  # one image without its label
    seen: list[dict] = []

    def stop(*args: object, **kwargs: object) -> dict:
        seen.append(kwargs)
        return {}

    monkeypatch.setattr(demo, "_run_demo", stop)  # the counting only: no training
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        demo.run_demo(data=mine, budget="tiny", out=tmp_path / "out")
    assert seen[0]["own"][1:] == (2, 0)  # test images, unlabelled images
    # the stages warn about the image without a label when they read the set; counting does not
    assert not [w for w in caught if "no label file" in str(w.message)]
