"""Tiny task data, a tiny mini-SAM checkpoint and a tiny run config for pipeline and CLI tests."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_SIZE = 64


def write_tiny_task(root: Path, n_train: int = 4, n_unlabelled: int = 3, n_test: int = 3) -> Path:
    from tskd.data import phantoms

    return phantoms.write_task_folders("kidney_us", root, n_train, n_unlabelled, n_test,
                                       size=TINY_SIZE, seed=0)


def write_tiny_sam(path: Path) -> Path:
    """A randomly initialised tiny SAM saved like the built-in mini teacher."""
    import torch

    from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
    from tskd.models.mini_sam_files import save_mini_sam

    torch.manual_seed(0)
    cfg = MiniSamConfig.tiny()
    return save_mini_sam(build_mini_sam(cfg), cfg, path, half=False)


def tiny_config(data: Path, sam: Path, run_dir: Path) -> dict:
    """Every stage at a size that runs in seconds on two CPU cores."""
    train = {"epochs": 1, "batch_size": 2, "lr": 1e-3}
    return {
        "run_dir": str(run_dir),
        "device": "cpu",  # every stage's
        "data": {
            "labelled": str(data / "train"),
            "unlabelled": str(data / "unlabelled"),
            "test": str(data / "test"),
            "image_size": TINY_SIZE,
            "val_fraction": 0.0,
        },
        "teacher": {"model_type": "mini", "checkpoint": str(sam), "input_size": TINY_SIZE,
                    "train": train},
        "synth": {"n_images": 2, "resolution": 16, "base_channels": 8, "sample_steps": 2,
                  "train": {"epochs": 1, "max_steps": 2, "batch_size": 2}},
        "distill": {"train": train, "teacher_layers": ["neck"], "student_layers": ["neck"]},
        # timm's 82k-parameter test EfficientNet (GroupNorm): the default (conv) student, tiny
        # (embed_dim, depth, num_heads: a tiny ViT-Tiny where a run chooses that architecture)
        "student": {"architecture": "conv", "backbone": "test_efficientnet_gn",
                    "decoder_channels": 16,
                    "embed_dim": 32, "depth": 2, "num_heads": 2, "train": train},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path
