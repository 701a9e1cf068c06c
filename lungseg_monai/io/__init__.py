"""Loading chest radiographs and lung masks from raster, DICOM and medical-volume files."""

from __future__ import annotations

from lungseg_monai.io.dicom import NON_IMAGE_MODALITIES, is_dicom_file, patient_plane_spacing, read_dicom
from lungseg_monai.io.errors import (
    ImageTooLargeError,
    MaskMismatchError,
    RadiographReadError,
    UnsupportedTransferSyntaxError,
)
from lungseg_monai.io.geometry import ImageGeometry
from lungseg_monai.io.reader import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    Radiograph,
    check_mask_matches,
    file_stem,
    looks_inverted,
    max_pixels,
    read_mask,
    read_radiograph,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "NON_IMAGE_MODALITIES",
    "SUPPORTED_SUFFIXES",
    "ImageGeometry",
    "ImageTooLargeError",
    "MaskMismatchError",
    "Radiograph",
    "RadiographReadError",
    "UnsupportedTransferSyntaxError",
    "check_mask_matches",
    "file_stem",
    "is_dicom_file",
    "looks_inverted",
    "max_pixels",
    "patient_plane_spacing",
    "read_dicom",
    "read_mask",
    "read_radiograph",
]
