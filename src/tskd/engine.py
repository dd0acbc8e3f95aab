"""The one training loop every stage runs through, built on ``accelerate``.

A stage describes *what* to train as a ``TrainingTask`` (model, data, loss); the engine owns
*how*: device and mixed precision, optimiser and schedule, seeds, a progress callback, a cancel
flag checked every step, a checkpoint at every epoch (and on cancel) and resuming from it.

Checkpoints hold only trainable parameters (safetensors), the optimiser, scheduler and random
stream states (loaded back with ``weights_only=True``) and a JSON of where training stood; each
is one atomic, sha256-verified unit (``_Checkpoint``). Randomness is re-seeded from
``seed + epoch`` at every epoch, and a mid-epoch checkpoint restores the random streams as they
were before its batch, so a resumed run takes the same data order, augmentations and dropout
draws as an uninterrupted one and ends with the same weights, bit for bit on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
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


def _rng_state() -> dict[str, Any]:
    """Every global random stream a training step may draw from (torch, CUDA, NumPy, Python)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Checkpoint:
    """The resumable state of a stage in ``folder``, written and read as one unit.

    Layout: ``folder/ckpt/`` holds ``trainable.safetensors`` (trainable parameters and running
    statistics), ``optimizer.pt`` (optimiser, scheduler and random-stream states; read back with
    ``weights_only=True``), ``state.json`` (where training stood), ``extra.safetensors`` (state a
    task keeps beside the model, e.g. an EMA; optional) and ``manifest.json`` (sha256 and size of
    each of those files), written last. A save writes a new ``ckpt.tmp-<pid>-<random>/`` in full
    (fsync'ed), renames the current ``ckpt`` to ``ckpt.old``, the new one to ``ckpt``, and only
    then removes ``ckpt.old``; so at any instant ``ckpt`` or ``ckpt.old`` is complete, and a
    reader never sees files of two saves. ``read`` verifies the manifest and falls back from
    ``ckpt`` to ``ckpt.old``; a checkpoint that does not verify is discarded with a warning.
    Leftovers of a killed save (``ckpt.tmp-*`` of a process that no longer runs, and the ``tmp/``
    folder and loose files of the earlier layout) are removed by the next save, read or clear.
    """

    CURRENT = "ckpt"
    OLD = "ckpt.old"
    TMP_PREFIX = "ckpt.tmp-"
    MANIFEST = "manifest.json"
    PARAMS = "trainable.safetensors"
    OPTIM = "optimizer.pt"
    STATE = "state.json"
    EXTRA = "extra.safetensors"
    _REQUIRED = (PARAMS, OPTIM, STATE)
    _LEGACY = (PARAMS, OPTIM, STATE)  # the earlier layout: loose files + a "tmp" folder

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current = folder / self.CURRENT
        self.old = folder / self.OLD

    # -- housekeeping
    def _remove_leftovers(self) -> None:
        """Remove what killed saves left (only the project's own names, never other files)."""
        import shutil

        from tskd.atomic import owner_pid, pid_alive

        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            pid = owner_pid(entry.name, self.TMP_PREFIX)
            if pid is not None and entry.is_dir() and (pid == os.getpid() or not pid_alive(pid)):
                shutil.rmtree(entry, ignore_errors=True)
        legacy_tmp = self.folder / "tmp"
        if legacy_tmp.is_dir() and all(p.name in self._LEGACY for p in legacy_tmp.iterdir()):
            shutil.rmtree(legacy_tmp, ignore_errors=True)

    def _remove_legacy_files(self) -> None:
        for name in self._LEGACY:
            (self.folder / name).unlink(missing_ok=True)

    # -- writing
    def save(self, model: nn.Module, optimizer: Any, scheduler: Any, state: dict,
             rng: dict[str, Any] | None = None,
             extra: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None) -> None:
        """Write a new checkpoint as one unit (see the class docstring).

        Raises ``DiskFullError`` ("no space left on <folder>, N MB needed") or ``TskdError``
        (folder not writable) and then leaves the previous checkpoint as it was.
        """
        import shutil

        from tskd.atomic import (
            _write_file,
            fsync_dir,
            json_bytes,
            safetensors_bytes,
            torch_bytes,
            user_fixable_error,
        )

        tensors = {n: p.detach().float().cpu().contiguous() for n, p in _trainable(model).items()}
        # running statistics (e.g. BatchNorm) change during training too: keep them for resume
        tensors |= {_BUFFER + n: b.detach().cpu().contiguous() for n, b in _buffers(model).items()}
        optim = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if rng is not None:
            optim["rng"] = rng
        files = {
            self.PARAMS: safetensors_bytes(tensors),
            self.OPTIM: torch_bytes(optim),
            self.STATE: json_bytes(state),
        }
        if extra is not None:
            ex_tensors, ex_meta = extra
            files[self.EXTRA] = safetensors_bytes(
                {k: v.detach().cpu().contiguous() for k, v in ex_tensors.items()}, ex_meta
            )
        manifest = {
            "format": 1,
            "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                      for n, d in files.items()},
        }
        files[self.MANIFEST] = json_bytes(manifest)  # written last: its presence seals the rest
        total = sum(len(d) for d in files.values())
        tmp = self.folder / f"{self.TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            tmp.mkdir()
            for name, data in files.items():
                _write_file(tmp / name, data)
            fsync_dir(tmp)
            if self.current.is_dir():
                if self.old.is_dir():  # left by a save killed after its swap: outdated
                    shutil.rmtree(self.old)
                os.replace(self.current, self.old)
            os.replace(tmp, self.current)
            fsync_dir(self.folder)
        except OSError as exc:
            err = user_fixable_error(exc, self.folder, total)
            if err is None:
                raise
            raise err from None
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.old, ignore_errors=True)
        self._remove_legacy_files()

    # -- reading
    def _verified(self, folder: Path) -> tuple[dict[str, bytes] | None, str]:
        """The files of the checkpoint in ``folder`` if its manifest verifies, else a reason."""
        try:
            manifest = json.loads((folder / self.MANIFEST).read_bytes())
            listed = manifest["files"]
            if not isinstance(listed, dict):
                raise TypeError
        except FileNotFoundError:
            return None, "it has no manifest (the save was interrupted)"
        except (OSError, ValueError, KeyError, TypeError):
            return None, "its manifest is unreadable"
        missing = [n for n in self._REQUIRED if n not in listed]
        if missing:
            return None, f"its manifest lacks {', '.join(missing)}"
        files: dict[str, bytes] = {}
        for name, entry in listed.items():
            if "/" in name or "\\" in name or name.startswith("."):
                return None, f"its manifest names an unexpected file {name!r}"
            try:
                data = (folder / name).read_bytes()
            except OSError:
                return None, f"{name} is missing"
            if not isinstance(entry, dict) or hashlib.sha256(data).hexdigest() != entry.get(
                    "sha256"):
                return None, f"{name} does not match its sha256 in the manifest"
            files[name] = data
        return files, ""

    def read(self) -> dict[str, bytes] | None:
        """The newest checkpoint that verifies (file name -> bytes), or None.

        A checkpoint that does not verify is skipped with a ``TskdWarning`` naming why; files
        of the earlier layout (no manifest) cannot be verified and are skipped the same way.
        """
        import warnings

        from tskd.errors import TskdWarning

        self._remove_leftovers()
        for folder in (self.current, self.old):
            if not folder.is_dir():
                continue
            files, why = self._verified(folder)
            if files is not None:
                return files
            warnings.warn(
                f"discarding the checkpoint in {folder}: {why}; resuming from an older one or "
                "from the start", TskdWarning, stacklevel=3,
            )
        if any((self.folder / n).is_file() for n in self._LEGACY):
            warnings.warn(
                f"the checkpoint in {self.folder} was written by an earlier version without a "
                "manifest and cannot be verified; training starts from the beginning",
                TskdWarning, stacklevel=3,
            )
        return None

    def load(self, files: dict[str, bytes], model: nn.Module, optimizer: Any, scheduler: Any
             ) -> tuple[dict, dict[str, Any] | None,
                        tuple[dict[str, torch.Tensor], dict[str, str]] | None]:
        """Restore a verified checkpoint: ``(state, rng state or None, extra or None)``."""

        from safetensors.torch import load as load_safetensors

        from tskd.atomic import load_weights_only
        from tskd.errors import CheckpointError

        try:
            tensors = load_safetensors(files[self.PARAMS])
            extra_state = load_weights_only(self.current / self.OPTIM, "training checkpoint",
                                            data=files[self.OPTIM])
            state = json.loads(files[self.STATE])
            extra = None
            if self.EXTRA in files:
                data = files[self.EXTRA]
                # safetensors layout: 8-byte little-endian header length, JSON header
                header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
                extra = (load_safetensors(data), dict(header.get("__metadata__") or {}))
        except CheckpointError:  # already one sentence naming the file
            raise
        except Exception as exc:  # verified bytes that still do not parse: a foreign writer
            raise TskdError(
                f"cannot resume: checkpoint in {self.current} is damaged ({exc}); start again "
                "without resume"
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
        optimizer.load_state_dict(extra_state["optimizer"])
        scheduler.load_state_dict(extra_state["scheduler"])
        return state, extra_state.get("rng"), extra

    def clear(self) -> None:
        """Remove every checkpoint file (training finished); other files stay."""
        import shutil

        for folder in (self.current, self.old):
            shutil.rmtree(folder, ignore_errors=True)
        self._remove_leftovers()
        self._remove_legacy_files()


def clear_checkpoint(checkpoint_dir: str | Path) -> None:
    """Remove a stage's checkpoint once its artefact is written (see ``train``'s
    ``keep_checkpoint``); other files in the folder stay."""
    folder = Path(checkpoint_dir)
    if folder.is_dir():
        _Checkpoint(folder).clear()


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
    keep_checkpoint: bool = False,
) -> TrainResult:
    """Train ``task.model``'s trainable parameters; see the module docstring for guarantees.

    With ``checkpoint_dir``, a checkpoint (one atomic unit, see ``_Checkpoint``) is written at
    the end of every epoch and on cancel; ``resume`` continues from the newest one that verifies
    (one that does not is discarded with a ``TskdWarning``). A task may keep state beside the
    model in the checkpoint: ``task.checkpoint_state() -> (tensors, str metadata)`` is saved
    with it, and ``task.restore_checkpoint_state(extra_or_None, step)`` is called on resume.

    The checkpoint is removed when training ends, unless ``keep_checkpoint``: then the caller
    removes it (``clear_checkpoint``) once it has written its artefact, so a full disk at that
    write loses no training (``resume`` then finds the finished state and runs no step).

    Raises ``Cancelled`` (after writing a checkpoint) when ``cancel`` is set, ``DiskFullError``
    when the checkpoint folder's disk is full (the previous checkpoint is kept), and
    ``TskdError`` for a checkpoint of other settings or another model.
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
    resume_rng: dict[str, Any] | None = None
    files = ckpt.read() if resume and ckpt else None
    if ckpt is not None and files is not None:
        state, resume_rng, extra = ckpt.load(files, accelerator.unwrap_model(model), optimizer,
                                             scheduler)
        if state.get("config") != asdict(cfg):
            raise TskdError(
                f"cannot resume: the checkpoint in {ckpt.folder} was made with other training "
                "settings; start again without --resume"
            )
        start_epoch, skip_batches = state["epoch"], state["batch_in_epoch"]
        step, history = state["step"], state["history"]
        resumed_from = start_epoch
        restore = getattr(task, "restore_checkpoint_state", None)
        if restore is not None:
            restore(extra, step)
    extra_state = getattr(task, "checkpoint_state", None)

    def save(epoch: int, batch_in_epoch: int, rng: dict[str, Any] | None = None) -> None:
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
        ckpt.save(accelerator.unwrap_model(model), optimizer, scheduler, state, rng=rng,
                  extra=extra_state() if extra_state is not None else None)

    t0 = time.perf_counter()
    last_preview = t0
    steps_this_run = 0
    model.train()
    for epoch in range(start_epoch, epochs):
        seed_everything(cfg.seed + epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)
        sums: dict[str, float] = {}
        count = 0
        batches = iter(loader)
        for i in range(steps_per_epoch):
            if epoch == start_epoch and i == skip_batches and resume_rng is not None:
                _set_rng_state(resume_rng)  # the streams as they were before this batch
            rng = _rng_state() if ckpt is not None else None
            batch = next(batches)
            if epoch == start_epoch and i < skip_batches:
                continue  # drawn only to reach the batch where the cancelled run stopped
            if step >= total:
                break
            if cancel is not None and cancel.cancelled:
                save(epoch, i, rng)
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
        from tskd.atomic import write_json

        write_json(ckpt.folder / "history.json", history)  # first: a full disk keeps the ckpt
        if not keep_checkpoint:
            ckpt.clear()  # finished: the stage writes its own artefact; nothing left to resume
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
