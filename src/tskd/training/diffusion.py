"""Training the DDPM of stage 2 (``tskd.training.synthesize``) through the project's engine,
with a resumable EMA.

All randomness of a step (flip, noise, timestep) is drawn in the dataset, which the engine's
loader still walks through for the batches it skips on resume; so a resumed run sees the same
noise as an unbroken one and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tskd.config import SynthConfig, TrainConfig
from tskd.engine import CancelToken, ProgressCallback, TrainResult, seed_everything, train
from tskd.errors import TskdError, TskdWarning
from tskd.models.diffusion import NUM_TRAIN_TIMESTEPS, build_train_scheduler, build_unet

TRAIN_STAGE = "synthesize-train"
EMA_FILE = "ema.safetensors"  # beside the checkpoint in the earlier layout; now inside it
_STEPS_PER_EPOCH = 50  # the engine checkpoints once per epoch: every 50 steps at most


def train_config(cfg: SynthConfig) -> TrainConfig:
    """The engine settings for ``cfg``: epochs of at most 50 steps, stopping at train_steps."""
    if cfg.train_steps < 1 or cfg.batch_size < 1:
        raise TskdError(
            f"synth.train_steps and synth.batch_size must be at least 1, got "
            f"{cfg.train_steps} and {cfg.batch_size}"
        )
    spe = steps_per_epoch(cfg)
    return TrainConfig(
        epochs=math.ceil(cfg.train_steps / spe),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=0.0,
        warmup_fraction=0.05,
        seed=cfg.seed,
        device=cfg.device,
        mixed_precision="auto",
        grad_clip=1.0,
        max_steps=cfg.train_steps,
    )


def steps_per_epoch(cfg: SynthConfig) -> int:
    return max(1, min(cfg.train_steps, _STEPS_PER_EPOCH))


def data_fingerprint(images: torch.Tensor) -> str:
    """Hash of the prepared training images: a checkpoint must not resume on other data."""
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]


class NoisedImages(Dataset):
    """Cycles the training images; each item carries its own flip, noise and timestep.

    Its length is one engine epoch (batch_size x steps per epoch), whatever the number of images.
    """

    def __init__(self, images: torch.Tensor, length: int) -> None:
        self.images = images
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.images[i % len(self.images)]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)  # horizontal mirror only: vertical flips break e.g. ultrasound sectors
        return {
            "image": x,
            "noise": torch.randn_like(x),
            "t": torch.randint(0, NUM_TRAIN_TIMESTEPS, ()),
        }


@dataclass
class DdpmTask:
    """The engine's view of DDPM training: noise-prediction MSE, plus the EMA kept beside it."""

    model: nn.Module
    images: torch.Tensor
    cfg: SynthConfig
    ema: Any
    calls: int = 0  # step() calls so far == optimiser steps the engine has taken before this one
    checkpoint_dir: Path | None = None
    data_fp: str = ""
    name: str = TRAIN_STAGE

    def __post_init__(self) -> None:
        self.noise_scheduler = build_train_scheduler()
        self.spe = steps_per_epoch(self.cfg)

    def dataset(self) -> Dataset:
        return NoisedImages(self.images, self.cfg.batch_size * self.spe)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.ema_catch_up(model)
        self.calls += 1
        x0, noise, t = batch["image"], batch["noise"], batch["t"]
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = model(noisy, t).sample
        return {"loss": F.mse_loss(pred.float(), noise.float())}

    def ema_catch_up(self, model: nn.Module) -> None:
        """Fold the current weights into the EMA if an optimiser step happened since the last fold.

        The engine calls ``optimizer.step()`` only after ``step()`` returns, so the weights seen at
        the start of call k are those after k optimiser steps: the EMA absorbs them here, one
        call late, and once more after training (``finish``). At an engine checkpoint (every
        epoch, and on cancel) the EMA has absorbed every step but the last, and ``calls`` equals
        the engine's step; both are saved in the checkpoint (``checkpoint_state``), so a resumed
        run folds the same weights in the same order as an unbroken one.
        """
        params = list(model.parameters())
        if self.ema.shadow_params and self.ema.shadow_params[0].device != params[0].device:
            self.ema.to(device=params[0].device)
        if self.calls > self.ema.optimization_step:
            self.ema.step(params)

    def finish(self) -> None:
        """Fold in the weights after the last optimiser step."""
        self.ema_catch_up(self.model)

    # -- persistence inside the engine's checkpoint (one atomic unit with the weights)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The EMA's shadow weights (by parameter name) and its counters, for the checkpoint."""
        names = [n for n, _ in self.model.named_parameters()]
        tensors = {n: s.detach().float().cpu().contiguous()
                   for n, s in zip(names, self.ema.shadow_params)}
        meta = {"calls": str(self.calls), "optimization_step": str(self.ema.optimization_step),
                "data": self.data_fp}
        return tensors, meta

    def restore_checkpoint_state(
        self, extra: tuple[dict[str, torch.Tensor], dict[str, str]] | None, step: int
    ) -> None:
        """On resume: load the EMA saved with the engine's checkpoint, or restart it (warning).

        Raises ``TskdError`` when the checkpoint was trained on other images.
        """
        tensors, meta = extra if extra is not None else ({}, {})
        if meta.get("data") and meta["data"] != self.data_fp:
            raise TskdError(
                f"cannot resume: the checkpoint in {self.checkpoint_dir} was trained on other "
                "images; start again without resume"
            )
        names = [n for n, _ in self.model.named_parameters()]
        if meta.get("calls") == str(step) and set(tensors) == set(names):
            with torch.no_grad():
                for s, n in zip(self.ema.shadow_params, names):
                    s.copy_(tensors[n].to(s.device, s.dtype))
            self.ema.optimization_step = int(meta["optimization_step"])
        else:
            warnings.warn(
                f"synthesize: no matching EMA state in {self.checkpoint_dir}; the weight average "
                "restarts from the resumed weights",
                TskdWarning,
                stacklevel=3,
            )
            self.ema.optimization_step = 0  # the next fold copies the weights (decay 0)
        self.calls = step


def train_ddpm(
    images: torch.Tensor,
    cfg: SynthConfig,
    *,
    checkpoint_dir: Path | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    resume: bool,
) -> tuple[Any, Any, TrainResult]:
    """Train the UNet on prepared images; returns (EMA UNet on CPU, DDPM scheduler, result)."""
    from diffusers.training_utils import EMAModel

    train_cfg = train_config(cfg)
    seed_everything(cfg.seed)  # before the UNet's random initialisation: repeatable runs
    unet = build_unet(cfg.resolution, images.shape[1], cfg.base_channels)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=True)
    task = DdpmTask(unet, images, cfg, ema, checkpoint_dir=checkpoint_dir,
                    data_fp=data_fingerprint(images))
    result = train(task, train_cfg, checkpoint_dir=checkpoint_dir, progress=progress,
                   cancel=cancel, resume=resume)
    task.finish()
    unet = task.model.cpu()
    ema.to(device="cpu")
    ema.copy_to(unet.parameters())
    if checkpoint_dir is not None:
        (checkpoint_dir / EMA_FILE).unlink(missing_ok=True)  # of the earlier checkpoint layout
    return unet.eval(), task.noise_scheduler, result
