"""Finding the radiographs to segment: files, folders (recursive) and DICOM studies.

DICOM files are read header-only, grouped by StudyInstanceUID and SeriesInstanceUID and ordered
by InstanceNumber. CR and DX images and chest secondary captures are segmented; objects without
pixels (SR, PR, KO, SEG, DICOMDIR ...), lateral views and images whose header names another
modality or body part (:mod:`lungseg_monai.qc.input`) are skipped, each with a note saying why.
Each input gets an output name: the SOPInstanceUID for DICOM, the file stem otherwise, made unique
within the run. Names given by earlier runs (the output manifest) are kept: such an input keeps its
name, and no other input gets one of them.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from lungseg_monai.io import file_stem
from lungseg_monai.io import NON_IMAGE_MODALITIES, SUPPORTED_SUFFIXES, is_dicom_file
from lungseg_monai.outputs.dicom_header import MANUFACTURER
from lungseg_monai.qc.input import check_dicom_header, sop_class_uid

__all__ = [
    "LATERAL_VIEW_POSITIONS",
    "Discovery",
    "InferenceInput",
    "SkippedInput",
    "classify_dicom",
    "discover_inputs",
    "inference_datalist",
    "read_dicom_header",
    "read_input_list",
]

# Columns of a CSV input list that hold the file, best first (else its first column).
LIST_COLUMNS = ("path", "file", "image", "filename")

logger = logging.getLogger(__name__)

LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL"})
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Read the header only; large values (pixel data) stay on disk but remain visible as present.
_DEFER_BYTES = 1024
# A file read with force=True that has none of these is not DICOM at all.
_IDENTIFYING_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Modality", "PixelData")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class InferenceInput:
    """One radiograph to segment.

    Attributes:
        path: the file.
        name: output name, unique within the run (SOPInstanceUID for DICOM, else the file stem) and
            kept across runs into the same output folder (see ``discover_inputs(names=...)``).
        is_dicom: whether it is a DICOM file (gets a DICOM SEG).
        study_uid: StudyInstanceUID ("" for non-DICOM).
        series_uid: SeriesInstanceUID ("" for non-DICOM).
    """

    path: Path
    name: str
    is_dicom: bool = False
    study_uid: str = ""
    series_uid: str = ""


@dataclass(frozen=True)
class SkippedInput:
    """A file that was not segmented, and why."""

    path: Path
    reason: str


@dataclass
class Discovery:
    """What :func:`discover_inputs` found.

    Attributes:
        inputs: radiographs to segment, DICOM first (by study, series, instance number), then
            other files by path.
        skipped: files deliberately not segmented (non-image objects, lateral views, other
            modalities), with the reason.
        failed: inputs that cannot be used at all (missing path, unreadable DICOM header).
    """

    inputs: list[InferenceInput] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    failed: list[SkippedInput] = field(default_factory=list)

    def series(self) -> dict[str, dict[str, list[InferenceInput]]]:
        """DICOM inputs grouped as {StudyInstanceUID: {SeriesInstanceUID: [inputs]}}."""
        groups: dict[str, dict[str, list[InferenceInput]]] = {}
        for item in self.inputs:
            if item.is_dicom:
                groups.setdefault(item.study_uid, {}).setdefault(item.series_uid, []).append(item)
        return groups


@dataclass(frozen=True)
class _DicomHeader:
    path: Path
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    instance_number: int


def classify_dicom(ds: pydicom.Dataset, check_headers: bool = True) -> str | None:
    """Why a DICOM object is not a chest radiograph to segment, or None when it is one.

    Objects without an image (SR, PR, KO, SEG, DICOMDIR, no PixelData), lateral views and this
    package's own derived images (the overlay Secondary Captures, Manufacturer ``lungseg_monai``)
    are always skipped. With ``check_headers``, so is every image whose header names another modality,
    SOP class or body part (:func:`lungseg_monai.qc.input.check_dicom_header`).

    Args:
        ds: the object's header (pixel data may be deferred, but must not be dropped).
        check_headers: False for sites whose headers are wrong: segment whatever the modality,
            SOP class and body part say.

    Example:
        >>> ds = pydicom.Dataset(); ds.Modality = "SR"
        >>> classify_dicom(ds)
        'SR object without an image (structured report, presentation state, key object, SEG ...)'
    """
    modality = str(ds.get("Modality", "")).strip().upper()
    sop_class = sop_class_uid(ds)
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "DICOMDIR (an index of the files, not an image)"
    if modality in NON_IMAGE_MODALITIES:
        return f"{modality} object without an image (structured report, presentation state, key object, SEG ...)"
    if "PixelData" not in ds:
        return f"DICOM object without pixel data (Modality {modality or 'not given'}); nothing to segment"
    if str(ds.get("Manufacturer", "")).strip() == MANUFACTURER and "DERIVED" in _image_type(ds):
        return f"a {MANUFACTURER} result (series '{ds.get('SeriesDescription', '')}'), not a radiograph"
    view = str(ds.get("ViewPosition", "")).strip().upper()
    if view in LATERAL_VIEW_POSITIONS:
        return f"lateral view (ViewPosition {view}); the model segments frontal (PA/AP) films"
    return check_dicom_header(ds) if check_headers else None


def _image_type(ds: pydicom.Dataset) -> list[str]:
    value = ds.get("ImageType", [])
    values = [value] if isinstance(value, str) else list(value or [])
    return [str(v).strip().upper() for v in values]


def read_dicom_header(path: str | os.PathLike) -> pydicom.Dataset:
    """A DICOM file's header for :func:`classify_dicom`: pixel data deferred (read when decoded), not dropped."""
    return pydicom.dcmread(str(path), defer_size=_DEFER_BYTES, force=True)


def _instance_number(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _is_candidate(path: Path) -> bool:
    """Files a folder search picks up: supported suffixes, and suffix-less or odd files with DICOM magic."""
    if path.name.lower().endswith(SUPPORTED_SUFFIXES):
        return True
    return is_dicom_file(path)


def _walk(folder: Path, excluded: Sequence[Path]) -> Iterable[Path]:
    """Files under ``folder`` (sorted, recursive), skipping hidden entries and the excluded folders."""
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() not in excluded)
        for name in sorted(files):
            if not name.startswith("."):
                yield root_path / name


def _safe_name(text: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("_", text).strip("._") or "image"


def _unique_names(names: Sequence[str], kept: Sequence[str | None], reserved: Iterable[str] = ()) -> list[str]:
    """Make names unique (case-insensitively, for macOS and Windows): ``a``, ``a_2``, ``a_3`` ...

    An input with a ``kept`` name (given by an earlier run) keeps it; the others never get a kept
    or ``reserved`` name.
    """
    taken = {name.lower() for name in (*reserved, *filter(None, kept))}
    out = []
    for name, keep in zip(names, kept):
        if keep:
            out.append(keep)
            continue
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def read_input_list(list_file: str | os.PathLike) -> list[Path]:
    """The files an input list names: a text file with one path per line (``#`` comments and blank lines
    ignored), or a ``.csv`` whose ``path``, ``file``, ``image`` or ``filename`` column (else its first
    column) holds them, one row each. Relative paths are relative to the list's own folder.

    Raises:
        ValueError: the list cannot be read, or a CSV has no rows (the message names the file).
    """
    list_file = Path(list_file)
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"input list '{list_file}' cannot be read ({e})") from None
    if list_file.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if len(rows) < 2:
            raise ValueError(f"input list '{list_file}' has a header and no rows")
        header = [h.strip().lower() for h in rows[0]]
        column = next((header.index(c) for c in LIST_COLUMNS if c in header), 0)
        entries = [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [p if p.is_absolute() else list_file.parent / p for p in map(Path, entries)]


def discover_inputs(
    paths: Sequence[str | os.PathLike],
    exclude: Sequence[str | os.PathLike] = (),
    names: Mapping[Path, str] | None = None,
    check_headers: bool = True,
) -> Discovery:
    """List the radiographs to segment under files and folders.

    Args:
        paths: files, folders (searched recursively) or DICOM study folders.
        exclude: folders never searched (e.g. the output folder when it lies inside an input).
        check_headers: skip DICOM images whose header names another modality, SOP class or body
            part (see :func:`classify_dicom`); False segments them.
        names: output names given by earlier runs, by resolved input path (see
            :meth:`~lungseg_monai.inference.manifest.OutputManifest.names`): those inputs keep their
            name and no other input gets one of them, wherever it sorts.

    Returns:
        A :class:`Discovery`; a file listed twice (directly and through its folder) counts once.
    """
    excluded = [Path(p).resolve() for p in exclude]
    seen: set[Path] = set()
    files: list[Path] = []
    found = Discovery()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            picked = [p for p in _walk(path, excluded) if _is_candidate(p)]
            if not picked:
                logger.warning("no radiographs (PNG, JPEG, TIFF, BMP, DICOM, NIfTI, MetaImage, NRRD) under '%s'", path)
            files.extend(picked)
        elif path.exists():
            files.append(path)
        else:
            found.failed.append(SkippedInput(path, "does not exist"))

    dicoms: list[_DicomHeader] = []
    others: list[Path] = []
    for path in files:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        if not is_dicom_file(path):
            others.append(path)
            continue
        try:
            ds = read_dicom_header(path)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for corrupt files
            found.failed.append(SkippedInput(path, f"not a readable DICOM file ({type(e).__name__}: {e})"))
            continue
        if not any(keyword in ds for keyword in _IDENTIFYING_KEYWORDS):
            found.failed.append(SkippedInput(path, "not a DICOM file (no SOP class, UIDs, modality or pixel data)"))
            continue
        reason = classify_dicom(ds, check_headers)
        if reason is not None:
            found.skipped.append(SkippedInput(path, reason))
            continue
        dicoms.append(
            _DicomHeader(
                path=path,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")).strip(),
                study_uid=str(ds.get("StudyInstanceUID", "")).strip(),
                series_uid=str(ds.get("SeriesInstanceUID", "")).strip(),
                instance_number=_instance_number(ds),
            )
        )

    dicoms.sort(key=lambda h: (h.study_uid, h.series_uid, h.instance_number, str(h.path)))
    others.sort(key=str)
    raw_names = [_safe_name(h.sop_instance_uid or file_stem(h.path)) for h in dicoms]
    raw_names += [_safe_name(file_stem(p)) for p in others]
    names = names or {}
    kept = [names.get(path.resolve()) for path in (*(h.path for h in dicoms), *others)]
    unique = iter(_unique_names(raw_names, kept, names.values()))
    for h in dicoms:
        found.inputs.append(InferenceInput(h.path, next(unique), True, h.study_uid, h.series_uid))
    for p in others:
        found.inputs.append(InferenceInput(p, next(unique)))
    return found


def inference_datalist(input_dir: str | os.PathLike) -> list[dict[str, str]]:
    """MONAI datalist ``[{"image": path, "name": NAME}]`` of the radiographs under ``input_dir``.

    What the bundle's ``inference.json`` segments: the same files and output names as
    ``lungseg infer input_dir``. A dataset folder laid out for training (``images/`` and
    ``masks/``) contributes only its ``images/``.

    Raises:
        FileNotFoundError: no radiograph to segment under ``input_dir``.
    """
    root = Path(input_dir)
    folder = root / "images" if (root / "images").is_dir() else root
    found = discover_inputs([folder])
    for skipped in found.skipped:
        logger.info("skipped '%s': %s", skipped.path, skipped.reason)
    for failed in found.failed:
        logger.error("'%s': %s", failed.path, failed.reason)
    if not found.inputs:
        raise FileNotFoundError(f"no radiographs to segment under '{folder}' (PNG, JPEG, TIFF, BMP, DICOM, NIfTI, ...)")
    return [{"image": str(item.path), "name": item.name} for item in found.inputs]
