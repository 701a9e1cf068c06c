"""Per-image segmentation metrics at the image's own resolution, in mm when spacing is known."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from lungseg_monai.qc.mask import dice

__all__ = ["segmentation_metrics", "METRIC_NAMES"]

METRIC_NAMES = ("dice", "iou", "hd95", "assd")


def segmentation_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Dice, IoU, 95th-percentile Hausdorff distance and average symmetric surface distance.

    Args:
        prediction: binary (rows, columns) mask.
        reference: binary (rows, columns) mask of the same shape.
        spacing: (row, column) mm; None measures distances in pixels.

    Returns:
        ``{"dice", "iou", "hd95", "assd"}``. Two empty masks agree perfectly (1, 1, 0, 0); when
        exactly one is empty the distances are infinite.
    """
    pred = np.asarray(prediction).astype(bool)
    ref = np.asarray(reference).astype(bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} must have the same shape")
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0}
    dice_value = dice(pred, ref)
    iou = dice_value / (2 - dice_value)  # IoU = Dice / (2 - Dice) for the same pair of masks
    if not pred.any() or not ref.any():
        return {"dice": dice_value, "iou": iou, "hd95": math.inf, "assd": math.inf}
    y_pred = torch.from_numpy(pred)[None, None]
    y = torch.from_numpy(ref)[None, None]
    sp = None if spacing is None else [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=sp)
        assd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=sp)
    return {"dice": dice_value, "iou": iou, "hd95": float(hd95.item()), "assd": float(assd.item())}
