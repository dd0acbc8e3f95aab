"""Settings widget: output and cache folders and the default device, kept across restarts."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, FileEdit, PushButton

from napari_tskd import _notify
from napari_tskd._base import DEVICES, StageWidget, wrapped_label
from napari_tskd._settings import settings_path


class SettingsWidget(StageWidget):
    """Edits ``settings.json`` in the user config dir (see ``_settings.py``)."""

    has_jobs = False

    def __init__(self, napari_viewer: Any = None, context: Any = None) -> None:
        super().__init__(napari_viewer, context)
        s = self.context.settings
        self.output_dir = FileEdit(label="Output folder", mode="d", value=s.output_dir,
                                   tooltip="new run folders are created here")
        self.cache_dir = FileEdit(label="Cache folder", mode="d", value=s.cache_dir,
                                  tooltip="downloaded SAM checkpoints")
        self.device = ComboBox(label="Default device", choices=DEVICES,
                               value=s.device if s.device in DEVICES else "auto")
        self.new_run_button = PushButton(text="New run folder")
        self.save_button = PushButton(text="Save")
        self.where = wrapped_label(f"stored in {settings_path()}")
        self.form.extend([self.output_dir, self.cache_dir, self.device, self.new_run_button,
                          self.save_button, self.where])
        self.save_button.changed.connect(self.save)
        self.new_run_button.changed.connect(self.new_run)

    def save(self, *_: Any) -> None:
        self.context.update_settings(
            output_dir=str(self.output_dir.value), cache_dir=str(self.cache_dir.value),
            device=self.device.value,
        )
        self.where.value = f"saved to {settings_path()}"

    def new_run(self, *_: Any) -> None:
        """Open the first unused ``runN`` folder under the output folder."""
        from pathlib import Path

        self.save()
        root = Path(self.context.settings.output_dir).expanduser()
        n = 1
        while (root / f"run{n}").exists():
            n += 1
        self.context.set_run_dir(root / f"run{n}")
        _notify.info(f"new run folder: {root / f'run{n}'} (choose its data in the Data tab)")
