"""SAM checkpoint reading, checking, model-type detection, resolution adaptation, mini SAM."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tskd.errors import CheckpointError
from tskd.models import sam_checkpoint as sc
from tskd.models.mini_sam import MiniSamConfig, build_mini_sam, count_parameters, official_config
from tskd.models.mini_sam_files import read_mini_config, save_mini_sam


def _tiny_sam(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    sam = build_mini_sam(MiniSamConfig.tiny())
    with torch.no_grad():  # non-zero position tables so that resampling matters
        for p in sam.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return sam.eval()


def _fake_official(dim: int, depth: int) -> dict[str, torch.Tensor]:
    """Only the keys and shapes detection looks at, on the meta device (no memory)."""
    e = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    sd = {
        "image_encoder.pos_embed": e(1, 64, 64, dim),
        "image_encoder.patch_embed.proj.weight": e(dim, 3, 16, 16),
        "image_encoder.neck.0.weight": e(256, dim, 1, 1),
        "mask_decoder.mask_tokens.weight": e(4, 256),
        "prompt_encoder.no_mask_embed.weight": e(1, 256),
    }
    for i in range(depth):
        sd[f"image_encoder.blocks.{i}.attn.qkv.weight"] = e(3 * dim, dim)
    return sd


@pytest.mark.parametrize(
    ("dim", "depth", "expected"),
    [(768, 12, "vit_b"), (1024, 24, "vit_l"), (1280, 32, "vit_h"), (768, 6, "mini")],
)
def test_detect_model_type_from_shapes(dim: int, depth: int, expected: str) -> None:
    assert sc.detect_model_type(_fake_official(dim, depth)) == expected


def test_detect_tiny_is_mini_and_infer_config_round_trips() -> None:
    cfg = MiniSamConfig.tiny()
    sd = build_mini_sam(cfg).state_dict()
    assert sc.detect_model_type(sd) == "mini"
    assert sc.infer_config(sd, decoder_heads=cfg.decoder_heads) == cfg


def test_official_configs_match_segment_anything() -> None:
    from segment_anything import sam_model_registry

    for model_type in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            ours = build_mini_sam(official_config(model_type))
            theirs = sam_model_registry[model_type]()
        ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
        assert ours_shapes == {k: v.shape for k, v in theirs.state_dict().items()}


def test_missing_truncated_and_foreign_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        sc.read_state_dict(tmp_path / "nope.pth")

    good = tmp_path / "tiny.pth"
    torch.save(_tiny_sam().state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth: it is truncated"):
        sc.read_state_dict(cut)

    st = tmp_path / "w.safetensors"
    save_mini_sam(_tiny_sam(), MiniSamConfig.tiny(), st)
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        sc.read_state_dict(cut_st)

    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, other)
    with pytest.raises(CheckpointError, match="resnet.pth is not a Segment Anything"):
        sc.read_state_dict(other)

    pickled = tmp_path / "obj.pth"
    torch.save({"x": object()}, pickled)  # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError, match="obj.pth"):
        sc.read_state_dict(pickled)


def test_wrapped_state_dict_is_unwrapped(tmp_path) -> None:
    sd = _tiny_sam().state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    read = sc.read_state_dict(path)
    assert set(read) == set(sd)
    assert torch.equal(read["image_encoder.pos_embed"], sd["image_encoder.pos_embed"])


def test_wrong_model_type_is_refused(tmp_path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(_tiny_sam().state_dict(), path)
    with pytest.raises(CheckpointError, match="tiny.pth holds a SAM mini, but model type vit_b"):
        sc.load_sam_checkpoint(path, "vit_b", 1024)
    with pytest.raises(CheckpointError, match="unknown SAM model type"):
        sc.load_sam_checkpoint(path, "vit_x", 1024)


def test_adapt_resamples_pos_embed_and_global_rel_pos_only() -> None:
    cfg = MiniSamConfig.tiny()  # grid 8, window 4, block 1 global
    sd = _tiny_sam().state_dict()
    same = sc.adapt_state_dict(sd, cfg, 64)
    assert all(same[k] is sd[k] for k in sd)  # nothing to do at the trained size
    for size, grid in ((32, 4), (128, 16)):
        out = sc.adapt_state_dict(sd, cfg, size)
        assert out["image_encoder.pos_embed"].shape == (1, grid, grid, cfg.embed_dim)
        assert out["image_encoder.blocks.1.attn.rel_pos_h"].shape == (2 * grid - 1, 16)
        assert out["image_encoder.blocks.1.attn.rel_pos_w"].shape == (2 * grid - 1, 16)
        # the windowed block keeps its table: window size does not change
        key = "image_encoder.blocks.0.attn.rel_pos_h"
        assert out[key] is sd[key]


def test_adapt_keeps_smooth_embeddings_smooth() -> None:
    cfg = MiniSamConfig.tiny()
    sd = _tiny_sam().state_dict()
    sd["image_encoder.pos_embed"] = torch.full((1, 8, 8, 32), 0.5)
    ramp = torch.linspace(-1, 1, 15)[:, None].repeat(1, 16)
    sd["image_encoder.blocks.1.attn.rel_pos_h"] = ramp
    out = sc.adapt_state_dict(sd, cfg, 128)
    assert torch.allclose(out["image_encoder.pos_embed"], torch.tensor(0.5))
    table = out["image_encoder.blocks.1.attn.rel_pos_h"][:, 0]
    assert torch.all(table[1:] >= table[:-1])  # still monotone
    assert table[0] == pytest.approx(-1, abs=1e-6) and table[-1] == pytest.approx(1, abs=1e-6)


def test_load_at_trained_size_reproduces_the_model(tmp_path) -> None:
    sam = _tiny_sam()
    path = tmp_path / "tiny.safetensors"
    save_mini_sam(sam, MiniSamConfig.tiny(), path, half=False)
    loaded = sc.load_sam_checkpoint(path, "mini", 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(x), sam.image_encoder(x))


def test_mini_json_round_trip_and_half_weights(tmp_path) -> None:
    cfg = MiniSamConfig.tiny()
    path = save_mini_sam(_tiny_sam(), cfg, tmp_path / "m.safetensors", extra={"steps": 3})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model_type"] == "mini" and meta["info"] == {"steps": 3}
    assert read_mini_config(path) == cfg
    assert sc.read_state_dict(path)["image_encoder.pos_embed"].dtype == torch.float16
    with pytest.raises(CheckpointError, match="safetensors"):
        save_mini_sam(_tiny_sam(), cfg, tmp_path / "m.pth")


def test_default_mini_size() -> None:
    with torch.device("meta"):
        n = count_parameters(build_mini_sam(MiniSamConfig()))
    assert n >= 17_000_000  # >= 3x the ViT-Tiny student (5.7 M)
    assert 2 * n < 50_000_000  # fp16 weights under 50 MB


def test_sha256_and_download_table(tmp_path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    assert sc.sha256_of(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    with pytest.raises(CheckpointError, match="not found"):
        sc.sha256_of(tmp_path / "y.bin")
    for model_type, (fname, url, sha) in sc.OFFICIAL_CHECKPOINTS.items():
        assert url.endswith("/" + fname) and model_type in fname
        assert len(sha) == 64 and int(sha, 16) >= 0
    with pytest.raises(CheckpointError, match="no download"):
        sc.download_checkpoint("mini", tmp_path)
