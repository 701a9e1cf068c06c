"""The radiograph flow in a real browser: headless Chromium on ``lungseg label --studies <Orthanc DICOMweb>``.

What a person does and sees, asserted on what the browser shows (canvas pixels, screenshots), with
a real Orthanc behind the server:

1. the review page (``/lungseg/review``) lists the PACS's chest films and shows the JPEG 2000 CR;
2. "Run model" draws the model's lung mask over it, pixel-equal to ``lungseg infer``'s mask, with
   its QC verdict;
3. an erase stroke and a paint stroke change the mask where they went; "Save label" stores a MANUAL
   DICOM SEG in Orthanc (read back with highdicom, pixel-equal to what the page showed) and a
   Secondary Capture overlay of it; reopening the page shows the saved label;
   a model's SEG (AUTOMATIC) of a film no person labelled is shown as the model's, never as a label;
4. OHIF's standard viewer (``/ohif/viewer``, the build in the monailabel wheel, reading the PACS
   through the server's ``/proxy/dicom``) renders the JPEG 2000 film and the saved overlay.

The tests run in file order on one server, one PACS and one browser (module scope). Screenshots go
to ``test-artifacts/`` (``LUNGSEG_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")

from browser import headless_chromium, require_browser, screenshot  # noqa: E402
from browser import console as browser_console  # noqa: E402
from conftest import DICOM_J2K_MONO1  # noqa: E402
from label_server import LabelServer, expected_mask, running_label_server  # noqa: E402
from orthanc import Orthanc, require_orthanc, running_orthanc  # noqa: E402
from pacs_tools import chest_instances  # noqa: E402
from PIL import Image  # noqa: E402

from lungseg_monai.outputs.dicom_seg import read_lung_seg_mask  # noqa: E402

WAIT_S = 120
FILM_SIDE = 384


@dataclass
class Session:
    orthanc: Orthanc
    server: LabelServer
    browser: Any  # selenium.webdriver.Chrome
    j2k: pydicom.Dataset  # header of the real JPEG 2000 CR
    films: list[Path]  # the other chest films in the PACS


@pytest.fixture(scope="module")
def session(segmenting_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    require_orthanc()
    require_browser()
    folder = tmp_path_factory.mktemp("browser")
    films = chest_instances(folder / "chest", 1, longest_side=FILM_SIDE)
    model = segmenting_bundle / "models" / "model.pt"
    with running_orthanc(folder / "orthanc") as orthanc:
        for path in [*films, DICOM_J2K_MONO1]:
            orthanc.upload(path)
        with running_label_server(orthanc.dicomweb, model, folder / "work", extra_args=["--overlay"]) as server:
            with headless_chromium(folder / "profile") as browser:
                j2k = pydicom.dcmread(DICOM_J2K_MONO1, stop_before_pixels=True)
                yield Session(orthanc, server, browser, j2k, films)


def _body_state(browser: Any) -> str:
    return browser.execute_script("return document.body.dataset.state")


def _wait(session: Session, what: str, condition: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll ``condition`` until it is truthy; fail with the page's status, console and server log."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            browser = session.browser
            status = browser.execute_script("return document.getElementById('status')?.textContent")
            pytest.fail(
                f"timed out after {timeout_s} s waiting for {what}; page state {_body_state(browser)!r}, "
                f"status {status!r}\nbrowser console:\n{browser_console(browser)[-3000:]}\n"
                f"server log:\n{session.server.log_tail(3000)}"
            )
        time.sleep(0.25)


def _wait_state(session: Session, *states: str) -> str:
    state = _wait(session, f"page state in {states}", lambda: _body_state(session.browser) in (*states, "error"))
    state = _body_state(session.browser)
    if state == "error" and "error" not in states:
        status = session.browser.execute_script("return document.getElementById('status').textContent")
        pytest.fail(f"the page shows an error: {status}\nserver log:\n{session.server.log_tail(3000)}")
    return state


def _page_mask(browser: Any) -> np.ndarray:
    """The mask the page shows (its ``state.mask``), as a (rows, columns) 0/1 array."""
    encoded, rows, cols = browser.execute_script(
        """
        const m = state.mask; let s = "";
        for (let i = 0; i < m.length; i += 0x8000) s += String.fromCharCode.apply(null, m.subarray(i, i + 0x8000));
        return [btoa(s), state.rows, state.cols];
        """
    )
    return np.frombuffer(base64.b64decode(encoded), np.uint8).reshape(rows, cols)


def _canvas_pixels(browser: Any, canvas_id: str) -> np.ndarray:
    """The (rows, columns, 4) RGBA pixels a canvas of the page holds."""
    data_url = browser.execute_script(f"return document.getElementById('{canvas_id}').toDataURL('image/png')")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as img:
        return np.asarray(img.convert("RGBA"))


def _element_screenshot(browser: Any, element: Any) -> np.ndarray:
    """The RGB pixels of ``element`` as shown on screen (a crop of a full screenshot)."""
    with Image.open(io.BytesIO(browser.get_screenshot_as_png())) as img:
        shot = np.asarray(img.convert("RGB"))
    ratio = shot.shape[1] / browser.execute_script("return window.innerWidth")
    rect = element.rect
    top, left = int(rect["y"] * ratio), int(rect["x"] * ratio)
    return shot[top : top + int(rect["height"] * ratio), left : left + int(rect["width"] * ratio)]


def _drag(browser: Any, element: Any, points: list[tuple[float, float]]) -> None:
    """Press the mouse at the first point (fractions of ``element``'s size from its centre), move through the rest."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = element.size["width"], element.size["height"]
    offsets = [(int(fx * width), int(fy * height)) for fx, fy in points]
    actions = ActionChains(browser, duration=20).move_to_element_with_offset(element, *offsets[0]).click_and_hold()
    for x, y in offsets[1:]:
        actions = actions.move_to_element_with_offset(element, x, y)
    actions.release().perform()


def _wait_stroke(session: Session, strokes: int) -> None:
    """Wait until the page has taken ``strokes`` brush strokes since the model's mask (each one undoable)."""
    script = "return !state.drawing && state.source === 'edited' && state.undo.length"
    _wait(session, f"{strokes} brush stroke(s)", lambda: session.browser.execute_script(script) == strokes)


def _find(orthanc: Orthanc, **query: str) -> list[dict[str, Any]]:
    found = orthanc.post("/tools/find", json.dumps({"Level": "Instance", "Query": query}))
    return [orthanc.get(f"/instances/{orthanc_id}/simplified-tags") | {"ID": orthanc_id} for orthanc_id in found]


def _open_review(session: Session) -> None:
    session.browser.get(f"{session.server.url}/lungseg/review")
    _wait_state(session, "list")


def _open_image(session: Session, sop_uid: str) -> None:
    browser = session.browser
    from selenium.webdriver.common.by import By

    items = {li.get_attribute("data-id"): li for li in browser.find_elements(By.CSS_SELECTOR, "#images li")}
    assert sop_uid in items, f"{sop_uid} not listed; the page lists {sorted(items)}"
    items[sop_uid].click()
    _wait_state(session, "film", "mask")


def test_review_page_lists_the_pacs_films_and_shows_the_jpeg2000_cr(session: Session) -> None:
    from selenium.webdriver.common.by import By

    browser = session.browser
    _open_review(session)
    listed = {li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "#images li")}
    film_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in session.films}
    assert listed == {*film_uids, str(session.j2k.SOPInstanceUID)}
    _open_image(session, str(session.j2k.SOPInstanceUID))
    film = _canvas_pixels(browser, "film")
    assert film.shape[:2] == (session.j2k.Rows, session.j2k.Columns)
    grey = film[..., 0].astype(float)
    assert grey.std() > 30, "the film canvas is (nearly) uniform: nothing was drawn"
    # MONOCHROME1 shown as a radiologist expects: the lung fields (left and right thirds, middle rows)
    # darker than the mediastinum (central strip).
    rows, cols = grey.shape
    band = grey[int(rows * 0.3) : int(rows * 0.6)]
    lungs = np.r_[band[:, int(cols * 0.2) : int(cols * 0.35)].ravel(), band[:, int(cols * 0.65) : int(cols * 0.8)].ravel()]
    assert lungs.mean() < band[:, int(cols * 0.45) : int(cols * 0.55)].mean()
    on_screen = _element_screenshot(browser, browser.find_element(By.ID, "film"))
    assert on_screen.std() > 30, "the film is not visible on screen"
    assert browser.find_element(By.ID, "ohif").get_attribute("href").endswith(
        f"/ohif/viewer?StudyInstanceUIDs={session.j2k.StudyInstanceUID}"
    )
    screenshot(browser, "review_1_film")


def test_run_model_draws_the_lungseg_infer_mask_over_the_film_with_its_qc(session: Session, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = session.browser
    browser.find_element(By.ID, "run").click()
    _wait_state(session, "running", "mask")
    _wait(session, "the model's mask", lambda: browser.execute_script("return state.source") == "model")
    mask = _page_mask(browser)
    np.testing.assert_array_equal(mask, expected_mask(session.server.model, DICOM_J2K_MONO1, tmp_path / "expected"))
    assert 0.05 < mask.mean() < 0.95
    # The mask is drawn: overlay pixels are coloured exactly where the mask is lung.
    overlay = _canvas_pixels(browser, "overlay")
    np.testing.assert_array_equal(overlay[..., 3] > 0, mask.astype(bool))
    qc = browser.find_element(By.ID, "qc").text
    assert qc.startswith("QC ") and "lung" in qc and "% of the film" in qc, qc
    screenshot(browser, "review_2_model_mask")


def test_corrected_mask_saved_is_one_manual_seg_in_orthanc_equal_to_what_the_page_showed(session: Session) -> None:
    import highdicom as hd
    from selenium.webdriver.common.by import By

    browser = session.browser
    before = _page_mask(browser)
    overlay = browser.find_element(By.ID, "overlay")
    browser.find_element(By.ID, "erase").click()
    _drag(browser, overlay, [(-0.25, -0.1), (-0.2, 0.0), (-0.15, 0.1)])
    _wait_stroke(session, 1)
    erased = _page_mask(browser)
    assert erased.sum() < before.sum()
    assert not (erased > before).any(), "erasing added lung"
    browser.find_element(By.ID, "paint").click()
    _drag(browser, overlay, [(-0.2, 0.0), (-0.18, 0.02)])  # back over part of the erased stroke
    _wait_stroke(session, 2)
    edited = _page_mask(browser)
    assert (edited > erased).any(), "painting added no lung"
    assert browser.execute_script("return state.source") == "edited"
    screenshot(browser, "review_3_corrected")

    browser.find_element(By.ID, "save").click()
    _wait_state(session, "saved")
    seg_uid = browser.execute_script("return document.body.dataset.savedSeg")
    assert seg_uid and seg_uid in browser.find_element(By.ID, "status").text
    screenshot(browser, "review_4_saved")

    (stored,) = _find(session.orthanc, Modality="SEG")
    assert stored["SOPInstanceUID"] == seg_uid
    seg = pydicom.dcmread(io.BytesIO(session.orthanc.file(stored["ID"])))
    source_uid = str(session.j2k.SOPInstanceUID)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert seg.StudyInstanceUID == session.j2k.StudyInstanceUID
    by_highdicom = hd.seg.Segmentation.from_dataset(seg, copy=False).get_pixels_by_source_instance([source_uid])
    np.testing.assert_array_equal(by_highdicom[0, :, :, 0], edited)
    np.testing.assert_array_equal(read_lung_seg_mask(seg, source_uid), edited)

    (sc,) = _find(session.orthanc, SeriesDescription="Lung label overlay (manual)")
    sc_file = pydicom.dcmread(io.BytesIO(session.orthanc.file(sc["ID"])))
    assert sc_file.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid
    assert (sc_file.Rows, sc_file.Columns) == (session.j2k.Rows, session.j2k.Columns)
    red = (sc_file.pixel_array[..., 0] > 200) & (sc_file.pixel_array[..., 1] < 80)
    assert red.sum() > 1000, "the overlay shows no lung contour"
    overlay_link = browser.find_element(By.ID, "ohif-overlay")
    assert overlay_link.is_displayed() and sc_file.SeriesInstanceUID in overlay_link.get_attribute("href")

    # Reopened, the page shows the label as the PACS holds it, and lists the same films (the overlay
    # now in the study is our own result, not a film to label).
    _open_review(session)
    listed = {li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "#images li")}
    film_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in session.films}
    assert listed == {*film_uids, source_uid}
    _open_image(session, source_uid)
    _wait(session, "the saved label", lambda: browser.execute_script("return state.source") == "saved label")
    np.testing.assert_array_equal(_page_mask(browser), edited)


def test_a_models_seg_of_a_film_no_person_labelled_is_shown_as_the_models_not_a_persons(
    session: Session, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    from lungseg_monai.outputs.dicom_seg import qc_content_description, save_lung_seg
    from lungseg_monai.outputs.dicom_uids import ResultUIDs
    from lungseg_monai.dicomweb import stow
    from lungseg_monai.qc.quality import QC_REVIEW, QCResult

    browser = session.browser
    film = session.films[0]
    header = pydicom.dcmread(film, stop_before_pixels=True)
    sop_uid = str(header.SOPInstanceUID)
    mask = np.zeros((header.Rows, header.Columns), np.uint8)
    mask[60:300, 40:160] = 1  # synthetic: told apart from anything the model draws
    # lungseg node's SEG of this film (AUTOMATIC, QC review), stored as lungseg infer --stow-to does.
    identity = "LungUNet-resnet34-0123456789ab"
    uids = ResultUIDs.for_source(header, identity)
    qc = QCResult(QC_REVIEW, 0.8, ("lung area small",))
    target = tmp_path / "seg.dcm"
    save_lung_seg(mask, film, target, uids.seg_series_uid, identity, qc_content_description(qc), uids.seg_sop_uid)
    assert stow(session.orthanc.dicomweb, [target]).ok
    time.sleep(2.5)  # older than the server's listing reuse window

    _open_review(session)
    badges = {
        li.get_attribute("data-id"): li.find_element(By.CSS_SELECTOR, ".badge")
        for li in browser.find_elements(By.CSS_SELECTOR, "#images li")
    }
    assert badges[str(session.j2k.SOPInstanceUID)].text == "labelled"  # the person's label saved above
    assert badges[sop_uid].text == "model's SEG"
    assert "not a person's label" in badges[sop_uid].get_attribute("title")
    _open_image(session, sop_uid)
    _wait(session, "the model's SEG", lambda: browser.execute_script("return state.source") == "model's SEG")
    np.testing.assert_array_equal(_page_mask(browser), mask)
    assert browser.execute_script("return document.body.dataset.labelType") == "AUTOMATIC"
    status = browser.find_element(By.ID, "status").text
    assert "showing the model's mask stored in the PACS" in status, status
    assert "AUTOMATIC SEG, not a person's label; QC review: lung area small; not used for training" in status
    assert "saved label" not in status
    screenshot(browser, "review_4b_model_seg")


def _viewport(session: Session) -> Any:
    from selenium.webdriver.common.by import By

    canvases = session.browser.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas")
    return canvases[0] if canvases else None


def _rendered(session: Session, check: Callable[[np.ndarray], bool]) -> Callable[[], bool]:
    def condition() -> bool:
        canvas = _viewport(session)
        if canvas is None or canvas.size["width"] < 100:
            return False
        return bool(check(_element_screenshot(session.browser, canvas)))

    return condition


def test_ohif_renders_the_jpeg2000_film_and_the_saved_overlay(session: Session) -> None:
    browser = session.browser
    study = session.j2k.StudyInstanceUID
    browser.get(f"{session.server.url}/ohif/viewer?StudyInstanceUIDs={study}")
    # A rendered film is a wide range of greys in the viewport (a blank or failed one is uniform).
    _wait(session, "OHIF to render the JPEG 2000 film", _rendered(session, lambda px: px.std() > 40), timeout_s=180)
    screenshot(browser, "ohif_1_jpeg2000_film")

    (sc,) = _find(session.orthanc, SeriesDescription="Lung label overlay (manual)")
    browser.get(f"{session.server.url}/ohif/viewer?StudyInstanceUIDs={study}&SeriesInstanceUIDs={sc['SeriesInstanceUID']}")

    def red_contour(px: np.ndarray) -> bool:
        red = (px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)
        return red.sum() > 200

    _wait(session, "OHIF to show the saved overlay's red lung contour", _rendered(session, red_contour), timeout_s=180)
    screenshot(browser, "ohif_2_saved_overlay")


def test_saving_while_the_pacs_is_down_says_not_saved_with_the_reason(session: Session) -> None:
    from selenium.webdriver.common.by import By

    browser = session.browser
    _open_review(session)
    _open_image(session, str(session.j2k.SOPInstanceUID))  # in the server's cache: still shown
    _wait(session, "the saved label", lambda: browser.execute_script("return state.source") == "saved label")
    session.orthanc.stop()
    browser.find_element(By.ID, "save").click()
    _wait_state(session, "error")
    status = browser.find_element(By.ID, "status").text
    assert "was NOT saved" in status and "502" in status and "cannot reach the DICOMweb server" in status, status
    screenshot(browser, "review_5_pacs_down")
