"""Viewer words for backend messages: the backend (``src/tskd``) speaks to the command line
("pass --overwrite", "run finetune-teacher first", "set student.from_scratch"); in napari the
same advice names the tab, button, checkbox or field that does it.

``viewer_words`` rewrites a message with ``PHRASES`` (specific sentences first), then
``FIELDS`` (config keys that a form field edits); every notification (``_notify``) and every
job's status line goes through it. tests/test_gui_messages.py checks every message the backend
can raise or warn with against this table, so a new command-line phrase cannot reach the viewer
unnoticed.
"""

from __future__ import annotations

import re

SCRATCH = "tick 'from scratch' in the Student tab"
REPLACE = "tick 'replace a different run in this folder' in the Data tab"

# (pattern, replacement), most specific first; patterns are regular expressions
PHRASES: tuple[tuple[str, str], ...] = (
    (r"pass --overwrite to remove the files that run wrote",
     f"{REPLACE} to remove the files that run wrote"),
    (r"\(--overwrite replaces files, never folders\)", "(replacing never removes a folder)"),
    (r"run again without --resume to start over",
     "press the stage's Train button (not Resume) to start over"),
    (r"start again without --resume", "start again with the stage's Train button (not Resume)"),
    (r" \(data\.labelled / --data\)",
     ": choose the labelled layers or folder in the Data tab and press 'Use this data'"),
    (r" \(data\.test / --test\)", " (data.test in the run's config.yaml)"),
    (r"run finetune-teacher first", "train the teacher first (Teacher tab > Train teacher)"),
    (r"run distill first or set student\.from_scratch",
     f"distil first (Student tab > Distil), or {SCRATCH}"),
    (r"set 'student\.from_scratch: true'", SCRATCH),
    (r"\(student\.from_scratch: true\)", f"({SCRATCH})"),
    (r"give a larger tile size \(--tile-size, e\.g\. [^)]+\)",
     "train the student at a larger 'Student input size' (Data tab), which sets the tile size"),
    (r"retrain it, or pass --tile-size", "retrain it (Student tab > Fine-tune) to record it"),
    (r"raise it with --max-pixels / data\.max_pixels \(or ([^)]+)\)",
     r"raise it by setting the environment variable \1 before starting napari"),
    (r"create them with `tskd pretrain-mini`",
     "choose a SAM checkpoint file in the Teacher tab (Checkpoint), or create them in a "
     "terminal with `tskd pretrain-mini`"),
    (r"without task_agnostic", "with task-specific distillation (Student tab > Advanced)"),
)

# config keys a form field edits: what the viewer calls them
FIELDS: dict[str, str] = {
    "student.from_scratch": "'from scratch' (Student tab)",
    "student.architecture": "'Student' (Student tab)",
    "student.dice_weight": "'Dice weight' (Student tab > Advanced)",
    "distill.feature_weight": "'Feature loss weight' (Student tab > Advanced)",
    "distill.output_weight": "'Output loss weight' (Student tab > Advanced)",
    "distill.temperature": "'Temperature' (Student tab > Advanced)",
    "synth.resolution": "'Diffusion resolution' (Transfer set tab > Advanced)",
    "synth.sample_steps": "'Sampling steps (DDIM)' (Transfer set tab > Advanced)",
    "synth.near_copy_threshold": "'Near-copy threshold' (Transfer set tab > Advanced)",
    "teacher.lora.targets": "'LoRA targets' (Teacher tab > Advanced)",
    "teacher.input_size": "'Input size' (Teacher tab)",
    "data.image_size": "'Student input size' (Data tab)",
    "data.val_fraction": "'Validation share' (Data tab)",
    "data.labelled": "the labelled data (Data tab)",
}

_COMPILED = tuple((re.compile(p), r) for p, r in PHRASES)
_FIELD_RE = re.compile(r"'?\b(" + "|".join(re.escape(k) for k in FIELDS) + r")\b'?")


def viewer_words(message: str) -> str:
    """``message`` with command-line advice replaced by the viewer's buttons and fields.

    Args:
        message: A backend message (``TskdError``, ``TskdWarning``) or the plugin's own.

    Returns:
        The message in viewer words; unchanged when it holds no command-line phrase.
    """
    for pattern, replacement in _COMPILED:
        message = pattern.sub(replacement, message)
    return _FIELD_RE.sub(lambda m: FIELDS[m.group(1)], message)
