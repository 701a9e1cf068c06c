"""DICOM SEG of a lung mask over the real radiographs in ../shared/data/dicom, read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM, require_shared
from pydicom.uid import generate_uid

from lungseg_monai.outputs.dicom_seg import make_lung_seg, save_lung_seg

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _mask_for(source: pydicom.Dataset) -> np.ndarray:
    """Synthetic mask with two rectangles, off-centre so a flip or transposition would show."""
    rows, cols = int(source.Rows), int(source.Columns)
    mask = np.zeros((rows, cols), np.uint8)
    mask[rows // 5 : rows * 3 // 4, cols // 10 : cols * 2 // 5] = 1
    mask[rows // 4 : rows * 3 // 4, cols * 3 // 5 : cols * 9 // 10] = 1
    return mask


@pytest.mark.parametrize("source_path", [DICOM_J2K_MONO1, DICOM_JPEG_SIIM], ids=["j2k_cr", "jpeg_sc"])
def test_seg_references_source_and_reads_back(tmp_path: Path, source_path: Path) -> None:
    require_shared()
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    mask = _mask_for(source)
    series_uid = generate_uid()
    path = save_lung_seg(mask, source_path, tmp_path / "seg.dcm", series_uid, "9.9.9")

    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.Modality == "SEG"
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesInstanceUID == series_uid
    # Patient and study: the source's, so a PACS files the SEG in the same study.
    for keyword in ("StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"):
        assert seg.get(keyword) == source.get(keyword), keyword
    assert str(seg.PatientName).rstrip("^") == str(source.PatientName).rstrip("^")
    # Referenced source: series level and per frame.
    referenced_series = seg.ReferencedSeriesSequence[0]
    assert referenced_series.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert derivation.ReferencedSOPClassUID == source.SOPClassUID
    # Neither source has a frame of reference, so the SEG must not invent one.
    assert "FrameOfReferenceUID" not in source and "FrameOfReferenceUID" not in seg
    # The segment: "Lung", SCT Anatomical Structure / Lung, automatic.
    description = seg.get_segment_description(1)
    assert description.segment_label == "Lung"
    assert (
        description.segmented_property_category.value,
        description.segmented_property_category.scheme_designator,
    ) == (
        "123037004",
        "SCT",
    )
    assert (description.segmented_property_type.value, description.segmented_property_type.meaning) == (
        "39607008",
        "Lung",
    )
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)
    assert source.get("LossyImageCompression") == "01" and seg.LossyImageCompression == "01"
    assert seg.LossyImageCompressionMethod in ("ISO_10918_1", "ISO_15444_1")


def test_frame_of_reference_of_the_source_is_kept() -> None:
    require_shared()
    source = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
    source.FrameOfReferenceUID = for_uid = generate_uid()
    seg = make_lung_seg(_mask_for(source), source, generate_uid(), "9.9.9")
    assert seg.FrameOfReferenceUID == for_uid


def test_source_without_type2_patient_attributes_is_completed_synthetic() -> None:
    require_shared()
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if keyword in source:
            delattr(source, keyword)
    source.PatientSex = "U"  # not a DICOM value
    seg = make_lung_seg(_mask_for(source), source, generate_uid(), "9.9.9")
    assert seg.PatientBirthDate == "" and seg.AccessionNumber == "" and seg.PatientSex == ""


def test_mask_of_another_size_is_refused_with_both_sizes() -> None:
    require_shared()
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    with pytest.raises(ValueError) as info:
        make_lung_seg(np.zeros((10, 20), np.uint8), source, generate_uid(), "9.9.9")
    assert str(info.value) == (
        "mask is 20x10 but the source DICOM is 1024x1024; a SEG must have the source's rows and columns"
    )
