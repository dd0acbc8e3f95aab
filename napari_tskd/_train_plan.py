"""The Data tab's *Train* line: the preset for this machine, a rough time estimate from the
run's config as the tabs show it, and the quality the last training reached.

The estimate counts the optimiser steps each stage will run (the engine's rule: ``epochs``
times the batches of an epoch, capped by ``max_steps``) and multiplies them by rough seconds per
image and step on two CPU cores, scaled by the number of pixels; a GPU divides them by
``GPU_SPEEDUP``. It is a rough guide ("about 12 min"), not a promise; the progress line's own
estimate, from the measured speed, replaces it once training runs.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from napari_tskd._base import wrapped_label
from napari_tskd._forms import quality_text

# rough seconds per image per optimiser step at 256x256 px on two CPU cores: fine-tuning the
# student measured 0.51 steps/s at batch 4 (docs/user-guide.md, "Responsiveness"): 0.5 s; the
# teacher by model size (a vit_b forward pass at 256 px alone takes 0.57 s,
# benchmarks/inference_speed.py); distillation runs the teacher and the student
SECONDS_PER_IMAGE = {"distill": 0.6, "student": 0.5, "synthesize": 0.02}
TEACHER_SECONDS_PER_IMAGE = {"mini": 0.3, "vit_b": 2.0, "vit_l": 5.0, "vit_h": 10.0}
GPU_SPEEDUP = 20.0
TITLES = {"teacher": "teacher", "synthesize": "transfer set", "distill": "distillation",
          "student": "fine-tuning"}


def _loader_steps(n: int, batch: int) -> int:
    """Batches per epoch as the engine's loader makes them (drop_last with >= 2 batches)."""
    if n <= 0:
        return 0
    return n // batch if n >= 2 * batch else math.ceil(n / batch)


def _stage_steps(train: Any, n: int) -> int:
    total = train.epochs * _loader_steps(n, train.batch_size)
    return min(total, train.max_steps) if train.max_steps else total


def estimate_seconds(cfg: Any, n_train: int, n_unlabelled: int) -> dict[str, float]:
    """Rough training seconds of each stage the pipeline runs with ``cfg``.

    Args:
        cfg: The ``RunConfig`` the job would run with.
        n_train: Labelled training images (without the validation images).
        n_unlabelled: Unlabelled images (they join the transfer set).

    Returns:
        ``{"teacher": s, "synthesize": s, "distill": s, "student": s}`` (``synthesize`` absent
        when ``synth.enabled`` is False), seconds >= 0.
    """
    from tskd.config import SYNTH_EPOCH_STEPS

    gpu = str(cfg.device).startswith(("cuda", "mps"))
    scale = (1.0 / GPU_SPEEDUP) if gpu else 1.0
    t, d, s = cfg.teacher, cfg.distill, cfg.student
    teacher_px = (t.input_size / 256) ** 2
    student_px = (cfg.data.image_size / 256) ** 2
    n_transfer = n_train + n_unlabelled + (cfg.synth.n_images if cfg.synth.enabled else 0)
    out = {
        "teacher": _stage_steps(t.train, n_train) * t.train.batch_size * teacher_px
        * TEACHER_SECONDS_PER_IMAGE.get(t.model_type, 2.0),
        "distill": _stage_steps(d.train, n_transfer) * d.train.batch_size * student_px
        * SECONDS_PER_IMAGE["distill"],
        "student": _stage_steps(s.train, n_train) * s.train.batch_size * student_px
        * SECONDS_PER_IMAGE["student"],
    }
    if s.from_scratch:
        out.pop("distill")
    if cfg.synth.enabled:
        syn = cfg.synth
        steps = syn.train.total_steps(SYNTH_EPOCH_STEPS)
        px = (syn.resolution / 64) ** 2
        out["synthesize"] = (steps * syn.train.batch_size + syn.n_images * syn.sample_steps) * px \
            * SECONDS_PER_IMAGE["synthesize"]
    return {k: v * scale for k, v in out.items()}


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return "under 1 min"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def describe_estimate(parts: dict[str, float], device: str) -> str:
    """'Estimate: about 12 min on the CPU (teacher about 5 min, ...)'.

    Args:
        parts: ``estimate_seconds``'s result.
        device: The run's device (``RunConfig.device``).
    """
    where = "on the CPU" if not str(device).startswith(("cuda", "mps")) else f"on {device}"
    if device == "auto":
        where = "on the CPU (faster on a GPU)"
    inner = ", ".join(f"{TITLES[k]} {_minutes(v)}" for k, v in parts.items())
    return f"Estimate: {_minutes(sum(parts.values()))} {where} ({inner}; rough)"


def machine_preset(device: str, allow_import: bool) -> Any:
    """The teacher preset for this machine (``_presets.pick``), or None when finding the free
    GPU memory would import torch here and ``allow_import`` is False.

    Args:
        device: The run's device (``auto``, ``cpu``, ``cuda``, ...).
        allow_import: Whether torch may be imported now (a button was pressed).
    """
    from napari_tskd._presets import free_memory, pick

    if device == "cpu":  # no torch needed: the CPU preset depends on free RAM only
        import psutil

        return pick("cpu", psutil.virtual_memory().available / 2**30)
    if "torch" not in sys.modules and not allow_import:
        return None
    kind, free_gb = free_memory(device)
    return pick(kind, free_gb)


PRESET_KEYS = {"teacher.model_type": "model_type", "teacher.input_size": "input_size",
               "teacher.train.batch_size": "batch_size"}


class TrainPlan:
    """The lines below the Data tab's *Train* button (``attach``)."""

    def __init__(self, data_widget: Any) -> None:
        self.widget = data_widget
        self.context = data_widget.context
        self.estimate = wrapped_label("")
        self.quality = wrapped_label("")
        form = data_widget.form
        at = form.index(data_widget.run_all_button) + 1
        form.insert(at, self.estimate)
        form.insert(at + 1, self.quality)
        self._counts: tuple[int, int] | None = None
        self.context.edits.on_change(self.refresh)
        # the Data tab calls ``data_changed`` with its summary (a Label emits no ``changed``)
        # no runner.finished connection: this plain object would outlive its labels when the
        # dock closes; the Data tab's job panel (a QObject Qt disconnects) calls ``finished``
        self.data_changed()

    def pending_preset(self, allow_import: bool) -> Any:
        """The preset *Train* will put into the run's config, or None.

        Only while the teacher is still the default one: no teacher trained in this run, no
        checkpoint chosen, and model, input size and batch size neither changed in the tabs
        nor in ``config.yaml``.

        Args:
            allow_import: Whether torch may be imported to read the free GPU memory (a button
                was pressed); else None when that would be needed.
        """
        from tskd.config import TeacherConfig

        if any(self.context.edits.edited(key) for key in PRESET_KEYS):
            return None
        cfg, d = self.context.config(), TeacherConfig()
        t = cfg.teacher
        if t.checkpoint or (t.model_type, t.input_size, t.train.batch_size) != (
                d.model_type, d.input_size, d.train.batch_size):
            return None
        if (self.context.paths().teacher / "meta.json").is_file():
            return None
        return machine_preset(cfg.device, allow_import)

    def apply_preset(self) -> str | None:
        """Put ``pending_preset`` into the run's config (the Teacher tab shows it).

        Returns:
            The preset's name, or None when nothing changed.
        """
        preset = self.pending_preset(allow_import=True)
        if preset is None:
            return None
        for key, attr in PRESET_KEYS.items():
            self.context.edits.put(key, getattr(preset, attr))
        return str(preset.name)

    def counts(self) -> tuple[int, int] | None:
        """(training images, unlabelled images) of what the Data tab shows, or None."""
        from napari_tskd import _layers
        from napari_tskd._data_widget import folder_count
        from tskd.config import validation_count

        w = self.widget
        if w.source.value == "folder":
            if not w.labelled_folder.value:
                return None
            n = folder_count(w.labelled_folder.value)
        elif w.image.value is None or w.labels.value is None:
            return None
        else:
            n, _classes = _layers.labelled_summary(w.image.value, w.labels.value)
        return n - validation_count(n, float(w.val_fraction.value)), w.unlabelled_count()

    def data_changed(self, *_: Any) -> None:
        """Count the chosen data again and refresh the estimate (the Data tab's data changed).

        Args:
            *_: A signal's value (ignored).
        """
        try:
            self._counts = self.counts()
        except Exception:  # the summary line says what is wrong with the data
            self._counts = None
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Recompute the estimate from the config as the tabs show it now."""
        counts = self._counts
        try:
            cfg = self.context.config()
        except Exception:  # the estimate is informative only; Train reports real errors
            self.estimate.value = ""
            return
        try:
            preset = self.pending_preset(allow_import=False)
        except Exception:  # no torch, no psutil: Train reports it
            preset = None
        note = f"Preset for this machine: {preset.name}. " if preset else ""
        if preset:  # what Train will run with
            cfg.teacher.model_type, cfg.teacher.input_size = preset.model_type, preset.input_size
            cfg.teacher.train.batch_size = preset.batch_size
        if counts is None:
            self.estimate.value = f"{note}Estimate: shown once the labelled data is chosen"
            return
        parts = estimate_seconds(cfg, *counts)
        self.estimate.value = note + describe_estimate(parts, cfg.device)

    def finished(self, job: Any) -> None:
        """Show the quality a finished *Train* job reached (also in a Data tab opened again
        while it ran: the job panel calls this for every job of a Data tab).

        Args:
            job: The ended ``Job``; nothing changes unless its status is "done".
        """
        if job.status != "done":
            return
        text = quality_text(job.results)
        self.quality.value = f"Quality reached: {text}" if text else ""
