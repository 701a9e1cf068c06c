"""The radiograph datastore: DICOM files appear next to PNGs, labels are checked against their image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")

from conftest import DICOM_JPEG_SIIM, SAMPLE_DATA  # noqa: E402
from PIL import Image  # noqa: E402

from lungseg_monai.label.datastore import RadiographDatastore  # noqa: E402
from lungseg_monai.label.errors import BadRequestError, ImageNotFoundError  # noqa: E402


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    shutil.copyfile(SAMPLE_DATA / "images" / "1052b0fe.png", tmp_path / "1052b0fe.png")
    shutil.copyfile(SAMPLE_DATA / "images" / "1880e301.png", tmp_path / "UPPER.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_datastore_lists_dicom_and_upper_case_suffixes_real_files(studies: Path) -> None:
    shutil.copyfile(DICOM_JPEG_SIIM, studies / "siim.dcm")
    shutil.copyfile(DICOM_JPEG_SIIM, studies / "SIIM2.DCM")
    datastore = RadiographDatastore(str(studies), auto_reload=False)
    assert sorted(datastore.list_images()) == ["1052b0fe", "SIIM2", "UPPER", "siim"]
    assert datastore.get_image_uri("SIIM2") == str(studies / "SIIM2.DCM")


def test_datastore_lists_dicom_files_without_a_suffix_under_their_whole_name_real_files(
    studies: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    uid_name = "1.2.840.113619.2.55.3"  # MONAI Label alone would call this image "1"
    shutil.copyfile(DICOM_JPEG_SIIM, studies / uid_name)
    shutil.copyfile(DICOM_JPEG_SIIM, studies / "IM0001")
    datastore = RadiographDatastore(str(studies), auto_reload=False)
    assert sorted(datastore.list_images()) == sorted(["1052b0fe", "UPPER", "IM0001", uid_name])  # not notes.txt
    assert datastore.get_image_uri(uid_name) == str(studies / uid_name)

    from lungseg_monai.io import read_radiograph

    rows, cols = read_radiograph(studies / uid_name).shape
    label = tmp_path_factory.mktemp("uploads") / "label.png"
    Image.fromarray(np.zeros((rows, cols), np.uint8)).save(label)
    datastore.save_label(uid_name, str(label), "final", {})
    assert datastore.get_label_uri(uid_name, "final") == str(studies / "labels" / "final" / f"{uid_name}.png")
    reopened = RadiographDatastore(str(studies), auto_reload=False)  # the label is found again by its name
    assert reopened.get_labeled_images() == [uid_name]


def test_save_label_checks_the_label_against_its_image(studies: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    datastore = RadiographDatastore(str(studies), auto_reload=False)
    uploads = tmp_path_factory.mktemp("uploads")
    Image.fromarray(np.zeros((256, 512), np.uint8)).save(uploads / "wrong.png")
    with pytest.raises(BadRequestError) as info:
        datastore.save_label("1052b0fe", str(uploads / "wrong.png"), "final", {})
    assert info.value.detail == (
        "label for image '1052b0fe' is 512x256 pixels but the image is 512x512; "
        "a label must have exactly its image's size (width x height)"
    )
    with pytest.raises(ImageNotFoundError) as missing:
        datastore.save_label("nope", str(uploads / "wrong.png"), "final", {})
    assert missing.value.status_code == 404

    assert datastore.save_label("1052b0fe", str(SAMPLE_DATA / "masks" / "1052b0fe.png"), "final", {}) == "1052b0fe"
    assert datastore.datalist() == [
        {"image": str(studies / "1052b0fe.png"), "label": str(studies / "labels" / "final" / "1052b0fe.png")}
    ]
