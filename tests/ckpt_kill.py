"""A tiny training run that kills itself (SIGKILL) at a chosen point; run as a subprocess.

``python ckpt_kill.py CHECKPOINT_DIR POINT N``, where POINT is:

- ``step``: SIGKILL when the engine reports optimiser step N (mid-epoch unless N is a multiple
  of 8; 8 steps per epoch, 3 epochs);
- ``write``: SIGKILL after the N-th checkpoint file is written (4 files per save, manifest last);
- ``partial``: SIGKILL half-way through writing the N-th checkpoint file;
- ``swap``: SIGKILL right after the N-th rename of a save (1: first save's tmp -> ckpt;
  2: second save's ckpt -> ckpt.old; 3: its tmp -> ckpt).

``ckpt_kill.Toy`` and ``CFG`` are imported by the tests for the uninterrupted reference run.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn

from tskd.config import TrainConfig

CFG = TrainConfig(epochs=3, batch_size=4, lr=0.05, device="cpu")


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.randn(4, generator=torch.Generator().manual_seed(i))
        x = x + 0.1 * torch.randn(4)  # draws from the global RNG, as augmentation does
        return {"x": x, "y": x.sum(0, keepdim=True)}


class Toy:
    """Linear regression with dropout (a random draw inside the step) and a BatchNorm."""

    name = "toy"

    def __init__(self) -> None:
        self.model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.2),
                                   nn.Linear(8, 1))

    def dataset(self) -> torch.utils.data.Dataset:
        return _Data()

    def step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}


def build() -> Toy:
    """A toy task initialised from seed 0, as a stage seeds before building its model."""
    from tskd.engine import seed_everything

    seed_everything(0)
    return Toy()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    from tskd import atomic, engine

    folder, point, n = argv[0], argv[1], int(argv[2])
    calls = {"write": 0, "swap": 0}
    write_file, replace = atomic._write_file, os.replace

    def killing_write(path: Any, data: Any) -> None:
        calls["write"] += 1
        if point == "partial" and calls["write"] == n:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, bytes(data)[: max(1, len(data) // 2)])
            os.fsync(fd)
            _die()
        write_file(path, data)
        if point == "write" and calls["write"] == n:
            _die()

    def killing_replace(src: Any, dst: Any) -> None:
        replace(src, dst)
        if os.path.basename(str(dst)) in ("ckpt", "ckpt.old"):
            calls["swap"] += 1
            if point == "swap" and calls["swap"] == n:
                _die()

    atomic._write_file = killing_write  # type: ignore[assignment]
    os.replace = killing_replace  # type: ignore[assignment]

    def progress(p: engine.Progress) -> None:
        if point == "step" and p.step == n:
            _die()

    engine.train(build(), CFG, control=engine.RunControl(progress, checkpoint_dir=folder))
    sys.exit(3)  # never reached when the kill point lies inside the run


if __name__ == "__main__":
    main(sys.argv[1:])
