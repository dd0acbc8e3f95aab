"""The ViT-Tiny student: timm encoder, SAM-style neck and a light segmentation decoder.

Input: float (B, 3, S, S) in [0, 1]; output: logits (B, num_classes, S, S). The student normalises
its input itself, so every caller feeds the same [0, 1] tensors it feeds the teacher.

Decoder design. The encoder sees the image as 16x16-pixel patches, so its features live on a grid
16 times coarser than the image. A segmentation head has to bring that back to full resolution
without costing more than a fraction of the encoder (about 27 ms at 256x256 on two CPU cores), and
on a CPU the cost of convolutions is set by the pixels they touch, not by their FLOPs. So the
decoder upsamples the neck in steps of 2x, halving the channels while the resolution doubles,
and stops at half resolution; structures no 16x16 patch token can place reach it through a pixel
path that loses nothing (the input rearranged space-to-depth by PixelUnshuffle, one 3x3
convolution, concatenated with the last step, a U-Net skip from the pixels themselves). Each
step is a 1x1 convolution, bilinear upsampling and a 3x3 convolution (resize-convolution, Odena
et al. 2016, "Deconvolution and checkerboard artifacts"), and the head brings a few channels to
full resolution bilinearly and decides each pixel by a 3x3 convolution over them and the image.
Students saved before (``StudentConfig.upsample = "transposed"``) used 2x2 transposed
convolutions and a PixelShuffle head; an untrained or little-trained one of those paints a
regular grid of dots at the patch frequency (tests/test_grid_artefact.py measures it), and they
still load. Decoder normalisation is GroupNorm: it keeps no running statistics, so training on
batches of 2-4 images and inference behave alike and a resumed run is restored exactly from the
trainable parameters alone. The neck keeps SAM's LayerNorm2d so its output has the statistics
of SAM's image embedding, the natural distillation target.

``build_student`` builds the student a ``StudentConfig`` describes: this ViT-Tiny or the
convolutional student (``tskd.models.conv_student``), which share one contract.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tskd.config import StudentConfig
from tskd.errors import TskdInputError
from tskd.models.conv_student import ConvStudent
from tskd.models.student_checks import check_build, check_input
from tskd.models.unet import UNetBaseline

HEAD_CHANNELS = 8  # features the bilinear head brings to full resolution
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
    """2x upsampling, then a 3x3 conv over it and a skip.

    ``transposed``: a 2x2 transposed conv (stride 2), as students saved before "bilinear"; else
    a 1x1 conv and bilinear upsampling (resize-convolution, Odena et al. 2016; the 1x1 conv
    runs before the upsampling, which gives the same result at a quarter of the cost).
    """

    def __init__(self, cin: int, cout: int, skip: int = 0, transposed: bool = False) -> None:
        super().__init__()
        self.transposed = transposed
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2) if transposed else nn.Conv2d(
            cin, cout, 1)
        self.conv = _conv_norm_act(cout + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if not self.transposed:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.gelu(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class _Head(nn.Module):
    """Half-resolution features -> full-resolution logits without a grid pattern.

    A 1x1 conv to ``HEAD_CHANNELS`` at half resolution, bilinear 2x upsampling, then a 3x3 conv
    over it and the normalised image, so each pixel is decided from its own value.
    """

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, HEAD_CHANNELS, 1)
        self.out = nn.Conv2d(HEAD_CHANNELS + 3, num_classes, 3, padding=1)

    def forward(self, y: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(F.gelu(self.reduce(y)), size=xn.shape[-2:], mode="bilinear",
                          align_corners=False)
        return self.out(torch.cat([y, xn], dim=1))


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
        check_build(image_size, p, num_classes, "the ViT-Tiny student (its patch size)")
        self.cfg = dataclasses.replace(cfg, architecture="vit_tiny")  # what a bundle records
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
        transposed = cfg.upsample == "transposed"
        for k, cout in enumerate(chans):
            ups.append(_Up(cin, cout, skip=floor if k == len(chans) - 1 else 0,
                           transposed=transposed))
            cin = cout
        self.decoder = nn.ModuleList(ups)
        self.head = self._new_head(cin, num_classes)
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )
        self.feature_dims: dict[str, int] = {f"block{i}": d for i in range(cfg.depth)}
        self.feature_dims["neck"] = neck_dim

    # -- encoder ---------------------------------------------------------------------------

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

    def _new_head(self, cin: int, num_classes: int) -> nn.Module:
        if self.cfg.upsample == "transposed":  # 4 sub-pixels per position, students before
            return nn.Sequential(nn.Conv2d(cin, 4 * num_classes, 1), nn.PixelShuffle(2))
        return _Head(cin, num_classes)

    def _decode(self, xn: torch.Tensor, neck: torch.Tensor) -> torch.Tensor:
        y = neck
        last = len(self.decoder) - 1
        for k, up in enumerate(self.decoder):
            y = up(y, self.stem(xn) if k == last else None)
        return self.head(y, xn) if isinstance(self.head, _Head) else self.head(y)

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
        check_input(x, self.image_size)
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
        check_input(x, self.image_size)
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
        check_input(x, self.image_size)
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
        old = self.head.reduce if isinstance(self.head, _Head) else self.head[0]
        self.head = self._new_head(old.in_channels, num_classes).to(old.weight.device)
        self.num_classes = num_classes

    def param_count(self) -> int:
        """Number of parameters (all of them, trainable or not)."""
        return sum(p.numel() for p in self.parameters())



# the students share one contract (methods, attributes); the U-Net is also the baseline
AnyStudent = Student | ConvStudent | UNetBaseline


def build_student(cfg: StudentConfig, num_classes: int, image_size: int) -> AnyStudent:
    """The student ``cfg.architecture`` names.

    "conv": ``ConvStudent``; "vit_tiny": ``Student``; "unet": ``UNetBaseline`` (MONAI's
    ``BasicUNet``: the plain U-Net baseline from scratch, or a distilled student).

    Args:
        cfg: The architecture.
        num_classes: Output classes, background included.
        image_size: The square input side in pixels.

    Returns:
        The randomly initialised student, on the CPU.

    Raises:
        TskdInputError: An unknown architecture, or settings the chosen class refuses.
    """
    if cfg.architecture == "conv":
        return ConvStudent(cfg, num_classes, image_size)
    if cfg.architecture == "vit_tiny":
        return Student(cfg, num_classes, image_size)
    if cfg.architecture == "unet":
        return UNetBaseline(cfg, num_classes, image_size)
    raise TskdInputError(f"student.architecture must be conv, vit_tiny or unet, not "
                         f"{cfg.architecture!r}")


def student_param_count(cfg: StudentConfig, num_classes: int, image_size: int) -> int:
    """Parameters of ``build_student(cfg, num_classes, image_size)``, without allocating it.

    The ViT-Tiny's count is computed from the settings (timm ViT encoder with MLP ratio 4,
    neck, decoder, head), so a ``meta.json`` that describes a huge model is refused at once;
    the convolutional student (its size bounded by its timm backbone) and the U-Net are built
    on the meta device. Checked against built students in ``tests/test_reliability_meta.py``.

    Args:
        cfg: The student's architecture.
        num_classes: Output classes, background included.
        image_size: The input side in pixels.

    Returns:
        The count.

    Raises:
        TskdInputError: Settings ``build_student`` refuses (conv and unet only).
    """
    if cfg.architecture != "vit_tiny":
        with torch.device("meta"):
            return build_student(cfg, num_classes, image_size).param_count()
    d, p, n = cfg.embed_dim, cfg.patch_size, cfg.neck_dim
    grid = image_size // p
    encoder = 3 * p * p * d + d + (grid * grid + 1) * d + d + cfg.depth * (12 * d * d + 13 * d)
    encoder += 2 * d
    neck = d * n + 9 * n * n + 4 * n
    c = cfg.decoder_channels
    floor = max(8, c // 4)
    chans = [max(floor, c >> k) for k in range(max(int(math.log2(p)) - 1, 0))]
    decoder = 9 * 12 * floor + 2 * floor
    transposed = cfg.upsample == "transposed"
    cin = n
    for k, cout in enumerate(chans):
        skip = floor if k == len(chans) - 1 else 0
        decoder += cin * cout * (4 if transposed else 1) + cout + 9 * (cout + skip) * cout
        decoder += 2 * cout
        cin = cout
    if transposed:
        head = cin * 4 * num_classes + 4 * num_classes
    else:
        head = cin * HEAD_CHANNELS + HEAD_CHANNELS + 9 * (HEAD_CHANNELS + 3) * num_classes
        head += num_classes
    return encoder + neck + decoder + head
