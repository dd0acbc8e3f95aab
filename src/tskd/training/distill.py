"""Stage 3: distil a teacher (adapted or un-adapted SAM) into the student on the transfer set.

The student learns the teacher's hidden representations (feature loss through 1x1 projections,
as FitNets' regressors, Romero et al. 2015) and, in task-specific mode, its segmentation outputs
(temperature-scaled KL divergence, Hinton et al. 2015), as the TS-KD paper pretrains its small
ViT on the transfer set (Liang et al., Fig. 1 (d)). The teacher runs once per transfer image,
before training, and its outputs come from ``tskd.training.teacher_cache`` afterwards; the loop
itself is ``tskd.engine.train``.

The teacher follows the model contract: ``forward_with_features(x, layers) -> (logits, feats)``
on (B, 3, S, S) inputs in [0, 1], and ``feature_dims: dict[str, int]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tskd.config import DistillConfig
from tskd.engine import (
    RunControl,
    TrainResult,
    resolve_device,
    seed_everything,
    train,
)
from tskd.errors import TskdInputError
from tskd.models.student import AnyStudent
from tskd.stopping import EarlyStopping, early_stopping
from tskd.training.kd_losses import channel_norm, kd_output_loss
from tskd.training.teacher_cache import TeacherCache
from tskd.training.teacher_outputs import LOGITS, TeacherOutputs, device_of


class DistillModel(nn.Module):
    """What the engine trains: the student plus one 1x1 projection per (student, teacher) pair.

    Args:
        student: the student, trained in place.
        pairs: (student layer, teacher layer) names; each gets a 1x1 conv to the teacher width.
        teacher_dims: channels of each teacher layer (the teacher's ``feature_dims``).
        with_logits: also compute the student's logits (task-specific mode).
    """

    def __init__(
        self,
        student: AnyStudent,
        pairs: Sequence[tuple[str, str]],
        teacher_dims: dict[str, int],
        with_logits: bool,
    ) -> None:
        super().__init__()
        self.student = student
        self.pairs = list(pairs)
        self.with_logits = with_logits
        self.proj = nn.ModuleDict(
            {
                _proj_name(s, t): nn.Conv2d(student.feature_dims[s], teacher_dims[t], 1)
                for s, t in self.pairs
            }
        )

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Projected student features keyed by ``_proj_name(pair)``, and logits (or None).

        Args:
            x: float32 (B, 3, S, S) in [0, 1], S the student's input size.

        Returns:
            ``(features, logits)``: (B, C_teacher, h, w) per pair; (B, classes, S, S) or None.
        """
        layers = sorted({s for s, _ in self.pairs})
        if self.with_logits:
            logits, feats = self.student.forward_with_features(x, layers)
        else:  # features only: skip the decoder altogether
            logits, feats = None, self.student.features(x, layers)
        out = {_proj_name(s, t): self.proj[_proj_name(s, t)](feats[s]) for s, t in self.pairs}
        return out, logits


def _proj_name(student_layer: str, teacher_layer: str) -> str:
    return f"{student_layer}_to_{teacher_layer}".replace(".", "_")


class _TransferSet(Dataset):
    """Student-size images with the teacher's cached outputs, in random views (flip, region)."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        keys: Sequence[str],
        cache: TeacherCache,
        size: int,
        recompute: Any,
    ) -> None:
        self.images, self.keys, self.cache, self.size = images, keys, cache, size
        self.recompute = recompute  # i -> outputs, used only if a cache file vanished

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from tskd.data.dataset import image_to_tensor

        x = image_to_tensor(self.images[i], self.size)
        teacher = self.cache.get(self.keys[i])
        if teacher is None:
            teacher = self.recompute(i)
        # Random horizontal flips of the image and of every teacher map alike (no vertical flips:
        # upside-down ultrasound fans or anatomy never occur). For ViT features an approximation:
        # a flipped image's tokens are not exactly the flipped tokens (positional embeddings and
        # patch contents are not mirror-symmetric), but the teacher's maps stay spatially
        # aligned with the student's input, which is what the losses need.
        dims = [-1] if torch.rand(()) < 0.5 else []
        if dims:
            x = torch.flip(x, dims)
            teacher = {k: torch.flip(v, dims) for k, v in teacher.items()}
        x, teacher = augmented_view(x, teacher)
        return {"image": x, "teacher": teacher}


def augmented_view(x: torch.Tensor, teacher: dict[str, torch.Tensor],
                   min_scale: float = 0.75) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Another view of a transfer image and the teacher's maps, cut from the same region.

    With probability 0.5, the same random square region (``min_scale``-100 % of the side) is
    cut from the image and from every teacher map and resized back to each one's size
    (torchvision's ``roi_align``, exact for fractional boxes on coarse maps); then the image's
    contrast (x0.9-1.1) and brightness (+-0.05) are jittered, the teacher's outputs kept, so the
    student learns the clean image's targets from a perturbed one (as Noisy Student, Xie et al.
    2020). Draws from torch's global RNG, which the engine seeds.

    Args:
        x: The student's input, float32 (3, S, S) in [0, 1].
        teacher: {name: float (C, h, w)} teacher maps aligned with ``x``.
        min_scale: The smallest region side, as a share of the image side.

    Returns:
        The new ``(x, teacher)``, same shapes and dtypes.
    """
    from torchvision.ops import roi_align

    if torch.rand(()) < 0.5:
        side = min_scale + (1 - min_scale) * float(torch.rand(()))
        top, left = float(torch.rand(())) * (1 - side), float(torch.rand(())) * (1 - side)

        def cut(t: torch.Tensor) -> torch.Tensor:
            h, w = t.shape[-2:]
            box = torch.tensor([[0.0, left * w, top * h, (left + side) * w, (top + side) * h]])
            return roi_align(t[None].float(), box, output_size=(h, w), aligned=True)[0]

        x = cut(x)
        teacher = {k: cut(v).to(v.dtype) for k, v in teacher.items()}
    gain = 1.0 + 0.2 * (torch.rand(()) - 0.5)
    bias = 0.1 * (torch.rand(()) - 0.5)
    return ((x - 0.5) * gain + 0.5 + bias).clamp(0.0, 1.0), teacher


class _DistillTask:
    """The ``TrainingTask`` the engine runs: losses between student and cached teacher."""

    name = "distill"

    def __init__(self, model: DistillModel, dataset: _TransferSet, cfg: DistillConfig) -> None:
        self.model = model
        self._dataset = dataset
        self.cfg = cfg
        self.feature_fn = F.mse_loss if cfg.feature_loss == "mse" else F.smooth_l1_loss
        self.pairs = list(model.pairs)
        t_names = [t for _, t in self.pairs]
        self._unique = len(set(t_names)) == len(t_names)

    def _log_name(self, s_name: str, t_name: str) -> str:
        return f"feature_{t_name}" if self._unique else f"feature_{_proj_name(s_name, t_name)}"

    def dataset(self) -> Dataset:
        return self._dataset

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        target = batch["teacher"]
        feats, logits = model(batch["image"])
        logs: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=batch["image"].device)
        if feats:
            per_layer = []
            for s_name, t_name in self.pairs:
                f, g = feats[_proj_name(s_name, t_name)], target[t_name]
                if f.shape[-2:] != g.shape[-2:]:  # student grid -> teacher grid
                    f = F.interpolate(f.float(), size=g.shape[-2:], mode="bilinear",
                                      align_corners=False)
                lf = self.feature_fn(channel_norm(f), channel_norm(g))
                per_layer.append(lf)
                if len(self.pairs) > 1:
                    logs[self._log_name(s_name, t_name)] = lf
            feature = torch.stack(per_layer).mean()
            logs["feature"] = feature
            loss = loss + cfg.feature_weight * feature
        if logits is not None:
            output = kd_output_loss(logits, target[LOGITS], cfg.temperature)
            logs["output"] = output
            loss = loss + cfg.output_weight * output
        logs["loss"] = loss
        return logs


def _check(
    teacher: nn.Module, images: Sequence[np.ndarray], cfg: DistillConfig, student: AnyStudent
) -> tuple[list[tuple[str, str]], bool]:
    if len(images) == 0:
        raise TskdInputError("the transfer set is empty: give unlabelled or labelled images")
    if len(cfg.teacher_layers) != len(cfg.student_layers):
        raise TskdInputError(
            f"distill.teacher_layers {cfg.teacher_layers} and distill.student_layers "
            f"{cfg.student_layers} must list the same number of layers (one pair each)"
        )
    t_dims = getattr(teacher, "feature_dims", {})
    bad_t = [n for n in cfg.teacher_layers if n not in t_dims]
    if bad_t:
        raise TskdInputError(
            f"the teacher has no layer(s) {bad_t}; it offers {sorted(t_dims)}"
        )
    student.check_layers(cfg.student_layers)
    if cfg.feature_loss not in ("mse", "smooth_l1"):
        raise TskdInputError(
            f"distill.feature_loss must be mse or smooth_l1, not {cfg.feature_loss!r}"
        )
    pairs = list(zip(cfg.student_layers, cfg.teacher_layers)) if cfg.feature_weight > 0 else []
    with_logits = not cfg.task_agnostic and cfg.output_weight > 0
    if not pairs and not with_logits:
        raise TskdInputError(
            "nothing to distil: set distill.feature_weight > 0 with layer pairs, or "
            "distill.output_weight > 0 without task_agnostic"
        )
    return pairs, with_logits


def distill(
    teacher: nn.Module,
    images: Sequence[np.ndarray],
    cfg: DistillConfig,
    student: AnyStudent,
    teacher_input_size: int,
    teacher_id: str,
    cache_dir: str | Path,
    control: RunControl | None = None,
    val: Sequence[Any] = (),
) -> TrainResult:
    """Train ``student`` (in place) to match ``teacher`` on ``images``; returns the history.

    Loss: ``feature_weight`` x the pairs' mean MSE or smooth-L1 of ``channel_norm``-ed maps +
    ``output_weight`` x ``kd_output_loss``; ``task_agnostic``: features only, decoder frozen.

    Args:
        teacher: follows the model contract (module docstring); returned to its device.
        images: the transfer set, (H, W[, C]) arrays of any dtype (``image_to_tensor``).
        cfg: stage 3's settings (layers, loss, weights, temperature, ``train``).
        student: from ``tskd.models.student.build_student``; ends on its device, in eval mode.
        teacher_input_size: the teacher's input side in pixels.
        teacher_id: the teacher's id in the cache keys (``tskd.models.lora.teacher_id``).
        cache_dir: the ``TeacherCache`` folder.
        control: its ``progress`` gets "distill-cache" ``Progress`` while caching, then the
            engine's; its ``cancel`` is checked before each cache batch and training step; the
            rest goes to ``tskd.engine.train``. None: ``RunControl()``.
        val: labelled samples; with ``cfg.train.patience`` and outputs distilled, training
            stops at the plateau of the student's Dice on them.

    Returns:
        The engine's ``TrainResult``; history: ``feature`` (mean over pairs; and
        ``feature_<layer>`` when several), ``output`` (task-specific), ``loss``.

    Raises:
        TskdInputError: no images, bad layers or feature_loss, nothing to distil, other classes.
        Cancelled: cancelled while caching or training (resumable).
        TskdError: from the engine or the cache.
    """
    control = control if control is not None else RunControl()
    pairs, with_logits = _check(teacher, images, cfg, student)
    t_layers = list(dict.fromkeys(t for _, t in pairs))
    cache = TeacherCache(cache_dir, teacher_id, t_layers + ([LOGITS] if with_logits else []))
    device = resolve_device(cfg.train.device)
    outputs = TeacherOutputs(teacher, images, cache, t_layers, with_logits, teacher_input_size,
                             cfg.train.mixed_precision)
    outputs.fill(device, max(1, cfg.train.batch_size), student.num_classes,
                 control.progress, control.cancel)
    with _student_in_training(student, freeze_decoder=not with_logits):
        seed_everything(cfg.train.seed)  # the projections' random initialisation repeats
        model = DistillModel(student, pairs, teacher.feature_dims, with_logits)
        data = _TransferSet(images, outputs.keys, cache, student.image_size, outputs.recompute)
        return train(_DistillTask(model, data, cfg), cfg.train, control=control,
                     callbacks=_early_stopping(student, val, cfg, with_logits))


def _early_stopping(student: AnyStudent, val: Sequence[Any], cfg: DistillConfig,
                    with_logits: bool) -> list[EarlyStopping]:
    """Stop at the plateau of the student's validation Dice, when its outputs are distilled."""
    from tskd.inference.dice import validation_dice

    return early_stopping(cfg.train, bool(val) and with_logits, lambda _: float(validation_dice(
        student, val, student.image_size, student.num_classes, cfg.train.batch_size).mean()))


@contextlib.contextmanager
def _student_in_training(student: AnyStudent, freeze_decoder: bool) -> Iterator[None]:
    """Freeze the decoder if asked (nothing would train it); after: trainable, home, eval mode."""
    home = device_of(student)
    frozen = [p for p in student.decoder_parameters() if p.requires_grad] if freeze_decoder else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        student.to(home)
        student.eval()
