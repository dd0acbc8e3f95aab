"""Promptable pretraining of the mini SAM on a tiny config: prompts, data, loss, files, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tskd.engine import CancelToken, RunControl
from tskd.errors import Cancelled, TskdInputError
from tskd.models.mini_sam import MiniSamConfig
from tskd.training import pretrain, pretrain_data
from tskd.training.pretrain_config import PretrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ARCH = MiniSamConfig.tiny()


def _cfg(**kw: object) -> PretrainConfig:
    """A tiny pretraining; ``steps``, ``batch_size``, ``lr`` and ``device`` go into ``train``
    (exactly ``steps`` steps)."""
    base = dict(steps=30, batch_size=4, masks_per_image=2, lr=2e-3, image_size=64,
                device="cpu", steps_per_checkpoint=10) | kw
    steps = int(base.pop("steps"))  # type: ignore[call-overload]
    train = {k: base.pop(k) for k in ("batch_size", "lr", "device")}
    cfg = PretrainConfig(**base)  # type: ignore[arg-type]
    cfg.train = replace(cfg.train, **train)  # type: ignore[arg-type]
    cfg.train.set_steps(steps, cfg.steps_per_checkpoint)
    return cfg


def _pretrain(cfg: PretrainConfig, out: object, **kw: object) -> dict:
    return pretrain.pretrain_mini(cfg, out, arch=ARCH, **kw)  # type: ignore[arg-type]


def test_sample_prompts() -> None:
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:30] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 4))
        box, points, labels = pretrain_data.sample_prompts(rng, mask, n)
        assert box.shape == (4,) and box[0] <= box[2] and box[1] <= box[3]
        assert np.all(np.abs(box - [10, 20, 29, 39]) <= 20) and box.min() >= 0 and box.max() <= 63
        assert labels[0] == 1 and (labels[n:] == -1).all() and set(labels[:n]) <= {0, 1}
        for (x, y), lab in zip(points[:n], labels[:n]):
            assert mask[int(y), int(x)] == bool(lab), "positives inside, negatives outside"


def test_dataset_items_are_reproducible() -> None:
    ds = pretrain_data.PromptDataset(length=3, size=64, masks_per_image=2, seed=1)
    torch.manual_seed(0)
    a = ds[1]
    torch.manual_seed(0)
    b = ds[1]
    assert a["image"].shape == (3, 64, 64) and a["masks"].shape == (2, 64, 64)
    assert a["boxes"].shape == (2, 4) and a["points"].shape == (2, 3, 2)
    assert a["labels"].shape == (2, 3) and int(a["mode"]) in (0, 1, 2)
    assert float(a["image"].min()) >= 0 and float(a["image"].max()) <= 1
    assert (a["masks"].flatten(1).sum(1) > 0).all()
    for k in a:
        assert torch.equal(a[k], b[k])


def test_bad_config() -> None:
    with pytest.raises(TskdInputError, match="multiple of the patch size"):
        _pretrain(_cfg(image_size=60), "unused")
    with pytest.raises(TskdInputError):
        _pretrain(_cfg(steps=0), "unused")


def test_pretrain_tiny_writes_loadable_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tskd.models.teacher import SemanticSam, build_sam

    cfg = _cfg(steps=40, lr=5e-3)
    ds = pretrain_data.PromptDataset(8, 64, 2, seed=99)  # a fixed batch the run never sees
    torch.manual_seed(0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    with torch.no_grad():
        before = float(pretrain.build_model(cfg, ARCH)(batch)["loss"])
    losses: list[float] = []
    info = _pretrain(cfg, tmp_path, control=RunControl(lambda p: losses.append(p.loss)),
                                  command="tskd pretrain-mini --steps 40")
    assert len(losses) == 40 and info["steps"] == 40
    weights = tmp_path / "mini_sam.safetensors"
    assert info["weights"] == str(weights) and weights.is_file()
    sd = load_file(str(weights))
    assert all(v.dtype == torch.float16 for v in sd.values())
    meta = json.loads((tmp_path / "mini_sam.json").read_text())
    assert meta["model_type"] == "mini" and meta["config"]["img_size"] == 64
    rec = meta["info"]
    assert rec["command"] == "tskd pretrain-mini --steps 40" and rec["seed"] == 0
    assert rec["steps"] == 40 and rec["final_loss"] > 0 and rec["wall_time_s"] > 0
    assert rec["tskd_version"] and "git_commit" in rec
    assert rec["pretrain_config"]["model"]["embed_dim"] == 32

    sam = build_sam("mini", checkpoint=weights, input_size=64)
    for k, v in sam.state_dict().items():
        assert torch.equal(v, sd[k].to(v.dtype)), k
    fresh = pretrain.build_model(_cfg(), ARCH).sam.state_dict()
    key = "mask_decoder.mask_tokens.weight"
    assert not torch.allclose(fresh[key], sam.state_dict()[key]), "weights were trained"
    with torch.no_grad():
        after = float(pretrain.PromptableSam(sam)(batch)["loss"])
    assert after < before - 0.05, f"the loss on unseen scenes falls ({before:.3f} -> {after:.3f})"
    with torch.no_grad():
        out = SemanticSam(sam, 3)(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_cancel_and_resume_match_an_unbroken_run(tmp_path: Path) -> None:
    cfg = _cfg(steps=8, steps_per_checkpoint=4)
    _pretrain(cfg, tmp_path / "full")
    token = CancelToken()

    def stop_at_6(p: object) -> None:
        if p.step == 6:  # type: ignore[attr-defined]
            token.cancel()

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Cancelled):
        _pretrain(cfg, tmp_path / "cut",
                  control=RunControl(stop_at_6, token, checkpoint_dir=ckpt))
    assert not (tmp_path / "cut" / "mini_sam.safetensors").exists()
    info = _pretrain(cfg, tmp_path / "cut", control=RunControl(resume=True, checkpoint_dir=ckpt))
    assert info["resumed_from_epoch"] == 1 and info["steps"] == 8
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "mini_sam.safetensors"))
    b = load_file(str(tmp_path / "cut" / "mini_sam.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def _cut_at_6(cfg: PretrainConfig, out: Path, ckpt: Path) -> None:
    """Run ``cfg`` into ``out`` and cancel it at step 6 (a checkpoint at step 6 stays)."""
    token = CancelToken()

    def stop_at_6(p: object) -> None:
        if p.step == 6:  # type: ignore[attr-defined]
            token.cancel()

    with pytest.raises(Cancelled):
        _pretrain(cfg, out, control=RunControl(stop_at_6, token, checkpoint_dir=ckpt))


@pytest.mark.parametrize(("change", "named"), [
    ({"scenes": "basic"}, "scenes 'broad-hdr' (this run: 'basic')"),
    ({"image_size": 32}, "image_size 64 (this run: 32)"),
    ({"masks_per_image": 3}, "masks_per_image 2 (this run: 3)"),
])
def test_a_resume_with_other_pretraining_settings_is_refused(
        tmp_path: Path, change: dict, named: str) -> None:
    ckpt = tmp_path / "ckpt"
    _cut_at_6(_cfg(steps=8, steps_per_checkpoint=4, scenes="broad-hdr"), tmp_path / "out", ckpt)
    other = _cfg(steps=8, steps_per_checkpoint=4, **({"scenes": "broad-hdr"} | change))
    with pytest.raises(TskdInputError, match="cannot resume") as err:
        _pretrain(other, tmp_path / "out", control=RunControl(resume=True, checkpoint_dir=ckpt))
    assert named in str(err.value)
    assert not (tmp_path / "out" / "mini_sam.safetensors").exists()


def test_a_resumed_pretraining_records_the_seconds_of_every_piece(tmp_path: Path) -> None:
    from tskd.checkpoint import Checkpoint
    from tskd.training.pretrain_resume import SECONDS_KEY

    cfg, ckpt = _cfg(steps=8, steps_per_checkpoint=4), tmp_path / "ckpt"
    _cut_at_6(cfg, tmp_path / "out", ckpt)
    first = float(Checkpoint(ckpt).extra_metadata()[SECONDS_KEY])  # type: ignore[index]
    assert first > 0
    info = _pretrain(cfg, tmp_path / "out", control=RunControl(resume=True, checkpoint_dir=ckpt))
    assert info["steps"] == 8 and info["resumed_from_epoch"] == 1
    # the record adds the first piece (6 steps) to the second (2 steps)
    assert info["train_seconds"] > round(first, 1)
    saved = json.loads((tmp_path / "out" / "mini_sam.json").read_text())["info"]
    assert saved["train_seconds"] == info["train_seconds"]
    assert saved["machine"]["torch_threads"] == 1
    assert isinstance(saved["machine"]["numpy_simd"], list) and saved["machine"]["cpu"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_resuming_a_finished_pretraining_is_refused(tmp_path: Path, overwrite: bool) -> None:
    cfg, ckpt, out = _cfg(steps=4, steps_per_checkpoint=4), tmp_path / "ckpt", tmp_path / "out"
    _pretrain(cfg, out, control=RunControl(checkpoint_dir=ckpt))
    before = (out / "mini_sam.safetensors").read_bytes()
    with pytest.raises(TskdInputError, match="nothing to resume.*finished pretraining"):
        _pretrain(cfg, out, control=RunControl(resume=True, checkpoint_dir=ckpt),
                  overwrite=overwrite)
    assert (out / "mini_sam.safetensors").read_bytes() == before


def test_resuming_where_there_is_no_checkpoint_says_it_starts_at_step_0(tmp_path: Path) -> None:
    from tskd.errors import TskdWarning

    cfg = _cfg(steps=2, steps_per_checkpoint=2)
    with pytest.warns(TskdWarning, match="no checkpoint in .* training starts at step 0"):
        info = _pretrain(cfg, tmp_path / "typo", control=RunControl(
            resume=True, checkpoint_dir=tmp_path / "typo" / "checkpoints"))
    assert info["steps"] == 2 and info["resumed_from_epoch"] is None


def test_a_fresh_start_never_silently_replaces_an_interrupted_runs_checkpoint(
        tmp_path: Path) -> None:
    from tskd.checkpoint import Checkpoint

    cfg, ckpt, out = _cfg(steps=8, steps_per_checkpoint=4), tmp_path / "ckpt", tmp_path / "out"
    _cut_at_6(cfg, out, ckpt)
    kept = Checkpoint(ckpt).read()
    with pytest.raises(TskdInputError, match="interrupted pretraining: add --resume"):
        _pretrain(cfg, out, control=RunControl(checkpoint_dir=ckpt))
    assert Checkpoint(ckpt).read() == kept  # untouched
    info = _pretrain(cfg, out, control=RunControl(checkpoint_dir=ckpt), overwrite=True)
    assert info["steps"] == 8 and info["resumed_from_epoch"] is None
