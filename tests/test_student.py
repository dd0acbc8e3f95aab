"""Student model: shapes, feature names, head reset, input checks, weights round trip."""

from __future__ import annotations

import pytest
import torch

from tskd.config import StudentConfig
from tskd.errors import TskdInputError
from tskd.models.student import NECK_DIM, Student

TINY = StudentConfig(architecture="vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8,
                     decoder_channels=16)


def _student(num_classes: int = 3, size: int = 32, cfg: StudentConfig = TINY) -> Student:
    torch.manual_seed(0)
    return Student(cfg, num_classes, size).eval()


def test_forward_shape() -> None:
    st = _student(3, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = st(x)
    assert y.shape == (2, 3, 32, 32)
    assert torch.isfinite(y).all()


def test_patch16_student_reaches_full_resolution() -> None:
    cfg = StudentConfig(embed_dim=32, depth=1, num_heads=2, patch_size=16, decoder_channels=16)
    st = _student(2, 64, cfg)
    with torch.no_grad():
        assert st(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_features_names_and_shapes() -> None:
    st = _student(2, 32)
    assert set(st.feature_dims) == {"block0", "block1", "neck"}
    assert st.feature_dims["block1"] == 32 and st.feature_dims["neck"] == NECK_DIM
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = st.forward_with_features(x, ["block0", "neck"])
        plain = st(x)
        only = st.features(x, ["block1"])
    assert set(feats) == {"block0", "neck"}
    assert feats["block0"].shape == (2, 32, 4, 4)
    assert feats["neck"].shape == (2, NECK_DIM, 4, 4)
    assert only["block1"].shape == (2, 32, 4, 4)
    assert torch.allclose(logits, plain, atol=1e-5)


def test_block_features_are_the_transformer_blocks() -> None:
    st = _student(2, 32)
    x = torch.rand(1, 3, 32, 32)
    enc = st.encoder
    with torch.no_grad():
        t = enc.norm_pre(enc._pos_embed(enc.patch_embed((x - 0.5) / 0.5)))
        t = enc.blocks[0](t)
        expected = t[:, enc.num_prefix_tokens :].transpose(1, 2).reshape(1, 32, 4, 4)
        got = st.features(x, ["block0"])["block0"]
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_single_pixel_changes_its_own_logit() -> None:
    """The pixel path: one input pixel moves its own output pixel more than a neighbour 3 px off
    inside the same patch (a decoder fed by 8x8 patch tokens only could not tell them apart)."""
    st = _student(2, 32)
    x = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    y = st(x)
    (g_own,) = torch.autograd.grad(y[0, 1, 10, 10], x, retain_graph=True)
    (g_far,) = torch.autograd.grad(y[0, 1, 13, 13], x)
    assert g_own[0, :, 10, 10].abs().sum() > 0
    assert not torch.allclose(g_own[0, :, 10, 10], g_far[0, :, 10, 10])


def test_unknown_layer_and_wrong_size_are_user_errors() -> None:
    st = _student(2, 32)
    with pytest.raises(TskdInputError, match="block7"):
        st.forward_with_features(torch.rand(1, 3, 32, 32), ["block7"])
    with pytest.raises(TskdInputError, match="32, 32"):
        st(torch.rand(1, 3, 40, 40))
    with pytest.raises(TskdInputError, match="multiple"):
        Student(TINY, 2, 36)
    with pytest.raises(TskdInputError, match="power of two"):
        Student(StudentConfig(embed_dim=32, depth=1, num_heads=2, patch_size=6), 2, 36)


def test_reset_head_changes_class_count() -> None:
    st = _student(2, 32)
    st.reset_head(5)
    assert st.num_classes == 5
    with torch.no_grad():
        assert st(torch.rand(1, 3, 32, 32)).shape == (1, 5, 32, 32)


def test_state_dict_round_trip_and_param_count() -> None:
    st = _student(2, 32)
    other = Student(TINY, 2, 32).eval()
    state = st.state_dict()
    assert not any("pixel_" in k for k in state)  # normalisation constants are not weights
    other.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(st(x), other(x))
    assert st.param_count() == sum(p.numel() for p in st.parameters())


def test_default_student_is_vit_tiny_sized() -> None:
    st = Student(StudentConfig(), 2, 256)
    enc = sum(p.numel() for p in st.encoder.parameters())
    assert 5.4e6 < enc < 5.7e6  # ViT-Tiny (5.5 M) at 256x256
    assert st.param_count() - enc < 1.0e6  # neck + decoder stay small
    assert st.feature_dims["block11"] == 192
