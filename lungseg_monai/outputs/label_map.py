"""The one writer of lung label maps with their radiograph's geometry: PNG, NIfTI, NRRD or MetaImage.

``lungseg infer`` (its ``nifti`` output) and the MONAI Label app both write masks here, so a mask
lies over its image the same way whichever wrote it. Rows and columns are never swapped: row ``r``,
column ``c`` of the mask is pixel (x = c, y = r) of the file, like the image it was made from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lungseg_monai.io.geometry import ImageGeometry
from lungseg_monai.utils.atomic import atomic_path, save_png
from lungseg_monai.outputs.nifti import NIFTI_SUFFIXES, save_nifti_mask

__all__ = ["LABEL_MAP_SUFFIXES", "save_label_map"]

LABEL_MAP_SUFFIXES = (".png", *NIFTI_SUFFIXES, ".nrrd", ".mha")


def save_label_map(mask: np.ndarray, target: str | os.PathLike, geometry: ImageGeometry | None = None) -> Path:
    """Write a (rows, columns) uint8 label map, in the format of ``target``'s suffix, atomically.

    Args:
        mask: (rows, columns) label values (0 background, 1 lung ...).
        target: a ``.png``, ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha`` file.
        geometry: where the radiograph's pixels lie (:attr:`lungseg_monai.io.Radiograph.geometry`);
            None gives 1 mm pixels at the origin. A PNG has no geometry: its pixels are the image's.
            A one-slice volume geometry writes a one-slice volume.

    Returns:
        ``target``.

    Raises:
        ValueError: the mask is not 2D, or the suffix is not one of :data:`LABEL_MAP_SUFFIXES`.
    """
    target = Path(target)
    name = target.name.lower()
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D (rows, columns) mask for '{target}', got shape {mask.shape}")
    if name.endswith(".png"):
        return save_png(np.asarray(mask).astype(np.uint8), target)
    if name.endswith(NIFTI_SUFFIXES):
        return save_nifti_mask(mask, target, geometry)
    if not name.endswith(LABEL_MAP_SUFFIXES):
        raise ValueError(f"cannot write a label map as '{target.name}'; use one of {list(LABEL_MAP_SUFFIXES)}")
    import itk

    array = np.ascontiguousarray(mask, dtype=np.uint8)
    if geometry is not None and geometry.dimension == 3:
        array = array[None]
    image = itk.image_from_array(array)
    if geometry is not None:
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(itk.matrix_from_array(geometry.matrix()))
    with atomic_path(target) as tmp:
        itk.imwrite(image, str(tmp), compression=True)
    return target
