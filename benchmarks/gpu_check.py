"""GPU check: SAM vit_b through every stage, its memory, speed and largest batch, vs the presets.

    python benchmarks/gpu_check.py                      # a CUDA GPU: a few minutes
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --tiny   # the CPU, a tiny SAM, seconds

No download: SAM vit_b is built by ``segment_anything``'s own builder with RANDOM weights, its
``state_dict`` saved as a ``.pth`` in the official checkpoint format, and loaded back through
the project's normal path (``tskd.models.teacher.build_sam``). Weights do not change memory or
speed. Then, with mixed precision ``auto`` (bf16 where supported, else fp16; none on the CPU):

- the teacher stage (``finetune_teacher``: LoRA) at each ``--sizes`` with the presets' batch
  (2): peak GPU memory (``torch.cuda.max_memory_allocated``), optimiser steps per second
  (after one warm-up step), and the largest batch that fits (doubling until out of memory,
  then bisection; at most ``--max-batch``); with ``--checkpointing`` also the teacher with
  gradient checkpointing;
- distillation (the teacher at ``--student-size`` into the default student) and student
  fine-tuning: peak memory and steps per second;
- prediction with the student (``Segmenter``): images per second;
- every preset of ``napari_tskd/_presets.py``: "fits" when the measured peak of its model,
  size and batch is below its ``min_free_gb``; "not measured" for another model or device.

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (default benchmarks/results/, where
the GPU figures go) and prints where, with one line per stage. Without a CUDA GPU it refuses
(exit code 2) unless ``--tiny``: the CPU, a tiny SAM (``MiniSamConfig.tiny()``) at 64 pixels,
1 step, batch search up to 4: it checks that the script runs (tests/test_scaling.py), not the
figures, and writes into ``--out`` or else a new temporary folder, never into
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def _presets() -> tuple[Any, ...]:
    """``napari_tskd._presets.PRESETS``, read without importing the plugin package (napari)."""
    spec = importlib.util.spec_from_file_location("_presets", ROOT / "napari_tskd" / "_presets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_presets"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.PRESETS


def make_checkpoint(folder: Path, tiny: bool) -> tuple[str, str]:
    """A random SAM in a checkpoint file: ``(model_type, path)`` for ``build_sam``."""
    torch.manual_seed(0)
    if tiny:
        from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
        from tskd.models.mini_sam_files import save_mini_sam

        cfg = MiniSamConfig.tiny()
        return "mini", str(save_mini_sam(build_mini_sam(cfg), cfg, folder / "tiny.safetensors",
                                         half=False))
    from segment_anything import sam_model_registry

    path = folder / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return "vit_b", str(path)


def _samples(n: int, size: int) -> list[Any]:
    from tskd.data.samples import Sample

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        label = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).astype(np.int64)
        image = np.clip(60 + 120 * label + rng.normal(0, 20, (size, size)), 0, 255)
        out.append(Sample(f"s{i}", image.astype(np.uint8), label))
    return out


class Meter:
    """Peak memory (GPU: allocated by torch; CPU: the process's peak RSS) and wall time."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def __enter__(self) -> Meter:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        if self.cuda:
            self.peak_gb = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_batch(fits: Callable[[int], bool], limit: int) -> int:
    """The largest batch in [1, limit] for which ``fits`` holds (doubling, then bisection).

    Args:
        fits: runs one step at a batch size; False when it ran out of memory.
        limit: the largest batch tried.

    Returns:
        The batch; 0 when not even 1 fits.
    """
    good, bad = 0, None
    b = 1
    while b <= limit and fits(b):
        good, b = b, b * 2
    bad = min(b, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def teacher_run(model_type: str, ckpt: str, size: int, batch: int, steps: int, device: str,
                out: Path, checkpointing: bool = False, warmup: bool = True) -> dict[str, Any]:
    """The teacher stage for ``steps`` steps (after a 1-step warm-up): memory and speed."""
    from tskd.config import TeacherConfig, TrainConfig
    from tskd.training.teacher import finetune_teacher

    def run(n: int) -> tuple[dict[str, Any], Meter]:
        cfg = TeacherConfig(model_type=model_type, checkpoint=ckpt, input_size=size,
                            gradient_checkpointing=checkpointing,
                            train=TrainConfig(epochs=1, batch_size=batch, max_steps=n,
                                              device=device, warmup_fraction=0.0))
        with Meter(device) as m:
            metrics = finetune_teacher(cfg, _samples(batch * n, size), [], 2,
                                       out / f"teacher_{size}", augment=False)
        return metrics, m

    if warmup:
        run(1)  # kernels, allocator
    metrics, m = run(steps)
    return {"stage": "teacher", "size": size, "batch_size": batch, "steps": metrics["steps"],
            "gradient_checkpointing": checkpointing, "peak_gb": round(m.peak_gb, 3),
            "steps_per_s": round(metrics["steps"] / max(metrics["train_seconds"], 1e-9), 3)}


def teacher_largest_batch(model_type: str, ckpt: str, size: int, device: str, out: Path,
                          limit: int) -> int:
    """The largest teacher batch that trains one step at ``size`` on ``device``."""

    def fits(b: int) -> bool:
        try:
            teacher_run(model_type, ckpt, size, b, 1, device, out, warmup=False)
            return True
        except Exception as exc:
            if not _oom(exc):
                raise
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            return False

    return largest_batch(fits, limit)


def student_runs(teacher_dir: Path, size: int, steps: int, device: str, out: Path,
                 tiny: bool) -> list[dict[str, Any]]:
    """Distillation and fine-tuning of the default student (tiny: a tiny one); prediction."""
    from tskd.config import DistillConfig, StudentConfig, TrainConfig
    from tskd.inference.segmenter import Segmenter
    from tskd.models.lora import load_teacher, teacher_id
    from tskd.models.student import build_student
    from tskd.training.distill import distill
    from tskd.training.finetune import finetune_student

    train = TrainConfig(epochs=1, batch_size=2, max_steps=steps, device=device,
                        warmup_fraction=0.0)
    scfg = (StudentConfig(backbone="test_efficientnet_gn", decoder_channels=16, train=train)
            if tiny else StudentConfig(train=train))
    samples = _samples(2 * steps, size)
    teacher = load_teacher(teacher_dir)
    student = build_student(scfg, 2, size)
    rows = []
    with Meter(device) as m:
        result = distill(teacher, [s.image for s in samples], DistillConfig(train=train),
                         student, int(teacher.input_size), teacher_id(teacher_dir),
                         out / "cache")
    rows.append({"stage": "distill", "size": size, "batch_size": 2, "steps": result.steps,
                 "peak_gb": round(m.peak_gb, 3), "seconds": round(m.seconds, 2),
                 "steps_per_s": round(result.steps / max(result.seconds, 1e-9), 3)})
    with Meter(device) as m:
        result, _ = finetune_student(student, samples, [], scfg, size)
    rows.append({"stage": "student", "size": size, "batch_size": 2, "steps": result.steps,
                 "peak_gb": round(m.peak_gb, 3),
                 "steps_per_s": round(result.steps / max(result.seconds, 1e-9), 3)})
    seg = Segmenter(student, size, 2, device=device)
    seg.segment(samples[0].image)  # warm-up
    n = 4 if tiny else 32
    with Meter(device) as m:
        for i in range(n):
            seg.segment(samples[i % len(samples)].image)
    rows.append({"stage": "predict", "size": size, "images": n, "peak_gb": round(m.peak_gb, 3),
                 "images_per_s": round(n / m.seconds, 2)})
    return rows


def check_presets(rows: list[dict[str, Any]], model_type: str, device: str) -> list[dict]:
    """Each preset against the measured teacher peak at its model, size and batch."""
    measured = {(r["size"], r["batch_size"]): r["peak_gb"] for r in rows
                if r["stage"] == "teacher" and not r.get("gradient_checkpointing")}
    out = []
    for p in _presets():
        peak = measured.get((p.input_size, p.batch_size))
        if device != "cuda" or p.device_kind != "cuda" or p.model_type != model_type \
                or peak is None:
            verdict = "not measured"
        else:
            verdict = ("fits" if peak < p.min_free_gb else "too small") if p.min_free_gb \
                else f"needs {peak:.1f} GB"
        out.append({"preset": p.name, "model_type": p.model_type, "size": p.input_size,
                    "batch_size": p.batch_size, "min_free_gb": p.min_free_gb,
                    "measured_peak_gb": peak, "verdict": verdict})
    return out


def _speed(row: dict[str, Any]) -> str:
    if "images_per_s" in row:
        return f"{row['images_per_s']} images/s"
    return f"{row['steps_per_s']} steps/s" if "steps_per_s" in row else "-"


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page: one unit per column, "-" where nothing was measured."""
    what = ("a tiny SAM (MiniSamConfig.tiny), random weights" if report["tiny"] else
            f"SAM {report['model_type']}, random weights in the official checkpoint format")
    lines = [f"# GPU check ({report['device_name']})", "",
             f"{what}; mixed precision auto; torch {report['torch']}. Memory: "
             f"{report['memory']}.", "",
             "| stage | size (px) | batch | speed | peak memory (GB) | largest batch |",
             "|---|---|---|---|---|---|"]
    for r in report["stages"]:
        name = r["stage"] + (" + checkpointing" if r.get("gradient_checkpointing") else "")
        lines.append(f"| {name} | {r['size']} | {_or_dash(r.get('batch_size'))} | "
                     f"{_speed(r)} | {r['peak_gb']:.3f} | {_or_dash(r.get('largest_batch'))} |")
    lines += ["", "| preset | model | size (px) | batch | min free (GB) | measured peak (GB) | "
              "verdict |", "|---|---|---|---|---|---|---|"]
    for p in report["presets"]:
        lines.append(f"| {p['preset']} | {p['model_type']} | {p['size']} | {p['batch_size']} | "
                     f"{_or_dash(p['min_free_gb'])} | {_or_dash(p['measured_peak_gb'])} | "
                     f"{p['verdict']} |")
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any], out: Path) -> str:
    """What ``main`` prints: where it wrote, then one line per stage."""
    lines = [f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} "
             f"({report['device_name']}{', tiny smoke test' if report['tiny'] else ''})"]
    for r in report["stages"]:
        name = r["stage"] + (" + checkpointing" if r.get("gradient_checkpointing") else "")
        largest = f", largest batch {r['largest_batch']}" if "largest_batch" in r else ""
        lines.append(f"  {name} {r['size']} px: {_speed(r)}, peak {r['peak_gb']:.3f} GB"
                     f"{largest}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check (see the module docstring); returns the report written.

    Args:
        argv: the command line after the script's name; None reads ``sys.argv``.

    Returns:
        The report (also written as JSON and markdown).

    Raises:
        SystemExit: code 2 without ``--tiny`` on a machine without a CUDA GPU (one line).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny SAM, 1 step (a smoke test)")
    ap.add_argument("--sizes", type=int, nargs="+", help="teacher input sizes")
    ap.add_argument("--steps", type=int, help="timed optimiser steps per stage")
    ap.add_argument("--max-batch", type=int, help="largest teacher batch tried")
    ap.add_argument("--student-size", type=int, help="the student's (and its teacher's) size")
    ap.add_argument("--checkpointing", action="store_true",
                    help="also the teacher with gradient checkpointing at each size")
    ap.add_argument("--out", type=Path, help="the folder written (default: benchmarks/results/; "
                    "with --tiny a new temporary folder)")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); run it on a "
              "machine with one, or pass --tiny for a CPU smoke test", file=sys.stderr)
        raise SystemExit(2)
    device = "cpu" if args.tiny else "cuda"
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_tiny_")) if args.tiny
                       else RESULTS)
    sizes = args.sizes or ([64] if args.tiny else [256, 512, 1024])
    steps = args.steps or (1 if args.tiny else 5)
    limit = args.max_batch or (4 if args.tiny else 64)
    student_size = args.student_size or min(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_type, ckpt = make_checkpoint(folder, args.tiny)
        rows = []
        for size in sizes:
            row = teacher_run(model_type, ckpt, size, 2, steps, device, folder,
                              warmup=not args.tiny)
            row["largest_batch"] = teacher_largest_batch(model_type, ckpt, size, device,
                                                         folder, limit)
            rows.append(row)
            if args.checkpointing:
                rows.append(teacher_run(model_type, ckpt, size, 2, steps, device, folder, True))
        if student_size not in sizes:
            teacher_run(model_type, ckpt, student_size, 2, 1, device, folder, warmup=False)
        rows += student_runs(folder / f"teacher_{student_size}", student_size, steps, device,
                             folder, args.tiny)
    report = {
        "device": device, "tiny": args.tiny, "model_type": model_type, "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
        or "CPU",
        "memory": "torch.cuda.max_memory_allocated" if device == "cuda"
        else "the process's peak resident memory (ru_maxrss)",
        "stages": rows, "presets": check_presets(rows, model_type, device),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    print(summary(report, out))
    return report


if __name__ == "__main__":
    main()
