"""Hardware presets for the teacher: picked from the free memory of the device that will train.

An immutable table (a tuple of frozen dataclasses), read top to bottom: the first preset whose
memory need fits is chosen. The numbers are what SAM + LoRA at that size needs for training with
the batch size given (activations dominate), with head-room for the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    device_kind: str  # cuda | mps | cpu
    min_free_gb: float
    model_type: str
    input_size: int
    batch_size: int


PRESETS: tuple[Preset, ...] = (
    Preset("GPU >= 40 GB: vit_h at 1024", "cuda", 40.0, "vit_h", 1024, 4),
    Preset("GPU >= 20 GB: vit_l at 1024", "cuda", 20.0, "vit_l", 1024, 2),
    Preset("GPU >= 10 GB: vit_b at 1024", "cuda", 10.0, "vit_b", 1024, 2),
    Preset("GPU >= 6 GB: vit_b at 512", "cuda", 6.0, "vit_b", 512, 2),
    Preset("GPU < 6 GB: vit_b at 256", "cuda", 0.0, "vit_b", 256, 2),
    Preset("Apple MPS >= 16 GB: vit_b at 512", "mps", 16.0, "vit_b", 512, 2),
    Preset("Apple MPS: vit_b at 256", "mps", 0.0, "vit_b", 256, 2),
    Preset("CPU >= 16 GB: vit_b at 256", "cpu", 16.0, "vit_b", 256, 2),
    Preset("CPU: built-in mini SAM at 128 (its native size)", "cpu", 0.0, "mini", 128, 4),
)


def free_memory(device: str = "auto") -> tuple[str, float]:
    """(device kind, free GB) of the device ``device`` resolves to. Imports torch."""
    import torch

    kind = device.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        return "cuda", free / 2**30
    import psutil

    # MPS shares system memory; on CPU the training lives in RAM as well
    return ("mps" if kind == "mps" else "cpu"), psutil.virtual_memory().available / 2**30


def pick(device_kind: str, free_gb: float, prefer_builtin_on_cpu: bool = True) -> Preset:
    """The first preset for ``device_kind`` whose memory need fits ``free_gb``.

    On CPU the built-in mini SAM is preferred even with plenty of RAM: one vit_b forward pass of
    a 256x256 image takes 0.57 s on two threads (benchmarks/inference_speed.py), and training
    costs several of those per image and step, so a teacher would take hours.
    """
    candidates = [p for p in PRESETS if p.device_kind == device_kind]
    if device_kind == "cpu" and prefer_builtin_on_cpu:
        return candidates[-1]
    for preset in candidates:
        if free_gb >= preset.min_free_gb:
            return preset
    return candidates[-1]
