"""Inference: trained model + training preprocessing -> lung masks at the input's own resolution.

``LungSegmenter`` turns a radiograph into a mask; ``segment_files`` runs it over files, folders
and DICOM studies and writes masks, overlays, NIfTI, DICOM SEG and measurements.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> submodule defining it. Imported on first use (PEP 562): `lungseg infer --help`
# needs none of them, and `LungSegmenter` needs neither the runner's DICOM nor output writers.
_EXPORTS = {
    "Discovery": "discovery",
    "InferenceInput": "discovery",
    "SkippedInput": "discovery",
    "classify_dicom": "discovery",
    "discover_inputs": "discovery",
    "inference_datalist": "discovery",
    "calibrate_model": "calibrate",
    "LungSegmenter": "predictor",
    "ModelCard": "predictor",
    "is_torchscript_file": "predictor",
    "read_model_card": "predictor",
    "PRECISIONS": "precision",
    "Precision": "precision",
    "PrecisionInferer": "precision",
    "resolve_precision": "precision",
    "DEFAULT_FORMATS": "runner",
    "FORMATS": "runner",
    "InferenceSummary": "runner",
    "output_path": "runner",
    "parse_formats": "runner",
    "segment_files": "runner",
    "CleanLungMask": "transforms",
    "CleanLungMaskd": "transforms",
    "SaveLungMask": "transforms",
    "SaveLungMaskd": "transforms",
    "clean_lung_mask": "transforms",
    "mask_postprocessing": "transforms",
    "mask_to_uint8_2d": "transforms",
}

__all__ = [
    "PRECISIONS",
    "Precision",
    "PrecisionInferer",
    "resolve_precision",
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
    "mask_postprocessing",
    "mask_to_uint8_2d",
    "output_path",
    "parse_formats",
    "read_model_card",
    "segment_files",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
