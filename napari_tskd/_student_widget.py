"""Student widget: distil the teacher into the ViT-Tiny student (stage 3) and fine-tune it on
the labelled images (stage 4); task-specific or task-agnostic (baseline) distillation."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSpinBox,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)

from napari_tskd import _notify
from napari_tskd._base import DEVICES, StageWidget, budget, parse_float, steps_box, wrapped_label
from napari_tskd._forms import hold_fields, layout_form, stage_quality
from napari_tskd._run_config import Field, set_device
from tskd.pipeline.registry import stage

MODES = ["task-specific", "task-agnostic"]
# the student architectures a user picks from (every one can be distilled)
ARCHITECTURES = {"U-Net (MONAI BasicUNet)": "unet", "CNN (MobileNetV3 + U-Net decoder)": "conv",
                 "ViT-Tiny (the paper's)": "vit_tiny"}


class StudentWidget(StageWidget):
    """Budgets and loss weights of distillation and fine-tuning."""

    stages = ("distill", "student")

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        from tskd.config import DistillConfig, StudentConfig

        dd, ds = DistillConfig(), StudentConfig()
        self.architecture = ComboBox(
            label="Student", choices=list(ARCHITECTURES), value=_arch_label(ds.architecture),
            tooltip="U-Net: the default (width 16, 0.5 M parameters), the most accurate after "
                    "distillation at the same speed; CNN: a MobileNetV3 encoder; ViT-Tiny: the "
                    "TS-KD paper's student")
        self.mode = RadioButtons(label="Distillation", choices=MODES, value=MODES[0],
                                 orientation="horizontal",
                                 tooltip="task-agnostic: match the un-adapted SAM (baseline)")
        self.feature_weight = FloatSpinBox(label="Feature loss weight", min=0.0, max=100.0,
                                           step=0.1, value=dd.feature_weight)
        self.output_weight = FloatSpinBox(label="Output loss weight", min=0.0, max=100.0,
                                          step=0.1, value=dd.output_weight)
        self.temperature = FloatSpinBox(label="Temperature", min=0.1, max=20.0, step=0.5,
                                        value=dd.temperature)
        self.distill_epochs = SpinBox(label="Distil epochs", min=1, max=10000,
                                      value=dd.train.epochs)
        self.distill_steps = steps_box("Distil max steps")
        self.distill_lr = LineEdit(label="Distil learning rate", value=f"{dd.train.lr:g}")
        self.finetune_epochs = SpinBox(label="Fine-tune epochs", min=1, max=10000,
                                       value=ds.train.epochs)
        self.finetune_steps = steps_box("Fine-tune max steps")
        self.finetune_lr = LineEdit(label="Fine-tune learning rate", value=f"{ds.train.lr:g}")
        self.dice_weight = FloatSpinBox(label="Dice weight", min=0.0, max=1.0, step=0.05,
                                        value=ds.dice_weight)
        self.from_scratch = CheckBox(text="from scratch (baseline: no distillation)", value=False)
        self.device = ComboBox(label="Device", choices=DEVICES, value=self.context.settings.device)
        self.distill_button = PushButton(text="Distil")
        self.finetune_button = PushButton(text="Fine-tune")
        self.both_button = PushButton(text="Distil + fine-tune")
        self.result = wrapped_label("")
        layout_form(
            self,
            [self.architecture, self.distill_epochs, self.distill_steps, self.finetune_epochs,
             self.finetune_steps, self.from_scratch, self.device],
            [self.mode, self.feature_weight, self.output_weight, self.temperature,
             self.distill_lr, self.finetune_lr, self.dice_weight],
            [self.distill_button, self.finetune_button, self.both_button, self.result],
        )
        self.bound = self.fields()
        self.context.edits.bind(self.bound, owner=self)
        hold_fields(self.bound, self.context.runner.running)  # a job already runs
        self.distill_button.changed.connect(lambda *_: self.run(["distill"]))
        self.finetune_button.changed.connect(lambda *_: self.run(["student"]))
        self.both_button.changed.connect(lambda *_: self.run(["distill", "student"]))
        self.load_from_run()

    def job_buttons(self) -> list[Any]:
        return [self.distill_button, self.finetune_button, self.both_button]

    def fields(self) -> list[Field]:
        """This form's fields and the settings of the run's config they edit."""
        w = self
        return [
            Field("student.architecture", w.architecture, lambda v: ARCHITECTURES[v]),
            Field("distill.task_agnostic", w.mode, lambda v: v == MODES[1]),
            Field("distill.feature_weight", w.feature_weight, float),
            Field("distill.output_weight", w.output_weight, float),
            Field("distill.temperature", w.temperature, float),
            Field("distill.train.epochs", w.distill_epochs, int),
            Field("distill.train.max_steps", w.distill_steps, budget),
            Field("distill.train.lr", w.distill_lr,
                  lambda v: parse_float(v, "distil learning rate", 0.0, 1.0)),
            Field("student.train.epochs", w.finetune_epochs, int),
            Field("student.train.max_steps", w.finetune_steps, budget),
            Field("student.train.lr", w.finetune_lr,
                  lambda v: parse_float(v, "fine-tune learning rate", 0.0, 1.0)),
            Field("student.dice_weight", w.dice_weight, float),
            Field("student.from_scratch", w.from_scratch, bool),
            Field("device", w.device, str, set_device),
        ]

    def on_run_dir_changed(self) -> None:
        if hasattr(self, "both_button"):
            self.load_from_run()

    def load_from_run(self) -> None:
        try:
            cfg = self.context.config()
        except Exception:
            return
        with self.context.edits.loading():
            self._show(cfg)

    def _show(self, cfg: Any) -> None:
        d, s = cfg.distill, cfg.student
        self.architecture.value = _arch_label(s.architecture)
        self.mode.value = MODES[1] if d.task_agnostic else MODES[0]
        self.feature_weight.value = d.feature_weight
        self.output_weight.value = d.output_weight
        self.temperature.value = d.temperature
        self.distill_epochs.value = d.train.epochs
        self.distill_steps.value = d.train.max_steps or 0
        self.distill_lr.value = f"{d.train.lr:g}"
        self.finetune_epochs.value = s.train.epochs
        self.finetune_steps.value = s.train.max_steps or 0
        self.finetune_lr.value = f"{s.train.lr:g}"
        self.dice_weight.value = s.dice_weight
        self.from_scratch.value = s.from_scratch

    def build_config(self) -> Any:
        """The run's config as the tabs show it (may raise TskdError for a field's value)."""
        self.context.edits.check()
        return self.context.config()

    def run(self, stages: list[str]) -> None:
        from tskd.errors import TskdError

        try:
            cfg = self.build_config()
        except TskdError as exc:
            _notify.user_error(exc)
            return
        if cfg.student.from_scratch and "distill" in stages:
            stages = [s for s in stages if s != "distill"]
            if not stages:
                _notify.info("'from scratch' is ticked: there is nothing to distil; press "
                             "Fine-tune")
                return
        self.result.value = ""
        label = " + ".join(stage(s).title for s in stages)  # "Distillation + Student"
        self.start(label, [{"target": s} for s in stages], cfg)

    def on_job_finished(self, job: Any) -> None:
        if job.status == "done":
            self.result.value = _student_result(job.results.get("distill"),
                                                job.results.get("student"))

    def show_results(self, states: list[Any]) -> None:
        """Distilled / the student's validation Dice as the run folder's ``stage.json`` files
        record them ("" when neither stage ran).

        Args:
            states: ``StageState`` of ("distill", "student").
        """
        by_name = {s.name: s for s in states}
        distill, student = by_name.get("distill"), by_name.get("student")
        self.result.value = _student_result(
            distill.result or True if distill and distill.done else None,
            student.result if student and student.done else None)


def _student_result(distill: Any, student: Any) -> str:
    """'distilled; student ready; student: validation Dice 0.800 on 2 image(s)'."""
    parts = ["distilled"] if distill else []
    if isinstance(student, dict):
        parts.append(f"student ready; {stage_quality('student', student)}")
    return "; ".join(parts)


def _arch_label(architecture: str) -> str:
    """The choice shown for a configured architecture (the default's for anything else)."""
    return next((k for k, v in ARCHITECTURES.items() if v == architecture),
                next(iter(ARCHITECTURES)))
