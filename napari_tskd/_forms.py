"""Form layout shared by the stage tabs: the everyday fields, a collapsed *Advanced* section
(LoRA patterns, loss weights, temperature, near-copy threshold, learning rates) and the buttons;
and the quality line a finished job shows (validation Dice, or why there is none)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container

ADVANCED = "Advanced"
NO_VALIDATION = ("too few labels to validate: no validation images (label more images, or "
                 "raise 'Validation share' in the Data tab)")


def layout_form(stage_widget: Any, main: list[Any], advanced: list[Any],
                actions: list[Any]) -> Container:
    """Fill ``stage_widget.form`` with ``main``, then a collapsed *Advanced* section, then
    ``actions`` (buttons, result lines).

    Args:
        stage_widget: A ``StageWidget`` (its ``form`` and ``_layout``).
        main: The fields shown by default.
        advanced: The fields hidden in *Advanced* until it is opened.
        actions: Buttons and result lines, below *Advanced*.

    Returns:
        The *Advanced* container (``stage_widget.advanced``; its ``collapsible`` is the
        superqt ``QCollapsible`` holding it).
    """
    from superqt import QCollapsible

    stage_widget.form.extend(main)
    box = Container(labels=True, widgets=advanced)
    collapsible = QCollapsible(ADVANCED, expandedIcon="▼", collapsedIcon="▶")
    collapsible.addWidget(box.native)
    collapsible.collapse(animate=False)
    acts = Container(labels=True, widgets=actions)
    layout = stage_widget._layout
    at = layout.indexOf(stage_widget.form.native) + 1
    layout.insertWidget(at, collapsible)
    layout.insertWidget(at + 1, acts.native)
    stage_widget.advanced, stage_widget.actions = box, acts
    box.collapsible = collapsible
    return box


def hold_fields(fields: list[Any], busy: bool) -> None:
    """Disable the bound fields (``_run_config.Field``) while a job runs, enable them after.

    Args:
        fields: A tab's bound fields.
        busy: Whether a training job runs.
    """
    for field in fields:
        field.widget.enabled = not busy


def _dice(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def stage_quality(name: str, result: dict[str, Any]) -> str | None:
    """The quality line of one stage's result, or None for a stage without a score.

    Args:
        name: The stage (``teacher``, ``student``; others give None).
        result: Its summary as the training process sent it (``stage_teacher``: ``val_dice``,
            None without validation images; ``stage_student``: ``val`` = ``{"dice": ...,
            "n_images": ...}``, ``{}`` without).

    Returns:
        "teacher: validation Dice 0.812" or "teacher: too few labels to validate: ...".
    """
    if name == "teacher":
        dice = _dice(result.get("val_dice"))
    elif name == "student":
        val = result.get("val")
        dice = _dice(val.get("dice")) if isinstance(val, dict) else None
        n = val.get("n_images") if isinstance(val, dict) else None
        if dice is not None and isinstance(n, int):
            return f"{name}: validation Dice {dice:.3f} on {n} image(s)"
    else:
        return None
    return f"{name}: validation Dice {dice:.3f}" if dice is not None else f"{name}: {NO_VALIDATION}"


def quality_text(results: dict[str, Any]) -> str:
    """The quality a finished job reached: one line per scored stage, "; "-joined.

    Args:
        results: ``Job.results``: stage name -> summary, or ``{"pipeline": {stage: summary}}``
            for a whole-pipeline job.

    Returns:
        E.g. "teacher: validation Dice 0.812; student: validation Dice 0.790 on 2 image(s)";
        "" when no stage of the job is scored.
    """
    stages = results.get("pipeline", results)
    if not isinstance(stages, dict):
        return ""
    lines = [stage_quality(name, r) for name, r in stages.items() if isinstance(r, dict)]
    return "; ".join(line for line in lines if line)
