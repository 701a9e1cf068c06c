"""LungUNet: MONAI's FlexibleUNet with a torchvision VGG16 or ResNet50 encoder."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import FlexibleUNet

from lungseg_monai.networks.encoders import TorchvisionResNet50Encoder, TorchvisionVGG16Encoder

__all__ = ["LungUNet", "BACKBONES", "backbone_of_state_dict"]

# User-facing backbone name -> FlexibleUNet registry name.
BACKBONES = {"resnet50": "tv_resnet50", "vgg16": "tv_vgg16"}
_ENCODER_TYPES = {"resnet50": TorchvisionResNet50Encoder, "vgg16": TorchvisionVGG16Encoder}
# The encoder downsamples 5 times; inputs are padded to a multiple of this and cropped back.
SIZE_DIVISOR = 32


class LungUNet(FlexibleUNet):
    """U-Net with a torchvision encoder for 2D chest radiographs.

    State-dict compatible with ``FlexibleUNet(backbone="tv_resnet50" | "tv_vgg16", spatial_dims=2)``;
    adds a local ImageNet weights file and accepts any input size (padded to a multiple of 32,
    the output cropped back).

    Args:
        backbone: ``"resnet50"`` or ``"vgg16"`` (torchvision ``vgg16_bn``).
        in_channels: input channels (1 for radiographs).
        out_channels: output channels (1: lung logit).
        pretrained: start the encoder from torchvision's ImageNet weights.
        weights_path: local torchvision state-dict file for the encoder; implies pretrained.
        decoder_channels: channels of the five decoder stages.
        dropout: dropout in the decoder blocks.

    Example:
        >>> net = LungUNet(backbone="resnet50")
        >>> net(torch.zeros(2, 1, 250, 300)).shape
        torch.Size([2, 1, 250, 300])
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        out_channels: int = 1,
        pretrained: bool = False,
        weights_path: str | os.PathLike | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.0,
    ) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=BACKBONES[backbone],
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=2,
            norm=("batch", {"eps": 1e-5, "momentum": 0.1}),
            dropout=dropout,
        )
        self.backbone_name = backbone
        self.size_divisor = SIZE_DIVISOR
        if pretrained or weights_path is not None:
            # Rebuild the encoder from ImageNet weights; FlexibleUNet cannot pass a file path.
            self.encoder = _ENCODER_TYPES[backbone](
                spatial_dims=2, in_channels=in_channels, pretrained=True, weights_path=weights_path
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W) logits, for any H and W.

        Written for ``torch.jit.script`` (the bundle's ``ckpt_export``): no ``super()`` call and
        no closed-over globals; the body is FlexibleUNet's forward around the padding.
        """
        return self.decode(self.encode(inputs), inputs.shape[-2], inputs.shape[-1])

    def encode(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> the encoder's feature maps, finest first, of the input padded to a multiple of 32."""
        height, width = inputs.shape[-2], inputs.shape[-1]
        pad_h = (-height) % self.size_divisor
        pad_w = (-width) % self.size_divisor
        if pad_h > 0 or pad_w > 0:
            inputs = F.pad(inputs, [0, pad_w, 0, pad_h], mode="replicate")
        return self.encoder(inputs)

    def decode(self, features: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """:meth:`encode`'s feature maps -> (B, out_channels, ``height``, ``width``) logits.

        Quality control decodes the features of one encoder pass twice, the second time perturbed
        (:func:`lungseg_monai.qc.mask.perturb_features`), instead of running the whole network again.
        """
        logits = self.segmentation_head(self.decoder(features, self.skip_connect))
        return logits[..., :height, :width]


def backbone_of_state_dict(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Which backbone a LungUNet state dict was saved from ('resnet50', 'vgg16'), or None if neither."""
    if any(k.startswith("encoder.layer4.") for k in state_dict):
        return "resnet50"
    if any(k.startswith("encoder.features.") for k in state_dict):
        return "vgg16"
    return None
