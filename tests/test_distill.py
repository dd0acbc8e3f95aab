"""Distillation and the teacher cache, with a tiny fake teacher that follows the model contract."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tskd.training.distill as distill_mod
from tskd.config import DistillConfig, StudentConfig, TrainConfig
from tskd.engine import CancelToken, RunControl, TrainResult
from tskd.errors import Cancelled, TskdInputError
from tskd.models.student import Student
from tskd.training.teacher_cache import TeacherCache

TINY = StudentConfig(architecture="vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8,
                     decoder_channels=16)
S = 32  # student size
TS = 64  # teacher input size (another grid: 8x8 against the student's 4x4)


@pytest.fixture(autouse=True)
def _data_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until ``tskd.data.dataset`` exists, a minimal stand-in with the contract's
    ``image_to_tensor``."""
    try:
        import tskd.data.dataset  # noqa: F401
    except ImportError:
        mod = types.ModuleType("tskd.data.dataset")

        def image_to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
            a = np.asarray(image, dtype=np.float32) / 255.0
            a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
            return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]

        mod.image_to_tensor = image_to_tensor
        monkeypatch.setitem(sys.modules, "tskd.data.dataset", mod)


class FakeTeacher(nn.Module):
    """Conv 'SAM': block0 = 8x8 patch embedding, neck = 1x1 conv, logits upsampled to input."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(123)
        self.embed = nn.Conv2d(3, 24, 8, stride=8)
        self.neck_conv = nn.Conv2d(24, 16, 1)
        self.head = nn.Conv2d(16, num_classes, 1)
        self.feature_dims = {"block0": 24, "neck": 16}
        self.images_seen = 0

    def forward_with_features(
        self, x: torch.Tensor, layers: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.images_seen += x.shape[0]
        b0 = torch.tanh(self.embed(x * 2 - 1))
        neck = self.neck_conv(b0)
        logits = F.interpolate(4 * self.head(neck), size=x.shape[-2:], mode="bilinear")
        feats = {"block0": b0, "neck": neck}
        return logits, {k: feats[k] for k in layers}


class PoolTeacher(nn.Module):
    """A teacher whose outputs commute with flips, to check that augmentation keeps alignment."""

    feature_dims = {"neck": 3}

    def forward_with_features(
        self, x: torch.Tensor, layers: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = x.mean(1, keepdim=True)
        return torch.cat([-m, m], 1) * 4, {"neck": F.avg_pool2d(x, 8)}


def _images(n: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(12, 36), rng.uniform(12, 36), rng.uniform(5, 12)
        img = 60 + 120 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) + rng.normal(0, 10, (48, 48))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _cfg(**kw: object) -> DistillConfig:
    train = TrainConfig(epochs=kw.pop("epochs", 3), batch_size=4, lr=3e-3, seed=0, device="cpu",
                        warmup_fraction=0.0)
    base = dict(teacher_layers=["block0", "neck"], student_layers=["block1", "neck"], train=train)
    return DistillConfig(**(base | kw))


def _student(num_classes: int = 2) -> Student:
    torch.manual_seed(0)
    return Student(TINY, num_classes, S)


def _run(tmp: Path, teacher: nn.Module, cfg: DistillConfig, student: Student | None = None,
         teacher_id: str = "fake-1", **kw: object) -> tuple[TrainResult, Student]:
    student = student or _student()
    result = distill_mod.distill(
        teacher, _images(), cfg, student, teacher_input_size=TS, teacher_id=teacher_id,
        cache_dir=tmp / "cache", **kw,
    )
    return result, student


def test_distillation_loss_falls_and_logs_each_component(tmp_path: Path) -> None:
    teacher = FakeTeacher()
    result, student = _run(tmp_path, teacher, _cfg(epochs=8))
    first, last = result.history[0], result.history[-1]
    for key in ("loss", "feature", "output", "feature_block0", "feature_neck"):
        assert key in last
    assert last["loss"] < 0.7 * first["loss"]
    assert last["feature"] < first["feature"] and last["output"] < first["output"]
    assert not student.training
    assert all(p.requires_grad for p in student.parameters())


def test_teacher_runs_once_per_image_and_cache_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    caches: list[TeacherCache] = []

    class Spy(TeacherCache):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)
            caches.append(self)

    monkeypatch.setattr(distill_mod, "TeacherCache", Spy)
    teacher = FakeTeacher()
    n = len(_images())
    _run(tmp_path, teacher, _cfg(epochs=3))
    assert teacher.images_seen == n  # three epochs, one teacher pass
    assert caches[0].misses == n
    assert caches[0].hits == 3 * n  # every epoch read every image from disk
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == n

    _run(tmp_path, teacher, _cfg(epochs=2))  # another run, same teacher and images
    assert teacher.images_seen == n
    assert caches[1].misses == 0 and caches[1].hits == n + 2 * n


def test_cache_is_invalidated_when_teacher_changes(tmp_path: Path) -> None:
    teacher = FakeTeacher()
    n = len(_images())
    _run(tmp_path, teacher, _cfg(epochs=1), teacher_id="fake-1")
    _run(tmp_path, teacher, _cfg(epochs=1), teacher_id="fake-2")
    assert teacher.images_seen == 2 * n
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2 * n


def test_teacher_cache_unit(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(x.shape[0])
        return {"neck": x.mean(1, keepdim=True) * 1000.0, "logits": x[:, :2]}

    imgs = torch.rand(3, 3, 8, 8)
    cache = TeacherCache(tmp_path, "t", ["neck", "logits"])
    a = cache.get_or_compute(imgs, compute)
    assert calls == [3] and cache.misses == 3 and cache.hits == 0
    assert a["neck"].dtype == torch.float16 and a["neck"].shape == (3, 1, 8, 8)
    b = cache.get_or_compute(imgs[[2, 0]], compute)
    assert calls == [3] and cache.hits == 2
    assert torch.equal(b["neck"][0], a["neck"][2])  # a hit returns exactly what a miss returned
    # another teacher id, other layers or another image give another key
    assert TeacherCache(tmp_path, "u", ["neck", "logits"]).key(imgs[0]) != cache.key(imgs[0])
    assert TeacherCache(tmp_path, "t", ["neck"]).key(imgs[0]) != cache.key(imgs[0])
    assert cache.key(imgs[1]) != cache.key(imgs[0])
    # a damaged file is recomputed, not trusted; no temporary files are left behind
    cache.path(cache.key(imgs[1])).write_bytes(b"garbage")
    cache.get_or_compute(imgs, compute)
    assert calls == [3, 1]
    assert not list(tmp_path.glob("*.tmp"))


def test_task_agnostic_uses_features_only(tmp_path: Path) -> None:
    teacher = FakeTeacher()
    student = _student()
    decoder_before = [p.detach().clone() for p in student.decoder_parameters()]
    result, _ = _run(tmp_path, teacher, _cfg(epochs=2, task_agnostic=True), student)
    assert all("output" not in h for h in result.history)
    assert result.history[-1]["loss"] == pytest.approx(result.history[-1]["feature"])
    from safetensors.torch import load_file

    stored = load_file(str(next((tmp_path / "cache").glob("*.safetensors"))))
    assert set(stored) == {"block0", "neck"}  # no teacher logits cached
    for before, p in zip(decoder_before, student.decoder_parameters()):
        assert torch.equal(before, p.detach())  # nothing trains the decoder without outputs
        assert p.requires_grad  # and it is trainable again for fine-tuning


def test_flips_keep_teacher_maps_aligned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[object] = []

    def fake_train(task: object, cfg: object, **kw: object) -> TrainResult:
        captured.append(task)
        return TrainResult([], 0, 0.0)

    monkeypatch.setattr(distill_mod, "train", fake_train)
    # the region views and jitter are tests/test_transfer_views.py's; here the flips alone
    monkeypatch.setattr(distill_mod, "augmented_view", lambda x, t: (x, t))
    cfg = _cfg(teacher_layers=["neck"], student_layers=["neck"])
    distill_mod.distill(PoolTeacher(), _images(), cfg, _student(), teacher_input_size=S,
                        teacher_id="pool", cache_dir=tmp_path)
    data = captured[0].dataset()
    from tskd.data.dataset import image_to_tensor

    flipped = 0
    torch.manual_seed(0)
    for _ in range(4):
        for i in range(len(data)):
            item = data[i]
            x, t = item["image"], item["teacher"]
            flipped += not torch.equal(x, image_to_tensor(_images()[i], S))
            assert torch.allclose(t["neck"].float(), F.avg_pool2d(x[None], 8)[0], atol=2e-3)
            assert torch.allclose(t["logits"][1].float(), 4 * x.mean(0), atol=1e-2)
    assert flipped > 0


def test_resume_gives_the_same_student(tmp_path: Path) -> None:
    cfg = _cfg(epochs=2)
    _, straight = _run(tmp_path / "a", FakeTeacher(), cfg)

    token = CancelToken()

    def stop_after_three(p: object) -> None:
        if getattr(p, "stage", "") == "distill" and p.step == 3:
            token.cancel()

    ckpt = tmp_path / "b" / "ckpt"
    with pytest.raises(Cancelled):
        _run(tmp_path / "b", FakeTeacher(), cfg,
             control=RunControl(stop_after_three, token, checkpoint_dir=ckpt))
    result, resumed = _run(tmp_path / "b", FakeTeacher(), cfg,
                           control=RunControl(resume=True, checkpoint_dir=ckpt))
    assert result.resumed_from_epoch == 1
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)  # bit for bit


def test_two_student_layers_may_match_one_teacher_layer(tmp_path: Path) -> None:
    cfg = _cfg(epochs=1, teacher_layers=["neck", "neck"], student_layers=["block0", "neck"],
               feature_loss="smooth_l1")
    result, _ = _run(tmp_path, FakeTeacher(), cfg)
    assert {"feature_block0_to_neck", "feature_neck_to_neck"} <= set(result.history[-1])


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match="same number"):
        _run(tmp_path, FakeTeacher(), _cfg(teacher_layers=["neck"]))
    with pytest.raises(TskdInputError, match="block9"):
        _run(tmp_path, FakeTeacher(), _cfg(teacher_layers=["block9", "neck"]))
    with pytest.raises(TskdInputError, match="3 classes"):
        _run(tmp_path, FakeTeacher(num_classes=3), _cfg())
    with pytest.raises(TskdInputError, match="feature_loss"):
        _run(tmp_path, FakeTeacher(), _cfg(feature_loss="l2"))
    with pytest.raises(TskdInputError, match="empty"):
        distill_mod.distill(
            FakeTeacher(), [], _cfg(), _student(), TS, "x", tmp_path)
