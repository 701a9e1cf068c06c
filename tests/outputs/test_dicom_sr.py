"""TID 1500 lung measurement SR over real radiographs (sample_data/dicom), read back with pydicom and highdicom.

The masks are synthetic (two off-centre rectangles); the areas come from measure_radiograph on the
real files: the J2K CR states no usable spacing (areas in pixels), the JPEG secondary capture
states PixelSpacing 0.168 mm (areas in cm²).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM, SAMPLE_DATA
from dicom_factory import synthetic_lung_mask
from stub_segmenter import stub_segmenter

from lungseg_monai.inference.options import DEFAULT_FORMATS
from lungseg_monai.inference.runner import MEASUREMENTS_FILE, segment_files
from lungseg_monai.io import read_radiograph
from lungseg_monai.outputs.dicom_seg import make_lung_seg
from lungseg_monai.outputs.dicom_sr import make_lung_sr, save_lung_sr
from lungseg_monai.outputs.dicom_uids import ResultUIDs
from lungseg_monai.outputs.measurements import measure_radiograph, read_measurements
from lungseg_monai.qc.quality import QCResult

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
IDENTITY = "LungUNet-resnet34-0123456789ab"
LATERALITY = {"51440002": "lung_area", "24028007": "right_lung_area", "7771000": "left_lung_area"}
SAMPLE_PNG = SAMPLE_DATA / "images" / "1052b0fe.png"
REVIEW = QCResult("review", 0.8734, ("estimated Dice 0.87 < 0.90",))


def _case(source_path: Path) -> tuple[pydicom.Dataset, np.ndarray, dict, ResultUIDs]:
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    mask = synthetic_lung_mask(source)
    row = measure_radiograph(mask, read_radiograph(source_path), "name")
    return source, mask, row, ResultUIDs.for_source(source, IDENTITY)


def _code(item: pydicom.Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _group(sr: pydicom.Dataset) -> pydicom.Dataset:
    (imaging,) = [item for item in sr.ContentSequence if _code(item) == ("126010", "DCM")]  # Imaging Measurements
    (group,) = imaging.ContentSequence
    assert _code(group) == ("125007", "DCM")  # Measurement Group
    return group


def _areas(group: pydicom.Dataset) -> dict[str, tuple[float, str]]:
    """Area by measurement column (lung_area, right_lung_area, left_lung_area) -> (value, UCUM unit)."""
    areas = {}
    for item in group.ContentSequence:
        if item.ValueType == "NUM" and _code(item) == ("42798000", "SCT"):
            (site,) = [s for s in item.ContentSequence if _code(s) == ("363698007", "SCT")]
            assert site.ConceptCodeSequence[0].CodeValue == "39607008"  # Lung
            (laterality,) = site.ContentSequence
            assert _code(laterality) == ("272741003", "SCT")  # Laterality
            value = item.MeasuredValueSequence[0]
            key = LATERALITY[laterality.ConceptCodeSequence[0].CodeValue]
            areas[key] = (float(value.NumericValue), str(value.MeasurementUnitsCodeSequence[0].CodeValue))
    return areas


def _private(group: pydicom.Dataset, code_value: str) -> pydicom.Dataset:
    (item,) = [i for i in group.ContentSequence if _code(i) == (code_value, "99LUNGSEG")]
    return item


@pytest.mark.parametrize(
    ("source_path", "unit"), [(DICOM_J2K_MONO1, "{pixels}"), (DICOM_JPEG_SIIM, "cm2")], ids=["j2k_cr_px", "jpeg_sc_cm2"]
)
def test_sr_with_seg_holds_the_areas_verdict_and_references(tmp_path: Path, source_path: Path, unit: str) -> None:
    source, mask, row, uids = _case(source_path)
    seg = make_lung_seg(mask, source, uids.seg_series_uid, IDENTITY, sop_instance_uid=uids.seg_sop_uid)
    target = tmp_path / "sr.dcm"
    path = save_lung_sr(source_path, target, seg, row, REVIEW, IDENTITY, uids.sr_series_uid, uids.sr_sop_uid)

    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (uids.sr_series_uid, uids.sr_sop_uid)
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SeriesDescription == "Lung measurements (lungseg_monai)"
    for keyword in ("StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"):
        assert sr.get(keyword) == source.get(keyword), keyword
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LUNGSEG"

    group = _group(sr)
    suffix = "_px" if unit == "{pixels}" else "_cm2"
    expected = {key: (float(row[key + suffix]), unit) for key in LATERALITY.values()}
    assert _areas(group) == expected
    assert row["right_lung_area_px"] != row["left_lung_area_px"]  # a swap of sides would show
    assert _private(group, "qc_status").ConceptCodeSequence[0].CodeValue == "review"
    assert float(_private(group, "qc_score").MeasuredValueSequence[0].NumericValue) == 0.8734
    assert _private(group, "spacing_source").TextValue == row["spacing_source"]
    assert _private(group, "laterality_src").TextValue == row["laterality_source"]
    assert _private(group, "qc_reasons").TextValue == "estimated Dice 0.87 < 0.90"
    algorithm = [i for i in group.ContentSequence if _code(i) == ("111001", "DCM")][0]  # Algorithm Name
    version = [i for i in group.ContentSequence if _code(i) == ("111003", "DCM")][0]  # Algorithm Version
    assert (algorithm.TextValue, version.TextValue) == ("LungUNet", IDENTITY)

    # Referenced segment: SEG frame 1, segment 1, whose source is the radiograph.
    (frame,) = [i for i in group.ContentSequence if _code(i) == ("121214", "DCM")]
    reference = frame.ReferencedSOPSequence[0]
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedSegmentNumber) == (uids.seg_sop_uid, 1)
    (source_image,) = [i for i in group.ContentSequence if _code(i) == ("121233", "DCM")]
    assert source_image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "ReferencedFrameNumber" not in source_image.ReferencedSOPSequence[0]  # a single-frame image
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence == {str(source.SOPInstanceUID), uids.seg_sop_uid}

    # highdicom reads it back as a TID 1500 report with a planar ROI group.
    parsed = hd.sr.srread(path)
    assert isinstance(parsed, hd.sr.ComprehensiveSR)
    (roi_group,) = parsed.content.get_planar_roi_measurement_groups()
    assert roi_group.referenced_segmentation_frame.referenced_sop_instance_uid == uids.seg_sop_uid
    assert sorted(m.value for m in roi_group.get_measurements(name=hd.sr.CodedConcept("42798000", "SCT", "Area"))) == (
        sorted(v for v, _ in expected.values())
    )


def test_sr_without_seg_references_the_image_and_carries_a_reject(tmp_path: Path) -> None:
    """A rejected mask gets no SEG, but its SR still says the verdict, over the radiograph itself."""
    source, _, row, uids = _case(DICOM_JPEG_SIIM)
    reject = QCResult("reject", None, ("no lung found",))
    path = save_lung_sr(source, tmp_path / "sr.dcm", None, row, reject, IDENTITY, uids.sr_series_uid, uids.sr_sop_uid)
    sr = pydicom.dcmread(path)
    group = _group(sr)
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    assert _private(group, "qc_status").ConceptCodeSequence[0].CodeValue == "reject"
    assert not [i for i in group.ContentSequence if _code(i) == ("qc_score", "99LUNGSEG")]  # no score to give
    (image,) = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert _areas(group)["lung_area"] == (float(row["lung_area_cm2"]), "cm2")
    (parsed_group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    assert parsed_group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID


def test_a_csv_row_read_back_gives_the_same_areas_synthetic() -> None:
    """Measurements read back from measurements.csv are strings; empty cm² columns mean pixels."""
    source, _, row, uids = _case(DICOM_J2K_MONO1)
    as_csv = {key: str(value) for key, value in row.items()}
    sr = make_lung_sr(source, None, as_csv, REVIEW, IDENTITY, uids.sr_series_uid, uids.sr_sop_uid)
    assert _areas(_group(sr))["right_lung_area"] == (float(row["right_lung_area_px"]), "{pixels}")


def test_patient_data_is_neither_warned_nor_logged_synthetic(caplog: pytest.LogCaptureFixture) -> None:
    source, _, row, uids = _case(DICOM_J2K_MONO1)
    source.PatientName, source.PatientSex, source.ReferringPhysicianName = "Doezzy", "U", "Smithzzy"
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sr = make_lung_sr(source, None, row, REVIEW, IDENTITY, uids.sr_series_uid, uids.sr_sop_uid)
    assert "zzy" not in caplog.text
    assert (str(sr.PatientName), sr.PatientSex) == ("Doezzy^", "")


def test_tracking_and_observer_uids_are_deterministic_per_identity_synthetic() -> None:
    source, _, row, uids = _case(DICOM_J2K_MONO1)

    def uid_items(identity: str) -> list[str]:
        sr = make_lung_sr(source, None, row, REVIEW, identity, uids.sr_series_uid, uids.sr_sop_uid)
        found = []
        for item in [*sr.ContentSequence, *_group(sr).ContentSequence]:
            if item.ValueType == "UIDREF":
                found.append(str(item.UID))
        return found

    first = uid_items(IDENTITY)
    assert len(first) == 2  # device observer UID, tracking UID
    assert uid_items(IDENTITY) == first
    assert not set(uid_items(IDENTITY + "x")) & set(first)


def test_missing_areas_unknown_status_and_a_foreign_seg_are_refused() -> None:
    source, mask, row, uids = _case(DICOM_JPEG_SIIM)
    args = (IDENTITY, uids.sr_series_uid, uids.sr_sop_uid)
    incomplete = {k: v for k, v in row.items() if k not in ("left_lung_area_px", "left_lung_area_cm2")}
    with pytest.raises(ValueError) as info:
        make_lung_sr(source, None, incomplete, REVIEW, *args)
    assert str(info.value) == (
        "measurements lack left_lung_area_px; pass the row measure_radiograph() gives for the mask"
    )
    with pytest.raises(ValueError, match="QC status 'maybe' is unknown; expected one of pass, review, reject"):
        make_lung_sr(source, None, row, QCResult("maybe"), *args)
    other = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
    other.StudyInstanceUID = source.StudyInstanceUID  # same study, another image
    foreign = make_lung_seg(synthetic_lung_mask(other), other, uids.seg_series_uid, IDENTITY)
    with pytest.raises(ValueError, match="the SEG does not reference the source image"):
        make_lung_sr(source, foreign, row, REVIEW, *args)


def _copy_inputs(folder: Path) -> Path:
    """The two real DICOMs and a PNG (which gets no DICOM results) in one input folder."""
    folder.mkdir()
    for source in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM, SAMPLE_PNG):
        shutil.copy(source, folder / source.name)
    return folder


def test_infer_writes_an_sr_per_dicom_input_referencing_its_seg(tmp_path: Path) -> None:
    segmenter = stub_segmenter()
    formats = "dicomseg,dicomsr,measurements"
    summary = segment_files([_copy_inputs(tmp_path / "in")], tmp_path / "out", segmenter, formats, progress=False)
    assert summary.ok
    rows = read_measurements(tmp_path / "out" / MEASUREMENTS_FILE)
    for source_path, suffix, unit in ((DICOM_J2K_MONO1, "_px", "{pixels}"), (DICOM_JPEG_SIIM, "_cm2", "cm2")):
        source = pydicom.dcmread(source_path, stop_before_pixels=True)
        name = str(source.SOPInstanceUID)
        uids = ResultUIDs.for_source(source, segmenter.identity, segmenter.result_settings(False))
        sr = pydicom.dcmread(tmp_path / "out" / "dicomsr" / f"{name}.dcm")
        assert (sr.SOPInstanceUID, sr.SeriesInstanceUID, sr.StudyInstanceUID) == (
            uids.sr_sop_uid,
            uids.sr_series_uid,
            source.StudyInstanceUID,
        )
        group = _group(sr)
        assert _areas(group) == {key: (float(rows[name][key + suffix]), unit) for key in LATERALITY.values()}
        assert _private(group, "qc_status").ConceptCodeSequence[0].CodeValue == rows[name]["qc_status"]
        (frame,) = [i for i in group.ContentSequence if _code(i) == ("121214", "DCM")]
        assert frame.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uids.seg_sop_uid
        assert pydicom.dcmread(tmp_path / "out" / "dicomseg" / f"{name}.dcm").SOPInstanceUID == uids.seg_sop_uid
    assert sorted(p.name for p in (tmp_path / "out" / "dicomsr").iterdir()) == sorted(
        f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM)
    )  # the PNG gets none
    assert "dicomsr" not in DEFAULT_FORMATS and "dicomsc" not in DEFAULT_FORMATS


def test_infer_gives_a_rejected_mask_an_sr_without_seg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    segmenter = stub_segmenter()
    monkeypatch.setattr(segmenter, "assess", lambda _: QCResult("reject", 0.42, ("no lung found",)))
    shutil.copy(DICOM_JPEG_SIIM, tmp_path / "chest.dcm")
    name = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    for out, write_rejected in ((tmp_path / "out", False), (tmp_path / "out_rejected", True)):
        summary = segment_files(
            [tmp_path / "chest.dcm"], out, segmenter, "dicomseg,dicomsr", progress=False, write_rejected=write_rejected
        )
        assert summary.ok
        group = _group(pydicom.dcmread(out / "dicomsr" / f"{name}.dcm"))
        assert _private(group, "qc_status").ConceptCodeSequence[0].CodeValue == "reject"
        assert _private(group, "qc_reasons").TextValue == "no lung found"
        seg_references = [i for i in group.ContentSequence if _code(i) == ("121214", "DCM")]
        assert (out / "dicomseg" / f"{name}.dcm").exists() is write_rejected
        assert len(seg_references) == int(write_rejected)
