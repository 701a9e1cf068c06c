"""Input plausibility before the network: pixel checks and DICOM header checks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import skimage.data
from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1, DICOM_JPEG_SIIM, SHARED_CXR, require_shared
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForPresentation,
)

from lungseg_monai.io import read_mask, read_radiograph
from lungseg_monai.qc.input import (
    MAX_ASPECT_RATIO,
    MIN_SIDE_PX,
    ImplausibleInputError,
    check_dicom_header,
    check_pixels,
    ensure_plausible,
)

# Real images that are extreme in contrast (found by scanning all 322 with check_pixels' statistics):
# the fewest grey levels (16) and the smallest 1st-99th percentile spread (0.28 of the range).
FEWEST_LEVELS = "16745_4_1"
LOWEST_SPREAD = "ajr.20.23034.pdf-003"
EVERY_NTH = 10  # the rest of the fixed subset: every 10th row of manifest.csv


def _manifest() -> list[dict[str, str]]:
    require_shared()
    with open(SHARED_CXR / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _real_subset() -> list[str]:
    """Every 10th image, the 3 smallest, the 2 most elongated each way, and the contrast extremes."""
    rows = _manifest()
    by_side = sorted(rows, key=lambda r: min(int(r["width"]), int(r["height"])))
    by_aspect = sorted(rows, key=lambda r: int(r["width"]) / int(r["height"]))
    picked = rows[::EVERY_NTH] + by_side[:3] + by_aspect[:2] + by_aspect[-2:]
    return sorted({r["name"] for r in picked} | {FEWEST_LEVELS, LOWEST_SPREAD})


def _real_pixels(name: str = LOWEST_SPREAD) -> np.ndarray:
    require_shared()
    return read_radiograph(SHARED_CXR / "images" / f"{name}.png").pixels


# --- pixels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "reasons"),
    [
        (
            (1, 1),
            [
                "1x1 px is too small for a radiograph (the shorter side must be at least 64 px)",
                "constant image (every pixel is 128): nothing to segment",
            ],
        ),
        (
            (8, 8),
            [
                "8x8 px is too small for a radiograph (the shorter side must be at least 64 px)",
                "constant image (every pixel is 128): nothing to segment",
            ],
        ),
        ((512, 400), ["constant image (every pixel is 128): nothing to segment"]),
    ],
)
def test_uniform_images_are_refused_with_exact_reasons_synthetic(shape: tuple[int, int], reasons: list[str]) -> None:
    assert check_pixels(np.full(shape, 128, np.float32)) == reasons


def test_real_images_pass_including_the_extremes_of_size_aspect_and_contrast() -> None:
    names = _real_subset()
    assert len(names) > 30
    refused = {name: check_pixels(_real_pixels(name)) for name in names}
    assert {name: reasons for name, reasons in refused.items() if reasons} == {}


def test_the_limits_leave_a_margin_over_the_real_data() -> None:
    rows = _manifest()
    sides = [min(int(r["width"]), int(r["height"])) for r in rows]
    aspects = [max(int(r["width"]), int(r["height"])) / min(int(r["width"]), int(r["height"])) for r in rows]
    assert min(sides) == 156 and MIN_SIDE_PX <= min(sides) / 2
    assert max(aspects) == pytest.approx(2.231, abs=1e-3) and MAX_ASPECT_RATIO >= 1.3 * max(aspects)


def test_real_chest_dicoms_pass() -> None:
    require_shared()
    for path in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM, DICOM_FAKE_MONO1):
        assert check_pixels(read_radiograph(path).pixels) == [], path.name
        assert check_dicom_header(pydicom.dcmread(path, stop_before_pixels=True)) is None, path.name


def test_a_real_lung_mask_given_as_image_is_refused_for_its_two_levels() -> None:
    require_shared()
    mask = read_mask(SHARED_CXR / "masks" / f"{LOWEST_SPREAD}.png").pixels.astype(np.float32) * 255
    assert check_pixels(mask) == [
        "only 2 distinct grey levels (a radiograph has at least 8): a mask, a drawing or a blank frame"
    ]


def test_blank_frame_with_a_burnt_in_patch_is_nearly_constant() -> None:
    """A flat frame (real image's median) carrying a 30x30 patch of the real image: many levels, no spread."""
    pixels = _real_pixels()
    frame = np.full_like(pixels, np.median(pixels))
    frame[:30, :30] = pixels[:30, :30]
    frame[30:60, :30] = pixels.max()  # a white label: the full grey range is present
    (reason,) = check_pixels(frame)
    assert reason.startswith("nearly constant: 98% of the pixels lie within 0.0% of the grey range")
    assert reason.endswith("(a radiograph spreads over at least 2%): a blank frame with a few marks")


def test_a_strip_cut_from_a_real_image_is_too_elongated() -> None:
    strip = _real_pixels()[:100]
    rows, columns = strip.shape
    assert check_pixels(strip) == [
        f"100x{columns} px is too elongated for a chest radiograph "
        f"(aspect ratio {columns / 100:.1f}:1, at most 3:1)"
    ]
    assert check_pixels(strip.T)[0].startswith(f"{columns}x100 px is too elongated")


def test_photographs_are_not_refused_by_pixel_checks() -> None:
    """scikit-image photographs have a radiograph's size and contrast: refusing them is the OOD score's job.

    The horse is a binary silhouette, refused like a mask.
    """
    for name in ("camera", "astronaut", "coffee", "moon"):
        image = np.asarray(getattr(skimage.data, name)(), np.float32)
        assert check_pixels(image.mean(axis=-1) if image.ndim == 3 else image) == [], name
    assert check_pixels(skimage.data.horse().astype(np.float32))[0].startswith("only 2 distinct grey levels")


def test_ensure_plausible_names_the_file_and_joins_reasons() -> None:
    with pytest.raises(ImplausibleInputError) as info:
        ensure_plausible(np.zeros((1, 1), np.float32), Path("in/one.png"))
    assert info.value.path == "in/one.png"
    assert info.value.reason == (
        "1x1 px is too small for a radiograph (the shorter side must be at least 64 px); "
        "constant image (every pixel is 0): nothing to segment"
    )
    assert str(info.value).startswith("'in/one.png' is not plausible as a chest radiograph: 1x1 px")
    ensure_plausible(_real_pixels(), "chest.png")  # no error


def test_non_2d_arrays_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"needs a \(rows, columns\) image, got an array of shape \(4, 64, 64\)"):
        check_pixels(np.zeros((4, 64, 64), np.float32))


# --- DICOM headers -------------------------------------------------------------------------------


def _header(**attributes: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({}, None),
        ({"Modality": "CR"}, None),
        ({"Modality": "DX", "BodyPartExamined": "CHEST"}, None),
        ({"Modality": "DX", "BodyPartExamined": "CHESTABDOMEN"}, None),
        ({"Modality": "CR", "BodyPartExamined": "UNKNOWN"}, None),  # no evidence of another part
        ({"Modality": "CR", "StudyDescription": "XR CHEST AND ABDOMEN"}, None),  # chest wins in a field
        ({"Modality": "CR", "StudyDescription": "ACCIDENTAL FINDING"}, None),  # whole words only
        ({"Modality": "CR", "BodyPartExamined": "HAND"}, "BodyPartExamined 'HAND' names HAND, not the chest"),
        ({"Modality": "DX", "BodyPartExamined": "SKULL"}, "BodyPartExamined 'SKULL' names SKULL, not the chest"),
        (
            {"Modality": "CR", "StudyDescription": "OPG panoramic"},
            "StudyDescription 'OPG PANORAMIC' names OPG, not the chest",
        ),
        (
            {"Modality": "CR", "SeriesDescription": "Thoracic spine AP"},
            "SeriesDescription 'THORACIC SPINE AP' names SPINE, not the chest",
        ),
        (
            {"Modality": "DX", "ProtocolName": "Whole body / skeletal survey"},
            "ProtocolName 'WHOLE BODY / SKELETAL SURVEY' names WHOLE BODY, not the chest",
        ),
        (  # the most specific field that names a body part decides
            {"Modality": "CR", "SeriesDescription": "L HAND PA", "StudyDescription": "CHEST + HAND"},
            "SeriesDescription 'L HAND PA' names HAND, not the chest",
        ),
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "StudyDescription": "HAND"}, None),
        (
            {"Modality": "PX"},
            "modality PX (panoramic dental X-ray) is not a chest radiograph "
            "(segmented: CR, DX and chest secondary captures)",
        ),
        (
            {"Modality": "ZZ"},
            "modality ZZ is not a chest radiograph (segmented: CR, DX and chest secondary captures)",
        ),
        (
            {"Modality": "DX", "SOPClassUID": DigitalMammographyXRayImageStorageForPresentation},
            "SOP class Digital Mammography X-Ray Image Storage - For Presentation is not a projection radiograph",
        ),
        (
            {"Modality": "DX", "SOPClassUID": DigitalIntraOralXRayImageStorageForPresentation},
            "SOP class Digital Intra-Oral X-Ray Image Storage - For Presentation is not a projection radiograph",
        ),
    ],
)
def test_check_dicom_header_synthetic(attributes: dict[str, str], reason: str | None) -> None:
    assert check_dicom_header(_header(**attributes)) == reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", "modality CT (computed tomography)"),
        ("MR_small.dcm", "modality MR (magnetic resonance)"),
        ("ExplVR_BigEnd.dcm", "modality US (ultrasound)"),
        ("JPEG2000.dcm", "modality NM (nuclear medicine)"),  # a whole-body bone scan stored as secondary capture
    ],
)
def test_real_non_chest_files_are_refused_by_header(name: str, reason: str) -> None:
    path = get_testdata_file(name, download=False)  # shipped inside pydicom: no download
    assert path is not None, f"pydicom no longer ships {name}"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    expected = f"{reason} is not a chest radiograph (segmented: CR, DX and chest secondary captures)"
    assert check_dicom_header(ds) == expected
