"""A LungSegmenter around a one-weight network, for tests of what the outputs say (no training, no weights file)."""

from __future__ import annotations

import torch

from lungseg_monai.inference import LungSegmenter

STUB_CARD = {
    "image_size": 32,
    "intensity_percentiles": [0.5, 99.5],
    "intensity_mean": 0.449,
    "intensity_std": 0.226,
    "threshold": 0.5,
}


def stub_segmenter(weight: float = 1.0) -> LungSegmenter:
    """Lung wherever the normalised image is above its mean (a 1x1 convolution of weight ``weight`` > 0).

    Segmenters of different ``weight`` make the same masks but have different weights, so different identities.
    """
    network = torch.nn.Conv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        network.weight.fill_(weight)
        network.bias.zero_()
    return LungSegmenter(network, STUB_CARD, "cpu", postprocess=False)
