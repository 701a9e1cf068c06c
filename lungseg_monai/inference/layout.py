"""Where ``lungseg infer`` puts each output: format -> ``OUT/<folder>/NAME<suffix>``, and the formats' names.

Layout of an output folder::

    masks/NAME.png        lung mask, 0/255, the input's rows x columns and orientation
    overlays/NAME.png     lung contour (red) over the radiograph
    nifti/NAME.nii.gz     mask 0/1 with the input's geometry (x = columns, y = rows)
    dicomseg/NAME.dcm     DICOM SEG referencing the source (DICOM inputs only)
    dicomsr/NAME.dcm      DICOM SR (TID 1500) of the lung areas and the quality verdict (DICOM inputs only)
    dicomsc/NAME.dcm      DICOM Secondary Capture of the overlay (DICOM inputs only)
    measurements.csv      one row per NAME: lung areas and the quality verdict
    manifest.json         per NAME: input, model, settings, outputs made and verdict
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lungseg_monai.inference.options import FORMATS
from lungseg_monai.outputs.nifti import NIFTI_SUFFIX

__all__ = ["DICOM_FORMATS", "LAYOUT", "MEASUREMENTS_FILE", "output_path", "parse_formats"]

# Per-file outputs: format -> (subfolder, suffix).
LAYOUT = {
    "mask": ("masks", ".png"),
    "overlay": ("overlays", ".png"),
    "nifti": ("nifti", NIFTI_SUFFIX),
    "dicomseg": ("dicomseg", ".dcm"),
    "dicomsr": ("dicomsr", ".dcm"),
    "dicomsc": ("dicomsc", ".dcm"),
}
# Per-file outputs that only DICOM inputs get.
DICOM_FORMATS = ("dicomseg", "dicomsr", "dicomsc")
MEASUREMENTS_FILE = "measurements.csv"


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"mask,overlay"`` (or a list) -> validated formats in canonical order.

    Raises:
        ValueError: an unknown format (the message lists the valid ones).
    """
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = sorted(set(names) - set(FORMATS))
    if unknown or not names:
        raise ValueError(f"unknown output format(s) {unknown or names!r}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def output_path(output_dir: str | os.PathLike, fmt: str, name: str) -> Path:
    """Where the ``fmt`` output of input ``name`` goes (``output_dir/masks/NAME.png`` ...)."""
    folder, suffix = LAYOUT[fmt]
    return Path(output_dir) / folder / f"{name}{suffix}"
