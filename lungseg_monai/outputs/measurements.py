"""Lung area measurements from a mask, and the run's measurements CSV.

Right and left are the patient's. DICOM PatientOrientation says which way the image columns run:
``L\\F`` (columns run towards the patient's left, the standard display of a PA or AP film) puts
the patient's right lung on the image's left, ``R\\F`` on the image's right. Without it the standard
display is assumed (column ``laterality_source`` says which). Each connected lung region is
assigned whole to the side of its centre: with two or more regions, the dividing column is halfway
between the centres of the two largest; a single region (lungs touching over the mediastinum) is
split at the image's centre column.

Areas in cm² use the radiograph's patient-plane spacing; column ``spacing_source`` says where it
came from (see :func:`lungseg_monai.io.patient_plane_spacing`): an uncorrected ImagerPixelSpacing
measures the lungs in the detector plane, larger than they are.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lungseg_monai.io.reader import Radiograph
from lungseg_monai.utils.atomic import atomic_path

__all__ = [
    "ASSUMED_LATERALITY",
    "MEASUREMENT_COLUMNS",
    "NO_SPACING",
    "laterality",
    "measure_lungs",
    "measure_radiograph",
    "read_measurements",
    "write_measurements",
]

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
    "spacing_source",
    "laterality_source",
    "qc_status",
    "qc_score",
    "qc_reasons",
)
NO_SPACING = "none"
ASSUMED_LATERALITY = "assumed: image left = patient right"
_MM2_PER_CM2 = 100.0
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)


def laterality(patient_orientation: Sequence[str] | None) -> tuple[bool, str]:
    """Whether the image's left is the patient's right, and what says so (the ``laterality_source``).

    Args:
        patient_orientation: DICOM PatientOrientation, the patient directions of the image rows
            (towards increasing column) and columns (towards increasing row), e.g. ``("L", "F")``.

    Example:
        >>> laterality(("R", "F"))
        (False, 'PatientOrientation R\\\\F')
    """
    if patient_orientation is not None and len(patient_orientation) == 2:
        along_row = str(patient_orientation[0]).strip().upper()[:1]
        if along_row in ("L", "R"):
            return along_row == "L", "PatientOrientation " + "\\".join(str(v) for v in patient_orientation)
    return True, ASSUMED_LATERALITY


def _image_left_lung_pixels(lung: np.ndarray) -> int:
    """Lung pixels on the image's left; see the module docstring."""
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
    mask: np.ndarray,
    spacing: tuple[float, float] | None = None,
    name: str = "",
    source: str = "",
    spacing_source: str | None = None,
    patient_orientation: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Total, right and left lung areas of a (rows, columns) mask, in pixels and, with spacing, cm².

    Args:
        mask: (rows, columns); non-zero is lung.
        spacing: (row, column) pixel spacing in mm in the patient plane, or None (cm² columns are
            left empty).
        name: output name of the image (first CSV column).
        source: the input file.
        spacing_source: where ``spacing`` came from (``Radiograph.meta["spacing_source"]``);
            default ``"none"`` without a spacing, else ``"given"``.
        patient_orientation: DICOM PatientOrientation (``Radiograph.meta["patient_orientation"]``),
            see :func:`laterality`; None assumes the image's left is the patient's right.

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
    image_left_is_right, laterality_source = laterality(patient_orientation)
    total = int(np.count_nonzero(lung))
    image_left = _image_left_lung_pixels(lung)
    right = image_left if image_left_is_right else total - image_left
    if spacing_source is None:
        spacing_source = NO_SPACING if spacing is None else "given"
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
        "spacing_source": spacing_source,
        "laterality_source": laterality_source,
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


def measure_radiograph(mask: np.ndarray, radiograph: Radiograph, name: str = "") -> dict[str, Any]:
    """:func:`measure_lungs` with the spacing, its source and the patient orientation the reader found."""
    return measure_lungs(
        mask,
        radiograph.spacing,
        name,
        radiograph.path,
        spacing_source=radiograph.meta.get("spacing_source"),
        patient_orientation=radiograph.meta.get("patient_orientation"),
    )


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
