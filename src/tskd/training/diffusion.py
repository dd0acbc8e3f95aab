"""Training the DDPM of stage 2 through the project's engine, with a resumable EMA.

Stage 2 itself (sampling, near-copy filter, files) is ``tskd.training.synthesize``. The weight
average is an engine callback (``EmaCallback``): it folds the weights in after every
optimiser step and keeps its state in the engine's checkpoint, one verified unit with the weights.

All randomness of a step (flip, noise, timestep) is drawn in the dataset, which the engine's
loader still walks through for the batches it skips on resume; so a resumed run sees the same
noise as an unbroken one and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tskd.config import SYNTH_EPOCH_STEPS, SynthConfig, TrainConfig
from tskd.distributed import images_per_epoch
from tskd.engine import (
    Callback,
    CheckpointExtra,
    RunControl,
    TrainResult,
    TrainState,
    seed_everything,
    train,
)
from tskd.errors import TskdError, TskdWarning
from tskd.models.diffusion import NUM_TRAIN_TIMESTEPS, build_train_scheduler, build_unet

TRAIN_STAGE = "synthesize-train"
EMA_FILE = "ema.safetensors"  # beside the checkpoint in the earlier layout; now inside it


def train_config(cfg: SynthConfig) -> tuple[TrainConfig, int]:
    """Give the engine's settings for ``cfg.train`` and the steps of one engine epoch.

    The diffusion model trains ``cfg.train.total_steps(SYNTH_EPOCH_STEPS)`` optimiser steps in
    engine epochs of at most 50 (``SYNTH_EPOCH_STEPS``), the checkpoint rate
    (``TrainConfig.in_steps``).

    Args:
        cfg: stage 2's settings (``synth.*`` of the run config).

    Returns:
        ``(train_config, steps_per_epoch)``: the engine settings and the optimiser steps of
        one engine epoch.

    Raises:
        TskdInputError: fewer than one step or a batch size below 1.
    """
    return cfg.train.in_steps(SYNTH_EPOCH_STEPS, "synth.train")


def data_fingerprint(images: torch.Tensor) -> str:
    """Hash the prepared training images: a checkpoint must not resume on other data.

    Args:
        images: float32 (N, C, R, R) in [-1, 1] (``tskd.models.diffusion.prepare_images``).

    Returns:
        The first 16 hex digits of the sha256 of the tensor's bytes.
    """
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]


class NoisedImages(Dataset):
    """Cycles the training images; each item carries its own flip, noise and timestep.

    Its length is one engine epoch (batch_size x steps per epoch), whatever the number of images.
    Items are ``{"image": (C, R, R), "noise": (C, R, R) standard normal, "t": int64 scalar in
    0..NUM_TRAIN_TIMESTEPS-1}``, drawn from torch's global generator (which the engine seeds).

    Args:
        images: float32 (N, C, R, R) in [-1, 1]; item ``i`` uses image ``i % N``, mirrored
            left-right with probability 0.5.
        length: the number of items.
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
    """The engine's view of DDPM training: noise-prediction MSE on noised images.

    Attributes:
        model: the diffusers ``UNet2DModel`` being trained (``build_unet``).
        images: float32 (N, C, R, R) in [-1, 1], the prepared training images.
        batch_size: images per optimiser step over every process (the global batch:
            ``tskd.distributed.images_per_epoch`` of one step).
        steps_per_epoch: optimiser steps in one engine epoch.
        name: the stage's name in progress reports and checkpoints.
    """

    model: nn.Module
    images: torch.Tensor
    batch_size: int
    steps_per_epoch: int
    name: str = TRAIN_STAGE

    def __post_init__(self) -> None:
        self.noise_scheduler = build_train_scheduler()

    def dataset(self) -> Dataset:
        """One epoch of noised images (batch size x steps per epoch items).

        Returns:
            A ``NoisedImages`` over ``images``.
        """
        return NoisedImages(self.images, self.batch_size * self.steps_per_epoch)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MSE between the UNet's predicted noise and the noise added at timestep ``t``.

        The "simple" DDPM objective of Ho et al. 2020 (Denoising Diffusion Probabilistic
        Models, Eq. 14): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` by the scheduler's
        ``add_noise`` (``a_t`` the product of ``1 - beta`` up to ``t``), loss
        ``||noise - model(x_t, t)||^2``, averaged over all elements.

        Args:
            model: the UNet as the engine runs it.
            batch: ``NoisedImages`` items collated: "image" (B, C, R, R), "noise" of the
                same shape, "t" (B,) int64.

        Returns:
            ``{"loss": float32 scalar}``.
        """
        x0, noise, t = batch["image"], batch["noise"], batch["t"]
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = model(noisy, t).sample
        return {"loss": F.mse_loss(pred.float(), noise.float())}


class EmaCallback(Callback):
    """The UNet's exponential moving average (diffusers' ``EMAModel``) as an engine callback.

    The EMA folds in the weights after every optimiser step (``on_step_end``): the first fold
    copies them, the n-th fold after it uses decay ``min(ema_decay, (1 + n) / (10 + n))``
    (diffusers' default schedule). Its shadow weights (by parameter name) and counters are
    saved in the engine's checkpoint (``on_checkpoint``: one atomic, verified unit with the
    weights) and loaded back on resume (``on_resume``), so a resumed run folds the same weights
    in the same order as an unbroken one and ends with the same average, bit for bit on the CPU.

    Args:
        ema: the average, built on ``model``'s parameters (``EMAModel(model.parameters())``).
        model: the UNet being trained; its parameter names key the saved shadow weights.
        data_fp: ``data_fingerprint`` of the training images, saved with the EMA.
        checkpoint_dir: the checkpoint's folder, named in messages only.
    """

    def __init__(self, ema: Any, model: nn.Module, data_fp: str,
                 checkpoint_dir: Path | None) -> None:
        self.ema = ema
        self.names = [n for n, _ in model.named_parameters()]
        self.data_fp = data_fp
        self.checkpoint_dir = checkpoint_dir

    def _fold(self, model: nn.Module) -> None:
        params = list(model.parameters())
        if self.ema.shadow_params and self.ema.shadow_params[0].device != params[0].device:
            self.ema.to(device=params[0].device)
        self.ema.step(params)

    def on_step_end(self, state: TrainState) -> None:
        """Fold the weights after this optimiser step into the average.

        Args:
            state: the run; ``state.model`` holds the weights.
        """
        self._fold(state.model)

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra:
        """Give the state to save: the shadow weights, the engine step and data fingerprint.

        Args:
            state: the run; ``state.step`` is saved.

        Returns:
            ``(tensors, meta)``: float32 CPU shadow weights by parameter name; "step",
            "optimization_step" (the EMA's) and "data" (``data_fingerprint``) as strings.
        """
        tensors = {n: s.detach().float().cpu().contiguous()
                   for n, s in zip(self.names, self.ema.shadow_params)}
        meta = {"step": str(state.step), "optimization_step": str(self.ema.optimization_step),
                "data": self.data_fp}
        return tensors, meta

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        """Load the EMA saved with the checkpoint, or restart it from the resumed weights.

        A checkpoint of the earlier layout saved the EMA one step behind (``calls``): the
        resumed weights are folded in now, as that version did at its next step. A restarted
        average starts as a copy of the resumed weights, with a ``TskdWarning``.

        Args:
            state: the run as the checkpoint left it.
            extra: what ``on_checkpoint`` saved (merged with other callbacks'), or None.

        Raises:
            TskdError: the checkpoint was trained on other images.
        """
        tensors, meta = extra if extra is not None else ({}, {})
        if meta.get("data") and meta["data"] != self.data_fp:
            raise TskdError(
                f"cannot resume: the checkpoint in {self.checkpoint_dir} was trained on other "
                "images; start again without resume"
            )
        step = str(state.step)
        if set(tensors) == set(self.names) and step in (meta.get("step"), meta.get("calls")):
            with torch.no_grad():
                for s, n in zip(self.ema.shadow_params, self.names):
                    s.copy_(tensors[n].to(s.device, s.dtype))
            self.ema.optimization_step = int(meta["optimization_step"])
            # "calls": the earlier layout, whose EMA had not yet folded the last step in
            behind = meta.get("step") != step and self.ema.optimization_step < state.step
        else:
            warnings.warn(
                f"synthesize: no matching EMA state in {self.checkpoint_dir}; the weight average "
                "restarts from the resumed weights",
                TskdWarning,
                stacklevel=3,
            )
            self.ema.optimization_step = 0  # the next fold copies the weights (decay 0)
            behind = state.step > 0
        if behind:
            self._fold(state.model)


def train_ddpm(
    images: torch.Tensor,
    cfg: SynthConfig,
    control: RunControl | None = None,
) -> tuple[Any, Any, TrainResult]:
    """Train the UNet on prepared images through ``tskd.engine.train``, with the EMA callback.

    The seed is set before the UNet's random initialisation, so runs repeat.

    Args:
        images: float32 (N, C, R, R) in [-1, 1], R = ``cfg.resolution``
            (``tskd.models.diffusion.prepare_images``).
        cfg: stage 2's settings (resolution, base channels, EMA decay, and ``cfg.train``:
            steps, batch size, learning rate, seed, device).
        control: progress, cancel, checkpoint folder (the EMA is saved in the checkpoint)
            and resume, handed to ``tskd.engine.train``; None: ``RunControl()``.

    Returns:
        ``(unet, scheduler, result)``: the UNet with the EMA weights, on the CPU in eval
        mode; the DDPM training scheduler (``build_train_scheduler``, 1000 steps); the
        engine's ``TrainResult``.

    Raises:
        TskdError: bad settings (``train_config``), a checkpoint of other images or
            settings, a non-finite loss, an unavailable device.
        Cancelled: ``control.cancel`` was set (a checkpoint is written first).
        DiskFullError: the checkpoint folder's disk is full.
    """
    from diffusers.training_utils import EMAModel

    train_cfg, per_epoch = train_config(cfg)
    seed_everything(cfg.train.seed)  # before the UNet's random initialisation: repeatable runs
    unet = build_unet(cfg.resolution, images.shape[1], cfg.base_channels)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=True)
    # the items of one engine epoch over every process: per_epoch optimiser steps on any number
    task = DdpmTask(unet, images, images_per_epoch(train_cfg.batch_size,
                                                   train_cfg.grad_accum_steps, 1), per_epoch)
    control = control if control is not None else RunControl()
    checkpoint_dir = control.checkpoint_dir
    average = EmaCallback(ema, unet, data_fingerprint(images), checkpoint_dir)
    result = train(task, train_cfg, control=control, callbacks=[average])
    unet = task.model.cpu()
    ema.to(device="cpu")
    ema.copy_to(unet.parameters())
    if checkpoint_dir is not None:
        (checkpoint_dir / EMA_FILE).unlink(missing_ok=True)  # of the earlier checkpoint layout
    return unet.eval(), task.noise_scheduler, result
