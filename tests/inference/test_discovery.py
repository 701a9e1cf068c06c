"""Finding inputs: folders, DICOM studies, non-image objects, lateral views, output names."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1, DICOM_JPEG_SIIM, SAMPLE_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_factory import copy_with, write_non_chest_copies, write_text_sr

from lungseg_monai.inference import classify_dicom, discover_inputs, inference_datalist

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture()
def study_folder(tmp_path: Path) -> Path:
    """Real J2K CR + a synthetic SR and a lateral copy of it in the same study, in nested folders."""
    study = tmp_path / "study"
    (study / "series1").mkdir(parents=True)
    (study / "reports").mkdir()
    image = shutil.copy(DICOM_J2K_MONO1, study / "series1" / "IM0001")  # archives often drop the suffix
    uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
    write_text_sr(study / "reports" / "report.dcm", uid)
    copy_with(DICOM_J2K_MONO1, study / "series1" / "IM0002", ViewPosition="LL", SOPInstanceUID=generate_uid())
    (study / "notes.txt").write_text("not an image")
    return study


def test_study_folder_yields_image_and_notes_for_report_and_lateral(study_folder: Path) -> None:
    found = discover_inputs([study_folder])
    source = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
    assert [(i.path.name, i.name, i.is_dicom) for i in found.inputs] == [("IM0001", source.SOPInstanceUID, True)]
    assert found.inputs[0].study_uid == source.StudyInstanceUID
    assert found.inputs[0].series_uid == source.SeriesInstanceUID
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert reasons == {
        "report.dcm": "SR object without an image (structured report, presentation state, key object, SEG ...)",
        "IM0002": "lateral view (ViewPosition LL); the model segments frontal (PA/AP) films",
    }
    assert found.failed == []
    assert list(found.series()) == [source.StudyInstanceUID]


def test_shared_sop_instance_uid_gets_unique_names_in_order() -> None:
    found = discover_inputs([DICOM_JPEG_SIIM, DICOM_FAKE_MONO1, DICOM_J2K_MONO1])
    uid = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    names = {i.path.name: i.name for i in found.inputs}
    # Same study and series and instance number: ordered by path, the first keeps the plain name.
    first, second = sorted([DICOM_JPEG_SIIM, DICOM_FAKE_MONO1])
    assert names[first.name] == uid
    assert names[second.name] == f"{uid}_2"
    assert names[DICOM_J2K_MONO1.name] == str(pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True).SOPInstanceUID)


def test_png_names_are_stems_made_unique_and_output_folder_is_not_searched(tmp_path: Path) -> None:
    for sub in ("a", "b", "out/masks"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "chest.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b" / "Chest.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "out" / "masks" / "chest.png")
    found = discover_inputs([tmp_path, tmp_path / "a" / "chest.png"], exclude=[tmp_path / "out"])
    assert [(i.path.relative_to(tmp_path).as_posix(), i.name) for i in found.inputs] == [
        ("a/chest.png", "chest"),
        ("b/Chest.png", "Chest_2"),  # unique even on case-insensitive file systems
    ]


def test_names_of_earlier_runs_are_kept_and_never_given_to_another_input_synthetic(tmp_path: Path) -> None:
    """a/img and c/img were named by a run; b/img sorts between them, gone/img is no longer an input."""
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / sub / "img.png")
    earlier = {
        (tmp_path / "a" / "img.png").resolve(): "img",
        (tmp_path / "c" / "img.png").resolve(): "img_2",
        (tmp_path / "gone" / "img.png").resolve(): "IMG_3",
    }
    found = discover_inputs([tmp_path], names=earlier)
    assert [(i.path.relative_to(tmp_path).as_posix(), i.name) for i in found.inputs] == [
        ("a/img.png", "img"),
        ("b/img.png", "img_4"),  # not img_2 (c's) nor img_3 (owned, case-insensitively, by an input not in this run)
        ("c/img.png", "img_2"),
    ]
    assert [i.name for i in discover_inputs([tmp_path]).inputs] == ["img", "img_2", "img_3"]  # no earlier run


def test_missing_path_and_garbage_dicom_are_failures_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 300)
    found = discover_inputs([tmp_path / "nope.png", tmp_path / "junk.dcm"])
    reasons = {s.path.name: s.reason for s in found.failed}
    assert reasons["nope.png"] == "does not exist"
    assert reasons["junk.dcm"].startswith("not a")
    assert found.inputs == []


def _header(**attributes: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PixelData = b"\x00\x00"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"Modality": "DX", "ViewPosition": "AP"}, None),
        ({"Modality": "CR"}, None),
        ({"Modality": "OT", "SOPClassUID": SECONDARY_CAPTURE, "BodyPartExamined": "CHEST"}, None),
        ({"Modality": "OT", "SOPClassUID": SECONDARY_CAPTURE}, None),
        (
            {"Modality": "OT", "SOPClassUID": SECONDARY_CAPTURE, "BodyPartExamined": "HAND"},
            "BodyPartExamined 'HAND' names HAND, not the chest",
        ),
        (
            {"Modality": "CT"},
            "modality CT (computed tomography) is not a chest radiograph "
            "(segmented: CR, DX and chest secondary captures)",
        ),
        ({"Modality": "CR", "BodyPartExamined": "HAND"}, "BodyPartExamined 'HAND' names HAND, not the chest"),
        ({"Modality": "DX", "BodyPartExamined": "SKULL"}, "BodyPartExamined 'SKULL' names SKULL, not the chest"),
        (
            {"Modality": "DX", "ViewPosition": "RL"},
            "lateral view (ViewPosition RL); the model segments frontal (PA/AP) films",
        ),
    ],
)
def test_classify_dicom_headers_synthetic(attributes: dict, reason: str | None) -> None:
    assert classify_dicom(_header(**attributes)) == reason


def test_header_check_can_be_turned_off_but_not_for_objects_without_images_synthetic() -> None:
    assert classify_dicom(_header(Modality="CT", BodyPartExamined="HEAD"), check_headers=False) is None
    assert classify_dicom(_header(Modality="DX", ViewPosition="LL"), check_headers=False).startswith("lateral view")
    assert classify_dicom(_header(Modality="SR"), check_headers=False).startswith("SR object without an image")


@pytest.fixture()
def non_chest_folder(tmp_path: Path) -> Path:
    """Real chest pixels (SIIM CR) under headers that say dental panoramic, hand and skull."""
    write_non_chest_copies(DICOM_JPEG_SIIM, tmp_path / "non_chest")
    return tmp_path / "non_chest"


def test_dental_panoramic_hand_and_skull_crs_are_skipped_unless_header_check_is_off(non_chest_folder: Path) -> None:
    found = discover_inputs([non_chest_folder])
    assert found.inputs == []
    assert {s.path.stem: s.reason for s in found.skipped} == {
        "panoramic": "StudyDescription 'OPG PANORAMIC' names OPG, not the chest",
        "hand": "BodyPartExamined 'HAND' names HAND, not the chest",
        "skull": "BodyPartExamined 'SKULL' names SKULL, not the chest",
    }
    unchecked = discover_inputs([non_chest_folder], check_headers=False)
    assert sorted(i.path.stem for i in unchecked.inputs) == ["hand", "panoramic", "skull"]
    assert unchecked.skipped == []


def test_real_non_chest_pydicom_files_are_skipped_by_header() -> None:
    names = ("CT_small.dcm", "MR_small.dcm", "ExplVR_BigEnd.dcm")  # CT, MR, US shipped inside pydicom
    found = discover_inputs([get_testdata_file(name, download=False) for name in names])
    assert found.inputs == []
    assert [s.reason.split(" is not")[0] for s in found.skipped] == [
        "modality CT (computed tomography)",
        "modality MR (magnetic resonance)",
        "modality US (ultrasound)",
    ]


def test_classify_dicom_without_pixels_is_skipped_synthetic() -> None:
    ds = pydicom.Dataset()
    ds.Modality = "CR"
    assert classify_dicom(ds) == "DICOM object without pixel data (Modality CR); nothing to segment"


def test_inference_datalist_uses_images_subfolder_of_a_dataset() -> None:
    items = inference_datalist(SAMPLE_DATA)
    assert len(items) == len(list((SAMPLE_DATA / "images").glob("*.png")))
    assert all(Path(i["image"]).parent.name == "images" for i in items)
    assert items[0]["name"] == Path(items[0]["image"]).stem


def test_inference_datalist_of_empty_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no radiographs to segment under"):
        inference_datalist(tmp_path)


def test_input_lists_text_and_csv_relative_to_the_list(tmp_path: Path) -> None:
    from lungseg_monai.inference.discovery import read_input_list

    films = sorted((SAMPLE_DATA / "images").glob("*.png"))[:3]
    (tmp_path / "sub").mkdir()
    shutil.copyfile(films[0], tmp_path / "sub" / "a.png")
    text = tmp_path / "films.txt"
    text.write_text(f"# archive export\nsub/a.png\n\n{films[1]}\n")
    assert read_input_list(text) == [tmp_path / "sub" / "a.png", films[1]]
    table = tmp_path / "films.csv"
    table.write_text(f"patient,Path\np1,sub/a.png\np2,{films[2]}\np3,missing.png\n")
    assert read_input_list(table) == [tmp_path / "sub" / "a.png", films[2], tmp_path / "missing.png"]
    (tmp_path / "empty.csv").write_text("path\n")
    with pytest.raises(ValueError, match="empty.csv' has a header and no rows"):
        read_input_list(tmp_path / "empty.csv")
    with pytest.raises(ValueError, match="nolist.txt' cannot be read"):
        read_input_list(tmp_path / "nolist.txt")
    found = discover_inputs(read_input_list(table))  # a listed file that is not there is named, the rest go on
    # inputs are ordered by full path, which depends on where the checkout and tmp_path live
    assert sorted(i.path for i in found.inputs) == sorted([tmp_path / "sub" / "a.png", films[2]])
    assert [(s.path.name, s.reason) for s in found.failed] == [("missing.png", "does not exist")]
