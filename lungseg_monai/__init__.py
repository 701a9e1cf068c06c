"""lungseg_monai: lung segmentation of chest radiographs as a MONAI plugin.

The pipeline, one module per step: ``io`` (reading PNG/JPEG/DICOM/MetaImage/NIfTI) ->
``transforms`` (MONAI transforms) -> ``data`` (datalists, splits) -> ``networks`` (VGG16/ResNet50
U-Nets) -> ``engine`` (training handlers, checkpoints) -> ``evaluation`` (metrics, reports) ->
``inference`` (a model on new radiographs, post-processing) -> ``outputs`` (masks, overlays,
NIfTI, DICOM SEG, measurements).
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: submodules record it in their outputs

from lungseg_monai import (  # noqa: E402
    bundle_utils,
    data,
    engine,
    evaluation,
    inference,
    io,
    networks,
    outputs,
    transforms,
)

__all__ = [
    "__version__",
    "bundle_utils",
    "data",
    "engine",
    "evaluation",
    "inference",
    "io",
    "networks",
    "outputs",
    "transforms",
]
