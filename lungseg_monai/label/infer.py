"""The MONAI Label infer task: a radiograph in, the lung mask ``lungseg infer`` would give out.

The mask goes through :class:`lungseg_monai.inference.LungSegmenter`, like every other way of
segmenting in this project, and comes back at the image's own size as a label map (0 background,
1 lung). PNG images get a PNG mask that lines up pixel for pixel (ITK, and so 3D Slicer, reads
every PNG with 1 mm pixels). Other files (DICOM, JPEG and TIFF with a resolution, volumes) get an
NRRD mask carrying the geometry (spacing, origin, direction) ITK reads from the image's header, so
that it overlays the image in 3D Slicer, which places both by that geometry.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lungseg_monai.io import RadiographReadError, read_radiograph
from lungseg_monai.label import LABEL_NAMES
from lungseg_monai.label.errors import BadRequestError
from lungseg_monai.label.models import ReloadingSegmenter
from lungseg_monai.outputs import atomic_path, save_png

__all__ = [
    "LungSegInferTask",
    "Geometry",
    "read_geometry",
    "write_label_map",
    "default_result_extension",
    "RESULT_EXTENSIONS",
]

logger = logging.getLogger(__name__)

# Formats /infer can return (request parameter ``result_extension``).
RESULT_EXTENSIONS = (".png", ".nrrd", ".nii.gz", ".mha")


def default_result_extension(image_path: str | os.PathLike) -> str:
    """PNG for PNG images (same pixel grid, 1 mm pixels for ITK), NRRD (with geometry) for the rest."""
    return ".png" if str(image_path).lower().endswith(".png") else ".nrrd"


@dataclass(frozen=True)
class Geometry:
    """Where an image's pixels lie in space, as ITK (and so 3D Slicer) reads it from the file's header."""

    dimension: int
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major dimension x dimension matrix


def read_geometry(image_path: str | os.PathLike) -> Geometry | None:
    """The header geometry SimpleITK reads (no pixel decoding), or None when it cannot read the file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        logger.debug("SimpleITK cannot read the header of '%s': %s", image_path, e)
        return None
    return Geometry(reader.GetDimension(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def write_label_map(
    mask: np.ndarray,
    target: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    spacing: tuple[float, float] | None = None,
) -> Path:
    """Write a (rows, columns) uint8 label map as PNG, NRRD, NIfTI or MetaImage (by ``target``'s suffix).

    Rows and columns are never swapped: row ``r``, column ``c`` of ``mask`` is pixel (x=c, y=r) of
    the file, like the image it was made from. Non-PNG files take the geometry read from
    ``reference``'s header (spacing, origin, direction; a single-slice volume stays one), else
    ``spacing`` ((row, column) mm), else 1 mm pixels.
    """
    target = Path(target)
    if target.name.lower().endswith(".png"):
        return save_png(mask.astype(np.uint8), target)
    import SimpleITK as sitk

    geometry = read_geometry(reference) if reference is not None else None
    if geometry is not None and geometry.dimension not in (2, 3):
        geometry = None
    array = np.ascontiguousarray(mask, dtype=np.uint8)
    image = sitk.GetImageFromArray(array[None] if geometry is not None and geometry.dimension == 3 else array)
    if geometry is not None:
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    elif spacing is not None:
        image.SetSpacing((float(spacing[1]), float(spacing[0])))
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return target


class LungSegInferTask(InferTask):
    """Segment the lungs of one radiograph with the app's current model.

    Request keys (besides MONAI Label's own): ``image`` (path of the datastore image or of the
    uploaded file), optional ``result_extension`` (one of :data:`RESULT_EXTENSIONS`).

    Returns ``(mask file, params)``; params hold ``label_names``, the model file used, the mask's
    ``shape`` (rows, columns), its ``lung_fraction``, the quality verdict ``lungseg infer`` gives
    (``qc_status``, ``qc_score``, ``qc_reasons``) and ``latencies`` in seconds.
    """

    def __init__(self, segmenter: ReloadingSegmenter, description: str) -> None:
        super().__init__(type=InferType.SEGMENTATION, labels=dict(LABEL_NAMES), dimension=2, description=description)
        self.segmenter = segmenter

    def is_valid(self) -> bool:
        return self.segmenter.store.current().is_file()

    def get_path(self, validate: bool = True) -> str:
        """The checkpoint served now (``validate``) or the file a model upload replaces (the published one)."""
        return str(self.segmenter.store.current() if validate else self.segmenter.store.published)

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise BadRequestError(f"infer needs an image id or an uploaded image file, got {type(image).__name__}")
        extension = str(request.get("result_extension") or default_result_extension(image)).lower()
        if extension not in RESULT_EXTENSIONS:
            raise BadRequestError(
                f"result_extension '{extension}' is not supported; use one of {list(RESULT_EXTENSIONS)}"
            )

        start = time.perf_counter()
        try:
            radiograph = read_radiograph(image)
        except RadiographReadError as e:
            raise BadRequestError(f"cannot segment '{Path(image).name}': {e.reason}") from e
        loaded = time.perf_counter()
        segmenter, model_path = self.segmenter.get()
        mask, qc = segmenter.segment_with_qc(radiograph)
        inferred = time.perf_counter()

        fd, name = tempfile.mkstemp(prefix="lungseg_mask_", suffix=extension)
        os.close(fd)
        write_label_map(mask, name, reference=image, spacing=radiograph.spacing)
        done = time.perf_counter()
        params = {
            "label_names": dict(LABEL_NAMES),
            "model": str(model_path),
            "shape": [int(s) for s in mask.shape],
            "lung_fraction": float(mask.mean()),
            "qc_status": qc.status,
            "qc_score": qc.score,
            "qc_reasons": list(qc.reasons),
            "latencies": {
                "pre": round(loaded - start, 3),
                "infer": round(inferred - loaded, 3),
                "post": round(done - inferred, 3),
                "total": round(done - start, 3),
            },
        }
        return name, params
