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
from tskd.errors import TskdError, TskdInputError


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
        TskdInputError: ``device`` names no device of those (e.g. ``"bogus"``, ``"meta"``).
        TskdError: CUDA or MPS was asked for but is not available.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's "Expected one of cpu, cuda, ... device type"
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise TskdInputError(f"unknown device '{device}'; choose auto, cpu, cuda, cuda:N or mps")
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
    accelerate state is reset first, so each run may use another device or precision; under
    ``torchrun`` or ``accelerate launch`` the job's process group is joined once
    (``tskd.distributed.setup``) and kept for every later stage. DDP looks for parameters a
    step left unused (``find_unused_parameters``), so any stage runs on several processes.

    Args:
        cfg: the engine's settings (defaults from ``tskd.config.TrainConfig``).

    Returns:
        A new ``Accelerator``.

    Raises:
        TskdError: the configured device is not available (see ``resolve_device``).
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState

    from tskd import distributed

    device = resolve_device(cfg.device)
    distributed.setup(cpu=device.type == "cpu")
    # each run may ask for another device or precision: start from a clean shared state, but
    # keep the job's process group (and accelerate's record of it) for all its stages
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    AcceleratorState._reset_state(reset_partial_state=not grouped)
    GradientState._reset_state()
    # a stage may leave parameters without a gradient in a step (frozen heads, unused outputs)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # split_batches: the engine's batches are already each rank's share of a global batch
    # (tskd.distributed.ShardedBatches), so the schedule steps once per optimiser step
    return Accelerator(cpu=device.type == "cpu", mixed_precision=_mixed_precision(cfg, device),
                       kwargs_handlers=[ddp],
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch's tensors to ``device``, through dicts, lists and tuples.

    Args:
        batch: a tensor, or dicts / lists / tuples of them; other values are kept as they are.
        device: where the model runs.

    Returns:
        The same structure, its tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
