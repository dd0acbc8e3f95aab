"""Promptable pretraining of the built-in miniature SAM teacher, the way SAM itself was trained.

A SAM assembled from ``segment_anything``'s modules (``tskd.models.mini_sam``) learns to segment one
object from a prompt -- a noisy box, 1-3 positive/negative points, or both -- on procedural
scenes from ``tskd.data.phantoms.pretraining_sample`` (none of the target tasks; prompts and
data are ``tskd.training.pretrain_data``). The loss is BCE (optionally class-balanced) + Dice on
the predicted mask plus SAM's IoU-prediction MSE. Like SAM, the decoder predicts all of its mask
tokens: token 0 (the single-mask output) is always supervised and the best of the three
multimask outputs too, so every mask token (which ``SemanticSam`` later turns into class tokens)
is trained (Kirillov et al. 2023, Segment Anything, Sec. 3 and App. A, backpropagates the best
of the multimask outputs only; SAM uses focal + Dice where this uses BCE + Dice). Training runs
through
``tskd.engine.train`` (seeds, progress, cancel, checkpoints, resume); the result is
``mini_sam.safetensors`` (fp16) + ``mini_sam.json``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tskd.config import TrainConfig
from tskd.distributed import images_per_epoch
from tskd.engine import RunControl, TrainResult, seed_everything, train
from tskd.errors import TskdInputError
from tskd.models.mini_sam import ASSETS, MiniSamConfig, build_mini_sam, count_parameters
from tskd.models.mini_sam_files import save_mini_sam
from tskd.training.pretrain_config import PretrainConfig
from tskd.training.pretrain_data import PromptDataset
from tskd.training.pretrain_record import git_commit, run_record
from tskd.training.pretrain_resume import PieceRecord, check_resume, run_settings
from tskd.training.pretrain_snapshots import Snapshots

WEIGHTS_NAME = "mini_sam.safetensors"


DATA_DIR_ENV = "TSKD_DATA_DIR"


def default_output_dir() -> Path:
    """Where ``tskd pretrain-mini`` writes by default.

    Never the package's built-in weights (those take ``packaged_weights_dir`` and an explicit
    flag). Use the result as a teacher with ``--model-type mini --checkpoint
    <dir>/mini_sam.safetensors``.

    Returns:
        ``$TSKD_DATA_DIR/pretrain-mini``, else ``<user data folder>/tskd/pretrain-mini``
        (``platformdirs.user_data_dir``); not created.
    """
    import os

    base = os.environ.get(DATA_DIR_ENV)
    if not base:
        from platformdirs import user_data_dir

        base = user_data_dir("tskd", appauthor=False)
    return Path(base).expanduser() / "pretrain-mini"


def packaged_weights_dir() -> Path:
    """The folder of the package's built-in teacher weights (``build_sam("mini")`` reads them).

    Returns:
        ``tskd.models.mini_sam.ASSETS``; written only with ``replace_packaged=True``
        (``--replace-packaged-weights``).
    """
    return ASSETS


def checkpoint_dir_for(out_dir: str | Path, packaged: bool = False) -> Path:
    """The folder of the resumable checkpoints of a pretraining into ``out_dir``.

    Args:
        out_dir: The pretraining's output folder.
        packaged: The output is the package's built-in weights (``packaged_weights_dir``).

    Returns:
        ``out_dir/checkpoints``, or, for the packaged weights, the default output folder's
        ``checkpoints-packaged`` (never inside the installed package).
    """
    if packaged:
        return default_output_dir() / "checkpoints-packaged"
    return Path(out_dir) / "checkpoints"


def _is_packaged(out_dir: Path) -> bool:
    return out_dir.expanduser().resolve() == ASSETS.resolve()


def check_output(out_dir: str | Path, overwrite: bool = False,
                 replace_packaged: bool = False) -> list[Path]:
    """Check that a pretraining may write its two files into ``out_dir``.

    Args:
        out_dir: The output folder (it need not exist).
        overwrite: Replace ``mini_sam.safetensors``/``.json`` already there.
        replace_packaged: Allow ``out_dir`` to be the package's built-in weights (and replace
            them).

    Returns:
        The files that will be replaced.

    Raises:
        TskdInputError: ``out_dir`` is the package's assets without ``replace_packaged``, holds
            the files without ``overwrite`` (or ``replace_packaged``), or is no usable folder.
    """
    from tskd.data import outputs

    out = outputs.check_output_folder(out_dir)
    packaged = _is_packaged(out)
    if packaged and not replace_packaged:
        raise TskdInputError(
            f"{out} holds the package's built-in teacher weights, which every existing teacher "
            "needs; write elsewhere with --out, or pass --replace-packaged-weights if you "
            "maintain the package."
        )
    targets = [out / WEIGHTS_NAME, out / Path(WEIGHTS_NAME).with_suffix(".json")]
    return outputs.check_replace(targets, overwrite or (packaged and replace_packaged), out)


# ----------------------------------------------------------------------------- model and loss
def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss per mask, smoothed by 1: (N, M, H, W) logits, (N, 1, H, W) 0/1 -> (N, M)."""
    p = torch.sigmoid(logits)
    inter = (p * target).flatten(2).sum(-1)
    total = p.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    return 1 - (2 * inter + 1) / (total + 1)


def _bce(logits: torch.Tensor, target: torch.Tensor, balanced: bool) -> torch.Tensor:
    """BCE per mask (N, M); ``balanced``: object and background pixels weigh half each.

    Balanced, small objects are not learnt as "nothing" (the plain mean favours
    all-background).
    """
    t = target.expand_as(logits)
    pix = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(2)
    if not balanced:
        return pix.mean(-1)
    t = t.flatten(2)
    pos = (pix * t).sum(-1) / t.sum(-1).clamp(min=1)
    neg = (pix * (1 - t)).sum(-1) / (1 - t).sum(-1).clamp(min=1)
    return 0.5 * (pos + neg)


def _iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).float()
    inter = (pred * target).flatten(2).sum(-1)
    union = ((pred + target) > 0).float().flatten(2).sum(-1)
    return inter / union.clamp(min=1)


class PromptableSam(nn.Module):
    """A ``Sam`` trained with prompts: ``forward(batch)`` returns the losses of one batch.

    Args:
        sam: A ``segment_anything`` ``Sam`` (``build_mini_sam``); its image encoder runs once
            per image, its decoder once per prompt.
        iou_weight: Weight of the IoU-prediction MSE in the loss (``PretrainConfig.iou_weight``).
        balanced: Class-balanced BCE (``PretrainConfig.balanced_bce``).
    """

    def __init__(self, sam: nn.Module, iou_weight: float = 1.0, balanced: bool = False) -> None:
        super().__init__()
        self.sam = sam
        self.iou_weight = iou_weight
        self.balanced = balanced

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of one batch of prompted scenes.

        Args:
            batch: A collated batch of ``PromptDataset`` items (B images): ``image`` float32
                (B, 3, S, S) in [0, 1], ``masks`` float32 (B, K, S, S) of 0/1, ``boxes`` (B, K,
                4), ``points`` (B, K, MAX_POINTS, 2) in pixels, ``labels`` (B, K, MAX_POINTS),
                ``mode`` (B,): 0 box, 1 points, 2 both.

        Returns:
            Scalar tensors: ``loss`` = BCE + Dice + ``iou_weight`` * IoU MSE, and ``bce``,
            ``dice``, ``iou_mse``; BCE and Dice averaged over token 0 and the best multimask
            output of each prompt.
        """
        sam = self.sam
        x = batch["image"] * 255.0
        emb = sam.image_encoder((x - sam.pixel_mean) / sam.pixel_std)
        head = getattr(sam, "refine_head", None)
        upscaled: list[torch.Tensor] = []  # the decoder's upscaled features, for the head
        hook = sam.mask_decoder.output_upscaling.register_forward_hook(
            lambda _m, _i, out: upscaled.append(out)) if head is not None else None
        try:
            return self._losses(batch, emb, head, upscaled)
        finally:
            if hook is not None:
                hook.remove()

    def _losses(self, batch: dict[str, torch.Tensor], emb: torch.Tensor,
                head: nn.Module | None, upscaled: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of a batch whose image embeddings are ``emb`` (see ``forward``)."""
        sam = self.sam
        x = batch["image"]
        image_pe = sam.prompt_encoder.get_dense_pe()
        size = x.shape[-2:]
        bce_all, dice_all, iou_all = [], [], []
        for b in range(x.shape[0]):  # the decoder repeats an image's embedding per prompt
            mode = int(batch["mode"][b])
            points = (batch["points"][b], batch["labels"][b]) if mode != 0 else None
            boxes = batch["boxes"][b] if mode != 1 else None
            sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            low, iou_pred = sam.mask_decoder.predict_masks(
                image_embeddings=emb[b : b + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )  # all mask tokens: (K, 1 + 3, h, w) and (K, 1 + 3)
            logits = F.interpolate(low.float(), size=size, mode="bilinear", align_corners=False)
            target = batch["masks"][b].unsqueeze(1)
            bce = _bce(logits, target, self.balanced)
            dice = _dice_loss(logits, target)
            best = (bce + dice)[:, 1:].argmin(dim=1, keepdim=True) + 1  # best multimask output
            pick = torch.cat([torch.zeros_like(best), best], dim=1)  # (K, 2): token 0 and best
            with torch.no_grad():
                true_iou = _iou(logits, target)
            if head is not None:  # the picked masks at full resolution, from the refine head
                index = pick[:, :, None, None].expand(-1, -1, *low.shape[-2:])
                fine = head(x[b : b + 1].expand(low.shape[0], -1, -1, -1), upscaled.pop(),
                            low.gather(1, index)).float()
                bce_all.append(_bce(fine, target, self.balanced))
                dice_all.append(_dice_loss(fine, target))
            else:
                bce_all.append(bce.gather(1, pick))
                dice_all.append(dice.gather(1, pick))
            iou_all.append(F.mse_loss(iou_pred.float(), true_iou, reduction="none").mean(1))
        bce_t, dice_t = torch.cat(bce_all).mean(), torch.cat(dice_all).mean()
        iou_t = torch.cat(iou_all).mean()
        return {"loss": bce_t + dice_t + self.iou_weight * iou_t, "bce": bce_t, "dice": dice_t,
                "iou_mse": iou_t}


class _PretrainTask:
    """The engine's view of promptable pretraining."""

    name = "pretrain-mini"

    def __init__(self, model: PromptableSam, cfg: PretrainConfig, steps_per_epoch: int) -> None:
        self.model = model
        items = images_per_epoch(cfg.train.batch_size, cfg.train.grad_accum_steps, steps_per_epoch)
        self._data = PromptDataset(items, cfg.image_size,
                                   cfg.masks_per_image, cfg.train.seed, cfg.prompt_modes,
                                   cfg.scenes)

    def dataset(self) -> Dataset:
        return self._data

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        return model(batch)


# ----------------------------------------------------------------------------- entry points
def _check(cfg: PretrainConfig, arch: MiniSamConfig) -> tuple[TrainConfig, int]:
    # the engine's settings and steps per epoch (TrainConfig.in_steps), after checking cfg
    # against arch; TskdInputError names what is wrong
    if cfg.masks_per_image < 1:
        raise TskdInputError("pretraining needs at least one mask per image (masks_per_image)")
    if cfg.image_size % arch.patch_size:
        raise TskdInputError(
            f"pretraining image size {cfg.image_size} must be a multiple of the patch size "
            f"{arch.patch_size}"
        )
    train_cfg, per_epoch = cfg.train.in_steps(cfg.steps_per_checkpoint, "pretrain.train")
    return replace(train_cfg, device=train_cfg.device or "auto"), per_epoch


def build_model(cfg: PretrainConfig, arch: MiniSamConfig | None = None) -> PromptableSam:
    """A randomly initialised promptable SAM, seeded with ``cfg.train.seed``.

    Args:
        cfg: The pretraining settings; ``image_size`` (pixels), ``iou_weight``,
            ``balanced_bce`` and ``train.seed`` are read.
        arch: The architecture; None: the built-in mini teacher's (``MiniSamConfig()``).

    Returns:
        The model, on the CPU, at ``cfg.image_size``.
    """
    seed_everything(cfg.train.seed)
    sam = build_mini_sam(arch or MiniSamConfig(), cfg.image_size)
    return PromptableSam(sam, cfg.iou_weight, cfg.balanced_bce)


def pretrain_mini(
    cfg: PretrainConfig,
    out_dir: str | Path,
    control: RunControl | None = None,
    command: str | None = None,
    overwrite: bool = False,
    replace_packaged: bool = False,
    arch: MiniSamConfig | None = None,
    snapshot_every: int = 0,
) -> dict[str, Any]:
    """Pretrain the mini SAM and write ``out_dir/mini_sam.safetensors`` + ``mini_sam.json``.

    Args:
        cfg: The training (``tskd.training.pretrain_config.PretrainConfig``;
            ``cfg.train.device`` None is "auto").
        out_dir: The output folder (``check_output``).
        control: Progress reports, cancel, the engine's checkpoint folder
            (``checkpoint_dir_for``) and resume, handed to ``tskd.engine.train``; None:
            ``RunControl()`` (no reports, no checkpoint).
        command: The command line, recorded in the JSON.
        overwrite: Replace the two files when ``out_dir`` holds them.
        replace_packaged: Allow ``out_dir`` to be the package's built-in weights.
        arch: The architecture; None: the built-in teacher's (``MiniSamConfig()``).
        snapshot_every: also save the weights every this many epochs into ``out_dir/snapshots``
            (``tskd.training.pretrain_snapshots``); 0: none.

    Returns:
        The run's record (also stored under "info" in the JSON: settings, seed, version, git
        commit, steps, losses, times, the machine: ``tskd.training.pretrain_record.run_record``;
        parameter count) with the paths ``weights`` (fp16 safetensors) and ``json``.

    Raises:
        Cancelled: when cancelled (a checkpoint in ``control.checkpoint_dir`` lets a
            ``RunControl`` with ``resume=True`` continue).
        TskdInputError: before any training, when ``out_dir`` is the package's built-in
            weights without ``replace_packaged`` or already holds the two files without
            ``overwrite`` (``check_output``), or a setting is out of range (no step, a batch
            size or masks per image below 1, an image size that is no multiple of the patch
            size), ``control.resume`` finds a finished pretraining or a checkpoint of other
            settings, or a fresh start without ``overwrite`` finds an interrupted run's
            checkpoint (``tskd.training.pretrain_resume.check_resume``).
    """
    arch = arch or MiniSamConfig()
    train_cfg, per_epoch = _check(cfg, arch)
    settings = run_settings(cfg, arch)
    check_resume(Path(out_dir) / WEIGHTS_NAME, control, settings, overwrite or replace_packaged)
    check_output(out_dir, overwrite, replace_packaged)
    commit = git_commit()  # the code that runs, not what is checked out when it ends
    model = build_model(cfg, arch)
    task = _PretrainTask(model, cfg, per_epoch)
    t0 = time.perf_counter()
    pieces = PieceRecord(settings)
    callbacks = [pieces, *([Snapshots(out_dir, arch, snapshot_every, command)] * (
        snapshot_every > 0))]
    result: TrainResult = train(task, train_cfg, control=control, callbacks=callbacks)
    sam = task.model.sam
    info = run_record(cfg, arch, result, command, commit, (
        time.perf_counter() - t0, pieces.seconds())) | {"parameters": count_parameters(sam)}
    path = save_mini_sam(sam.cpu(), arch, Path(out_dir) / WEIGHTS_NAME, half=True, extra=info)
    return info | {"weights": str(path), "json": str(path.with_suffix(".json"))}

