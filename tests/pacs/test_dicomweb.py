"""DICOMweb search, retrieve and store against a real Orthanc, and ``lungseg infer --dicomweb ... --stow-to``.

The PACS holds the real chest CRs (JPEG 2000 and JPEG baseline) and pydicom's CT and MR test files
as the non-chest objects a query must tell apart.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM
from orthanc import Orthanc, free_port, running_orthanc
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lungseg_monai.cli import main
from lungseg_monai.inference.cli import DICOMWEB_CACHE, EXIT_FAILED, EXIT_OK, EXIT_STOW
from lungseg_monai import dicomweb
from lungseg_monai.dicomweb import DicomwebError, InstanceRef, retrieve_instances, search_instances, stow

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _ref(path: Path) -> InstanceRef:
    ds = _header(path)
    return InstanceRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.Modality)


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """dicomweb-client's retries after a refused connection would wait 1 s + 2 s per request."""
    monkeypatch.setattr(dicomweb, "RETRY_WAIT_MS", 1)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Orthanc:
    """One Orthanc holding the two real chest CRs, CT_small and MR_small (each its own study)."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        for path in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM, CT_SMALL, MR_SMALL):
            server.upload(path)
        yield server


def test_search_by_study_series_modality_and_date(pacs: Orthanc) -> None:
    j2k, siim, ct, mr = map(_ref, (DICOM_J2K_MONO1, DICOM_JPEG_SIIM, CT_SMALL, MR_SMALL))
    assert search_instances(pacs.dicomweb, study=j2k.study_uid) == [j2k]
    assert search_instances(pacs.dicomweb, series=siim.series_uid) == [siim]  # a series without its study
    assert search_instances(pacs.dicomweb, study=siim.study_uid, series=siim.series_uid) == [siim]
    assert set(search_instances(pacs.dicomweb, filters={"Modality": "CR"})) == {j2k, siim}  # not CT_small
    assert search_instances(pacs.dicomweb, filters={"Modality": "CT"}) == [ct]
    assert set(search_instances(pacs.dicomweb, filters={"StudyDate": "20040801-20040831"})) == {j2k, mr}
    assert search_instances(pacs.dicomweb, filters={"Modality": "CR", "StudyDate": "20040801-20040831"}) == [j2k]
    assert search_instances(pacs.dicomweb, filters={"StudyDate": "-19991231"}) == [siim]
    assert search_instances(pacs.dicomweb, study="1.2.3.4") == []


def test_search_pages_until_the_result_is_complete(pacs: Orthanc, monkeypatch: pytest.MonkeyPatch) -> None:
    """One result per page: every instance comes back once, through the caller's session (hooks kept)."""
    monkeypatch.setattr(dicomweb, "QIDO_PAGE_SIZE", 1)
    urls: list[str] = []
    session = requests.Session()
    session.hooks["response"].append(lambda response, *args, **kwargs: urls.append(response.url))
    refs = search_instances(pacs.dicomweb, session=session)
    everything = (DICOM_J2K_MONO1, DICOM_JPEG_SIIM, CT_SMALL, MR_SMALL)
    assert sorted(r.sop_uid for r in refs) == sorted(_ref(p).sop_uid for p in everything)
    assert [u.split("offset=")[1].split("&")[0] for u in urls] == ["0", "1", "2", "3", "4"]
    assert all("limit=1" in u for u in urls)
    assert session.headers == requests.Session().headers  # the caller's session is not changed


def test_search_refuses_malformed_uids_and_filters(pacs: Orthanc) -> None:
    with pytest.raises(ValueError, match=r"study UID 'abc' is not a DICOM UID"):
        search_instances(pacs.dicomweb, study="abc")
    with pytest.raises(ValueError, match=r"QIDO-RS filter 'Modalty' is not a DICOM keyword or tag"):
        search_instances(pacs.dicomweb, filters={"Modalty": "CR"})
    with pytest.raises(ValueError, match=r"DICOMweb URL 'pacs:8042' is not http\(s\)://"):
        search_instances("pacs:8042")


def test_retrieve_keeps_the_stored_transfer_syntax_and_pixels(pacs: Orthanc, tmp_path: Path) -> None:
    sources = (DICOM_J2K_MONO1, DICOM_JPEG_SIIM)
    refs = [_ref(p) for p in sources]
    files = retrieve_instances(pacs.dicomweb, refs, tmp_path)
    assert files == [tmp_path / r.study_uid / r.series_uid / f"{r.sop_uid}.dcm" for r in refs]
    assert (files.failed, files.cached) == ({}, 0)
    for source, path in zip(sources, files):
        original, copy = pydicom.dcmread(source), pydicom.dcmread(path)
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert copy.PixelData == original.PixelData  # the same compressed stream: no re-encoding
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"  # JPEG 2000
    np.testing.assert_array_equal(pydicom.dcmread(files[1]).pixel_array, pydicom.dcmread(DICOM_JPEG_SIIM).pixel_array)
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_retrieve_reuses_its_cache_and_reports_a_missing_instance(pacs: Orthanc, tmp_path: Path) -> None:
    j2k, siim = _ref(DICOM_J2K_MONO1), _ref(DICOM_JPEG_SIIM)
    first = retrieve_instances(pacs.dicomweb, [j2k, siim], tmp_path)
    mtimes = [p.stat().st_mtime_ns for p in first]
    first[1].write_bytes(b"not DICOM")  # damaged in the cache: fetched again
    missing = InstanceRef(j2k.study_uid, j2k.series_uid, "1.2.3.4.5", "CR")
    again = retrieve_instances(pacs.dicomweb, [j2k, missing, siim], tmp_path)
    assert again == first and again.cached == 1
    assert again[0].stat().st_mtime_ns == mtimes[0]
    assert again[1].read_bytes() == DICOM_JPEG_SIIM.read_bytes()
    assert list(again.failed) == [missing]
    assert "answered HTTP 404 Not Found to a WADO-RS retrieve" in again.failed[missing]
    assert pacs.dicomweb in again.failed[missing]


def test_unreachable_server_raises_dicomweb_error_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    message = rf"cannot reach the DICOMweb server at '{url}' to .*Connection refused; 3 attempts\); check the URL"
    with pytest.raises(DicomwebError, match=message) as error:
        search_instances(url, study="1.2.3")
    assert (error.value.url, error.value.status) == (url, None)
    any_dicom = Path(get_testdata_file("CT_small.dcm"))  # shipped with pydicom: runs in a user's clone too
    with pytest.raises(DicomwebError, match=message):
        retrieve_instances(url, [_ref(any_dicom)], tmp_path)
    with pytest.raises(DicomwebError, match=message):
        stow(url, [any_dicom])


def test_stow_stores_a_highdicom_sr_and_reports_an_unreadable_file(pacs: Orthanc, tmp_path: Path) -> None:
    root = hd.sr.ContainerContentItem(name=codes.DCM.Finding, template_id=None)
    root.ContentSequence = [
        hd.sr.TextContentItem(
            name=codes.DCM.Finding, value="lungs segmented", relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    ]
    sr = hd.sr.EnhancedSR(
        evidence=[_header(DICOM_J2K_MONO1)], content=root, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="lungseg tests",
    )  # fmt: skip
    sr.save_as(tmp_path / "sr.dcm")
    (tmp_path / "broken.dcm").write_bytes(b"not DICOM")
    result = stow(pacs.dicomweb, [tmp_path / "sr.dcm", tmp_path / "broken.dcm"])
    assert result.stored == [sr.SOPInstanceUID]
    assert list(result.failed) == [tmp_path / "broken.dcm"]
    assert "not a readable DICOM file" in result.failed[tmp_path / "broken.dcm"]
    assert [i["SOPInstanceUID"] for i in pacs.instances_by_modality("SR")] == [sr.SOPInstanceUID]
    assert stow(pacs.dicomweb, [tmp_path / "sr.dcm"]).stored == [sr.SOPInstanceUID]  # again: no error, no copy
    assert len(pacs.instances_by_modality("SR")) == 1


def _copy_into(source: Path, target: Path, study_uid: str) -> Path:
    """``source`` moved into study ``study_uid`` with new series and SOP UIDs (pixels untouched)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target)
    return target


@pytest.fixture()
def chest_study(tmp_path: Path) -> tuple[Orthanc, str, list[Path]]:
    """A fresh Orthanc whose one study holds the SIIM CR, a copy of the JPEG 2000 CR and a CT.

    Returns (server, StudyInstanceUID, the chest files).
    """
    study = _header(DICOM_JPEG_SIIM).StudyInstanceUID
    chest = [DICOM_JPEG_SIIM, _copy_into(DICOM_J2K_MONO1, tmp_path / "j2k.dcm", study)]
    with running_orthanc(tmp_path / "orthanc") as server:
        for path in (*chest, _copy_into(CT_SMALL, tmp_path / "ct.dcm", study)):
            server.upload(path)
        yield server, study, chest


def _logged(args: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lungseg_monai"):
        code = main(args)
    return code, caplog.text


def test_infer_from_dicomweb_stores_one_seg_per_chest_instance(
    segmenting_bundle: Path,
    chest_study: tuple[Orthanc, str, list[Path]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, study, chest = chest_study
    out = tmp_path / "out"
    args = [
        "infer", "--dicomweb", server.dicomweb, "--study", study, "--stow-to", server.dicomweb,
        "--formats", "mask,dicomseg", "-o", str(out), "--model", str(segmenting_bundle / "models" / "model.pt"),
        "--no-progress", "--batch-size", "1",
        "--write-rejected-seg",  # the 2-epoch model's masks are rejected by quality control
    ]  # fmt: skip
    start = time.monotonic()
    code, log = _logged(args, caplog)
    assert code == EXIT_OK, log
    assert "3 instance(s) match, 0 of them without an image" in log and "3 instance(s) retrieved, 0 already" in log
    assert "2 segmented, 0 rejected, 0 already done, 1 skipped" in log  # the CT: header check
    assert "--stow-to: 2 DICOM result(s) stored" in log
    sources = {_header(p).SOPInstanceUID: p for p in chest}
    for sop, source in sources.items():  # the retrieved copies are the inputs
        cached = out / DICOMWEB_CACHE / study / _header(source).SeriesInstanceUID / f"{sop}.dcm"
        assert pydicom.dcmread(cached).PixelData == pydicom.dcmread(source).PixelData

    def segs_in_pacs() -> dict[str, pydicom.Dataset]:
        found = {}
        for item in server.instances_by_modality("SEG"):
            seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(server.file(item["ID"])))
            referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            assert referenced not in found, f"two SEGs reference {referenced}"
            found[referenced] = seg
        return found

    stored = segs_in_pacs()
    assert sorted(stored) == sorted(sources)
    for sop, seg in stored.items():
        local = pydicom.dcmread(out / "dicomseg" / f"{sop}.dcm")
        assert seg.SOPInstanceUID == local.SOPInstanceUID and seg.StudyInstanceUID == study
        np.testing.assert_array_equal(seg.pixel_array, local.pixel_array)
        assert seg.pixel_array.any()
    first_run = time.monotonic() - start

    code, log = _logged(args, caplog)  # the same command again: kept outputs, re-sent, no duplicate
    assert code == EXIT_OK, log
    assert "0 segmented, 0 rejected, 2 already done, 1 skipped" in log and "--stow-to: 2 DICOM result(s) stored" in log
    # The study now holds our 2 SEGs too: not retrieved; the images come from the cache.
    assert "5 instance(s) match, 2 of them without an image" in log and "0 instance(s) retrieved, 3 already" in log
    assert sorted(segs_in_pacs()) == sorted(sources)
    assert len(server.instances_by_modality("SEG")) == 2
    assert first_run < 60


def test_stow_failure_exits_with_its_own_code(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    args = [
        "infer", str(DICOM_JPEG_SIIM), "--stow-to", url, "--formats", "dicomseg", "-o", str(tmp_path / "out"),
        "--model", str(segmenting_bundle / "models" / "model.pt"), "--no-progress", "--write-rejected-seg",
    ]  # fmt: skip
    code, log = _logged(args, caplog)
    assert code == EXIT_STOW
    assert f"--stow-to: none of 1 DICOM result(s) stored: cannot reach the DICOMweb server at '{url}'" in log
    assert (tmp_path / "out" / "dicomseg" / f"{_header(DICOM_JPEG_SIIM).SOPInstanceUID}.dcm").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dicomweb", "http://127.0.0.1:9/dicom-web"], "would pull the whole PACS; say which instances to segment"),
        (["--study", "1.2.3"], "--study select(s) instances on a PACS: give the server with --dicomweb URL"),
        (["--dicomweb", "pacs:8042", "--study", "1.2.3"], "--dicomweb: DICOMweb URL 'pacs:8042' is not http(s)://"),
        (["x.dcm", "--stow-to", "http://127.0.0.1:9/d"], "--stow-to stores DICOM SEGs: add dicomseg to --formats"),
        (["--dicomweb", "http://127.0.0.1:9/d", "--date", "20240132"], "20240132 is not a calendar date (YYYYMMDD)"),
        (["--dicomweb", "http://127.0.0.1:9/d", "--date", "20240201-20240101"], "ends before it starts"),
        (["--dicomweb", "http://127.0.0.1:9/d", "--modality", "CR;DX"], "is not a list of DICOM modalities"),
        (["--dicomweb", "http://127.0.0.1:9/d", "--query", "Modality=CR", "--modality", "DX"], "given by both"),
        ([], "nothing to segment: give INPUT files or folders, --from-list LIST, or --dicomweb URL with --study UID"),
    ],
    ids=[
        "no-query", "no-server", "bad-url", "stow-without-seg", "bad-date", "reversed-dates", "bad-modality",
        "twice", "no-input",
    ],  # fmt: skip
)
def test_infer_refuses_pacs_options_that_make_no_run(
    extra: list[str], message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["infer", *extra, "-o", str(tmp_path / "out"), "--model", str(tmp_path / "absent.pt"), "--formats", "mask"]
    code, log = _logged(args, caplog)
    assert code == EXIT_FAILED
    assert message in log
    assert not (tmp_path / "out").exists()


def test_infer_from_an_unreachable_server_fails_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    args = ["infer", "--dicomweb", url, "--modality", "CR,DX", "-o", str(tmp_path), "--model", str(tmp_path / "m.pt")]
    code, log = _logged(args, caplog)
    assert code == EXIT_FAILED
    assert f"--dicomweb: cannot reach the DICOMweb server at '{url}'" in log
