"""Evaluation at the original image resolution: per-image metrics and the report handler."""

from __future__ import annotations

from lungseg_monai.evaluation.metrics import METRIC_NAMES, segmentation_metrics
from lungseg_monai.evaluation.report import SegmentationReport, summarise

__all__ = ["METRIC_NAMES", "SegmentationReport", "segmentation_metrics", "summarise"]
