"""DICOM Segmentation (SEG) objects of a lung mask, with highdicom (0.22 with pydicom 2.4, and newer).

The SEG references its source radiograph (study, series and SOP instance UIDs, per frame through
the Derivation Image functional group), carries the source's Patient and General Study modules,
and has one BINARY segment "Lung" coded SCT 123037004 "Anatomical Structure" / SCT 39607008
"Lung", so viewers (OHIF, 3D Slicer, PACS) can show it over the source.

Frame of reference: a projection radiograph (CR, DX, secondary capture) usually has none, and its
SEG then has none either. Its pixels correspond one to one to the source's (PS3.3 A.51.5.1: "If
the Frame of Reference UID is not present, each pixel of the segmentation shall correspond to a
pixel in a referenced image"). A Frame of Reference UID obliges the SEG to state plane positions
and orientations, so the source's is passed on only when the source states its plane too
(ImagePositionPatient, ImageOrientationPatient and PixelSpacing): the SEG then has the source's
plane position, orientation and pixel measures. A Frame of Reference UID alone is not passed on.

Algorithm identification: the segment's algorithm version is the model's identity (name and hash
of its weights, :attr:`lungseg_monai.inference.LungSegmenter.identity`), so SEGs of two models can
be told apart; Software Versions is the lungseg_monai version that wrote the file. A mask drawn or
corrected by a person (a label saved from MONAI Label) is a MANUAL segment instead, without
algorithm identification, in its own series ("Lung label (manual)").

Reading back: :func:`lung_segment_number` finds the lung segment of any SEG (ours or another
tool's, by its SCT Lung property type), :func:`read_lung_seg_mask` gives its mask over one source
image with highdicom.
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungseg_monai import __version__
from lungseg_monai.utils.atomic import atomic_path
from lungseg_monai.outputs.dicom_header import MANUFACTURER, MODEL_NAME, patient_study_header
from lungseg_monai.qc.quality import QC_REJECT, QC_REVIEW, QC_UNAVAILABLE, QCResult

__all__ = [
    "ALGORITHM_TYPES",
    "LUNG_SEGMENT_LABEL",
    "MANUAL_CONTENT_DESCRIPTION",
    "has_image_plane",
    "lung_segment_description",
    "lung_segment_number",
    "make_lung_seg",
    "qc_content_description",
    "read_lung_seg_mask",
    "save_lung_seg",
]

LUNG_SEGMENT_LABEL = "Lung"
ANATOMICAL_STRUCTURE = ("123037004", "SCT", "Anatomical Structure")
LUNG = ("39607008", "SCT", "Lung")
ARTIFICIAL_INTELLIGENCE = ("113037", "DCM", "Artificial Intelligence")
SEG_SERIES_NUMBER = 1001
SEG_SERIES_DESCRIPTION = "Lung segmentation (lungseg_monai)"
CONTENT_DESCRIPTION = "Lungs segmented automatically"
# A person's label: another series, so a PACS lists corrections apart from the model's masks
# (1002 is the SR's, 1003 the overlay SC's, 1004 the manual label overlay's).
MANUAL_SEG_SERIES_NUMBER = 1005
MANUAL_SEG_SERIES_DESCRIPTION = "Lung label (manual)"
MANUAL_CONTENT_DESCRIPTION = "Lungs labelled by a person"
# Segment Algorithm Type (0062,0008) values a lung segment may have.
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
# Content Description is a LO (Long String) attribute: at most 64 characters.
_LO_MAX_CHARS = 64

# What a source without a full image plane loses in the copy highdicom sees.
_IMAGE_PLANE_KEYWORDS = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)
# Lossy Image Compression Method (0028,2114) defined terms by transfer syntax.
_LOSSY_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}


def _check_algorithm_type(algorithm_type: str) -> str:
    value = str(algorithm_type).upper()
    if value not in ALGORITHM_TYPES:
        raise ValueError(f"segment algorithm type must be one of {list(ALGORITHM_TYPES)}, got {algorithm_type!r}")
    return value


def lung_segment_description(
    algorithm_version: str | None, algorithm_type: str = "AUTOMATIC"
) -> hd.seg.SegmentDescription:
    """Segment 1, "Lung": SCT Anatomical Structure / Lung, found by an AI algorithm or drawn by a person.

    Args:
        algorithm_version: the model's identity, recorded as the Algorithm Version (not used for
            a MANUAL segment, which has no algorithm identification).
        algorithm_type: ``AUTOMATIC`` (the model's mask, the default), ``SEMIAUTOMATIC`` or
            ``MANUAL`` (a person's label).

    Raises:
        ValueError: another algorithm type, or no ``algorithm_version`` for a non-manual segment.
    """
    algorithm_type = _check_algorithm_type(algorithm_type)
    identification = None
    if algorithm_type != "MANUAL":
        if not algorithm_version:
            raise ValueError(f"an {algorithm_type} lung segment needs the model's identity as algorithm_version")
        identification = hd.AlgorithmIdentificationSequence(
            name=MODEL_NAME, family=hd.sr.CodedConcept(*ARTIFICIAL_INTELLIGENCE), version=algorithm_version
        )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=LUNG_SEGMENT_LABEL,
        segmented_property_category=hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE),
        segmented_property_type=hd.sr.CodedConcept(*LUNG),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues(algorithm_type),
        algorithm_identification=identification,
    )


def lung_segment_number(seg: Dataset) -> int | None:
    """The number of the SEG's lung segment (SCT 39607008 "Lung" property type), or None without one.

    Works on a header alone (WADO-RS metadata), so a SEG can be recognised before it is retrieved.
    """
    for item in seg.get("SegmentSequence", []):
        for code in item.get("SegmentedPropertyTypeCodeSequence", []):
            if (str(code.get("CodeValue", "")), str(code.get("CodingSchemeDesignator", ""))) == LUNG[:2]:
                return int(item.SegmentNumber)
    return None


def read_lung_seg_mask(seg: Dataset, source_sop_instance_uid: str) -> np.ndarray:
    """The (rows, columns) uint8 0/1 lung mask a SEG holds over one source image, read with highdicom.

    Args:
        seg: the SEG (a dataset with pixel data, e.g. ``pydicom.dcmread(path)``).
        source_sop_instance_uid: the source image's SOP Instance UID.

    Raises:
        ValueError: the dataset is not a SEG, has no lung segment, or does not reference that image.
    """
    if str(seg.get("Modality", "")) != "SEG":
        raise ValueError(f"object {seg.get('SOPInstanceUID', '?')} is not a SEG (Modality {seg.get('Modality')!r})")
    number = lung_segment_number(seg)
    if number is None:
        raise ValueError(f"SEG {seg.SOPInstanceUID} has no lung segment (SCT {LUNG[0]} '{LUNG[2]}')")
    parsed = hd.seg.Segmentation.from_dataset(seg, copy=False)
    try:
        pixels = parsed.get_pixels_by_source_instance([source_sop_instance_uid], segment_numbers=[number])
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"SEG {seg.SOPInstanceUID} has no frame over image {source_sop_instance_uid}: {e}") from e
    return (pixels[0, :, :, 0] != 0).astype(np.uint8)


def qc_content_description(qc: QCResult) -> str:
    """The SEG's Content Description: says when quality control wants the mask reviewed, rejects it, or could
    not check it (``unavailable``: never described like a pass)."""
    if qc.status == QC_UNAVAILABLE:
        return f"QC unavailable: {qc.reasons_text()}"
    if qc.status == QC_REVIEW:
        return f"QC review: {qc.reasons_text()}"
    if qc.status == QC_REJECT:
        return f"QC reject: {qc.reasons_text()}"
    return CONTENT_DESCRIPTION


def has_image_plane(source: Dataset) -> bool:
    """True when the source states where its plane lies: Frame of Reference UID, IPP, IOP and Pixel Spacing."""
    return all(
        source.get(keyword) not in (None, "")
        for keyword in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    )


def _source_for_highdicom(source: Dataset, source_size_bytes: int | None) -> Dataset:
    """A copy of the source header that highdicom accepts for a pixel-aligned 2D segmentation.

    A source with an image plane (:func:`has_image_plane`) keeps it, so that highdicom gives the
    SEG its Frame of Reference, plane position, orientation and pixel measures (an absent Slice
    Thickness, type 2 in the Image Plane module, is made empty: highdicom reads it). Any other
    source loses its Frame of Reference (so highdicom references the source per frame instead of
    by plane geometry, which it lacks) and its Pixel Spacing (highdicom 0.22 cannot read back the
    Pixel Measures it would write without a slice thickness). Patient and study attributes are
    completed and normalised by :func:`~lungseg_monai.outputs.dicom_header.patient_study_header`,
    and lossy-compression details highdicom copies are completed from the transfer syntax.
    """
    header = patient_study_header(source)
    if has_image_plane(header):
        if "SliceThickness" not in header:
            header.SliceThickness = ""
    else:
        for keyword in _IMAGE_PLANE_KEYWORDS:
            if keyword in header:
                delattr(header, keyword)
    if str(header.get("LossyImageCompression", "")) == "01":
        syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", ""))
        if "LossyImageCompressionMethod" not in header and syntax in _LOSSY_METHOD:
            header.LossyImageCompressionMethod = _LOSSY_METHOD[syntax]
        if "LossyImageCompressionRatio" not in header and source_size_bytes:
            # "Approximate lossy compression ratio" (PS3.3 C.7.6.1.1.5): decoded size / file size.
            decoded = int(header.Rows) * int(header.Columns) * int(header.get("BitsAllocated", 16)) // 8
            header.LossyImageCompressionRatio = f"{max(1.0, decoded / source_size_bytes):.2f}"
        if "LossyImageCompressionMethod" not in header or "LossyImageCompressionRatio" not in header:
            # Unknown details: highdicom would fail; mark the SEG lossy-derived after it is built.
            header.LossyImageCompression = "00"
    return header


def make_lung_seg(
    mask: np.ndarray,
    source: Dataset,
    series_instance_uid: str,
    algorithm_version: str,
    source_size_bytes: int | None = None,
    sop_instance_uid: str | None = None,
    content_description: str | None = None,
    algorithm_type: str = "AUTOMATIC",
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM SEG of a (rows, columns) lung mask over its source radiograph.

    Args:
        mask: (rows, columns); non-zero is lung. Must match the source's Rows x Columns.
        source: the source image's dataset (pixel data not needed).
        series_instance_uid: the SEG series (share it between SEGs of one source series).
        algorithm_version: the model's identity (:attr:`LungSegmenter.identity`), recorded as the
            segment's Algorithm Version; Software Versions is the lungseg_monai version. Not
            recorded for a MANUAL segment.
        source_size_bytes: size of the source file, used to state an approximate compression
            ratio when a lossy source does not.
        sop_instance_uid: the SEG's SOP Instance UID (default: a new one).
        content_description: the SEG's Content Description, cut to 64 characters (a mask
            that quality control sends to review says so here); default: says whether the
            lungs were segmented automatically or labelled by a person.
        algorithm_type: ``AUTOMATIC`` (default: the model's mask), ``SEMIAUTOMATIC`` or
            ``MANUAL`` (a person's label: series "Lung label (manual)", number 1005).

    Raises:
        ValueError: the mask's shape differs from the source's Rows x Columns, or an unknown
            algorithm type.
    """
    manual = _check_algorithm_type(algorithm_type) == "MANUAL"
    if content_description is None:
        content_description = MANUAL_CONTENT_DESCRIPTION if manual else CONTENT_DESCRIPTION
    rows, columns = int(source.Rows), int(source.Columns)
    if tuple(mask.shape) != (rows, columns):
        raise ValueError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the source DICOM is {columns}x{rows}; "
            "a SEG must have the source's rows and columns"
        )
    header = _source_for_highdicom(source, source_size_bytes)
    lossy_unknown = str(source.get("LossyImageCompression", "")) == "01" and header.LossyImageCompression == "00"
    seg = hd.seg.Segmentation(
        source_images=[header],
        pixel_array=(np.asarray(mask) != 0)[np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[lung_segment_description(algorithm_version, algorithm_type)],
        series_instance_uid=series_instance_uid,
        series_number=MANUAL_SEG_SERIES_NUMBER if manual else SEG_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number="",
        content_label="LUNG",
        content_description=content_description[:_LO_MAX_CHARS],
        series_description=MANUAL_SEG_SERIES_DESCRIPTION if manual else SEG_SERIES_DESCRIPTION,
        omit_empty_frames=False,
    )
    if lossy_unknown:
        seg.LossyImageCompression = "01"
    return seg


def save_lung_seg(
    mask: np.ndarray,
    source_path: str | os.PathLike,
    target: str | os.PathLike,
    series_instance_uid: str,
    algorithm_version: str,
    content_description: str = CONTENT_DESCRIPTION,
    sop_instance_uid: str | None = None,
) -> Path:
    """Read the source DICOM's header, build :func:`make_lung_seg` and write it atomically.

    ``sop_instance_uid`` (default: a new one) and ``series_instance_uid`` are best taken from
    :meth:`lungseg_monai.outputs.dicom_uids.ResultUIDs.for_source`, so that a rerun writes the same
    object again instead of a second one.

    Returns:
        ``target``.
    """
    source_path = Path(source_path)
    source = pydicom.dcmread(str(source_path), stop_before_pixels=True, force=True)
    seg = make_lung_seg(
        mask,
        source,
        series_instance_uid=series_instance_uid,
        algorithm_version=algorithm_version,
        source_size_bytes=source_path.stat().st_size,
        sop_instance_uid=sop_instance_uid,
        content_description=content_description,
    )
    target = Path(target)
    with atomic_path(target) as tmp:
        seg.save_as(str(tmp))
    return target
