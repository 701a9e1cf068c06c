"""Mask plausibility features, on real reference masks and on small synthetic shapes (said so in the name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA

from lungseg_monai.io import read_mask
from lungseg_monai.qc.mask import dice, feature_ranges, mask_features, perturb, unperturb


def _two_lungs_synthetic(size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[10:50, 8:28] = 1
    m[12:50, 36:52] = 1
    return m


def test_features_of_synthetic_two_lungs() -> None:
    f = mask_features(_two_lungs_synthetic())
    assert f["n_regions"] == 2
    assert f["lung_fraction"] == pytest.approx((40 * 20 + 38 * 16) / 64**2)
    assert f["side_ratio"] == pytest.approx(38 * 16 / (40 * 20))
    assert f["top"] == pytest.approx(10 / 63) and f["bottom"] == pytest.approx(49 / 63)
    assert f["solidity"] == pytest.approx(1.0)
    assert "soft_dice" not in f  # no probabilities given


def test_empty_mask_has_zero_area_and_no_lung_side() -> None:
    f = mask_features(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.float32))
    assert f["lung_fraction"] == 0 and f["side_ratio"] == 0 and f["n_regions"] == 0


def test_soft_dice_is_one_for_certain_probabilities_and_lower_for_hesitant_synthetic() -> None:
    m = _two_lungs_synthetic()
    certain = mask_features(m, m.astype(np.float32))
    hesitant = mask_features(m, np.where(m > 0, 0.6, 0.3).astype(np.float32))
    assert certain["soft_dice"] == pytest.approx(1.0, abs=1e-5) and certain["uncertain_share"] == 0
    assert hesitant["soft_dice"] < 0.8
    assert hesitant["uncertain_share"] == pytest.approx(64 * 64 / m.sum())


def test_a_one_sided_mask_has_side_ratio_zero_synthetic() -> None:
    m = np.zeros((64, 64), np.uint8)
    m[10:50, 5:25] = 1
    assert mask_features(m)["side_ratio"] == 0.0


def test_perturbation_round_trip_keeps_a_mask_inside_the_valid_area_synthetic() -> None:
    m = torch.from_numpy(_two_lungs_synthetic(128).astype(np.float32))[None, None]
    back, valid = unperturb(perturb(m))
    agreement = dice((back[0, 0] >= 0.5).numpy() & (valid[0, 0] > 0).numpy(), m[0, 0].numpy() * valid[0, 0].numpy())
    assert agreement > 0.97
    assert 0.75 < float(valid.mean()) < 1.0  # the zoom loses the rim


def test_feature_ranges_of_the_shipped_reference_masks() -> None:
    masks = sorted((SAMPLE_DATA / "masks").glob("*.png"))[:10]
    ranges = feature_ranges(mask_features(read_mask(p).pixels) for p in masks)
    low, high = ranges["lung_fraction"]
    assert 0.05 < low <= high < 0.8
    assert 0.3 < ranges["side_ratio"][0] <= ranges["side_ratio"][1] <= 1.0
    with pytest.raises(ValueError, match="at least one reference mask"):
        feature_ranges([])
