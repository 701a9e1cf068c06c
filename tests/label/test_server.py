"""The MONAI Label app end to end: a real ``lungseg label`` server on a loopback port.

One server (module scope) on a studies folder of real radiographs: two embedded sample PNGs (one
cropped to 384x512 so that rows and columns differ) and, when ../shared is present, two real DICOM
files. The served model is the session's small trained bundle with its model card's threshold set
to the middle of its probabilities on the cropped image, so that its masks are neither empty nor
full and not symmetric: a transposed or flipped mask would not compare equal.

The expected masks are what ``lungseg infer`` writes for the same file with the same model (run
in this process, on the CPU with one thread like the server).
"""

from __future__ import annotations

import io
import json
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")
requests = pytest.importorskip("requests")

from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1, SAMPLE_DATA  # noqa: E402
from label_server import (  # noqa: E402
    REQUEST_TIMEOUT_S,
    expected_mask,
    png_bytes,
    running_label_server,
    sha256,
    single_threaded_torch,
)
from label_server import LabelServer as Server  # noqa: E402
from PIL import Image  # noqa: E402

from lungseg_monai.inference import LungSegmenter  # noqa: E402
from lungseg_monai.io import read_radiograph  # noqa: E402
from lungseg_monai.label import LABEL_NAMES, MODEL_NAME  # noqa: E402

CROPPED_ROWS = 384  # the sample images are 512x512
CROPPED_ID = "cropped_1880e301"
PNG_ID = "1052b0fe"
DICOM_IDS = (DICOM_J2K_MONO1.stem, DICOM_FAKE_MONO1.stem)
CONCURRENT_REQUESTS = 20


def _threshold_in_widest_gap(probabilities: np.ndarray) -> float:
    """A threshold near the median that lies in the widest gap between neighbouring probabilities."""
    values = np.unique(probabilities.ravel())
    low, high = int(len(values) * 0.4), int(len(values) * 0.6)
    gaps = np.diff(values[low : high + 1])
    i = low + int(np.argmax(gaps))
    return float((values[i] + values[i + 1]) / 2)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("studies")
    shutil.copyfile(SAMPLE_DATA / "images" / f"{PNG_ID}.png", folder / f"{PNG_ID}.png")
    with Image.open(SAMPLE_DATA / "images" / "1880e301.png") as img:
        img.crop((0, 0, img.width, CROPPED_ROWS)).save(folder / f"{CROPPED_ID}.png")
    for dicom in (DICOM_J2K_MONO1, DICOM_FAKE_MONO1):
        shutil.copyfile(dicom, folder / dicom.name)
    return folder


@pytest.fixture(scope="module")
def served_model(trained_bundle: Path, studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("served_model")
    model = folder / "model.pt"
    shutil.copyfile(trained_bundle / "models" / "model.pt", model)
    card = json.loads((trained_bundle / "models" / "model.json").read_text())
    single_threaded_torch()
    segmenter = LungSegmenter.from_model(trained_bundle / "models" / "model.pt", device="cpu")
    probabilities = segmenter.predict_probabilities([read_radiograph(studies / f"{CROPPED_ID}.png")])[0]
    card["threshold"] = _threshold_in_widest_gap(probabilities)
    model.with_suffix(".json").write_text(json.dumps(card))
    return model


@pytest.fixture(scope="module")
def server(studies: Path, served_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_label_server(studies, served_model, tmp_path_factory.mktemp("label_workdir")) as srv:
        yield srv


def _image_ids(studies: Path) -> set[str]:
    return {p.name.split(".")[0] for p in studies.iterdir() if p.is_file() and p.suffix in (".png", ".dcm")}


def test_info_lists_the_model_and_its_lung_label(server: Server) -> None:
    info = server.session.get(f"{server.url}/info/", timeout=REQUEST_TIMEOUT_S).json()
    assert info["labels"] == ["lung"]
    assert set(info["models"]) == {MODEL_NAME}
    assert info["models"][MODEL_NAME]["labels"] == LABEL_NAMES
    assert info["models"][MODEL_NAME]["dimension"] == 2
    assert set(info["trainers"]) == {MODEL_NAME}
    assert info["datastore"]["total"] == len(_image_ids(server.studies))


def test_datastore_lists_png_and_dicom_images(server: Server) -> None:
    objects = server.session.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=REQUEST_TIMEOUT_S).json()
    assert set(objects["objects"]) == _image_ids(server.studies)
    assert set(DICOM_IDS) <= set(objects["objects"])


@pytest.mark.parametrize("image_id", [CROPPED_ID, PNG_ID])
def test_infer_png_returns_the_lungseg_mask_at_image_size(server: Server, image_id: str, tmp_path: Path) -> None:
    response = server.infer(image_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as img:
        mask = np.asarray(img)
    expected = expected_mask(server.model, server.studies / f"{image_id}.png", tmp_path)
    assert mask.shape == read_radiograph(server.studies / f"{image_id}.png").shape
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) <= {0, LABEL_NAMES["lung"]}
    if image_id == CROPPED_ID:  # the check above would catch a transposed or flipped mask
        assert mask.shape == (CROPPED_ROWS, 512)
        assert 0.05 < mask.mean() < 0.95
        assert not np.array_equal(mask, mask[::-1]) and not np.array_equal(mask, mask[:, ::-1])


# What ITK/GDCM, and so 3D Slicer, reads from these files: RG1_J2KI's PixelSpacing is 0\0 (invalid,
# read as 1 mm); the SIIM pixels of Fake_MONOHR1 are 0.168 mm.
DICOM_SPACING = {DICOM_J2K_MONO1.stem: (1.0, 1.0, 1.0), DICOM_FAKE_MONO1.stem: (0.168, 0.168, 1.0)}


@pytest.mark.parametrize("dicom", [DICOM_J2K_MONO1, DICOM_FAKE_MONO1], ids=lambda p: p.stem)
def test_infer_dicom_returns_the_lungseg_mask_with_the_image_geometry(
    server: Server, dicom: Path, tmp_path: Path
) -> None:
    import SimpleITK as sitk  # what 3D Slicer's MONAI Label module reads results with

    response = server.infer(dicom.stem)
    assert response.status_code == 200, response.text
    result = server.workdir / f"{dicom.stem}_mask.nrrd"
    result.write_bytes(response.content)
    label_map = sitk.ReadImage(str(result))
    rows, cols = read_radiograph(dicom).shape
    assert label_map.GetSize() == (cols, rows, 1)
    assert label_map.GetSpacing() == pytest.approx(DICOM_SPACING[dicom.stem])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label_map)[0], expected_mask(server.model, dicom, tmp_path))


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server: Server) -> None:
    unknown = server.infer("no_such_image")
    assert unknown.status_code == 404
    assert "'no_such_image' is not in the datastore" in unknown.json()["detail"]

    not_an_image = server.session.post(
        f"{server.url}/infer/{MODEL_NAME}",
        params={"output": "image"},
        files={"file": ("notes.png", b"these are notes, not a radiograph")},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert not_an_image.status_code == 400
    assert "not a readable image" in not_an_image.json()["detail"]

    bad_label = server.put_label(PNG_ID, "label.png", b"not a mask")
    assert bad_label.status_code == 400
    assert "not a readable image" in bad_label.json()["detail"]

    wrong_size = server.put_label(CROPPED_ID, "label.png", png_bytes(np.ones((512, 512), np.uint8)))
    assert wrong_size.status_code == 400
    assert wrong_size.json()["detail"] == (
        f"label for image '{CROPPED_ID}' is 512x512 pixels but the image is 512x{CROPPED_ROWS}; "
        "a label must have exactly its image's size (width x height)"
    )

    orphan = server.put_label("no_such_image", "label.png", png_bytes(np.ones((8, 8), np.uint8)))
    assert orphan.status_code == 404

    assert server.infer(PNG_ID).status_code == 200
    assert not (server.studies / "labels" / "final" / f"{CROPPED_ID}.png").exists()


def _real_cropped_mask() -> np.ndarray:
    with Image.open(SAMPLE_DATA / "masks" / "1880e301.png") as img:
        return (np.asarray(img)[:CROPPED_ROWS] > 0).astype(np.uint8)


def test_saved_label_reads_back_unchanged(server: Server) -> None:
    mask = _real_cropped_mask()  # the annotators' real mask, cropped like its image: not symmetric
    saved = server.put_label(CROPPED_ID, "corrected.png", png_bytes(mask * 255))
    assert saved.status_code == 200, saved.text
    assert saved.json()["label"] == CROPPED_ID
    back = server.session.get(
        f"{server.url}/datastore/label", params={"label": CROPPED_ID, "tag": "final"}, timeout=REQUEST_TIMEOUT_S
    )
    with Image.open(io.BytesIO(back.content)) as img:
        np.testing.assert_array_equal(np.asarray(img) > 0, mask > 0)
    status = server.session.get(f"{server.url}/datastore/", timeout=REQUEST_TIMEOUT_S).json()
    assert status["completed"] >= 1


def test_review_page_and_its_film_rendering_on_a_folder(server: Server) -> None:
    from lungseg_monai.outputs.overlay import to_display_uint8

    page = server.get("/lungseg/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="review/review.js"' in page.text
    script = server.get("/lungseg/review/review.js")
    assert script.status_code == 200 and "/datastore/label" in script.text
    assert server.get("/lungseg/review/main.py").status_code == 404  # only the page's own files

    film = server.get("/lungseg/render", image=CROPPED_ID)
    assert film.status_code == 200 and film.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(film.content)) as img:
        assert img.mode == "L"
        shown = np.asarray(img)
    # On the masks' grid (rows x columns of the image), windowed as the overlays are.
    expected = to_display_uint8(read_radiograph(server.studies / f"{CROPPED_ID}.png").pixels)
    np.testing.assert_array_equal(shown, expected)

    # The saved label (test_saved_label_reads_back_unchanged) as the page shows it: 0/255 on the image's grid.
    label = server.get("/lungseg/label", image=CROPPED_ID)
    assert label.status_code == 200 and label.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(label.content)) as img:
        np.testing.assert_array_equal(np.asarray(img), _real_cropped_mask() * 255)
    unlabelled = server.get("/lungseg/label", image=PNG_ID)
    assert unlabelled.status_code == 404 and f"image '{PNG_ID}' has no saved label" in unlabelled.json()["detail"]

    unknown = server.get("/lungseg/render", image="no_such_image")
    assert unknown.status_code == 404 and "'no_such_image' is not in the datastore" in unknown.json()["detail"]
    j2k = server.get("/lungseg/render", image=DICOM_J2K_MONO1.stem)
    with Image.open(io.BytesIO(j2k.content)) as img:
        assert img.size == (1841, 1955)


def test_twenty_concurrent_infers_all_succeed(server: Server, tmp_path: Path) -> None:
    expected = expected_mask(server.model, server.studies / f"{CROPPED_ID}.png", tmp_path)
    with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
        responses = list(pool.map(lambda _: server.infer(CROPPED_ID), range(CONCURRENT_REQUESTS)))
    assert [r.status_code for r in responses] == [200] * CONCURRENT_REQUESTS
    for response in responses:
        with Image.open(io.BytesIO(response.content)) as img:
            np.testing.assert_array_equal(np.asarray(img), expected)


def test_train_one_epoch_publishes_a_new_checkpoint_that_infer_then_uses(server: Server, tmp_path: Path) -> None:
    label = server.put_label(CROPPED_ID, "corrected.png", png_bytes(_real_cropped_mask() * 255))
    assert label.status_code == 200, label.text
    before = server.session.get(f"{server.url}/model/info/{MODEL_NAME}", timeout=REQUEST_TIMEOUT_S).json()
    assert before["checksum"] == f"SHA256:{sha256(server.model)}"

    task = server.train(max_epochs=1, batch_size=2)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])) + server.log_tail()

    published = server.workdir / "models" / "model.pt"
    after = server.session.get(f"{server.url}/model/info/{MODEL_NAME}", timeout=REQUEST_TIMEOUT_S).json()
    assert after["checksum"] == f"SHA256:{sha256(published)}" != before["checksum"]
    card = json.loads(published.with_suffix(".json").read_text())
    assert card["base_model"] == str(server.model) and card["image_size"] == 64
    assert after["train_stats"]["total_epochs"] == 1 and after["train_stats"]["labels"] >= 1

    params = server.infer_params(CROPPED_ID)
    assert params["model"] == str(published)
    response = server.infer(CROPPED_ID)
    with Image.open(io.BytesIO(response.content)) as img:
        np.testing.assert_array_equal(
            np.asarray(img), expected_mask(published, server.studies / f"{CROPPED_ID}.png", tmp_path)
        )


def test_terminate_shuts_the_server_down_cleanly(server: Server) -> None:
    server.process.terminate()
    # uvicorn shuts down, then re-raises the signal it caught: killed by SIGTERM, after a clean shutdown.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM), server.log_tail()
    assert "Application shutdown complete" in server.log_tail()
