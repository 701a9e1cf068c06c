"""NIfTI lung masks that carry the radiograph's pixel spacing.

Axis convention (the one ITK and MONAI use for 2D images): NIfTI axis 0 (x) runs along the image
columns, left to right, and axis 1 (y) along the rows, top to bottom, so the stored array is the
(rows, columns) mask transposed. The affine is ``diag(-column_spacing, -row_spacing, 1, 1)``:
ITK's identity direction in LPS, written in NIfTI's RAS, exactly what ``itk.imwrite`` gives for
the PNG, so the mask lines up with the source image in ITK-based viewers (3D Slicer, ITK-SNAP).
Read it back with ``nib.load(path).get_fdata().T`` or :func:`lungseg_monai.io.read_mask`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from lungseg_monai.outputs.atomic import atomic_path

__all__ = ["NIFTI_SUFFIX", "save_nifti_mask"]

NIFTI_SUFFIX = ".nii.gz"
# sform/qform code 1: "scanner anatomical" coordinates, what ITK writes.
_SCANNER_ANAT = 1


def save_nifti_mask(mask: np.ndarray, target: str | os.PathLike, spacing: tuple[float, float] | None = None) -> Path:
    """Write a (rows, columns) binary mask as a 2D NIfTI of uint8 0/1, atomically.

    Args:
        mask: (rows, columns) array; non-zero is lung.
        target: the ``.nii.gz`` (or ``.nii``) file to write.
        spacing: (row, column) pixel spacing in mm; None writes 1 with the unit "unknown".

    Returns:
        ``target``.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D (rows, columns) mask, got shape {mask.shape}")
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    data = np.ascontiguousarray((np.asarray(mask) != 0).T, dtype=np.uint8)  # (columns, rows) = (x, y)
    affine = np.diag([-float(col_mm), -float(row_mm), 1.0, 1.0])
    image = nib.Nifti1Image(data, affine)
    image.header.set_zooms((float(col_mm), float(row_mm)))
    image.header.set_xyzt_units(xyz="mm" if spacing is not None else "unknown")
    image.set_qform(affine, code=_SCANNER_ANAT)
    image.set_sform(affine, code=_SCANNER_ANAT)
    image.header["descrip"] = b"lung mask 0/1; x = image columns, y = image rows"
    target = Path(target)
    with atomic_path(target) as tmp:
        nib.save(image, str(tmp))
    return target
