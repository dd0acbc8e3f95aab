"""Teacher widget: adapt SAM to the task with LoRA (stage 1), in a separate process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, FileEdit, LineEdit, PushButton, SpinBox

from napari_tskd import _notify
from napari_tskd._base import DEVICES, StageWidget, budget, parse_float, steps_box, wrapped_label
from napari_tskd._forms import hold_fields, layout_form, stage_quality
from napari_tskd._run_config import Field, set_device
from tskd.pipeline.registry import stage

STAGE = stage("teacher")  # tskd.pipeline.registry: its name, title and folders
MODEL_TYPES = ["mini", "vit_b", "vit_l", "vit_h"]


class TeacherWidget(StageWidget):
    """Checkpoint, model type, input size, LoRA, budget, device; a preset from free memory."""

    stages = ("teacher",)

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        from tskd.config import LoraSettings, TeacherConfig

        d = TeacherConfig()
        self.model_type = ComboBox(label="SAM model", choices=MODEL_TYPES, value=d.model_type)
        self.checkpoint = FileEdit(
            label="Checkpoint", mode="r", filter="*.pth *.safetensors", nullable=True,
            tooltip="official SAM .pth/.safetensors; empty: built-in mini SAM or a download",
        )
        self.input_size = SpinBox(label="Input size", min=64, max=1024, step=16,
                                  value=d.input_size)
        self.lora_rank = SpinBox(label="LoRA rank", min=1, max=256, value=d.lora.rank)
        self.lora_targets = LineEdit(
            label="LoRA targets", value="; ".join(LoraSettings().targets),
            tooltip="regexes over module names, separated by ';'",
        )
        self.epochs = SpinBox(label="Epochs", min=1, max=10000, value=d.train.epochs)
        self.max_steps = steps_box("Max steps")
        self.batch_size = SpinBox(label="Batch size", min=1, max=256, value=d.train.batch_size)
        self.lr = LineEdit(label="Learning rate", value=f"{d.train.lr:g}")
        self.device = ComboBox(label="Device", choices=DEVICES, value=self.context.settings.device)
        self.preset_button = PushButton(text="Pick for this machine")
        self.preset_info = wrapped_label("")
        self.train_button = PushButton(text="Train teacher")
        self.result = wrapped_label("")
        layout_form(
            self,
            [self.model_type, self.checkpoint, self.input_size, self.epochs, self.max_steps,
             self.device, self.preset_button, self.preset_info],
            [self.lora_rank, self.lora_targets, self.batch_size, self.lr],
            [self.train_button, self.result],
        )
        self.bound = self.fields()
        self.context.edits.bind(self.bound, owner=self)
        hold_fields(self.bound, self.context.runner.running)  # a job already runs
        self.preset_button.changed.connect(self.apply_preset)
        self.train_button.changed.connect(self.run)
        self.load_from_run()

    def job_buttons(self) -> list[Any]:
        return [self.train_button]

    def fields(self) -> list[Field]:
        """This form's fields and the settings of the run's config they edit."""
        w = self
        return [
            Field("teacher.model_type", w.model_type),
            Field("teacher.checkpoint", w.checkpoint, _checkpoint),
            Field("teacher.input_size", w.input_size, int),
            Field("teacher.lora.rank", w.lora_rank, int, _set_rank),
            Field("teacher.lora.targets", w.lora_targets, _targets),
            Field("teacher.train.epochs", w.epochs, int),
            Field("teacher.train.max_steps", w.max_steps, budget),
            Field("teacher.train.batch_size", w.batch_size, int),
            Field("teacher.train.lr", w.lr,
                  lambda v: parse_float(v, "learning rate", 0.0, 1.0)),
            Field("device", w.device, str, set_device),
        ]

    def on_run_dir_changed(self) -> None:
        if hasattr(self, "train_button"):
            self.load_from_run()

    def load_from_run(self) -> None:
        """Show the teacher settings of the open run (its config.yaml), if any."""
        try:
            cfg = self.context.config()
        except Exception:  # an unreadable config is reported when a stage starts
            return
        with self.context.edits.loading():
            self._show(cfg)

    def _show(self, cfg: Any) -> None:
        t = cfg.teacher
        self.model_type.value = t.model_type if t.model_type in MODEL_TYPES else "mini"
        self.checkpoint.value = t.checkpoint
        self.input_size.value = t.input_size
        self.lora_rank.value = t.lora.rank
        self.lora_targets.value = "; ".join(t.lora.targets)
        self.epochs.value = t.train.epochs
        self.max_steps.value = t.train.max_steps or 0
        self.batch_size.value = t.train.batch_size
        self.lr.value = f"{t.train.lr:g}"
        if cfg.device_of("teacher") in DEVICES:
            self.device.value = cfg.device_of("teacher")

    def apply_preset(self, *_: Any) -> None:
        """Choose model type, input size and batch size from the free memory of the device."""
        from napari_tskd._presets import free_memory, pick

        kind, free_gb = free_memory(self.device.value)
        preset = pick(kind, free_gb)
        self.model_type.value = preset.model_type
        self.input_size.value = preset.input_size
        self.batch_size.value = preset.batch_size
        self.preset_info.value = f"{kind}, {free_gb:.1f} GB free: {preset.name}"

    def build_config(self) -> Any:
        """The run's config as the tabs show it (may raise TskdError for a field's value)."""
        self.context.edits.check()
        return self.context.config()

    def run(self, *_: Any) -> None:
        from tskd.errors import TskdError

        try:
            cfg = self.build_config()
        except TskdError as exc:
            _notify.user_error(exc)
            return
        self.result.value = ""
        self.start(STAGE.title, [{"target": STAGE.name}], cfg)

    def show_results(self, states: list[Any]) -> None:
        """The teacher's validation Dice as its ``stage.json`` records it ("" when not trained).

        Args:
            states: ``StageState`` of ("teacher",).
        """
        done = states[0].done if states else False
        self.result.value = (stage_quality(STAGE.name, states[0].result) or "") if done else ""

    def on_job_finished(self, job: Any) -> None:
        result = job.results.get(STAGE.name)
        if job.status == "done" and result:
            self.result.value = stage_quality(STAGE.name, result) or ""


def _checkpoint(value: Any) -> str | None:
    """The Checkpoint field: None (built-in mini SAM or a download) or an existing file."""
    from tskd.errors import TskdInputError

    if not value or str(value) in ("", "."):
        return None
    if not Path(value).is_file():
        raise TskdInputError(f"teacher checkpoint not found: {value}; choose the SAM .pth or "
                             ".safetensors file in the Teacher tab, or clear Checkpoint")
    return str(value)


def _targets(text: str) -> list[str]:
    """The LoRA targets field: module names or safe patterns, separated by ';'."""
    from tskd.errors import TskdInputError
    from tskd.lora_targets import check_targets

    targets = [s.strip() for s in str(text).split(";") if s.strip()]
    if not targets:
        raise TskdInputError("LoRA targets are empty; give at least one module name or pattern "
                             "(Teacher tab > Advanced)")
    check_targets(targets, "LoRA targets")  # names or safe patterns, refused in one line
    return targets


def _set_rank(cfg: Any, rank: int) -> None:
    """Set the LoRA rank, keeping the run's alpha/rank scaling."""
    lora = cfg.teacher.lora
    ratio = lora.alpha / lora.rank if lora.rank else 1.0
    lora.rank, lora.alpha = rank, ratio * rank
