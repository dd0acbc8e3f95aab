"""The one training loop every stage runs through, built on ``accelerate``.

A stage describes *what* to train as a ``TrainingTask`` (model, data, loss); the engine owns
*how*: device and mixed precision, optimiser and schedule, seeds, a progress callback, a cancel
flag checked every step, a checkpoint at every epoch (and on cancel) and resuming from it.

A checkpoint is one atomic, sha256-verified unit (``tskd.checkpoint``). Randomness is re-seeded
from ``seed + epoch`` at every epoch, each image's augmentation from the epoch and the image
(``tskd.distributed.SeededItems``), and a mid-epoch checkpoint restores the random streams as
they were before its batch, so a resumed run takes the same data order, augmentations and
dropout draws as an uninterrupted one and ends with the same weights, bit for bit on the CPU.
What one stage needs beside the loop is a ``Callback`` (``tskd.callbacks``: the progress
report, the cancel flag, the ``RunControl`` that carries them with the checkpoint folder, and
the hooks); ``tskd.device`` chooses the device and mixed precision. This module re-exports
their public names and ``clear_checkpoint`` (``__all__``): a stage imports from here alone.

On several processes (``torchrun``, ``accelerate launch``; ``tskd.distributed``) the same
code runs on every rank: each trains on its share of every global batch (``batch_size`` is
per process; an optimiser step sees ``batch_size x processes x grad_accum_steps`` images),
DDP averages the gradients, the main process alone writes the checkpoint and
``history.json`` and reports progress, a cancel on any rank stops all of them at the same
step, and a checkpoint resumes on any number of processes with the same global batch
(bit-identical with the same number; see docs/scaling.md for the tolerance otherwise).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tskd import distributed as dist
from tskd.callbacks import (
    Callback,
    CancelToken,
    Progress,
    ProgressCallback,
    RunControl,
    TrainingTask,
    TrainResult,
    TrainState,
    checkpoint_extra,
)
from tskd.checkpoint import (
    Checkpoint,
    CheckpointExtra,
    clear_checkpoint,
    rng_state,
    set_rng_state,
    trainable_parameters,
)
from tskd.config import TrainConfig
from tskd.device import make_accelerator, resolve_device, to_device
from tskd.errors import Cancelled, TskdError
from tskd.stopping import TimeLimit

__all__ = ["Callback", "CancelToken", "CheckpointExtra", "Progress", "ProgressCallback",
           "RunControl", "TrainResult", "TrainState", "TrainingTask", "clear_checkpoint",
           "make_accelerator", "resolve_device", "seed_everything", "train"]


_RANK_SEED_STRIDE = 1_000_003  # rank r's streams start from seed + epoch + r x this


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
    sampler: dist.ShardedBatches  # this rank's share of each global batch
    steps_per_epoch: int
    accum: int  # micro-batches per optimiser step (at most per epoch; the last: what is left)
    generator: torch.Generator  # the data order: seeded at every epoch
    state: TrainState
    ckpt: Checkpoint | None
    callbacks: list[Callback]
    progress: ProgressCallback | None
    cancel: CancelToken | None
    skip_batches: int = 0  # optimiser steps of the first epoch a mid-epoch checkpoint had done
    resume_rng: dict[str, Any] | None = None  # random streams before that checkpoint's batch
    resumed_from: int | None = None
    t0: float = 0.0
    steps_this_run: int = 0


def _param_groups(task: TrainingTask, cfg: TrainConfig,
                  params: list[nn.Parameter]) -> list[dict[str, Any]]:
    """AdamW's groups: ``task.lr_scales()`` ({parameter id: factor on cfg.lr}) if it has one."""
    scales = task.lr_scales() if hasattr(task, "lr_scales") else {}
    by_scale: dict[float, list[nn.Parameter]] = {}
    for p in params:
        by_scale.setdefault(scales.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr": cfg.lr * scale} for scale, ps in by_scale.items()]


def _prepare(task: TrainingTask, cfg: TrainConfig, checkpoint_dir: str | Path | None,
             collate_fn: Callable[[list[Any]], Any] | None,
             extra_parameters: Iterable[nn.Parameter]) -> _Run:
    """Seed, pick the device, build the loader, optimiser and schedule, and plan the steps."""
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg)
    params = list(trainable_parameters(task.model).values()) + list(extra_parameters)
    if not params:
        raise TskdError(f"{task.name}: the model has no trainable parameters")
    dataset = task.dataset()
    if len(dataset) == 0:
        raise TskdError(f"{task.name}: no training data")
    generator = torch.Generator()
    sampler = dist.ShardedBatches(len(dataset), cfg.batch_size, generator, dist.world_size(),
                                  dist.rank(), cfg.grad_accum_steps)
    # the loader draws its base seed from ``generator`` too, so the global streams stay untouched
    loader = DataLoader(dist.SeededItems(dataset), batch_sampler=sampler, generator=generator,
                        collate_fn=collate_fn or torch.utils.data.default_collate)
    accum = dist.accumulation(task.name, cfg.grad_accum_steps, len(loader))
    steps_per_epoch = math.ceil(len(loader) / accum)  # a last partial step still steps
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    epochs = math.ceil(total / steps_per_epoch) if total else 0
    optimizer = torch.optim.AdamW(_param_groups(task, cfg, params), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(cfg.warmup_fraction * total))
    )
    model, optimizer, scheduler = accelerator.prepare(task.model, optimizer, scheduler)
    state = TrainState(task.name, accelerator.unwrap_model(model), dataset, accelerator.device,
                       total, epochs)
    ckpt = Checkpoint(Path(checkpoint_dir)) if checkpoint_dir else None
    return _Run(task, cfg, accelerator, model, params, optimizer, scheduler, loader, sampler,
                steps_per_epoch, accum, generator, state, ckpt, [], None, None)


def _global_batch(run: _Run) -> int:
    """Images per optimiser step over all processes: per process x processes x accumulation."""
    return run.sampler.global_batch * run.accum


def _saved_global_batch(saved: dict, run: _Run) -> int:
    """A checkpoint's global batch (one of an earlier version: one process, no accumulation)."""
    earlier = max(1, min(int((saved.get("config") or {}).get("batch_size", 1)), run.sampler.n))
    return int(saved.get("global_batch", earlier))


def _other_settings(saved: dict, run: _Run) -> list[str]:
    """A checkpoint's settings unlike this run's (device, global batch split may change)."""
    now, then = asdict(run.cfg), saved.get("config") or {}
    out = [f"{k} {then.get(k)!r} (this run: {now.get(k)!r})" for k in sorted({*now, *then})
           if k not in ("batch_size", "grad_accum_steps", "device") and now.get(k) != then.get(k)]
    a, b = _saved_global_batch(saved, run), _global_batch(run)
    return out + ([f"it has {a} images per step, this run {b}"] if a != b else [])


def _resume(run: _Run) -> None:
    """Load the newest checkpoint that verifies, if any, and hand its extra state to callbacks."""
    if run.ckpt is None:
        return
    # the main process reads and verifies; every rank resumes from those same bytes
    files = dist.broadcast(run.ckpt.read() if dist.is_main() else None)
    if files is None:
        return
    saved, rng, extra = run.ckpt.load(
        files, run.accelerator.unwrap_model(run.model), run.optimizer, run.scheduler)
    other = _other_settings(saved, run)
    if other:
        raise TskdError(f"cannot resume: the checkpoint in {run.ckpt.folder} was made with other "
                        f"training settings: {'; '.join(other)}; start again without --resume")
    ranks = (rng or {}).get("ranks")
    if ranks is not None:  # every rank's streams; with another number of ranks, rank 0's only
        rng = ranks[dist.rank()] if len(ranks) == dist.world_size() else ranks[0]
    run.resume_rng = rng if dist.is_main() or ranks is not None else None
    state = run.state
    state.epoch, run.skip_batches = saved["epoch"], saved["batch_in_epoch"]
    state.step, state.history = saved["step"], saved["history"]
    state.stop = saved.get("stop")
    run.resumed_from = state.epoch
    for callback in run.callbacks:
        callback.on_resume(state, extra)


def _save(run: _Run, epoch: int, batch_in_epoch: int, rng: dict[str, Any] | None = None) -> None:
    """Write the checkpoint (if the run has a folder): training resumes at this batch."""
    if run.ckpt is None:
        return
    state, ckpt = run.state, run.ckpt
    saved = {
        "task": run.task.name,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,  # optimiser steps done in the epoch
        "step": state.step,
        "history": state.history,
        "config": asdict(run.cfg),
        "global_batch": _global_batch(run),
        "processes": dist.world_size(),
        "stop": state.stop,
    }
    if rng is not None and dist.world_size() > 1:
        rng = dict(rng, ranks=dist.gather(rng))
    dist.on_main(lambda: ckpt.save(run.accelerator.unwrap_model(run.model), run.optimizer,
                                   run.scheduler, saved, rng=rng,
                                   extra=checkpoint_extra(run.callbacks, state)),
                 f"writing the checkpoint in {ckpt.folder}")


def _forward_backward(run: _Run, batch: Any, share: float, sync: bool) -> dict[str, Any]:
    """One micro-batch: forward, and backward of ``share`` x its loss (gradients add up)."""
    accelerator = run.accelerator
    batch = to_device(batch, accelerator.device)
    # DDP averages gradients over the ranks at the step's last micro-batch only
    with contextlib.nullcontext() if sync else accelerator.no_sync(run.model):
        with accelerator.autocast():
            losses = run.task.step(run.model, batch)
        loss = losses["loss"]
        value = dist.mean({"loss": float(loss.detach())})["loss"]  # every rank stops together
        if not math.isfinite(value):
            raise TskdError(f"{run.task.name}: the loss became {value} at step "
                            f"{run.state.step}; lower the learning rate")
        accelerator.backward(loss * share if share != 1.0 else loss)
    return {k: float(v.detach()) * share for k, v in losses.items()}


def _optimiser_step(run: _Run, batches: list[Any], sums: dict[str, float], first: int) -> None:
    """Forward and backward of each micro-batch, one optimiser step; callbacks and progress."""
    state, accelerator = run.state, run.accelerator
    run.optimizer.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    for j, batch in enumerate(batches):
        part = _forward_backward(run, batch, run.sampler.share(first + j, first, len(batches)),
                                 j == len(batches) - 1)  # weighted by images: as one batch
        logs = {k: logs.get(k, 0.0) + v for k, v in part.items()}
    if run.cfg.grad_clip:
        accelerator.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    state.step += 1
    state.steps_in_epoch += 1
    run.steps_this_run += 1
    state.logs = dist.mean(logs)  # the global batch's losses, the same on every rank
    for k, v in state.logs.items():
        sums[k] = sums.get(k, 0.0) + v
    for callback in run.callbacks:
        callback.on_step_end(state)
    state.stop = dist.broadcast(state.stop)  # the main process's decision holds for all
    if run.progress is not None:
        eta = (time.perf_counter() - run.t0) / run.steps_this_run * (state.total - state.step)
        run.progress(Progress(run.task.name, state.step, state.total, state.epoch, state.epochs,
                              state.logs["loss"], eta, state.logs))


def _run_epoch(run: _Run, epoch: int) -> None:
    """Train one epoch (from a mid-epoch checkpoint's step on resume); checkpoint at its end.

    Raises ``Cancelled`` (after a checkpoint of the streams before the step) when any rank
    was cancelled.
    """
    state, cfg = run.state, run.cfg
    state.epoch, state.steps_in_epoch = epoch, 0
    seed_everything(cfg.seed + epoch + _RANK_SEED_STRIDE * dist.rank())
    run.generator.manual_seed(cfg.seed * 100_003 + epoch)  # one data order on every rank
    run.loader.dataset.epoch_seed = cfg.seed * 100_003 + epoch  # each image's augmentation
    sums: dict[str, float] = {}
    first, run.sampler.skip = run.skip_batches, run.skip_batches * run.accum
    if run.resume_rng is not None:
        set_rng_state(run.resume_rng)  # the streams as they were before that step
    batches = iter(run.loader)
    for i in range(first, run.steps_per_epoch):
        rng = rng_state() if run.ckpt is not None else None
        if state.step >= state.total:
            break
        if dist.any_rank(run.cancel is not None and run.cancel.cancelled):
            _save(run, epoch, i, rng)
            raise Cancelled(
                f"{run.task.name}: cancelled at step {state.step}/{state.total}; resume to go on")
        count = min(run.accum, len(run.loader) - i * run.accum)  # the last step: the rest
        _optimiser_step(run, [next(batches) for _ in range(count)], sums, i * run.accum)
        if state.stop:
            break
    run.skip_batches, run.resume_rng = 0, None
    if state.steps_in_epoch:
        count = state.steps_in_epoch
        state.history.append({k: v / count for k, v in sums.items()} | {"epoch": epoch})
    for callback in run.callbacks:  # before the checkpoint, so it keeps what they decided
        callback.on_epoch_end(state)
    state.stop = dist.broadcast(state.stop)
    _save(run, epoch + 1, 0)


def _finish(run: _Run, keep_checkpoint: bool) -> TrainResult:
    """Write ``history.json``, drop the checkpoint unless kept, and end the callbacks."""
    run.model.eval()
    ckpt = run.ckpt
    if ckpt is not None:
        from tskd.atomic import write_json

        def write() -> None:
            # first: a full disk keeps the checkpoint
            write_json(ckpt.folder / "history.json", run.state.history)
            if not keep_checkpoint:
                ckpt.clear()  # finished: the stage writes its own artefact; nothing to resume

        dist.on_main(write, f"writing {ckpt.folder / 'history.json'}")
    run.task.model = run.accelerator.unwrap_model(run.model)
    for callback in run.callbacks:
        callback.on_train_end(run.state)
    return TrainResult(run.state.history, run.state.step, time.perf_counter() - run.t0,
                       run.resumed_from, run.state.stop)


def train(
    task: TrainingTask,
    cfg: TrainConfig,
    *,
    control: RunControl | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    extra_parameters: Iterable[nn.Parameter] = (),
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``task.model``'s trainable parameters with AdamW and a warm-up + cosine schedule.

    See the module docstring for what is guaranteed (seeds, checkpoints, bit-identical resume).

    Args:
        task: the model, the dataset and the loss of one stage.
        cfg: the engine's settings; every default comes from ``tskd.config.TrainConfig``.
        control: the progress callback, cancel token, checkpoint folder, resume and
            keep-checkpoint flags (``RunControl``, each field documented there); None:
            ``RunControl()`` (no reports, no cancel, no checkpoint, a fresh start).
        collate_fn: how dataset items become a batch; default ``torch``'s ``default_collate``.
        extra_parameters: parameters outside ``task.model`` to optimise too (e.g. projections).
        callbacks: hooks called in order at each point of the run (see ``Callback``).

    Returns:
        The per-epoch loss means, the optimiser steps done (in all runs together) and this
        run's seconds; ``task.model`` is the trained model in eval mode.

    Raises:
        Cancelled: ``control.cancel`` was set (a checkpoint is written first).
        DiskFullError: the checkpoint folder's disk is full (the previous checkpoint is kept).
        TskdError: an unavailable device, no trainable parameter or no data, a non-finite loss,
            or a checkpoint of other settings or of another model.
    """
    control = control if control is not None else RunControl()
    run = _prepare(task, cfg, control.checkpoint_dir, collate_fn, extra_parameters)
    run.callbacks, run.cancel = list(callbacks), control.cancel
    run.progress = control.progress if dist.is_main() else None  # one report per step
    if cfg.max_seconds is not None:
        run.callbacks.append(TimeLimit(cfg.max_seconds))
    if control.resume:
        _resume(run)
    run.t0 = time.perf_counter()
    for callback in run.callbacks:
        callback.on_train_begin(run.state)
    run.model.train()
    for epoch in range(run.state.epoch, run.state.epochs):
        if run.state.stop:
            break
        _run_epoch(run, epoch)
        if run.state.step >= run.state.total or run.state.stop:
            break
    result = _finish(run, control.keep_checkpoint)
    if dist.following():  # a CLI job's other rank: the main process writes the stage's files
        raise dist.TrainingDone(task.name)
    return result
