"""New packaged teacher weights adapt anew; runs of the first ones keep their fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tskd.config import RunConfig
from tskd.pipeline import fingerprints
from tskd.pipeline.markers import fingerprint


def test_the_first_packaged_weights_keep_the_fingerprints_of_earlier_versions() -> None:
    cfg = RunConfig()
    # the values earlier versions computed: "builtin" in place of the weights' content
    assert fingerprints.base_teacher_id(cfg) == fingerprint("base", "mini", "builtin",
                                                            cfg.teacher.input_size)
    assert fingerprints.teacher_fp(cfg, "data") == fingerprint(
        "teacher", fingerprints._settings_fp(cfg.teacher), "data")


def test_other_packaged_weights_change_the_teacher_and_its_cache_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.models import mini_sam

    cfg = RunConfig()
    first = (fingerprints.base_teacher_id(cfg), fingerprints.teacher_fp(cfg, "data"))
    other = tmp_path / "mini_sam.safetensors"
    other.write_bytes(b"the weights of a later version")
    monkeypatch.setattr(mini_sam, "BUILTIN_WEIGHTS", other)
    later = (fingerprints.base_teacher_id(cfg), fingerprints.teacher_fp(cfg, "data"))
    assert later[0] != first[0] and later[1] != first[1]
    other.write_bytes(b"and those of the version after")  # another size: read anew
    assert fingerprints.teacher_fp(cfg, "data") not in (first[1], later[1])


def test_a_given_checkpoint_keeps_its_path_based_teacher_fingerprint(tmp_path: Path) -> None:
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"weights")
    cfg = RunConfig()
    cfg.teacher.checkpoint = str(ckpt)
    assert fingerprints.teacher_fp(cfg, "data") == fingerprint(
        "teacher", fingerprints._settings_fp(cfg.teacher), "data")
