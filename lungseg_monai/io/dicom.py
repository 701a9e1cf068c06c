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

__all__ = ["read_dicom", "is_dicom_file", "patient_plane_spacing", "NON_IMAGE_MODALITIES", "PLUGIN_FOR_TRANSFER_SYNTAX"]

logger = logging.getLogger(__name__)

DICOM_PREAMBLE_LENGTH = 128
DICOM_MAGIC = b"DICM"

# Objects that share a study with radiographs but hold no image to segment.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "REG", "RWV", "DOC", "OT_NOIMAGE"})

# What to do when no installed plugin decodes a compressed transfer syntax (the plugin to install).
_JPEG = "install pylibjpeg with pylibjpeg-libjpeg (or Pillow)"
_JPEG_LOSSLESS = "install pylibjpeg with pylibjpeg-libjpeg (or python-gdcm)"
_JPEG_LS = "install pylibjpeg with pylibjpeg-libjpeg (or pyjpegls)"
_J2K = "install pylibjpeg with pylibjpeg-openjpeg"
_HTJ2K = "install pydicom>=3 with pylibjpeg and pylibjpeg-openjpeg"
_NO_JPEG_XL = "no pydicom plugin decodes JPEG XL yet; export the image from the archive as JPEG 2000 or uncompressed"
_VIDEO = "no pydicom plugin decodes video; export the radiograph as a single uncompressed or JPEG 2000 image"
PLUGIN_FOR_TRANSFER_SYNTAX = {
    "1.2.840.10008.1.2.4.50": _JPEG,
    "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG_LOSSLESS,
    "1.2.840.10008.1.2.4.70": _JPEG_LOSSLESS,
    "1.2.840.10008.1.2.4.80": _JPEG_LS,
    "1.2.840.10008.1.2.4.81": _JPEG_LS,
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _HTJ2K,
    "1.2.840.10008.1.2.4.202": _HTJ2K,
    "1.2.840.10008.1.2.4.203": _HTJ2K,
    "1.2.840.10008.1.2.4.110": _NO_JPEG_XL,
    "1.2.840.10008.1.2.4.111": _NO_JPEG_XL,
    "1.2.840.10008.1.2.4.112": _NO_JPEG_XL,
    **{f"1.2.840.10008.1.2.4.{n}": _VIDEO for n in range(100, 109)},
    "1.2.840.10008.1.2.5": "install numpy (pydicom's built-in RLE decoder) or pylibjpeg-rle",
}
# Implicit/explicit little endian, explicit big endian, deflated: pixel data stored as is.
_NATIVE_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)
_DEFAULT_PLUGIN = "install a pydicom pixel-data plugin that supports it (pylibjpeg with its plugins, or python-gdcm)"

# Transfer syntaxes newer than pydicom 2.4's UID dictionary, by name.
_NEWER_TRANSFER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
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


def _positive_factor(value: Any) -> float | None:
    try:
        factor = float(value)
    except (TypeError, ValueError):
        return None
    return factor if np.isfinite(factor) and factor > 0 else None


def patient_plane_spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str]:
    """The (row, column) pixel spacing in mm in the patient plane, and where it came from.

    ``PixelSpacing`` first (it is in the patient plane; its ``PixelSpacingCalibrationType`` is
    named when given), else ``ImagerPixelSpacing`` (the detector plane) divided by
    ``EstimatedRadiographicMagnificationFactor`` when the file gives one, else the uncorrected
    ``ImagerPixelSpacing`` (the lungs then measure larger than they are, typically by 5 to 20 %).

    Returns:
        ``(spacing, source)``, e.g. ``((0.16, 0.16), "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor
        1.25")``; ``(None, "none")`` when the file gives no usable spacing.
    """
    spacing = _positive_spacing(ds.get("PixelSpacing"))
    if spacing is not None:
        calibration = str(ds.get("PixelSpacingCalibrationType", "") or "").strip()
        return spacing, f"PixelSpacing ({calibration})" if calibration else "PixelSpacing"
    spacing = _positive_spacing(ds.get("ImagerPixelSpacing"))
    if spacing is None:
        return None, "none"
    factor = _positive_factor(ds.get("EstimatedRadiographicMagnificationFactor"))
    if factor is None:
        return spacing, "ImagerPixelSpacing (detector plane, not corrected for magnification)"
    corrected = (spacing[0] / factor, spacing[1] / factor)
    return corrected, f"ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor {factor:g}"


def _patient_orientation(ds: pydicom.Dataset) -> tuple[str, str] | None:
    """PatientOrientation (0020,0020): the patient directions of the image rows and columns, if given."""
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str):
        return None
    values = tuple(str(v).strip().upper() for v in value)
    return (values[0], values[1]) if len(values) == 2 and all(values) else None


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


def _transfer_syntax_name(ts: UID) -> str:
    name = _NEWER_TRANSFER_SYNTAX_NAMES.get(str(ts))
    if name is None:
        name = ts.name if ts.is_valid and ts.name != str(ts) else "an unknown transfer syntax"
    return name


def _is_compressed(ts: UID) -> bool:
    """Whether the pixel data is compressed; a UID pydicom does not know counts as compressed.

    PS3.5 A.4: every transfer syntax beyond the native (and deflated) ones encapsulates its pixel data.
    """
    try:
        return bool(ts.is_compressed)
    except ValueError:  # private or unknown UID: pydicom cannot tell
        return str(ts) not in _NATIVE_TRANSFER_SYNTAXES


def _decoder_available(ts: UID) -> bool:
    """True when an installed pydicom pixel-data plugin claims to decode ``ts``."""
    try:
        from pydicom.pixels.decoders.base import get_decoder  # pydicom >= 3
    except ImportError:
        return _decoder_available_pydicom2(ts)
    try:
        return bool(get_decoder(ts).is_available)
    except (NotImplementedError, ValueError):
        return False


def _decoder_available_pydicom2(ts: UID) -> bool:
    for handler in pydicom.config.pixel_data_handlers:
        try:
            if not (handler.supports_transfer_syntax(ts) and handler.is_available()):
                continue
        except ValueError:  # UID pydicom 2 cannot classify
            continue
        if handler.__name__.endswith("pylibjpeg_handler"):
            # pylibjpeg is only as good as its plugins (libjpeg, openjpeg, rle).
            try:
                from pylibjpeg.utils import get_pixel_data_decoders
            except ImportError:
                continue
            if str(ts) not in get_pixel_data_decoders():
                continue
        return True
    return False


def read_dicom(path: str | Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a single-frame DICOM radiograph.

    Args:
        path: the DICOM file (with or without a file meta header).
        max_pixels: refuse images whose header announces more pixels than this, before decoding.

    Returns:
        ``(pixels, meta)``: pixels as float32 of shape (rows, columns) where larger is denser, and a
        dict with ``spacing`` ((row, col) mm in the patient plane or None, see
        :func:`patient_plane_spacing`), ``spacing_source``, ``patient_orientation`` (the two values
        of PatientOrientation, or None), ``photometric``, ``bits_stored``,
        ``transfer_syntax``, ``modality``, ``sop_class_uid``, ``sop_instance_uid``,
        ``study_instance_uid``, ``series_instance_uid``, ``view_position``. No patient attributes
        (name, ID, birth date) are read.

    Raises:
        RadiographReadError: not DICOM, no pixel data, multi-frame, malformed or undecodable; no
            other exception type escapes, whatever the file holds.
        UnsupportedTransferSyntaxError: the compression needs a plugin that is not installed (the
            message names it).
        ImageTooLargeError: more pixels than ``max_pixels``.
    """
    try:
        return _read_dicom(Path(path), max_pixels)
    except RadiographReadError:
        raise
    except Exception as e:  # a hostile header can make pydicom raise almost anything
        raise RadiographReadError(path, f"malformed DICOM file ({type(e).__name__}: {e})") from e


def _read_dicom(path: Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
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
        if required not in ds or ds.get(required) is None:
            raise RadiographReadError(path, f"DICOM image has no {required} attribute")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > max_pixels:
        raise ImageTooLargeError(
            path, f"{cols}x{rows}x{frames} pixels exceeds the limit of {max_pixels} (LUNGSEG_MAX_PIXELS)"
        )
    if rows < 1 or cols < 1:
        raise RadiographReadError(path, f"DICOM image has no pixels ({cols}x{rows})")
    if frames > 1:
        raise RadiographReadError(path, f"multi-frame DICOM ({frames} frames); expected a single radiograph")

    _ensure_transfer_syntax(ds)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    ts_name = _transfer_syntax_name(ts)
    compressed = _is_compressed(ts)
    plugin = PLUGIN_FOR_TRANSFER_SYNTAX.get(str(ts), _DEFAULT_PLUGIN)
    if compressed and not _decoder_available(ts):
        raise UnsupportedTransferSyntaxError(
            path, f"pixel data is compressed as {ts_name} ({ts}), which no installed plugin decodes; {plugin}"
        )
    try:
        raw = ds.pixel_array
    except Exception as e:
        hint = f" (if the file is intact: {plugin})" if compressed else ""
        raise RadiographReadError(
            path, f"pixel data ({ts_name}) cannot be decoded ({type(e).__name__}: {e}){hint}"
        ) from e

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if raw.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and raw.shape[-1] == 3:
        pixels = raw.astype(np.float32).mean(axis=-1)  # colour secondary capture: luminance
    elif raw.ndim == 2:
        pixels = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float32)
        if photometric == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
    else:
        raise RadiographReadError(path, f"unexpected pixel array shape {raw.shape} ({photometric})")

    spacing, spacing_source = patient_plane_spacing(ds)
    meta.update(
        spacing=spacing,
        spacing_source=spacing_source,
        patient_orientation=_patient_orientation(ds),
        photometric=photometric,
        bits_stored=int(ds.get("BitsStored", raw.dtype.itemsize * 8)),
        transfer_syntax=str(ts),
    )
    return pixels, meta
