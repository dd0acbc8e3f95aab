"""SAM architectures as plain settings, built only from ``segment_anything``'s own modules.

``MiniSamConfig`` describes a SAM (image encoder, prompt encoder, two-way mask decoder). The
official vit_b/l/h are presets of it (``official_config``), and the built-in miniature teacher is
its default. One builder serves all of them, so official checkpoints and the mini teacher share
one load/adapt path. A mini model is saved as safetensors plus a JSON beside it holding the
config, so loading rebuilds the same architecture.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tskd.errors import CheckpointError

# where ``tskd pretrain-mini`` writes the built-in teacher and ``build_sam("mini")`` reads it
ASSETS = Path(__file__).parent / "assets"
BUILTIN_WEIGHTS = ASSETS / "mini_sam.safetensors"
BUILTIN_JSON = ASSETS / "mini_sam.json"

OFFICIAL_TYPES = ("vit_b", "vit_l", "vit_h")


@dataclass
class MiniSamConfig:
    """Shape of a SAM; the defaults are the built-in mini teacher (about 19 M parameters)."""

    img_size: int = 256  # input size the weights were made at (pos_embed grid = img/patch)
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 8
    num_heads: int = 6
    mlp_ratio: float = 4.0
    window_size: int = 8
    global_attn_indexes: tuple[int, ...] = (3, 7)
    prompt_dim: int = 256  # neck output channels = prompt/decoder width
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])

    @classmethod
    def tiny(cls) -> MiniSamConfig:
        """A few-thousand-parameter SAM for unit tests (64 px input)."""
        return cls(
            img_size=64,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=4,
            global_attn_indexes=(1,),
            prompt_dim=32,
            mask_in_chans=4,
            decoder_depth=1,
            decoder_mlp_dim=64,
            decoder_heads=2,
            iou_head_hidden_dim=32,
        )

    @property
    def grid(self) -> int:
        """Token grid side at ``img_size``."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiniSamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown mini SAM config key(s): {', '.join(unknown)}")
        data = dict(data)
        if "global_attn_indexes" in data:
            data["global_attn_indexes"] = tuple(int(i) for i in data["global_attn_indexes"])
        return cls(**data)


def official_config(model_type: str) -> MiniSamConfig:
    """The architecture of an official SAM checkpoint (as ``segment_anything.build_sam``)."""
    shapes = {
        "vit_b": (768, 12, 12, (2, 5, 8, 11)),
        "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    }
    if model_type not in shapes:
        raise CheckpointError(
            f"unknown SAM model type '{model_type}'; choose mini, {', '.join(OFFICIAL_TYPES)}"
        )
    dim, depth, heads, glob = shapes[model_type]
    return MiniSamConfig(
        img_size=1024,
        patch_size=16,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        window_size=14,
        global_attn_indexes=glob,
    )


def build_mini_sam(cfg: MiniSamConfig | None = None, input_size: int | None = None) -> nn.Module:
    """A randomly initialised ``segment_anything.modeling.Sam`` of this shape.

    ``input_size`` (default ``cfg.img_size``) sets the encoder's token grid and the prompt
    encoder's image sizes; it must be a multiple of the patch size.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    cfg = cfg or MiniSamConfig()
    size = int(input_size or cfg.img_size)
    if size <= 0 or size % cfg.patch_size:
        raise CheckpointError(
            f"SAM input size {size} must be a positive multiple of the patch size {cfg.patch_size}"
        )
    grid = size // cfg.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=cfg.window_size,
            global_attn_indexes=tuple(cfg.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_heads,
            ),
            transformer_dim=cfg.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    )
    return sam


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def json_path(weights: str | Path) -> Path:
    """The JSON that describes a weights file: same folder and stem, ``.json``."""
    return Path(weights).with_suffix(".json")


def save_mini_sam(
    sam: nn.Module,
    cfg: MiniSamConfig,
    path: str | Path,
    half: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``sam``'s weights to ``path`` (.safetensors, fp16 by default) and its config JSON.

    The weights keep SAM's official key names, at the resolution the model was built at;
    ``extra`` (e.g. pretraining settings) goes into the JSON under "info". Both files are
    written in full before either replaces its old version; a full disk raises
    ``DiskFullError`` and keeps the previous weights.
    """
    from tskd import atomic

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"mini SAM weights must be saved as .safetensors, not {path.name}")
    grid = sam.image_encoder.pos_embed.shape[1]
    cfg = MiniSamConfig.from_dict(cfg.to_dict() | {"img_size": grid * cfg.patch_size})
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sam.state_dict().items()}
    meta = {"model_type": "mini", "config": cfg.to_dict(), "info": extra or {}}
    atomic.write_files({
        path: atomic.safetensors_bytes(tensors),
        json_path(path): atomic.json_bytes(meta),
    })
    return path


def read_mini_config(weights: str | Path) -> MiniSamConfig | None:
    """The config from the JSON beside a mini SAM weights file, or None when there is none."""
    jp = json_path(weights)
    if not jp.is_file():
        return None
    try:
        meta = json.loads(jp.read_text())
        return MiniSamConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"mini SAM config {jp} is not valid ({exc})") from None
