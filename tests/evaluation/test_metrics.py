"""Per-image metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungseg_monai.evaluation import segmentation_metrics, summarise


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_identical_masks_are_perfect() -> None:
    m = _square(32, 4, 4, 10)
    assert segmentation_metrics(m, m) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0}


def test_shifted_square_dice_iou_and_distances_in_pixels_and_mm() -> None:
    a, b = _square(40, 10, 10, 10), _square(40, 10, 12, 10)  # shifted 2 columns
    m = segmentation_metrics(a, b)
    assert m["dice"] == pytest.approx(2 * 80 / 200)
    assert m["iou"] == pytest.approx(80 / 120)
    assert m["hd95"] == pytest.approx(2.0)
    mm = segmentation_metrics(a, b, spacing=(0.5, 3.0))  # columns are 3 mm apart
    assert mm["hd95"] == pytest.approx(6.0)
    assert mm["dice"] == m["dice"]


def test_one_empty_mask_gives_infinite_distance() -> None:
    m = segmentation_metrics(np.zeros((8, 8), bool), _square(8, 1, 1, 3))
    assert m["dice"] == 0.0 and math.isinf(m["hd95"])


def test_summary_lists_worst_cases_first() -> None:
    rows = [{"name": n, "image": n, "dice": d, "iou": d, "hd95": 1.0, "assd": 1.0} for n, d in [("a", 0.9), ("b", 0.5), ("c", 0.99)]]
    s = summarise(rows, n_worst=2)
    assert [w["name"] for w in s["worst"]] == ["b", "a"]
    assert s["dice"]["median"] == pytest.approx(0.9)
