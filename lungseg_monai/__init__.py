"""lungseg_monai: lung segmentation of chest radiographs as a MONAI plugin.

The pipeline, one module per step: ``io`` (reading PNG/JPEG/DICOM/MetaImage/NIfTI) ->
``transforms`` (MONAI transforms) -> ``data`` (datalists, splits) -> ``networks`` (VGG16/ResNet50
U-Nets) -> ``engine`` (training handlers, checkpoints) -> ``evaluation`` (metrics, reports) ->
``outputs`` (masks, overlays).
"""

from __future__ import annotations

from lungseg_monai import bundle_utils, data, engine, evaluation, io, networks, outputs, transforms

__version__ = "0.1.0"

__all__ = ["__version__", "bundle_utils", "data", "engine", "evaluation", "io", "networks", "outputs", "transforms"]
