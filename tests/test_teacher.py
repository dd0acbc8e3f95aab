"""The teacher: build/load, prompt-free semantic head, LoRA, merge, adapters, fine-tuning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tskd.config import LoraSettings, TeacherConfig, TrainConfig
from tskd.engine import RunControl
from tskd.errors import CheckpointError
from tskd.models import teacher as teacher_model
from tskd.models.lora import apply_lora, is_lora, load_teacher, merge_lora, save_teacher, teacher_id
from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
from tskd.models.mini_sam_files import json_path, save_mini_sam
from tskd.models.teacher import SemanticSam, build_sam
from tskd.training.teacher import TeacherTask, finetune_teacher

LORA = LoraSettings(rank=2, alpha=4.0)


def _tiny_sam(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    sam = build_mini_sam(MiniSamConfig.tiny())
    with torch.no_grad():  # non-trivial weights: zero-initialised tables would hide mistakes
        for p in sam.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sam.eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny SAM saved like the built-in mini weights (safetensors + JSON), fp32."""
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    return save_mini_sam(_tiny_sam(), MiniSamConfig.tiny(), path, half=False)


def _semantic(ckpt: Path, size: int = 64, classes: int = 3) -> SemanticSam:
    return SemanticSam(build_sam("mini", ckpt, size), classes)


def _x(size: int = 64, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_build_sam_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(CheckpointError, match="vit_b needs a checkpoint.*download_checkpoint"):
        build_sam("vit_b")
    with pytest.raises(CheckpointError, match="unknown SAM model type 'vit_q'"):
        build_sam("vit_q")
    monkeypatch.setattr(teacher_model, "BUILTIN_WEIGHTS", tmp_path / "mini_sam.safetensors")
    with pytest.raises(CheckpointError, match="tskd pretrain-mini"):
        build_sam("mini")
    with pytest.raises(CheckpointError, match="multiple of the patch size"):
        build_sam("mini", pretrained=False, input_size=100)


def test_random_mini_for_pretraining() -> None:
    sam = build_sam("mini", pretrained=False, input_size=64)
    assert sam.image_encoder.img_size == 64
    assert sam.prompt_encoder.image_embedding_size == (4, 4)
    assert sam.tskd_source == {"model_type": "mini", "checkpoint": None}


def test_official_format_pth_loads_through_the_checkpoint_path(tmp_path) -> None:
    """A tiny SAM state dict saved as .pth (official key names) loads like a real checkpoint."""
    sam = _tiny_sam(seed=3)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    json_path(path).write_text(json.dumps({"config": MiniSamConfig.tiny().to_dict()}))
    loaded = build_sam("mini", path, 64)
    assert loaded.tskd_source["checkpoint"] == str(path.resolve())
    a, b = SemanticSam(sam, 3).eval(), SemanticSam(loaded, 3).eval()
    with torch.no_grad():
        assert torch.equal(a(_x()), b(_x()))
    # without the JSON the architecture is inferred from shapes, with a warning
    json_path(path).unlink()
    with pytest.warns(UserWarning, match="inferred from its shapes"):
        build_sam("mini", path, 64)


@pytest.mark.parametrize(("size", "grid"), [(32, 4), (128, 16)])
def test_resolution_adaptation_shapes(tiny_ckpt: Path, size: int, grid: int) -> None:
    model = _semantic(tiny_ckpt, size).eval()
    sam = model.base
    assert model.input_size == size
    assert sam.prompt_encoder.image_embedding_size == (grid, grid)
    assert sam.prompt_encoder.input_image_size == (size, size)
    assert sam.image_encoder.blocks[1].attn.rel_pos_h.shape[0] == 2 * grid - 1  # global block
    assert sam.image_encoder.blocks[0].attn.rel_pos_h.shape[0] == 7  # window 4 kept
    with torch.no_grad():
        logits, feats = model.forward_with_features(_x(size), ["block0", "block1", "neck"])
    assert logits.shape == (2, 3, size, size) and torch.isfinite(logits).all()
    assert feats["block1"].shape == (2, 32, grid, grid)
    assert feats["neck"].shape == (2, 32, grid, grid)


def test_semantic_sam_head_and_features(tiny_ckpt: Path) -> None:
    model = _semantic(tiny_ckpt, classes=5).eval()
    tokens = model.base.mask_decoder.mask_tokens.weight
    assert torch.equal(model.class_tokens[4], tokens[0])  # 5 classes cycle over 4 tokens
    assert model.feature_dims == {"block0": 32, "block1": 32, "neck": 32}
    with torch.no_grad():
        logits, feats = model.forward_with_features(_x(), ["neck", "block0"])
        plain = model(_x())
        other_size = model(_x(48))
        neck = model.base.image_encoder(model.base.preprocess(_x() * 255))
    assert list(feats) == ["neck", "block0"]
    assert torch.equal(logits, plain)
    assert torch.allclose(feats["neck"], neck, atol=1e-6)  # normalised as SAM does, 0-255 scale
    assert other_size.shape == (2, 5, 48, 48)
    assert all(not b._forward_hooks for b in model.base.image_encoder.blocks)  # hooks removed
    with pytest.raises(ValueError, match="unknown teacher feature"):
        model.forward_with_features(_x(), ["block9"])


def _train_steps(model: SemanticSam, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    target = torch.randint(0, 3, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(_x()), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_lora_trains_only_adapters_and_heads_and_merges_exactly(tiny_ckpt: Path) -> None:
    model = apply_lora(_semantic(tiny_ckpt), LORA)
    assert is_lora(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".attn.qkv.lora_A" in n for n in trainable)
    assert any("q_proj.lora_B" in n for n in trainable)
    assert any("v_proj.lora_A" in n for n in trainable)
    assert not any("k_proj.lora" in n or "out_proj.lora" in n for n in trainable)
    heads = {n for n in trainable if "lora_" not in n}
    assert heads and all(
        n == "class_tokens" or n.startswith("class_mlps.") or ".output_upscaling." in n
        for n in heads
    )
    _train_steps(model)
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        # every LoRA/head tensor moved; every base weight is bit-identical
        assert changed == (n in trainable), n
    x = _x(seed=7)
    with torch.no_grad():
        unmerged = model(x)
        merged_model = merge_lora(model)
        merged = merged_model(x)
    assert type(merged_model.sam).__name__ == "Sam" and not is_lora(merged_model)
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    assert torch.allclose(unmerged, merged, atol=1e-5)


def test_train_decoder_trains_the_whole_decoder_and_round_trips(tiny_ckpt: Path, tmp_path) -> None:
    settings = LoraSettings(rank=2, alpha=4.0, train_decoder=True)
    model = apply_lora(_semantic(tiny_ckpt), settings)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    plain = {n for n in trainable if "lora_" not in n}  # trained in full
    assert any(".mask_decoder.transformer." in n for n in plain)  # not only its LoRA matrices
    assert not any(".image_encoder." in n for n in plain)
    _train_steps(model, 2)
    with torch.no_grad():
        expected = model(_x())
    folder = tmp_path / "teacher"
    save_teacher(model, folder, {"lora": settings})
    assert json.loads((folder / "meta.json").read_text())["lora"]["train_decoder"] is True
    with torch.no_grad():
        assert torch.allclose(load_teacher(folder)(_x()), expected, atol=1e-5)


def test_save_load_teacher_and_id(tiny_ckpt: Path, tmp_path) -> None:
    model = apply_lora(_semantic(tiny_ckpt), LORA)
    _train_steps(model, 2)
    with torch.no_grad():
        expected = model(_x())
    folder = tmp_path / "teacher"
    save_teacher(model, folder, {"lora": LORA, "class_names": ["bg", "a", "b"]})
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["model_type"] == "mini" and meta["checkpoint"] == str(tiny_ckpt.resolve())
    assert meta["num_classes"] == 3 and meta["input_size"] == 64 and meta["lora"]["rank"] == 2
    assert len(meta["checkpoint_sha256"]) == 64
    adapter_bytes = (folder / "adapter.safetensors").stat().st_size
    assert adapter_bytes < 0.5 * tiny_ckpt.stat().st_size  # LoRA + heads only

    loaded = load_teacher(folder)
    assert not loaded.training and not is_lora(loaded)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.allclose(loaded(_x()), expected, atol=1e-5)

    tid = teacher_id(folder)
    assert tid == teacher_id(folder) and len(tid) == 16
    other = tmp_path / "other"
    save_teacher(apply_lora(_semantic(tiny_ckpt), LORA), other, {"lora": LORA})
    assert teacher_id(other) != tid

    # a different base file at the recorded path is refused
    changed = tmp_path / "changed.safetensors"
    save_mini_sam(_tiny_sam(seed=9), MiniSamConfig.tiny(), changed, half=False)
    with pytest.raises(CheckpointError, match="changed.safetensors .* is not the one"):
        load_teacher(folder, checkpoint=changed)
    with pytest.raises(CheckpointError, match="no adapted teacher"):
        load_teacher(tmp_path / "empty")


def _samples(n: int, size: int = 40) -> list:
    """Images with a bright disc (class 1) and a dark square (class 2)."""
    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = np.zeros((size, size), np.int64)
        cy, cx = rng.integers(10, size - 10, 2)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 1
        label[:8, :8] = 2
        image = (rng.random((size, size)) * 60 + 100 * (label == 1)).astype(np.uint8)
        out.append(_Sample(f"s{i}", image, label))
    return out


@dataclass
class _Sample:
    name: str
    image: np.ndarray
    label: np.ndarray | None


class _PrivateDataset(torch.utils.data.Dataset):
    """Stand-in for tskd.data.dataset.LabelledDataset while it does not exist."""

    def __init__(self, samples: list, size: int, augment: bool) -> None:
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.samples[i]
        img = torch.from_numpy(s.image).float().div(255)[None, None].repeat(1, 3, 1, 1)
        lab = torch.from_numpy(s.label)[None, None].float()
        f = torch.nn.functional.interpolate
        return {
            "image": f(img, size=(self.size,) * 2, mode="bilinear")[0],
            "label": f(lab, size=(self.size,) * 2, mode="nearest")[0, 0].long(),
        }


def test_finetune_teacher_end_to_end(tiny_ckpt: Path, tmp_path, monkeypatch) -> None:
    try:
        from tskd.data.dataset import LabelledDataset  # noqa: F401
    except ImportError:
        from tskd.training import teacher as teacher_train

        monkeypatch.setattr(teacher_train, "_dataset", _PrivateDataset)
    cfg = TeacherConfig(
        model_type="mini",
        checkpoint=str(tiny_ckpt),
        input_size=32,
        lora=LORA,
        train=TrainConfig(epochs=1, batch_size=2, lr=1e-2, max_steps=2, device="cpu"),
    )
    seen = []
    metrics = finetune_teacher(
        cfg, _samples(4), _samples(2), 3, tmp_path / "out",
        RunControl(seen.append, checkpoint_dir=tmp_path / "ckpt"),
        class_names=["bg", "disc", "square"],
    )
    assert metrics["steps"] == 2 and [p.step for p in seen if p.preview is None] == [1, 2]
    assert seen[-1].preview["labels"].shape == (32, 32)  # the last epoch's preview
    assert 0.0 <= metrics["val_dice"] <= 1.0 and len(metrics["val_dice_per_class"]) == 2
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["class_names"] == ["bg", "disc", "square"] and meta["input_size"] == 32
    assert meta["metrics"]["val_dice"] == metrics["val_dice"]
    loaded = load_teacher(tmp_path / "out")
    with torch.no_grad():
        assert loaded(_x(32)).shape == (2, 3, 32, 32)


def test_teacher_dice_ignores_background_unless_asked() -> None:
    """An all-background answer to a thin target costs the full Dice term by default."""
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, :, 15] = 1  # a one-pixel line: 3% of the pixels
    all_background = torch.zeros(2, 2, 32, 32)
    all_background[:, 0] = 10.0
    batch = {"image": torch.zeros(2, 3, 32, 32), "label": label}

    def dice_term(include_background: bool) -> float:
        cfg = TeacherConfig(dice_weight=1.0, dice_include_background=include_background)
        task = TeacherTask(lambda _x: all_background, [], cfg, augment=False)
        return float(task.step(task.model, batch)["loss"])

    assert dice_term(False) == pytest.approx(1.0, abs=1e-3)
    assert dice_term(True) == pytest.approx(0.5, abs=0.02)  # background Dice ~1 halves it


def test_builtin_mini_weights_round_trip(tiny_ckpt: Path, tmp_path, monkeypatch) -> None:
    from tskd.models import lora as teacher_lora

    monkeypatch.setattr(teacher_model, "BUILTIN_WEIGHTS", tiny_ckpt)
    monkeypatch.setattr(teacher_model, "BUILTIN_JSON", json_path(tiny_ckpt))
    monkeypatch.setattr(teacher_lora, "BUILTIN_WEIGHTS", tiny_ckpt)
    sam = build_sam("mini", input_size=64)
    assert sam.tskd_source == {"model_type": "mini", "checkpoint": "builtin"}
    model = apply_lora(SemanticSam(sam, 2), LORA)
    save_teacher(model, tmp_path / "t", {"lora": LORA})
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["checkpoint"] == "builtin"
    with torch.no_grad():
        assert torch.allclose(load_teacher(tmp_path / "t")(_x()), model(_x()), atol=1e-5)
