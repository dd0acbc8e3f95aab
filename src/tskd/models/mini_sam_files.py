"""A mini SAM's files: its weights (safetensors) and the JSON beside them holding its config.

``save_mini_sam`` writes both as one unit (``tskd.atomic.write_files``); ``read_mini_config``
reads the JSON back as untrusted input (size-capped, every setting validated by
``MiniSamConfig.from_dict``), so loading rebuilds the same architecture
(``tskd.models.sam_checkpoint``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tskd.errors import CheckpointError
from tskd.models.mini_sam import MiniSamConfig

MAX_JSON_BYTES = 1 << 20  # a mini SAM's JSON is a few KB; larger ones are refused unread


def json_path(weights: str | Path) -> Path:
    """Return the JSON that describes a weights file: same folder and stem, ``.json``.

    Args:
        weights: the ``.safetensors`` weights file.

    Returns:
        The JSON's path (it need not exist).
    """
    return Path(weights).with_suffix(".json")


def save_mini_sam(
    sam: nn.Module,
    cfg: MiniSamConfig,
    path: str | Path,
    half: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``sam``'s weights to ``path`` (.safetensors, fp16 by default) and its config JSON.

    The weights keep SAM's official key names, at the resolution the model was built at;
    ``extra`` (e.g. pretraining settings) goes into the JSON under "info". Both files are
    written in full before either replaces its old version.

    Args:
        sam: a ``segment_anything`` ``Sam`` built from ``cfg`` (``build_mini_sam``).
        cfg: its architecture; ``img_size`` is stored as the size the model was built at.
        path: the weights file, ending in ``.safetensors``; the JSON goes to ``json_path``.
        half: store float16 weights (half the size); False stores float32.
        extra: JSON-able run information stored under "info" (None: ``{}``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        CheckpointError: ``path`` does not end in ``.safetensors``.
        DiskFullError: The disk is full; the previous weights are kept.
    """
    from tskd import atomic

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"mini SAM weights must be saved as .safetensors, not {path.name}")
    grid = sam.image_encoder.pos_embed.shape[1]
    cfg = MiniSamConfig.from_dict(cfg.to_dict() | {"img_size": grid * cfg.patch_size})
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sam.state_dict().items()}
    meta = {"model_type": "mini", "config": cfg.to_dict(), "info": extra or {}}
    atomic.write_files({
        path: atomic.safetensors_bytes(tensors),
        json_path(path): atomic.json_bytes(meta),
    })
    return path


def read_mini_config(weights: str | Path) -> MiniSamConfig | None:
    """Read the architecture from the JSON beside a mini SAM weights file (``json_path``).

    Args:
        weights: the ``.safetensors`` weights file.

    Returns:
        The validated config, or None when there is no JSON beside the weights (an official
        checkpoint).

    Raises:
        CheckpointError: The JSON is over ``MAX_JSON_BYTES`` or not a valid config (named).
    """
    jp = json_path(weights)
    if not jp.is_file():
        return None
    if jp.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(
            f"mini SAM config {jp} is larger than {MAX_JSON_BYTES // 1024} KB; "
            "it is not a tskd file"
        )
    try:
        meta = json.loads(jp.read_bytes().decode("utf-8"))
        config = meta["config"]
        if not isinstance(config, dict):
            raise TypeError("'config' is not a mapping")
        return MiniSamConfig.from_dict(config)
    except CheckpointError as exc:
        raise CheckpointError(f"{jp}: {exc}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise CheckpointError(
            f"mini SAM config {jp} is not valid ({reason}); restore the file saved with the weights"
        ) from None
