"""The diffusion model of stage 2: image preparation, the UNet, its files, DDIM sampling.

Stage 2 (``tskd.training.synthesize``) trains it to enlarge the transfer set, as the TS-KD paper
does with a diffusion model (Fig. 1, top): a DDPM (Ho et al., 2020, "Denoising Diffusion
Probabilistic Models") sampled with DDIM (Song et al., 2021, "Denoising Diffusion Implicit
Models"), both through ``diffusers``.

Images live here as float tensors (N, C, R, R) in [-1, 1] at the DDPM's resolution R, with C = 1
when every training image is gray and 3 otherwise. A trained model is a folder of
``unet.safetensors`` + ``unet_config.json`` + ``scheduler_config.json`` + ``meta.json`` (no
pickles), enough to sample more images later without training again.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tskd.data.dataset import to_float_rgb
from tskd.engine import CancelToken, Progress, ProgressCallback
from tskd.errors import Cancelled, CheckpointError, TskdInputError

NUM_TRAIN_TIMESTEPS = 1000
SAMPLE_BATCH = 32  # images denoised at once; the result does not depend on it
SAMPLE_STAGE = "synthesize-sample"
_LEVELS = 4  # UNet resolution levels: R, R/2, R/4, R/8 (attention at R/8)


# ----------------------------------------------------------------------------- images


def _is_gray(image: np.ndarray) -> bool:
    """2D, one channel, or RGB(A) whose colour channels are identical."""
    if image.ndim == 2 or image.shape[-1] == 1:
        return True
    if image.shape[-1] in (3, 4):
        return bool(np.array_equal(image[..., 0], image[..., 1])) and bool(
            np.array_equal(image[..., 0], image[..., 2])
        )
    return False


def prepare_images(images: list[np.ndarray], resolution: int) -> torch.Tensor:
    """Training images as (N, C, R, R) float32 in [-1, 1], square-resized (antialiased).

    Each image is normalised by ``tskd.data.dataset.to_float_rgb`` to [0, 1], resized
    bilinearly and mapped to [-1, 1] (the DDPM's range); C is 1 when every image is gray
    (2D, one channel, or RGB(A) with equal channels), else 3.

    Args:
        images: (H, W) or (H, W, C) arrays of any dtype, at least 2x2 pixels.
        resolution: R, the DDPM's side in pixels.

    Returns:
        float32 (N, C, R, R) in [-1, 1].

    Raises:
        TskdInputError: No image, or one that is not (H, W) or (H, W, C).
    """
    if not images:
        raise TskdInputError("synthesize: no training images were given")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or min(img.shape[:2]) < 2:
            shape = getattr(img, "shape", type(img).__name__)
            raise TskdInputError(
                f"synthesize: training image {i} must be (H, W) or (H, W, C), got {shape}"
            )
    channels = 1 if all(_is_gray(img) for img in images) else 3
    out = []
    for img in images:
        rgb = torch.from_numpy(to_float_rgb(img)).permute(2, 0, 1)[None]
        small = F.interpolate(
            rgb, size=(resolution, resolution), mode="bilinear", antialias=True,
            align_corners=False,
        )
        out.append(small[0, :channels])
    return torch.stack(out).clamp(0.0, 1.0) * 2.0 - 1.0


def batch_to_uint8(batch: torch.Tensor, out_size: int | None = None) -> list[np.ndarray]:
    """(N, C, R, R) in [-1, 1] to uint8 images, (H, W) for gray, optionally upscaled (bicubic).

    Args:
        batch: Generated images, any device and float dtype; values are clipped to [-1, 1].
        out_size: Side in pixels to resize to; None keeps R.

    Returns:
        One uint8 array per image: (S, S) for C = 1, (S, S, 3) for C = 3; [-1, 1] maps to
        0..255 (rounded).
    """
    x = batch.detach().float().cpu()
    if out_size is not None and x.shape[0] and out_size != x.shape[-1]:
        x = F.interpolate(x, size=(out_size, out_size), mode="bicubic", align_corners=False)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    arrays = x.permute(0, 2, 3, 1).numpy()
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arrays]


# ----------------------------------------------------------------------------- model


def check_resolution(resolution: int) -> None:
    """Refuse a DDPM side that the UNet cannot halve three times.

    Args:
        resolution: the side in pixels of the square images the DDPM is trained on
            (``SynthConfig.resolution``).

    Raises:
        TskdInputError: ``resolution`` is not a multiple of 8 of at least 16.
    """
    step = 2 ** (_LEVELS - 1)
    if resolution < 2 * step or resolution % step:
        raise TskdInputError(
            f"synth.resolution must be a multiple of {step} and at least {2 * step}, "
            f"got {resolution}"
        )


def build_unet(resolution: int, channels: int, base_channels: int) -> Any:
    """A small ``UNet2DModel``: widths (c, 2c, 2c, 2c), self-attention at the lowest level.

    About 2.2 M parameters at c = 32; on two CPU cores this was the fastest of the shapes
    measured, with the widest receptive field.

    Args:
        resolution: The image side in pixels (``check_resolution``).
        channels: Image channels, 1 or 3 (in and out).
        base_channels: c, the width of the first level, a positive multiple of 4.

    Returns:
        A randomly initialised ``diffusers.UNet2DModel``.

    Raises:
        TskdInputError: A bad ``base_channels`` or ``resolution``.
    """
    from diffusers import UNet2DModel

    c = base_channels
    if c < 4 or c % 4:
        raise TskdInputError(f"synth.base_channels must be a positive multiple of 4, got {c}")
    check_resolution(resolution)
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(c,) + (2 * c,) * (_LEVELS - 1),
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * (_LEVELS - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (_LEVELS - 1),
        norm_num_groups=math.gcd(c, 32),
        attention_head_dim=min(8, c),
    )


def build_train_scheduler() -> Any:
    """The DDPM noise schedule used in training: ``diffusers.DDPMScheduler`` with 1000 steps.

    Its defaults are Ho et al. (2020)'s: linear betas from 1e-4 to 0.02, epsilon prediction.

    Returns:
        The ``DDPMScheduler``.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)


def _plain_config(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if not k.startswith("_")}


def save_model(unet: Any, scheduler: Any, model_dir: Path, meta: dict[str, Any]) -> None:
    """Write the (EMA) UNet and its schedule as safetensors + JSON.

    All four files are written in full before any replaces its old version (``meta.json``, which
    ``read_diffusion_meta`` looks for, last).

    Args:
        unet: The ``UNet2DModel`` (its weights are stored as float32).
        scheduler: The training schedule; its config is stored.
        model_dir: The model folder (``unet.safetensors``, ``unet_config.json``,
            ``scheduler_config.json``, ``meta.json``).
        meta: What ``meta.json`` holds (JSON-ready).

    Raises:
        DiskFullError: The disk is full; the old model is kept.
    """
    from tskd import atomic

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in unet.state_dict().items()}
    atomic.write_files({
        model_dir / "unet.safetensors": atomic.safetensors_bytes(tensors),
        model_dir / "unet_config.json": atomic.json_bytes(_plain_config(unet.config)),
        model_dir / "scheduler_config.json": atomic.json_bytes(_plain_config(scheduler.config)),
        model_dir / "meta.json": atomic.json_bytes(meta),
    })


def read_diffusion_meta(model_dir: Path) -> dict[str, Any] | None:
    """Read the ``meta.json`` of a diffusion model saved in ``model_dir`` (``save_model``).

    Args:
        model_dir: the model's folder.

    Returns:
        The parsed ``meta.json``; None when one of the model's four files is missing, or the
        ``meta.json`` cannot be read or parsed (no complete model to reuse).
    """
    names = ("unet.safetensors", "unet_config.json", "scheduler_config.json", "meta.json")
    if not all((model_dir / n).is_file() for n in names):
        return None
    try:
        return json.loads((model_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def load_diffusion_model(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load the UNet and scheduler config ``save_model`` wrote to ``model_dir``.

    Args:
        model_dir: the model's folder (``unet.safetensors``, ``unet_config.json``, and
            ``scheduler_config.json`` if present).

    Returns:
        ``(unet, scheduler_config)``: the ``diffusers`` ``UNet2DModel`` on the CPU in eval
        mode; the config has ``num_train_timesteps`` (1000 if absent).

    Raises:
        CheckpointError: Missing, damaged or foreign files.
    """
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    weights = model_dir / "unet.safetensors"
    if not weights.is_file() or not (model_dir / "unet_config.json").is_file():
        raise CheckpointError(
            f"no diffusion model in {model_dir} (expected unet.safetensors and unet_config.json)"
        )
    try:
        config = json.loads((model_dir / "unet_config.json").read_text())
        sched_path = model_dir / "scheduler_config.json"
        sched = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
        unet = UNet2DModel.from_config(config)
        unet.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:  # damaged or foreign files are the user's to fix
        raise CheckpointError(
            f"{weights} is not a diffusion model saved by tskd.training.synthesize ({exc})"
        ) from None
    sched.setdefault("num_train_timesteps", NUM_TRAIN_TIMESTEPS)
    return unet.eval(), sched


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def ddim_sample(
    unet: Any,
    scheduler_config: dict[str, Any],
    n: int,
    steps: int,
    seed: int,
    device: torch.device,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Sample ``n`` images by deterministic DDIM (eta = 0).

    The starting noise comes from one seeded CPU generator for all images, so the result does not
    depend on the device's batch size. Images are denoised ``SAMPLE_BATCH`` at a time.

    Args:
        unet: The trained ``UNet2DModel`` (moved to ``device``).
        scheduler_config: Its schedule (``load_diffusion_model``'s), for ``DDIMScheduler``.
        n: How many images.
        steps: DDIM steps, at least 1 (``synth.sample_steps``).
        seed: Seeds the starting noise.
        device: Where the UNet runs.
        progress: Called after every step with a ``Progress`` (stage "synthesize-sample").
        cancel: Checked before every step.

    Returns:
        float32 (n, C, R, R) in [-1, 1], on the CPU.

    Raises:
        TskdInputError: ``steps`` is below 1.
        Cancelled: ``cancel`` was set (checked before every step).
    """
    from diffusers import DDIMScheduler

    if steps < 1:
        raise TskdInputError(f"synth.sample_steps must be at least 1, got {steps}")
    cfg = unet.config
    shape = (n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    unet = unet.to(device).eval()
    n_batches = math.ceil(n / SAMPLE_BATCH)
    total, done, t0 = n_batches * steps, 0, time.perf_counter()
    out = []
    for b in range(n_batches):
        x = noise[b * SAMPLE_BATCH : (b + 1) * SAMPLE_BATCH].to(device)
        for t in sched.timesteps:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("synthesize: cancelled while sampling; resume to go on")
            eps = unet(x, t).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
            done += 1
            if progress is not None:
                progress(_sample_progress(done, total, time.perf_counter() - t0, b, n))
        out.append(x.float().cpu())
    if not out:
        return noise
    return torch.cat(out).clamp(-1.0, 1.0)


def _sample_progress(done: int, total: int, elapsed: float, batch: int, n: int) -> Progress:
    """``ddim_sample``'s report after ``done`` of ``total`` steps, ``elapsed`` seconds in."""
    return Progress(
        SAMPLE_STAGE, done, total, 0, 1, float("nan"), elapsed / done * (total - done),
        message=f"sampling images {batch * SAMPLE_BATCH + 1}-"
        f"{min(n, (batch + 1) * SAMPLE_BATCH)} of {n}",
    )
