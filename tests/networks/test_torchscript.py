"""LungUNet scripts with TorchScript (what ``monai.bundle ckpt_export`` does) and keeps its outputs."""

from __future__ import annotations

import pytest
import torch

from lungseg_monai.networks import LungUNet


# resnet50 is scripted by the bundle export test (tests/inference/test_torchscript_export.py).
@pytest.mark.parametrize("backbone", ["vgg16"])
def test_scripted_lungunet_matches_eager_on_unpadded_sizes_synthetic(backbone: str) -> None:
    torch.manual_seed(0)
    network = LungUNet(backbone=backbone).eval()
    scripted = torch.jit.script(network)
    inputs = torch.randn(2, 1, 45, 70)  # not multiples of 32: exercises the padding and the crop
    with torch.inference_mode():
        eager_out, scripted_out = network(inputs), scripted(inputs)
    assert tuple(scripted_out.shape) == (2, 1, 45, 70)
    torch.testing.assert_close(scripted_out, eager_out, rtol=0, atol=0)
    assert scripted.backbone_name == backbone
