"""The transfer set's synthetic part: a small DDPM trained on the task's images, sampled by DDIM.

The transfer set augmented with diffusion samples is the TS-KD paper's (Fig. 1, top); the model
is a DDPM (Ho et al. 2020) sampled with DDIM (Song et al. 2021) through ``diffusers``.

Diffusion models trained on a few hundred images memorise many of them, so every sample is
screened against its nearest training image (and that image's mirror, since training flips) and
near-copies are dropped; the share dropped is reported. Outputs in ``out_dir``:
``synthetic_NNNN.png`` (NNNN = sample index; gaps are dropped samples), ``manifest.json`` and
``synth_report.json``; the EMA model goes to ``model_dir`` (default ``out_dir/../diffusion``).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tskd import atomic, distributed
from tskd.config import SYNTH_EPOCH_STEPS, SynthConfig, to_dict
from tskd.config_compat import flat_synth
from tskd.engine import CancelToken, ProgressCallback, RunControl, resolve_device
from tskd.models.diffusion import (
    SAMPLE_STAGE,
    batch_to_uint8,
    check_resolution,
    ddim_sample,
    load_diffusion_model,
    prepare_images,
    read_diffusion_meta,
    save_model,
)
from tskd.training.diffusion import TRAIN_STAGE, data_fingerprint, train_ddpm

__all__ = [
    "SAMPLE_STAGE",
    "TRAIN_STAGE",
    "SynthReport",
    "nearest_training",
    "sample_from_saved",
    "screen_near_copies",
    "synthesize",
]

_PNG = re.compile(r"synthetic_\d{4,}\.png")


@dataclass
class SynthReport:
    """What ``synthesize`` produced; ``to_dict`` is JSON-able (written as synth_report.json)."""

    n_generated: int
    n_kept: int
    n_dropped: int
    share_dropped: float
    paths: list[str]
    train_seconds: float
    sample_seconds: float
    threshold: float
    distances: list[float]  # per generated sample: distance to its nearest training image
    distance_quantiles: dict[str, float]  # min, p05, p25, median, p75, p95, max
    train_steps: int = 0  # optimiser steps done by this call (0 when a saved model was reused)
    model_dir: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a plain dict (``dataclasses.asdict``), JSON-able."""
        return asdict(self)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Flattened rows with zero mean and unit norm (constant images become zero rows)."""
    x = x.reshape(x.shape[0], -1).double()
    x = x - x.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 1e-12, x / norm.clamp_min(1e-12), torch.zeros_like(x))


def nearest_training(
    samples: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray, mirror: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the index of its nearest training image and the distance to it.

    Distance: L2 between zero-mean, unit-norm flattened images, so it is insensitive to
    brightness and contrast; 0 is a copy, about sqrt(2) unrelated, 2 a negative.

    Args:
        samples: (N, C, H, W) or (N, H, W) images, any float or integer dtype and range.
        train: (M, ...) training images of the samples' shape.
        mirror: Each training image's horizontal mirror (last axis flipped) counts as that
            image (training flips).

    Returns:
        int64 (N,) indices into ``train`` and float64 (N,) distances in [0, 2]; empty for no
        sample.

    Raises:
        ValueError: the samples' and training images' shapes differ.
    """
    s, t = torch.as_tensor(samples), torch.as_tensor(train)
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"samples {tuple(s.shape)} and training images {tuple(t.shape)} differ")
    a = _unit_rows(s.float())
    candidates = [_unit_rows(t.float())]
    if mirror:
        candidates.append(_unit_rows(t.float().flip(-1)))
    best_d2 = None
    best_idx = None
    for b in candidates:
        d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2.0 * a @ b.T
        d2_min, idx = d2.min(dim=1)
        if best_d2 is None:
            best_d2, best_idx = d2_min, idx
        else:
            better = d2_min < best_d2
            best_d2 = torch.where(better, d2_min, best_d2)
            best_idx = torch.where(better, idx, best_idx)
    dist = best_d2.clamp(0.0, 4.0).sqrt()
    return best_idx.numpy().astype(np.int64), dist.numpy().astype(np.float64)


def screen_near_copies(
    samples: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find the near-copies among ``samples``: closer than ``threshold`` to a training image.

    Args:
        samples: (N, C, H, W) or (N, H, W) images (``nearest_training``).
        train: Training images of the samples' shape.
        threshold: Distance in [0, 2] (``SynthConfig.near_copy_threshold``).

    Returns:
        bool (N,) keep mask (distance >= ``threshold``), int64 (N,) nearest training index and
        float64 (N,) distance, mirrors included.

    Raises:
        ValueError: the shapes differ.
    """
    idx, dist = nearest_training(samples, train)
    return dist >= threshold, idx, dist


def _quantiles(d: np.ndarray) -> dict[str, float]:
    if d.size == 0:
        return {}
    qs = {"min": 0, "p05": 5, "p25": 25, "median": 50, "p75": 75, "p95": 95, "max": 100}
    return {k: float(np.percentile(d, q)) for k, q in qs.items()}


def _model_fingerprint(cfg: SynthConfig, data_fp: str) -> dict[str, Any]:
    # what a saved model depends on (not the device, nor how many images are sampled), with
    # the keys of the flat synth section of earlier versions (flat_synth), so their saved
    # models are still reused
    # the global batch: a model trained on 2 processes x 2 is one of 1 x 4
    flat = flat_synth(to_dict(cfg), cfg.train.total_steps(SYNTH_EPOCH_STEPS),
                      distributed.world_size())
    keys = ("resolution", "base_channels", "train_steps", "batch_size", "lr", "ema_decay", "seed",
            "train")
    return {k: flat[k] for k in keys if k in flat} | {"data": data_fp}


def _model(train_images: torch.Tensor, cfg: SynthConfig, fp: str, model_dir: Path,
           control: RunControl) -> tuple[Any, dict[str, Any], list[dict[str, float]], float, int]:
    # the EMA UNet: the saved one when resuming with the same images and settings, else
    # trained and saved; returns (unet, scheduler config, history, train seconds, steps)
    meta = read_diffusion_meta(model_dir)
    if control.resume and meta is not None and meta.get("fingerprint") == fp:
        unet, sched_config = load_diffusion_model(model_dir)
        return unet, sched_config, [], 0.0, 0
    unet, scheduler, result = train_ddpm(train_images, cfg, control)
    save_model(unet, scheduler, model_dir, {
        "fingerprint": fp, "channels": int(train_images.shape[1]),
        "resolution": cfg.resolution, "n_train_images": len(train_images),
        "history": result.history, "train_seconds": result.seconds,
    })
    return unet, dict(scheduler.config), result.history, result.seconds, result.steps


def _write_kept(samples: torch.Tensor, keep: np.ndarray, idx: np.ndarray, dist: np.ndarray,
                out_dir: Path, out_size: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    # the kept samples as PNGs (paths, manifest entries); every new image is written in full
    # before any old one is replaced or removed: a full disk keeps the previous transfer set
    from imageio.v3 import imwrite

    arrays = batch_to_uint8(samples[torch.from_numpy(keep)], out_size)
    paths, files = [], []
    encoded: dict[Path, bytes] = {}
    for k, arr in zip(np.flatnonzero(keep), arrays):
        path = out_dir / f"synthetic_{k:04d}.png"
        encoded[path] = imwrite("<bytes>", arr, extension=".png")
        paths.append(str(path))
        files.append({"file": path.name, "source": "synthetic", "sample": int(k),
                      "nearest_train_index": int(idx[k]), "nearest_distance": float(dist[k])})
    atomic.mkdir(out_dir)
    atomic.write_files(encoded)
    for old in out_dir.iterdir():  # a previous run's samples would break count == kept
        if _PNG.fullmatch(old.name) and old not in encoded:
            old.unlink()
    return paths, files


def _report(cfg: SynthConfig, keep: np.ndarray, idx: np.ndarray, dist: np.ndarray,
            paths: list[str], files: list[dict[str, Any]], out_dir: Path, out_size: int | None,
            model_dir: Path, history: list[dict[str, float]], train_seconds: float,
            sample_seconds: float, steps_done: int) -> SynthReport:
    # the stage's report and the transfer set's manifest.json, both written to out_dir
    dropped = [{"sample": int(k), "nearest_train_index": int(idx[k]),
                "nearest_distance": float(dist[k])} for k in np.flatnonzero(~keep)]
    n = int(cfg.n_images)
    report = SynthReport(
        n_generated=n, n_kept=len(paths), n_dropped=n - len(paths),
        share_dropped=(n - len(paths)) / n if n else 0.0, paths=paths,
        train_seconds=train_seconds, sample_seconds=sample_seconds,
        threshold=cfg.near_copy_threshold, distances=[float(d) for d in dist],
        distance_quantiles=_quantiles(dist), train_steps=steps_done,
        model_dir=str(model_dir), history=history,
    )
    atomic.write_json(out_dir / "manifest.json", {
        "files": files, "dropped": dropped,
        "screen": {"metric": "L2 of zero-mean unit-norm images, mirrors included, in [0, 2]",
                   "resolution": cfg.resolution, "threshold": cfg.near_copy_threshold},
        "model_dir": str(model_dir), "out_size": out_size or cfg.resolution,
        "seed": cfg.train.seed,
    })
    atomic.write_json(out_dir / "synth_report.json", report.to_dict())
    return report


def synthesize(
    images: list[np.ndarray],
    cfg: SynthConfig,
    out_dir: str | Path,
    control: RunControl | None = None,
    *,
    model_dir: str | Path | None = None,
    out_size: int | None = None,
) -> SynthReport:
    """Train a DDPM on ``images``, sample ``cfg.n_images``, drop near-copies, write PNGs.

    Args:
        images: The task's images, each (H, W) or (H, W, C), any dtype (resized to
            ``cfg.resolution``, ``tskd.models.diffusion.prepare_images``).
        cfg: The stage's settings (``synth``: model, sampling, screening, ``train``).
        out_dir: Where the PNGs, ``manifest.json`` and ``synth_report.json`` go.
        control: Its ``progress`` is called with ``Progress`` during training and sampling,
            its ``cancel`` checked before every training and sampling step; with ``resume``,
            training goes on from ``checkpoint_dir`` (the engine's checkpoint, EMA included),
            and a finished model already in ``model_dir`` for the same images and settings is
            reused without training. None: ``RunControl()``.
        model_dir: Where the EMA model is saved; None: ``out_dir/../diffusion``.
        out_size: Upscale the kept samples (bicubic) from ``cfg.resolution`` to this side in
            pixels; None keeps ``cfg.resolution``.

    Returns:
        The report, also written as ``synth_report.json``.

    Raises:
        TskdInputError: no image, one that is not (H, W) or (H, W, C), or a bad
            ``resolution`` or ``base_channels``.
        CheckpointError: a saved model to reuse is damaged.
        Cancelled: ``control.cancel`` was set (resumable from ``control.checkpoint_dir``).
        DiskFullError: the disk filled; the previous transfer set is kept as it was.
    """
    out_dir = Path(out_dir)
    model_dir = Path(model_dir) if model_dir is not None else out_dir.parent / "diffusion"
    control = control if control is not None else RunControl()
    check_resolution(cfg.resolution)
    train_images = prepare_images(images, cfg.resolution)
    fp = _model_fingerprint(cfg, data_fingerprint(train_images))

    unet, sched_config, history, train_seconds, steps_done = _model(
        train_images, cfg, fp, model_dir, control)
    t0 = time.perf_counter()
    samples = ddim_sample(unet, sched_config, cfg.n_images, cfg.sample_steps, cfg.train.seed,
                          resolve_device(cfg.train.device), control.progress, control.cancel)
    sample_seconds = time.perf_counter() - t0

    keep, idx, dist = screen_near_copies(samples, train_images, cfg.near_copy_threshold)
    paths, files = _write_kept(samples, keep, idx, dist, out_dir, out_size)
    return _report(cfg, keep, idx, dist, paths, files, out_dir, out_size, model_dir,
                   history, train_seconds, sample_seconds, steps_done)


def sample_from_saved(
    model_dir: str | Path,
    n: int,
    steps: int = 25,
    seed: int = 0,
    *,
    device: str = "auto",
    out_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[np.ndarray]:
    """Sample ``n`` more images from a model ``synthesize`` saved, with DDIM.

    Not screened: pass them with the training images to ``nearest_training`` to do so.

    Args:
        model_dir: The saved model's folder (``synthesize``'s ``model_dir``).
        n: Images to sample.
        steps: DDIM steps (``SynthConfig.sample_steps``' default, 25).
        seed: Seed of the initial noise.
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
        out_size: Upscale to this side in pixels; None keeps the model's resolution.
        progress: Called with ``Progress`` per step.
        cancel: Checked before every step.

    Returns:
        ``n`` uint8 images, (H, W) gray or (H, W, 3).

    Raises:
        CheckpointError: the model's files are missing, damaged or foreign.
        TskdInputError: ``steps`` is below 1.
        Cancelled: ``cancel`` was set.
    """
    unet, sched_config = load_diffusion_model(model_dir)
    x = ddim_sample(unet, sched_config, n, steps, seed, resolve_device(device), progress, cancel)
    return batch_to_uint8(x, out_size)
