"""The backend must never pull in Qt or napari: it runs on headless GPU servers."""

import subprocess
import sys
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[1] / "src" / "tskd"
MODULES = sorted(  # every module of every subpackage: tskd.data.axes, tskd.models.student, ...
    ".".join(p.relative_to(BACKEND).with_suffix("").parts).removesuffix(".__init__")
    for p in BACKEND.rglob("*.py") if p.name != "__main__.py" and p != BACKEND / "__init__.py"
)
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {m.split(".")[0] for m in out.split()}


def test_import_tskd_pulls_no_gui_and_no_torch() -> None:
    mods = _imported_after("import tskd")
    assert not mods & set(FORBIDDEN)
    assert "torch" not in mods  # import tskd stays cheap


@pytest.mark.parametrize("module", MODULES)
def test_backend_module_pulls_no_gui(module: str) -> None:
    mods = _imported_after(f"import tskd.{module}")
    assert not mods & set(FORBIDDEN), f"tskd.{module} imports {mods & set(FORBIDDEN)}"
