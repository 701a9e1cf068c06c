"""Torchvision ResNet50 and VGG16-BN encoders for MONAI's FlexibleUNet.

Both implement :class:`monai.networks.blocks.BaseEncoder` and are registered in
``FLEXUNET_BACKBONE`` as ``"tv_resnet50"`` and ``"tv_vgg16"`` (MONAI's own ``"resnet50"`` is a
different, MedicalNet-style network). Each returns five feature maps at strides 2, 4, 8, 16, 32.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torchvision.models import vgg
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from lungseg_monai.networks.weights import load_imagenet_state_dict, patch_first_conv

__all__ = ["TorchvisionResNet50Encoder", "TorchvisionVGG16Encoder", "register_encoders"]


def _check_2d(spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ValueError(f"torchvision encoders are 2D; got spatial_dims={spatial_dims}")


class TorchvisionResNet50Encoder(nn.Module, BaseEncoder):
    """ResNet50 (torchvision) as a FlexibleUNet encoder.

    Features: stem (64 ch, stride 2), layer1 (256, 4), layer2 (512, 8), layer3 (1024, 16),
    layer4 (2048, 32).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels; 1 for radiographs.
        pretrained: load torchvision's ImageNet weights (hub cache, else download).
        weights_path: a local torchvision resnet50 state dict; implies pretrained.
    """

    arch = "resnet50"
    # Stages kept in fp32 under bf16/fp16 autocast (:meth:`Precision.prepare_network`): the stem and
    # the stride-4 stage, whose features reach the decoder's high-resolution skips and decide the
    # mask's outline. Measured on a trained model's test split (BENCHMARKS.md): all in bf16, bf16
    # masks agree with fp32 at Dice 0.9970; with these in fp32 0.9991 at 2.25x fp32's speed (512 px,
    # AVX512-BF16); layer2 too would give 0.9997 but 1.96x.
    full_precision_stages = ("conv1", "bn1", "layer1")

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        pretrained: bool = False,
        weights_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        _check_2d(spatial_dims)
        net = torchvision.models.resnet50(weights=None)
        if pretrained or weights_path is not None:
            net.load_state_dict(load_imagenet_state_dict(self.arch, weights_path))
        patch_first_conv(net.conv1, in_channels)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> five maps of (B, 64|256|512|1024|2048, H/2..H/32, W/2..W/32)."""
        s2 = self.relu(self.bn1(self.conv1(x)))
        s4 = self.layer1(self.maxpool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return [s2, s4, s8, s16, s32]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 1, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 256, 512, 1024, 2048)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return ["tv_resnet50"]


class TorchvisionVGG16Encoder(nn.Module, BaseEncoder):
    """VGG16 with batch norm (torchvision ``vgg16_bn``) as a FlexibleUNet encoder.

    VGG's first block works at full resolution; it runs, is pooled, and the map after the second
    block is the first skip, so the five features sit at strides 2, 4, 8, 16, 32 like ResNet's:
    block2 (128 ch), block3 (256), block4 (512), block5 (512), block5 pooled (512).
    Batch norm is what lets a 13-layer plain network train from scratch in reasonable time.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels; 1 for radiographs.
        pretrained: load torchvision's ImageNet ``vgg16_bn`` weights.
        weights_path: a local torchvision vgg16_bn state dict; implies pretrained.
    """

    arch = "vgg16_bn"
    # None: measured on a trained VGG16-UNet's test split (BENCHMARKS.md), all-bf16 masks agree with
    # fp32 at Dice 0.99964 (min 0.99905), test Dice -0.00003; fp32 blocks would add at most 0.0003.
    full_precision_stages: tuple[str, ...] = ()

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        pretrained: bool = False,
        weights_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        _check_2d(spatial_dims)
        # Only the convolutional part: the 100M-parameter classifier is never used.
        self.features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)
        if pretrained or weights_path is not None:
            state = load_imagenet_state_dict(self.arch, weights_path)
            prefix = "features."
            self.features.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        patch_first_conv(self.features[0], in_channels)
        self._pool_indices = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> five maps of (B, 128|256|512|512|512, H/2..H/32, W/2..W/32)."""
        stage_outputs: list[torch.Tensor] = []
        # One loop over the layers (TorchScript cannot slice a Sequential by computed indices).
        for index, layer in enumerate(self.features):
            if index in self._pool_indices:
                stage_outputs.append(x)  # before pooling: strides 1, 2, 4, 8, 16
            x = layer(x)
        return stage_outputs[1:] + [x]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 1, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(128, 256, 512, 512, 512)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return ["tv_vgg16"]


def register_encoders() -> None:
    """Add our encoders to MONAI's FlexibleUNet registry (idempotent; never overwrites MONAI's names)."""
    for encoder in (TorchvisionResNet50Encoder, TorchvisionVGG16Encoder):
        names = encoder.get_encoder_names()
        if all(FLEXUNET_BACKBONE.register_dict.get(n, {}).get("type") is encoder for n in names):
            continue
        clash = [n for n in names if n in FLEXUNET_BACKBONE.register_dict]
        if clash:
            raise ValueError(f"FlexibleUNet backbone names {clash} are already registered by another encoder")
        FLEXUNET_BACKBONE.register_class(encoder)


register_encoders()
