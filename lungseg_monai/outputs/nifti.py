"""NIfTI lung masks that carry their radiograph's geometry.

Axis convention (the one ITK and MONAI use for 2D images): NIfTI axis 0 (x) runs along the image
columns and axis 1 (y) along the rows, so the stored array is the (rows, columns) mask transposed.
The affine is the radiograph's :class:`~lungseg_monai.io.ImageGeometry` in NIfTI's RAS: for a
NIfTI, MetaImage or NRRD input its own affine (origin, direction, spacing), so the mask lies over
the image in world space; for a PNG or DICOM radiograph ITK's identity convention,
``diag(-column_spacing, -row_spacing, 1, 1)``, exactly what ``itk.imwrite`` gives for the PNG.
Read it back with ``nib.load(path).get_fdata().T`` or :func:`lungseg_monai.io.read_mask`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from lungseg_monai.io.geometry import ImageGeometry
from lungseg_monai.utils.atomic import atomic_path

__all__ = ["NIFTI_SUFFIX", "NIFTI_SUFFIXES", "save_nifti_mask"]

NIFTI_SUFFIX = ".nii.gz"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# sform/qform code 1: "scanner anatomical" coordinates, what ITK writes.
_SCANNER_ANAT = 1
_UNKNOWN_GEOMETRY = ImageGeometry.from_spacing((1.0, 1.0))


def save_nifti_mask(mask: np.ndarray, target: str | os.PathLike, geometry: ImageGeometry | None = None) -> Path:
    """Write a (rows, columns) binary mask as a 2D NIfTI of uint8 0/1, atomically.

    Args:
        mask: (rows, columns) array; non-zero is lung.
        target: the ``.nii.gz`` (or ``.nii``) file to write.
        geometry: where the radiograph's pixels lie (:attr:`lungseg_monai.io.Radiograph.geometry`);
            None writes 1 mm pixels with the unit "unknown".

    Returns:
        ``target``.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D (rows, columns) mask, got shape {mask.shape}")
    data = np.ascontiguousarray((np.asarray(mask) != 0).T, dtype=np.uint8)  # (columns, rows) = (x, y)
    affine = (geometry or _UNKNOWN_GEOMETRY).nifti_affine()
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=_SCANNER_ANAT)
    image.set_sform(affine, code=_SCANNER_ANAT)
    image.header.set_xyzt_units(xyz="mm" if geometry is not None else "unknown")
    image.header["descrip"] = b"lung mask 0/1; x = image columns, y = image rows"
    target = Path(target)
    with atomic_path(target) as tmp:
        nib.save(image, str(tmp))
    return target
