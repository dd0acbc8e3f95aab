"""What gradient accumulation and gradient checkpointing save: the teacher stage's memory on CPU.

    OMP_NUM_THREADS=1 python benchmarks/memory_check.py [--size 256] [--batch 4] [--steps 2]

Each setting runs in a fresh process (so one run's peak does not hide another's): the built-in
mini teacher (SAM architecture, the packaged weights) with LoRA, through ``finetune_teacher``
for ``--steps`` optimiser steps on random images. The figure is the growth of the process's
peak resident memory (``ru_maxrss``) from just before training to its end: the activations,
gradients and optimiser state training adds to the loaded model. Settings: the batch as it is;
half the batch with 2 accumulation steps (the same global batch); the batch with gradient
checkpointing of the image encoder. Writes benchmarks/results/memory_check_<size>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def one(size: int, batch: int, accum: int, checkpointing: bool, steps: int) -> dict[str, Any]:
    """Train the teacher once in this process; the memory it took, in MB."""
    import numpy as np
    import torch

    from tskd.config import TeacherConfig, TrainConfig
    from tskd.data.samples import Sample
    from tskd.training.teacher import finetune_teacher

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    samples = [Sample(f"s{i}", rng.integers(0, 256, (size, size), dtype=np.uint8),
                      (rng.random((size, size)) > 0.5).astype(np.int64)) for i in range(16)]
    cfg = TeacherConfig(input_size=size, gradient_checkpointing=checkpointing,
                        train=TrainConfig(epochs=1, batch_size=batch, grad_accum_steps=accum,
                                          max_steps=steps, device="cpu"))
    with tempfile.TemporaryDirectory() as out:
        before = _rss_mb()
        import time

        t0 = time.perf_counter()
        finetune_teacher(cfg, samples, [], 2, Path(out) / "teacher", augment=False)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "batch_size": batch, "grad_accum_steps": accum,
            "gradient_checkpointing": checkpointing, "steps": steps,
            "training_mb": round(peak - before, 1), "peak_rss_mb": round(peak, 1),
            "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # "batch,accum,ckpt": run one setting
    args = ap.parse_args()
    if args.one:
        b, a, c = (int(v) for v in args.one.split(","))
        print(json.dumps(one(args.size, b, a, bool(c), args.steps)))
        return
    rows = []
    for b, a, c in [(args.batch, 1, 0), (args.batch // 2, 2, 0), (args.batch, 1, 1)]:
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--steps",
                              str(args.steps), "--one", f"{b},{a},{c}"], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"memory_check_{args.size}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
