"""SAM architectures as plain settings, built only from ``segment_anything``'s own modules.

``MiniSamConfig`` describes a SAM (image encoder, prompt encoder, two-way mask decoder). The
official vit_b/l/h are presets of it (``official_config``), and the built-in miniature teacher is
its default. One builder serves all of them, so official checkpoints and the mini teacher share
one load/adapt path. A mini model is saved as safetensors plus a JSON beside it holding the
config, so loading rebuilds the same architecture (``tskd.models.mini_sam_files``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from tskd.errors import CheckpointError
from tskd.models.refine_head import RefineHead, refine_param_count

# where ``tskd pretrain-mini`` writes the built-in teacher and ``build_sam("mini")`` reads it
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # src/tskd/assets (package data)
BUILTIN_WEIGHTS = ASSETS / "mini_sam.safetensors"
BUILTIN_JSON = ASSETS / "mini_sam.json"

OFFICIAL_TYPES = ("vit_b", "vit_l", "vit_h")
# largest model built from a description (1e9 parameters = 4 GB in fp32; SAM vit_h has 0.64e9):
# sizes in a JSON are untrusted, so the count is computed from the settings before building
MAX_PARAMS = 1_000_000_000
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 4096

# (key, smallest, largest) of the integer settings of ``MiniSamConfig``
_INT_BOUNDS = (
    ("img_size", MIN_INPUT_SIZE, MAX_INPUT_SIZE),
    ("patch_size", 1, 64),
    ("embed_dim", 1, 8192),
    ("depth", 1, 128),
    ("num_heads", 1, 128),
    ("window_size", 0, 256),
    ("prompt_dim", 8, 8192),
    ("mask_in_chans", 4, 1024),
    ("decoder_depth", 1, 64),
    ("decoder_mlp_dim", 1, 65536),
    ("decoder_heads", 1, 128),
    ("iou_head_hidden_dim", 1, 8192),
    ("num_multimask_outputs", 1, 16),
    ("refine_width", 0, 1024),
)


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
    # channels of the full-resolution head beside the decoder (tskd.models.refine_head); 0: none
    refine_width: int = 0
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])

    @classmethod
    def tiny(cls) -> MiniSamConfig:
        """A few-thousand-parameter SAM for unit tests (64 px input)."""
        return cls(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=4,
                   global_attn_indexes=(1,), prompt_dim=32, mask_in_chans=4, decoder_depth=1,
                   decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32)

    @property
    def grid(self) -> int:
        """Token grid side at ``img_size``."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (tuples as lists), as ``save_mini_sam`` stores them."""
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiniSamConfig:
        """Read settings from ``to_dict``'s form (untrusted JSON), every one validated.

        Args:
            data: ``{setting: value}``; missing settings take the mini teacher's defaults.

        Returns:
            The config (``validate``d at its own ``img_size``).

        Raises:
            CheckpointError: an unknown key or an invalid value, named in one sentence.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown mini SAM config key(s): {', '.join(unknown)}")
        data = dict(data)
        glob = data.get("global_attn_indexes", ())
        if not isinstance(glob, list | tuple) or not all(_is_int(i) for i in glob):
            raise CheckpointError(
                "mini SAM config 'global_attn_indexes' must be a list of integers, "
                f"got {glob!r:.60}"
            )
        if "global_attn_indexes" in data:
            data["global_attn_indexes"] = tuple(data["global_attn_indexes"])
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def validate(self, input_size: int | None = None) -> None:
        """Check every setting: types and bounds (``_INT_BOUNDS``), heads dividing their widths.

        Args:
            input_size: the input side in pixels the model will be built at; at most
                ``MAX_PARAMS`` parameters there (``sam_param_count``). None: ``img_size``.

        Raises:
            CheckpointError: one sentence naming the first invalid key.
        """
        for key, lo, hi in _INT_BOUNDS:
            value = getattr(self, key)
            if not _is_int(value) or not lo <= value <= hi:
                raise CheckpointError(
                    f"mini SAM config '{key}' must be an integer from {lo} to {hi}, "
                    f"got {value!r:.60}"
                )
        if self.img_size % self.patch_size:
            raise CheckpointError(
                f"mini SAM config 'img_size' {self.img_size} is not a multiple of its "
                f"patch_size {self.patch_size}"
            )
        ratio = self.mlp_ratio
        if not _is_number(ratio) or not 0 < ratio <= 16 or int(self.embed_dim * ratio) < 1:
            raise CheckpointError(
                f"mini SAM config 'mlp_ratio' must be a number above 0 and at most 16, "
                f"got {ratio!r:.60}"
            )
        if self.embed_dim % self.num_heads:
            raise CheckpointError(
                f"mini SAM config 'num_heads' {self.num_heads} does not divide embed_dim "
                f"{self.embed_dim}"
            )
        if self.prompt_dim % 8 or (self.prompt_dim // 2) % self.decoder_heads:
            raise CheckpointError(
                f"mini SAM config 'prompt_dim' {self.prompt_dim} must be a multiple of 8 whose "
                f"half the decoder_heads {self.decoder_heads} divide"
            )
        if self.mask_in_chans % 4:
            raise CheckpointError(
                f"mini SAM config 'mask_in_chans' must be a multiple of 4, got {self.mask_in_chans}"
            )
        _check_sequences(self)
        size = self.img_size if input_size is None else input_size
        n = sam_param_count(self, size)
        if n > MAX_PARAMS:
            raise CheckpointError(
                f"mini SAM config describes a model of {n / 1e9:.1f} billion parameters at input "
                f"size {size}, more than the {MAX_PARAMS / 1e9:.0f} billion allowed"
            )


def _check_sequences(cfg: MiniSamConfig) -> None:
    """``CheckpointError`` unless the list settings (global blocks, pixel statistics) are valid."""
    glob = list(cfg.global_attn_indexes)
    if len(glob) > 1024 or any(not _is_int(i) or not 0 <= i < 1024 for i in glob):
        raise CheckpointError(
            "mini SAM config 'global_attn_indexes' must be block numbers from 0 to 1023, "
            f"got {glob!r:.60}"
        )
    for key in ("pixel_mean", "pixel_std"):
        values = getattr(cfg, key)
        ok = isinstance(values, list | tuple) and len(values) == 3
        ok = ok and all(_is_number(v) and (v > 0 or key == "pixel_mean") for v in values)
        if not ok:
            raise CheckpointError(
                f"mini SAM config '{key}' must be three finite numbers"
                f"{' above 0' if key == 'pixel_std' else ''}, got {values!r:.60}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


def sam_param_count(cfg: MiniSamConfig, input_size: int, num_classes: int = 0) -> int:
    """Parameters of ``build_mini_sam(cfg, input_size)``, computed from the settings alone.

    Nothing is built: an untrusted description is sized first (tests/test_reliability_meta.py).

    Args:
        cfg: The architecture.
        input_size: The input side in pixels (sets the token grid and position tables).
        num_classes: Adds ``SemanticSam``'s class tokens and hypernetwork MLPs; 0: plain SAM.

    Returns:
        The number of scalar parameters.
    """
    d, p, P, m = cfg.embed_dim, cfg.patch_size, cfg.prompt_dim, cfg.mask_in_chans
    grid = input_size // p
    head = d // max(cfg.num_heads, 1)
    hidden = int(d * cfg.mlp_ratio)
    glob = set(range(cfg.depth)) if cfg.window_size == 0 else set(cfg.global_attn_indexes)
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * hidden + hidden + d)
    rel = sum(
        2 * (2 * (grid if i in glob else cfg.window_size) - 1) * head for i in range(cfg.depth)
    )
    encoder = 3 * p * p * d + d + grid * grid * d + cfg.depth * block + rel
    encoder += d * P + 9 * P * P + 4 * P  # neck
    q = m // 4
    prompt = 6 * P + (4 * q + q) + 2 * q + (q * m * 4 + m) + 2 * m + (m * P + P)
    inner = P // 2
    cross = 3 * (P * inner + inner) + inner * P + P
    layer = 4 * (P * P + P) + 2 * cross + (2 * P * cfg.decoder_mlp_dim + cfg.decoder_mlp_dim + P)
    layer += 8 * P  # four LayerNorms
    transformer = cfg.decoder_depth * layer + cross + 2 * P
    tokens = cfg.num_multimask_outputs + 1
    hyper = 2 * (P * P + P) + P * (P // 8) + P // 8
    h = cfg.iou_head_hidden_dim
    iou = (P * h + h) + (h * h + h) + (h * tokens + tokens)
    upscale = P * (P // 4) * 4 + P // 4 + 2 * (P // 4) + (P // 4) * (P // 8) * 4 + P // 8
    decoder = P + tokens * P + upscale + tokens * hyper + iou + transformer
    decoder += refine_param_count(P // 8, cfg.refine_width)
    return encoder + prompt + decoder + num_classes * (P + hyper)


def official_config(model_type: str) -> MiniSamConfig:
    """Return the architecture of an official SAM checkpoint.

    The shapes are those of ``segment_anything``'s ``build_sam_vit_b``/``_l``/``_h``
    (Kirillov et al., "Segment Anything", 2023): 1024-pixel input, 16-pixel patches, windowed
    attention of 14 with four global blocks.

    Args:
        model_type: ``vit_b``, ``vit_l`` or ``vit_h``.

    Returns:
        The config (embedding width, depth, heads and global blocks of that type).

    Raises:
        CheckpointError: ``model_type`` is not vit_b, vit_l or vit_h.
    """
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
    return MiniSamConfig(img_size=1024, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                         window_size=14, global_attn_indexes=glob)


def build_mini_sam(cfg: MiniSamConfig | None = None, input_size: int | None = None) -> nn.Module:
    """Build a randomly initialised ``segment_anything`` ``Sam`` of ``cfg``.

    Args:
        cfg: the architecture; None: the mini teacher's (``MiniSamConfig()``).
        input_size: the input side in pixels, which sets the encoder's token grid and the
            prompt encoder's image sizes; None: ``cfg.img_size``.

    Returns:
        The ``Sam`` module (float32, on the CPU, in training mode), with a ``refine_head``
        (``tskd.models.refine_head.RefineHead``) when ``cfg.refine_width`` is above 0.

    Raises:
        CheckpointError: ``input_size`` is no patch multiple in 16..4096, or ``cfg`` is invalid.
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = cfg or MiniSamConfig()
    size = input_size or cfg.img_size
    _check_input_size(cfg, size)
    grid = size // cfg.patch_size
    encoder = _image_encoder(cfg, size)  # built first: the random initialisation's order
    sam = Sam(
        image_encoder=encoder,
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
    if cfg.refine_width:
        sam.refine_head = RefineHead(cfg.prompt_dim // 8, cfg.refine_width)
    return sam


def _check_input_size(cfg: MiniSamConfig, size: Any) -> None:
    """``CheckpointError`` unless ``size`` is a patch multiple in range and ``cfg`` valid at it."""
    if not _is_int(size) or size <= 0 or size % cfg.patch_size:
        raise CheckpointError(
            f"SAM input size {size} must be a positive multiple of the patch size {cfg.patch_size}"
        )
    if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise CheckpointError(
            f"SAM input size {size} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}"
        )
    cfg.validate(size)


def _image_encoder(cfg: MiniSamConfig, size: int) -> nn.Module:
    """SAM's ViT image encoder with its neck, built for ``size``-pixel inputs."""
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
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
    )


def count_parameters(model: nn.Module) -> int:
    """Count a model's parameters, trainable or not.

    Args:
        model: any module.

    Returns:
        The number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters())
