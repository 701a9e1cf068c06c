"""One entry point to read any supported chest radiograph or lung mask.

``read_radiograph`` dispatches on the file's content (DICOM magic) and suffix, applies the
polarity check and returns pixels of shape (rows, columns) plus the metadata needed to map a
prediction back onto the original file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lungseg_monai.io.dicom import is_dicom_file, read_dicom
from lungseg_monai.io.errors import MaskMismatchError, RadiographReadError
from lungseg_monai.io.geometry import ImageGeometry
from lungseg_monai.io.raster import RASTER_SUFFIXES, VOLUME_SUFFIXES, read_raster, read_volume_file

__all__ = [
    "Radiograph",
    "file_stem",
    "read_radiograph",
    "read_mask",
    "check_mask_matches",
    "looks_inverted",
    "max_pixels",
    "SUPPORTED_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
]

logger = logging.getLogger(__name__)

# Refuse images above this many pixels before decoding them (decompression-bomb guard):
# 8192 x 8192 covers every detector on the market with a wide margin.
DEFAULT_MAX_PIXELS = 8192 * 8192
SUPPORTED_SUFFIXES = RASTER_SUFFIXES + VOLUME_SUFFIXES + (".dcm", ".dicom")


def file_stem(path: str | os.PathLike) -> str:
    """Name without folder and suffix; ``a.nii.gz`` -> ``a``."""
    name = Path(path).name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# Polarity check: in a chest film the mediastinum (central strip) is brighter than the lung fields.
_MEDIASTINUM_COLS = (0.42, 0.58)
_LUNG_COLS = ((0.15, 0.33), (0.67, 0.85))
_CHEST_ROWS = (0.25, 0.65)
_POLARITY_MARGIN = 0.1  # normalised intensity units; only clear inversions are corrected
_MIN_POLARITY_SIDE = 32
# A lossy (JPEG) mask pixel is lung above this fraction of the file's brightest value: mid-range.
_LOSSY_MASK_LEVEL = 0.5


def max_pixels() -> int:
    """The pixel limit in force: ``LUNGSEG_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get("LUNGSEG_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"LUNGSEG_MAX_PIXELS must be a positive whole number of pixels, got {value!r}")
    return limit


@dataclass
class Radiograph:
    """A decoded radiograph.

    Attributes:
        pixels: float32 array (rows, columns); larger means denser (MONOCHROME2 convention).
        path: the source file.
        spacing: (row, column) pixel spacing in mm in the patient plane, or None when the file
            does not say.
        meta: format details (photometric, bits, DICOM UIDs, ``polarity_corrected`` ...);
            ``spacing_source`` says where ``spacing`` came from (``"PixelSpacing (GEOMETRY)"``,
            ``"NIfTI header"``, ``"none"`` ...), ``patient_orientation`` is DICOM PatientOrientation
            (or None) and ``geometry`` the file's :class:`ImageGeometry` (NIfTI, MetaImage, NRRD).
    """

    pixels: np.ndarray
    path: str
    spacing: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def geometry(self) -> ImageGeometry | None:
        """Where the pixels lie: the file's geometry, else ITK's identity convention with the spacing.

        None when neither is known (a PNG): a mask written with it has 1 mm pixels of unknown unit.
        """
        geometry = self.meta.get("geometry")
        if geometry is None and self.spacing is not None:
            geometry = ImageGeometry.from_spacing(self.spacing)
        return geometry


def looks_inverted(pixels: np.ndarray) -> bool:
    """True when a chest radiograph looks inverted: lung fields clearly brighter than the mediastinum.

    Works on PA/AP films; images too small to judge are never called inverted.
    """
    rows, cols = pixels.shape
    if min(rows, cols) < _MIN_POLARITY_SIDE:
        return False
    lo, hi = np.percentile(pixels, (1, 99))
    if hi <= lo:
        return False
    norm = np.clip((pixels - lo) / (hi - lo), 0, 1)
    r0, r1 = int(rows * _CHEST_ROWS[0]), int(rows * _CHEST_ROWS[1])
    mediastinum = norm[r0:r1, int(cols * _MEDIASTINUM_COLS[0]) : int(cols * _MEDIASTINUM_COLS[1])].mean()
    lungs = np.mean([norm[r0:r1, int(cols * a) : int(cols * b)].mean() for a, b in _LUNG_COLS])
    return bool(lungs - mediastinum > _POLARITY_MARGIN)


def _read_any(path: Path, limit: int) -> tuple[np.ndarray, dict[str, Any]]:
    if not path.exists():
        raise RadiographReadError(path, "file does not exist")
    if path.is_dir():
        raise RadiographReadError(path, "is a folder, not a file")
    if path.stat().st_size == 0:
        raise RadiographReadError(path, "file is empty (0 bytes)")
    name = path.name.lower()
    if is_dicom_file(path):
        return read_dicom(path, limit)
    if name.endswith(VOLUME_SUFFIXES):
        return read_volume_file(path, limit)
    if name.endswith(RASTER_SUFFIXES):
        return read_raster(path, limit)
    # Unknown suffix: DICOM files from archives often have none; try DICOM, then a raster.
    try:
        return read_dicom(path, limit)
    except RadiographReadError:
        return read_raster(path, limit)


def read_radiograph(path: str | os.PathLike, polarity: Literal["auto", "header"] = "auto") -> Radiograph:
    """Read a chest radiograph from PNG/JPEG/TIFF/BMP, DICOM, MetaImage, NRRD or NIfTI.

    Args:
        path: the file.
        polarity: ``"header"`` trusts the file (MONOCHROME1 is inverted); ``"auto"`` also checks
            DICOM files tagged MONOCHROME1, the tag archives most often get wrong: if, once
            inverted, the lungs are clearly brighter than the mediastinum, the tag is taken to be
            false and the inversion undone (``meta["polarity_corrected"]``). Rasters are trusted:
            opacified lungs make the check unreliable where no tag says which way is up.

    Returns:
        A :class:`Radiograph` with float32 pixels of shape (rows, columns).

    Raises:
        RadiographReadError: (or a subclass) naming the file and the reason.

    Example:
        >>> rg = read_radiograph("chest.dcm")  # doctest: +SKIP
        >>> rg.pixels.shape, rg.spacing
        ((2048, 2048), (0.139, 0.139))
    """
    if polarity not in ("auto", "header"):
        raise ValueError(f"polarity must be 'auto' or 'header', got {polarity!r}")
    path = Path(path)
    pixels, meta = _read_any(path, max_pixels())
    if not np.isfinite(pixels).all():
        raise RadiographReadError(path, "pixel values contain NaN or infinity")
    meta["polarity_corrected"] = False
    header_inverted = meta.get("photometric") == "MONOCHROME1"
    if polarity == "auto" and header_inverted and looks_inverted(pixels):
        logger.warning("'%s' is tagged MONOCHROME1 but looks inverted; treating it as MONOCHROME2", path)
        pixels = pixels.max() + pixels.min() - pixels
        meta["polarity_corrected"] = True
    spacing = meta.pop("spacing", None)
    if spacing is None:
        meta["spacing_source"] = "none"
    return Radiograph(pixels=np.ascontiguousarray(pixels, dtype=np.float32), path=str(path), spacing=spacing, meta=meta)


def read_mask(path: str | os.PathLike) -> Radiograph:
    """Read a lung mask. Returns uint8 0/1 pixels (rows, columns).

    Any non-zero pixel is lung (0/255, 0/1 and 0/1/2 left/right label maps all work), except in
    a lossy file (JPEG): compression leaves faint non-zero noise around the outline, so a pixel
    is lung there when it is above half the file's brightest value (127.5 for a 0/255 mask).
    """
    path = Path(path)
    pixels, meta = _read_any(path, max_pixels())
    spacing = meta.pop("spacing", None)
    pixels = np.nan_to_num(pixels)
    lung = pixels > pixels.max(initial=0) * _LOSSY_MASK_LEVEL if meta.get("lossy") else pixels != 0
    mask = lung.astype(np.uint8)
    return Radiograph(pixels=mask, path=str(path), spacing=spacing, meta=meta)


def check_mask_matches(mask: Radiograph, image_shape: tuple[int, int], image_path: str) -> None:
    """Raise :class:`MaskMismatchError` naming both files when a mask's size differs from its image's."""
    if tuple(mask.shape) != tuple(image_shape):
        (mr, mc), (ir, ic) = mask.shape, image_shape
        raise MaskMismatchError(
            mask.path,
            f"mask '{mask.path}' is {mc}x{mr} but image '{image_path}' is {ic}x{ir}; masks must match their image",
        )
