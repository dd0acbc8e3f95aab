"""Repeatable CPU runs: every training stage, run twice with one seed, gives identical weights.

Both runs happen in one process, one after the other, so the second starts from whatever state
the first left the global random streams in: only seeding before every random initialisation
(LoRA and class heads, diffusion UNet, student, distillation projections, pretraining) makes
them equal. A third run with another seed must differ, or the comparison could never fail.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_setup import tiny_config, write_tiny_sam, write_tiny_task
from tskd.config import RunConfig, from_dict
from tskd.models.mini_sam import MiniSamConfig
from tskd.pipeline import run_folder, stages
from tskd.training import pretrain
from tskd.training.pretrain_config import PretrainConfig

ARTEFACTS = {
    "teacher": "teacher/adapter.safetensors",
    "synthesize": "transfer/diffusion/unet.safetensors",
    "distill": "distilled/model.safetensors",
    "student": "student/model.safetensors",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _same(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return all(torch.equal(x[k], y[k]) for k in x)


def _cfg(root: Path, run: str, seed: int = 0) -> RunConfig:
    d = tiny_config(root / "data", root / "sam.safetensors", root / run)
    for section in ("teacher", "distill", "student"):
        d[section]["train"] = d[section]["train"] | {"seed": seed, "epochs": 2}
    d["synth"]["train"] = d["synth"]["train"] | {"seed": seed}
    return from_dict(RunConfig, d)


def _run_all(cfg: RunConfig) -> None:
    run_folder.prepare_run_dir(cfg)
    stages.stage_teacher(cfg)
    stages.stage_synthesize(cfg)
    stages.stage_distill(cfg)
    stages.stage_finetune_student(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    write_tiny_task(root / "data")
    write_tiny_sam(root / "sam.safetensors")
    torch.manual_seed(1234)  # whatever state the caller left: the stages must not depend on it
    _run_all(_cfg(root, "a"))
    torch.rand(7)  # the second run starts from other global random states
    _run_all(_cfg(root, "b"))
    return root


@pytest.mark.parametrize("stage", list(ARTEFACTS))
def test_each_stage_twice_with_one_seed_gives_identical_weights(runs: Path, stage: str) -> None:
    a, b = runs / "a" / ARTEFACTS[stage], runs / "b" / ARTEFACTS[stage]
    assert _same(a, b), f"{stage}: two runs with seed 0 differ"


def _seed_only(section: str, cfg: RunConfig, seed: int) -> None:
    getattr(cfg, "synth" if section == "synthesize" else section).train.seed = seed


@pytest.mark.parametrize("stage", list(ARTEFACTS))
def test_another_seed_for_one_stage_changes_its_weights(runs: Path, stage: str,
                                                        tmp_path: Path) -> None:
    """Only this stage's seed differs (the upstream artefacts are run a's): its weights differ."""
    run = tmp_path / "c"
    shutil.copytree(runs / "a", run)
    cfg = _cfg(runs, "a")
    cfg.run_dir = str(run)
    _seed_only(stage, cfg, 1)
    stage_fn = {"teacher": stages.stage_teacher, "synthesize": stages.stage_synthesize,
                "distill": stages.stage_distill, "student": stages.stage_finetune_student}
    result = stage_fn[stage](cfg)
    assert not result.get("skipped")
    assert not _same(runs / "a" / ARTEFACTS[stage], run / ARTEFACTS[stage])


def _pretrain_cfg(seed: int) -> PretrainConfig:
    cfg = PretrainConfig(masks_per_image=1, image_size=64, steps_per_checkpoint=2)
    cfg.train = replace(cfg.train, epochs=2, batch_size=2, lr=2e-3, seed=seed, device="cpu")
    return cfg  # 4 steps


def test_pretrain_mini_twice_with_one_seed_gives_identical_weights(tmp_path: Path) -> None:
    torch.manual_seed(99)
    pretrain.pretrain_mini(_pretrain_cfg(0), tmp_path / "a", arch=MiniSamConfig.tiny())
    torch.rand(5)
    pretrain.pretrain_mini(_pretrain_cfg(0), tmp_path / "b", arch=MiniSamConfig.tiny())
    pretrain.pretrain_mini(_pretrain_cfg(1), tmp_path / "c", arch=MiniSamConfig.tiny())
    weights = "mini_sam.safetensors"
    assert _same(tmp_path / "a" / weights, tmp_path / "b" / weights)
    assert not _same(tmp_path / "a" / weights, tmp_path / "c" / weights)
    info = json.loads((tmp_path / "a" / "mini_sam.json").read_text())["info"]
    assert info["seed"] == 0
