"""Which SEG is an image's label, and which are training labels, in ``DicomwebDatastore`` (issue 20, item 5).

A person's (MANUAL, then SEMIAUTOMATIC) lung SEG wins over a model's (AUTOMATIC) whatever their
dates; a model's SEG is never a training label unless ``train_on_automatic``, and then only one
that quality control passed. The PACS is a real Orthanc holding real chest films (shrunk); the
model's SEGs are written as ``lungseg infer --stow-to`` writes and stores them
(:func:`~lungseg_monai.outputs.dicom_seg.save_lung_seg` with the QC Content Description, then
STOW-RS); the masks are synthetic rectangles (so that each SEG's pixels are told apart).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")

from label_server import png_bytes, running_label_server  # noqa: E402
from orthanc import Orthanc, require_orthanc, running_orthanc  # noqa: E402
from pacs_tools import chest_instances, stow_model_seg  # noqa: E402

from lungseg_monai.io import read_mask  # noqa: E402
from lungseg_monai.label.dicomweb_datastore import DicomwebDatastore, SegLabel  # noqa: E402
from lungseg_monai.dicomweb import InstanceRef  # noqa: E402
from lungseg_monai.qc.quality import QC_PASS, QC_REJECT, QC_REVIEW, QCResult  # noqa: E402

SIDE = 128
FILMS = 6
# A model's SEG made after the person's label: dated well after anything the test writes today.
LATER_DATE = "20990101"
EVEN_LATER_DATE = "20990102"
MODEL = "LungUNet-resnet34-0123456789ab"
NEWER_MODEL = "LungUNet-resnet34-ba9876543210"


@dataclass
class Pacs:
    orthanc: Orthanc
    films: list[tuple[str, Path]]  # (SOP Instance UID, file) of the chest films, one per test


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    require_orthanc()
    folder = tmp_path_factory.mktemp("provenance")
    films = chest_instances(folder / "chest", FILMS, longest_side=SIDE)
    with running_orthanc(folder / "orthanc") as orthanc:
        for film in films:
            orthanc.upload(film)
        yield Pacs(orthanc, [(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), f) for f in films])


def _mask(film: Path, top: int, left: int) -> np.ndarray:
    """A synthetic 0/1 rectangle on the film's grid; ``top``/``left`` tell the masks apart."""
    header = pydicom.dcmread(film, stop_before_pixels=True)
    mask = np.zeros((header.Rows, header.Columns), np.uint8)
    mask[top : top + 40, left : left + 30] = 1
    return mask


def _save_manual(store: DicomwebDatastore, image_id: str, mask: np.ndarray, tmp_path: Path) -> str:
    """Save ``mask`` as a person's label through the datastore (a MANUAL SEG); returns the SEG's SOP UID."""
    path = tmp_path / f"manual_{image_id}.png"
    path.write_bytes(png_bytes(mask * 255))
    store.save_label(image_id, str(path), "final", {})
    return store.saved_label_info(image_id)["SOPInstanceUID"]


def _stow_model_seg(
    pacs: Pacs, film: Path, mask: np.ndarray, qc: QCResult, folder: Path, model: str = MODEL, date: str = ""
) -> str:
    return stow_model_seg(pacs.orthanc.dicomweb, film, mask, qc, folder, model, date)


def _png(path: str) -> np.ndarray:
    return read_mask(path).pixels.astype(np.uint8)


def _training_labels(store: DicomwebDatastore) -> dict[str, np.ndarray]:
    """The datalist's labels, read back, by image SOP Instance UID (the image files are named SOP.dcm)."""
    return {Path(item["image"]).stem: _png(item["label"]) for item in store.datalist()}


def test_a_manual_label_wins_over_a_model_seg_stored_later(pacs: Pacs, tmp_path: Path) -> None:
    image_id, film = pacs.films[0]
    saving = DicomwebDatastore(pacs.orthanc.dicomweb, tmp_path / "cache_saving")
    saving.list_images()
    manual_mask = _mask(film, 20, 10)
    manual = _save_manual(saving, image_id, manual_mask, tmp_path)
    model_mask = _mask(film, 50, 70)
    automatic = _stow_model_seg(pacs, film, model_mask, QCResult(QC_PASS, 0.97), tmp_path / "segs", date=LATER_DATE)

    fresh = DicomwebDatastore(pacs.orthanc.dicomweb, tmp_path / "cache_fresh")  # all it knows is in the PACS
    saving.refresh()  # the store that saved, after a listing that sees the model's SEG
    for store in (fresh, saving):
        label = store.seg_label(image_id)
        assert (label.ref.sop_uid, label.algorithm_type) == (manual, "MANUAL") != (automatic, "AUTOMATIC")
        assert label.content_datetime < LATER_DATE  # the model's SEG is the later one
        np.testing.assert_array_equal(_png(store.get_label_uri(image_id, "final")), manual_mask)
        info = store.get_label_info(image_id, "final")
        assert (info["SOPInstanceUID"], info["SegmentAlgorithmType"], info["UsedForTraining"]) == (
            manual,
            "MANUAL",
            True,
        )
        assert store.json()["objects"][image_id]["labels"]["final"]["info"]["SOPInstanceUID"] == manual
        assert image_id in store.get_labeled_images() and image_id not in store.get_unlabeled_images()
        np.testing.assert_array_equal(_training_labels(store)[image_id], manual_mask)
    # Training on the model's SEGs does not change whose label wins either.
    trusting = DicomwebDatastore(pacs.orthanc.dicomweb, tmp_path / "cache_trusting", train_on_automatic=True)
    assert trusting.training_label(image_id).ref.sop_uid == manual
    np.testing.assert_array_equal(_training_labels(trusting)[image_id], manual_mask)


def test_an_image_with_only_a_model_seg_shows_it_as_automatic_but_trains_on_it_only_when_asked(
    pacs: Pacs, tmp_path: Path
) -> None:
    image_id, film = pacs.films[1]
    model_mask = _mask(film, 30, 40)
    automatic = _stow_model_seg(pacs, film, model_mask, QCResult(QC_PASS, 0.97), tmp_path / "segs")

    store = DicomwebDatastore(pacs.orthanc.dicomweb, tmp_path / "cache")
    assert image_id not in store.get_labeled_images()
    assert image_id in store.get_unlabeled_images()  # a person should review it: next-sample strategies offer it
    assert store.training_label(image_id) is None
    assert image_id not in _training_labels(store)
    # Still shown (review page, GET /datastore/label), as what it is: a model's mask.
    assert store.get_labels_by_image_id(image_id) == {"final": image_id}
    np.testing.assert_array_equal(_png(store.get_label_uri(image_id, "final")), model_mask)
    info = store.get_label_info(image_id, "final")
    assert (info["SOPInstanceUID"], info["SegmentAlgorithmType"], info["UsedForTraining"]) == (
        automatic,
        "AUTOMATIC",
        False,
    )
    assert info["ContentDescription"] == "Lungs segmented automatically"
    listed = store.json()["objects"][image_id]["labels"]["final"]["info"]
    assert (listed["SegmentAlgorithmType"], listed["UsedForTraining"]) == ("AUTOMATIC", False)
    assert store.status()["automatic_only"] >= 1 and store.status()["train_on_automatic"] is False

    trusting = DicomwebDatastore(pacs.orthanc.dicomweb, tmp_path / "cache_trusting", train_on_automatic=True)
    assert image_id in trusting.get_labeled_images() and image_id not in trusting.get_unlabeled_images()
    np.testing.assert_array_equal(_training_labels(trusting)[image_id], model_mask)
    assert trusting.get_label_info(image_id, "final")["UsedForTraining"] is True


def test_a_model_seg_that_quality_control_did_not_pass_is_never_a_training_label(pacs: Pacs, tmp_path: Path) -> None:
    (rejected_id, rejected_film), (reviewed_id, reviewed_film), (both_id, both_film) = pacs.films[2:5]
    folder = tmp_path / "segs"
    reject = QCResult(QC_REJECT, 0.41, ("lung area 3% of the film, expected at least 10%",))
    review = QCResult(QC_REVIEW, 0.88, ("out-of-distribution score 0.9 above 0.7",))
    rejected = _stow_model_seg(pacs, rejected_film, _mask(rejected_film, 10, 10), reject, folder)
    _stow_model_seg(pacs, reviewed_film, _mask(reviewed_film, 10, 10), review, folder)
    # One image: an older model's SEG that QC passed, a newer model's, later, that QC rejected.
    _stow_model_seg(pacs, both_film, _mask(both_film, 40, 20), QCResult(QC_PASS, 0.96), folder, date=LATER_DATE)
    newer = _stow_model_seg(
        pacs, both_film, _mask(both_film, 70, 80), reject, folder, model=NEWER_MODEL, date=EVEN_LATER_DATE
    )

    for train_on_automatic in (False, True):
        cache = tmp_path / f"cache_{train_on_automatic}"
        store = DicomwebDatastore(pacs.orthanc.dicomweb, cache, train_on_automatic=train_on_automatic)
        training = _training_labels(store)
        assert rejected_id not in training and reviewed_id not in training
        assert rejected_id not in store.get_labeled_images() and reviewed_id not in store.get_labeled_images()
        info = store.get_label_info(rejected_id, "final")
        assert info["SOPInstanceUID"] == rejected and info["UsedForTraining"] is False
        assert info["ContentDescription"] == "QC reject: lung area 3% of the film, expected at least 10%"
        assert store.get_label_info(reviewed_id, "final")["ContentDescription"].startswith("QC review: ")
        # Shown: the latest model's SEG, rejected; never trained on, and neither is the older one QC passed:
        # the latest model's verdict on this film is a reject.
        shown = store.get_label_info(both_id, "final")
        assert (shown["SOPInstanceUID"], shown["UsedForTraining"]) == (newer, False)
        assert both_id not in training


def test_lungseg_label_train_on_automatic_makes_a_model_seg_that_qc_passed_a_training_label(
    pacs: Pacs, trained_bundle: Path, tmp_path: Path
) -> None:
    image_id, film = pacs.films[5]
    automatic = _stow_model_seg(pacs, film, _mask(film, 30, 30), QCResult(QC_PASS, 0.97), tmp_path / "segs")
    model = trained_bundle / "models" / "model.pt"
    with running_label_server(pacs.orthanc.dicomweb, model, tmp_path / "workdir", ["--train-on-automatic"]) as server:
        assert server.get("/info/").json()["datastore"]["train_on_automatic"] is True
        info = server.get("/datastore/", output="all").json()["objects"][image_id]["labels"]["final"]["info"]
        assert (info["SOPInstanceUID"], info["SegmentAlgorithmType"], info["UsedForTraining"]) == (
            automatic,
            "AUTOMATIC",
            True,
        )
        shown = server.get("/lungseg/label", image=image_id).headers
        assert (shown["X-Segment-Algorithm-Type"], shown["X-Used-For-Training"]) == ("AUTOMATIC", "true")


def _label(
    algorithm_type: str, when: str, sop: str = "1.2.3", description: str = "", manufacturer: str = "lungseg_monai"
) -> SegLabel:
    """A SegLabel of a synthetic SEG header (no PACS): only its type, date, UID, description and maker matter."""
    return SegLabel(InstanceRef("1.2", "1.2.9", sop, "SEG"), "1.2.3.4", when, algorithm_type, description, manufacturer)


def test_seg_label_order_is_provenance_first_then_recency_synthetic() -> None:
    old_manual = _label("MANUAL", "20200101000000.000000")
    new_manual = _label("MANUAL", "20240101000000.000000")
    semi = _label("SEMIAUTOMATIC", "20250101000000.000000")
    automatic = _label("AUTOMATIC", "20260101000000.000000")
    untyped = _label("", "20270101000000.000000")
    ranked = sorted([automatic, semi, old_manual, untyped, new_manual], key=lambda label: label.order, reverse=True)
    assert ranked == [new_manual, old_manual, semi, untyped, automatic]


@pytest.mark.parametrize(
    ("algorithm_type", "description", "by_default", "with_automatic"),
    [
        ("MANUAL", "Lungs labelled by a person", True, True),
        ("SEMIAUTOMATIC", "", True, True),
        ("AUTOMATIC", "Lungs segmented automatically", False, True),
        ("AUTOMATIC", "QC review: out-of-distribution score 0.9", False, False),
        ("AUTOMATIC", "QC reject: lung area 3% of the film", False, False),
        ("AUTOMATIC", "QC unavailable: the model has no QC calibration", False, False),
        ("", "Lungs segmented automatically", False, True),  # no type: not a person's
        ("", "", False, False),  # no verdict at all
        ("AUTOMATIC", "Lungs segmented automatically|OtherVendor", False, False),  # not ours: not vouched for
    ],
)
def test_which_segs_are_training_labels_synthetic(
    algorithm_type: str, description: str, by_default: bool, with_automatic: bool
) -> None:
    description, _, vendor = description.partition("|")
    maker = vendor or "lungseg_monai"
    label = _label(algorithm_type, "20240101000000.000000", description=description, manufacturer=maker)
    assert (label.trainable(False), label.trainable(True)) == (by_default, with_automatic)
