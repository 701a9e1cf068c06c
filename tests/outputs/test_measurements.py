"""Lung area measurements: right/left assignment, cm² from the patient-plane spacing, the CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DICOM_JPEG_SIIM
from dicom_factory import copy_with

from lungseg_monai.io import read_radiograph
from lungseg_monai.outputs import (
    MEASUREMENT_COLUMNS,
    measure_lungs,
    measure_radiograph,
    read_measurements,
    write_measurements,
)


def test_right_lung_is_on_the_image_left_synthetic() -> None:
    mask = np.zeros((100, 120), np.uint8)
    mask[20:80, 10:50] = 1  # image left: 2400 px, the patient's right lung
    mask[30:80, 75:110] = 1  # image right: 1750 px, the patient's left lung
    row = measure_lungs(mask, spacing=(0.2, 0.25), name="a", source="/x/a.png")
    assert (row["lung_area_px"], row["right_lung_area_px"], row["left_lung_area_px"]) == (4150, 2400, 1750)
    # 0.2 mm x 0.25 mm = 0.0005 cm² per pixel
    assert (row["lung_area_cm2"], row["right_lung_area_cm2"], row["left_lung_area_cm2"]) == (2.075, 1.2, 0.875)
    assert (row["rows"], row["columns"], row["row_spacing_mm"], row["column_spacing_mm"]) == (100, 120, 0.2, 0.25)


def test_regions_are_assigned_whole_by_centre_even_off_centre_synthetic() -> None:
    """A patient shifted to the image's right: both lungs right of the image centre."""
    mask = np.zeros((50, 200), np.uint8)
    mask[10:40, 105:135] = 1  # 900 px
    mask[10:40, 150:170] = 1  # 600 px
    mask[12:14, 137:139] = 1  # 4 px speck left of the divide (between the two lungs' centres)
    row = measure_lungs(mask)
    assert (row["right_lung_area_px"], row["left_lung_area_px"]) == (904, 600)
    assert row["lung_area_cm2"] == "" and row["row_spacing_mm"] == ""


def test_single_region_is_split_at_the_image_centre_synthetic() -> None:
    mask = np.zeros((10, 40), np.uint8)
    mask[2:8, 10:30] = 1  # one region across the centre column 20
    row = measure_lungs(mask)
    assert (row["right_lung_area_px"], row["left_lung_area_px"]) == (60, 60)


def test_empty_mask_measures_zero() -> None:
    row = measure_lungs(np.zeros((4, 4), np.uint8), spacing=(1.0, 1.0))
    assert (row["lung_area_px"], row["right_lung_area_px"], row["lung_area_cm2"]) == (0, 0, 0.0)


def test_csv_round_trip_sorted_by_name(tmp_path) -> None:
    mask = np.ones((4, 6), np.uint8)
    rows = [measure_lungs(mask, None, "b", "b.png"), measure_lungs(mask, (0.5, 0.5), "a", "a.dcm")]
    path = write_measurements(rows, tmp_path / "measurements.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(MEASUREMENT_COLUMNS)
    back = read_measurements(path)
    assert list(back) == ["a", "b"]
    assert back["a"]["lung_area_cm2"] == "0.06" and back["b"]["lung_area_cm2"] == ""
    assert back["b"]["lung_area_px"] == "24"


def test_measure_rejects_3d_mask() -> None:
    with pytest.raises(ValueError, match=r"expected a 2D \(rows, columns\) mask, got shape \(1, 4, 4\)"):
        measure_lungs(np.zeros((1, 4, 4)))


def _two_lungs(rows: int, columns: int) -> np.ndarray:
    """Synthetic mask: 40000 px on the image's left, 30000 px on its right."""
    mask = np.zeros((rows, columns), np.uint8)
    mask[200:400, 100:300] = 1
    mask[200:350, 600:800] = 1
    return mask


def _measure_copy(tmp_path: Path, remove: tuple[str, ...] = (), **attributes: object) -> dict:
    """Measure the two-lung mask over a copy of the real SIIM radiograph with the header changed."""
    path = copy_with(DICOM_JPEG_SIIM, tmp_path / f"{len(list(tmp_path.iterdir()))}.dcm", remove, **attributes)
    radiograph = read_radiograph(path)
    return measure_radiograph(_two_lungs(*radiograph.shape), radiograph, "x")


def test_magnification_factor_divides_the_imager_pixel_spacing(tmp_path: Path) -> None:
    detector = _measure_copy(tmp_path, ("PixelSpacing",), ImagerPixelSpacing=[0.2, 0.2])
    corrected = _measure_copy(
        tmp_path, ("PixelSpacing",), ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=1.25
    )
    assert detector["spacing_source"] == "ImagerPixelSpacing (detector plane, not corrected for magnification)"
    assert corrected["spacing_source"] == "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor 1.25"
    assert (corrected["row_spacing_mm"], corrected["column_spacing_mm"]) == pytest.approx((0.16, 0.16))
    assert detector["lung_area_cm2"] == 28.0  # 70000 px x 0.04 mm²
    assert corrected["lung_area_cm2"] == pytest.approx(28.0 / 1.5625)  # 1.25², the area in the patient plane
    assert corrected["right_lung_area_cm2"] == pytest.approx(16.0 / 1.5625)


def test_pixel_spacing_is_preferred_and_its_calibration_named(tmp_path: Path) -> None:
    row = _measure_copy(
        tmp_path,
        PixelSpacing=[0.1, 0.1],
        PixelSpacingCalibrationType="GEOMETRY",
        ImagerPixelSpacing=[0.2, 0.2],
        EstimatedRadiographicMagnificationFactor=1.25,
    )
    assert (row["row_spacing_mm"], row["spacing_source"], row["lung_area_cm2"]) == (0.1, "PixelSpacing (GEOMETRY)", 7.0)
    uncalibrated = _measure_copy(tmp_path, ("PixelSpacingCalibrationType",), PixelSpacing=[0.1, 0.1])
    assert uncalibrated["spacing_source"] == "PixelSpacing"


def test_no_spacing_says_none(tmp_path: Path) -> None:
    row = _measure_copy(tmp_path, ("PixelSpacing", "ImagerPixelSpacing"))
    assert (row["spacing_source"], row["lung_area_cm2"]) == ("none", "")


@pytest.mark.parametrize(
    ("orientation", "right_px", "source"),
    [
        (["L", "F"], 40000, "PatientOrientation L\\F"),  # columns run to the patient's left: image left is right
        (["R", "F"], 30000, "PatientOrientation R\\F"),  # a flipped film: the patient's right is on the image's right
        (["A", "F"], 40000, "assumed: image left = patient right"),  # a lateral view names no left or right
        (None, 40000, "assumed: image left = patient right"),
    ],
)
def test_patient_orientation_decides_right_and_left(tmp_path: Path, orientation, right_px: int, source: str) -> None:
    attributes = {"PatientOrientation": orientation} if orientation else {}
    row = _measure_copy(tmp_path, ("PatientOrientation",), **attributes)
    assert (row["right_lung_area_px"], row["left_lung_area_px"]) == (right_px, 70000 - right_px)
    assert row["laterality_source"] == source


def test_csv_says_which_spacing_and_laterality_were_used(tmp_path) -> None:
    row = measure_lungs(np.ones((4, 6), np.uint8), (0.5, 0.5), "a", "a.dcm", "PixelSpacing", ("R", "F"))
    back = read_measurements(write_measurements([row], tmp_path / "m.csv"))["a"]
    assert (back["spacing_source"], back["laterality_source"]) == ("PixelSpacing", "PatientOrientation R\\F")
    assert measure_lungs(np.ones((4, 6), np.uint8))["spacing_source"] == "none"
