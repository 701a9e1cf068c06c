"""DICOM Secondary Capture of the lung overlay, for viewers and PACS that cannot show a SEG.

The overlay (:func:`lungseg_monai.outputs.overlay.overlay_contours`: the radiograph in grey, the lung
contour in red) becomes an 8-bit RGB Secondary Capture Image with the source's rows and columns,
in the source's patient and study (normalised as for the SEG:
:func:`~lungseg_monai.outputs.dicom_header.patient_study_header`) and a new series
"Lung overlay (lungseg_monai)". It says where it comes from: Image Type DERIVED\\SECONDARY, Source
Image Sequence naming the radiograph (purpose DCM 121322 "Source image for image processing
operation"), Derivation Code DCM 113076 "Segmentation" and a Derivation Description naming the
model. Its pixels lie on the source's grid, so the source's Patient Orientation and Pixel Spacing
(when it states one) are passed on; a source without Patient Orientation gives an empty one (type
2C), none is invented. Burned In Annotation is the source's: the SC's pixels are the source film's,
which on older CR/SC films often carry the patient's name, and de-identification pipelines trust
that attribute; a source that does not say gets YES (it cannot be vouched for).
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from lungseg_monai import __version__
from lungseg_monai.utils.atomic import atomic_path
from lungseg_monai.outputs.dicom_header import MANUFACTURER, MODEL_NAME, patient_study_header, read_source_header

__all__ = ["SC_SERIES_DESCRIPTION", "SC_SERIES_NUMBER", "burned_in_annotation", "make_overlay_sc", "save_overlay_sc"]

SC_SERIES_DESCRIPTION = "Lung overlay (lungseg_monai)"
SC_SERIES_NUMBER = 1003
SOURCE_IMAGE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
SEGMENTATION_DERIVATION = ("113076", "DCM", "Segmentation")
# highdicom needs a patient orientation to build a PATIENT image; replaced by the source's own
# (or an empty one) once built.
_PLACEHOLDER_ORIENTATION = ("L", "F")
# Derivation Description is ST: at most 1024 characters.
_ST_MAX_CHARS = 1024


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """The source's Pixel Spacing when it states a positive one (some CRs say 0\\0)."""
    spacing = source.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    try:
        row, column = float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError):
        return None
    return (row, column) if row > 0 and column > 0 else None


def make_overlay_sc(
    source: Dataset,
    overlay_rgb: np.ndarray,
    identity: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_description: str = SC_SERIES_DESCRIPTION,
    series_number: int = SC_SERIES_NUMBER,
    derivation_description: str | None = None,
) -> hd.sc.SCImage:
    """Build an RGB Secondary Capture of a lung overlay over its source radiograph.

    Args:
        source: the radiograph's dataset (pixel data not needed).
        overlay_rgb: (rows, columns, 3) uint8, the source's rows and columns
            (:func:`~lungseg_monai.outputs.overlay.overlay_contours`).
        identity: the model's identity (:attr:`LungSegmenter.identity`), named in the derivation.
        series_instance_uid: the SC series (:attr:`ResultUIDs.sc_series_uid`).
        sop_instance_uid: the SC's SOP Instance UID (:attr:`ResultUIDs.sc_sop_uid`).
        series_description, series_number: the SC's series (default: the model's overlay series).
        derivation_description: what the contour is (default: the lung contour segmented by ``identity``).

    Raises:
        ValueError: the overlay is not (rows, columns, 3) uint8 of the source's size.

    Example:
        >>> rgb = overlay_contours(radiograph.pixels, mask)  # doctest: +SKIP
        >>> sc = make_overlay_sc(source, rgb, segmenter.identity, uids.sc_series_uid, uids.sc_sop_uid)  # doctest: +SKIP
        >>> sc.Rows, sc.Columns, sc.PhotometricInterpretation  # doctest: +SKIP
        (1024, 1024, 'RGB')
    """
    rows, columns = int(source.Rows), int(source.Columns)
    overlay_rgb = np.asarray(overlay_rgb)
    if overlay_rgb.shape != (rows, columns, 3) or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            f"overlay is {overlay_rgb.dtype} of shape {overlay_rgb.shape} but the source DICOM is {columns}x{rows}; "
            f"expected uint8 ({rows}, {columns}, 3), as overlay_contours() gives"
        )
    header = patient_study_header(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        manufacturer=MANUFACTURER,
        pixel_spacing=_pixel_spacing(source),
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
    )
    sc.PatientOrientation = source.get("PatientOrientation", "") or ""
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept(*SOURCE_IMAGE_FOR_PROCESSING)]
    sc.SourceImageSequence = [reference]
    sc.DerivationCodeSequence = [hd.sr.CodedConcept(*SEGMENTATION_DERIVATION)]
    if derivation_description is None:
        derivation_description = f"Lung contour (red) segmented by {identity}, drawn over the radiograph"
    sc.DerivationDescription = derivation_description[:_ST_MAX_CHARS]
    sc.BurnedInAnnotation = burned_in_annotation(source)
    return sc


def burned_in_annotation(source: Dataset) -> str:
    """The Burned In Annotation (0028,0301) of an image made from ``source``'s pixels: the source's own
    ``YES``/``NO``; ``YES`` when the source has none or an unknown value (its pixels may carry text)."""
    value = str(source.get("BurnedInAnnotation", "") or "").strip().upper()
    return value if value in ("YES", "NO") else "YES"


def save_overlay_sc(
    source: Dataset | str | os.PathLike,
    target: str | os.PathLike,
    overlay_rgb: np.ndarray,
    identity: str,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> Path:
    """Build :func:`make_overlay_sc` from the source's dataset or DICOM file and write it atomically.

    Returns:
        ``target``.
    """
    sc = make_overlay_sc(read_source_header(source), overlay_rgb, identity, series_instance_uid, sop_instance_uid)
    target = Path(target)
    with atomic_path(target) as tmp:
        sc.save_as(str(tmp))
    return target
