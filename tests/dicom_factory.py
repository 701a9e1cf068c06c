"""Small DICOM objects made in tests from scratch or from the real files (shared by several test modules)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def write_text_sr(path: Path, study_uid: str) -> Path:
    """A Basic Text SR (no PixelData) in the given study, as a report beside the images would be."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = "Test^Report"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.is_little_endian, ds.is_implicit_VR = True, False  # still honoured (deprecated) by pydicom 3
    ds.save_as(path, write_like_original=False)
    return path


def copy_with(source: Path, target: Path, remove: Sequence[str] = (), **attributes: Any) -> Path:
    """Copy a DICOM file, removing the ``remove`` attributes and setting others (None removes one too; pixel data untouched)."""
    ds = pydicom.dcmread(source)
    for keyword in remove:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(target)
    return target


# Chest pixels under headers that say otherwise. A dental panoramic film as a CR archive sends it:
# no body part, no view position; only the study description says what it is.
NON_CHEST_HEADERS: dict[str, dict[str, str | None]] = {
    "panoramic": {"BodyPartExamined": None, "ViewPosition": None, "StudyDescription": "OPG PANORAMIC"},
    "hand": {"BodyPartExamined": "HAND"},
    "skull": {"BodyPartExamined": "SKULL"},
}


def write_non_chest_copies(source: Path, folder: Path) -> dict[str, Path]:
    """Copies of a real chest DICOM whose headers name a dental panoramic, a hand and a skull (new UIDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        name: copy_with(source, folder / f"{name}.dcm", SOPInstanceUID=generate_uid(), **attributes)
        for name, attributes in NON_CHEST_HEADERS.items()
    }


def synthetic_lung_mask(source: pydicom.Dataset) -> np.ndarray:
    """A (Rows, Columns) uint8 mask of two rectangles of different sizes, off-centre so that a flip,
    a transposition or swapped sides would show."""
    rows, cols = int(source.Rows), int(source.Columns)
    mask = np.zeros((rows, cols), np.uint8)
    mask[rows // 5 : rows * 3 // 4, cols // 10 : cols * 2 // 5] = 1
    mask[rows // 4 : rows * 3 // 4, cols * 3 // 5 : cols * 9 // 10] = 1
    return mask
