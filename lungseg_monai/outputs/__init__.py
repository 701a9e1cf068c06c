"""Writing results: atomic files, masks, overlays, label maps with geometry (NIfTI ...) and lung measurements.

DICOM SEG writing lives in :mod:`lungseg_monai.outputs.dicom_seg` (imports highdicom on use).
"""

from __future__ import annotations

from lungseg_monai.utils.atomic import atomic_path, save_png
from lungseg_monai.outputs.measurements import (
    MEASUREMENT_COLUMNS,
    measure_lungs,
    measure_radiograph,
    read_measurements,
    write_measurements,
)
from lungseg_monai.outputs.label_map import save_label_map
from lungseg_monai.outputs.nifti import save_nifti_mask
from lungseg_monai.outputs.overlay import mask_contour, overlay_contours, save_overlay, to_display_uint8

__all__ = [
    "MEASUREMENT_COLUMNS",
    "atomic_path",
    "mask_contour",
    "measure_lungs",
    "measure_radiograph",
    "overlay_contours",
    "read_measurements",
    "save_label_map",
    "save_nifti_mask",
    "save_overlay",
    "save_png",
    "to_display_uint8",
    "write_measurements",
]
