"""Lung area measurements: right/left assignment, cm² from spacing, the CSV."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg_monai.outputs import MEASUREMENT_COLUMNS, measure_lungs, read_measurements, write_measurements


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
