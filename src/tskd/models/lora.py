"""LoRA on the teacher (peft), merging, and the small adapter files a trained teacher is kept as.

Only LoRA matrices and the class heads are trained and saved (``adapter.safetensors``); the
base SAM is rebuilt from its checkpoint, whose sha256 must match the one recorded in
``meta.json``, so an adapter is never silently applied to other base weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tskd.config import LoraSettings
from tskd.errors import CheckpointError, TskdError
from tskd.models.meta_file import read_meta_file
from tskd.models.meta_schema import TeacherMeta, validate_teacher_meta
from tskd.models.mini_sam import BUILTIN_WEIGHTS
from tskd.models.sam_checkpoint import sha256_of
from tskd.models.teacher import SemanticSam, build_sam

ADAPTER = "adapter.safetensors"
META = "meta.json"


def is_lora(model: SemanticSam) -> bool:
    """Tell whether LoRA layers are applied to ``model`` (and not yet merged).

    Args:
        model: the teacher.

    Returns:
        True while ``apply_lora``'s adapters are in place.
    """
    return hasattr(model.sam, "merge_and_unload")


def head_parameters(model: SemanticSam) -> list[nn.Parameter]:
    """List the class heads of ``model``, trained in full beside the LoRA matrices.

    Args:
        model: the teacher.

    Returns:
        The class tokens, the hypernetwork MLPs, SAM's decoder's ``output_upscaling``
        (shared by all classes) and the refine head when the teacher has one.
    """
    refine = list(model.refine.parameters()) if model.refine is not None else []
    return [
        model.class_tokens,
        *model.class_mlps.parameters(),
        *model.base.mask_decoder.output_upscaling.parameters(),
        *refine,
    ]


def lora_modules(sam: nn.Module, settings: LoraSettings) -> list[str]:
    """Names of the layers of ``sam`` that ``settings.targets`` select and LoRA can adapt.

    Targets are module names or safe patterns (``tskd.lora_targets``), matched in linear time
    against every module's full name; only linear, convolution and embedding layers are kept,
    the kinds peft's LoRA supports.

    Args:
        sam: A ``segment_anything`` ``Sam`` (or any module).
        settings: The LoRA settings; only ``targets`` is used.

    Returns:
        Full module names, in ``named_modules`` order; empty when nothing matches.

    Raises:
        TskdInputError: A target that is neither a name nor a safe pattern.
    """
    from tskd.lora_targets import check_targets

    targets = check_targets(settings.targets, "LoRA targets")
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    return [
        name
        for name, module in sam.named_modules()
        if name and isinstance(module, kinds) and any(t.matches(name) for t in targets)
    ]


def apply_lora(model: SemanticSam, settings: LoraSettings) -> SemanticSam:
    """Add LoRA (peft) to the target projections; freeze all but LoRA and the class heads.

    LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds a trained
    low-rank update ``(alpha / rank) * B A`` to each frozen target weight, as the TS-KD paper
    adapts SAM (Fig. 2b); the defaults (rank 32, alpha 32) are measured in
    ``benchmarks/teacher_adaptation.py`` (see ``tskd.config.LoraSettings``). The settings are
    checked first (``LoraSettings.check``: rank, alpha, dropout, target grammar); peft gets the
    exact names of the matched layers, never a user's regular expression.

    Args:
        model: The teacher, modified in place (its ``sam`` becomes peft's wrapper).
        settings: Rank, alpha, dropout, targets; ``train_decoder`` also leaves the whole mask
            decoder trainable.

    Returns:
        ``model``.

    Raises:
        TskdInputError: Bad settings.
        TskdError: LoRA is already applied, or the targets match no layer.
    """
    if is_lora(model):
        raise TskdError("LoRA is already applied to this teacher")
    settings.check("teacher.lora")
    names = lora_modules(model.sam, settings)
    if not names:
        raise TskdError(
            f"LoRA targets {settings.targets} match no linear or convolution layer of SAM; "
            "use module names such as 'attn.qkv' or patterns such as "
            "'image_encoder\\.blocks\\.\\d+\\.attn\\.qkv'"
        )
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=names,
        bias="none",
    )
    for p in model.parameters():
        p.requires_grad_(False)
    model.sam = get_peft_model(model.sam, config)
    trained = model.base.mask_decoder.parameters() if settings.train_decoder else []
    for p in [*head_parameters(model), *trained]:
        p.requires_grad_(True)
    return model


def merge_lora(model: SemanticSam) -> SemanticSam:
    """Fold the LoRA weights into the base layers (peft ``merge_and_unload``): a plain Sam.

    Args:
        model: the teacher, changed in place.

    Returns:
        ``model``, without LoRA layers (as it was when none were applied).
    """
    if is_lora(model):
        model.sam = model.sam.merge_and_unload()
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copy the trainable tensors of ``model`` (LoRA + heads while LoRA is applied).

    Args:
        model: any module.

    Returns:
        ``{parameter name: tensor}``: detached float32 copies on the CPU, ready for
        safetensors.
    """
    return {
        n: p.detach().float().cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _base_sha(checkpoint: str) -> str:
    return sha256_of(BUILTIN_WEIGHTS if checkpoint == "builtin" else checkpoint)


def save_teacher(model: SemanticSam, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``adapter.safetensors`` (LoRA + heads) and ``meta.json`` into ``folder``.

    Both files are written in full before either replaces its old version.

    Args:
        model: The unmerged LoRA teacher (call it before ``merge_lora``).
        folder: The teacher folder.
        meta: Needs "lora" (LoraSettings or dict); "model_type" and "checkpoint" default to
            where ``build_sam`` loaded the base from; kind, num_classes, input_size and the
            base's sha256 are added.

    Returns:
        ``folder``.

    Raises:
        TskdError: LoRA is not applied, or the base or the LoRA settings are unknown.
        DiskFullError: The disk is full; the previous teacher is left as it was.
    """
    from tskd import atomic

    if not is_lora(model):
        raise TskdError("save_teacher needs the unmerged LoRA teacher (call it before merge_lora)")
    source = getattr(model.base, "tskd_source", {})
    meta = dict(meta)
    meta.setdefault("model_type", source.get("model_type"))
    meta.setdefault("checkpoint", source.get("checkpoint"))
    if meta["model_type"] is None or meta["checkpoint"] is None:
        raise TskdError("save_teacher: the base model's type and checkpoint are unknown")
    lora = meta.get("lora")
    if lora is None:
        raise TskdError("save_teacher: meta needs the LoRA settings under 'lora'")
    meta["lora"] = asdict(lora) if isinstance(lora, LoraSettings) else dict(lora)
    meta["checkpoint"] = str(meta["checkpoint"])
    meta.setdefault("checkpoint_sha256", _base_sha(meta["checkpoint"]))
    meta |= {"kind": "teacher", "num_classes": model.num_classes, "input_size": model.input_size,
             "refine_head": model.refine is not None}
    folder = Path(folder)
    atomic.write_files({
        folder / ADAPTER: atomic.safetensors_bytes(trainable_state(model)),
        folder / META: atomic.json_bytes(meta),
    })
    return folder


def read_adapter_meta(folder: str | Path) -> dict[str, Any]:
    """Read an adapted teacher's ``meta.json``, checked against the teacher schema.

    Args:
        folder: the teacher folder (``save_teacher``'s).

    Returns:
        The parsed ``meta.json``, valid (``tskd.models.meta_schema.validate_teacher_meta``).

    Raises:
        CheckpointError: The folder lacks the adapter or ``meta.json``.
        ModelMetaError: The description is unreadable or outside the schema
            (``tskd.models.meta_schema.validate_teacher_meta``); the file and key are named.
    """
    return _checked_meta(folder).raw


def _checked_meta(folder: str | Path) -> TeacherMeta:
    path = Path(folder) / META
    if not path.is_file() or not (Path(folder) / ADAPTER).is_file():
        raise CheckpointError(f"no adapted teacher in {folder} (need {ADAPTER} and {META})")
    return validate_teacher_meta(read_meta_file(path), path)


def load_teacher(folder: str | Path, checkpoint: str | Path | None = None) -> SemanticSam:
    """Rebuild the base SAM, check its sha256, apply the adapter, merge: an eval-mode teacher.

    The description is checked before anything is read or built (see ``read_adapter_meta``).

    Args:
        folder: The teacher folder (``adapter.safetensors`` + ``meta.json``).
        checkpoint: Replaces the recorded base path (e.g. when the file was moved).

    Returns:
        The merged ``SemanticSam`` in eval mode, every parameter frozen.

    Raises:
        CheckpointError: The base checkpoint is missing or its sha256 is not the recorded one,
            or the adapter is corrupt or does not fit the base and LoRA settings.
        ModelMetaError: As ``read_adapter_meta``.
    """
    from safetensors.torch import load_file

    info = _checked_meta(folder)
    ckpt = str(checkpoint) if checkpoint is not None else info.checkpoint
    path = BUILTIN_WEIGHTS if ckpt == "builtin" else Path(ckpt)
    if not path.is_file():
        raise CheckpointError(
            f"base checkpoint {path} of the teacher in {folder} was not found; pass its new path"
        )
    sha = sha256_of(path)
    if sha != info.checkpoint_sha256:
        raise CheckpointError(
            f"base checkpoint {path} (sha256 {sha[:12]}) is not the one the teacher in {folder} "
            f"was trained on (sha256 {info.checkpoint_sha256[:12]})"
        )
    sam = build_sam(info.model_type, path, info.input_size)
    if ckpt == "builtin":
        sam.tskd_source = {"model_type": info.model_type, "checkpoint": "builtin"}
    model = apply_lora(SemanticSam(sam, info.num_classes, info.refine_head), info.lora)
    try:
        tensors = load_file(str(Path(folder) / ADAPTER))
    except Exception:
        raise CheckpointError(f"teacher adapter {Path(folder) / ADAPTER} is corrupt") from None
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        raise CheckpointError(
            f"teacher adapter in {folder} does not fit its base model and LoRA settings"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    model = merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def teacher_id(folder: str | Path) -> str:
    """Compute a stable id of an adapted teacher, the key of its teacher-output cache.

    Args:
        folder: the teacher folder.

    Returns:
        16 hexadecimal digits of a sha256 over the adapter's bytes, the base checkpoint's
        sha256 and the input size: equal for the same teacher in every process.

    Raises:
        CheckpointError: The folder lacks the adapter or ``meta.json`` (``read_adapter_meta``).
        ModelMetaError: The description is unreadable or outside the schema.
    """
    meta = read_adapter_meta(folder)
    h = hashlib.sha256()
    h.update(sha256_of(Path(folder) / ADAPTER).encode())
    h.update(str(meta.get("checkpoint_sha256")).encode())
    h.update(str(meta.get("input_size")).encode())
    return h.hexdigest()[:16]
