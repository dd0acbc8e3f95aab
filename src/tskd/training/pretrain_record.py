"""What ``mini_sam.json`` records of a pretraining run: settings, code, losses, time, machine.

The machine matters for reproducing a run bit for bit: the scenes are drawn with NumPy, whose
float functions take other SIMD code paths on other CPUs (``numpy.show_config``'s "SIMD
Extensions"), and PyTorch's sums depend on its thread count; the same command on the same
CPU features and threads gives the same weights.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tskd.engine import TrainResult
from tskd.models.mini_sam import MiniSamConfig
from tskd.training.pretrain_config import PretrainConfig


def git_commit() -> str | None:
    """The commit of the checked-out code, or None outside a git checkout (an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """What the bits of a run depend on beside the code and the command.

    Returns:
        ``cpu`` (model name from ``/proc/cpuinfo``, else ``platform``), ``numpy_simd`` (the
        SIMD extensions NumPy dispatches to, ``numpy.show_config(mode="dicts")``; they change
        the scenes' floats), ``torch_threads`` and ``torch`` (version).
    """
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(v.split(":", 1)[1].strip() for v in lines if v.startswith("model name"))
    except (OSError, StopIteration):
        pass
    simd = (np.show_config(mode="dicts") or {}).get("SIMD Extensions", {})
    return {"cpu": cpu, "numpy_simd": list(simd.get("found", [])),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def run_record(cfg: PretrainConfig, arch: MiniSamConfig, result: TrainResult,
               command: str | None, commit: str | None,
               seconds: tuple[float, float]) -> dict[str, Any]:
    """The record of a finished pretraining (``mini_sam.json``'s "info", less the parameters).

    Args:
        cfg: The pretraining settings.
        arch: The architecture.
        result: What ``tskd.engine.train`` returned.
        command: The command line, or None.
        commit: ``git_commit()`` when the run started.
        seconds: This call's wall time and the training seconds of every piece (resumed
            pieces added up), in seconds.

    Returns:
        Settings (``pretrain_config``), ``command``, ``seed``, ``tskd_version``,
        ``git_commit``, ``steps``, ``final_loss`` (the last epoch's mean), ``final_logs``,
        ``history`` (per-epoch means), ``wall_time_s``, ``train_seconds``,
        ``resumed_from_epoch``, ``machine`` (``machine()``) and ``data``.
    """
    import tskd

    final = result.history[-1] if result.history else {}
    return {
        "pretrain_config": asdict(cfg) | {"model": arch.to_dict()},
        "command": command,
        "seed": cfg.train.seed,
        "tskd_version": tskd.__version__,
        "git_commit": commit,
        "steps": result.steps,
        "final_loss": final.get("loss"),
        "final_logs": final,
        "history": result.history,
        "wall_time_s": round(seconds[0], 1),
        "train_seconds": round(seconds[1], 1),
        "resumed_from_epoch": result.resumed_from_epoch,
        "machine": machine(),
        "data": f"tskd.data.phantoms.pretraining_sample, scenes {cfg.scenes!r} "
                "(tskd.data.phantoms.pretraining.SCENES); no target task",
    }
