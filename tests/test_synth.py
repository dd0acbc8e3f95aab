"""tskd.training.synthesize: tiny DDPMs (16 px, 8 base channels, a few steps) so the file runs
in seconds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from imageio.v3 import imread
from safetensors.torch import load_file

from tskd.config import SynthConfig
from tskd.engine import CancelToken, RunControl
from tskd.errors import Cancelled, CheckpointError, TskdInputError, TskdWarning
from tskd.models.diffusion import prepare_images
from tskd.training import diffusion, synthesize

TINY = dict(resolution=16, base_channels=8, train_steps=6, batch_size=4, sample_steps=3,
            n_images=6, lr=2e-3)


def tiny(**kw: object) -> SynthConfig:
    """``TINY`` updated with ``kw``; ``train_steps``, ``batch_size``, ``lr`` and ``seed`` go
    into ``synth.train`` (exactly ``train_steps`` steps, whatever the epoch's size)."""
    d = TINY | kw
    train = {k: d.pop(k) for k in ("batch_size", "lr", "seed") if k in d}
    steps = d.pop("train_steps")
    cfg = SynthConfig(**d)  # type: ignore[arg-type]
    cfg.train = replace(cfg.train, **train, epochs=steps, max_steps=steps)  # type: ignore[arg-type]
    return cfg


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions on two shared, busy cores run several times faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gray_images(n: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((20 + i, 24)) * 255).astype(np.uint8) for i in range(n)]


def _rgb_images(n: int = 4, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((18, 18, 3)) * 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthConfig, object]:
    root = tmp_path_factory.mktemp("gray")
    cfg = tiny(near_copy_threshold=0.0)
    report = synthesize.synthesize(_gray_images(), cfg, root / "synthetic", out_size=24,
                                   control=RunControl(checkpoint_dir=root / "ckpt"))
    return root, cfg, report


def test_files_manifest_and_report_are_written(gray_run) -> None:
    root, cfg, report = gray_run
    out = root / "synthetic"
    pngs = sorted(out.glob("synthetic_*.png"))
    assert report.n_generated == 6 and report.n_kept == 6 and report.n_dropped == 0
    assert report.share_dropped == 0.0  # threshold 0 drops nothing
    assert [Path(p).name for p in report.paths] == [p.name for p in pngs]
    img = imread(pngs[0])
    assert img.dtype == np.uint8 and img.shape == (24, 24)  # gray in, gray out, upscaled
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["file"] for f in manifest["files"]] == [p.name for p in pngs]
    for f in manifest["files"]:
        assert f["source"] == "synthetic" and 0 <= f["nearest_train_index"] < 5
        assert 0.0 <= f["nearest_distance"] <= 2.0
    saved = json.loads((out / "synth_report.json").read_text())
    assert saved["n_kept"] == 6 and len(saved["distances"]) == 6
    assert saved["train_steps"] == 6 and saved["train_seconds"] > 0
    model_dir = root / "diffusion"  # default: beside out_dir
    assert {p.name for p in model_dir.iterdir()} >= {
        "unet.safetensors", "unet_config.json", "scheduler_config.json", "meta.json"}
    assert not (root / "ckpt" / diffusion.EMA_FILE).exists()  # finished: nothing to resume


def test_threshold_two_drops_everything_reusing_the_saved_model(gray_run) -> None:
    root, cfg, first = gray_run
    cfg2 = tiny(near_copy_threshold=2.0)
    report = synthesize.synthesize(_gray_images(), cfg2, root / "synthetic",
                                   RunControl(resume=True, checkpoint_dir=root / "ckpt"))
    assert report.train_steps == 0  # same images and settings: the saved model was reused
    assert report.distances == pytest.approx(first.distances)
    assert report.n_kept == 0 and report.n_dropped == 6 and report.share_dropped == 1.0
    assert not list((root / "synthetic").glob("synthetic_*.png"))  # stale samples removed
    manifest = json.loads((root / "synthetic" / "manifest.json").read_text())
    assert manifest["files"] == [] and len(manifest["dropped"]) == 6


def test_share_dropped_follows_the_threshold(gray_run) -> None:
    root, _, first = gray_run
    d = np.sort(np.array(first.distances))
    thr = float((d[1] + d[2]) / 2)  # exactly two samples are closer than this
    report = synthesize.synthesize(_gray_images(), tiny(near_copy_threshold=thr),
                                   root / "synthetic",
                                   RunControl(resume=True, checkpoint_dir=root / "ckpt"))
    assert report.n_dropped == 2 and report.share_dropped == pytest.approx(2 / 6)
    assert len(list((root / "synthetic").glob("synthetic_*.png"))) == report.n_kept == 4


def test_screen_catches_injected_training_images() -> None:
    train = prepare_images(_gray_images(), 16)
    rng = torch.Generator().manual_seed(0)
    noise = torch.rand((3, *train.shape[1:]), generator=rng) * 2 - 1
    samples = torch.cat([
        noise,
        train[2:3],  # a copy
        train[4:5].flip(-1),  # a mirrored copy (training flips)
        train[0:1] * 0.5 + 0.1,  # a copy with other brightness and contrast
    ])
    keep, idx, dist = synthesize.screen_near_copies(samples, train, threshold=0.1)
    assert keep.tolist() == [True, True, True, False, False, False]
    assert idx[3:].tolist() == [2, 4, 0]
    assert np.all(dist[3:] < 1e-5)
    assert np.all(np.abs(dist[:3] - np.sqrt(2)) < 0.25)  # unrelated images: about sqrt(2)
    _, no_mirror = synthesize.nearest_training(samples, train, mirror=False)
    assert no_mirror[4] > 0.1


def test_same_seed_same_result_other_seed_differs(tmp_path: Path) -> None:
    cfg = tiny(near_copy_threshold=0.0)
    runs = []
    for name, c in (("a", cfg), ("b", cfg), ("c", tiny(seed=1))):
        rep = synthesize.synthesize(_rgb_images(), c, tmp_path / name / "syn",
                               model_dir=tmp_path / name / "model")
        runs.append([imread(p) for p in rep.paths])
    assert runs[0][0].shape == (16, 16, 3)  # RGB in, RGB out
    assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2]))


def _cancel_at(step: int, token: CancelToken):
    def progress(p) -> None:
        if p.stage == synthesize.TRAIN_STAGE and p.step == step:
            token.cancel()
    return progress


@pytest.mark.parametrize("cancel_step", [4, 3])  # mid-epoch, and at an epoch boundary
def test_resume_after_cancel_matches_an_unbroken_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancel_step: int
) -> None:
    monkeypatch.setattr(diffusion, "SYNTH_EPOCH_STEPS", 3)  # engine checkpoints every 3 steps
    cfg = tiny(train_steps=8, near_copy_threshold=0.0)
    images = _gray_images()
    full = synthesize.synthesize(images, cfg, tmp_path / "full" / "syn")
    token = CancelToken()
    with pytest.raises(Cancelled):
        synthesize.synthesize(images, cfg, tmp_path / "cut" / "syn",
                              RunControl(_cancel_at(cancel_step, token), token,
                                         checkpoint_dir=tmp_path / "ck"))
    assert (tmp_path / "ck" / "ckpt" / "extra.safetensors").is_file()  # the EMA, in the unit
    resumed = synthesize.synthesize(images, cfg, tmp_path / "cut" / "syn",
                                    RunControl(resume=True, checkpoint_dir=tmp_path / "ck"))
    assert resumed.train_steps == 8
    a = load_file(str(tmp_path / "full" / "diffusion" / "unet.safetensors"))
    b = load_file(str(tmp_path / "cut" / "diffusion" / "unet.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # EMA weights included, bit for bit
    assert resumed.distances == full.distances


def test_damaged_ema_in_checkpoint_is_discarded_and_training_restarts(tmp_path: Path) -> None:
    cfg = tiny(near_copy_threshold=0.0)
    full = synthesize.synthesize(_gray_images(), cfg, tmp_path / "full" / "syn")
    token = CancelToken()
    with pytest.raises(Cancelled):
        synthesize.synthesize(_gray_images(), cfg, tmp_path / "syn",
                              RunControl(_cancel_at(2, token), token,
                                         checkpoint_dir=tmp_path / "ck"))
    ema = tmp_path / "ck" / "ckpt" / "extra.safetensors"
    data = bytearray(ema.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of the EMA weights: the manifest no longer matches
    ema.write_bytes(bytes(data))
    with pytest.warns(TskdWarning, match="extra.safetensors does not match its sha256"):
        report = synthesize.synthesize(_gray_images(), cfg, tmp_path / "syn",
                                       RunControl(resume=True, checkpoint_dir=tmp_path / "ck"))
    assert report.train_steps == 6  # started over: never a mix of a damaged and a good state
    assert report.distances == full.distances


def test_cancel_while_sampling_then_resume_skips_training(tmp_path: Path) -> None:
    cfg = tiny(near_copy_threshold=0.0)
    token = CancelToken()
    stages: list[str] = []

    def progress(p) -> None:
        stages.append(p.stage)
        if p.stage == synthesize.SAMPLE_STAGE:
            assert p.total == cfg.sample_steps and np.isnan(p.loss)
            token.cancel()

    with pytest.raises(Cancelled, match="sampling"):
        synthesize.synthesize(_gray_images(), cfg, tmp_path / "syn",
                              RunControl(progress, token))
    assert stages.count(synthesize.TRAIN_STAGE) == 6 and synthesize.SAMPLE_STAGE in stages
    report = synthesize.synthesize(_gray_images(), cfg, tmp_path / "syn",
                                   RunControl(resume=True))
    assert report.train_steps == 0 and report.n_kept == 6


def test_loss_decreases_on_a_trivial_dataset(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    cfg = tiny(train_steps=24, batch_size=8, lr=5e-3, n_images=1)
    losses: list[float] = []

    def progress(p) -> None:
        if p.stage == synthesize.TRAIN_STAGE:
            losses.append(p.loss)

    synthesize.synthesize([ramp] * 4, cfg, tmp_path / "syn", RunControl(progress))
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:3])


def test_sample_from_saved(gray_run) -> None:
    root, _, _ = gray_run
    a = synthesize.sample_from_saved(root / "diffusion", n=3, steps=2, seed=5)
    b = synthesize.sample_from_saved(root / "diffusion", n=3, steps=2, seed=5, out_size=32)
    c = synthesize.sample_from_saved(root / "diffusion", n=3, steps=2, seed=6)
    assert len(a) == 3 and a[0].shape == (16, 16) and a[0].dtype == np.uint8
    assert b[0].shape == (32, 32)
    assert np.array_equal(a[0], synthesize.sample_from_saved(root / "diffusion", 1, 2, 5)[0])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(CheckpointError, match="no diffusion model"):
        synthesize.sample_from_saved(root / "nowhere", n=1)


def test_prepare_images_channels_and_ranges() -> None:
    gray16 = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 100)
    x = prepare_images([gray16, gray16.astype(np.float32)], 16)
    assert x.shape == (2, 1, 16, 16)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() - x.min() > 1.5  # window spreads it
    mixed = prepare_images([gray16, _rgb_images(1)[0]], 16)
    assert mixed.shape == (2, 3, 16, 16)  # one colour image makes the set RGB
    with pytest.raises(TskdInputError, match="no training images"):
        prepare_images([], 16)
    with pytest.raises(TskdInputError, match="training image 0"):
        prepare_images([np.zeros(5)], 16)


def test_bad_resolution_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match="synth.resolution"):
        synthesize.synthesize(_gray_images(), tiny(resolution=20), tmp_path)


def test_ema_folds_every_optimiser_step_including_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.training_utils import EMAModel

    from tskd.models.diffusion import build_unet

    images = prepare_images(_gray_images(), 16)

    def trained(decay: float) -> dict[str, torch.Tensor]:
        cfg = tiny(train_steps=4, ema_decay=decay)
        unet, _, _ = diffusion.train_ddpm(images, cfg, RunControl())
        return {k: v.clone() for k, v in unet.state_dict().items()}

    ema_0, ema_995 = trained(0.0), trained(0.995)
    with monkeypatch.context() as m:
        m.setattr(EMAModel, "copy_to", lambda self, params: None)  # keep the raw weights
        raw = trained(0.0)
    torch.manual_seed(0)  # the seed train_ddpm builds its UNet with
    init = build_unet(16, 1, 8).state_dict()
    assert all(torch.allclose(ema_0[k], raw[k]) for k in raw)  # decay 0: the last weights
    assert not all(torch.allclose(ema_995[k], raw[k]) for k in raw)
    assert not all(torch.allclose(ema_995[k], init[k]) for k in raw)
