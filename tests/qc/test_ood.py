"""The feature distribution behind the out-of-distribution score: fitting, distances, storage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lungseg_monai.networks import LungUNet
from lungseg_monai.qc.ood import FeatureDistribution, bottleneck_features, encoder_of


def test_training_like_features_score_about_one_and_shifted_ones_far_synthetic() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 64))
    train = rng.normal(size=(200, 8)) @ basis + 0.1 * rng.normal(size=(200, 64))
    new_inlier = rng.normal(size=(50, 8)) @ basis + 0.1 * rng.normal(size=(50, 64))
    outlier = new_inlier + 3.0 * rng.normal(size=(50, 64))
    dist = FeatureDistribution.fit(train)
    assert dist.components.shape == (16, 64)
    inside = dist.distance(new_inlier)
    assert 0.5 < np.median(inside) < 2.0
    assert dist.distance(outlier).min() > 3 * inside.max()


def test_components_stay_below_a_quarter_of_the_training_images_synthetic() -> None:
    dist = FeatureDistribution.fit(np.random.default_rng(1).normal(size=(18, 32)))
    assert dist.components.shape[0] == 4
    with pytest.raises(ValueError, match="at least 2"):
        FeatureDistribution.fit(np.zeros((1, 32)))


def test_round_trip_through_json_keeps_distances_synthetic() -> None:
    x = np.random.default_rng(2).normal(size=(40, 16))
    dist = FeatureDistribution.fit(x)
    again = FeatureDistribution.from_dict(json.loads(json.dumps(dist.to_dict())))
    np.testing.assert_allclose(again.distance(x), dist.distance(x), rtol=1e-4)


@pytest.mark.parametrize("backbone,channels", [("resnet50", 2048), ("vgg16", 512)])
def test_bottleneck_hook_collects_pooled_features_and_leaves_no_hook(backbone: str, channels: int) -> None:
    net = LungUNet(backbone).eval()
    with torch.inference_mode(), bottleneck_features(net) as feats:
        logits = net(torch.zeros(2, 1, 64, 64))
    assert feats[0].shape == (2, channels)
    assert logits.shape == (2, 1, 64, 64)
    assert not encoder_of(net)._forward_hooks


def test_no_encoder_means_a_clear_error() -> None:
    with pytest.raises(ValueError, match="TorchScript"), bottleneck_features(torch.nn.Conv2d(1, 1, 1)):
        pass
