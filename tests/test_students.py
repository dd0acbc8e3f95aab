"""The three student architectures: the CNN (default), the paper's ViT-Tiny and the U-Net baseline.

One contract (``build_student``): shapes, named features for distillation, a new head, bundles
that round trip, and students saved before the architecture key (the ViT with transposed
convolutions) that still load and predict as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tskd.config import StudentConfig
from tskd.errors import TskdInputError
from tskd.inference import bundle
from tskd.models.conv_student import ConvStudent
from tskd.models.student import Student, build_student
from tskd.models.unet import UNetBaseline

TINY_CONV = StudentConfig(architecture="conv", backbone="test_efficientnet_gn",
                          decoder_channels=16)
TINY_VIT = StudentConfig(architecture="vit_tiny", embed_dim=32, depth=2, num_heads=2,
                         decoder_channels=16)


@pytest.mark.parametrize("cfg,cls", [(TINY_CONV, ConvStudent), (TINY_VIT, Student),
                                     (StudentConfig(architecture="unet"), UNetBaseline)],
                         ids=["conv", "vit_tiny", "unet"])
def test_one_contract(cfg: StudentConfig, cls: type) -> None:
    torch.manual_seed(0)
    s = build_student(cfg, 3, 64)
    assert isinstance(s, cls) and s.cfg.architecture == cfg.architecture
    x = torch.rand(2, 3, 64, 64)
    assert s(x).shape == (2, 3, 64, 64)
    decoder = {id(p) for p in s.decoder_parameters()}
    assert 0 < len(decoder) < len(list(s.parameters()))
    s.reset_head(5)
    assert s(x).shape == (2, 5, 64, 64) and s.num_classes == 5
    with pytest.raises(TskdInputError, match="expects images of shape"):
        s(torch.rand(2, 3, 32, 32))


def test_the_cnn_offers_a_neck_at_stride_16_with_sams_width() -> None:
    s = build_student(TINY_CONV, 2, 64)
    logits, feats = s.forward_with_features(torch.rand(1, 3, 64, 64), ["neck", "stage4"])
    assert feats["neck"].shape == (1, 256, 4, 4)  # SAM's embedding width, stride 16
    assert feats["stage4"].shape[-1] == 2 and logits.shape == (1, 2, 64, 64)
    assert s.features(torch.rand(1, 3, 64, 64), ["neck"])["neck"].shape == (1, 256, 4, 4)
    with pytest.raises(TskdInputError, match="unknown student layer"):
        s.check_layers(["block3"])


def test_bad_settings_are_refused_in_one_line() -> None:
    with pytest.raises(TskdInputError, match="multiple of 32"):
        build_student(TINY_CONV, 2, 48)
    with pytest.raises(TskdInputError, match="multiple of 16"):
        build_student(StudentConfig(architecture="unet"), 2, 40)
    with pytest.raises(TskdInputError, match="not a timm CNN"):
        build_student(StudentConfig(architecture="conv", backbone="no_such_net"), 2, 64)
    with pytest.raises(TskdInputError, match="must be conv, vit_tiny or unet"):
        build_student(StudentConfig(architecture="mlp"), 2, 64)  # type: ignore[arg-type]
    with pytest.raises(TskdInputError,
                       match=r"unknown student layer\(s\) \['stage0'\]; choose from \['down_1'"):
        build_student(StudentConfig(architecture="unet"), 2, 64).check_layers(["stage0"])
    with pytest.raises(TskdInputError, match="width .* at least 1, got 0"):
        build_student(StudentConfig(architecture="unet", unet_width=0), 2, 64)


def test_unet_student_features_and_logits_match_basic_unet() -> None:
    """The distillable U-Net is MONAI's BasicUNet, its contracting path's maps its features."""
    torch.manual_seed(0)
    s = build_student(StudentConfig(architecture="unet", unet_width=8), 3, 64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        logits, feats = s.forward_with_features(x, ["neck", "down_3", "down_1"])
        # BasicUNet's own forward on the normalised input: the same logits
        assert torch.allclose(logits, s.net((x - 0.5) / 0.5), atol=1e-6)
        assert torch.equal(s(x), logits)
        only = s.features(x, ["neck"])
    assert logits.shape == (2, 3, 64, 64)
    assert feats["neck"].shape == (2, 64, 4, 4) and s.feature_dims["neck"] == 64  # 8w, S/16
    assert feats["down_3"].shape == (2, 32, 8, 8) and feats["down_1"].shape == (2, 8, 32, 32)
    assert set(only) == {"neck"} and torch.allclose(only["neck"], feats["neck"])
    # MONAI's default width (the baseline's): the bottleneck is 256 wide, SAM's embedding
    # width; the default student's (16): 128
    wide = StudentConfig(architecture="unet", unet_width=32)
    assert build_student(wide, 2, 64).feature_dims["neck"] == 256
    assert build_student(StudentConfig(), 2, 64).feature_dims["neck"] == 128


@pytest.mark.parametrize("cfg", [TINY_CONV, TINY_VIT, StudentConfig(architecture="unet")],
                         ids=["conv", "vit_tiny", "unet"])
def test_bundles_round_trip(cfg: StudentConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    s = build_student(cfg, 2, 64).eval()
    bundle.save_student(s, tmp_path / "s", {})
    loaded, meta = bundle.load_student(tmp_path / "s")
    assert meta["student"]["architecture"] == cfg.architecture
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), s(x))


def test_a_student_saved_before_the_architecture_key_still_loads(tmp_path: Path) -> None:
    # what earlier versions wrote: the ViT with transposed convolutions, no architecture or
    # upsample key in meta.json
    torch.manual_seed(0)
    old = Student(StudentConfig(architecture="vit_tiny", upsample="transposed", embed_dim=32,
                                depth=1, num_heads=2, decoder_channels=16), 2, 32).eval()
    bundle.save_student(old, tmp_path / "s", {})
    meta_file = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["student"]["architecture"], meta["student"]["upsample"]
    meta_file.write_text(json.dumps(meta))
    loaded, _ = bundle.load_student(tmp_path / "s")
    assert isinstance(loaded, Student) and loaded.cfg.upsample == "transposed"
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), old(x))
