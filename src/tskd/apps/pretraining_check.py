"""Does the mini teacher's pretraining carry knowledge? The same architecture from random init.

The demo's LoRA-adapted teacher is compared with the same SAM architecture trained from random
initialisation, every parameter trainable, on the same labelled images for the same number of
steps, scored on the same held-out test images. AdamW at 3e-4 (a standard rate for training a
ViT from scratch) since the teacher's LoRA rate would be too high for all 19 M parameters; the
rate is fixed here, never chosen on the test split.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from tskd.config import RunConfig

SCRATCH_LR = 3e-4


def random_init_model(cfg: RunConfig, num_classes: int, pretrained: bool = False) -> Any:
    """Build the teacher's architecture, randomly initialised from the run's seed.

    Initialised under ``teacher.train.seed`` inside ``torch.random.fork_rng``, so re-runs
    agree and the global generator is left as it was.

    Args:
        cfg: the run configuration; ``teacher.model_type``, ``teacher.checkpoint``,
            ``teacher.input_size`` (pixels) and ``teacher.train.seed`` are read.
        num_classes: classes including the background.
        pretrained: True loads the teacher's weights instead (its pretrained refine head
            too; only new class heads are drawn at random).

    Returns:
        A ``tskd.models.teacher.SemanticSam``, every parameter trainable.
    """
    import torch

    from tskd.models.teacher import SemanticSam, build_sam

    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(cfg.teacher.train.seed)
        sam = build_sam(cfg.teacher.model_type, cfg.teacher.checkpoint, cfg.teacher.input_size,
                        pretrained=pretrained)
        model = SemanticSam(sam, num_classes, cfg.teacher.refine_head)
        return model.requires_grad_(True)


def random_init_teacher(cfg: RunConfig, test_folder: str | Path,
                        pretrained: bool = False) -> dict[str, Any]:
    """Train the teacher's architecture from scratch and score it on ``test_folder``.

    Same labelled images, augmentation and epochs as the teacher stage, every parameter
    trained, at ``SCRATCH_LR`` (see the module docstring).

    Args:
        cfg: the demo's TS-KD configuration (``tskd.apps.demo.demo_config``).
        test_folder: the held-out test set (images/ and labels/).
        pretrained: True starts from the teacher's pretrained weights instead: full
            fine-tuning, the alternative to LoRA (``teacher_adaptation.py``'s ``full``).

    Returns:
        ``dice_mean``, ``dice_std``, ``hd95_mean``, ``hd95_std`` (pixels) over the test
        images, ``steps`` trained, ``lr``, ``trainable_params`` (count) and ``seconds`` of
        training and scoring.

    Raises:
        TskdInputError: the labelled or test data cannot be read.
        CheckpointError: ``teacher.model_type`` is not a SAM type (no checkpoint is read).
    """
    from tskd.engine import train
    from tskd.inference.predict import evaluate_folder
    from tskd.inference.segmenter import Segmenter
    from tskd.pipeline.context import load_labelled_data
    from tskd.training.teacher import TeacherTask

    data = load_labelled_data(cfg)
    model = random_init_model(cfg, data.num_classes, pretrained)
    train_cfg = copy.deepcopy(cfg.teacher.train)
    train_cfg.lr = SCRATCH_LR
    train_cfg.device = cfg.device_of("teacher")
    task = TeacherTask(model, data.train, cfg.teacher, cfg.data.augment)
    t0 = time.perf_counter()
    result = train(task, train_cfg)
    model = task.model.eval()
    seg = Segmenter(model, cfg.teacher.input_size, data.num_classes,
                    device=cfg.device_of("predict"))
    report, _ = evaluate_folder(seg, test_folder, data.label_map)
    return {
        "dice_mean": report.summary["dice_mean"],
        "dice_std": report.summary["dice_std"],
        "hd95_mean": report.summary["hd95_mean"],
        "hd95_std": report.summary["hd95_std"],
        "steps": result.steps,
        "lr": SCRATCH_LR,
        "trainable_params": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - t0,
    }
