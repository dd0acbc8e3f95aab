"""Several processes (``torchrun``, ``accelerate launch``): who writes, waits, gets which data.

One rule for every stage: the main process (rank 0) alone writes checkpoints, artefacts and
reports and sends progress; the other ranks wait at a barrier where they need what it wrote.
Training data are split per optimiser step: the epoch's permutation (the same on every rank,
from the engine's seeded generator) is cut into *global* micro-batches of
``batch_size x processes`` images, and rank ``r`` trains on the ``r``-th ``batch_size`` of each
(what ``accelerate``'s ``split_batches=True`` does). So ``TrainConfig.batch_size`` is per
process, and two processes with batch 2 see exactly the images one process with batch 4 sees.

Without a process group (one process: the GUI, tests, a plain ``tskd`` call) every function
here is a no-op: rank 0 of 1, barriers return at once, broadcasts return their input.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from tskd.errors import TskdError, TskdWarning

T = TypeVar("T")


def _group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Processes in the job: the process group's size, else ``WORLD_SIZE`` (1 when unset).

    Returns:
        At least 1.
    """
    if _group():
        return int(torch.distributed.get_world_size())
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def rank() -> int:
    """This process's rank: the process group's, else ``RANK`` (0 when unset).

    Returns:
        In ``[0, world_size())``.
    """
    if _group():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """Whether this process writes files and reports progress (rank 0).

    Returns:
        True in a single-process run.
    """
    return rank() == 0


def setup(cpu: bool) -> None:
    """Join the job's process group when launched on several processes (idempotent).

    ``torchrun`` and ``accelerate launch`` set ``WORLD_SIZE``; the group is created through
    ``accelerate.PartialState`` (gloo on the CPU, NCCL on GPUs), once per job: every stage and
    every ``Accelerator`` of the job then share it.

    Args:
        cpu: train on the CPU (``tskd.config.TrainConfig.device`` resolved to ``cpu``).
    """
    if _group() or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    from accelerate import PartialState

    PartialState(cpu=cpu)


class TrainingDone(Exception):  # noqa: N818 - a signal, not an error
    """Raised on a non-main rank of a followed job when its training ends (``follow_main``).

    The stage's writing (artefacts, reports) is the main process's; the stage wrapper
    (``tskd.pipeline.context.writes``) catches it and waits for the main process.
    """


_FOLLOW = {"on": False}


def follow_main() -> None:
    """Make this process one rank of a CLI job: the main process writes, the others follow.

    On every rank but the main one, ``tskd.atomic`` writes nothing (``atomic.set_writer``)
    and ``tskd.engine.train`` raises ``TrainingDone`` once training ends, so the stage's
    writing is left to the main process. A no-op in a single process.
    """
    from tskd import atomic

    if world_size() > 1:
        atomic.set_writer(is_main())
        _FOLLOW["on"] = True


def in_job() -> bool:
    """Whether ``follow_main`` made this process one rank of a multi-process CLI job.

    Returns:
        True on every rank of such a job, the main one included.
    """
    return _FOLLOW["on"]


def following() -> bool:
    """Whether this is a non-main rank of a job that ``follow_main`` set up.

    Returns:
        False in a single process and on the main process.
    """
    return _FOLLOW["on"] and not is_main()


def barrier() -> None:
    """Wait until every rank is here (no-op without a process group)."""
    if _group() and world_size() > 1:
        torch.distributed.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; no-op without a process group).

    Args:
        obj: the value on rank 0 (others pass anything, e.g. None).

    Returns:
        Rank 0's value.
    """
    if not _group() or world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank.

    Args:
        obj: this rank's picklable value.

    Returns:
        ``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` without a process group.
    """
    if not _group() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (e.g. a cancel seen by rank 0 only).

    Args:
        flag: this rank's value.

    Returns:
        The OR over all ranks; ``flag`` itself without a process group.
    """
    if not _group() or world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (the logged losses of one global batch).

    Args:
        values: this rank's values; the same keys on every rank.

    Returns:
        ``{key: mean over ranks}``; ``values`` itself without a process group.
    """
    if not _group() or world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def on_main(fn: Callable[[], T], what: str) -> T | None:
    """Run ``fn`` on the main process only, then wait for it on every rank.

    An error on the main process is raised there as it is, and on every other rank as one
    ``TskdError`` naming ``what``, so no rank is left waiting at a barrier.

    Args:
        fn: the write (a checkpoint, an artefact, a report).
        what: what ``fn`` does, for the other ranks' message (e.g. "writing the checkpoint").

    Returns:
        ``fn()``'s result on the main process, None on the others.

    Raises:
        TskdError: on the other ranks, when ``fn`` failed on the main process.
    """
    if not _group() or world_size() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            error = exc
    failed = broadcast(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failed is not None:
        raise TskdError(f"the main process failed while {what} ({failed})")
    return result


def as_rank(stage: Callable[[], dict[str, Any]], what: str,
            trains: bool = True) -> dict[str, Any]:
    """Run one pipeline stage on this rank of a CLI job; outside a job, just run it.

    The main process runs the whole stage and writes its files; another rank runs it until its
    training ends (``TrainingDone``; a stage that does not train, not at all), then waits for
    the main one. An error on the main process is raised there at once (the launcher then
    stops the other ranks); an error every rank meets (bad input) is raised on each.

    Args:
        stage: the stage, its arguments bound; returns its JSON-able result.
        what: the stage for messages, e.g. "stage teacher".
        trains: whether the stage trains (the other ranks take part only then).

    Returns:
        The stage's result on the main process; ``{}`` on the others.
    """
    if not in_job():
        return stage()
    if is_main():
        result = stage()
        broadcast(None)  # the others may go on
        return result
    if trains:
        with contextlib.suppress(TrainingDone):
            stage()
    broadcast(None)
    return {}


def images_per_epoch(batch_size: int, grad_accum_steps: int, steps: int) -> int:
    """Items for ``steps`` optimiser steps of the global batch (stages counted in steps).

    Args:
        batch_size: images per process and micro-batch (``TrainConfig.batch_size``).
        grad_accum_steps: micro-batches per optimiser step (``TrainConfig.grad_accum_steps``).
        steps: optimiser steps in the epoch.

    Returns:
        ``batch_size x world_size() x grad_accum_steps x steps``.
    """
    return batch_size * world_size() * max(1, grad_accum_steps) * steps


def accumulation(name: str, grad_accum_steps: int, micro_batches: int) -> int:
    """Micro-batches per optimiser step: ``grad_accum_steps``, at most an epoch's.

    Args:
        name: the stage's name, for the warning.
        grad_accum_steps: ``TrainConfig.grad_accum_steps`` (>= 1).
        micro_batches: micro-batches in one epoch on this rank (``len(ShardedBatches)``).

    Returns:
        ``min(grad_accum_steps, micro_batches)``, at least 1.

    Warns:
        TskdWarning: (main process) more steps asked than ``micro_batches``: one step an epoch.
    """
    if grad_accum_steps > micro_batches and is_main():
        warnings.warn(TskdWarning(
            f"{name}: grad_accum_steps {grad_accum_steps} is more than the {micro_batches} "
            f"batch(es) of an epoch; each epoch is one optimiser step of {micro_batches}"),
            stacklevel=3)
    return max(1, min(grad_accum_steps, micro_batches))


class ShardedBatches:
    """Per-rank index batches of one epoch; a ``torch`` batch sampler (see the module docstring).

    The epoch's order is ``torch.randperm(n, generator=generator)`` at each ``iter``, as a
    shuffled ``DataLoader`` draws it, so one process gives the same batches as before.
    Global micro-batch ``j`` is ``perm[j*G:(j+1)*G]`` (``G = per_rank x ranks``), a step
    ``accum`` of them (``S = G x accum``). A set of two steps or more drops its last partial
    step; a smaller one uses every image: partial at the end on one process (a last
    micro-batch of 1 joins the one before), filled up from the permutation's start on several.
    So a step's images are those of one batch of ``S``.

    Args:
        n: images in the training set, at least 1.
        batch_size: images per rank and micro-batch (``TrainConfig.batch_size``, capped so a
            global batch is no larger than the set needs).
        generator: the engine's data-order generator, seeded per epoch (same on every rank).
        ranks: processes in the job (``world_size()``).
        rank: this process's rank.
        accum: micro-batches per optimiser step (``TrainConfig.grad_accum_steps``; default 1).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, ranks: int = 1,
                 rank: int = 0, accum: int = 1) -> None:
        self.n, self.ranks, self.rank, self.generator = n, ranks, rank, generator
        self.batch_size = max(1, min(batch_size, math.ceil(n / ranks)))
        self.global_batch = self.batch_size * ranks
        g, step = self.global_batch, self.global_batch * max(1, accum)
        self.drop_last = n >= 2 * step
        if self.drop_last or ranks > 1:  # whole steps (the last filled up on several)
            count = (n // step if self.drop_last else -(-n // step)) * max(1, accum)
            self.bounds = [(j * g, (j + 1) * g) for j in range(count)]
        else:  # every image; a last micro-batch of 1 joins the one before (BatchNorm needs 2)
            self.bounds = [(j, min(n, j + g)) for j in range(0, n, g)]
            if len(self.bounds) > 1 and self.bounds[-1][1] - self.bounds[-1][0] == 1:
                self.bounds[-2:] = [(self.bounds[-2][0], n)]
        self.skip = 0  # micro-batches of the next epoch to leave out (a mid-epoch resume)

    def __len__(self) -> int:
        return len(self.bounds)

    def share(self, j: int, first: int, count: int) -> float:
        """Micro-batch ``j``'s images over its step's (``count`` from ``first``): its loss weight.

        Args:
            j: the micro-batch's index in the epoch.
            first: the step's first micro-batch.
            count: the step's micro-batches.

        Returns:
            In (0, 1]; ``1 / count`` unless the step's micro-batches differ in size.
        """
        sizes = [end - start for start, end in self.bounds[first:first + count]]
        return sizes[j - first] / sum(sizes)

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        skip, self.skip = self.skip, 0
        size = self.bounds[-1][1]
        if size > self.n:  # several processes: the last step filled up
            perm = (perm + perm * math.ceil(size / self.n))[:size]
        for start, end in self.bounds[skip:]:
            chunk = perm[start:end]
            b, r = self.batch_size, self.rank
            yield chunk if self.ranks == 1 else chunk[r * b:(r + 1) * b]


class SeededItems(torch.utils.data.Dataset):
    """A dataset whose item ``i`` draws its randomness (augmentation) from its own seed.

    Item ``i`` of an epoch runs with torch's, NumPy's and Python's global streams seeded from
    ``(epoch_seed, i)``, and the streams are put back as they were after it. So an image gets
    the same augmentation in an epoch whichever rank, batch or position it lands in, on any
    number of processes and after any resume; the model's own draws (dropout) keep the
    streams the engine seeds per epoch and rank.

    Args:
        dataset: the task's map-style dataset.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.epoch_seed = 0  # set by the engine at each epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        import random

        import numpy as np

        seed = (self.epoch_seed * 1_000_003 + int(i)) % (2**63 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
