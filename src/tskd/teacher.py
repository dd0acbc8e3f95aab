"""The teacher stage's public API: SAM build/load, prompt-free head, LoRA, adapters, training.

The code lives in small modules, one concern each: ``teacher_model`` (build_sam, SemanticSam),
``teacher_lora`` (LoRA, merge, adapter files) and ``teacher_train`` (the fine-tuning stage).
Import from here.
"""

from __future__ import annotations

from tskd.teacher_lora import (
    apply_lora,
    head_parameters,
    is_lora,
    load_teacher,
    merge_lora,
    read_adapter_meta,
    save_teacher,
    teacher_id,
)
from tskd.teacher_model import SemanticSam, build_sam
from tskd.teacher_train import TeacherTask, finetune_teacher

__all__ = [
    "SemanticSam",
    "TeacherTask",
    "apply_lora",
    "build_sam",
    "finetune_teacher",
    "head_parameters",
    "is_lora",
    "load_teacher",
    "merge_lora",
    "read_adapter_meta",
    "save_teacher",
    "teacher_id",
]
