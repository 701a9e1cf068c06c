"""DICOM radiograph decoding with pydicom (2.4 and 3.x).

Applies what the header says a viewer should apply: the modality LUT (or rescale slope and
intercept), the VOI LUT (or window centre/width) and MONOCHROME1 inversion, so that after reading
a larger value always means a denser (brighter) structure, as in a MONOCHROME2 display.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID

from lungseg_monai.io.errors import ImageTooLargeError, RadiographReadError, UnsupportedTransferSyntaxError

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

__all__ = ["read_dicom", "is_dicom_file", "NON_IMAGE_MODALITIES", "PLUGIN_FOR_TRANSFER_SYNTAX"]

logger = logging.getLogger(__name__)

DICOM_PREAMBLE_LENGTH = 128
DICOM_MAGIC = b"DICM"

# Objects that share a study with radiographs but hold no image to segment.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "REG", "RWV", "DOC", "OT_NOIMAGE"})

# What to install when pydicom cannot decode a compressed transfer syntax.
PLUGIN_FOR_TRANSFER_SYNTAX = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or numpy, built into pydicom)",
}


def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts with the DICOM preamble and ``DICM`` magic, or has a ``.dcm`` suffix."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_PREAMBLE_LENGTH:] == DICOM_MAGIC


def _positive_spacing(value: Any) -> tuple[float, float] | None:
    """(row, column) spacing in mm from a DICOM multi-value, or None if absent or not positive."""
    if value is None:
        return None
    try:
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(row) and np.isfinite(col)) or row <= 0 or col <= 0:
        return None
    return row, col


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Old files without a file meta header: infer the (uncompressed) transfer syntax from the encoding."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = getattr(ds, "is_implicit_VR", True)
        little = getattr(ds, "is_little_endian", True)
        if implicit:
            meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        elif little:
            meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian


def read_dicom(path: str | Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a single-frame DICOM radiograph.

    Args:
        path: the DICOM file (with or without a file meta header).
        max_pixels: refuse images whose header announces more pixels than this, before decoding.

    Returns:
        ``(pixels, meta)``: pixels as float32 of shape (rows, columns) where larger is denser, and a
        dict with ``spacing`` ((row, col) mm or None), ``photometric``, ``bits_stored``,
        ``transfer_syntax``, ``modality``, ``sop_class_uid``, ``sop_instance_uid``,
        ``study_instance_uid``, ``series_instance_uid``, ``view_position``.

    Raises:
        RadiographReadError: not DICOM, no pixel data, multi-frame, or undecodable.
        UnsupportedTransferSyntaxError: the compression needs a plugin that is not installed.
        ImageTooLargeError: more pixels than ``max_pixels``.
    """
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as e:  # pydicom raises many types for corrupt files
        raise RadiographReadError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e

    meta: dict[str, Any] = {
        "modality": str(ds.get("Modality", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "view_position": str(ds.get("ViewPosition", "")),
    }
    if "PixelData" not in ds:
        what = meta["modality"] or "unknown modality"
        raise RadiographReadError(path, f"DICOM object has no PixelData ({what}); it is not an image")
    for required in ("Rows", "Columns"):
        if required not in ds:
            raise RadiographReadError(path, f"DICOM image has no {required} attribute")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > max_pixels:
        raise ImageTooLargeError(
            path, f"{cols}x{rows}x{frames} pixels exceeds the limit of {max_pixels} (LUNGSEG_MAX_PIXELS)"
        )
    if frames > 1:
        raise RadiographReadError(path, f"multi-frame DICOM ({frames} frames); expected a single radiograph")

    _ensure_transfer_syntax(ds)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        raw = ds.pixel_array
    except Exception as e:
        if ts.is_compressed:
            plugin = PLUGIN_FOR_TRANSFER_SYNTAX.get(str(ts), "a pydicom pixel-data plugin")
            raise UnsupportedTransferSyntaxError(
                path, f"cannot decode transfer syntax {ts.name} ({ts}); install {plugin} ({type(e).__name__}: {e})"
            ) from e
        raise RadiographReadError(path, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if raw.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and raw.shape[-1] == 3:
        pixels = raw.astype(np.float32).mean(axis=-1)  # colour secondary capture: luminance
    elif raw.ndim == 2:
        pixels = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float32)
        if photometric == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
    else:
        raise RadiographReadError(path, f"unexpected pixel array shape {raw.shape} ({photometric})")

    spacing = _positive_spacing(ds.get("PixelSpacing")) or _positive_spacing(ds.get("ImagerPixelSpacing"))
    meta.update(
        spacing=spacing,
        photometric=photometric,
        bits_stored=int(ds.get("BitsStored", raw.dtype.itemsize * 8)),
        transfer_syntax=str(ts),
    )
    return pixels, meta
