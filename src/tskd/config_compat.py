"""Configuration files of earlier versions, read in the current shape.

``tskd.config.from_dict`` passes each section through ``UPGRADES`` before it reads it, so a
file (or a run folder's ``config.yaml``) written by an earlier version still opens. A key whose
meaning is unchanged is read in its new place with one ``TskdWarning`` naming the new key; a
key given in both places is refused. Plain dicts only: this module sits below ``tskd.config``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from tskd.errors import TskdInputError, TskdWarning

__all__ = ["DEVICE_SECTIONS", "LEGACY_STUDENT", "SYNTH_EPOCH_STEPS", "UPGRADES", "flat_synth",
           "run_config", "student_config", "synth_config", "teacher_config"]

SYNTH_EPOCH_STEPS = 50  # the diffusion model's epoch: optimiser steps between checkpoints

# the sections of the stages that run on a device (each has ``device`` or ``train.device``)
DEVICE_SECTIONS = ("teacher", "synth", "distill", "student", "predict")

# the flat keys of the ``synth`` section before it had ``train``: their place in ``synth.train``
SYNTH_MOVED = {"train_steps": "max_steps", "batch_size": "batch_size", "lr": "lr",
               "seed": "seed", "device": "device"}
# the training settings that section had fixed, at their values
SYNTH_FIXED = {"weight_decay": 0.0, "warmup_fraction": 0.05, "mixed_precision": "auto",
               "grad_clip": 1.0}


def synth_config(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``synth`` section with its flat training keys moved into ``train``.

    ``train_steps: N`` becomes ``train.epochs: ceil(N / 50)`` and, unless N is a multiple of 50,
    ``train.max_steps: N`` (the same N steps in the same engine epochs:
    ``TrainConfig.set_steps``); the others keep their names; ``device: auto`` becomes the
    run's device (``train.device`` left out), as "auto" was the default.

    Args:
        data: the section as read from YAML.
        where: its key path, e.g. ``"synth"``, for messages.

    Returns:
        ``data`` unchanged when it holds no old key, else a new dict; one ``TskdWarning``
        names every key moved.

    Raises:
        TskdInputError: a key is given both in its old and its new place, or ``train`` is no
            mapping.
    """
    old = [k for k in SYNTH_MOVED if k in data]
    if not old:
        return data
    where = where or "synth"
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise TskdInputError(f"config: '{where}.train' must be a mapping, got {train!r}")
    data, train = dict(data), dict(train)
    for key in old:
        new, value = SYNTH_MOVED[key], data.pop(key)
        clash = ("epochs", new) if key == "train_steps" else (new,)
        if any(k in train for k in clash):
            raise TskdInputError(f"config: '{where}.{key}' is the old place of "
                                 f"'{where}.train.{new}'; give only '{where}.train.{new}'")
        if key == "train_steps" and isinstance(value, int) and not isinstance(value, bool):
            train["epochs"] = -(-value // SYNTH_EPOCH_STEPS)
            if value % SYNTH_EPOCH_STEPS == 0:
                continue  # whole epochs: no cap needed
        if not (key == "device" and value == "auto"):
            train[new] = value
    data["train"] = train
    moved = ", ".join(f"{where}.{k} -> {where}.train.{SYNTH_MOVED[k]}" for k in old)
    warnings.warn(TskdWarning(f"config: keys of an earlier version read in their new place "
                              f"({moved}); write them there to silence this warning"),
                  stacklevel=4)
    return data


def flat_synth(synth: dict[str, Any], steps: int, processes: int = 1) -> dict[str, Any]:
    """A ``synth`` section in the flat shape it had before ``train``.

    The shape the transfer set's fingerprints read, so runs and diffusion models of earlier
    versions keep theirs.

    Args:
        synth: the section as a dict (``tskd.config.to_dict``), with ``train``.
        steps: the optimiser steps it trains (``TrainConfig.total_steps``).
        processes: the processes of the job (``tskd.distributed.world_size``; default 1).

    Returns:
        The section with ``train_steps`` (= ``steps``), ``batch_size`` (the global batch:
        ``train.batch_size x train.grad_accum_steps x processes``, so one process without
        accumulation gives the value of earlier versions), ``lr`` and ``seed`` at the top (the
        device and the accumulation left out), and, under ``train``, those of ``SYNTH_FIXED``
        that differ from the values they had.
    """
    flat = dict(synth)
    train = flat.pop("train")
    flat |= {"train_steps": steps, **{k: train[k] for k in ("batch_size", "lr", "seed")}}
    flat["batch_size"] *= int(train.get("grad_accum_steps", 1) or 1) * max(1, processes)
    changed = {k: train[k] for k, v in SYNTH_FIXED.items() if train[k] != v}
    return flat | ({"train": changed} if changed else {})


def run_config(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A whole run's config: an earlier version's device settings.

    Such a file has no top-level ``device`` and set the device per stage
    (``<stage>.train.device``, ``synth.device``, ``predict.device``), "auto" by default. That
    "auto" is what the run's device now is by default, so it is left out (the stage follows
    the run's device); any other value stays that stage's own device. Silent: nothing changes.

    Args:
        data: the whole run's config as read (plain dicts); not modified.
        where: the config's dotted key in messages (``UPGRADES``' signature; unused here).

    Returns:
        ``data``, or a new dict without those "auto" values.
    """
    if "device" in data:
        return data
    data = dict(data)
    for section in DEVICE_SECTIONS:
        part = data.get(section)
        nested = section != "predict"  # the flat synth.device is synth_config's
        owner = part.get("train") if nested and isinstance(part, dict) else part
        if isinstance(owner, dict) and owner.get("device") == "auto":
            owner = {k: v for k, v in owner.items() if k != "device"}
            data[section] = part | {"train": owner} if nested else owner
    return data


# by the config dataclass's name (``tskd.config.from_dict`` looks its class up here)
# the student as earlier versions built it, before ``architecture`` existed: the ViT-Tiny with
# transposed convolutions, fine-tuned at one learning rate
LEGACY_STUDENT = {"architecture": "vit_tiny", "upsample": "transposed", "encoder_lr_scale": 1.0}
VIT_KEYS = ("embed_dim", "depth", "num_heads", "patch_size")
UNET_WIDTH_BEFORE_THE_KEY = 32  # MONAI BasicUNet's default, the U-Net of earlier versions


def student_config(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``student`` section of an earlier version, read as it was meant.

    - It names the U-Net but no ``unet_width``: width 32, the only one before the key (run
      folders' ``config.yaml`` and students' ``meta.json`` of those versions).
    - It names no architecture but a timm ``backbone``, and none of the ViT's keys: the CNN
      student, the default of the versions before the U-Net student (one ``TskdWarning``).
    - Earlier still, there was only the ViT-Tiny; those sections list its keys (``VIT_KEYS``)
      and keep meaning that student (``LEGACY_STUDENT``), so an earlier run's stages are still
      taken as done, with one ``TskdWarning`` saying so.

    A section with none of these gets the current default.

    Args:
        data: The section as read.
        where: The section's dotted key (unused).

    Returns:
        ``data``, or a new dict with the values it was read with filled in.
    """
    if data.get("architecture") == "unet" and "unet_width" not in data:
        return dict(data) | {"unet_width": UNET_WIDTH_BEFORE_THE_KEY}
    if "architecture" in data:
        return data
    if "backbone" in data and not any(k in data for k in VIT_KEYS):
        warnings.warn("config: the student section sets a 'backbone' but no architecture: "
                      "read as the CNN student (architecture: conv), the default before the "
                      "U-Net student; set 'student.architecture' (unet, the default, conv or "
                      "vit_tiny) to choose, and silence this warning", TskdWarning, stacklevel=2)
        return dict(data) | {"architecture": "conv"}
    if not any(k in data for k in VIT_KEYS):
        return data
    keys = ", ".join(k for k in VIT_KEYS if k in data)
    warnings.warn(f"config: the student section lists the ViT-Tiny's {keys} but no "
                  "architecture: read as the ViT-Tiny of earlier versions (transposed "
                  "convolutions); set 'student.architecture' (unet, the default, conv or "
                  "vit_tiny) to choose, and silence this warning", TskdWarning, stacklevel=2)
    return LEGACY_STUDENT | dict(data)


# a teacher section that lists these keys was written whole (a run folder's config.yaml)
TEACHER_DUMP_KEYS = ("lora", "train", "dice_weight")


def teacher_config(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A whole ``teacher`` section of an earlier version, without ``refine_head``, read as it was.

    Earlier versions had no refine head and wrote every teacher key (``TEACHER_DUMP_KEYS``
    among them) into a run folder's ``config.yaml``; such a section keeps meaning a teacher
    without the head, so that run's stages are still taken as done, with one ``TskdWarning``.
    A partial section gets the current default (the head).

    Args:
        data: The section as read.
        where: The section's dotted key (unused).

    Returns:
        ``data``, or a new dict with ``refine_head`` False.
    """
    if "refine_head" in data or not all(k in data for k in TEACHER_DUMP_KEYS):
        return data
    warnings.warn("config: the teacher section was written by an earlier version, without "
                  "'refine_head': read as the teacher without the full-resolution head; set "
                  "'teacher.refine_head' to choose, and silence this warning", TskdWarning,
                  stacklevel=2)
    return dict(data) | {"refine_head": False}


UPGRADES: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "RunConfig": run_config,
    "SynthConfig": synth_config,
    "StudentConfig": student_config,
    "TeacherConfig": teacher_config,
}
