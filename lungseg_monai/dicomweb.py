"""DICOMweb with dicomweb-client: find instances (QIDO-RS), fetch them (WADO-RS), store results (STOW-RS).

Every request has a timeout (:data:`CONNECT_TIMEOUT_S`, :data:`READ_TIMEOUT_S`); a server that
cannot be reached, does not answer or answers with an HTTP error raises :class:`DicomwebError`,
which names the URL, the HTTP status and what to do. Instances are fetched in the transfer syntax
the server stores them in (a JPEG 2000 radiograph stays JPEG 2000: no lossy re-encoding, no
decompressed copy) and written atomically to ``FOLDER/STUDY/SERIES/SOP.dcm``; one already there
is kept. Logs name SOP Instance UIDs and URLs, never patient data.

``url`` is always the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` for Orthanc
(QIDO-RS, WADO-RS and STOW-RS below it, as the standard lays them out).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from retrying import RetryError  # dicomweb-client's retry library
from pydicom.datadict import tag_for_keyword

from lungseg_monai.utils.atomic import atomic_path

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "DicomwebError",
    "InstanceRef",
    "RetrievedFiles",
    "StowResult",
    "check_url",
    "retrieve_instances",
    "retrieve_metadata",
    "search_instances",
    "stow",
]

logger = logging.getLogger(__name__)

# Seconds to open a connection, and to wait for each part of an answer (a big STOW or WADO may take long).
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
# dicomweb-client tries each request again after any error (connection refused, timeout) and after
# HTTP 408, 429, 503 and 504, waiting 2**n * RETRY_WAIT_MS between attempts (1 s, 2 s).
MAX_ATTEMPTS = 3
RETRY_WAIT_MS = 500
# QIDO-RS results asked for per request; paging goes on until a page comes back empty.
QIDO_PAGE_SIZE = 500
# STOW-RS requests hold at most this many files / bytes.
STOW_BATCH_FILES = 50
STOW_BATCH_BYTES = 64 * 2**20
# Every instance is fetched in its stored transfer syntax.
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_MAX_CHARS = 64
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# The operating system's words in a connection error ("[Errno 111] Connection refused").
_OS_ERROR = re.compile(r"\[Errno -?\d+\] [^'\")]+")
# DICOM JSON tags of what an InstanceRef needs.
_STUDY, _SERIES, _SOP, _MODALITY = "0020000D", "0020000E", "00080018", "00080060"
# STOW-RS Failure Reason (0008,1197) values (PS3.18 Table I.2-1 and PS3.4 C-STORE statuses).
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA770: "out of resources",
    0xA900: "data set does not match its SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}


class DicomwebError(RuntimeError):
    """A DICOMweb server could not be reached or refused a request.

    Attributes:
        url: the server's DICOMweb root (or the request's URL).
        status: the HTTP status code (None when no answer came).
        reason: the HTTP reason phrase or the connection error.
    """

    def __init__(self, message: str, url: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.url, self.status, self.reason = url, status, reason


@dataclass(frozen=True)
class InstanceRef:
    """One instance on a DICOMweb server (what QIDO-RS says about it)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""


class RetrievedFiles(list[Path]):
    """The files :func:`retrieve_instances` wrote or kept, in the order asked for, plus what failed.

    Attributes:
        failed: instances that could not be retrieved, with the reason.
        cached: how many were already in the folder (not fetched again).
    """

    def __init__(self, paths: Iterable[Path] = ()) -> None:
        super().__init__(paths)
        self.failed: dict[InstanceRef, str] = {}
        self.cached = 0


@dataclass
class StowResult:
    """What :func:`stow` stored.

    Attributes:
        stored: SOP Instance UIDs the server accepted (an instance it already held counts as stored).
        failed: files not stored, with the reason (unreadable here, or refused by the server).
    """

    stored: list[str] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every file was stored."""
        return not self.failed


class _TimeoutSession(requests.Session):
    """A session whose requests get :data:`CONNECT_TIMEOUT_S` / :data:`READ_TIMEOUT_S` unless given one."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        return super().request(method, url, *args, **kwargs)


def _session(session: requests.Session | None) -> requests.Session:
    """A timeout session carrying ``session``'s settings (auth, headers, certificates, adapters).

    dicomweb-client changes the headers of the session it gets; the caller's own stays untouched.
    """
    timed = _TimeoutSession()
    if session is not None:
        for attr in requests.Session.__attrs__:
            setattr(timed, attr, copy.copy(getattr(session, attr)))
    return timed


def check_url(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless it is http(s)://HOST[:PORT][/PATH]."""
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(
            f"DICOMweb URL {url!r} is not http(s)://HOST[:PORT]/PATH; give the server's DICOMweb root, "
            "e.g. http://pacs:8042/dicom-web"
        )
    return url.rstrip("/")


def _client(url: str, session: requests.Session | None) -> DICOMwebClient:
    client = DICOMwebClient(check_url(url), session=_session(session))
    client.set_http_retry_params(max_attempts=MAX_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
    return client


def _check_uid(uid: str, what: str) -> str:
    uid = str(uid).strip()
    if not _UID.match(uid) or len(uid) > _UID_MAX_CHARS:
        raise ValueError(
            f"{what} {uid!r} is not a DICOM UID (digits and dots, at most {_UID_MAX_CHARS} characters); "
            "copy it from the study's header or the PACS"
        )
    return uid


def _check_filters(filters: Mapping[str, str]) -> dict[str, str]:
    checked = {}
    for key, value in filters.items():
        if tag_for_keyword(key) is None and not _TAG.match(key):
            raise ValueError(
                f"QIDO-RS filter {key!r} is not a DICOM keyword or tag; use e.g. Modality, StudyDate, "
                "AccessionNumber or 00080060"
            )
        checked[key] = str(value)
    return checked


def _error(
    url: str,
    action: str,
    error: requests.RequestException,
    not_found: str = "check the URL: it must be the DICOMweb root (e.g. http://pacs:8042/dicom-web)",
) -> DicomwebError:
    """A :class:`DicomwebError` saying what failed, on which server, and what to do (``not_found``: after a 404)."""
    if isinstance(error, requests.Timeout):
        return DicomwebError(
            f"the DICOMweb server at '{url}' did not answer {action} within {READ_TIMEOUT_S:.0f} s "
            f"(connection {CONNECT_TIMEOUT_S:.0f} s; {MAX_ATTEMPTS} attempts); check that it is running and not "
            "overloaded",
            url,
            reason=type(error).__name__,
        )
    response = getattr(error, "response", None)
    if response is None:
        cause = _OS_ERROR.search(str(error))
        reason = cause.group(0) if cause else type(error).__name__
        return DicomwebError(
            f"cannot reach the DICOMweb server at '{url}' to {action} ({reason}; {MAX_ATTEMPTS} attempts); "
            "check the URL and that the server is running",
            url,
            reason=reason,
        )
    status, reason = response.status_code, response.reason or ""
    if status in (401, 403):
        hint = "check the credentials and this account's rights on the server"
    elif status == 404:
        hint = not_found
    else:
        hint = "see the server's log for why"
    return DicomwebError(
        f"the DICOMweb server at '{url}' answered HTTP {status} {reason} to {action}; {hint}", url, status, reason
    )


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0]).strip()


def search_instances(
    url: str,
    study: str | None = None,
    series: str | None = None,
    filters: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
) -> list[InstanceRef]:
    """Find instances with QIDO-RS, all of them (paged with ``offset``/``limit``).

    Args:
        url: the DICOMweb root.
        study: StudyInstanceUID to search in.
        series: SeriesInstanceUID to search in (with or without ``study``).
        filters: other QIDO-RS matching keys by DICOM keyword or tag, e.g.
            ``{"Modality": "CR", "StudyDate": "20240101-20240131"}``. With neither ``study``,
            ``series`` nor ``filters`` every instance on the server is listed.
        session: a :class:`requests.Session` carrying authentication, proxies or certificates
            (copied; every request still gets a timeout).

    Returns:
        One :class:`InstanceRef` per instance, in the server's order, each once.

    Raises:
        ValueError: a malformed URL, UID or filter key.
        DicomwebError: the server cannot be reached or refuses the search.

    Example:
        >>> refs = search_instances("http://pacs:8042/dicom-web", filters={"Modality": "CR"})  # doctest: +SKIP
        >>> refs[0].modality, len(refs)
        ('CR', 12)
    """
    client = _client(url, session)
    study = _check_uid(study, "study UID") if study is not None else None
    query = _check_filters(filters or {})
    if series is not None:
        series = _check_uid(series, "series UID")
        if study is None:  # dicomweb-client needs the study for a series URL: match the series instead
            query["SeriesInstanceUID"] = series
    fields = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"]
    found: dict[str, InstanceRef] = {}
    offset = 0
    # Paged here rather than with dicomweb-client's get_remaining=True: that loop (0.59) stops only on an
    # empty page, so a server that ignores ``offset`` and answers every page alike would never end.
    while True:
        try:
            page = client.search_for_instances(
                study_instance_uid=study,
                series_instance_uid=series if study is not None else None,
                limit=QIDO_PAGE_SIZE,
                offset=offset,
                fields=fields,
                search_filters=query or None,
            )
        except requests.RequestException as e:
            raise _error(client.base_url, "a QIDO-RS search for instances", e) from e
        refs = [
            InstanceRef(_value(item, _STUDY), _value(item, _SERIES), _value(item, _SOP), _value(item, _MODALITY))
            for item in page
        ]
        new = [r for r in refs if r.sop_uid and r.sop_uid not in found]
        if not new:  # the end, or a server that ignores offset and sends the same page again
            break
        found.update((r.sop_uid, r) for r in new)
        offset += len(page)
    incomplete = [r for r in found.values() if not (r.study_uid and r.series_uid)]
    if incomplete:
        logger.warning(
            "%d instance(s) without study or series UID in the QIDO-RS answer of '%s' cannot be retrieved; "
            "left out (first: %s)",
            len(incomplete),
            client.base_url,
            incomplete[0].sop_uid,
        )
    logger.debug("QIDO-RS on '%s': %d instance(s)", client.base_url, len(found))
    return [r for r in found.values() if r.study_uid and r.series_uid]


def _no_bulk_data(tag: str, vr: str, uri: str) -> bytes:
    """Bulk data (pixel data, large binary values) stays on the server: present, but empty here."""
    return b""


def retrieve_metadata(
    url: str, study: str, series: str, sop: str | None = None, session: requests.Session | None = None
) -> list[pydicom.Dataset]:
    """The headers of a series' instances, or of one instance (WADO-RS metadata), without any pixel data.

    Bulk data (Pixel Data ...) is left on the server: a value the server gives as a BulkDataURI
    becomes an empty value. Some servers (Orthanc 1.10) leave Pixel Data out of the metadata
    altogether; a header with Rows and Columns is an image, so it gets an empty Pixel Data too, and
    ``"PixelData" in ds`` tells images from objects without pixels either way.

    Args:
        url: the DICOMweb root.
        study: StudyInstanceUID.
        series: SeriesInstanceUID.
        sop: SOPInstanceUID: that instance only (None: the whole series).
        session: see :func:`search_instances`.

    Returns:
        One header per instance, in the server's order.

    Raises:
        ValueError: a malformed UID.
        DicomwebError: the server cannot be reached or refuses the request (404: no such series or
            instance; Orthanc answers 404 for a series UID that two patients' studies share).

    Example:
        >>> headers = retrieve_metadata("http://pacs:8042/dicom-web", "1.2.3", "1.2.3.1")  # doctest: +SKIP
        >>> headers[0].Modality, "PixelData" in headers[0]
        ('CR', True)
    """
    client = _client(url, session)
    study, series = _check_uid(study, "study UID"), _check_uid(series, "series UID")
    what = f"series {series}" if sop is None else f"instance {_check_uid(sop, 'SOP Instance UID')}"
    try:
        if sop is None:
            items = client.retrieve_series_metadata(study, series)
        else:
            items = client.retrieve_instance_metadata(study, series, sop)
            items = items if isinstance(items, list) else [items]
    except requests.RequestException as e:
        not_found = f"the {what.split()[0]} is not (or no longer) on the server; search again"
        raise _error(client.base_url, f"a WADO-RS metadata request for {what}", e, not_found) from e
    headers = []
    for item in items:
        ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=_no_bulk_data)
        if "PixelData" not in ds and "Rows" in ds and "Columns" in ds:
            ds.PixelData = b""
        headers.append(ds)
    return headers


def _cached(path: Path, ref: InstanceRef) -> bool:
    """True when ``path`` is a complete copy of ``ref`` (written atomically, so complete when readable)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files: fetch it again
        return False
    return str(header.get("SOPInstanceUID", "")) == ref.sop_uid


def _fetch(client: DICOMwebClient, ref: InstanceRef) -> pydicom.Dataset:
    """One instance as stored; ValueError saying why when the server refuses it or sends something else.

    Raises:
        requests.RequestException: the server cannot be reached.
    """
    try:
        ds = client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid, media_types=ANY_TRANSFER_SYNTAX)
    except requests.HTTPError as e:
        not_found = "the instance is not (or no longer) on the server; search again"
        raise ValueError(str(_error(client.base_url, "a WADO-RS retrieve", e, not_found))) from e
    except requests.RequestException:
        raise
    except Exception as e:  # noqa: BLE001 - an answer pydicom cannot parse
        raise ValueError(f"the server's answer is not a DICOM instance ({type(e).__name__}: {e})") from e
    sent = str(ds.get("SOPInstanceUID", ""))
    if sent != ref.sop_uid:
        raise ValueError(f"the server sent instance {sent or 'without a UID'} instead")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise ValueError("the server sent the instance without its file meta information (transfer syntax)")
    return ds


def retrieve_instances(
    url: str,
    refs: Sequence[InstanceRef],
    folder: str | Path,
    session: requests.Session | None = None,
) -> RetrievedFiles:
    """Fetch instances with WADO-RS, in their stored transfer syntax, to ``folder/STUDY/SERIES/SOP.dcm``.

    An instance already there (a readable DICOM file with its SOP Instance UID) is kept, not fetched
    again: files are written atomically, so a file under its final name is complete. One that
    fails is listed in ``failed`` and the others go on.

    Args:
        url: the DICOMweb root.
        refs: what to fetch (from :func:`search_instances`).
        folder: the cache folder.
        session: see :func:`search_instances`.

    Returns:
        The files, in the order of ``refs`` (a :class:`RetrievedFiles`: a list of paths with
        ``failed`` and ``cached``).

    Raises:
        DicomwebError: the server cannot be reached (a refusal of single instances is in ``failed``).

    Example:
        >>> files = retrieve_instances("http://pacs:8042/dicom-web", refs, "cache")  # doctest: +SKIP
        >>> files[0], files.failed, files.cached
        (PosixPath('cache/1.2.3/1.2.3.1/1.2.3.1.1.dcm'), {}, 0)
    """
    client = _client(url, session)
    folder = Path(folder)
    out = RetrievedFiles()
    for ref in refs:
        try:
            path = folder / _check_uid(ref.study_uid, "study UID") / _check_uid(ref.series_uid, "series UID")
            path = path / f"{_check_uid(ref.sop_uid, 'SOP Instance UID')}.dcm"
            if _cached(path, ref):
                out.append(path)
                out.cached += 1
                continue
            ds = _fetch(client, ref)
        except ValueError as e:
            out.failed[ref] = str(e)
            logger.error("instance %s from '%s': %s", ref.sop_uid, client.base_url, e)
            continue
        except requests.RequestException as e:  # unreachable: the others would fail the same way
            raise _error(client.base_url, f"retrieve instance {ref.sop_uid}", e) from e
        with atomic_path(path) as tmp:
            ds.save_as(tmp, write_like_original=True)
        out.append(path)
    logger.info(
        "WADO-RS from '%s': %d instance(s) retrieved, %d already in '%s', %d failed",
        client.base_url,
        len(out) - out.cached,
        out.cached,
        folder,
        len(out.failed),
    )
    return out


def _batches(files: Mapping[str, Path]) -> Iterable[dict[str, Path]]:
    """Split {SOP UID: file} into STOW-RS requests of at most :data:`STOW_BATCH_FILES` files and
    :data:`STOW_BATCH_BYTES` (a larger file goes alone)."""
    batch: dict[str, Path] = {}
    size = 0
    for sop, path in files.items():
        nbytes = path.stat().st_size
        if batch and (len(batch) == STOW_BATCH_FILES or size + nbytes > STOW_BATCH_BYTES):
            yield batch
            batch, size = {}, 0
        batch[sop] = path
        size += nbytes
    if batch:
        yield batch


def _failure_reason(item: pydicom.Dataset) -> str:
    code = item.get("FailureReason")
    if code is None:
        return "refused by the server (no reason given)"
    return f"refused by the server: {_FAILURE_REASONS.get(int(code), 'failure')} (0x{int(code):04X})"


def _refused_answer(error: requests.HTTPError) -> pydicom.Dataset | None:
    """The STOW-RS answer (FailedSOPSequence) in an HTTP error's body, when it has one."""
    try:
        return pydicom.Dataset.from_json(json.dumps(error.response.json()))
    except Exception:  # noqa: BLE001 - not DICOM JSON (HTML error page ...): the status says it
        return None


def stow(url: str, paths: Sequence[str | Path], session: requests.Session | None = None) -> StowResult:
    """Store DICOM files with STOW-RS (in requests of up to :data:`STOW_BATCH_FILES` files).

    An instance the server already holds (same SOP Instance UID) counts as stored. Files that cannot
    be read here, or that the server refuses, are in ``failed`` with the reason.

    Args:
        url: the DICOMweb root.
        paths: DICOM files (e.g. the SEGs and SRs highdicom wrote).
        session: see :func:`search_instances`.

    Returns:
        A :class:`StowResult`.

    Raises:
        DicomwebError: the server cannot be reached, or refuses every file sent.

    Example:
        >>> result = stow("http://pacs:8042/dicom-web", ["out/dicomseg/1.2.3.dcm"])  # doctest: +SKIP
        >>> result.stored, result.ok
        (['1.2.826.0.1.3680043.8.498.1'], True)
    """
    client = _client(url, session)
    result = StowResult()
    readable: dict[str, Path] = {}  # by SOP Instance UID: each instance sent once
    for raw in paths:
        path = Path(raw)
        try:
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
            result.failed[path] = f"not a readable DICOM file ({type(e).__name__}: {e})"
            continue
        readable.setdefault(sop, path)
    refusals: list[str] = []
    for by_uid in _batches(readable):  # read one request's files at a time
        try:
            answer = client.store_instances([pydicom.dcmread(path) for path in by_uid.values()])
        except requests.HTTPError as e:
            answer = _refused_answer(e)
            if answer is None or "FailedSOPSequence" not in answer:
                reason = str(_error(client.base_url, "a STOW-RS store", e))
                result.failed.update(dict.fromkeys(by_uid.values(), reason))
                refusals.append(reason)
                continue
        except requests.RequestException as e:
            raise _error(client.base_url, "store instances (STOW-RS)", e) from e
        except RetryError as e:  # dicomweb-client retried HTTP 408/429/503/504 and gave up: not reachable now
            raise DicomwebError(
                f"the DICOMweb server at '{client.base_url}' did not take a STOW-RS store after retries ({e})",
                client.base_url,
            ) from e
        stored = [str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])]
        failed = {str(item.get("ReferencedSOPInstanceUID", "")): item for item in answer.get("FailedSOPSequence", [])}
        if not stored and not failed:  # an empty 200 answer: taken as all stored
            stored = list(by_uid)
        for sop, path in by_uid.items():
            if sop in failed:
                result.failed[path] = _failure_reason(failed[sop])
                refusals.append(result.failed[path])
                logger.error("STOW-RS to '%s': instance %s %s", client.base_url, sop, result.failed[path])
            elif sop in stored:
                result.stored.append(sop)
            else:
                result.failed[path] = "the server's STOW-RS answer does not list it as stored"
                refusals.append(result.failed[path])
    if refusals and not result.stored:
        raise DicomwebError(
            f"the DICOMweb server at '{client.base_url}' stored none of {len(readable)} file(s): {refusals[0]}",
            client.base_url,
            reason=refusals[0],
        )
    logger.info("STOW-RS to '%s': %d stored, %d failed", client.base_url, len(result.stored), len(result.failed))
    return result
