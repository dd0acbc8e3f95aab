"""Shared fixtures; GUI helpers import napari lazily, so backend tests need no display."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread: tiny models run far faster when the two cores are shared, and float
    sums (so bit-for-bit comparisons) depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tskd_gui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Plugin settings in a temporary folder (never the user's), with a fresh run folder."""
    config = tmp_path / "napari-tskd-config"
    config.mkdir()
    runs = tmp_path / "runs"
    (config / "settings.json").write_text(json.dumps({
        "output_dir": str(runs), "cache_dir": str(tmp_path / "cache"),
        "run_dir": str(runs / "run1"), "device": "cpu",
    }))
    monkeypatch.setenv("NAPARI_TSKD_CONFIG_DIR", str(config))
    return runs / "run1"


class Notes:
    """The napari notifications shown since the fixture started."""

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self._manager = notification_manager
        self._start = len(notification_manager.records)

    def all(self) -> list[tuple[str, str]]:
        return [(str(n.severity), n.message) for n in self._manager.records[self._start:]]

    def errors(self) -> list[str]:
        return [m for s, m in self.all() if s.lower() == "error"]

    def infos(self) -> list[str]:
        return [m for s, m in self.all() if s.lower() == "info"]


@pytest.fixture
def notes() -> Notes:
    return Notes()
