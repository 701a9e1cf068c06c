"""Secondary Capture of the lung overlay over real radiographs (sample_data/dicom, tests/data; synthetic masks)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM
from dicom_factory import synthetic_lung_mask
from stub_segmenter import stub_segmenter

from lungseg_monai.inference.discovery import classify_dicom, read_dicom_header
from lungseg_monai.inference.runner import segment_files
from lungseg_monai.io import read_radiograph
from lungseg_monai.outputs.dicom_sc import make_overlay_sc, save_overlay_sc
from lungseg_monai.outputs.dicom_uids import ResultUIDs
from lungseg_monai.outputs.overlay import PREDICTION_COLOUR, overlay_contours

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IDENTITY = "LungUNet-resnet34-0123456789ab"


@pytest.mark.parametrize(
    ("source_path", "orientation", "spacing"),
    [(DICOM_J2K_MONO1, ["L", "F"], None), (DICOM_JPEG_SIIM, "", [0.168, 0.168])],
    ids=["j2k_cr", "jpeg_sc"],
)
def test_overlay_sc_has_the_source_grid_study_and_reference(
    tmp_path: Path, source_path: Path, orientation: list[str] | str, spacing: list[float] | None
) -> None:
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    radiograph = read_radiograph(source_path)
    mask = synthetic_lung_mask(source)
    rgb = overlay_contours(radiograph.pixels, mask)
    uids = ResultUIDs.for_source(source, IDENTITY)
    path = save_overlay_sc(source_path, tmp_path / "sc.dcm", rgb, IDENTITY, uids.sc_series_uid, uids.sc_sop_uid)

    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
    np.testing.assert_array_equal(sc.pixel_array, rgb)
    red = (sc.pixel_array == PREDICTION_COLOUR).all(axis=-1)
    assert red.any() and mask[red].all()  # the contour is drawn, inside the mask
    for keyword in ("StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"):
        assert sc.get(keyword) == source.get(keyword), keyword
    assert (sc.SeriesInstanceUID, sc.SOPInstanceUID) == (uids.sc_series_uid, uids.sc_sop_uid)
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SeriesDescription == "Lung overlay (lungseg_monai)"
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    reference = sc.SourceImageSequence[0]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    # Our own overlay sent back to us (a PACS routing rule, a DICOMweb listing) is not segmented again.
    assert classify_dicom(read_dicom_header(source_path)) is None
    assert "lungseg_monai result" in classify_dicom(sc)
    assert "lungseg_monai result" in classify_dicom(sc, check_headers=False)
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert IDENTITY in sc.DerivationDescription
    # The source's orientation and (positive) spacing, nothing invented: the CR says PixelSpacing 0\0.
    assert (list(sc.PatientOrientation) if sc.PatientOrientation else "") == orientation
    assert ([float(v) for v in sc.PixelSpacing] if "PixelSpacing" in sc else None) == spacing


def test_patient_names_are_not_warned_about_synthetic() -> None:
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    source.PatientName, source.ReferringPhysicianName, source.PatientSex = "Doezzy", "Smithzzy", "U"
    uids = ResultUIDs.for_source(source, IDENTITY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom would warn with the name in the message
        sc = make_overlay_sc(source, np.zeros((1024, 1024, 3), np.uint8), IDENTITY, uids.sc_series_uid, uids.sc_sop_uid)
    assert (str(sc.PatientName), str(sc.ReferringPhysicianName), sc.PatientSex) == ("Doezzy^", "Smithzzy^", "")


@pytest.mark.parametrize(("source_value", "expected"), [("YES", "YES"), ("NO", "NO"), (None, "YES"), ("", "YES")])
def test_burned_in_annotation_is_the_sources_and_yes_when_unknown(source_value: str | None, expected: str) -> None:
    """The SC's pixels are the source film's: text burned into it (a patient's name) is burned into the SC too."""
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    if source_value is None:
        if "BurnedInAnnotation" in source:
            del source.BurnedInAnnotation
    else:
        source.BurnedInAnnotation = source_value
    uids = ResultUIDs.for_source(source, IDENTITY)
    sc = make_overlay_sc(source, np.zeros((1024, 1024, 3), np.uint8), IDENTITY, uids.sc_series_uid, uids.sc_sop_uid)
    assert sc.BurnedInAnnotation == expected


def test_overlay_of_another_size_or_type_is_refused() -> None:
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    uids = ResultUIDs.for_source(source, IDENTITY)
    with pytest.raises(ValueError) as info:
        make_overlay_sc(source, np.zeros((10, 20, 3), np.uint8), IDENTITY, uids.sc_series_uid, uids.sc_sop_uid)
    assert str(info.value) == (
        "overlay is uint8 of shape (10, 20, 3) but the source DICOM is 1024x1024; "
        "expected uint8 (1024, 1024, 3), as overlay_contours() gives"
    )
    with pytest.raises(ValueError, match="overlay is float64 of shape"):
        make_overlay_sc(source, np.zeros((1024, 1024, 3)), IDENTITY, uids.sc_series_uid, uids.sc_sop_uid)


def test_infer_writes_the_overlay_png_and_its_secondary_capture_alike(tmp_path: Path) -> None:
    shutil.copy(DICOM_JPEG_SIIM, tmp_path / "chest.dcm")
    segmenter = stub_segmenter()
    summary = segment_files([tmp_path / "chest.dcm"], tmp_path / "out", segmenter, "overlay,dicomsc", progress=False)
    assert summary.ok
    source = pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True)
    name = str(source.SOPInstanceUID)
    sc = pydicom.dcmread(tmp_path / "out" / "dicomsc" / f"{name}.dcm")
    uids = ResultUIDs.for_source(source, segmenter.identity, segmenter.result_settings(False))
    assert (sc.SOPInstanceUID, sc.SeriesInstanceUID) == (uids.sc_sop_uid, uids.sc_series_uid)
    np.testing.assert_array_equal(sc.pixel_array, np.asarray(Image.open(tmp_path / "out" / "overlays" / f"{name}.png")))
