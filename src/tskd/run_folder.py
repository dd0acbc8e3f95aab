"""The run folder: one truth shared by the CLI, the widgets and a resumed run.

Each stage writes its artefact into a sub-folder together with ``stage.json``, a fingerprint of
everything the artefact depends on (its config section, the upstream fingerprints, the input
files). A stage whose fingerprint matches is skipped; one whose inputs changed runs again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tskd import atomic
from tskd.config import RunConfig, load_config, save_config, to_dict
from tskd.errors import RunFolderError


@dataclass(frozen=True)
class RunPaths:
    """Where each stage keeps its files inside a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def transfer(self) -> Path:
        return self.root / "transfer"

    @property
    def synthetic(self) -> Path:
        return self.root / "transfer" / "synthetic"

    @property
    def diffusion(self) -> Path:
        return self.root / "transfer" / "diffusion"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def distilled(self) -> Path:
        return self.root / "distilled"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def checkpoints(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (config sections, upstream fingerprints, file hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of file names and contents: a changed or added image re-runs dependent stages."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def stage_done(folder: Path, fp: str) -> bool:
    """True when ``folder`` holds a finished stage made from the same inputs."""
    marker = folder / "stage.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fp
    except json.JSONDecodeError:
        return False


def mark_done(folder: Path, fp: str, result: dict[str, Any]) -> None:
    """Record that the stage in ``folder`` finished, with its fingerprint and result."""
    atomic.write_json(folder / "stage.json", {"fingerprint": fp, "result": result})


def read_result(folder: Path) -> dict[str, Any]:
    """The result a finished stage recorded (empty if none)."""
    marker = folder / "stage.json"
    if not marker.is_file():
        return {}
    return json.loads(marker.read_text()).get("result", {})


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a config that define *which* run a folder holds.

    Budgets, devices and seeds may change between calls on the same run (continue, resume,
    retrain); the data and the model choices may not.
    """
    d = to_dict(cfg)
    return {
        "data": {k: d["data"][k] for k in ("labelled", "image_size")},
        "teacher": {k: d["teacher"][k] for k in ("model_type", "checkpoint")},
    }


def prepare_run_dir(cfg: RunConfig, overwrite: bool = False) -> Path:
    """Create (or reuse) ``cfg.run_dir`` and write ``config.yaml``.

    Refuses a folder that holds a different run (other data or teacher), or files that are not a
    run at all, unless ``overwrite``: nothing of another run is lost by accident.
    """
    root = Path(cfg.run_dir)
    paths = RunPaths(root)
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"run folder {root} is a file")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        if not paths.config.is_file():
            raise RunFolderError(
                f"{root} is not empty and holds no run (no config.yaml); choose another run "
                "folder or pass --overwrite"
            )
        try:
            old = load_config(paths.config)
        except Exception:
            raise RunFolderError(
                f"{paths.config} cannot be read; choose another run folder or pass --overwrite"
            ) from None
        if _comparable(old) != _comparable(cfg) and _has_results(paths):
            raise RunFolderError(
                f"{root} holds a different run (other data or teacher); choose another run "
                "folder or pass --overwrite"
            )
    if overwrite and root.is_dir() and paths.config.is_file():
        old_cfg = load_config(paths.config) if _readable(paths.config) else None
        if old_cfg is None or _comparable(old_cfg) != _comparable(cfg):
            _remove_stage_outputs(paths)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    return root


def _has_results(paths: RunPaths) -> bool:
    """Whether any stage finished or left a checkpoint (a bare config.yaml is no result)."""
    return any(paths.root.glob("*/stage.json")) or any(paths.root.glob("checkpoints/*/*"))


def _readable(path: Path) -> bool:
    try:
        load_config(path)
        return True
    except Exception:
        return False


def _remove_stage_outputs(paths: RunPaths) -> None:
    """Delete what stages wrote (only the folders a run owns, never other files)."""
    import shutil

    for folder in (paths.teacher, paths.transfer, paths.cache, paths.distilled, paths.student,
                   paths.reports, paths.root / "checkpoints"):
        if folder.is_dir():
            shutil.rmtree(folder)


def write_json(path: Path, data: Any) -> None:
    """Write JSON (pretty) creating parent folders; atomic (``tskd.atomic``)."""
    atomic.write_json(path, data)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)
