"""The one training engine: progress, cancel, checkpoint, exact resume, seeds."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from ckpt_kill import _Data
from tskd.config import TrainConfig
from tskd.engine import CancelToken, Progress, RunControl, train
from tskd.errors import Cancelled, TskdError
from tskd.training.preview import SegmentationPreview


class _Task:
    name = "toy"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)

    def dataset(self) -> torch.utils.data.Dataset:
        return _Data()

    def step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}


CFG = TrainConfig(epochs=3, batch_size=4, lr=0.05, device="cpu")


def test_loss_falls_and_progress_is_reported() -> None:
    reports: list[Progress] = []
    result = train(_Task(), CFG, control=RunControl(progress=reports.append))
    assert result.steps == 24 and len(reports) == 24
    assert reports[-1].step == reports[-1].total == 24
    assert reports[-1].eta_s == pytest.approx(0.0, abs=1e-6)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_same_seed_same_weights() -> None:
    a, b = _Task(), _Task()
    train(a, CFG)
    train(b, CFG)
    assert torch.equal(a.model.weight, b.model.weight)


def test_cancel_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    ref = _Task()
    train(ref, CFG)
    task, token = _Task(), CancelToken()

    def stop_at_13(p: Progress) -> None:
        if p.step == 13:
            token.cancel()

    with pytest.raises(Cancelled, match="13/24"):
        train(task, CFG, control=RunControl(stop_at_13, token, checkpoint_dir=tmp_path))
    assert (tmp_path / "ckpt" / "trainable.safetensors").is_file()
    assert (tmp_path / "ckpt" / "manifest.json").is_file()
    resumed = _Task()
    result = train(resumed, CFG, control=RunControl(resume=True, checkpoint_dir=tmp_path))
    assert result.resumed_from_epoch == 1
    assert torch.equal(resumed.model.weight, ref.model.weight)
    assert not (tmp_path / "ckpt").exists()  # finished: nothing to resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        train(_Task(), CFG, control=RunControl(cancel=token, checkpoint_dir=tmp_path))
    other = TrainConfig(epochs=4, batch_size=4, lr=0.01, device="cpu", seed=1)
    with pytest.raises(TskdError, match="other training settings") as err:
        train(_Task(), other, control=RunControl(resume=True, checkpoint_dir=tmp_path))
    # each setting that differs is named, the checkpoint's value first
    assert "epochs 3 (this run: 4); lr 0.05 (this run: 0.01); seed 0 (this run: 1)" in str(
        err.value)
    assert "images per step" not in str(err.value)  # the global batch is the same


def test_resume_on_another_device_setting_goes_on(tmp_path: Path) -> None:
    """A checkpoint moves between devices: ``device`` is not a setting a resume must share."""
    token = CancelToken()

    def stop_at_2(p: object) -> None:
        if p.step == 2:  # type: ignore[attr-defined]
            token.cancel()

    with pytest.raises(Cancelled):
        train(_Task(), CFG, control=RunControl(stop_at_2, token, checkpoint_dir=tmp_path))
    moved = _Task()
    result = train(moved, replace(CFG, device="auto"),  # the CPU here, named otherwise
                   control=RunControl(resume=True, checkpoint_dir=tmp_path))
    ref = _Task()
    assert result.steps == train(ref, CFG).steps
    assert torch.equal(moved.model.weight, ref.model.weight)


def test_max_steps_caps_training() -> None:
    cfg = TrainConfig(epochs=10, batch_size=4, lr=0.05, device="cpu", max_steps=5)
    assert train(_Task(), cfg).steps == 5


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:x"])
def test_an_unknown_device_is_a_clear_error(device: str) -> None:
    with pytest.raises(TskdError, match=f"unknown device '{device}'; choose auto, cpu, cuda"):
        train(_Task(), TrainConfig(device=device))


def test_unavailable_device_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TskdError, match="no CUDA GPU"):
        train(_Task(), TrainConfig(device="cuda"))


class _BNTask(_Task):
    name = "toy-bn"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))


def test_resume_restores_running_statistics(tmp_path: Path) -> None:
    ref = _BNTask()
    train(ref, CFG)
    task, token = _BNTask(), CancelToken()

    def stop_at_10(p: Progress) -> None:
        if p.step == 10:
            token.cancel()

    with pytest.raises(Cancelled):
        train(task, CFG, control=RunControl(stop_at_10, token, checkpoint_dir=tmp_path))
    resumed = _BNTask()
    train(resumed, CFG, control=RunControl(resume=True, checkpoint_dir=tmp_path))
    assert torch.equal(resumed.model[1].running_mean, ref.model[1].running_mean)
    assert torch.equal(resumed.model[2].weight, ref.model[2].weight)


class _SegTask:
    """A 1x1-conv segmenter on a prepared LabelledDataset (augmented, as the stages train)."""

    name = "seg"

    def __init__(self) -> None:
        import numpy as np

        from tskd.data.dataset import LabelledDataset
        from tskd.data.samples import Sample

        rng = np.random.default_rng(0)
        samples = []
        for i in range(4):
            image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            samples.append(Sample(f"s{i}", image, (image > 127).astype(np.uint8)))
        self.data = LabelledDataset(samples, 32, augment=True)
        torch.manual_seed(0)
        self.model = nn.Conv2d(3, 2, 1)

    def dataset(self) -> torch.utils.data.Dataset:
        return self.data

    def step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.cross_entropy(model(batch["image"]), batch["label"])}


def test_previews_show_the_first_image_and_change_nothing() -> None:
    import numpy as np

    reports: list[Progress] = []
    cfg = TrainConfig(epochs=3, batch_size=2, lr=0.1, device="cpu")
    with_preview, without = _SegTask(), _SegTask()
    train(with_preview, cfg, control=RunControl(progress=reports.append),
          callbacks=[SegmentationPreview(reports.append)])
    train(without, cfg)
    previews = [r.preview for r in reports if r.preview is not None]
    assert previews, "the last epoch always sends a preview"
    last = previews[-1]
    assert last["image"].shape == (32, 32, 3) and last["image"].dtype == np.uint8
    assert last["labels"].shape == (32, 32) and last["labels"].dtype == np.uint8
    expected = (with_preview.data.images[0][0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(last["image"][..., 0], expected)  # the un-augmented first image
    assert torch.equal(with_preview.model.weight, without.model.weight)  # no random draw
    assert with_preview.model.training is False  # train() leaves the model in eval mode


def test_no_preview_without_prepared_images() -> None:
    reports: list[Progress] = []
    train(_Task(), CFG, control=RunControl(progress=reports.append))
    assert all(r.preview is None for r in reports)
