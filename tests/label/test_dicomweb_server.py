"""``lungseg label --studies http://.../dicom-web`` end to end: a real server on a real Orthanc.

The REST calls 3D Slicer's MONAI Label module makes (``GET /info/``, ``POST /activelearning/random``,
``GET /datastore/image``, ``POST /infer/MODEL``, ``PUT /datastore/label``, ``POST /train/MODEL``),
made against one server (module scope) whose datastore is an Orthanc holding real chest films (the
three real chest DICOMs shrunk to 256 px and stored uncompressed, plus the real JPEG 2000 CR as it
is), a lateral copy of one of them and pydicom's CT test file. The tests run in file order: labels
saved by one are in the PACS for the next, and the last stops the PACS under the running server.
Before training, the model's own SEGs (AUTOMATIC, as ``lungseg node`` stores them) are added: one
made after a person's label, one of an image no person labelled; training must use neither.

The served model is the session's small trained bundle whose masks are not empty (``segmenting_bundle``).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")
requests = pytest.importorskip("requests")

from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1  # noqa: E402
from label_server import LabelServer, expected_mask, png_bytes, running_label_server, sha256  # noqa: E402
from orthanc import Orthanc, require_orthanc, running_orthanc  # noqa: E402
from pacs_tools import chest_instances, stow_model_seg  # noqa: E402
from PIL import Image  # noqa: E402

from lungseg_monai.io import read_mask  # noqa: E402
from lungseg_monai.label import MODEL_NAME  # noqa: E402

SMALL_SIDE = 256
# The model's SEGs stored in the PACS by these tests (as lungseg node would): its identity, and a
# Content Date after anything a person saves today.
MODEL_IDENTITY = "LungUNet-resnet34-0123456789ab"
LATER_DATE = "20990101"
# What Orthanc answers for a WADO-RS request that names no transfer syntax: transcode (and fail on JPEG 2000).
AS_STORED_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
AS_STORED_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass
class Pacs:
    orthanc: Orthanc
    chest: dict[str, Path]  # SOP Instance UID -> file, the frontal chest films (listed)
    lateral: str  # SOP Instance UID of the lateral view (not listed)
    ct: str  # SOP Instance UID of the CT slice (not listed)
    j2k: pydicom.Dataset  # header of the real JPEG 2000 CR (listed)


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    require_orthanc()
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("dicomweb_label")
    films = chest_instances(folder / "chest", 3, longest_side=SMALL_SIDE)
    (lateral,) = chest_instances(folder / "lateral", 1, sources=[DICOM_FAKE_MONO1], longest_side=SMALL_SIDE)
    ds = pydicom.dcmread(lateral)
    ds.ViewPosition = "LL"
    ds.save_as(lateral)
    ct = Path(get_testdata_file("CT_small.dcm"))
    with running_orthanc(folder / "orthanc") as orthanc:
        for path in [*films, lateral, ct, DICOM_J2K_MONO1]:
            orthanc.upload(path)
        yield Pacs(
            orthanc,
            chest={str(_header(p).SOPInstanceUID): p for p in films},
            lateral=str(_header(lateral).SOPInstanceUID),
            ct=str(_header(ct).SOPInstanceUID),
            j2k=_header(DICOM_J2K_MONO1),
        )


@pytest.fixture(scope="module")
def server(pacs: Pacs, segmenting_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelServer]:
    model = segmenting_bundle / "models" / "model.pt"
    with running_label_server(pacs.orthanc.dicomweb, model, tmp_path_factory.mktemp("label_pacs_workdir")) as srv:
        yield srv


def _listed(pacs: Pacs) -> set[str]:
    return {*pacs.chest, str(pacs.j2k.SOPInstanceUID)}


def _segs(pacs: Pacs) -> dict[str, pydicom.Dataset]:
    """Every SEG in Orthanc, read from its stored file, by SOP Instance UID."""
    segs = {}
    for item in pacs.orthanc.instances_by_modality("SEG"):
        seg = pydicom.dcmread(io.BytesIO(pacs.orthanc.file(item["ID"])))
        segs[str(seg.SOPInstanceUID)] = seg
    return segs


def _label_mask_synthetic(shape: tuple[int, int], shift: int = 0) -> np.ndarray:
    """Two lung-like ellipses of different sizes (synthetic, not symmetric): a flip or transpose would show."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    height, width = shape
    right = ((rows - height * 0.5) / (height * 0.3)) ** 2 + ((cols - width * 0.3 - shift) / (width * 0.12)) ** 2
    left = ((rows - height * 0.45) / (height * 0.25)) ** 2 + ((cols - width * 0.7) / (width * 0.1)) ** 2
    return ((right <= 1) | (left <= 1)).astype(np.uint8)


def _image_shape(path: Path) -> tuple[int, int]:
    header = _header(path)
    return int(header.Rows), int(header.Columns)


def test_lists_the_frontal_chest_films_only_and_fetched_nothing_at_start(server: LabelServer, pacs: Pacs) -> None:
    cache = server.workdir / "dicomweb_cache"
    assert not cache.exists(), "the server retrieved something at start-up"
    assert not any((server.workdir / "app" / "bin").iterdir()), "dcmqi (or anything else) was installed"
    info = server.get("/info/").json()
    assert info["datastore"]["total"] == len(_listed(pacs)) and info["datastore"]["completed"] == 0
    objects = server.get("/datastore/", output="all").json()["objects"]
    assert set(objects) == _listed(pacs)  # neither the CT nor the lateral view
    assert pacs.ct not in objects and pacs.lateral not in objects
    sop = next(iter(pacs.chest))
    assert objects[sop]["image"]["info"]["StudyInstanceUID"] == str(_header(pacs.chest[sop]).StudyInstanceUID)
    assert not (cache / "images").exists(), "listing retrieved images"


def test_slicer_next_sample_and_image_download_give_the_stored_instance(server: LabelServer, pacs: Pacs) -> None:
    sample = server.session.post(f"{server.url}/activelearning/random", json={"client_id": "slicer"}, timeout=60)
    assert sample.status_code == 200, sample.text
    image_id = sample.json()["id"]
    assert image_id in _listed(pacs)
    downloaded = server.get("/datastore/image", image=image_id)
    assert downloaded.status_code == 200, downloaded.text
    ds = pydicom.dcmread(io.BytesIO(downloaded.content))
    source = pydicom.dcmread(pacs.chest[image_id]) if image_id in pacs.chest else pydicom.dcmread(DICOM_J2K_MONO1)
    assert ds.SOPInstanceUID == image_id
    assert ds.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID  # as stored, not transcoded
    assert ds.PixelData == source.PixelData


def test_infer_gives_the_lungseg_mask_and_qc_fields(server: LabelServer, pacs: Pacs, tmp_path: Path) -> None:
    import SimpleITK as sitk  # what 3D Slicer's MONAI Label module reads results with

    image_id, path = next(iter(pacs.chest.items()))
    params = server.infer_params(image_id)
    assert params["shape"] == list(_image_shape(path))
    assert params["qc_status"] in ("pass", "review", "reject", "unavailable") and isinstance(params["qc_reasons"], list)
    assert 0 < params["lung_fraction"] < 1 and params["model"] == str(server.model)
    assert set(params["latencies"]) == {"pre", "infer", "post", "total"}
    response = server.infer(image_id)
    assert response.status_code == 200, response.text
    result = tmp_path / "mask.nrrd"
    result.write_bytes(response.content)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(result)))[0]
    np.testing.assert_array_equal(mask, expected_mask(server.model, path, tmp_path / "expected"))


def test_saved_label_is_one_manual_seg_in_the_pacs_read_back_pixel_equal(server: LabelServer, pacs: Pacs) -> None:
    import highdicom as hd

    image_id, path = next(iter(pacs.chest.items()))
    mask = _label_mask_synthetic(_image_shape(path))
    saved = server.put_label(image_id, "label.png", png_bytes(mask * 255), tag="final")
    assert saved.status_code == 200, saved.text
    assert saved.json()["label"] == image_id
    segs = _segs(pacs)
    assert len(segs) == 1
    (seg,) = segs.values()
    assert saved.json()["label_info"]["SOPInstanceUID"] == seg.SOPInstanceUID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image_id
    assert seg.StudyInstanceUID == _header(path).StudyInstanceUID
    by_highdicom = hd.seg.Segmentation.from_dataset(seg, copy=False).get_pixels_by_source_instance([image_id])
    np.testing.assert_array_equal(by_highdicom[0, :, :, 0], mask)
    seg_file = server.workdir / "seg_from_orthanc.dcm"
    seg.save_as(seg_file)
    np.testing.assert_array_equal(read_mask(seg_file).pixels, mask)  # lungseg's own reader
    back = server.get("/datastore/label", label=image_id, tag="final")
    assert back.status_code == 200
    with Image.open(io.BytesIO(back.content)) as img:
        np.testing.assert_array_equal(np.asarray(img), mask)
    assert server.get("/datastore/").json()["completed"] == 1


def test_a_second_save_of_the_same_image_is_the_label_served(server: LabelServer, pacs: Pacs, tmp_path: Path) -> None:
    import SimpleITK as sitk

    image_id, path = next(iter(pacs.chest.items()))
    # As Slicer does: the /infer result (NRRD with the image's geometry), edited, sent back.
    proposal = tmp_path / "proposal.nrrd"
    proposal.write_bytes(server.infer(image_id).content)
    volume = sitk.ReadImage(str(proposal))
    mask = _label_mask_synthetic(_image_shape(path), shift=12)
    edited = sitk.GetImageFromArray(mask[np.newaxis])
    edited.CopyInformation(volume)
    sitk.WriteImage(edited, str(tmp_path / "label.nrrd"))
    saved = server.put_label(image_id, "label.nrrd", (tmp_path / "label.nrrd").read_bytes(), tag="final")
    assert saved.status_code == 200, saved.text
    segs = _segs(pacs)
    assert len(segs) == 2
    latest = saved.json()["label_info"]["SOPInstanceUID"]
    assert latest in segs
    back = server.get("/datastore/label", label=image_id, tag="final")
    with Image.open(io.BytesIO(back.content)) as img:
        np.testing.assert_array_equal(np.asarray(img), mask)
    objects = server.get("/datastore/", output="all").json()["objects"]
    assert objects[image_id]["labels"]["final"]["info"]["SOPInstanceUID"] == latest


def test_bad_requests_get_4xx_with_a_reason_and_store_nothing(server: LabelServer, pacs: Pacs) -> None:
    image_id, path = next(iter(pacs.chest.items()))
    rows, cols = _image_shape(path)
    unknown = server.put_label("1.2.3.4", "label.png", png_bytes(np.ones((8, 8), np.uint8)))
    assert unknown.status_code == 404
    assert "'1.2.3.4' is not in the datastore" in unknown.json()["detail"]
    wrong_size = server.put_label(image_id, "label.png", png_bytes(np.ones((rows + 1, cols), np.uint8)))
    assert wrong_size.status_code == 400
    assert wrong_size.json()["detail"] == (
        f"label for image '{image_id}' is {cols}x{rows + 1} pixels but the image is {cols}x{rows}; "
        "a label must have exactly its image's size (width x height)"
    )
    not_an_image = server.put_label(image_id, "label.png", b"not a mask")
    assert not_an_image.status_code == 400 and "not a readable image" in not_an_image.json()["detail"]
    other_tag = server.put_label(image_id, "label.png", png_bytes(np.ones((rows, cols), np.uint8)), tag="original")
    assert other_tag.status_code == 400 and "tag 'original' is not stored" in other_tag.json()["detail"]
    ct = server.infer(pacs.ct)
    assert ct.status_code == 400 and "computed tomography" in ct.json()["detail"]
    assert server.infer("1.2.3.4").status_code == 404
    assert len(_segs(pacs)) == 2


def test_two_saves_for_different_images_at_the_same_time_both_land(server: LabelServer, pacs: Pacs) -> None:
    others = list(pacs.chest.items())[1:]
    before = set(_segs(pacs))

    def save(item: tuple[str, Path]) -> requests.Response:
        image_id, path = item
        return server.put_label(image_id, "label.png", png_bytes(_label_mask_synthetic(_image_shape(path)) * 255))

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(save, others))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    new = {sop: seg for sop, seg in _segs(pacs).items() if sop not in before}
    referenced = [s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] for s in new.values()]
    assert {r.ReferencedSOPInstanceUID for r in referenced} == {image_id for image_id, _ in others}
    assert server.get("/datastore/").json()["completed"] == 3


def _stow_model_seg(pacs: Pacs, film: Path, mask: np.ndarray, folder: Path, date: str = "") -> str:
    """A model's AUTOMATIC SEG of ``film`` that QC passed, stored as ``lungseg infer --stow-to`` does."""
    from lungseg_monai.qc.quality import QC_PASS, QCResult

    return stow_model_seg(pacs.orthanc.dicomweb, film, mask, QCResult(QC_PASS, 0.97), folder, MODEL_IDENTITY, date)


def test_a_model_seg_stored_later_neither_replaces_the_manual_label_nor_is_trained_on(
    server: LabelServer, pacs: Pacs, tmp_path: Path
) -> None:
    image_id, path = next(iter(pacs.chest.items()))
    j2k_id = str(pacs.j2k.SOPInstanceUID)
    objects = server.get("/datastore/", output="all").json()["objects"]
    manual = objects[image_id]["labels"]["final"]["info"]["SOPInstanceUID"]  # the second save's
    assert j2k_id not in {sop for sop, entry in objects.items() if entry["labels"]}
    # lungseg node / lungseg infer --stow-to store the model's masks, after the person's label.
    _stow_model_seg(pacs, path, np.ones(_image_shape(path), np.uint8), tmp_path, date=LATER_DATE)
    automatic = _stow_model_seg(pacs, DICOM_J2K_MONO1, np.ones(_image_shape(DICOM_J2K_MONO1), np.uint8), tmp_path)
    time.sleep(2.5)  # older than the listing's reuse window

    back = server.get("/datastore/label", label=image_id, tag="final")
    with Image.open(io.BytesIO(back.content)) as img:
        np.testing.assert_array_equal(np.asarray(img), _label_mask_synthetic(_image_shape(path), shift=12))
    objects = server.get("/datastore/", output="all").json()["objects"]
    info = objects[image_id]["labels"]["final"]["info"]
    assert (info["SOPInstanceUID"], info["SegmentAlgorithmType"], info["UsedForTraining"]) == (manual, "MANUAL", True)
    # An image with only the model's SEG: shown as the model's, not a training label.
    info = objects[j2k_id]["labels"]["final"]["info"]
    assert (info["SOPInstanceUID"], info["SegmentAlgorithmType"], info["UsedForTraining"]) == (
        automatic,
        "AUTOMATIC",
        False,
    )
    shown = server.get("/lungseg/label", image=j2k_id)
    assert shown.status_code == 200, shown.text
    assert shown.headers["X-Segment-Algorithm-Type"] == "AUTOMATIC"
    assert shown.headers["X-Used-For-Training"] == "false"
    assert shown.headers["X-Content-Description"] == "Lungs segmented automatically"
    assert server.get("/lungseg/label", image=image_id).headers["X-Segment-Algorithm-Type"] == "MANUAL"
    status = server.get("/info/").json()["datastore"]
    assert (status["completed"], status["automatic_only"], status["train_on_automatic"]) == (3, 1, False)


def test_train_on_the_pacs_labels_changes_the_served_model(server: LabelServer, pacs: Pacs) -> None:
    before = server.model_checksum()
    assert before == f"SHA256:{sha256(server.model)}"
    task = server.train(max_epochs=1, batch_size=2)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])) + server.log_tail()
    published = server.workdir / "models" / "model.pt"
    assert server.model_checksum() == f"SHA256:{sha256(published)}" != before
    stats = server.get(f"/model/info/{MODEL_NAME}").json()["train_stats"]
    assert stats["labels"] == len(pacs.chest) and stats["skipped"] == []
    (run,) = (server.workdir / "runs").iterdir()
    datalist = json.loads((run / "datalist.json").read_text())
    labels = {Path(i["image"]).stem: Path(i["label"]).stem for i in datalist["training"] + datalist["validation"]}
    assert set(labels) == set(pacs.chest)  # not the JPEG 2000 CR, whose only SEG is the model's
    first = next(iter(pacs.chest))
    latest = server.get("/datastore/", output="all").json()["objects"][first]["labels"]["final"]["info"]
    assert latest["SegmentAlgorithmType"] == "MANUAL"
    assert labels[first] == latest["SOPInstanceUID"]  # the second save: neither the first nor the model's later SEG
    manual_segs = {sop for sop, seg in _segs(pacs).items() if seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"}
    assert set(labels.values()) <= manual_segs
    assert server.infer_params(first)["model"] == str(published)


def test_proxy_forwards_accept_so_a_jpeg2000_film_comes_as_stored(server: LabelServer, pacs: Pacs) -> None:
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    j2k = pacs.j2k
    path = f"studies/{j2k.StudyInstanceUID}/series/{j2k.SeriesInstanceUID}/instances/{j2k.SOPInstanceUID}"
    instance = server.session.get(
        f"{server.url}/proxy/dicom/wado/{path}", headers={"Accept": AS_STORED_INSTANCE}, timeout=60
    )
    assert instance.status_code == 200, instance.text[:500]
    (part,) = MultipartDecoder(instance.content, instance.headers["content-type"]).parts
    ds = pydicom.dcmread(io.BytesIO(part.content))
    assert ds.SOPInstanceUID == j2k.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == j2k.file_meta.TransferSyntaxUID  # JPEG 2000, as stored
    frame = server.session.get(
        f"{server.url}/proxy/dicom/wado/{path}/frames/1", headers={"Accept": AS_STORED_FRAMES}, timeout=60
    )
    assert frame.status_code == 200, frame.text[:500]
    assert f"transfer-syntax={j2k.file_meta.TransferSyntaxUID}" in frame.headers["content-type"]
    ct_only = server.session.get(f"{server.url}/proxy/dicom/qido/instances", params={"Modality": "CT"}, timeout=60)
    assert ct_only.status_code == 200
    assert [i["00080018"]["Value"][0] for i in ct_only.json()] == [pacs.ct]  # the query string reached Orthanc


def test_pacs_stopped_gives_502_with_the_reason_and_the_server_keeps_serving(server: LabelServer, pacs: Pacs) -> None:
    image_id, path = next(iter(pacs.chest.items()))
    pacs.orthanc.stop()
    time.sleep(2.5)  # older than the listing's reuse window
    unreachable = f"cannot reach the DICOMweb server at '{pacs.orthanc.dicomweb}'"
    listing = server.get("/datastore/", output="all")
    assert listing.status_code == 502 and unreachable in listing.json()["detail"]
    saved = server.put_label(image_id, "label.png", png_bytes(_label_mask_synthetic(_image_shape(path)) * 255))
    assert saved.status_code == 502
    assert saved.json()["detail"].startswith(f"label for image '{image_id}' was not saved: {unreachable}")
    proxied = server.session.get(f"{server.url}/proxy/dicom/qido/studies", timeout=60)
    assert proxied.status_code == 502 and "cannot be reached" in proxied.json()["detail"]
    info = server.get("/info/")  # the app still answers; the datastore says why it is stale
    assert info.status_code == 200 and unreachable in info.json()["datastore"]["pacs_error"]
    assert server.infer(image_id).status_code == 200  # a cached image can still be segmented
    assert server.process.poll() is None
