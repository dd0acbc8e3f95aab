"""Inference speed: the student against the SAM teachers, and what pre/post-processing adds.

    OMP_NUM_THREADS=1 python benchmarks/inference_speed.py --threads 1
    python benchmarks/inference_speed.py --threads 2 --vit-b

Every model segments one 256x256 grayscale image through
`tskd.inference.segmenter.Segmenter` (resize to the model's input size, normalise, forward,
resize back, argmax): the median over `--repeats` runs after a warm-up. Weights do not change
the time, so the teachers are random initialisations of the real architectures (no checkpoint
is needed). "overhead" is the best segment() time minus the best bare forward of the student,
interleaved so that both see the same machine load.
Writes benchmarks/results/inference_speed_<threads>t.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tskd.config import StudentConfig
from tskd.inference.segmenter import Segmenter
from tskd.models.student import build_student
from tskd.models.teacher import SemanticSam, build_sam

RESULTS = Path(__file__).parent / "results"
IMAGE = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)


def time_segment(net: torch.nn.Module, input_size: int, repeats: int) -> list[float]:
    """Milliseconds per 256x256 image, each of ``repeats`` runs after one warm-up."""
    seg = Segmenter(net, input_size, 2, device="cpu")
    seg.segment(IMAGE)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg.segment(IMAGE)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def overhead_ms(net: torch.nn.Module, input_size: int, repeats: int) -> float:
    """Best segment() minus best bare forward, interleaved."""
    seg = Segmenter(net, input_size, 2, device="cpu")
    x = torch.rand(1, 3, input_size, input_size)
    t_fwd, t_seg = [], []
    for i in range(repeats + 3):
        for fn, times in ((lambda: net(x), t_fwd), (lambda: seg.segment(IMAGE), t_seg)):
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1000 * (min(t_seg) - min(t_fwd))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--vit-b", action="store_true",
                   help="also time SAM vit_b at 256 and 1024 (slow on CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models: list[tuple[str, torch.nn.Module, int]] = [
        ("student (default: U-Net, BasicUNet width 16) at 256",
         build_student(StudentConfig(), 2, 256).eval(), 256),
        (f"student (CNN, {StudentConfig().backbone}) at 256",
         build_student(StudentConfig(architecture="conv"), 2, 256).eval(), 256),
        ("student (ViT-Tiny) at 256",
         build_student(StudentConfig(architecture="vit_tiny"), 2, 256).eval(), 256),
        ("U-Net baseline (MONAI BasicUNet, width 32) at 256",
         build_student(StudentConfig(architecture="unet", unet_width=32), 2, 256).eval(), 256),
        ("mini SAM at 128", SemanticSam(build_sam("mini", None, 128, pretrained=False), 2), 128),
        ("mini SAM at 256", SemanticSam(build_sam("mini", None, 256, pretrained=False), 2), 256),
    ]
    if args.vit_b:
        for size in (256, 1024):
            models.append((f"SAM vit_b at {size}",
                           SemanticSam(build_sam("vit_b", None, size, pretrained=False), 2), size))
    rows: dict[str, Any] = {}
    for name, net, size in models:
        net.eval()
        repeats = args.repeats if "vit_b" not in name else max(3, args.repeats // 5)
        times = time_segment(net, size, repeats)
        rows[name] = {"params": int(sum(q.numel() for q in net.parameters())),
                      "ms_median": statistics.median(times), "ms_min": min(times),
                      "repeats": repeats}
        print(f"{name:52s} {rows[name]['params'] / 1e6:6.2f} M  "
              f"{rows[name]['ms_median']:8.1f} ms", flush=True)
    student = models[0][1]
    result = {
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "models": rows,
        "student_overhead_ms": overhead_ms(student, 256, args.repeats),
    }
    print(f"pre/post-processing overhead of the student: {result['student_overhead_ms']:.2f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"inference_speed_{args.threads}t.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
