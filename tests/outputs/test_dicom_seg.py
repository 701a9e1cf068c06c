"""DICOM SEG of a lung mask over the real radiographs of sample_data/dicom and tests/data, read back with highdicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM
from dicom_factory import synthetic_lung_mask
from pydicom.uid import generate_uid
from stub_segmenter import stub_segmenter

from lungseg_monai import __version__
from lungseg_monai.inference.runner import segment_files
from lungseg_monai.outputs.dicom_seg import (
    CONTENT_DESCRIPTION,
    lung_segment_number,
    make_lung_seg,
    qc_content_description,
    read_lung_seg_mask,
    save_lung_seg,
)
from lungseg_monai.qc.quality import QCResult

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.mark.parametrize("source_path", [DICOM_J2K_MONO1, DICOM_JPEG_SIIM], ids=["j2k_cr", "jpeg_sc"])
def test_seg_references_source_and_reads_back(tmp_path: Path, source_path: Path) -> None:
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    mask = synthetic_lung_mask(source)
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


def _write_and_read_back(seg: hd.seg.Segmentation, path: Path) -> hd.seg.Segmentation:
    seg.save_as(str(path))
    return hd.seg.segread(path)


def test_frame_of_reference_without_an_image_plane_is_not_passed_on(tmp_path: Path) -> None:
    """A source FoR UID without IPP/IOP would oblige the SEG to state a plane the source never had."""
    source = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
    source.FrameOfReferenceUID = generate_uid()
    assert "ImagePositionPatient" not in source and "ImageOrientationPatient" not in source
    mask = synthetic_lung_mask(source)
    seg = _write_and_read_back(make_lung_seg(mask, source, generate_uid(), "9.9.9"), tmp_path / "seg.dcm")
    assert "FrameOfReferenceUID" not in seg and "PositionReferenceIndicator" not in seg
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" not in shared
    assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)


def test_frame_of_reference_with_an_image_plane_comes_with_plane_position_and_orientation(tmp_path: Path) -> None:
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    source.FrameOfReferenceUID = for_uid = generate_uid()
    source.ImagePositionPatient = [-172.0, 0.0, 190.0]
    source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal: rows to the left, columns down
    mask = synthetic_lung_mask(source)
    seg = _write_and_read_back(make_lung_seg(mask, source, generate_uid(), "9.9.9"), tmp_path / "seg.dcm")
    assert seg.FrameOfReferenceUID == for_uid
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.168, 0.168]
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in position] == [-172.0, 0.0, 190.0]
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)


def test_seg_algorithm_version_is_the_model_identity(tmp_path: Path) -> None:
    """Two models with different weights write SEGs that say which model made them."""
    shutil.copy(DICOM_JPEG_SIIM, tmp_path / "chest.dcm")
    versions = {}
    for weight in (1.0, 2.0):
        segmenter = stub_segmenter(weight)
        out = tmp_path / f"out{weight}"
        summary = segment_files([tmp_path / "chest.dcm"], out, segmenter, formats="dicomseg", progress=False)
        (seg_file,) = [p for p in summary.written if p.parent.name == "dicomseg"]
        assert summary.ok
        seg = pydicom.dcmread(seg_file)
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion == segmenter.identity
        assert (algorithm.AlgorithmName, seg.SegmentSequence[0].SegmentAlgorithmName) == ("LungUNet", "LungUNet")
        assert seg.SoftwareVersions == __version__
        versions[weight] = algorithm.AlgorithmVersion
    assert versions[1.0] != versions[2.0]


def test_source_without_type2_patient_attributes_is_completed_synthetic() -> None:
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if keyword in source:
            delattr(source, keyword)
    source.PatientSex = "U"  # not a DICOM value
    seg = make_lung_seg(synthetic_lung_mask(source), source, generate_uid(), "9.9.9")
    assert seg.PatientBirthDate == "" and seg.AccessionNumber == "" and seg.PatientSex == ""


def test_mask_of_another_size_is_refused_with_both_sizes() -> None:
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    with pytest.raises(ValueError) as info:
        make_lung_seg(np.zeros((10, 20), np.uint8), source, generate_uid(), "9.9.9")
    assert str(info.value) == (
        "mask is 20x10 but the source DICOM is 1024x1024; a SEG must have the source's rows and columns"
    )


def test_manual_seg_of_a_persons_label_reads_back_through_lungseg_and_highdicom(tmp_path: Path) -> None:
    source = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
    mask = synthetic_lung_mask(source)
    seg = _write_and_read_back(
        make_lung_seg(mask, source, generate_uid(), None, algorithm_type="MANUAL"), tmp_path / "seg.dcm"
    )
    description = seg.get_segment_description(1)
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.MANUAL
    assert "SegmentationAlgorithmIdentificationSequence" not in seg.SegmentSequence[0]
    assert (seg.SeriesDescription, seg.SeriesNumber) == ("Lung label (manual)", 1005)
    assert seg.ContentDescription == "Lungs labelled by a person"
    assert lung_segment_number(seg) == 1
    np.testing.assert_array_equal(read_lung_seg_mask(seg, source.SOPInstanceUID), mask)
    with pytest.raises(ValueError, match="has no frame over image 1.2.3"):
        read_lung_seg_mask(seg, "1.2.3")


def test_algorithm_type_is_checked_and_defaults_to_automatic() -> None:
    source = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
    mask = synthetic_lung_mask(source)
    automatic = make_lung_seg(mask, source, generate_uid(), "9.9.9")
    assert automatic.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert automatic.SeriesNumber == 1001 and automatic.ContentDescription == "Lungs segmented automatically"
    with pytest.raises(ValueError, match=r"segment algorithm type must be one of \['AUTOMATIC', 'SEMIAUTOMATIC', "):
        make_lung_seg(mask, source, generate_uid(), "9.9.9", algorithm_type="guessed")
    with pytest.raises(ValueError, match="an AUTOMATIC lung segment needs the model's identity"):
        make_lung_seg(mask, source, generate_uid(), None)
    other = pydicom.Dataset()
    other.SegmentSequence = [pydicom.Dataset()]
    other.SegmentSequence[0].SegmentNumber = 1
    assert lung_segment_number(other) is None


def test_content_description_never_describes_an_unchecked_mask_like_a_pass() -> None:
    """A SEG whose mask QC could not check says so; only a pass says "Lungs segmented automatically"."""
    unchecked = qc_content_description(QCResult.unavailable("the model has no QC calibration"))
    assert unchecked == "QC unavailable: the model has no QC calibration"
    assert qc_content_description(QCResult("pass", 0.97)) == CONTENT_DESCRIPTION
    assert qc_content_description(QCResult("review", 0.85, ("estimated Dice 0.85 < 0.90",))).startswith("QC review: ")
