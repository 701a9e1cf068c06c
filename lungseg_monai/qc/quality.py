"""The quality verdict of one mask: ``qc_status`` (pass / review / reject), ``qc_score``, ``qc_reasons``.

``qc_score`` estimates the mask's Dice against a careful human outline. It is a ridge regression
of the true Dice on the mask's plausibility features (:mod:`lungseg_monai.qc.mask`) and the
image's out-of-distribution distance (:mod:`lungseg_monai.qc.ood`), fitted on the validation split
at the end of training (:mod:`lungseg_monai.qc.calibration`) and stored in the model card under
``"qc"``. The status:

- ``reject``: the image is unlike every training radiograph (OOD distance above the calibrated
  limit), no lung was found, the mask is far from any training lung (two or more shape features
  out of range), or ``qc_score`` is below ``reject_below`` (0.80);
- ``review``: ``qc_score`` below ``review_below`` (0.90, or higher where the calibration raised it
  to catch the bad tail: :func:`lungseg_monai.qc.calibration.review_limit`), a shape feature
  outside the range of the training masks, or not two lung regions;
- ``pass``: none of these.

A model whose card has no ``"qc"`` calibration still segments; its results say ``unavailable``.
So does a model whose calibration cannot be vouched for (:func:`calibration_problem`): one fitted
on other weights (a card beside other weights, a crash between writing ``model.pt`` and
``model.json``), of another calibration version, or without the weights' hash. ``unavailable``
is not a pass: the gates that act on verdicts (``lungseg infer --fail-on``, ``--stow-to``,
``lungseg node``) stop it unless told to allow uncalibrated results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lungseg_monai.qc.mask import SHAPE_FEATURES, TTA_METHODS
from lungseg_monai.qc.ood import FeatureDistribution

__all__ = [
    "QC_PASS",
    "QC_REJECT",
    "QC_REVIEW",
    "QC_STATUSES",
    "QC_UNAVAILABLE",
    "CALIBRATION_VERSION",
    "QCResult",
    "QualityControl",
    "ScoreModel",
    "UncalibratedModelError",
    "calibration_digest",
    "calibration_problem",
    "out_of_range",
]

QC_PASS, QC_REVIEW, QC_REJECT, QC_UNAVAILABLE = "pass", "review", "reject", "unavailable"
QC_STATUSES = (QC_PASS, QC_REVIEW, QC_REJECT, QC_UNAVAILABLE)
_SEVERITY = {QC_UNAVAILABLE: -1, QC_PASS: 0, QC_REVIEW: 1, QC_REJECT: 2}
# Masks with an estimated Dice below these are reviewed / rejected. Two annotator groups agree at
# a median Dice of about 0.95 on this kind of data; below 0.90 a mask is visibly off.
REVIEW_BELOW = 0.90
REJECT_BELOW = 0.80
# A shape feature counts as out of range beyond the training [min, max] widened by this share of
# the range on each side; this many features out of range reject the mask.
RANGE_MARGIN = 0.10
REJECT_OUT_OF_RANGE = 2
EXPECTED_REGIONS = 2
# Version of the card's "qc" entry. 2: it records the SHA-256 of the weights it was fitted on
# (``weights_sha256``); a version 1 calibration cannot be tied to its weights and is not used.
CALIBRATION_VERSION = 2
# Hex digits of a calibration's hash kept in the output settings.
_DIGEST_CHARS = 16
_FEATURE_WORDS = {
    "lung_fraction": "lung fraction",
    "side_ratio": "smaller/larger lung ratio",
    "centre_row": "vertical position of the lungs",
    "centre_column": "horizontal position of the lungs",
    "top": "top of the lungs",
    "bottom": "bottom of the lungs",
    "solidity": "solidity",
}


@dataclass(frozen=True)
class QCResult:
    """A mask's quality verdict.

    Attributes:
        status: ``pass``, ``review``, ``reject`` or ``unavailable`` (the model has no QC calibration).
        score: estimated Dice (0..1), or None when unavailable or the input was refused.
        reasons: why it is not a pass, in words (empty for a pass).
        features: the measured features (for reports and debugging).
    """

    status: str
    score: float | None = None
    reasons: tuple[str, ...] = ()
    features: Mapping[str, float] = field(default_factory=dict)

    def reasons_text(self) -> str:
        """The reasons joined with ``"; "`` (the ``qc_reasons`` column)."""
        return "; ".join(self.reasons)

    def as_row(self) -> dict[str, Any]:
        """The ``qc_status``, ``qc_score`` and ``qc_reasons`` columns."""
        return {
            "qc_status": self.status,
            "qc_score": "" if self.score is None else round(float(self.score), 4),
            "qc_reasons": self.reasons_text(),
        }

    def at_least(self, status: str) -> bool:
        """True when this verdict is ``status`` or worse (``reject`` is worse than ``review``)."""
        return _SEVERITY[self.status] >= _SEVERITY[status]

    @classmethod
    def refused(cls, reason: str) -> QCResult:
        """The verdict of an input refused before the network."""
        return cls(QC_REJECT, None, (reason,))

    @classmethod
    def unavailable(cls, reason: str) -> QCResult:
        return cls(QC_UNAVAILABLE, None, (reason,))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QCResult:
        """The verdict :meth:`as_row` wrote (features are not kept).

        Raises:
            ValueError: an unknown ``qc_status``.
        """
        status = str(row.get("qc_status", ""))
        if status not in _SEVERITY:
            raise ValueError(f"unknown qc_status {status!r}; expected one of {', '.join(QC_STATUSES)}")
        score = row.get("qc_score")
        reasons = str(row.get("qc_reasons") or "")
        return cls(status, None if score in (None, "") else float(score), tuple(reasons.split("; ")) if reasons else ())


@dataclass
class ScoreModel:
    """Ridge regression of Dice on standardised features: ``qc_score = clip(b + w . (x - mu) / sd, 0, 1)``."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], target: Sequence[float], names: Sequence[str], alpha: float = 1.0) -> ScoreModel:
        """Fit on feature rows and true Dice values (ridge penalty ``alpha`` on standardised features)."""
        x = np.asarray([[float(r[n]) for n in names] for r in rows], dtype=np.float64)
        y = np.asarray(target, dtype=np.float64)
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 validation images to fit qc_score, got {x.shape[0]}")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        intercept = float(y.mean())
        weights = np.linalg.solve(z.T @ z + alpha * np.eye(len(names)), z.T @ (y - intercept))
        return cls(tuple(names), mean, scale, weights, intercept)

    def predict(self, features: Mapping[str, float]) -> float:
        x = np.asarray([float(features[n]) for n in self.names], dtype=np.float64)
        return float(np.clip(self.intercept + ((x - self.mean) / self.scale) @ self.weights, 0.0, 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreModel:
        return cls(
            tuple(data["features"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            np.asarray(data["weights"], dtype=np.float64),
            float(data["intercept"]),
        )


class UncalibratedModelError(ValueError):
    """A gate was asked to act on quality verdicts with a model whose QC is unavailable.

    Args:
        reason: why QC is unavailable (:func:`calibration_problem`).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"quality control is unavailable: {reason}. Results would go out unchecked, with QC verdict "
            "'unavailable'; calibrate the model (python -m monai.bundle run calibrate_qc ...) or, to send them "
            "anyway, pass --allow-uncalibrated"
        )
        self.reason = reason


def calibration_digest(calibration: Mapping[str, Any] | None) -> str | None:
    """A short hash of a ``"qc"`` calibration (None for none): outputs made under another calibration are redone."""
    if not calibration:
        return None
    text = json.dumps(calibration, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def calibration_problem(calibration: Mapping[str, Any] | None, weights_sha256: str) -> str | None:
    """Why a model card's ``"qc"`` calibration cannot be used with these weights, or None when it can.

    Args:
        calibration: the card's ``"qc"`` entry (None or empty: the model was never calibrated).
        weights_sha256: SHA-256 of the weights the model runs with
            (:func:`lungseg_monai.inference.predictor.weights_sha256`).
    """
    fix = "recalibrate it (the bundle's calibrate_qc) or retrain"
    if not calibration:
        return "the model has no QC calibration (run the bundle's calibrate_qc, or retrain)"
    version = calibration.get("version")
    if version != CALIBRATION_VERSION:
        return (
            f"the model's QC calibration is version {version!r}, this lungseg_monai reads version "
            f"{CALIBRATION_VERSION}; {fix}"
        )
    fitted_on = calibration.get("weights_sha256")
    if fitted_on != weights_sha256:
        return (
            f"the model's QC calibration was fitted on other weights (sha256 {str(fitted_on)[:12]}..., these weights "
            f"are {weights_sha256[:12]}...): the model card does not belong to this model file; {fix}"
        )
    return None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def out_of_range(
    features: Mapping[str, float], ranges: Mapping[str, Sequence[float]], margin: float = RANGE_MARGIN
) -> list[str]:
    """Reasons for the shape features outside their training [min, max], widened by ``margin`` x the range."""
    reasons = []
    for name in SHAPE_FEATURES:
        if name not in ranges or name not in features:
            continue
        low, high = (float(v) for v in ranges[name])
        pad = margin * (high - low)
        value = float(features[name])
        if not low - pad <= value <= high + pad:
            reasons.append(
                f"{_FEATURE_WORDS.get(name, name)} {_fmt(value)} outside the training range {_fmt(low)}-{_fmt(high)}"
            )
    return reasons


class QualityControl:
    """Turns a mask's features into a :class:`QCResult`, with a model's calibration.

    Args:
        calibration: the model card's ``"qc"`` entry (written by :func:`lungseg_monai.qc.calibrate`).
    """

    def __init__(self, calibration: Mapping[str, Any]) -> None:
        self.calibration = dict(calibration)
        self.distribution = FeatureDistribution.from_dict(calibration["features"])
        self.ood_threshold = float(calibration["ood_threshold"])
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in calibration["ranges"].items()}
        self.score_model = ScoreModel.from_dict(calibration["score_model"])
        self.review_below = float(calibration.get("review_below", REVIEW_BELOW))
        self.reject_below = float(calibration.get("reject_below", REJECT_BELOW))
        self.range_margin = float(calibration.get("range_margin", RANGE_MARGIN))
        self.tta = bool(calibration.get("tta", True))
        # Calibrations written before the "features" method have no key: their tta_dice came from the input.
        self.tta_method = str(calibration.get("tta_method", "input"))
        if self.tta_method not in TTA_METHODS:
            raise ValueError(f"unknown tta_method {self.tta_method!r} in the QC calibration; expected one of {TTA_METHODS}")

    def out_of_range(self, features: Mapping[str, float]) -> list[str]:
        """Reasons for shape features outside the training range (widened by the margin)."""
        return out_of_range(features, self.ranges, self.range_margin)

    def score_features(self, features: Mapping[str, float], image_features: np.ndarray | None) -> dict[str, float]:
        """``features`` plus ``ood_distance`` and ``n_out_of_range``, the inputs of the score model."""
        out = dict(features)
        if image_features is not None:
            out["ood_distance"] = float(self.distribution.distance(image_features)[0])
        out["n_out_of_range"] = float(len(self.out_of_range(features)))
        return out

    def assess(self, features: Mapping[str, float], image_features: np.ndarray | None) -> QCResult:
        """The verdict for one mask.

        Args:
            features: :func:`lungseg_monai.qc.mask.mask_features` of the mask on the network grid
                (with ``tta_dice`` when the calibration uses test-time perturbation).
            image_features: (C,) pooled bottleneck features of the image (:func:`bottleneck_features`);
                None when the network exposes none (the OOD check is then skipped and said so).
        """
        full = self.score_features(features, image_features)
        status, reasons = QC_PASS, []

        def worse(new: str, reason: str) -> None:
            nonlocal status
            if _SEVERITY[new] > _SEVERITY[status]:
                status = new
            reasons.append(reason)

        if "ood_distance" in full:
            if full["ood_distance"] > self.ood_threshold:
                worse(
                    QC_REJECT,
                    f"image unlike the training radiographs (OOD distance {_fmt(full['ood_distance'])} > "
                    f"{_fmt(self.ood_threshold)}): not a frontal chest radiograph?",
                )
        else:
            worse(QC_REVIEW, "out-of-distribution check unavailable for this model file")
        missing = [n for n in self.score_model.names if n not in full]
        score = None if missing else self.score_model.predict(full)
        if full["lung_fraction"] <= 0:
            worse(QC_REJECT, "no lung found")
            return QCResult(status, 0.0 if score is not None else None, tuple(reasons), full)
        if int(full["n_regions"]) != EXPECTED_REGIONS:
            worse(QC_REVIEW, f"{int(full['n_regions'])} lung region(s) predicted, expected {EXPECTED_REGIONS}")
        range_reasons = self.out_of_range(full)
        for reason in range_reasons:
            worse(QC_REJECT if len(range_reasons) >= REJECT_OUT_OF_RANGE else QC_REVIEW, reason)
        if score is not None and score < self.reject_below:
            worse(QC_REJECT, f"estimated Dice {score:.2f} < {self.reject_below:.2f}")
        elif score is not None and score < self.review_below:
            worse(QC_REVIEW, f"estimated Dice {score:.2f} < {self.review_below:.2f}")
        return QCResult(status, score, tuple(reasons), full)
