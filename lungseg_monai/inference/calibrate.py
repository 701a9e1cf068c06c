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
from lungseg_monai.outputs.atomic import atomic_path
from lungseg_monai.qc.calibration import QC_CARD_KEY, calibrate

__all__ = ["calibrate_model"]

logger = logging.getLogger(__name__)

# The fewest training and validation images a calibration can be fitted on.
MIN_IMAGES = 2


def calibrate_model(
    model_path: str | os.PathLike,
    datalists: Mapping[str, Sequence[Mapping[str, Any]]],
    device: str | torch.device | None = None,
    tta: bool = True,
) -> Path | None:
    """Calibrate the model at ``model_path`` on ``datalists["training"]``/``["validation"]``; update its ``model.json``.

    Returns:
        The model card file written, or None (with a warning) when the split is too small to
        calibrate on (fewer than 2 training or validation images): the model then has no QC.

    Raises:
        FileNotFoundError: no ``model.json`` beside the model (calibration is stored there).
    """
    model_path = Path(model_path)
    n_training, n_validation = len(datalists.get("training", ())), len(datalists.get("validation", ()))
    if n_training < MIN_IMAGES or n_validation < MIN_IMAGES:
        # A training on a handful of images (a first MONAI Label round) still publishes its model.
        logger.warning(
            "QC not calibrated for '%s': needs at least %d training and %d validation images, got %d and %d; "
            "its quality verdicts will say 'unavailable'",
            model_path,
            MIN_IMAGES,
            MIN_IMAGES,
            n_training,
            n_validation,
        )
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
