"""SAM as the teacher: build/load it at an input size, and use it prompt-free per class.

``SemanticSam`` wraps a ``segment_anything`` ``Sam`` into a semantic segmenter with one mask per
class (background included). It runs the image encoder once per image, the prompt encoder with
no prompts, and the official decoder's submodules with C class tokens and C hypernetwork MLPs
(initialised from the pretrained mask tokens and MLPs).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tskd.errors import CheckpointError
from tskd.models.mini_sam import (
    BUILTIN_JSON,
    BUILTIN_WEIGHTS,
    MiniSamConfig,
    build_mini_sam,
    official_config,
)
from tskd.models.mini_sam_files import read_mini_config
from tskd.models.refine_head import RefineHead
from tskd.models.sam_checkpoint import MODEL_TYPES, load_sam_checkpoint


def build_sam(
    model_type: str,
    checkpoint: str | Path | None = None,
    input_size: int = 1024,
    pretrained: bool = True,
) -> nn.Module:
    """A ``segment_anything`` ``Sam`` of ``model_type`` running at ``input_size`` (eval mode).

    The model records where it came from in ``sam.tskd_source`` (model type and resolved
    checkpoint path, or "builtin"), so an adapter saved later can name and hash its base.

    Args:
        model_type: One of ``MODEL_TYPES``: "mini", "vit_b", "vit_l", "vit_h".
        checkpoint: The weights file; official types need it, 'mini' without one uses the
            built-in weights (``BUILTIN_WEIGHTS``).
        input_size: The input side in pixels the model runs at (SAM's own is 1024; position
            embeddings are resampled, see ``tskd.models.sam_checkpoint``).
        pretrained: False gives a random initialisation (tests, pretraining, baselines) of
            the architecture: for 'mini', that of ``checkpoint``'s JSON when given.

    Returns:
        The ``Sam`` module in eval mode, on the CPU.

    Raises:
        CheckpointError: An unknown model type, an official type without a checkpoint, a
            missing built-in teacher (``tskd pretrain-mini`` creates it), or a checkpoint that
            cannot be loaded (``load_sam_checkpoint``).
    """
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"unknown SAM model type '{model_type}'; choose one of {', '.join(MODEL_TYPES)}"
        )
    if not pretrained:
        cfg = official_config(model_type) if model_type != "mini" else (
            read_mini_config(checkpoint) if checkpoint is not None else None) or MiniSamConfig()
        sam = build_mini_sam(cfg, input_size).eval()
        sam.tskd_source = {"model_type": model_type, "checkpoint": None}
        return sam
    source = "builtin" if checkpoint is None else str(Path(checkpoint).resolve())
    if checkpoint is None:
        if model_type != "mini":
            raise CheckpointError(
                f"SAM {model_type} needs a checkpoint file; pass its path, or get the official "
                f"one with tskd.models.sam_checkpoint.download_checkpoint('{model_type}')"
            )
        if not (BUILTIN_WEIGHTS.is_file() and BUILTIN_JSON.is_file()):
            raise CheckpointError(
                f"the built-in mini SAM weights {BUILTIN_WEIGHTS} do not exist yet; "
                "create them with `tskd pretrain-mini`"
            )
        checkpoint = BUILTIN_WEIGHTS
    sam = load_sam_checkpoint(checkpoint, model_type, input_size)
    # where the base came from, so an adapter saved later can name and hash it
    sam.tskd_source = {"model_type": model_type, "checkpoint": source}
    return sam


class SemanticSam(nn.Module):
    """Prompt-free SAM with one output mask per class: logits (B, C, S, S) from (B, 3, S, S).

    Input is float RGB in [0, 1]; it is scaled to 0-255 and normalised with SAM's pixel
    mean/std. Images of another size than ``input_size`` are resized in and the logits back
    (bilinear). One mask per class without prompts follows SAMed (Zhang and Liu, 2023,
    "Customized Segment Anything Model for Medical Image Segmentation"); the TS-KD paper's
    teacher is SAM adapted to the task with LoRA (Fig. 2a; ``tskd.models.lora``).

    Args:
        sam: A ``segment_anything`` ``Sam`` (``build_sam``); wrapped, not copied.
        num_classes: C, classes including the background (at least 2).
        refine: turn the decoder's (B, C, 4h, 4w) logits into full-resolution ones with the
            SAM's ``refine_head`` (``tskd.models.refine_head``), pretrained with the mini SAM or,
            when the SAM has none, attached to it new; False: SAM's logits upsampled
            bilinearly, as SAMed.

    Raises:
        ValueError: ``num_classes`` is below 2 (a caller's mistake).
    """

    def __init__(self, sam: nn.Module, num_classes: int, refine: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes counts the background too and must be at least 2")
        self.sam = sam
        self.num_classes = num_classes
        dec = sam.mask_decoder
        n_pre = dec.mask_tokens.weight.shape[0]
        self.class_tokens = nn.Parameter(
            dec.mask_tokens.weight.detach()[[i % n_pre for i in range(num_classes)]].clone()
        )
        self.class_mlps = nn.ModuleList(
            copy.deepcopy(dec.output_hypernetworks_mlps[i % n_pre]) for i in range(num_classes)
        )
        enc = sam.image_encoder
        self.input_size = int(enc.img_size)
        self.feature_dims: dict[str, int] = {
            f"block{i}": int(enc.patch_embed.proj.out_channels) for i in range(len(enc.blocks))
        }
        self.feature_dims["neck"] = int(sam.prompt_encoder.embed_dim)
        self.use_refine = refine
        if refine and getattr(sam, "refine_head", None) is None:
            # official checkpoints and older mini weights have none: a new (zero-output) head,
            # trained during adaptation
            sam.refine_head = RefineHead(int(sam.prompt_encoder.embed_dim) // 8)

    @property
    def refine(self) -> RefineHead | None:
        """The full-resolution head (``tskd.models.refine_head``), or None when not used."""
        return self.base.refine_head if self.use_refine else None

    @property
    def base(self) -> nn.Module:
        """The plain ``Sam`` (inside a peft wrapper while LoRA is applied)."""
        sam = self.sam
        return sam.get_base_model() if hasattr(sam, "get_base_model") else sam

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        sam = self.base
        x = x * 255.0
        x = (x - sam.pixel_mean) / sam.pixel_std
        return sam.image_encoder(x)

    def predict_masks(self, emb: torch.Tensor) -> torch.Tensor:
        """Decode low-resolution class logits from image embeddings, without a prompt.

        SAM's two-way transformer and output upscaling run once for all classes, with the
        no-mask dense embedding and no sparse prompt; each class's hypernetwork MLP turns its
        token into the weights of its mask (as SAM's ``MaskDecoder.predict_masks``).

        Args:
            emb: the image encoder's embeddings (B, D, h, w), D = the prompt dimension.

        Returns:
            Class logits (B, C, 4h, 4w), C = ``num_classes``.
        """
        return self._decode(emb)[0]

    def _decode(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution class logits (B, C, 4h, 4w) and the upscaled features they come from."""
        sam = self.base
        dec, pe = sam.mask_decoder, sam.prompt_encoder
        b, c, h, w = emb.shape
        # no prompts: no sparse tokens, the no-mask dense embedding added to every position
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).to(emb.dtype)
        src = emb + dense
        pos = pe.pe_layer((h, w)).unsqueeze(0).to(emb.dtype).expand(b, -1, -1, -1)
        tokens = torch.cat([dec.iou_token.weight, self.class_tokens], dim=0).to(emb.dtype)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)
        hs, src = dec.transformer(src, pos, tokens)
        class_out = hs[:, 1 : 1 + self.num_classes, :]
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack(
            [mlp(class_out[:, i, :]) for i, mlp in enumerate(self.class_mlps)], dim=1
        )
        bu, cu, hu, wu = up.shape
        return (hyper @ up.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu), up

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        if tuple(size) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        emb = self._embed(x)
        low, up = self._decode(emb)
        head = self.refine
        if head is not None:
            low = head(x, up, low)
        return F.interpolate(low, size=size, mode="bilinear", align_corners=False), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of images into ``num_classes`` classes.

        Args:
            x: images (B, 3, H, W), float RGB in [0, 1]; resized (bilinear) to the SAM's
                square input size when of another size.

        Returns:
            Class logits (B, C, H, W) at the images' size, upsampled (bilinear) from the
            decoder's (B, C, 4h, 4w), or from the refine head's (B, C, S, S) when there is one.
        """
        return self._run(x)[0]

    def forward_with_features(
        self, x: torch.Tensor, layers: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the named features, from one forward pass.

        Args:
            x: Images (B, 3, H, W), float RGB in [0, 1].
            layers: Feature names: "block{i}" (encoder block i's output, (B, D, h, w) with D
                the encoder width and h = w the token grid) or "neck" (the image embedding,
                (B, prompt_dim, h, w)); ``feature_dims`` gives each one's channels.

        Returns:
            ``(logits (B, C, H, W), {name: feature})`` in the order of ``layers``.

        Raises:
            ValueError: An unknown feature name (a caller's mistake).
        """
        unknown = [name for name in layers if name not in self.feature_dims]
        if unknown:
            raise ValueError(f"unknown teacher feature(s) {unknown}; known: block0.., neck")
        feats: dict[str, torch.Tensor] = {}
        handles: list[Any] = []
        blocks = self.base.image_encoder.blocks
        for name in layers:
            if name.startswith("block"):

                def hook(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
                    feats[name] = out.permute(0, 3, 1, 2)

                handles.append(blocks[int(name[5:])].register_forward_hook(hook))
        try:
            logits, emb = self._run(x)
        finally:
            for h in handles:
                h.remove()
        if "neck" in layers:
            feats["neck"] = emb
        return logits, {name: feats[name] for name in layers}
