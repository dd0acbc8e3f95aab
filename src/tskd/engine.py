"""The one training loop every stage runs through, built on ``accelerate``.

A stage describes *what* to train as a ``TrainingTask`` (model, data, loss); the engine owns
*how*: device and mixed precision, optimiser and schedule, seeds, a progress callback, a cancel
flag checked every step, a checkpoint at every epoch (and on cancel) and resuming from it.

Checkpoints hold only trainable parameters (safetensors), the optimiser and scheduler state
(loaded back with ``weights_only=True``) and a JSON of where training stood. Randomness is
re-seeded from ``seed + epoch`` at every epoch, so a resumed run takes the same data order and
augmentations as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tskd.config import TrainConfig
from tskd.errors import Cancelled, TskdError


@dataclass
class Progress:
    """One report from the engine: enough for a progress bar, a loss plot and an ETA."""

    stage: str
    step: int  # optimiser steps done (1-based after the first)
    total: int  # optimiser steps planned
    epoch: int  # 0-based epoch in progress
    epochs: int
    loss: float
    eta_s: float | None
    logs: dict[str, float] = field(default_factory=dict)
    message: str = ""
    # {"image": (S, S, 3) uint8, "labels": (S, S) uint8}: the model's current prediction on the
    # first training image, at most every PREVIEW_INTERVAL_S and after the last epoch
    preview: dict[str, Any] | None = None


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """A flag a GUI or signal handler sets to stop training at the next step."""

    def __init__(self, flag: Any | None = None) -> None:
        # any object with is_set()/set() works: threading.Event, multiprocessing.Event
        import threading

        self._flag = flag if flag is not None else threading.Event()

    def cancel(self) -> None:
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        return bool(self._flag.is_set())


class TrainingTask(Protocol):
    """What a stage hands to the engine."""

    name: str
    model: nn.Module  # owns every trainable parameter (requires_grad=True)

    def dataset(self) -> Dataset: ...

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Forward one batch; return losses, with the one to minimise under 'loss'."""
        ...


@dataclass
class TrainResult:
    """What came out of a training run."""

    history: list[dict[str, float]]  # one entry per finished epoch: mean of each logged loss
    steps: int
    seconds: float
    resumed_from_epoch: int | None = None


def resolve_device(device: str) -> torch.device:
    """Turn 'auto'/'cpu'/'cuda[:N]'/'mps' into a device, with a clear error if unavailable."""
    if device == "auto":
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
    """An ``Accelerator`` for the configured device; one per training run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    device = resolve_device(cfg.device)
    # each run may ask for another device or precision: start from a clean shared state
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=_mixed_precision(cfg, device)
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) at once."""
    from accelerate.utils import set_seed

    set_seed(seed)


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


_BUFFER = "buffer::"


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point and counter buffers that training may update (BatchNorm statistics)."""
    return {n: b for n, b in model.named_buffers() if "running_" in n or "num_batches" in n}


class _Checkpoint:
    """Files of the resumable state in ``checkpoint_dir``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.params = folder / "trainable.safetensors"
        self.optim = folder / "optimizer.pt"
        self.state = folder / "state.json"

    def exists(self) -> bool:
        return self.params.is_file() and self.optim.is_file() and self.state.is_file()

    def save(self, model: nn.Module, optimizer: Any, scheduler: Any, state: dict) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().float().cpu().contiguous() for n, p in _trainable(model).items()}
        # running statistics (e.g. BatchNorm) change during training too: keep them for resume
        tensors |= {_BUFFER + n: b.detach().cpu().contiguous() for n, b in _buffers(model).items()}
        tmp = self.folder / "tmp"
        tmp.mkdir(exist_ok=True)
        save_file(tensors, str(tmp / self.params.name))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            tmp / self.optim.name,
        )
        (tmp / self.state.name).write_text(json.dumps(state, indent=1))
        for f in (self.params, self.optim, self.state):  # replace only once all are written
            (tmp / f.name).replace(f)
        tmp.rmdir()

    def load(self, model: nn.Module, optimizer: Any, scheduler: Any) -> dict:
        from safetensors.torch import load_file

        from tskd.errors import CheckpointError
        from tskd.sam_checkpoint import load_weights_only

        try:
            tensors = load_file(str(self.params))
            extra = load_weights_only(self.optim, "training checkpoint")
            state = json.loads(self.state.read_text())
        except CheckpointError:  # already one sentence naming the file
            raise
        except Exception as exc:  # a damaged checkpoint is a user-level problem
            raise TskdError(
                f"cannot resume: checkpoint in {self.folder} is damaged ({exc})"
            ) from None
        params = _trainable(model)
        buffers = {n[len(_BUFFER):]: t for n, t in tensors.items() if n.startswith(_BUFFER)}
        tensors = {n: t for n, t in tensors.items() if not n.startswith(_BUFFER)}
        if set(tensors) != set(params):
            raise TskdError(
                f"cannot resume: checkpoint in {self.folder} belongs to a different model or "
                "configuration (its trainable parameters differ)"
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[n].to(p.dtype))
            for n, b in _buffers(model).items():
                if n in buffers:
                    b.copy_(buffers[n].to(b.dtype))
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        return state

    def clear(self) -> None:
        for f in (self.params, self.optim, self.state):
            f.unlink(missing_ok=True)


def _collate_default(batch: list[Any]) -> Any:
    return torch.utils.data.default_collate(batch)


PREVIEW_INTERVAL_S = 5.0


def preview_prediction(model: nn.Module, dataset: Dataset, device: torch.device
                       ) -> dict[str, Any] | None:
    """The model's label map for the dataset's first prepared image, or None if it has none.

    Uses ``dataset.images`` (the prepared, un-augmented tensors of ``LabelledDataset``), so no
    random number is drawn and a run with previews trains exactly like one without. Models
    whose output is not a (1, C, S, S) logit map (distillation) give no preview.
    """
    images, targets = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if not isinstance(images, list | tuple) or not images or targets is None:
        return None  # not a segmentation set (diffusion, distillation)
    image = images[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(image[None].to(device))
    except (TypeError, ValueError, RuntimeError):  # a preview must never stop training
        return None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != 1:
        return None
    labels = out[0].argmax(0).to("cpu", torch.uint8).numpy()
    rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {"image": rgb, "labels": labels}


def train(
    task: TrainingTask,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    extra_parameters: Iterable[nn.Parameter] = (),
) -> TrainResult:
    """Train ``task.model``'s trainable parameters; see the module docstring for guarantees.

    Raises ``Cancelled`` (after writing a checkpoint) when ``cancel`` is set.
    """
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg)
    model = task.model
    params = list(_trainable(model).values()) + list(extra_parameters)
    if not params:
        raise TskdError(f"{task.name}: the model has no trainable parameters")
    dataset = task.dataset()
    if len(dataset) == 0:
        raise TskdError(f"{task.name}: no training data")
    batch_size = max(1, min(cfg.batch_size, len(dataset)))
    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset) >= 2 * batch_size,
        generator=generator,
        collate_fn=collate_fn or _collate_default,
        num_workers=0,
    )
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    epochs = math.ceil(total / steps_per_epoch) if total else 0
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(cfg.warmup_fraction * total))
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    ckpt = _Checkpoint(Path(checkpoint_dir)) if checkpoint_dir else None
    history: list[dict[str, float]] = []
    start_epoch, skip_batches, step = 0, 0, 0
    resumed_from: int | None = None
    if resume and ckpt and ckpt.exists():
        state = ckpt.load(accelerator.unwrap_model(model), optimizer, scheduler)
        if state.get("config") != asdict(cfg):
            raise TskdError(
                f"cannot resume: the checkpoint in {ckpt.folder} was made with other training "
                "settings; start again without --resume"
            )
        start_epoch, skip_batches = state["epoch"], state["batch_in_epoch"]
        step, history = state["step"], state["history"]
        resumed_from = start_epoch

    def save(epoch: int, batch_in_epoch: int) -> None:
        if ckpt is None:
            return
        state = {
            "task": task.name,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "history": history,
            "config": asdict(cfg),
        }
        ckpt.save(accelerator.unwrap_model(model), optimizer, scheduler, state)

    t0 = time.perf_counter()
    last_preview = t0
    steps_this_run = 0
    model.train()
    for epoch in range(start_epoch, epochs):
        seed_everything(cfg.seed + epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)
        sums: dict[str, float] = {}
        count = 0
        for i, batch in enumerate(loader):
            if epoch == start_epoch and i < skip_batches:
                continue  # data is still drawn, so the random streams match an unbroken run
            if step >= total:
                break
            if cancel is not None and cancel.cancelled:
                save(epoch, i)
                raise Cancelled(f"{task.name}: cancelled at step {step}/{total}; resume to go on")
            batch = _to_device(batch, accelerator.device)
            with accelerator.autocast():
                losses = task.step(model, batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise TskdError(
                    f"{task.name}: the loss became {loss.item()} at step {step}; "
                    "lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_this_run += 1
            count += 1
            logs = {k: float(v.detach()) for k, v in losses.items()}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress is not None:
                elapsed = time.perf_counter() - t0
                eta = elapsed / steps_this_run * (total - step)
                progress(
                    Progress(task.name, step, total, epoch, epochs, logs["loss"], eta, logs)
                )
        skip_batches = 0
        if count:
            history.append({k: v / count for k, v in sums.items()} | {"epoch": epoch})
        save(epoch + 1, 0)
        last = step >= total or epoch == epochs - 1
        if progress is not None and count and (
                last or time.perf_counter() - last_preview >= PREVIEW_INTERVAL_S):
            preview = preview_prediction(model, dataset, accelerator.device)
            if preview is not None:
                last_preview = time.perf_counter()
                progress(Progress(task.name, step, total, epoch, epochs, logs["loss"], 0.0,
                                  logs, preview=preview))
        if step >= total:
            break
    model.eval()
    if ckpt is not None:
        ckpt.clear()  # finished: the stage writes its own artefact; nothing left to resume
        (ckpt.folder / "history.json").write_text(json.dumps(history, indent=1))
    task.model = accelerator.unwrap_model(model)
    return TrainResult(history, step, time.perf_counter() - t0, resumed_from)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
