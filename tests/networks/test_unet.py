"""LungUNet and the torchvision encoders: shapes, registry, FlexibleUNet compatibility, weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from lungseg_monai.networks import (
    LungUNet,
    TorchvisionResNet50Encoder,
    TorchvisionVGG16Encoder,
    backbone_of_state_dict,
    hub_cache_path,
    load_imagenet_state_dict,
)

ENCODERS = {"resnet50": TorchvisionResNet50Encoder, "vgg16": TorchvisionVGG16Encoder}
TORCHVISION_ARCH = {"resnet50": torchvision.models.resnet50, "vgg16": torchvision.models.vgg16_bn}


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_encoder_gives_five_maps_at_strides_2_to_32(backbone: str) -> None:
    encoder = ENCODERS[backbone](in_channels=1).eval()
    with torch.no_grad():
        features = encoder(torch.zeros(1, 1, 64, 96))
    assert [f.shape[-2:] for f in features] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
    assert [f.shape[1] for f in features] == list(encoder.num_channels_per_output()[0])


def test_our_encoders_are_registered_without_replacing_monai_resnet50() -> None:
    registry = FLEXUNET_BACKBONE.register_dict
    assert registry["tv_resnet50"]["type"] is TorchvisionResNet50Encoder
    assert registry["tv_vgg16"]["type"] is TorchvisionVGG16Encoder
    assert registry["resnet50"]["type"].__module__.startswith("monai.")


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
@pytest.mark.parametrize("size", [(64, 64), (70, 45)])
def test_lung_unet_output_matches_any_input_size(backbone: str, size: tuple[int, int]) -> None:
    net = LungUNet(backbone=backbone).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_flexible_unet_with_our_backbone_shares_the_state_dict(backbone: str) -> None:
    ours = LungUNet(backbone=backbone).eval()
    flexible = FlexibleUNet(in_channels=1, out_channels=1, backbone=f"tv_{backbone}", spatial_dims=2).eval()
    flexible.load_state_dict(ours.state_dict())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), flexible(x), atol=1e-4)
    assert backbone_of_state_dict(ours.state_dict()) == backbone


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="backbone must be one of \\['resnet50', 'vgg16'\\], got 'vgg19'"):
        LungUNet(backbone="vgg19")


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_local_weights_file_sums_first_conv_and_keeps_the_rest(backbone: str, tmp_path) -> None:
    torch.manual_seed(0)
    reference = TORCHVISION_ARCH[backbone](weights=None)
    state = reference.state_dict()
    weights_file = tmp_path / f"{backbone}.pth"
    torch.save(state, weights_file)

    net = LungUNet(backbone=backbone, weights_path=weights_file)
    encoder_state = net.encoder.state_dict()
    first_conv = "conv1.weight" if backbone == "resnet50" else "features.0.weight"
    assert encoder_state[first_conv].shape[1] == 1
    torch.testing.assert_close(encoder_state[first_conv], state[first_conv].sum(dim=1, keepdim=True))
    compared = 0
    for key, value in encoder_state.items():
        if key != first_conv:
            torch.testing.assert_close(value, state[key])
            compared += 1
    assert compared > 50


def test_pretrained_offline_without_file_names_the_file_to_provide(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LUNGSEG_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = str(hub_cache_path("resnet50"))
    with pytest.raises(FileNotFoundError) as info:
        LungUNet(backbone="resnet50", pretrained=True)
    message = str(info.value)
    assert "https://download.pytorch.org/models/resnet50" in message
    assert expected in message and "weights_path" in message


def test_pretrained_reads_the_torch_hub_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LUNGSEG_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    state = torchvision.models.resnet50(weights=None).state_dict()
    cached = hub_cache_path("resnet50")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    loaded = load_imagenet_state_dict("resnet50")
    torch.testing.assert_close(loaded["fc.weight"], state["fc.weight"])


def test_missing_weights_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="weights_path '.*nope.pth' does not exist"):
        LungUNet(backbone="vgg16", weights_path=tmp_path / "nope.pth")
