"""ImageNet weights for the torchvision encoders: weight enums, the torch hub cache, or a local file.

Nothing here downloads unless ``pretrained=True`` is asked for and the weights are in neither the
given file nor the hub cache; ``LUNGSEG_OFFLINE=1`` forbids the download too (useful on
air-gapped hospital machines), turning it into an error that names the file to provide.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

__all__ = ["TORCHVISION_WEIGHTS", "load_imagenet_state_dict", "patch_first_conv", "hub_cache_path"]

logger = logging.getLogger(__name__)

# torchvision architecture name -> its ImageNet weight enum member.
TORCHVISION_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    "vgg16_bn": torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1,
}


def hub_cache_path(arch: str) -> Path:
    """Where torch hub keeps (or would keep) the ImageNet weights file of ``arch``."""
    url = TORCHVISION_WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"weights file '{path}' is not a loadable torch state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file '{path}' holds a {type(state).__name__}, expected a state dict")
    return state


def load_imagenet_state_dict(arch: str, weights_path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict of ``arch`` ('resnet50' or 'vgg16_bn').

    Looks, in order, at ``weights_path``, the torch hub cache, then downloads through the
    torchvision weight enum (unless ``LUNGSEG_OFFLINE=1``).

    Raises:
        FileNotFoundError: ``weights_path`` does not exist, or offline with no cached file; the
            message names the URL and where to put the file.
    """
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"no ImageNet weights known for '{arch}'; expected one of {sorted(TORCHVISION_WEIGHTS)}")
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"weights_path '{path}' does not exist; pass a torchvision {arch} state dict file")
        return _load_state_dict_file(path)
    cached = hub_cache_path(arch)
    if cached.is_file():
        return _load_state_dict_file(cached)
    url = TORCHVISION_WEIGHTS[arch].url
    hint = (
        f"download {url} on a machine with internet and either copy it to '{cached}' (the torch hub cache) "
        f"or pass weights_path=<file>; or use pretrained=False to train from scratch"
    )
    if os.environ.get("LUNGSEG_OFFLINE", "0") not in ("", "0"):
        raise FileNotFoundError(f"ImageNet weights for {arch} are not available offline (LUNGSEG_OFFLINE=1): {hint}")
    try:
        return TORCHVISION_WEIGHTS[arch].get_state_dict(progress=False)
    except Exception as e:
        raise FileNotFoundError(f"could not download ImageNet weights for {arch} ({type(e).__name__}: {e}): {hint}") from e


def patch_first_conv(conv: nn.Conv2d, in_channels: int) -> None:
    """Adapt a pretrained RGB first convolution to ``in_channels`` inputs, in place.

    One channel: the RGB kernels are summed, so a grey image gives the response the RGB network
    gave to the same grey image repeated three times. Other counts: the RGB kernels are cycled and
    rescaled by 3 / ``in_channels``.
    """
    if conv.in_channels == in_channels:
        return
    weight = conv.weight.detach()
    if in_channels == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        reps = [weight[:, i % weight.shape[1]] for i in range(in_channels)]
        new_weight = torch.stack(reps, dim=1) * (weight.shape[1] / in_channels)
    conv.in_channels = in_channels
    conv.weight = nn.Parameter(new_weight.contiguous())
