"""Student fine-tuning: the loss falls, validation Dice is reported, head reset, resume."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tskd.config import StudentConfig, TrainConfig
from tskd.engine import CancelToken, RunControl
from tskd.errors import Cancelled, TskdInputError
from tskd.models.student import Student
from tskd.training.finetune import finetune_student, validate

S = 32


def _tiny(epochs: int = 6, lr: float = 1e-2) -> StudentConfig:
    return StudentConfig(
        embed_dim=32, depth=2, num_heads=2, patch_size=8, decoder_channels=16,
        train=TrainConfig(epochs=epochs, batch_size=4, lr=lr, device="cpu", warmup_fraction=0.0),
    )


@dataclass
class _Sample:  # the contract's tskd.data.samples.Sample
    name: str
    image: np.ndarray
    label: np.ndarray | None


@pytest.fixture(autouse=True)
def _data_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until ``tskd.data.dataset`` exists, a minimal stand-in (no augmentation) with the
    contract's API."""
    try:
        import tskd.data.dataset  # noqa: F401
    except ImportError:
        mod = types.ModuleType("tskd.data.dataset")

        def image_to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
            a = np.asarray(image, dtype=np.float32) / 255.0
            a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
            return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]

        def label_to_tensor(label: np.ndarray, size: int) -> torch.Tensor:
            t = torch.from_numpy(np.asarray(label, dtype=np.float32))[None, None]
            return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].long()

        class LabelledDataset(torch.utils.data.Dataset):
            def __init__(self, samples: list, size: int, augment: bool) -> None:
                self.samples, self.size = samples, size

            def __len__(self) -> int:
                return len(self.samples)

            def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
                s = self.samples[i]
                return {"image": image_to_tensor(s.image, self.size),
                        "label": label_to_tensor(s.label, self.size)}

        mod.image_to_tensor, mod.label_to_tensor = image_to_tensor, label_to_tensor
        mod.LabelledDataset = LabelledDataset
        mod.num_classes = lambda samples: max(2, max(int(s.label.max()) for s in samples) + 1)
        monkeypatch.setitem(sys.modules, "tskd.data.dataset", mod)


def _samples(n: int, seed: int = 0, classes: int = 2) -> list[_Sample]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    out = []
    for i in range(n):
        cy, cx, r = rng.uniform(10, 22, 2).tolist() + [rng.uniform(4, 8)]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        label = disk.astype(np.int64)
        if classes > 2:
            label[disk & (xx > cx)] = 2
        img = 50 + 150 * disk + 40 * (label == 2) + rng.normal(0, 12, (S, S))
        out.append(_Sample(f"s{i}", np.clip(img, 0, 255).astype(np.uint8), label))
    return out


def _student(num_classes: int = 2, cfg: StudentConfig | None = None) -> Student:
    torch.manual_seed(0)
    return Student(cfg or _tiny(), num_classes, S)


def test_finetune_reduces_loss_and_reports_dice() -> None:
    cfg = _tiny(epochs=10)
    student = _student(2, cfg)
    result, metrics = finetune_student(student, _samples(8), _samples(4, seed=1), cfg, S)
    first, last = result.history[0], result.history[-1]
    assert {"loss", "dice_loss", "ce"} <= set(last)
    assert last["loss"] < 0.8 * first["loss"]
    assert set(metrics) == {"dice", "dice_per_class", "n_images"}
    assert metrics["n_images"] == 4 and len(metrics["dice_per_class"]) == 1
    assert 0.3 < metrics["dice"] <= 1.0  # a bright disk is learnable in 20 steps
    assert not student.training


def test_no_validation_gives_empty_metrics_and_head_grows() -> None:
    cfg = _tiny(epochs=1)
    student = _student(2, cfg)  # e.g. a task-agnostic student built for two classes
    _, metrics = finetune_student(student, _samples(4, classes=3), [], cfg, S)
    assert metrics == {}
    assert student.num_classes == 3
    with torch.no_grad():
        assert student(torch.rand(1, 3, S, S)).shape == (1, 3, S, S)


def test_validate_dice_policy_on_a_perfect_model() -> None:
    """Perfect predictions give Dice 1, also on an image whose label is empty (both empty)."""

    class Oracle(nn.Module):
        num_classes = 2

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = (x[:, :1] > 0.5).float()
            return torch.cat([1 - fg, fg], 1) * 10 + self.w

    samples = _samples(3)
    empty = np.full((S, S), 40, np.uint8)
    samples.append(_Sample("empty", empty, np.zeros((S, S), np.int64)))
    metrics = validate(Oracle(), samples, S)  # type: ignore[arg-type]
    assert metrics["dice"] == pytest.approx(1.0)
    assert metrics["n_images"] == 4


def test_resume_via_checkpoint_dir(tmp_path: Path) -> None:
    cfg = _tiny(epochs=2)
    train, val = _samples(8), []
    straight = _student(2, cfg)
    finetune_student(straight, train, val, cfg, S)

    token = CancelToken()

    def stop(p: object) -> None:
        if p.step == 3:
            token.cancel()

    resumed = _student(2, cfg)
    with pytest.raises(Cancelled):
        finetune_student(resumed, train, val, cfg, S,
                         RunControl(stop, token, checkpoint_dir=tmp_path))
    resumed = _student(2, cfg)  # a fresh process would start from the stage's input again
    result, _ = finetune_student(resumed, train, val, cfg, S,
                                 RunControl(resume=True, checkpoint_dir=tmp_path))
    assert result.resumed_from_epoch == 1
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)  # bit for bit


def test_user_errors() -> None:
    cfg = _tiny(epochs=1)
    with pytest.raises(TskdInputError, match="no labelled"):
        finetune_student(_student(2, cfg), [], [], cfg, S)
    unlabelled = [_Sample("u", np.zeros((S, S), np.uint8), None)]
    with pytest.raises(TskdInputError, match="needs a label"):
        finetune_student(_student(2, cfg), _samples(2) + unlabelled, [], cfg, S)
    with pytest.raises(TskdInputError, match="built for 32x32"):
        finetune_student(_student(2, cfg), _samples(2), [], cfg, 64)


def test_early_stopping_ends_with_the_best_validation_dice_and_says_so() -> None:
    cfg = _tiny(epochs=40)
    cfg.train.patience, cfg.train.val_every = 2, 1
    student = _student(2, cfg)
    val = _samples(4, seed=1)
    result, metrics = finetune_student(student, _samples(8), val, cfg, S)
    scores = [h["val_score"] for h in result.history]
    assert len(scores) == len(result.history) < 40  # stopped before its 40 epochs
    assert result.stopped is not None and "not improved in 2 evaluations" in result.stopped
    # the student ends with the weights of its best epoch (the last gain of more than
    # min_delta = 1e-3, named in the message), whose Dice validate() reproduces
    best = int(result.stopped.split("(epoch ")[1].split(")")[0]) - 1
    assert metrics["dice"] == pytest.approx(scores[best], abs=1e-6)
    assert 0.0 <= max(scores) - scores[best] <= 1e-3  # later gains were smaller than min_delta
    assert best == len(scores) - 3


def test_without_validation_images_patience_changes_nothing() -> None:
    cfg = _tiny(epochs=3)
    cfg.train.patience = 1
    result, metrics = finetune_student(_student(2, cfg), _samples(4), [], cfg, S)
    assert len(result.history) == 3 and result.stopped is None and metrics == {}
