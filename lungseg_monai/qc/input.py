"""Is the input plausible as a chest radiograph? Checks made before the network sees it.

Two kinds of evidence, both conservative (an input is refused only on positive evidence):

- :func:`check_pixels`: the decoded image is too small, (nearly) constant or too elongated to be
  a radiograph at all (a 1x1 PNG, a blank frame, a binary mask, a strip).
- :func:`check_dicom_header`: the DICOM header says it is something else: another modality
  (CT, MR, PX panoramic dental ...), a SOP class that is not a projection radiograph
  (mammography, intra-oral ...), or a body part other than the chest (``BodyPartExamined``, or
  the study, series, protocol and requested-procedure descriptions). Empty headers pass.

The limits come from the 322 real chest radiographs of the developers' data set
(``cxr_lung/manifest.csv``); each constant says which number it was derived from. Photographs
and other non-radiographs with normal size and contrast pass these checks: telling them apart is
the job of a learned out-of-distribution score, not of these rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid

__all__ = [
    "CHEST_TERMS",
    "MAX_ASPECT_RATIO",
    "MIN_GREY_LEVELS",
    "MIN_SIDE_PX",
    "MIN_SPREAD_FRACTION",
    "NON_CHEST_MODALITIES",
    "NON_CHEST_TERMS",
    "NON_RADIOGRAPH_SOP_CLASSES",
    "RADIOGRAPH_MODALITIES",
    "SECONDARY_CAPTURE_MODALITIES",
    "ImplausibleInputError",
    "check_dicom_header",
    "check_pixels",
    "ensure_plausible",
    "sop_class_uid",
]

# --- pixels --------------------------------------------------------------------------------------
# Shortest side. The smallest of the 322 real images is 157x156 px (a figure panel,
# ryct.2020003.fig2-a); 64 px is about 40% of that, and 64x64 chest thumbnails (e.g. MedMNIST)
# still show both lungs. Below it there is nothing a lung outline could be drawn on.
MIN_SIDE_PX = 64
# Longest side / shortest side. Real chest images: 1.22 at most when tall (840x1024, 16708_4_1)
# and 2.23 when wide (1024x459, 1-s2.0-S0140673620303706-fx1_lrg, a PA film cropped to the
# lungs). 3.0 leaves a third of margin over 2.23. Dental panoramic films are 2.0-2.3:1
# (1024x512 in the PanoDiff data set, about 2900x1250 from a Soredex Cranex D): they overlap the
# widest real chest crops, so the aspect ratio cannot refuse them; their DICOM headers do.
MAX_ASPECT_RATIO = 3.0
# Distinct grey levels. The fewest in a real image is 16 (16745_4_1, a posterised figure); the
# next is 30. Fewer than 8 (half of 16) is a binary mask, a drawing or a blank frame with a label.
MIN_GREY_LEVELS = 8
# (99th - 1st percentile) / (max - min). Real images: 0.28 at least (ajr.20.23034.pdf-003).
# Under 0.02 (14 times less), 98% of the pixels share 2% of the grey range: a blank frame with
# a few burnt-in marks.
MIN_SPREAD_FRACTION = 0.02
_SPREAD_PERCENTILES = (1.0, 99.0)
# Statistics on at most about this many pixels (a regular subsample, 512x512): enough for levels and
# percentiles, and a 4000x4000 detector image costs no more than a 1024x1024 one.
_MAX_STAT_PIXELS = 1 << 18

# --- DICOM headers -------------------------------------------------------------------------------
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
# Modalities a (chest) secondary capture may carry; "" is a missing Modality.
SECONDARY_CAPTURE_MODALITIES = frozenset({"OT", "SC", ""})
# Named in the reason; any other modality is refused too, by its code (PS3.3 C.7.3.1.1.1).
NON_CHEST_MODALITIES = {
    "PX": "panoramic dental X-ray",
    "IO": "intra-oral X-ray",
    "MG": "mammography",
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "ES": "endoscopy",
    "OP": "ophthalmic photography",
    "OPT": "ophthalmic tomography",
    "XC": "external-camera photography",
    "GM": "general microscopy",
    "SM": "slide microscopy",
    "BMD": "bone densitometry",
}
# Image SOP classes that are not projection radiographs, whatever the Modality says.
NON_RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        uid.DigitalMammographyXRayImageStorageForPresentation,
        uid.DigitalMammographyXRayImageStorageForProcessing,
        uid.BreastTomosynthesisImageStorage,
        uid.DigitalIntraOralXRayImageStorageForPresentation,
        uid.DigitalIntraOralXRayImageStorageForProcessing,
        uid.CTImageStorage,
        uid.EnhancedCTImageStorage,
        uid.MRImageStorage,
        uid.EnhancedMRImageStorage,
        uid.UltrasoundImageStorage,
        uid.UltrasoundMultiFrameImageStorage,
        uid.NuclearMedicineImageStorage,
        uid.PositronEmissionTomographyImageStorage,
        uid.XRayAngiographicImageStorage,
        uid.XRayRadiofluoroscopicImageStorage,
        uid.VLEndoscopicImageStorage,
        uid.VLPhotographicImageStorage,
        uid.OphthalmicPhotography8BitImageStorage,
    }
)
# A header field naming one of these (as part of a word: CHESTABDOMEN, LUNGS) is about a chest.
# THORACIC is deliberately absent: "THORACIC SPINE" is a spine film, not a chest film.
CHEST_TERMS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAKS", "TORSO", "CXR")
# Whole words (or word sequences) that name another body part or examination. DICOM
# BodyPartExamined defined terms (PS3.16 Annex L) and the words sites put in descriptions.
NON_CHEST_TERMS = frozenset(
    {
        # teeth and head
        "DENTAL", "TEETH", "TOOTH", "PANORAMIC", "PANORAMA", "PANO", "OPG", "OPTG",
        "ORTHOPANTOMOGRAM", "ORTHOPANTOMOGRAPH", "ORTHOPANTOMOGRAPHY", "JAW", "MANDIBLE",
        "MAXILLA", "TMJ", "CEPH", "CEPHALOMETRIC", "SKULL", "HEAD", "FACE", "FACIAL", "SINUS",
        "SINUSES", "ORBIT", "ORBITS", "NASAL", "NECK", "HEADNECK",
        # spine (all levels: a thoracic spine film is collimated to the spine, often lateral)
        "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SCOLIOSIS", "SACRUM", "COCCYX",
        # upper limb
        "HAND", "HANDS", "FINGER", "FINGERS", "THUMB", "WRIST", "WRISTS", "FOREARM", "ELBOW",
        "HUMERUS", "ARM", "SHOULDER", "SHOULDERS", "CLAVICLE", "SCAPULA", "BONE AGE",
        # pelvis and lower limb
        "PELVIS", "HIP", "HIPS", "FEMUR", "KNEE", "KNEES", "PATELLA", "TIBIA", "FIBULA", "LEG",
        "LEGS", "ANKLE", "ANKLES", "FOOT", "FEET", "HEEL", "CALCANEUS", "TOE", "TOES",
        "EXTREMITY", "EXTREMITIES",
        # abdomen, breast, whole body
        "ABDOMEN", "ABD", "KUB", "ABDOMENPELVIS", "MAMMO", "MAMMOGRAM", "MAMMOGRAPHY", "BREAST",
        "WHOLE BODY", "WHOLEBODY",
    }
)  # fmt: skip
# Most specific first: the first field that names a body part decides (see check_dicom_header).
_BODY_PART_FIELDS = (
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
    "StudyDescription",
)
_WORD = re.compile(r"[A-Z0-9]+")


class ImplausibleInputError(ValueError):
    """An input was decoded but is not plausible as a chest radiograph; it is refused, not failed.

    Attributes:
        path: the file.
        reason: why, in words a user can act on (the reasons of :func:`check_pixels`, joined).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"'{self.path}' is not plausible as a chest radiograph: {reason}")


def _subsample(pixels: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(np.sqrt(pixels.size / _MAX_STAT_PIXELS))))
    return pixels[::step, ::step]


def _contrast_reasons(pixels: np.ndarray) -> list[str]:
    low, high = float(pixels.min()), float(pixels.max())
    if high == low:
        return [f"constant image (every pixel is {low:g}): nothing to segment"]
    sample = _subsample(pixels)
    levels = len(np.unique(sample))
    if levels < MIN_GREY_LEVELS:
        return [
            f"only {levels} distinct grey levels (a radiograph has at least {MIN_GREY_LEVELS}): "
            "a mask, a drawing or a blank frame"
        ]
    p_low, p_high = np.percentile(sample, _SPREAD_PERCENTILES)
    spread = float(p_high - p_low) / (high - low)
    if spread < MIN_SPREAD_FRACTION:
        return [
            f"nearly constant: 98% of the pixels lie within {spread:.1%} of the grey range "
            f"(a radiograph spreads over at least {MIN_SPREAD_FRACTION:.0%}): a blank frame with a few marks"
        ]
    return []


def check_pixels(pixels: np.ndarray) -> list[str]:
    """Reasons why a decoded image is not plausible as a radiograph; empty when it is.

    Args:
        pixels: (rows, columns) array, as :func:`lungseg_monai.io.read_radiograph` decodes it.

    Returns:
        Plain-language reasons (size, contrast, aspect ratio), each with the value found and the
        limit; ``[]`` for a plausible image.

    Raises:
        ValueError: ``pixels`` is not 2-D.

    Example:
        >>> for reason in check_pixels(np.zeros((1, 1), np.float32)):
        ...     print(reason)
        1x1 px is too small for a radiograph (the shorter side must be at least 64 px)
        constant image (every pixel is 0): nothing to segment
        >>> check_pixels(np.arange(256 * 256, dtype=np.float32).reshape(256, 256))
        []
    """
    if pixels.ndim != 2:
        raise ValueError(f"check_pixels needs a (rows, columns) image, got an array of shape {pixels.shape}")
    rows, columns = pixels.shape
    reasons = []
    if min(rows, columns) < MIN_SIDE_PX:
        reasons.append(
            f"{rows}x{columns} px is too small for a radiograph (the shorter side must be at least {MIN_SIDE_PX} px)"
        )
    elif max(rows, columns) / min(rows, columns) > MAX_ASPECT_RATIO:
        ratio = max(rows, columns) / min(rows, columns)
        reasons.append(
            f"{rows}x{columns} px is too elongated for a chest radiograph "
            f"(aspect ratio {ratio:.1f}:1, at most {MAX_ASPECT_RATIO:g}:1)"
        )
    if pixels.size == 0:
        return reasons
    if not np.isfinite(pixels).all():
        return [*reasons, "pixel values contain NaN or infinity"]
    return reasons + _contrast_reasons(pixels)


def ensure_plausible(pixels: np.ndarray, path: str | Path) -> None:
    """Raise :class:`ImplausibleInputError` naming ``path`` when :func:`check_pixels` finds reasons."""
    reasons = check_pixels(pixels)
    if reasons:
        raise ImplausibleInputError(path, "; ".join(reasons))


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def sop_class_uid(ds: pydicom.Dataset) -> str:
    """The object's SOPClassUID, else its file meta MediaStorageSOPClassUID, else ``""``."""
    return str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))


def _names_body_part(text: str) -> str | None:
    """``"chest"`` when ``text`` names the chest, the other part it names, or None when it names none."""
    words = _WORD.findall(text)
    if any(term in word for word in words for term in CHEST_TERMS):
        return "chest"
    for first, second in zip(words, [*words[1:], ""]):
        for term in (first, f"{first} {second}"):
            if term in NON_CHEST_TERMS:
                return term
    return None


def check_dicom_header(ds: pydicom.Dataset) -> str | None:
    """Why a DICOM header says the image is not a chest radiograph, or None when it does not say so.

    Refused, in this order: a Modality other than CR and DX (and OT, SC or none for secondary
    captures); a SOP class of :data:`NON_RADIOGRAPH_SOP_CLASSES`; a body part other than the
    chest. For the body part, the first of BodyPartExamined, SeriesDescription, ProtocolName,
    RequestedProcedureDescription and StudyDescription that names any body part decides; a field
    naming the chest and something else ("CHEST ABDOMEN") counts as chest. Fields naming no body
    part, and missing ones, are no evidence: an empty header passes.

    Args:
        ds: the header (pixel data need not be read).

    Example:
        >>> ds = pydicom.Dataset(); ds.Modality = "CR"; ds.StudyDescription = "OPG panoramic"
        >>> check_dicom_header(ds)
        "StudyDescription 'OPG PANORAMIC' names OPG, not the chest"
    """
    modality = _text(ds, "Modality")
    sop_class = sop_class_uid(ds)
    if modality not in RADIOGRAPH_MODALITIES | SECONDARY_CAPTURE_MODALITIES:
        what = f" ({NON_CHEST_MODALITIES[modality]})" if modality in NON_CHEST_MODALITIES else ""
        return f"modality {modality}{what} is not a chest radiograph (segmented: CR, DX and chest secondary captures)"
    if sop_class in NON_RADIOGRAPH_SOP_CLASSES:
        return f"SOP class {uid.UID(sop_class).name} is not a projection radiograph"
    for keyword in _BODY_PART_FIELDS:
        text = _text(ds, keyword)
        part = _names_body_part(text)
        if part == "chest":
            return None
        if part is not None:
            return f"{keyword} '{text}' names {part}, not the chest"
    return None
