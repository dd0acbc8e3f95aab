"""Import a benchmarks/ script as a module, for tests of its pure functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, module_name: str | None = None) -> ModuleType:
    """``benchmarks/<name>.py``, imported (its ``main`` is not run).

    Args:
        name: The script's file name without ``.py``.
        module_name: The name to import it under; default ``name``.

    Returns:
        The module.
    """
    spec = importlib.util.spec_from_file_location(module_name or name,
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
