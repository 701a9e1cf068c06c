"""Plausibility features of a predicted lung mask and of the probabilities it came from.

Everything is measured on the network's own grid (``image_size`` x ``image_size``), where the
probabilities live, so a feature means the same for a 300 px and a 3000 px film:

========================  =====================================================================
``n_regions``             lung regions above 0.5% of the image in the raw thresholded prediction
``lung_fraction``         share of the image covered by lung
``side_ratio``            smaller lung area / larger lung area (0 when one side is empty)
``centre_row``            row of the lung centre of mass, 0 (top) to 1 (bottom)
``centre_column``         column of the lung centre of mass, 0 (left) to 1 (right)
``top``, ``bottom``       highest and lowest lung row, 0 to 1
``solidity``              lung area / area of the convex hulls of the two lungs
``uncertain_share``       pixels with probability in (0.1, 0.9), relative to the lung area
``soft_dice``             Dice of the mask with its own probability map: an estimate of Dice
``tta_dice``              Dice with the mask decoded from slightly zoomed and shifted encoder features
                          (``tta_method`` ``"features"``, :func:`perturb_features`) or predicted on a
                          slightly zoomed and shifted input (``"input"``, calibrations before 2026-12)
========================  =====================================================================

The ranges of the shape features over the training masks are the reference
(:func:`feature_ranges`): a mask outside them by more than a margin is not like any lung the
model was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from scipy import ndimage
from skimage.morphology import convex_hull_image

__all__ = [
    "DEFAULT_TTA_METHOD",
    "SHAPE_FEATURES",
    "TTA_METHODS",
    "TTA_SCALE",
    "TTA_SHIFT",
    "dice",
    "feature_ranges",
    "mask_features",
    "perturb",
    "perturb_features",
    "unperturb",
]

SHAPE_FEATURES = ("lung_fraction", "side_ratio", "centre_row", "centre_column", "top", "bottom", "solidity")
# Probabilities between these count as uncertain.
UNCERTAIN_LOW, UNCERTAIN_HIGH = 0.1, 0.9
# A region of the raw prediction counts as a lung region above this fraction of the image (the
# same limit as the mask clean-up, CleanLungMask).
MIN_REGION_FRACTION = 0.005
# Test-time perturbation: zoom in by 6% and shift by 3% of the side, small next to the training
# augmentation (scale +-15%, shift +-8%), so a confident model hardly changes its mask.
TTA_SCALE = 1.06
TTA_SHIFT = 0.03
# How quality control makes the perturbed mask behind ``tta_dice``: "features" decodes the encoder
# features of the same pass once more, warped (about a fifth of a network pass with VGG16 at 128 px);
# "input" runs the whole network on a warped input (a second full pass; calibrations before 2026-12).
TTA_METHODS = ("features", "input")
DEFAULT_TTA_METHOD = "features"
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)
_EPS = 1e-6


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks of the same shape (1.0 when both are empty): MONAI's ``compute_dice``.

    The one Dice of the package: evaluation, QC, calibration and the scripts call it.

    Example:
        >>> dice(np.eye(3), np.eye(3)), dice(np.zeros((2, 2)), np.zeros((2, 2)))
        (1.0, 1.0)
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape}: Dice needs the same shape")
    if not a.any() and not b.any():
        return 1.0
    pair = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    value = compute_dice(*pair, include_background=True, ignore_empty=False)
    return float(value.item())


def _theta(batch: int, scale: float, shift: float, inverse: bool, device: torch.device) -> torch.Tensor:
    """Affine grids for ``F.affine_grid``: output pixel -> input pixel, normalised coordinates."""
    if inverse:
        a, t = scale, -shift * scale
    else:
        a, t = 1.0 / scale, shift
    theta = torch.tensor([[a, 0.0, t], [0.0, a, t]], dtype=torch.float32, device=device)
    return theta.unsqueeze(0).expand(batch, 2, 3)


def perturb(batch: torch.Tensor, scale: float = TTA_SCALE, shift: float = TTA_SHIFT) -> torch.Tensor:
    """(B, C, H, W) inputs zoomed in by ``scale`` and shifted by ``shift`` (fraction of the half side)."""
    theta = _theta(batch.shape[0], scale, shift, inverse=False, device=batch.device)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def perturb_features(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """An encoder's feature maps (finest first) with all but the finest :func:`perturb`-ed.

    Decoding them asks whether the deep features and the finest skip connection agree on where the
    lungs are: a confident model follows its edges either way, an unsure one moves with the warp.
    The decoded probabilities map back with :func:`unperturb` like those of a perturbed input.
    """
    return [features[0], *(perturb(f).to(f.dtype) for f in features[1:])]


def unperturb(
    probability: torch.Tensor, scale: float = TTA_SCALE, shift: float = TTA_SHIFT
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map (B, 1, H, W) probabilities of :func:`perturb`-ed inputs back; returns (probabilities, valid).

    ``valid`` is 1 where the perturbed input saw the original image (the zoom loses the rim).
    """
    theta = _theta(probability.shape[0], scale, shift, inverse=True, device=probability.device)
    grid = F.affine_grid(theta, list(probability.shape), align_corners=False)
    back = F.grid_sample(probability.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = (grid.abs() <= 1.0).all(dim=-1, keepdim=True).permute(0, 3, 1, 2).float()
    return back, valid


def _region_count(raw: np.ndarray) -> int:
    labels, count = ndimage.label(raw, structure=_STRUCTURE_8)
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return int((sizes >= MIN_REGION_FRACTION * raw.size).sum())


def _sides(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask split into its image-left and image-right lung at the column between the two largest regions."""
    labels, count = ndimage.label(mask, structure=_STRUCTURE_8)
    columns = mask.shape[1]
    if count >= 2:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        largest = np.argsort(-sizes, kind="stable")[:2] + 1
        centres = [np.nonzero(labels == k)[1].mean() for k in largest]
        divide = int(round(float(np.mean(centres))))
    else:
        divide = columns // 2
    left, right = mask.copy(), mask.copy()
    left[:, divide:] = False
    right[:, :divide] = False
    return left, right


def _solidity(left: np.ndarray, right: np.ndarray) -> float:
    area = int(left.sum()) + int(right.sum())
    hull = sum(int(convex_hull_image(side).sum()) for side in (left, right) if side.any())
    return area / hull if hull else 0.0


def mask_features(
    mask: np.ndarray,
    probability: np.ndarray | None = None,
    tta_probability: np.ndarray | None = None,
    tta_valid: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Plausibility features (see the module docstring) of a mask on the network grid.

    Args:
        mask: (h, w) final mask (after clean-up); non-zero is lung.
        probability: (h, w) lung probabilities the mask came from; None for a reference mask
            (then ``n_regions`` counts the mask's own regions and the probability features are absent).
        tta_probability: (h, w) probabilities of the perturbed input mapped back (:func:`unperturb`).
        tta_valid: (h, w) where ``tta_probability`` is defined.
        threshold: the model's threshold.

    Returns:
        {feature name: value}.

    Example:
        >>> m = np.zeros((64, 64), np.uint8); m[10:50, 8:28] = 1; m[10:50, 36:56] = 1
        >>> f = mask_features(m)
        >>> f["n_regions"], round(f["lung_fraction"], 3), f["side_ratio"], f["solidity"]
        (2.0, 0.391, 1.0, 1.0)
    """
    lung = np.asarray(mask) != 0
    rows, columns = lung.shape
    area = int(lung.sum())
    raw = lung if probability is None else np.asarray(probability) >= threshold
    features: dict[str, float] = {"n_regions": float(_region_count(raw)), "lung_fraction": area / lung.size}
    if area:
        left, right = _sides(lung)
        sides = sorted((int(left.sum()), int(right.sum())))
        r, c = np.nonzero(lung)
        features.update(
            side_ratio=sides[0] / sides[1] if sides[1] else 0.0,
            centre_row=float(r.mean()) / (rows - 1 or 1),
            centre_column=float(c.mean()) / (columns - 1 or 1),
            top=float(r.min()) / (rows - 1 or 1),
            bottom=float(r.max()) / (rows - 1 or 1),
            solidity=_solidity(left, right),
        )
    else:
        features.update(side_ratio=0.0, centre_row=0.5, centre_column=0.5, top=0.5, bottom=0.5, solidity=0.0)
    if probability is not None:
        p = np.asarray(probability, dtype=np.float64)
        uncertain = np.count_nonzero((p > UNCERTAIN_LOW) & (p < UNCERTAIN_HIGH))
        features["uncertain_share"] = uncertain / max(area, 1)
        features["soft_dice"] = 2.0 * float((p * lung).sum()) / (float(p.sum()) + area + _EPS)
    if tta_probability is not None:
        valid = np.ones_like(lung) if tta_valid is None else np.asarray(tta_valid) > 0.5
        features["tta_dice"] = dice(lung & valid, (np.asarray(tta_probability) >= threshold) & valid)
    return features


def feature_ranges(samples: Iterable[Mapping[str, float]], names: Sequence[str] = SHAPE_FEATURES) -> dict[str, list[float]]:
    """[min, max] of each shape feature over reference masks (the training masks)."""
    values: dict[str, list[float]] = {name: [] for name in names}
    for sample in samples:
        for name in names:
            values[name].append(float(sample[name]))
    if not all(values.values()):
        raise ValueError("feature_ranges needs at least one reference mask")
    return {name: [min(v), max(v)] for name, v in values.items()}
