"""Settings on several processes: fingerprints of the global batch, refusals naming the setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tskd.config import RunConfig, SynthConfig


def _synth(batch_size: int, accum: int = 1) -> SynthConfig:
    cfg = SynthConfig()
    cfg.train = replace(cfg.train, batch_size=batch_size, grad_accum_steps=accum)
    return cfg


def test_transfer_set_fingerprint_counts_the_global_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.pipeline.fingerprints import synth_settings
    from tskd.pipeline.markers import fingerprint
    from tskd.training.synthesize import _model_fingerprint

    def fps(cfg: SynthConfig) -> tuple[str, dict]:
        return fingerprint("x", synth_settings(cfg)), _model_fingerprint(cfg, "d")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # one process without accumulation: the values of earlier versions
    alone = fps(_synth(16))
    assert alone[0] == "4240c69469c42a1a"
    assert alone[1] == {"resolution": 64, "base_channels": 32, "train_steps": 300,
                        "batch_size": 16, "lr": 0.0002, "ema_decay": 0.995, "seed": 0,
                        "data": "d"}
    half = fps(_synth(8))
    assert half[0] != alone[0]
    assert fps(_synth(8, accum=2)) == alone  # 8 x 2 accumulated = 16
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert fps(_synth(8)) == alone  # 8 x 2 processes = 16: the same transfer set
    assert fps(_synth(16))[0] not in (alone[0], half[0])  # 32 images per step: another one


def test_settings_fingerprints_keep_the_global_batch_of_every_stage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.pipeline.fingerprints import _settings_fp

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = RunConfig()
    sections = (cfg.teacher, cfg.distill, cfg.student)
    for section in sections:
        section.train.batch_size = 2
    two = [_settings_fp(s) for s in sections]
    monkeypatch.setenv("WORLD_SIZE", "1")
    for section in sections:
        section.train.batch_size = 4
    assert [_settings_fp(s) for s in sections] == two
