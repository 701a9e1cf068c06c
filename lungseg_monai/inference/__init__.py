"""Inference: trained model + training preprocessing -> lung masks at the input's own resolution.

``LungSegmenter`` turns a radiograph into a mask; ``segment_files`` runs it over files, folders
and DICOM studies and writes masks, overlays, NIfTI, DICOM SEG and measurements.
"""

from __future__ import annotations

from lungseg_monai.inference.discovery import (
    Discovery,
    InferenceInput,
    SkippedInput,
    classify_dicom,
    discover_inputs,
    inference_datalist,
)
from lungseg_monai.inference.calibrate import calibrate_model
from lungseg_monai.inference.predictor import LungSegmenter, ModelCard, is_torchscript_file, read_model_card
from lungseg_monai.inference.runner import (
    DEFAULT_FORMATS,
    FORMATS,
    InferenceSummary,
    output_path,
    parse_formats,
    segment_files,
)
from lungseg_monai.inference.transforms import (
    CleanLungMask,
    CleanLungMaskd,
    SaveLungMask,
    SaveLungMaskd,
    clean_lung_mask,
    mask_to_uint8_2d,
)

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "CleanLungMask",
    "CleanLungMaskd",
    "Discovery",
    "InferenceInput",
    "InferenceSummary",
    "LungSegmenter",
    "ModelCard",
    "SaveLungMask",
    "SaveLungMaskd",
    "SkippedInput",
    "calibrate_model",
    "classify_dicom",
    "clean_lung_mask",
    "discover_inputs",
    "inference_datalist",
    "is_torchscript_file",
    "mask_to_uint8_2d",
    "output_path",
    "parse_formats",
    "read_model_card",
    "segment_files",
]
