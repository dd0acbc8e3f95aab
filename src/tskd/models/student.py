"""The ViT-Tiny student: timm encoder, SAM-style neck and a light segmentation decoder.

Input: float (B, 3, S, S) in [0, 1]; output: logits (B, num_classes, S, S). The student normalises
its input itself, so every caller feeds the same [0, 1] tensors it feeds the teacher.

Decoder design. The encoder sees the image as 16x16-pixel patches, so its features live on a grid
16 times coarser than the image. A segmentation head has to bring that back to full resolution
without costing more than a fraction of the encoder (about 27 ms at 256x256 on two CPU cores), and
on a CPU the cost of convolutions is set by the pixels they touch, not by their FLOPs: one 3x3
convolution at full resolution with 16-32 channels costs half the encoder. So the decoder never
convolves at full resolution. It upsamples the neck in steps of 2x (a 2x2 transposed convolution,
as SAM's mask decoder upscales its embedding, then a 3x3 convolution), halving the channels while
the resolution doubles so each step costs about the same, and stops at half resolution. Fine
structures that no 16x16 patch token can place (retinal vessels one or two pixels wide, lesion
borders) reach the head through a pixel path that loses nothing: the input image is rearranged
space-to-depth (PixelUnshuffle, every 2x2 block of pixels becomes 12 channels at half resolution),
passed through one 3x3 convolution and concatenated with the last decoder step, a U-Net skip from
the pixels themselves. The head predicts the four sub-pixels of each half-resolution position
(a 1x1 convolution to 4 x classes, then PixelShuffle), so the logits are at full resolution and
each pixel is decided individually. Decoder normalisation is GroupNorm: it keeps no running
statistics, so training on batches of 2-4 images and inference behave alike and a resumed run is
restored exactly from the trainable parameters alone. The neck keeps SAM's LayerNorm2d so its
output has the statistics of SAM's image embedding, the natural distillation target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tskd.config import StudentConfig
from tskd.errors import TskdInputError

NECK_DIM = 256  # SAM's image-embedding width, so the neck can match SAM's neck one to one
# timm's ViT-Tiny (augreg) normalisation; kept so ImageNet weights could be dropped in later
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


def _conv_norm_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(math.gcd(8, cout), cout),
        nn.GELU(),
    )


class _Up(nn.Module):
    """2x upsampling: 2x2 transposed conv (stride 2), then a 3x3 conv over it and a skip."""

    def __init__(self, cin: int, cout: int, skip: int = 0) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = _conv_norm_act(cout + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.gelu(self.up(x))
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class Student(nn.Module):
    """ViT-Tiny segmenter; see the module docstring for the decoder's design.

    The encoder is timm's ``vit_tiny_patch16_224`` architecture (DeiT-Tiny: Touvron et al.,
    2021, "Training data-efficient image transformers"; the TS-KD paper's small ViT) at
    ``image_size``, randomly initialised: its weights come from distillation, never from a
    download. The defaults have 6.30 M parameters at 256 px with 2 classes (docs/benchmark.md).

    Args:
        cfg: The architecture (``StudentConfig``: embed_dim, depth, num_heads, patch_size,
            neck_dim, decoder_channels).
        num_classes: Output classes, background included (at least 1).
        image_size: S, the square input side in pixels, a multiple of the patch size.

    Raises:
        TskdInputError: A patch size that is not a power of two >= 4, an image size that is
            not a multiple of it, or no class.
    """

    def __init__(self, cfg: StudentConfig, num_classes: int, image_size: int) -> None:
        super().__init__()
        import timm
        from timm.layers import LayerNorm2d

        p = cfg.patch_size
        if p < 4 or p & (p - 1):
            raise TskdInputError(f"student patch_size must be a power of two >= 4, got {p}")
        if image_size % p:
            raise TskdInputError(
                f"image size {image_size} is not a multiple of the student's patch size {p}"
            )
        if num_classes < 1:
            raise TskdInputError(f"the student needs at least one class, got {num_classes}")
        self.cfg = cfg
        self.image_size = image_size
        self.num_classes = num_classes
        self.grid = image_size // p
        self.encoder = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,  # never download: weights come from distillation
            img_size=image_size,
            num_classes=0,
            global_pool="",
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            patch_size=p,
        )
        d = cfg.embed_dim
        neck_dim = int(getattr(cfg, "neck_dim", NECK_DIM))
        self.neck = nn.Sequential(  # SAM / EfficientSAM neck
            nn.Conv2d(d, neck_dim, 1, bias=False),
            LayerNorm2d(neck_dim),
            nn.Conv2d(neck_dim, neck_dim, 3, padding=1, bias=False),
            LayerNorm2d(neck_dim),
        )
        # 2x steps from the patch grid to half resolution; channels halve as resolution doubles
        c = cfg.decoder_channels
        floor = max(8, c // 4)
        chans = [max(floor, c >> k) for k in range(int(math.log2(p)) - 1)]
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), _conv_norm_act(12, floor))
        ups: list[nn.Module] = []
        cin = neck_dim
        for k, cout in enumerate(chans):
            ups.append(_Up(cin, cout, skip=floor if k == len(chans) - 1 else 0))
            cin = cout
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Sequential(nn.Conv2d(cin, 4 * num_classes, 1), nn.PixelShuffle(2))
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )
        self.feature_dims: dict[str, int] = {f"block{i}": d for i in range(cfg.depth)}
        self.feature_dims["neck"] = neck_dim

    # -- encoder ---------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise TskdInputError(
                f"the student expects images of shape (B, 3, {s}, {s}), got {tuple(x.shape)}"
            )

    def check_layers(self, layers: Sequence[str]) -> None:
        """Refuse feature names other than "block0".."block{depth-1}" and "neck".

        Args:
            layers: feature names (e.g. the configured distillation layers).

        Raises:
            TskdInputError: An unknown name (a configured distillation layer).
        """
        bad = [name for name in layers if name not in self.feature_dims]
        if bad:
            raise TskdInputError(
                f"unknown student layer(s) {bad}; choose from block0..block{self.cfg.depth - 1} "
                "or neck"
            )

    def _encode(
        self, x: torch.Tensor, layers: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised input -> (neck, requested features), through timm's public API."""
        enc = self.encoder
        wanted = sorted(int(name[5:]) for name in set(layers) if name.startswith("block"))
        feats: dict[str, torch.Tensor] = {}
        if wanted:
            tokens, inter = enc.forward_intermediates(x, indices=wanted, output_fmt="NCHW")
            feats = {f"block{i}": f for i, f in zip(wanted, inter)}
        else:
            tokens = enc.forward_features(x)  # final LayerNorm applied, prefix token included
        t = tokens[:, enc.num_prefix_tokens :]
        neck = self.neck(t.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid))
        if "neck" in layers:
            feats["neck"] = neck
        return neck, feats

    def _decode(self, xn: torch.Tensor, neck: torch.Tensor) -> torch.Tensor:
        y = neck
        last = len(self.decoder) - 1
        for k, up in enumerate(self.decoder):
            y = up(y, self.stem(xn) if k == last else None)
        return self.head(y)

    # -- public ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of images.

        Args:
            x: images (B, 3, S, S), float RGB in [0, 1], S = ``image_size``.

        Returns:
            Logits (B, num_classes, S, S), float.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S).
        """
        self._check_input(x)
        xn = (x - self.pixel_mean) / self.pixel_std
        neck, _ = self._encode(xn, ())
        return self._decode(xn, neck)

    def forward_with_features(
        self, x: torch.Tensor, layers: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the named features from one forward pass.

        Args:
            x: Images (B, 3, S, S), float RGB in [0, 1].
            layers: Feature names: "block{i}" -> (B, embed_dim, h, w) (h = w = S / patch_size),
                "neck" -> (B, neck_dim, h, w).

        Returns:
            ``(logits (B, num_classes, S, S), {name: feature})``.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S), or an unknown feature name.
        """
        self._check_input(x)
        self.check_layers(layers)
        xn = (x - self.pixel_mean) / self.pixel_std
        neck, feats = self._encode(xn, layers)
        return self._decode(xn, neck), feats

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Compute only the named features, skipping the decoder (feature-only distillation).

        Args:
            x: images (B, 3, S, S), float RGB in [0, 1].
            layers: feature names, as ``forward_with_features``.

        Returns:
            ``{name: feature}``, shapes as ``forward_with_features``.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S), or an unknown feature name.
        """
        self._check_input(x)
        self.check_layers(layers)
        _, feats = self._encode((x - self.pixel_mean) / self.pixel_std, layers)
        return feats

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters that only the segmentation output uses (stem, decoder, head)."""
        mods = (self.stem, self.decoder, self.head)
        return [p for m in mods for p in m.parameters()]

    def reset_head(self, num_classes: int) -> None:
        """Replace the 1x1 classifier for another class count (e.g. a task-agnostic student).

        The new head is randomly initialised (PyTorch's default) on the old head's device.

        Args:
            num_classes: The new number of classes, background included.
        """
        old = self.head[0]
        conv = nn.Conv2d(old.in_channels, 4 * num_classes, 1).to(old.weight.device)
        self.head = nn.Sequential(conv, nn.PixelShuffle(2))
        self.num_classes = num_classes

    def param_count(self) -> int:
        """Number of parameters (all of them, trainable or not)."""
        return sum(p.numel() for p in self.parameters())
