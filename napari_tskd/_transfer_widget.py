"""Transfer-set widget: train the small diffusion model and sample synthetic images (stage 2);
shows them as an image-stack layer and the share of near-copies dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton, SpinBox

from napari_tskd import _layers, _notify, _own_layers
from napari_tskd._base import DEVICES, StageWidget, wrapped_label
from napari_tskd._forms import hold_fields, layout_form
from napari_tskd._run_config import Field, set_device
from tskd.config import SYNTH_EPOCH_STEPS
from tskd.pipeline.registry import stage

STAGE = stage("synthesize")  # tskd.pipeline.registry: its name, title and folders
LAYER_NAME = _own_layers.SYNTHETIC


class TransferWidget(StageWidget):
    """Number of synthetic images and the diffusion budget; the result as a layer."""

    stages = ("synthesize",)

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        from tskd.config import SynthConfig

        d = SynthConfig()
        self.enabled = CheckBox(text="synthesise images (else: real images only)", value=True)
        self.n_images = SpinBox(label="Synthetic images", min=0, max=100_000, value=d.n_images)
        self.train_steps = SpinBox(label="Diffusion budget (steps)", min=1, max=10_000_000,
                                   value=d.train.total_steps(SYNTH_EPOCH_STEPS))
        self.resolution = ComboBox(label="Diffusion resolution", choices=[32, 64, 128, 256],
                                   value=d.resolution)
        self.sample_steps = SpinBox(label="Sampling steps (DDIM)", min=1, max=1000,
                                    value=d.sample_steps)
        self.near_copy = FloatSpinBox(label="Near-copy threshold", min=0.0, max=2.0, step=0.01,
                                      value=d.near_copy_threshold)
        self.device = ComboBox(label="Device", choices=DEVICES, value=self.context.settings.device)
        self.run_button = PushButton(text="Build transfer set")
        self.show_button = PushButton(text="Show synthetic images")
        self.result = wrapped_label("")
        layout_form(
            self, [self.enabled, self.n_images, self.train_steps, self.device],
            [self.resolution, self.sample_steps, self.near_copy],
            [self.run_button, self.show_button, self.result],
        )
        self.bound = self.fields()
        self.context.edits.bind(self.bound, owner=self)
        hold_fields(self.bound, self.context.runner.running)  # a job already runs
        self.run_button.changed.connect(self.run)
        self.show_button.changed.connect(self.show_images)
        self.load_from_run()

    def job_buttons(self) -> list[Any]:
        return [self.run_button]

    def fields(self) -> list[Field]:
        """This form's fields and the settings of the run's config they edit."""
        return [
            Field("synth.enabled", self.enabled, bool),
            Field("synth.n_images", self.n_images, int),
            Field("synth.train", self.train_steps, int,
                  lambda cfg, n: cfg.synth.train.set_steps(n, SYNTH_EPOCH_STEPS)),
            Field("synth.resolution", self.resolution, int),
            Field("synth.sample_steps", self.sample_steps, int),
            Field("synth.near_copy_threshold", self.near_copy, float),
            Field("device", self.device, str, set_device),
        ]

    def on_run_dir_changed(self) -> None:
        if hasattr(self, "run_button"):
            self.load_from_run()

    def load_from_run(self) -> None:
        try:
            s = self.context.config().synth
        except Exception:
            return
        with self.context.edits.loading():
            self.enabled.value = s.enabled
            self._show(s)

    def _show(self, s: Any) -> None:
        self.n_images.value = s.n_images
        self.train_steps.value = s.train.total_steps(SYNTH_EPOCH_STEPS)
        if s.resolution in self.resolution.choices:
            self.resolution.value = s.resolution
        self.sample_steps.value = s.sample_steps
        self.near_copy.value = s.near_copy_threshold

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
        """The transfer set as the run folder's ``stage.json`` records it ("" when not built).

        Args:
            states: ``StageState`` of ("synthesize",).
        """
        done = bool(states) and states[0].done
        self.result.value = describe(states[0].result) if done else ""

    def on_job_finished(self, job: Any) -> None:
        result = job.results.get(STAGE.name)
        if job.status != "done" or result is None:
            return
        self.result.value = describe(result)
        if result.get("paths"):
            self.show_images(paths=[Path(p) for p in result["paths"]])

    def show_images(self, *_: Any, paths: list[Path] | None = None) -> Any:
        """Put the synthetic images into one image-stack layer (replacing our own earlier one)."""
        from tskd.data import files

        if paths is None:
            folder = self.context.paths().synthetic
            paths = files.list_images(folder) if folder.is_dir() else []
        if not paths:
            _notify.info("no synthetic images in this run yet; build the transfer set first")
            return None
        images = [files.read_image(p) for p in paths]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:  # the backend writes one size; be tolerant of mixed folders
            images = [im for im in images if im.shape == images[0].shape]
        stack = np.stack(images)
        rgb = _layers.stack_is_rgb(stack)
        if self.viewer is None:
            return None
        return _own_layers.show_synthetic(self.viewer, stack, rgb)  # beside, never selected


def describe(result: dict[str, Any]) -> str:
    """'kept 28 of 32 synthetic images; 12.5% dropped as near-copies of training images'."""
    n_gen, n_kept = int(result.get("n_generated", 0)), int(result.get("n_kept", 0))
    share = float(result.get("share_dropped", 0.0))
    text = f"kept {n_kept} of {n_gen} synthetic images; {100 * share:.1f}% dropped as near-copies"
    return text + (" (skipped: already built)" if result.get("skipped") else "")
