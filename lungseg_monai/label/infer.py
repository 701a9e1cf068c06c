"""The MONAI Label infer task: a radiograph in, the lung mask ``lungseg infer`` would give out.

The mask goes through :class:`lungseg_monai.inference.LungSegmenter`, like every other way of
segmenting in this project, and comes back at the image's own size as a label map (0 background,
1 lung). PNG images get a PNG mask that lines up pixel for pixel (ITK, and so 3D Slicer, reads
every PNG with 1 mm pixels). Other files (DICOM, JPEG and TIFF with a resolution, volumes) get an
NRRD mask carrying the image's geometry (spacing, origin, direction; see :func:`label_geometry`),
written by :func:`lungseg_monai.outputs.label_map.save_label_map` like the NIfTI masks of
``lungseg infer``, so that it overlays the image in 3D Slicer, which places both by that geometry.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lungseg_monai.io import ImageGeometry, Radiograph, RadiographReadError, read_radiograph
from lungseg_monai.label import LABEL_NAMES
from lungseg_monai.label.errors import BadRequestError
from lungseg_monai.label.models import ReloadingSegmenter
from lungseg_monai.outputs.label_map import save_label_map
from lungseg_monai.qc.input import ImplausibleInputError, ensure_plausible

__all__ = [
    "LungSegInferTask",
    "label_geometry",
    "read_geometry",
    "default_result_extension",
    "RESULT_EXTENSIONS",
]

logger = logging.getLogger(__name__)

# Formats /infer can return (request parameter ``result_extension``).
RESULT_EXTENSIONS = (".png", ".nrrd", ".nii.gz", ".mha")


def default_result_extension(image_path: str | os.PathLike) -> str:
    """PNG for PNG images (same pixel grid, 1 mm pixels for ITK), NRRD (with geometry) for the rest."""
    return ".png" if str(image_path).lower().endswith(".png") else ".nrrd"


def read_geometry(image_path: str | os.PathLike) -> ImageGeometry | None:
    """The header geometry SimpleITK reads (no pixel decoding), or None when it cannot read the file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        logger.debug("SimpleITK cannot read the header of '%s': %s", image_path, e)
        return None
    if reader.GetDimension() not in (2, 3):
        return None
    return ImageGeometry.from_arrays(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def label_geometry(radiograph: Radiograph) -> ImageGeometry | None:
    """The geometry 3D Slicer gives the image, for its label map.

    The file's own for NIfTI, MetaImage and NRRD (as the reader kept it), else what ITK reads from
    the header (DICOM, a JPEG or TIFF resolution), else the radiograph's pixel spacing.
    """
    return radiograph.meta.get("geometry") or read_geometry(radiograph.path) or radiograph.geometry


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
            ensure_plausible(radiograph.pixels, image)  # what lungseg infer refuses before the network
        except ImplausibleInputError as e:
            raise BadRequestError(f"'{Path(image).name}' is refused before the network: {e.reason}") from e
        except RadiographReadError as e:
            raise BadRequestError(f"cannot segment '{Path(image).name}': {e.reason}") from e
        loaded = time.perf_counter()
        segmenter, model_path = self.segmenter.get()
        mask, qc = segmenter.segment_with_qc(radiograph)
        inferred = time.perf_counter()

        fd, name = tempfile.mkstemp(prefix="lungseg_mask_", suffix=extension)
        os.close(fd)
        save_label_map(mask, name, label_geometry(radiograph))
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
