"""Plugin settings remembered across napari restarts (a small JSON in the user config dir).

Only folders and defaults live here, never anything about a particular run: a run's whole truth
is its run folder (``config.yaml`` and the stage artefacts), which the CLI reads as well.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# override of the settings folder (tests, portable set-ups)
ENV_CONFIG_DIR = "NAPARI_TSKD_CONFIG_DIR"


def config_dir() -> Path:
    """Folder of ``settings.json``: the user config dir, or ``$NAPARI_TSKD_CONFIG_DIR``."""
    override = os.environ.get(ENV_CONFIG_DIR)
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-tskd", appauthor=False))


def _default_output_dir() -> str:
    return str(Path.home() / "tskd-runs")


def _default_cache_dir() -> str:
    from platformdirs import user_cache_dir

    return user_cache_dir("napari-tskd", appauthor=False)


@dataclass
class Settings:
    """What the Settings widget edits; every field has a usable default."""

    output_dir: str = ""  # where new run folders go
    cache_dir: str = ""  # downloaded SAM checkpoints and other caches
    run_dir: str = ""  # the run folder used last (the widgets open it again)
    device: str = "auto"  # default device of training and segmentation

    def __post_init__(self) -> None:
        self.output_dir = self.output_dir or _default_output_dir()
        self.cache_dir = self.cache_dir or _default_cache_dir()
        self.run_dir = self.run_dir or str(Path(self.output_dir) / "run1")


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> Settings:
    """Read the settings; a missing or damaged file gives the defaults (never an error)."""
    path = settings_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return Settings()
    if not isinstance(data, dict):
        return Settings()
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: str(v) for k, v in data.items() if k in known and v is not None})


def save_settings(settings: Settings) -> Path:
    """Write the settings atomically (a crash mid-write keeps the old file)."""
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=1))
    tmp.replace(path)
    return path
