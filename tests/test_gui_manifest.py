"""The npe2 manifest: valid, every command imports, and napari start-up pays for no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(ROOT / "napari.yaml")


def test_manifest_is_valid_and_shipped_in_the_package() -> None:
    mf = _manifest()
    assert mf.name == "napari-tskd"
    link = ROOT / "napari_tskd" / "napari.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "napari.yaml").resolve()
    widgets = {w.display_name for w in mf.contributions.widgets}
    assert {"TS-KD", "1 Data", "2 Teacher", "3 Transfer set", "5 Segment"} <= widgets
    assert {s.key for s in mf.contributions.sample_data} == {
        "kidney_us", "skin_lesion", "retina_vessels", "ct_abdomen"}


@pytest.mark.parametrize("command", [c.id for c in _manifest().contributions.commands])
def test_every_command_imports(command: str) -> None:
    cmd = next(c for c in _manifest().contributions.commands if c.id == command)
    module, _, name = cmd.python_name.partition(":")
    assert callable(getattr(importlib.import_module(module), name))


def test_installed_plugin_is_discovered_by_npe2() -> None:
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "napari-tskd" in {m.name for m in pm.iter_manifests()}


def test_widget_modules_import_no_torch() -> None:
    """Opening napari (and even importing a widget) must not pay for torch."""
    mods = [f"napari_tskd.{m}" for m in ("_main_widget", "_sample_data", "_jobs", "_child")]
    code = "import sys, " + ", ".join(mods) + "\nprint('torch' in sys.modules, 'timm' in " \
           "sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["False", "False"]
