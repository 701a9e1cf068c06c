"""``DicomwebDatastore(overlay=True)`` on a real Orthanc: the label's overlay SC goes with its SEG, never instead of it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")

from label_server import png_bytes  # noqa: E402
from orthanc import Orthanc, require_orthanc, running_orthanc  # noqa: E402
from pacs_tools import chest_instances  # noqa: E402

import lungseg_monai.label.dicomweb_datastore as dicomweb_datastore  # noqa: E402
from lungseg_monai.label.dicomweb_datastore import MANUAL_OVERLAY_SERIES_DESCRIPTION, DicomwebDatastore  # noqa: E402
from lungseg_monai.outputs.dicom_seg import read_lung_seg_mask  # noqa: E402

SIDE = 128


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[Orthanc, str, Path]]:
    require_orthanc()
    (film,) = chest_instances(tmp_path / "chest", 1, longest_side=SIDE)
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        orthanc.upload(film)
        yield orthanc, str(pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID), film


def _instances(orthanc: Orthanc, **query: str) -> list[pydicom.Dataset]:
    found = orthanc.post("/tools/find", json.dumps({"Level": "Instance", "Query": query}))
    return [pydicom.dcmread(io.BytesIO(orthanc.file(orthanc_id))) for orthanc_id in found]


def _label(film: Path, tmp_path: Path, shift: int = 0) -> tuple[np.ndarray, Path]:
    header = pydicom.dcmread(film, stop_before_pixels=True)
    mask = np.zeros((header.Rows, header.Columns), np.uint8)
    mask[20:100, 10 + shift : 50 + shift] = 1
    path = tmp_path / f"label{shift}.png"
    path.write_bytes(png_bytes(mask * 255))
    return mask, path


def test_overlay_is_stored_with_the_seg_and_never_listed_as_a_film(pacs, tmp_path: Path) -> None:
    orthanc, image_id, film = pacs
    store = DicomwebDatastore(orthanc.dicomweb, tmp_path / "cache", overlay=True)
    assert store.list_images() == [image_id]
    mask, label = _label(film, tmp_path)
    store.save_label(image_id, str(label), "final", {})

    info = store.saved_label_info(image_id)
    (seg,) = _instances(orthanc, Modality="SEG")
    np.testing.assert_array_equal(read_lung_seg_mask(seg, image_id), mask)
    (sc,) = _instances(orthanc, SeriesDescription=MANUAL_OVERLAY_SERIES_DESCRIPTION)
    assert info["SOPInstanceUID"] == seg.SOPInstanceUID
    assert (info["overlay_sop_instance_uid"], info["overlay_series_instance_uid"]) == (
        sc.SOPInstanceUID,
        sc.SeriesInstanceUID,
    )
    assert "overlay_error" not in info
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == image_id
    assert seg.SOPInstanceUID in sc.DerivationDescription
    # The overlay is in the study now, but it is our own result, not a radiograph to label.
    store.refresh()
    assert store.list_images() == [image_id]
    assert store.get_labeled_images() == [image_id]


def test_an_overlay_that_fails_leaves_the_saved_seg_and_says_why(pacs, tmp_path: Path, monkeypatch) -> None:
    orthanc, image_id, film = pacs
    store = DicomwebDatastore(orthanc.dicomweb, tmp_path / "cache", overlay=True)
    store.list_images()
    _, first = _label(film, tmp_path)
    store.save_label(image_id, str(first), "final", {})
    assert "overlay_sop_instance_uid" in store.saved_label_info(image_id)

    def broken(*args, **kwargs):
        raise ValueError("overlay writer broke")

    monkeypatch.setattr(dicomweb_datastore, "make_overlay_sc", broken)
    mask, second = _label(film, tmp_path, shift=30)
    assert store.save_label(image_id, str(second), "final", {}) == image_id  # the save itself succeeds

    info = store.saved_label_info(image_id)
    assert info["overlay_error"] == "ValueError: overlay writer broke"
    # Nothing left over from the first save's overlay that could pass for this one's.
    assert "overlay_sop_instance_uid" not in info and "overlay_series_instance_uid" not in info
    segs = {str(s.SOPInstanceUID): s for s in _instances(orthanc, Modality="SEG")}
    assert len(segs) == 2 and info["SOPInstanceUID"] in segs
    np.testing.assert_array_equal(read_lung_seg_mask(segs[info["SOPInstanceUID"]], image_id), mask)
    assert len(_instances(orthanc, SeriesDescription=MANUAL_OVERLAY_SERIES_DESCRIPTION)) == 1  # the first one only
