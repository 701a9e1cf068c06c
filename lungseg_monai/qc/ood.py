"""Out-of-distribution score of an image: how unlike the training radiographs its encoder features are.

The feature of an image is its encoder's bottleneck (the deepest feature map of the U-Net's
encoder: 2048 channels for ResNet50, 512 for VGG16) averaged over space. Over the training images
these features are summarised by their mean and their principal axes (:class:`FeatureDistribution`,
fitted at the end of training and stored in the model card). The score of a new image is a
Mahalanobis distance in that principal subspace plus the energy it has outside it (the residual),
each relative to the training images, so a photograph, a CT slice or a knee film, whose features
lie away from every training radiograph, scores far above any chest film. No extra training data
is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FeatureDistribution", "bottleneck_features", "encoder_of"]

# Principal axes kept: at most this many, and one per 4 training images, so that the training
# images do not fill the subspace (with one axis per image their residual would be zero and every
# new image would look far away).
MAX_COMPONENTS = 16
_SAMPLES_PER_COMPONENT = 4
# Eigenvalue floor, relative to the largest one: keeps a near-empty axis from dominating the distance.
_EIGENVALUE_FLOOR = 1e-6


def encoder_of(network: torch.nn.Module) -> torch.nn.Module | None:
    """The U-Net's encoder (``network.encoder``), or None for networks without one (TorchScript files)."""
    encoder = getattr(network, "encoder", None)
    if isinstance(encoder, torch.nn.Module) and not isinstance(network, torch.jit.ScriptModule):
        return encoder
    return None


@contextlib.contextmanager
def bottleneck_features(network: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect (B, C) pooled bottleneck features of every forward pass made inside the block.

    Example:
        >>> from lungseg_monai.networks import LungUNet
        >>> net = LungUNet("vgg16").eval()
        >>> with bottleneck_features(net) as feats:
        ...     _ = net(torch.zeros(2, 1, 64, 64))
        >>> feats[0].shape
        torch.Size([2, 512])
    """
    encoder = encoder_of(network)
    if encoder is None:
        raise ValueError(
            f"{type(network).__name__} has no encoder module to read features from; the out-of-distribution "
            "score needs the state-dict model (models/model.pt), not a TorchScript export"
        )
    collected: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, outputs: Any) -> None:
        deepest = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
        collected.append(deepest.float().mean(dim=(-2, -1)).detach().cpu())

    handle = encoder.register_forward_hook(hook)
    try:
        yield collected
    finally:
        handle.remove()


@dataclass
class FeatureDistribution:
    """Mean and principal axes of the training images' features, and the distance to them.

    Attributes:
        mean: (C,) mean feature.
        components: (K, C) principal axes (orthonormal rows).
        variances: (K,) variance along each axis.
        residual_variance: mean squared residual per channel outside the K axes.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float

    @classmethod
    def fit(cls, features: np.ndarray, max_components: int = MAX_COMPONENTS) -> FeatureDistribution:
        """Fit on (N, C) training features (N >= 2).

        Raises:
            ValueError: fewer than two feature vectors.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need at least 2 training feature vectors of shape (N, C), got {x.shape}")
        mean = x.mean(axis=0)
        centred = x - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        k = max(1, min(max_components, (x.shape[0] - 1) // _SAMPLES_PER_COMPONENT, vt.shape[0]))
        variances = singular[:k] ** 2 / (x.shape[0] - 1)
        variances = np.maximum(variances, variances[0] * _EIGENVALUE_FLOOR + 1e-12)
        residual = centred - centred @ vt[:k].T @ vt[:k]
        residual_variance = float((residual**2).sum() / ((x.shape[0] - 1) * max(x.shape[1] - k, 1)))
        return cls(mean, vt[:k], variances, max(residual_variance, 1e-12))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N, C) or (C,) features -> (N,) distances; a training image scores about 1.

        The mean of two parts, each about 1 for a training image: the squared Mahalanobis
        distance inside the principal subspace per axis, and the squared residual outside it per
        channel relative to the training residual. Square root of that mean.
        """
        x = np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean
        coords = x @ self.components.T
        inside = (coords**2 / self.variances).sum(axis=1)
        residual = x - coords @ self.components
        outside = (residual**2).sum(axis=1) / self.residual_variance
        k = self.components.shape[0]
        return np.sqrt((inside / k + outside / max(x.shape[1] - k, 1)) / 2.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (floats rounded to 6 significant digits)."""
        return {
            "mean": _rounded(self.mean),
            "components": [_rounded(c) for c in self.components],
            "variances": _rounded(self.variances),
            "residual_variance": float(f"{self.residual_variance:.6g}"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDistribution:
        return cls(
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["components"], dtype=np.float64),
            np.asarray(data["variances"], dtype=np.float64),
            float(data["residual_variance"]),
        )


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values).ravel()]
