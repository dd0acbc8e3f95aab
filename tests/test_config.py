"""Configuration: YAML round trip and clear errors for typos and wrong types."""

from pathlib import Path

import pytest

from tskd.config import RunConfig, from_dict, load_config, save_config
from tskd.errors import TskdInputError


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig(run_dir="x")
    cfg.teacher.lora.rank = 8
    cfg.distill.task_agnostic = True
    save_config(cfg, tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml")
    assert back == cfg


def test_partial_yaml_takes_defaults(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("teacher:\n  input_size: 128\n  train:\n    lr: 1\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.teacher.input_size == 128
    assert cfg.teacher.train.lr == 1.0 and isinstance(cfg.teacher.train.lr, float)
    assert cfg.student.embed_dim == 192


def test_unknown_key_is_named() -> None:
    with pytest.raises(TskdInputError, match=r"teacher\.lora\.rnak"):
        from_dict(RunConfig, {"teacher": {"lora": {"rnak": 3}}})


def test_wrong_type_is_named() -> None:
    with pytest.raises(TskdInputError, match=r"student\.train\.epochs"):
        from_dict(RunConfig, {"student": {"train": {"epochs": "many"}}})
    with pytest.raises(TskdInputError, match="feature_loss"):
        from_dict(RunConfig, {"distill": {"feature_loss": "l3"}})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(TskdInputError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(TskdInputError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
