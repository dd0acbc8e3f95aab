"""The contract of the encoder-decoder students: logits, named features, or both in one pass.

``ConvStudent`` and ``UNetBaseline`` share it: each says how it encodes an image batch
(``_encode``), decodes that to logits (``_decode``) and which encoder maps are its named
features (``_named``, ``feature_dims``); the checks and the three entry points the pipeline
calls are here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tskd.errors import TskdInputError
from tskd.models.student_checks import check_input


class EncoderDecoderStudent(nn.Module):
    """Base of the students whose features are maps of their encoder.

    Subclasses set ``image_size`` (S, pixels) and ``feature_dims`` ({name: channels}) and
    implement ``_encode(x) -> state``, ``_decode(state) -> logits`` and
    ``_named(state, layers) -> {name: feature}``.
    """

    image_size: int
    feature_dims: dict[str, int]

    def _encode(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def _decode(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def _named(self, state: Any, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check_layers(self, layers: Sequence[str]) -> None:
        """Refuse feature names the encoder does not have.

        Args:
            layers: Requested feature names (e.g. the configured distillation layers).

        Raises:
            TskdInputError: A name not in ``feature_dims`` (the message lists them).
        """
        bad = [name for name in layers if name not in self.feature_dims]
        if bad:
            raise TskdInputError(f"unknown student layer(s) {bad}; choose from "
                                 f"{sorted(self.feature_dims)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, S, S) for images (B, 3, S, S), float RGB in [0, 1].

        Args:
            x: The images.

        Returns:
            The logits, float32.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S).
        """
        check_input(x, self.image_size)
        return self._decode(self._encode(x))

    def forward_with_features(
        self, x: torch.Tensor, layers: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the named features from one forward pass.

        Args:
            x: Images (B, 3, S, S), float RGB in [0, 1].
            layers: Feature names of ``feature_dims`` (which gives each one's channels; the
                subclass's docstring gives their strides).

        Returns:
            ``(logits (B, num_classes, S, S), {name: feature (B, C, h, w)})``.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S), or an unknown feature name.
        """
        check_input(x, self.image_size)
        self.check_layers(layers)
        state = self._encode(x)
        return self._decode(state), self._named(state, layers)

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Only the named features, skipping the decoder (feature-only distillation).

        Args:
            x: Images (B, 3, S, S), float RGB in [0, 1].
            layers: Feature names, as ``forward_with_features``.

        Returns:
            ``{name: feature}``.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S), or an unknown feature name.
        """
        check_input(x, self.image_size)
        self.check_layers(layers)
        return self._named(self._encode(x), layers)
