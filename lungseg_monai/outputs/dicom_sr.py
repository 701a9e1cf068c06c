"""DICOM Structured Report (TID 1500 Measurement Report) of the lung areas and the mask's quality verdict.

SOP class: Comprehensive SR. highdicom 0.22 builds a TID 1500 Measurement Report into an Enhanced,
Comprehensive or Comprehensive 3D SR; the report holds only 2D image references (the radiograph,
a SEG frame), no SCOORD3D, so Comprehensive 3D SR is not needed, and Comprehensive SR (unlike
Enhanced SR) accepts references to SOP instances anywhere in the tree, which TID 1410's
"Referenced Segmentation Frame" + "Source Image for Segmentation" pair needs. It is the class
TID 1500 reports are most often stored and displayed as (dcmqi, OHIF, 3D Slicer).

Content tree (one measurement group, tracking identifier "Lungs", algorithm = the model identity):

- with a SEG: a TID 1410 Planar ROI group referencing segment 1 ("Lung") of frame 1 of the SEG
  and, as its source, the radiograph. A single-frame CR/DX/SC without Frame of Reference works:
  the reference is an IMAGE content item (SOP instance + frame + segment), no spatial coordinates;
- without a SEG (none was asked for, or quality control rejected the mask): a TID 1501
  image-level group whose source image is the radiograph.

The group contains:

- three areas (SCT 42798000 "Area"), each with finding site SCT 39607008 "Lung" and laterality
  SCT 51440002 "Bilateral" (both lungs), SCT 24028007 "Right" or SCT 7771000 "Left" (the
  patient's, see :mod:`lungseg_monai.outputs.measurements`): in UCUM ``cm2`` when the radiograph
  gives a pixel spacing, else in pixels (UCUM ``{pixels}``, an annotation of unity, since UCUM has
  no pixel unit);
- the quality control verdict as a CODE qualitative evaluation and the estimated Dice as a NUM
  (UCUM ``1``, omitted when there is none), under the private coding scheme ``99LUNGSEG``
  (declared in the Coding Scheme Identification Sequence): DICOM has no codes for them;
- TEXT items (private concept names, TID 1501 is extensible) stating where the pixel spacing and
  the left/right rule came from (``spacing_source``, ``laterality_source``) and the verdict's
  reasons, when any.

The report has the source's patient and study (highdicom copies them from the source, normalised
as for the SEG: :func:`~lungseg_monai.outputs.dicom_header.patient_study_header`), a new series
"Lung measurements (lungseg_monai)", and the device observer is the model (its UID derived from
the identity). It is COMPLETE, UNVERIFIED and PRELIMINARY: no person has checked it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lungseg_monai import __version__
from lungseg_monai.utils.atomic import atomic_path
from lungseg_monai.outputs.dicom_header import MANUFACTURER, MODEL_NAME, patient_study_header, read_source_header
from lungseg_monai.outputs.dicom_seg import ANATOMICAL_STRUCTURE, LUNG, LUNG_SEGMENT_LABEL
from lungseg_monai.outputs.dicom_uids import derived_uid
from lungseg_monai.qc.quality import QC_STATUSES, QCResult

__all__ = [
    "PRIVATE_SCHEME",
    "QC_SCORE",
    "QC_STATUS",
    "SR_SERIES_DESCRIPTION",
    "make_lung_sr",
    "save_lung_sr",
]

SR_SERIES_DESCRIPTION = "Lung measurements (lungseg_monai)"
SR_SERIES_NUMBER = 1002
TRACKING_IDENTIFIER = "Lungs"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

PRIVATE_SCHEME = "99LUNGSEG"
_PRIVATE_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME, name="lungseg_monai codes", responsible_organization=MANUFACTURER
)
QC_STATUS = hd.sr.CodedConcept("qc_status", PRIVATE_SCHEME, "Lung mask quality control verdict")
QC_SCORE = hd.sr.CodedConcept("qc_score", PRIVATE_SCHEME, "Estimated Dice coefficient of the lung mask")
SPACING_SOURCE = hd.sr.CodedConcept("spacing_source", PRIVATE_SCHEME, "Source of the pixel spacing")
LATERALITY_SOURCE = hd.sr.CodedConcept("laterality_src", PRIVATE_SCHEME, "Source of the left/right assignment")
QC_REASONS = hd.sr.CodedConcept("qc_reasons", PRIVATE_SCHEME, "Reasons for the quality control verdict")
_QC_VALUES = {status: hd.sr.CodedConcept(status, PRIVATE_SCHEME, status.capitalize()) for status in QC_STATUSES}

AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
SQUARE_CENTIMETRE = hd.sr.CodedConcept("cm2", "UCUM", "square centimeter")
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
_LATERALITIES = (
    ("lung_area", hd.sr.CodedConcept("51440002", "SCT", "Bilateral")),
    ("right_lung_area", hd.sr.CodedConcept("24028007", "SCT", "Right")),
    ("left_lung_area", hd.sr.CodedConcept("7771000", "SCT", "Left")),
)


def _number(measurements: Mapping[str, Any], key: str) -> float | None:
    """``measurements[key]`` as a number; None when empty or absent (a CSV row has strings)."""
    value = measurements.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"measurement {key!r} is {value!r}, expected a number") from None


def _areas(measurements: Mapping[str, Any]) -> tuple[list[float], hd.sr.CodedConcept]:
    """Total, right and left area, in cm² when all three are known, else in pixels."""
    in_cm2 = [_number(measurements, f"{key}_cm2") for key, _ in _LATERALITIES]
    if all(value is not None for value in in_cm2):
        return [float(v) for v in in_cm2 if v is not None], SQUARE_CENTIMETRE
    in_pixels = [_number(measurements, f"{key}_px") for key, _ in _LATERALITIES]
    missing = [f"{key}_px" for (key, _), value in zip(_LATERALITIES, in_pixels) if value is None]
    if missing:
        raise ValueError(
            f"measurements lack {', '.join(missing)}; pass the row measure_radiograph() gives for the mask"
        )
    return [float(v) for v in in_pixels if v is not None], PIXELS


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _segment_reference(seg: Dataset, source: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """Segment 1 of frame 1 of ``seg``, whose source is ``source``.

    Made by hand: ``ReferencedSegmentationFrame.from_segmentation`` would give the source image
    the SEG's frame numbers, and a single-frame radiograph has no frames to reference.

    Raises:
        ValueError: ``seg`` is no SEG, is of another study, or does not reference ``source``.
    """
    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise ValueError(
            f"seg has SOP Class UID {seg.get('SOPClassUID')!r}, expected a DICOM SEG ({SEGMENTATION_STORAGE})"
        )
    if seg.get("StudyInstanceUID") != source.get("StudyInstanceUID"):
        raise ValueError("the SEG belongs to another study than the source; pass the SEG made from this source")
    referenced = {
        str(instance.ReferencedSOPInstanceUID)
        for series in seg.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedInstanceSequence", [])
    }
    if str(source.SOPInstanceUID) not in referenced:
        raise ValueError("the SEG does not reference the source image; pass the SEG made from this source")
    segments = {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in seg.get("SegmentSequence", [])}
    if segments.get(1) != LUNG_SEGMENT_LABEL:
        raise ValueError(f"the SEG's segment 1 is {segments.get(1)!r}, expected {LUNG_SEGMENT_LABEL!r}")
    return hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        frame_number=1,
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation(str(source.SOPClassUID), str(source.SOPInstanceUID)),
    )


def _seg_evidence(seg: Dataset) -> Dataset:
    """The four attributes highdicom needs of the SEG to list it as evidence."""
    evidence = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(evidence, keyword, seg.get(keyword))
    return evidence


def make_lung_sr(
    source: Dataset,
    seg: Dataset | None,
    measurements: Mapping[str, Any],
    qc: QCResult,
    identity: str,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> hd.sr.ComprehensiveSR:
    """Build the TID 1500 Measurement Report of one radiograph's lung areas and quality verdict.

    Args:
        source: the radiograph's dataset (pixel data not needed).
        seg: the SEG of the mask the areas were measured on (:func:`make_lung_seg`, or a SEG file
            read with pydicom), or None when there is none (the report then references the image).
        measurements: the row :func:`~lungseg_monai.outputs.measurements.measure_radiograph` gives
            (``lung_area_px``, ``right_lung_area_px``, ``left_lung_area_px``, ``*_cm2`` (empty without
            spacing), ``spacing_source``, ``laterality_source``); a row read back from the CSV works too.
        qc: the mask's quality verdict.
        identity: the model's identity (:attr:`LungSegmenter.identity`), the algorithm version.
        series_instance_uid: the SR series (:attr:`ResultUIDs.sr_series_uid`).
        sop_instance_uid: the SR's SOP Instance UID (:attr:`ResultUIDs.sr_sop_uid`).

    Raises:
        ValueError: the measurements lack an area, the QC status is unknown, or ``seg`` is not the
            SEG of ``source``'s lung mask.

    Example:
        >>> from lungseg_monai.outputs.dicom_uids import ResultUIDs
        >>> uids = ResultUIDs.for_source(source, segmenter.identity)  # doctest: +SKIP
        >>> identity = segmenter.identity  # doctest: +SKIP
        >>> sr = make_lung_sr(source, seg, row, qc, identity, uids.sr_series_uid, uids.sr_sop_uid)  # doctest: +SKIP
        >>> sr.SeriesDescription  # doctest: +SKIP
        'Lung measurements (lungseg_monai)'
    """
    if qc.status not in _QC_VALUES:
        raise ValueError(f"QC status {qc.status!r} is unknown; expected one of {', '.join(QC_STATUSES)}")
    header = patient_study_header(source)
    areas, unit = _areas(measurements)
    lung = hd.sr.CodedConcept(*LUNG)
    area_items = [
        hd.sr.Measurement(name=AREA, value=value, unit=unit, finding_sites=[hd.sr.FindingSite(lung, laterality)])
        for value, (_, laterality) in zip(areas, _LATERALITIES)
    ]
    if qc.score is not None:
        area_items.append(hd.sr.Measurement(name=QC_SCORE, value=round(float(qc.score), 4), unit=NO_UNITS))
    group_arguments: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", str(source.SOPInstanceUID), identity), identifier=TRACKING_IDENTIFIER
        ),
        "finding_type": lung,
        "finding_category": hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE),
        "algorithm_id": hd.sr.AlgorithmIdentification(name=MODEL_NAME, version=identity),
        "measurements": area_items,
        "qualitative_evaluations": [hd.sr.QualitativeEvaluation(QC_STATUS, _QC_VALUES[qc.status])],
    }
    evidence = [header]
    if seg is not None:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=_segment_reference(seg, source), **group_arguments
        )
        evidence.append(_seg_evidence(seg))
    else:
        source_image = hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID), str(source.SOPInstanceUID))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(source_images=[source_image], **group_arguments)
    group[0].ContentSequence.append(_text(SPACING_SOURCE, str(measurements.get("spacing_source") or "none")))
    laterality_source = str(measurements.get("laterality_source") or "")
    if laterality_source:
        group[0].ContentSequence.append(_text(LATERALITY_SOURCE, laterality_source))
    if qc.reasons:
        group[0].ContentSequence.append(_text(QC_REASONS, qc.reasons_text()))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", identity), name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=identity
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        coding_schemes=[_PRIVATE_SCHEME_ITEM],
    )


def save_lung_sr(
    source: Dataset | str | os.PathLike,
    target: str | os.PathLike,
    seg: Dataset | str | os.PathLike | None,
    measurements: Mapping[str, Any],
    qc: QCResult,
    identity: str,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> Path:
    """Build :func:`make_lung_sr` and write it to ``target`` atomically.

    Args:
        source: the radiograph's dataset or DICOM file.
        target: where the SR goes (``.dcm``).
        seg: the SEG (dataset or file) the report references, or None.
        measurements, qc, identity, series_instance_uid, sop_instance_uid: see :func:`make_lung_sr`.

    Returns:
        ``target``.
    """
    seg_header = None if seg is None else read_source_header(seg, what="SEG")
    sr = make_lung_sr(
        read_source_header(source), seg_header, measurements, qc, identity, series_instance_uid, sop_instance_uid
    )
    target = Path(target)
    with atomic_path(target) as tmp:
        sr.save_as(str(tmp))
    return target
