"""Calibrate a trained model's quality control and store it in its model card (``model.json``).

The bundle's ``calibrate_qc`` id (run at the end of ``training``, or on its own) calls
:func:`calibrate_model`; the fitting itself is :func:`lungseg_monai.qc.calibration.calibrate`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lungseg_monai.inference.predictor import LungSegmenter
from lungseg_monai.utils.atomic import atomic_path
from lungseg_monai.qc.calibration import QC_CARD_KEY, calibrate

__all__ = ["calibrate_model"]

logger = logging.getLogger(__name__)

# The fewest training images the feature distribution is fitted on.
MIN_IMAGES = 2
# The fewest held-out validation images the OOD limit and the score regression are fitted on by default.
# A handful of films (a first MONAI Label round) cannot say where the bad tail starts: such a model
# publishes no calibration, so its verdicts are 'unavailable' and the gates stop them.
MIN_VALIDATION_IMAGES = 20


def calibrate_model(
    model_path: str | os.PathLike,
    datalists: Mapping[str, Sequence[Mapping[str, Any]]],
    device: str | torch.device | None = None,
    tta: bool = True,
    min_validation: int = MIN_VALIDATION_IMAGES,
) -> Path | None:
    """Calibrate the model at ``model_path`` on ``datalists["training"]``/``["validation"]``; update its ``model.json``.

    Args:
        model_path: the trained ``models/model.pt`` (``model.json`` beside it).
        datalists: the training's split.
        device: where the model runs.
        tta: use the test-time perturbation agreement.
        min_validation: the fewest held-out validation images to calibrate on (at least 2).

    Returns:
        The model card file written, or None (with a warning) when the split cannot calibrate
        honestly: fewer than 2 training or ``min_validation`` validation images, or validation
        images that are also training images (a fine-tune on a few labels validates on its own
        training labels). The card's old calibration, if any, is removed: the model then has no
        QC and its verdicts say ``unavailable``.

    Raises:
        FileNotFoundError: no ``model.json`` beside the model (calibration is stored there).
    """
    model_path = Path(model_path)
    training, validation = list(datalists.get("training", ())), list(datalists.get("validation", ()))
    seen = {str(item["image"]) for item in training}
    overlap = sum(str(item["image"]) in seen for item in validation)
    needed = max(MIN_IMAGES, int(min_validation))
    if len(training) < MIN_IMAGES or len(validation) < needed or overlap:
        # A training on a handful of images (a first MONAI Label round) still publishes its model.
        logger.warning(
            "QC not calibrated for '%s': needs at least %d training and %d held-out validation images, got %d and "
            "%d (%d of them training images too); its quality verdicts will say 'unavailable' and --fail-on, "
            "--stow-to and lungseg node stop them unless --allow-uncalibrated",
            model_path,
            MIN_IMAGES,
            needed,
            len(training),
            len(validation),
            overlap,
        )
        _drop_calibration(model_path.with_suffix(".json"))
        return None
    card_path = model_path.with_suffix(".json")
    if not card_path.is_file():
        raise FileNotFoundError(
            f"no model card '{card_path}' beside '{model_path}'; QC calibration is stored there (train through the bundle)"
        )
    segmenter = LungSegmenter.from_model(model_path, device=device)
    calibration = calibrate(segmenter, datalists["training"], datalists["validation"], tta=tta)
    card = json.loads(card_path.read_text())
    card[QC_CARD_KEY] = calibration
    with atomic_path(card_path) as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1))
    logger.info("QC calibration written to '%s'", card_path)
    return card_path


def _drop_calibration(card_path: Path) -> None:
    """Remove a ``"qc"`` entry left in ``card_path`` by an earlier training (it belongs to other weights)."""
    if not card_path.is_file():
        return
    card = json.loads(card_path.read_text())
    if card.pop(QC_CARD_KEY, None) is not None:
        with atomic_path(card_path) as tmp:
            Path(tmp).write_text(json.dumps(card, indent=1))
