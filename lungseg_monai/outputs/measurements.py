"""Lung area measurements from a mask, and the run's measurements CSV.

Right and left are the patient's: on a frontal (PA or AP) film displayed the standard way the
patient's right lung is on the image's left. Each connected lung region is assigned whole to the
side of its centre: with two or more regions, the dividing column is halfway between the centres
of the two largest; a single region (lungs touching over the mediastinum) is split at the
image's centre column.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lungseg_monai.outputs.atomic import atomic_path

__all__ = ["MEASUREMENT_COLUMNS", "measure_lungs", "read_measurements", "write_measurements"]

MEASUREMENT_COLUMNS = (
    "name",
    "input",
    "rows",
    "columns",
    "row_spacing_mm",
    "column_spacing_mm",
    "lung_area_px",
    "right_lung_area_px",
    "left_lung_area_px",
    "lung_area_cm2",
    "right_lung_area_cm2",
    "left_lung_area_cm2",
    "qc_status",
    "qc_score",
    "qc_reasons",
)
_MM2_PER_CM2 = 100.0
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)


def _right_lung_pixels(lung: np.ndarray) -> int:
    """Lung pixels on the image's left (the patient's right on a PA/AP film); see the module docstring."""
    labels, count = ndimage.label(lung, structure=_STRUCTURE_8)
    if count == 0:
        return 0
    columns = lung.shape[1]
    if count == 1:
        return int(np.count_nonzero(lung[:, : columns // 2]))
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count + 1)[1:]
    column_of_pixel = np.broadcast_to(np.arange(columns, dtype=np.float64), lung.shape).ravel()
    centres = np.bincount(flat, weights=column_of_pixel, minlength=count + 1)[1:] / sizes
    largest = np.argsort(-sizes, kind="stable")[:2]
    divide = centres[largest].mean()
    return int(sizes[centres < divide].sum())


def measure_lungs(
    mask: np.ndarray, spacing: tuple[float, float] | None = None, name: str = "", source: str = ""
) -> dict[str, Any]:
    """Total, right and left lung areas of a (rows, columns) mask, in pixels and, with spacing, cm².

    Args:
        mask: (rows, columns); non-zero is lung.
        spacing: (row, column) pixel spacing in mm, or None (cm² columns are left empty).
        name: output name of the image (first CSV column).
        source: the input file.

    Returns:
        A row with the keys of :data:`MEASUREMENT_COLUMNS`.

    Example:
        >>> m = np.zeros((10, 20), np.uint8); m[2:8, 2:6] = 1; m[2:8, 12:18] = 1
        >>> r = measure_lungs(m, (0.5, 0.5))
        >>> r["right_lung_area_px"], r["left_lung_area_px"], r["lung_area_cm2"]
        (24, 36, 0.15)
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D (rows, columns) mask, got shape {mask.shape}")
    lung = np.asarray(mask) != 0
    right = _right_lung_pixels(lung)
    total = int(np.count_nonzero(lung))
    row: dict[str, Any] = {
        "name": name,
        "input": source,
        "rows": lung.shape[0],
        "columns": lung.shape[1],
        "row_spacing_mm": "",
        "column_spacing_mm": "",
        "lung_area_px": total,
        "right_lung_area_px": right,
        "left_lung_area_px": total - right,
        "lung_area_cm2": "",
        "right_lung_area_cm2": "",
        "left_lung_area_cm2": "",
        "qc_status": "",
        "qc_score": "",
        "qc_reasons": "",
    }
    if spacing is not None:
        pixel_cm2 = float(spacing[0]) * float(spacing[1]) / _MM2_PER_CM2
        row.update(
            row_spacing_mm=float(spacing[0]),
            column_spacing_mm=float(spacing[1]),
            lung_area_cm2=round(total * pixel_cm2, 4),
            right_lung_area_cm2=round(right * pixel_cm2, 4),
            left_lung_area_cm2=round((total - right) * pixel_cm2, 4),
        )
    return row


def read_measurements(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Rows of an existing measurements CSV by name ({} when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f) if row.get("name")}


def write_measurements(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write measurement rows (sorted by name) as CSV, atomically."""
    path = Path(path)
    ordered = sorted(rows, key=lambda r: str(r["name"]))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MEASUREMENT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ordered)
    return path
