"""The source header that highdicom sees when it builds a result object (SEG, SR, SC) of a radiograph.

highdicom copies the source's Patient and General Study modules into each result, so that a PACS
files it in the source's study. Radiographs from archives often break highdicom's checks there:
type 2 attributes left out, a PatientSex of ``"U"`` (not a DICOM value) and single-component
person names such as ``"Doe"``, for which highdicom warns with the name in the message. Patient
data must never reach the logs, so :func:`patient_study_header` completes and normalises a copy
before highdicom sees it: absent type 2 attributes are made empty, PatientSex outside M/F/O is made
empty, and a single-component name gets its trailing caret (``"Doe"`` and ``"Doe^"`` are the same
DICOM person name).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

__all__ = [
    "MANUFACTURER",
    "MODEL_NAME",
    "patient_study_header",
    "read_source_header",
]

MANUFACTURER = "lungseg_monai"
MODEL_NAME = "LungUNet"
# Type 2 attributes of the Patient and General Study modules that highdicom copies and requires.
_TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# Person names highdicom checks (and prints when they have a single component).
_PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
_PATIENT_SEX_VALUES = ("M", "F", "O", "")


def _with_caret(name: str) -> str:
    """``"Doe"`` -> ``"Doe^"`` (the same DICOM person name); names with a caret, and empty ones, unchanged.

    Example:
        >>> _with_caret("Doe"), _with_caret("Doe^John"), _with_caret("Doe=Ideo")
        ('Doe^', 'Doe^John', 'Doe^=Ideo')
    """
    if not name or "^" in name:
        return name
    family, *others = name.split("=", 1)
    return "=".join([f"{family}^", *others])


def patient_study_header(source: Dataset) -> Dataset:
    """A copy of the source's header (no pixel data) whose patient and study attributes highdicom accepts.

    See the module docstring for what is completed and normalised; the source is not changed.

    Example:
        >>> ds = Dataset(); ds.PatientName, ds.PatientSex = "Doe", "U"
        >>> header = patient_study_header(ds)
        >>> str(header.PatientName), header.PatientSex, header.AccessionNumber
        ('Doe^', '', '')
    """
    header = copy.deepcopy(source)
    if "PixelData" in header:
        del header.PixelData
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    for keyword in _PERSON_NAMES:
        name = str(header.get(keyword) or "")
        if name != _with_caret(name):
            setattr(header, keyword, _with_caret(name))
    if str(header.PatientSex).strip().upper() not in _PATIENT_SEX_VALUES:
        header.PatientSex = ""  # e.g. "U": not a DICOM value, and highdicom refuses it
    return header


def read_source_header(source: Dataset | str | os.PathLike, what: str = "source DICOM") -> Dataset:
    """The source's dataset: ``source`` itself, or the header (no pixel data) of the DICOM file it names.

    Args:
        source: a dataset, or the path of a DICOM file.
        what: what the file is, for the error message.

    Raises:
        FileNotFoundError: ``source`` names no file.
    """
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist; pass the file the result is made from")
    return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
