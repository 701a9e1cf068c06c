"""Inference: trained model + training preprocessing -> lung masks at the input's own resolution."""

from __future__ import annotations

from lungseg_monai.inference.predictor import LungSegmenter, ModelCard, read_model_card

__all__ = ["LungSegmenter", "ModelCard", "read_model_card"]
