"""Named architectures of the mini SAM teacher, for ``tskd pretrain-mini --arch``."""

from __future__ import annotations

from typing import Any

from tskd.errors import CheckpointError
from tskd.models.mini_sam import MiniSamConfig


def mini_arch(name: str, image_size: int) -> MiniSamConfig:
    """A named mini SAM architecture for ``tskd pretrain-mini --arch``.

    ``basic``: the first built-in teacher (19.3 M parameters, 16-pixel patches, no refine
    head). ``mini``: the same encoder with 8-pixel patches (a 16x16 token grid at 128 px) and a
    ``RefineHead``. ``small``: a narrower, shallower encoder (256 wide, 6 blocks) with 8-pixel
    patches and the head, for the size comparison of ``benchmarks/pretraining_curve.py``.

    Args:
        name: one of ``MINI_ARCHS``.
        image_size: the side in pixels the model is built and pretrained at.

    Returns:
        The config.

    Raises:
        CheckpointError: an unknown name.
    """
    if name not in MINI_ARCHS:
        raise CheckpointError(f"unknown mini SAM architecture '{name}'; choose "
                              f"{', '.join(MINI_ARCHS)}")
    return MiniSamConfig(img_size=image_size, **MINI_ARCHS[name])


# the settings of each named architecture that differ from ``MiniSamConfig()``'s
MINI_ARCHS: dict[str, dict[str, Any]] = {
    "basic": {},
    "mini": {"patch_size": 8, "refine_width": 32},
    "small": {"patch_size": 8, "embed_dim": 256, "depth": 6, "num_heads": 4,
              "global_attn_indexes": (2, 5), "decoder_mlp_dim": 1024, "refine_width": 32},
}
