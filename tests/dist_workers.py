"""Several training processes on the CPU (gloo), as ``torchrun`` starts them, for the tests.

``launch(world, job, out_dir, **kwargs)`` spawns ``world`` processes with the environment
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
each runs ``JOBS[job](out_dir, **kwargs)`` and pickles what it returns (or the error it raised)
to ``out_dir/rank<r>.pkl``; ``launch`` returns those, in rank order. With ``world=1`` the job runs
in a spawned process too, without a process group.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class LinearTask:
    """Least squares on 32 fixed points: a per-image mean loss, no randomness but the order."""

    name = "linear"

    def __init__(self, nan_on_rank: int | None = None, n: int = 32) -> None:
        torch.manual_seed(0)
        self.n = n  # points used: the first n of the 32
        self.model = nn.Linear(4, 1)
        self.nan_on_rank = nan_on_rank  # this rank's loss is NaN from step 3 on

    def dataset(self) -> torch.utils.data.Dataset:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(32, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        return torch.utils.data.TensorDataset(x[:self.n], y[:self.n])

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        from tskd import distributed

        x, y = batch
        self.calls = getattr(self, "calls", 0) + 1
        if self.nan_on_rank == distributed.rank() and self.calls >= 3:
            y = y * float("nan")
        return {"loss": ((model(x) - y) ** 2).mean()}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_linear(out_dir: Path, batch_size: int, ckpt: str | None = None,
                 resume: bool = False, cancel_at: int | None = None,
                 kill_at: int | None = None, stop_at: int | None = None,
                 accum: int = 1, epochs: int = 3,
                 nan_on_rank: int | None = None, n: int = 32) -> dict[str, Any]:
    """Train ``LinearTask``; optionally cancel, SIGKILL or early-stop on rank 0 at a step."""
    import signal

    from tskd import distributed as dist
    from tskd.callbacks import Callback
    from tskd.checkpoint import Checkpoint
    from tskd.config import TrainConfig
    from tskd.engine import CancelToken, Progress, RunControl, train

    saves: list[int] = []
    original = Checkpoint.save

    def recording_save(self: Checkpoint, *args: Any, **kwargs: Any) -> None:
        saves.append(dist.rank())
        original(self, *args, **kwargs)

    Checkpoint.save = recording_save  # type: ignore[method-assign]
    reports: list[int] = []
    token = CancelToken()

    def progress(p: Progress) -> None:
        reports.append(p.step)
        if p.step == cancel_at:
            token.cancel()
        if p.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    class StopOnMain(Callback):
        def on_step_end(self, state: Any) -> None:
            if state.step == stop_at and dist.is_main():
                state.stop = "asked by rank 0"

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05, device="cpu",
                      warmup_fraction=0.0, grad_accum_steps=accum)
    task = LinearTask(nan_on_rank, n)
    control = RunControl(progress, token, resume, Path(ckpt) if ckpt else None)
    try:
        result = train(task, cfg, control=control, callbacks=[StopOnMain()])
        outcome: Any = {"steps": result.steps, "stopped": result.stopped,
                        "history": result.history, "resumed": result.resumed_from_epoch}
    except Exception as exc:  # reported to the test, which asserts on it
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        Checkpoint.save = original  # type: ignore[method-assign]
    return outcome | {"weights": _weights(task.model), "reports": reports, "saves": saves,
                      "rank": dist.rank(), "world": dist.world_size()}


def disk_samples(n: int, size: int = 32) -> list[Any]:
    """``n`` labelled images: a bright disk (class 1) on a noisy background, seeded."""
    import numpy as np

    from tskd.data.samples import Sample

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        cy, cx, r = rng.uniform(10, 22, 2).tolist() + [rng.uniform(4, 8)]
        label = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.int64)
        img = np.clip(50 + 150 * label + rng.normal(0, 12, (size, size)), 0, 255)
        out.append(Sample(f"s{i}", img.astype(np.uint8), label))
    return out


def finetune(out_dir: Path, batch_size: int, epochs: int = 2,
             dice_weight: float = 0.5) -> dict[str, Any]:
    """Stage 4 (``finetune_student``) on 8 tiny images with a tiny ViT student."""
    from tskd.config import StudentConfig, TrainConfig
    from tskd.models.student import Student
    from tskd.training.finetune import finetune_student

    cfg = StudentConfig(embed_dim=32, depth=2, num_heads=2, patch_size=8, decoder_channels=16,
                        dice_weight=dice_weight,
                        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-2,
                                          device="cpu", warmup_fraction=0.0))
    torch.manual_seed(0)
    student = Student(cfg, 2, 32)
    result, _ = finetune_student(student, disk_samples(8), [], cfg, 32)
    return {"weights": _weights(student), "history": result.history, "steps": result.steps}


def ddpm(out_dir: Path, steps: int, batch_size: int, accum: int = 1) -> dict[str, Any]:
    """Stage 2's diffusion model (``train_ddpm``), tiny: ``steps`` optimiser steps asked."""
    from dataclasses import replace

    import numpy as np

    from tskd.config import SynthConfig
    from tskd.models.diffusion import prepare_images
    from tskd.training.diffusion import train_ddpm

    cfg = SynthConfig(resolution=16, base_channels=8, n_images=2, sample_steps=2)
    cfg.train = replace(cfg.train, epochs=steps, max_steps=steps, batch_size=batch_size,
                        grad_accum_steps=accum, lr=2e-3, device="cpu")
    rng = np.random.default_rng(0)
    images = prepare_images([rng.integers(0, 255, (16, 16), dtype=np.uint8) for _ in range(3)],
                            16)
    _, _, result = train_ddpm(images, cfg)
    return {"steps": result.steps}


def pretrain(out_dir: Path, steps: int, batch_size: int, accum: int = 1) -> dict[str, Any]:
    """``pretrain-mini`` (tiny architecture): ``steps`` optimiser steps asked."""
    from dataclasses import replace

    from tskd.models.mini_sam import MiniSamConfig
    from tskd.training.pretrain import pretrain_mini
    from tskd.training.pretrain_config import PretrainConfig

    cfg = PretrainConfig(masks_per_image=2, image_size=64, steps_per_checkpoint=10)
    cfg.train = replace(cfg.train, batch_size=batch_size, grad_accum_steps=accum, lr=2e-3,
                        device="cpu")
    cfg.train.set_steps(steps, cfg.steps_per_checkpoint)
    from tskd import distributed as dist

    report = pretrain_mini(cfg, out_dir / f"out{dist.rank()}", arch=MiniSamConfig.tiny())
    return {"steps": report["steps"]}


JOBS: dict[str, Callable[..., dict[str, Any]]] = {"linear": train_linear, "finetune": finetune,
                                                  "ddpm": ddpm, "pretrain": pretrain}


def _worker(index: int, world: int, port: int, job: str, out_dir: str,
            kwargs: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index),
                           "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        result = JOBS[job](Path(out_dir), **kwargs)
    except BaseException as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out_dir, f"rank{index}.pkl").write_bytes(pickle.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(world: int, job: str, out_dir: Path, timeout: float = 120.0,
           **kwargs: Any) -> list[dict[str, Any] | None]:
    """Run ``job`` on ``world`` processes; each rank's result, None for a rank that died."""
    import torch.multiprocessing as mp

    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_worker, args=(world, free_port(), job, str(out_dir), kwargs),
                             nprocs=world, join=False, start_method="spawn")
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                raise TimeoutError(f"{job} on {world} processes ran over {timeout} s")
    except mp.ProcessExitedException:
        pass  # a rank killed itself (or was killed): ``join`` stopped the others
    results: list[dict[str, Any] | None] = []
    for r in range(world):
        f = out_dir / f"rank{r}.pkl"
        results.append(pickle.loads(f.read_bytes()) if f.is_file() else None)
    return results
