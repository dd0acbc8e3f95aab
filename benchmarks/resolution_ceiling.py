"""How fine can a model's masks be? The best Dice reachable from a coarse logit grid, per task.

    python benchmarks/resolution_ceiling.py

A SAM-style mask decoder predicts masks at a quarter of its input size (the mini teacher at
128 px: a 32x32 grid), which is then resized to the image. This script takes the *ground truth*
of each procedural task at 256x256, averages it down to an R x R grid (the best any model at that
grid could predict), resizes it back bilinearly, takes the argmax and scores it with the
benchmark's Dice (mean over foreground classes). Whatever falls short of 1.0 no training can
recover at that resolution. Images: 20 per task, seed 5 (not the benchmark's test draws).
Writes benchmarks/results/resolution_ceiling.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tskd.data import phantoms
from tskd.inference.metrics import evaluate

RESULTS = Path(__file__).parent / "results"
GRIDS = (32, 64, 128, 256)
SIZE = 256


def round_trip(label: np.ndarray, grid: int, num_classes: int) -> np.ndarray:
    """``label`` averaged down to a ``grid`` x ``grid`` map and resized back (argmax)."""
    onehot = F.one_hot(torch.from_numpy(label.astype(np.int64)), num_classes)
    onehot = onehot.permute(2, 0, 1)[None].float()
    coarse = F.interpolate(onehot, size=(grid, grid), mode="area")
    back = F.interpolate(coarse, size=label.shape, mode="bilinear", align_corners=False)
    return back.argmax(1)[0].numpy()


def main() -> None:
    out: dict[str, dict[str, float]] = {}
    for task, spec in phantoms.TASKS.items():
        labels = [lab for _, lab in phantoms.generate(task, 20, size=SIZE, seed=5)]
        n = len(spec.class_names)
        out[task] = {  # every image has the same classes: the record mean is the image mean
            str(g): float(evaluate([round_trip(lab, g, n) for lab in labels], labels,
                                   num_classes=n).summary["dice_mean"])
            for g in GRIDS
        }
        row = "  ".join(f"{g}x{g}: {out[task][str(g)]:.3f}" for g in GRIDS)
        print(f"{task:15s} {row}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "resolution_ceiling.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
