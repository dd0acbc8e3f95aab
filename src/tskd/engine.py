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

What one stage needs beside the loop is a ``Callback`` (hooks at train begin, step end, epoch
end, checkpoint, resume and train end, each given the run's ``TrainState``): the segmentation
preview (``tskd.training.preview``) and the diffusion model's EMA (``tskd.synth_train``) are two. A
callback's ``on_checkpoint`` state is saved in the checkpoint unit and handed back on resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
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
    """One report from the engine: enough for a progress bar, a loss plot and an ETA.

    Picklable (it crosses from the training process to the plugin). Attributes:
    ``stage`` (the task's name), ``step`` (optimiser steps done, counting resumed ones),
    ``total`` (steps planned), ``epoch`` (0-based), ``epochs`` (planned), ``loss`` (the step's
    minimised loss), ``eta_s`` (seconds left, from this run's mean step time; 0 at the end),
    ``logs`` (every loss component of the step), ``message`` (free text of stages that report
    outside the engine) and ``preview`` (sent by ``tskd.training.preview.SegmentationPreview``).
    """

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
    # first training image (tskd.training.preview: at most every 5 s and after the last epoch)
    preview: dict[str, Any] | None = None


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """A flag a GUI or signal handler sets to stop training at the next step.

    Args:
        flag: any object with ``is_set()`` and ``set()`` (``threading.Event``, or
            ``multiprocessing.Event`` to cancel from another process); default a new
            ``threading.Event``.
    """

    def __init__(self, flag: Any | None = None) -> None:
        # any object with is_set()/set() works: threading.Event, multiprocessing.Event
        import threading

        self._flag = flag if flag is not None else threading.Event()

    def cancel(self) -> None:
        """Ask training to stop before its next step (it writes a checkpoint first)."""
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called (here or through the shared flag)."""
        return bool(self._flag.is_set())


class TrainingTask(Protocol):
    """What a stage hands to the engine: a name, the model and its data and loss."""

    name: str  # the stage's name in progress reports and messages
    model: nn.Module  # owns every trainable parameter (requires_grad=True)

    def dataset(self) -> Dataset:
        """The training set, built once per run; items are collated into the step's batches."""
        ...

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Forward one batch (already on the model's device); return scalar losses.

        The one to minimise is under ``"loss"``; the others are logged.
        """
        ...


@dataclass
class TrainResult:
    """What came out of a training run."""

    history: list[dict[str, float]]  # one entry per finished epoch: mean of each logged loss
    steps: int  # optimiser steps done, resumed ones included
    seconds: float  # wall time of this call from the first step on (not of resumed runs)
    resumed_from_epoch: int | None = None  # the epoch a checkpoint resumed at, or None


CheckpointExtra = tuple[dict[str, torch.Tensor], dict[str, str]]
"""State a callback keeps in the checkpoint: tensors by name, and string metadata."""


@dataclass
class TrainState:
    """Where a training run stands; the engine updates it and hands it to every callback.

    Attributes:
        stage: the task's name (``TrainingTask.name``), as in ``Progress.stage``.
        model: the model as the engine runs it (prepared by ``accelerate``; on one device the
            task's own module), on ``device``.
        dataset: the task's training set (``TrainingTask.dataset()``), read once per run.
        device: where the model and batches live.
        total: optimiser steps planned (``cfg.epochs`` x batches per epoch, capped by
            ``cfg.max_steps``).
        epochs: epochs planned, the last possibly cut short by ``cfg.max_steps``.
        step: optimiser steps done, resumed runs included.
        epoch: 0-based epoch in progress (at ``on_epoch_end``: the epoch that ended).
        steps_in_epoch: optimiser steps this run took in the current epoch.
        logs: the last step's losses (``"loss"`` and the task's components), floats.
        history: one entry per finished epoch: the mean of each logged loss, and ``"epoch"``.
    """

    stage: str
    model: nn.Module
    dataset: Dataset
    device: torch.device
    total: int
    epochs: int
    step: int = 0
    epoch: int = 0
    steps_in_epoch: int = 0
    logs: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def last_epoch(self) -> bool:
        """Whether the epoch in progress is the run's last (planned, or reaching ``total``)."""
        return self.step >= self.total or self.epoch == self.epochs - 1


class Callback:
    """Hooks into ``train``; each does nothing unless a subclass overrides it.

    A callback serves one stage's needs beside the generic loop (a live preview, a weight
    average). It must not draw from the global random streams, or a run with it would train
    otherwise than one without; ``train`` calls the hooks of its ``callbacks`` in their order.
    """

    def on_train_begin(self, state: TrainState) -> None:
        """After the model is prepared and a checkpoint resumed, before the first step."""

    def on_step_end(self, state: TrainState) -> None:
        """After each optimiser step (``state.step`` counts it), before its progress report."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After an epoch's history entry and checkpoint are written.

        Also after a resumed, partly skipped epoch (``state.steps_in_epoch`` counts this run's
        steps only).
        """

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra | None:
        """State to keep in the checkpoint being written (every epoch end, and on cancel).

        Returns:
            Tensors and string metadata, saved in the checkpoint's ``extra.safetensors`` and
            verified with it; names must differ from other callbacks'. None keeps nothing.
        """
        return None

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        """After a checkpoint is loaded (``state.step`` and ``state.history`` restored).

        Args:
            state: the run, as the checkpoint left it.
            extra: every callback's ``on_checkpoint`` state merged, or None when the
                checkpoint holds none.
        """

    def on_train_end(self, state: TrainState) -> None:
        """When training has finished (not on cancel or error); the model is in eval mode."""


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


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global stream and torch (CPU and every GPU) at once.

    Args:
        seed: the seed (``tskd.config.TrainConfig.seed``, default 0; the engine uses
            ``seed + epoch`` at each epoch).
    """
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
             rng: dict[str, Any] | None = None, extra: CheckpointExtra | None = None) -> None:
        """Write a new checkpoint as one unit (see the class docstring).

        Raises ``DiskFullError`` ("no space left on <folder>, N MB needed") or ``TskdError``
        (folder not writable) and then leaves the previous checkpoint as it was.
        """
        self._write(self._encode(model, optimizer, scheduler, state, rng, extra))

    def _encode(self, model: nn.Module, optimizer: Any, scheduler: Any, state: dict,
                rng: dict[str, Any] | None, extra: CheckpointExtra | None) -> dict[str, bytes]:
        """The checkpoint's files (name -> bytes), the manifest last."""
        from tskd.atomic import json_bytes, safetensors_bytes, torch_bytes

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
        return files

    def _write(self, files: dict[str, bytes]) -> None:
        """Write ``files`` into a fresh folder, then swap it in (see the class docstring)."""
        import shutil

        from tskd.atomic import _write_file, fsync_dir, user_fixable_error

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
                        CheckpointExtra | None]:
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
    """Remove a stage's checkpoint once its artefact is written.

    See ``train``'s ``keep_checkpoint``. Only the checkpoint's own folders and leftovers go;
    other files in the folder (``history.json``) stay. A missing folder is no error.

    Args:
        checkpoint_dir: the folder given to ``train`` as ``checkpoint_dir``.
    """
    folder = Path(checkpoint_dir)
    if folder.is_dir():
        _Checkpoint(folder).clear()


def _collate_default(batch: list[Any]) -> Any:
    return torch.utils.data.default_collate(batch)


@dataclass
class _Run:
    """What one call of ``train`` holds while it runs: the prepared objects and the counters."""

    task: TrainingTask
    cfg: TrainConfig
    accelerator: Any
    model: nn.Module  # as accelerate prepared it
    params: list[nn.Parameter]
    optimizer: Any
    scheduler: Any
    loader: DataLoader
    generator: torch.Generator  # the data order: seeded at every epoch
    state: TrainState
    ckpt: _Checkpoint | None
    callbacks: list[Callback]
    progress: ProgressCallback | None
    cancel: CancelToken | None
    skip_batches: int = 0  # batches of the first epoch a mid-epoch checkpoint had done
    resume_rng: dict[str, Any] | None = None  # random streams before that checkpoint's batch
    resumed_from: int | None = None
    t0: float = 0.0
    steps_this_run: int = 0


def _prepare(task: TrainingTask, cfg: TrainConfig, checkpoint_dir: str | Path | None,
             collate_fn: Callable[[list[Any]], Any] | None,
             extra_parameters: Iterable[nn.Parameter]) -> _Run:
    """Seed, pick the device, build the loader, optimiser and schedule, and plan the steps."""
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg)
    params = list(_trainable(task.model).values()) + list(extra_parameters)
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
    total = cfg.epochs * len(loader)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    epochs = math.ceil(total / len(loader)) if total else 0
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(cfg.warmup_fraction * total))
    )
    model, optimizer, scheduler = accelerator.prepare(task.model, optimizer, scheduler)
    state = TrainState(task.name, model, dataset, accelerator.device, total, epochs)
    ckpt = _Checkpoint(Path(checkpoint_dir)) if checkpoint_dir else None
    return _Run(task, cfg, accelerator, model, params, optimizer, scheduler, loader, generator,
                state, ckpt, [], None, None)


def _resume(run: _Run) -> None:
    """Load the newest checkpoint that verifies, if any, and hand its extra state to callbacks."""
    files = run.ckpt.read() if run.ckpt is not None else None
    if run.ckpt is None or files is None:
        return
    saved, run.resume_rng, extra = run.ckpt.load(
        files, run.accelerator.unwrap_model(run.model), run.optimizer, run.scheduler)
    if saved.get("config") != asdict(run.cfg):
        raise TskdError(
            f"cannot resume: the checkpoint in {run.ckpt.folder} was made with other training "
            "settings; start again without --resume"
        )
    state = run.state
    state.epoch, run.skip_batches = saved["epoch"], saved["batch_in_epoch"]
    state.step, state.history = saved["step"], saved["history"]
    run.resumed_from = state.epoch
    for callback in run.callbacks:
        callback.on_resume(state, extra)


def _checkpoint_extra(run: _Run) -> CheckpointExtra | None:
    """The callbacks' state for the checkpoint, merged; None when no callback keeps any."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    kept = False
    for callback in run.callbacks:
        extra = callback.on_checkpoint(run.state)
        if extra is None:
            continue
        kept = True
        clash = (set(extra[0]) & set(tensors)) | (set(extra[1]) & set(meta))
        if clash:
            raise ValueError(f"two callbacks keep checkpoint state under {sorted(clash)}")
        tensors |= extra[0]
        meta |= extra[1]
    return (tensors, meta) if kept else None


def _save(run: _Run, epoch: int, batch_in_epoch: int, rng: dict[str, Any] | None = None) -> None:
    """Write the checkpoint (if the run has a folder): training resumes at this batch."""
    if run.ckpt is None:
        return
    state = run.state
    saved = {
        "task": run.task.name,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "step": state.step,
        "history": state.history,
        "config": asdict(run.cfg),
    }
    run.ckpt.save(run.accelerator.unwrap_model(run.model), run.optimizer, run.scheduler, saved,
                  rng=rng, extra=_checkpoint_extra(run))


def _optimiser_step(run: _Run, batch: Any, sums: dict[str, float]) -> None:
    """One forward, backward and optimiser step; then the callbacks and the progress report."""
    state, accelerator = run.state, run.accelerator
    batch = _to_device(batch, accelerator.device)
    with accelerator.autocast():
        losses = run.task.step(run.model, batch)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise TskdError(
            f"{run.task.name}: the loss became {loss.item()} at step {state.step}; "
            "lower the learning rate"
        )
    run.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if run.cfg.grad_clip:
        accelerator.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    state.step += 1
    state.steps_in_epoch += 1
    run.steps_this_run += 1
    state.logs = {k: float(v.detach()) for k, v in losses.items()}
    for k, v in state.logs.items():
        sums[k] = sums.get(k, 0.0) + v
    for callback in run.callbacks:
        callback.on_step_end(state)
    if run.progress is not None:
        eta = (time.perf_counter() - run.t0) / run.steps_this_run * (state.total - state.step)
        run.progress(Progress(run.task.name, state.step, state.total, state.epoch, state.epochs,
                              state.logs["loss"], eta, state.logs))


def _run_epoch(run: _Run, epoch: int) -> None:
    """Train one epoch (from a mid-epoch checkpoint's batch on resume); checkpoint at its end.

    Raises ``Cancelled`` (after a checkpoint of the streams before the batch) when cancelled.
    """
    state, cfg = run.state, run.cfg
    state.epoch, state.steps_in_epoch = epoch, 0
    seed_everything(cfg.seed + epoch)
    run.generator.manual_seed(cfg.seed * 100_003 + epoch)
    sums: dict[str, float] = {}
    batches = iter(run.loader)
    for i in range(len(run.loader)):
        if i == run.skip_batches and run.resume_rng is not None:
            _set_rng_state(run.resume_rng)  # the streams as they were before this batch
            run.resume_rng = None
        rng = _rng_state() if run.ckpt is not None else None
        batch = next(batches)
        if i < run.skip_batches:
            continue  # drawn only to reach the batch where the cancelled run stopped
        if state.step >= state.total:
            break
        if run.cancel is not None and run.cancel.cancelled:
            _save(run, epoch, i, rng)
            raise Cancelled(
                f"{run.task.name}: cancelled at step {state.step}/{state.total}; resume to go on")
        _optimiser_step(run, batch, sums)
    run.skip_batches, run.resume_rng = 0, None
    if state.steps_in_epoch:
        count = state.steps_in_epoch
        state.history.append({k: v / count for k, v in sums.items()} | {"epoch": epoch})
    _save(run, epoch + 1, 0)
    for callback in run.callbacks:
        callback.on_epoch_end(state)


def _finish(run: _Run, keep_checkpoint: bool) -> TrainResult:
    """Write ``history.json``, drop the checkpoint unless kept, and end the callbacks."""
    run.model.eval()
    if run.ckpt is not None:
        from tskd.atomic import write_json

        # first: a full disk keeps the checkpoint
        write_json(run.ckpt.folder / "history.json", run.state.history)
        if not keep_checkpoint:
            run.ckpt.clear()  # finished: the stage writes its own artefact; nothing left to resume
    run.task.model = run.accelerator.unwrap_model(run.model)
    for callback in run.callbacks:
        callback.on_train_end(run.state)
    return TrainResult(run.state.history, run.state.step, time.perf_counter() - run.t0,
                       run.resumed_from)


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
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``task.model``'s trainable parameters with AdamW and a warm-up + cosine schedule.

    See the module docstring for what is guaranteed (seeds, checkpoints, bit-identical resume).

    Args:
        task: the model, the dataset and the loss of one stage.
        cfg: the engine's settings; every default comes from ``tskd.config.TrainConfig``.
        checkpoint_dir: folder of the checkpoint written at every epoch end and on cancel; None
            writes none.
        progress: called with a ``Progress`` after every optimiser step.
        cancel: checked before every step.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` that verifies (one
            that does not is discarded with a ``TskdWarning``); without one, start afresh.
        collate_fn: how dataset items become a batch; default ``torch``'s ``default_collate``.
        extra_parameters: parameters outside ``task.model`` to optimise too (e.g. projections).
        keep_checkpoint: leave the checkpoint when training ends; the caller removes it
            (``clear_checkpoint``) once its artefact is written, so a full disk at that write
            loses no training (a resume then finds the finished state and runs no step).
        callbacks: hooks called in order at each point of the run (see ``Callback``).

    Returns:
        The per-epoch loss means, the optimiser steps done (in all runs together) and this
        run's seconds; ``task.model`` is the trained model in eval mode.

    Raises:
        Cancelled: ``cancel`` was set (a checkpoint is written first).
        DiskFullError: the checkpoint folder's disk is full (the previous checkpoint is kept).
        TskdError: an unavailable device, no trainable parameter or no data, a non-finite loss,
            or a checkpoint of other settings or of another model.
    """
    run = _prepare(task, cfg, checkpoint_dir, collate_fn, extra_parameters)
    run.callbacks, run.progress, run.cancel = list(callbacks), progress, cancel
    if resume:
        _resume(run)
    run.t0 = time.perf_counter()
    for callback in run.callbacks:
        callback.on_train_begin(run.state)
    run.model.train()
    for epoch in range(run.state.epoch, run.state.epochs):
        _run_epoch(run, epoch)
        if run.state.step >= run.state.total:
            break
    return _finish(run, keep_checkpoint)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
