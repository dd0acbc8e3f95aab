"""Where a model runs: the device setting resolved, and the ``accelerate`` set-up for training.

One rule for every stage and for inference: ``"auto"`` is a CUDA GPU if present, else Apple
MPS, else the CPU; a device asked for by name but missing is one ``TskdError``. Mixed precision
``"auto"`` is bf16 on a CUDA GPU that supports it, else fp16 on CUDA, and none elsewhere.
``tskd.engine`` re-exports both public names.
"""

from __future__ import annotations

from typing import Any

import torch

from tskd.config import TrainConfig
from tskd.errors import TskdError


def resolve_device(device: str | None) -> torch.device:
    """Turn a device setting into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA if present, else Apple MPS, else the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or ``"mps"``; None (a stage's device left to the run,
            ``tskd.config.TrainConfig.device``, used outside a run) is ``"auto"``, the
            default of ``tskd.config.RunConfig.device``.

    Returns:
        The device to train or predict on.

    Raises:
        TskdError: CUDA or MPS was asked for but is not available.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TskdError(f"device '{device}' was asked for but no CUDA GPU is available")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TskdError(f"device '{device}' was asked for but Apple MPS is not available")
    return dev


def _mixed_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.mixed_precision != "auto":
        return "no" if device.type == "cpu" else cfg.mixed_precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``accelerate.Accelerator`` for ``cfg.device`` and ``cfg.mixed_precision``.

    Mixed precision ``"auto"`` is bf16 on a CUDA GPU that supports it, else fp16 on CUDA and
    none elsewhere; the CPU never runs mixed precision. Build one per training run: the shared
    accelerate state is reset first, so each run may use another device or precision.

    Args:
        cfg: the engine's settings (defaults from ``tskd.config.TrainConfig``).

    Returns:
        A new ``Accelerator``.

    Raises:
        TskdError: the configured device is not available (see ``resolve_device``).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    device = resolve_device(cfg.device)
    # each run may ask for another device or precision: start from a clean shared state
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=_mixed_precision(cfg, device)
    )
