"""Networks: torchvision encoders registered for MONAI's FlexibleUNet, and the LungUNet built on them."""

from __future__ import annotations

from lungseg_monai.networks.encoders import TorchvisionResNet50Encoder, TorchvisionVGG16Encoder, register_encoders
from lungseg_monai.networks.unet import BACKBONES, LungUNet, backbone_of_state_dict
from lungseg_monai.networks.weights import hub_cache_path, load_imagenet_state_dict, patch_first_conv

__all__ = [
    "BACKBONES",
    "LungUNet",
    "TorchvisionResNet50Encoder",
    "TorchvisionVGG16Encoder",
    "backbone_of_state_dict",
    "hub_cache_path",
    "load_imagenet_state_dict",
    "patch_first_conv",
    "register_encoders",
]
