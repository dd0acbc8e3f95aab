"""Read, check, identify and resize SAM checkpoints (official vit_b/l/h and the mini teacher).

A checkpoint is read without unpickling code (``torch.load(weights_only=True)`` or safetensors),
checked to be a SAM state dict, and its model type is told from tensor shapes. To run SAM at
another input size than it was trained at, the absolute position embedding is resampled to the
new token grid (bicubic) and the relative-position tables of the global-attention blocks
(length ``2 * grid - 1``) are resampled linearly; windowed blocks keep theirs because the window
size does not change. The prompt encoder's sizes follow from building the model at that size.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tskd.atomic import load_weights_only
from tskd.errors import CheckpointError, TskdWarning
from tskd.models.mini_sam import OFFICIAL_TYPES, MiniSamConfig, build_mini_sam, official_config
from tskd.models.mini_sam_files import read_mini_config

MODEL_TYPES = ("mini", *OFFICIAL_TYPES)

# official checkpoints: file name, URL and sha256 (as published by Meta / used by micro-sam)
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, str, str]] = {
    "vit_b": (
        "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": (
        "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": (
        "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}

# (embed dim, depth) of the official image encoders
_OFFICIAL_SHAPES = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
_REQUIRED = (
    "image_encoder.pos_embed",
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.neck.0.weight",
    "mask_decoder.mask_tokens.weight",
    "prompt_encoder.no_mask_embed.weight",
)
_sha_cache: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, cached per (path, size, mtime) within the process.

    Read in 4 MB chunks, so a 2.5 GB SAM checkpoint is hashed without holding it in memory.

    Args:
        path: the file.

    Returns:
        64 hexadecimal digits.

    Raises:
        CheckpointError: ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a SAM checkpoint (.pth/.pt via ``load_weights_only``, or .safetensors), on CPU.

    A state dict wrapped under "model" or "state_dict" is unwrapped and a "module." prefix
    (DataParallel) is dropped; the result is checked by ``check_sam_state_dict``.

    Args:
        path: The checkpoint file.

    Returns:
        ``{name: tensor}`` with SAM's official key names.

    Raises:
        CheckpointError: One sentence for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception:  # truncated, corrupt or another format under this name
            raise CheckpointError(
                f"cannot read checkpoint {path}: it is truncated, corrupt or not a safetensors "
                "file"
            ) from None
    else:
        sd = load_weights_only(path)
    if isinstance(sd, dict):  # some fine-tuned SAMs wrap the state dict
        for wrapper in ("model", "state_dict"):
            if wrapper in sd and isinstance(sd[wrapper], dict):
                sd = sd[wrapper]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    check_sam_state_dict(sd, path)
    return sd


def check_sam_state_dict(sd: dict[str, torch.Tensor], path: str | Path = "<state dict>") -> None:
    """Raise ``CheckpointError`` unless ``sd`` has SAM's image encoder, prompt encoder, decoder.

    Args:
        sd: A state dict.
        path: What the message names.
    """
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a Segment Anything checkpoint (missing {missing[0]})"
        )
    if sd["image_encoder.pos_embed"].ndim != 4 or not _block_ids(sd):
        raise CheckpointError(f"checkpoint {path} has an image encoder SAM does not use")


def _block_ids(sd: dict[str, torch.Tensor]) -> list[int]:
    pat = re.compile(r"image_encoder\.blocks\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def detect_model_type(sd: dict[str, torch.Tensor]) -> str:
    """Tell a SAM checkpoint's type from its image encoder's width and depth.

    Args:
        sd: the checkpoint's state dict (SAM's official key names).

    Returns:
        'vit_b' (768 wide, 12 blocks), 'vit_l' (1024, 24) or 'vit_h' (1280, 32), as
        ``official_config``; any other shape is 'mini'.

    Raises:
        CheckpointError: ``sd`` is not a SAM state dict.
    """
    check_sam_state_dict(sd)
    dim = int(sd["image_encoder.patch_embed.proj.weight"].shape[0])
    depth = len(_block_ids(sd))
    return _OFFICIAL_SHAPES.get((dim, depth), "mini")


def infer_config(sd: dict[str, torch.Tensor], decoder_heads: int = 8) -> MiniSamConfig:
    """The architecture of a SAM state dict from its shapes.

    Args:
        sd: A SAM state dict.
        decoder_heads: Decoder attention heads, which leave no trace in shapes (SAM uses 8).

    Returns:
        The config whose ``build_mini_sam`` has the state dict's shapes (``img_size`` from
        its position embedding).

    Raises:
        CheckpointError: ``sd`` is not a SAM state dict or lacks a tensor the shapes come from.
    """
    check_sam_state_dict(sd)
    try:
        return _infer_config(sd, decoder_heads)
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"the SAM state dict lacks {exc} needed to tell its architecture"
        ) from None


def _infer_config(sd: dict[str, torch.Tensor], decoder_heads: int) -> MiniSamConfig:
    blocks = _block_ids(sd)
    pe = sd["image_encoder.pos_embed"]
    dim, patch = (int(s) for s in sd["image_encoder.patch_embed.proj.weight"].shape[:3:2])
    grid = int(pe.shape[1])
    lengths = [int(sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in blocks]
    head_dim = int(sd[f"image_encoder.blocks.{blocks[0]}.attn.rel_pos_h"].shape[1])
    glob = tuple(i for i, n in zip(blocks, lengths) if n == 2 * grid - 1)
    windowed = [n for n in lengths if n != 2 * grid - 1]
    dec = re.compile(r"mask_decoder\.transformer\.layers\.(\d+)\.")
    return MiniSamConfig(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=len(blocks),
        num_heads=dim // head_dim,
        mlp_ratio=sd[f"image_encoder.blocks.{blocks[0]}.mlp.lin1.weight"].shape[0] / dim,
        window_size=(windowed[0] + 1) // 2 if windowed else 0,
        global_attn_indexes=glob if windowed else (),
        prompt_dim=int(sd["image_encoder.neck.0.weight"].shape[0]),
        mask_in_chans=int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=len({m.group(1) for k in sd if (m := dec.match(k))}),
        decoder_mlp_dim=int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        decoder_heads=decoder_heads,
        iou_head_hidden_dim=int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        num_multimask_outputs=int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
    )


def global_blocks(cfg: MiniSamConfig) -> list[int]:
    """List the encoder blocks with global attention.

    Args:
        cfg: the architecture.

    Returns:
        ``cfg.global_attn_indexes`` below ``cfg.depth``, in their order; every block when
        ``window_size`` is 0.
    """
    if cfg.window_size == 0:
        return list(range(cfg.depth))
    return [i for i in cfg.global_attn_indexes if i < cfg.depth]


def adapt_state_dict(
    sd: dict[str, torch.Tensor], cfg: MiniSamConfig, input_size: int
) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` with its position embeddings resampled for ``input_size``.

    The absolute ``pos_embed`` (1, g, g, D) is resized bicubically to the new token grid (as
    timm's ``resample_abs_pos_embed``), and the relative-position tables (2g - 1, head_dim) of
    the global-attention blocks linearly (as ``segment_anything``'s ``get_rel_pos`` does at run
    time when sizes differ); windowed blocks keep theirs. Other tensors are shared, not copied.

    Args:
        sd: A SAM state dict.
        cfg: Its architecture (patch size, window size, global blocks).
        input_size: The new input side in pixels, a multiple of the patch size.

    Returns:
        The new state dict; ``sd`` itself is left as it was.
    """
    grid = input_size // cfg.patch_size
    out = dict(sd)
    key = "image_encoder.pos_embed"
    pe = sd[key]
    if tuple(pe.shape[1:3]) != (grid, grid):
        resized = F.interpolate(
            pe.float().permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False
        )
        out[key] = resized.permute(0, 2, 3, 1).to(pe.dtype).contiguous()
    length = 2 * grid - 1
    for i in global_blocks(cfg):
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            table = sd.get(key)
            if table is None or table.shape[0] == length:
                continue
            resized = F.interpolate(
                table.float().t()[None], size=length, mode="linear", align_corners=False
            )
            out[key] = resized[0].t().to(table.dtype).contiguous()
    return out


def load_sam(
    sd: dict[str, torch.Tensor], cfg: MiniSamConfig, input_size: int, source: str | Path
) -> nn.Module:
    """Build ``cfg``'s SAM at ``input_size`` and load the adapted ``sd`` into it (strict).

    Args:
        sd: A SAM state dict.
        cfg: Its architecture.
        input_size: The input side in pixels.
        source: What the message names (the checkpoint file).

    Returns:
        The ``Sam`` in eval mode.

    Raises:
        CheckpointError: ``sd`` misses tensors, has extra ones or ones of another shape.
    """
    sam = build_mini_sam(cfg, input_size)
    adapted = adapt_state_dict(sd, cfg, input_size)
    own = sam.state_dict()
    missing = [k for k in own if k not in adapted]
    unexpected = [k for k in adapted if k not in own]
    wrong = [k for k in own if k in adapted and adapted[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = [
            f"{len(keys)} {label} (first {keys[0]})"
            for keys, label in (
                (missing, "missing tensor(s)"),
                (unexpected, "unexpected tensor(s)"),
                (wrong, "tensor(s) of another shape"),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {source} does not fit the expected SAM architecture: "
            f"{', '.join(problems)}"
        )
    sam.load_state_dict(adapted, strict=True)
    return sam.eval()


def load_sam_checkpoint(path: str | Path, model_type: str, input_size: int) -> nn.Module:
    """Read, check and load a SAM checkpoint file of ``model_type`` built at ``input_size``.

    Official types use their published architecture; 'mini' reads its config from the JSON
    beside the weights, or infers it from shapes (with a ``TskdWarning``) when there is none.

    Args:
        path: The checkpoint file.
        model_type: One of ``MODEL_TYPES``.
        input_size: The input side in pixels the model runs at.

    Returns:
        The ``Sam`` in eval mode.

    Raises:
        CheckpointError: An unknown model type, a file of another model type, and every error
            of ``read_state_dict``, ``read_mini_config`` and ``load_sam``.
    """
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"unknown SAM model type '{model_type}'; choose one of {', '.join(MODEL_TYPES)}"
        )
    sd = read_state_dict(path)
    found = detect_model_type(sd)
    if found != model_type:
        raise CheckpointError(
            f"checkpoint {path} holds a SAM {found}, but model type {model_type} was asked for"
        )
    if model_type != "mini":
        cfg = official_config(model_type)
    else:
        cfg = read_mini_config(path)
        if cfg is None:
            warnings.warn(
                f"no {Path(path).with_suffix('.json').name} beside {path}: the mini SAM "
                "architecture is inferred from its shapes, with 8 decoder attention heads",
                TskdWarning,
                stacklevel=2,
            )
            cfg = infer_config(sd)
    return load_sam(sd, cfg, input_size, path)


def download_checkpoint(model_type: str, cache_dir: str | Path | None = None) -> Path:
    """Download an official SAM checkpoint (checked against its sha256) with pooch; the path.

    Needs the network; a file already in the folder with the right hash is not downloaded
    again. Network errors come from pooch as they are.

    Args:
        model_type: vit_b, vit_l or vit_h (``OFFICIAL_CHECKPOINTS``).
        cache_dir: The folder; None: ``$TSKD_CACHE_DIR``, else the user cache dir
            (``pooch.os_cache("tskd")``).

    Returns:
        The checkpoint file's path.

    Raises:
        CheckpointError: ``model_type`` has no official checkpoint.
        ValueError: The downloaded file's sha256 is not the published one (pooch).
    """
    import os

    if model_type not in OFFICIAL_CHECKPOINTS:
        raise CheckpointError(
            f"no download for model type '{model_type}'; choose one of "
            f"{', '.join(OFFICIAL_CHECKPOINTS)}"
        )
    import pooch

    fname, url, sha = OFFICIAL_CHECKPOINTS[model_type]
    cache_dir = cache_dir or os.environ.get("TSKD_CACHE_DIR")
    folder = Path(cache_dir) if cache_dir else Path(pooch.os_cache("tskd"))
    return Path(
        pooch.retrieve(url, known_hash=f"sha256:{sha}", fname=fname, path=folder, progressbar=True)
    )
