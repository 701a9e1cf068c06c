"""Deliver the node's results: C-STORE to DICOM peers and STOW-RS to DICOMweb servers, with retries.

Every answer is one of two kinds:

* **Unreachable** (retried without limit, the whole destination backing off exponentially from
  :attr:`NodeConfig.retry_first_s` to :attr:`NodeConfig.retry_max_s`; its results wait in the
  outbox and the node keeps receiving): no connection, an association rejected *transiently*
  (A-ASSOCIATE-RJ "rejected-transient": busy, congested) or aborted, an association lost in the
  middle, a STOW-RS connection error or timeout, HTTP 5xx, 401, 403, 404, 408 or 429.
* **Refused** (counted per result, :attr:`NodeConfig.max_refusals` times, then set aside in
  ``undeliverable/DEST/`` with the answer): an association rejected *permanently*
  (A-ASSOCIATE-RJ "rejected-permanent", e.g. the peer does not know our AE title), a result whose
  SOP class the peer accepted no presentation context for (a PACS without SEG storage: the other
  results of the same association are still sent), a C-STORE error status, a STOW-RS answer that
  refuses files (a Failed SOP Sequence, or another HTTP 4xx: the request was understood and
  refused), a result file that cannot be read here. A refused entry waits for its own next try
  (per-entry back-off, kept in the outbox entry); the destination does not back off, and the
  other results for it keep flowing.

Results a destination stored are never sent to it again, except after a crash between its
confirmation and the outbox update (then the PACS gets the same SOP Instance UIDs again and keeps
one copy).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID

from lungseg_monai.pacs.config import Destination, NodeConfig
from lungseg_monai.pacs.spool import OutboxEntry, Spool

__all__ = ["DeliveryError", "Sender", "send_dicom", "send_stow", "stow_answer_is_refusal"]

logger = logging.getLogger(__name__)

# Results sent in one association or one STOW-RS request.
ENTRIES_PER_DELIVERY = 16
# C-STORE statuses that mean stored (0x0000 success; B000, B006, B007 warnings: stored with coercion).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
_RESULT_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit / implicit VR little endian
_NETWORK_TIMEOUT_S = 30
# A-ASSOCIATE-AC/RJ Result (PS3.8 9.3.4): accepted, rejected-permanent, rejected-transient.
ASSOCIATION_ACCEPTED, REJECTED_PERMANENT, REJECTED_TRANSIENT = 0, 1, 2
# HTTP 4xx answers that do not refuse the files: credentials, a wrong URL, a timeout, a rate limit.
# Any other 4xx means the server understood the request and refused it.
HTTP_NOT_A_REFUSAL = frozenset({401, 403, 404, 408, 429})
# How lungseg_monai.dicomweb.stow words a server's answer: "answered HTTP 409 Conflict to ...".
_HTTP_ANSWER = re.compile(r"answered HTTP (\d{3})\b")
_STOW_REFUSALS = ("refused by the server", "not a readable DICOM file", "the server's STOW-RS answer does not list")
# The wait of the sending thread when nothing is due (it also wakes when new results are queued).
_MAX_IDLE_WAIT_S = 1.0
_MIN_IDLE_WAIT_S = 0.05


class DeliveryError(Exception):
    """A delivery failed. ``unreachable``: the destination could not be reached (retry later, no limit);
    otherwise it refused the files in ``refused`` (file -> its answer) and stored the others."""

    def __init__(self, message: str, unreachable: bool, refused: dict[Path, str] | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.refused = refused or {}


def _sop_class_text(uid: str) -> str:
    """``Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4`` (the UID alone when pydicom does not know it)."""
    name = UID(uid).name
    return f"{name} {uid}" if name and name != uid else str(uid)


def _no_context(sop_class: str) -> str:
    return f"peer accepted no presentation context for {_sop_class_text(sop_class)}"


def send_dicom(destination: Destination, paths: Sequence[Path], calling_aet: str) -> None:
    """C-STORE ``paths`` to a DICOM peer in one association.

    Raises:
        DeliveryError: ``unreachable`` when the peer cannot be reached, rejects the association
            transiently, aborts it or loses it; otherwise with ``refused``: the association was
            rejected permanently (every file), the peer accepted no presentation context for a
            file's SOP class, answered its C-STORE with an error status, or a file cannot be read.
            Files not in ``refused`` were stored.
    """
    from pynetdicom import AE  # imported on use: only the node needs pynetdicom

    refused: dict[Path, str] = {}
    datasets = []
    for path in paths:
        try:
            datasets.append((path, pydicom.dcmread(str(path))))
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for a damaged file
            refused[path] = f"the result file cannot be read ({type(e).__name__}: {e})"
    if not datasets:
        raise DeliveryError(f"no readable result to send to {destination}", unreachable=False, refused=refused)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _NETWORK_TIMEOUT_S
    for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
        ae.add_requested_context(sop_class, list(_RESULT_TRANSFER_SYNTAXES))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet)
    if not assoc.is_established:
        answer = assoc.acceptor.primitive  # the peer's A-ASSOCIATE answer; None when none came
        result = getattr(answer, "result", None)
        if result == REJECTED_PERMANENT:
            why = f"{destination} rejected the association permanently ({answer.source_str}: {answer.reason_str})"
            refused.update(dict.fromkeys((path for path, _ in datasets), why))
            raise DeliveryError(why, unreachable=False, refused=refused)
        if result == ASSOCIATION_ACCEPTED:  # accepted, but not one presentation context: pynetdicom aborted
            refused.update({path: _no_context(str(ds.SOPClassUID)) for path, ds in datasets})
            raise DeliveryError(f"{destination} {next(iter(refused.values()))}", unreachable=False, refused=refused)
        if result == REJECTED_TRANSIENT:
            reason = f"rejected the association for now ({answer.reason_str})"
        else:
            reason = "aborted the association" if assoc.is_aborted and answer is not None else "cannot be reached"
        raise DeliveryError(f"{destination} {reason}", unreachable=True)
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    try:
        for path, ds in datasets:
            if str(ds.SOPClassUID) not in accepted:
                refused[path] = _no_context(str(ds.SOPClassUID))
                continue
            try:
                status = assoc.send_c_store(ds)
            except ValueError as e:  # pynetdicom: no context fits this file's transfer syntax, or it cannot encode it
                refused[path] = f"cannot be sent to this peer ({e})"
                continue
            if not status or "Status" not in status:
                raise DeliveryError(f"{destination} gave no answer to a C-STORE (association lost)", unreachable=True)
            if int(status.Status) not in _STORED:
                refused[path] = f"C-STORE status 0x{int(status.Status):04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    if refused:
        raise DeliveryError(f"{destination} refused {len(refused)} result(s)", unreachable=False, refused=refused)


def stow_answer_is_refusal(reason: str) -> bool:
    """True when a STOW-RS failure reason (:class:`~lungseg_monai.dicomweb.StowResult`) refuses the file.

    A Failed SOP Sequence item, an unreadable file and an HTTP 4xx other than
    :data:`HTTP_NOT_A_REFUSAL` are refusals; a connection error, a timeout, HTTP 5xx, 401, 403,
    404, 408 and 429 are not (the destination is unreachable for now).
    """
    answer = _HTTP_ANSWER.search(reason)
    if answer is not None:
        status = int(answer.group(1))
        return 400 <= status < 500 and status not in HTTP_NOT_A_REFUSAL
    return reason.startswith(_STOW_REFUSALS)


def send_stow(destination: Destination, paths: Sequence[Path]) -> None:
    """STOW-RS ``paths`` to a DICOMweb server.

    Raises:
        DeliveryError: as :func:`send_dicom`: ``unreachable`` for a connection error, a timeout,
            HTTP 5xx (and 401, 403, 404, 408, 429), with ``refused`` for files the server refused
            (:func:`stow_answer_is_refusal`).
    """
    from lungseg_monai.dicomweb import DicomwebError, stow

    try:
        result = stow(destination.url, list(paths))
    except DicomwebError as e:  # nothing stored: a connection error, or every file refused or failed
        if e.status is not None:
            refusal = 400 <= e.status < 500 and e.status not in HTTP_NOT_A_REFUSAL
        else:
            refusal = stow_answer_is_refusal(e.reason or "")
        if refusal:
            raise DeliveryError(str(e), unreachable=False, refused=dict.fromkeys(paths, e.reason or str(e))) from e
        raise DeliveryError(str(e), unreachable=True) from e
    except Exception as e:  # noqa: BLE001 - e.g. dicomweb-client's retrying.RetryError after HTTP 503 three times
        raise DeliveryError(f"{destination}: {type(e).__name__}: {e}", unreachable=True) from e
    if not result.failed:
        return
    if not all(stow_answer_is_refusal(reason) for reason in result.failed.values()):
        # Some files failed for a reason that is not a refusal (a 5xx on one request): all are sent again later.
        reason = next(r for r in result.failed.values() if not stow_answer_is_refusal(r))
        raise DeliveryError(f"{destination}: {reason}", unreachable=True)
    raise DeliveryError(
        f"{destination} refused {len(result.failed)} result(s)", unreachable=False, refused=dict(result.failed)
    )


@dataclass
class _Backoff:
    failures: int = 0
    next_try: float = 0.0


class Sender:
    """Deliver outbox entries to every destination until stopped (a thread of the node).

    Args:
        spool: the node's spool.
        config: destinations, calling AE title, retry settings.
    """

    def __init__(self, spool: Spool, config: NodeConfig) -> None:
        self.spool, self.config = spool, config
        self.destinations = {d.key: d for d in config.destinations()}
        self._backoff = {key: _Backoff() for key in self.destinations}
        self._entry_next_try: dict[str, float] = {}  # earliest next try of a refused entry, by destination
        self._wake = threading.Event()

    def wake(self) -> None:
        """New results are waiting."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set (a delivery in progress is finished first)."""
        for key in self.spool.destinations_waiting():
            if key not in self.destinations:
                logger.warning("outbox '%s' belongs to a destination no longer configured; left as it is", key)
        while not stop.is_set():
            try:
                sent_any = self.deliver_due()
            except Exception as e:  # noqa: BLE001 - e.g. the spool's disk is full: never let the sending thread die
                logger.error("cannot deliver from the outbox (%s: %s); trying again in %.0f s", type(e).__name__, e,
                             self.config.retry_first_s)  # fmt: skip
                stop.wait(timeout=self.config.retry_first_s)
                continue
            if not sent_any:
                self._wake.wait(timeout=self._idle_wait())
                self._wake.clear()

    def deliver_due(self) -> bool:
        """One pass over the destinations that are due; True when something was delivered or tried."""
        tried = False
        now = time.monotonic()
        for key, destination in self.destinations.items():
            backoff = self._backoff[key]
            if backoff.next_try > now:
                continue
            entries = self.spool.waiting(key, limit=ENTRIES_PER_DELIVERY)
            if entries:
                tried = True
                self._deliver(key, destination, entries)
        return tried

    def _idle_wait(self) -> float:
        now, wall = time.monotonic(), time.time()
        waits = [b.next_try - now for k, b in self._backoff.items() if b.failures and self.spool.waiting(k, limit=1)]
        waits += [t - wall for t in self._entry_next_try.values()]
        self._entry_next_try = {k: t for k, t in self._entry_next_try.items() if t > wall}
        return max(_MIN_IDLE_WAIT_S, min([_MAX_IDLE_WAIT_S, *waits]))

    def _deliver(self, key: str, destination: Destination, entries: list[OutboxEntry]) -> None:
        files = [f for entry in entries for f in self.spool.entry_files(entry)]
        missing = [f for f in files if not f.exists()]
        if missing:  # results lost (spool edited by hand): nothing to send for those entries
            for entry in entries:
                if any(f in missing for f in self.spool.entry_files(entry)):
                    self.spool.refused(key, entry, "result files missing from the spool", max_refusals=1)
            entries = [e for e in entries if not any(f in missing for f in self.spool.entry_files(e))]
            files = [f for entry in entries for f in self.spool.entry_files(entry)]
            if not entries:
                return
        refused: dict[Path, str] = {}
        try:
            if destination.kind == "dicom":
                send_dicom(destination, files, self.config.aet)
            else:
                send_stow(destination, files)
        except DeliveryError as e:
            if e.unreachable:
                self._retry_later(key, destination, str(e))
                return
            refused = e.refused
            if len(entries) > 1 and all(f in refused for f in files):
                # One answer for the whole request (an HTTP 400 or 413, an association rejected): which result
                # is at fault is unknown, so each is sent on its own before a refusal is counted against it.
                for entry in entries:
                    self._deliver(key, destination, [entry])
                return
        except Exception as e:  # noqa: BLE001 - an unexpected failure: keep the node up, try again later
            self._retry_later(key, destination, f"{type(e).__name__}: {e}")
            return
        self._backoff[key] = _Backoff()  # it answered: whatever it refused, it is reachable
        for entry in entries:
            entry_files = self.spool.entry_files(entry)
            answers = {f.name: refused[f] for f in entry_files if f in refused}
            if not answers:
                self.spool.delivered(key, entry)
                continue
            stored = [f.name for f in entry_files if f not in refused]
            answer = "; ".join(f"{name}: {text}" for name, text in answers.items())
            delay = min(self.config.retry_max_s, self.config.retry_first_s * 2**entry.refusals)
            if self.spool.refused(key, entry, answer, self.config.max_refusals, retry_in_s=delay, stored=stored):
                logger.error(
                    "instance %s: %s refused its results %d times; set aside in undeliverable/ (%s)",
                    entry.sop,
                    destination,
                    entry.refusals,
                    answer,
                )
            else:
                due = time.time() + delay
                self._entry_next_try[key] = min(self._entry_next_try.get(key, due), due)
                logger.warning(
                    "instance %s: %s refused (%s); refusal %d of %d, next try in %.0f s, other results go on",
                    entry.sop,
                    destination,
                    answer,
                    entry.refusals,
                    self.config.max_refusals,
                    delay,
                )
        if not refused:
            logger.info("sent the results of %d instance(s) to %s", len(entries), destination)

    def _retry_later(self, key: str, destination: Destination, error: str) -> None:
        backoff = self._backoff[key]
        delay = min(self.config.retry_max_s, self.config.retry_first_s * 2**backoff.failures)
        backoff.failures += 1
        backoff.next_try = time.monotonic() + delay
        logger.warning("%s: %s; retrying in %.0f s (results wait in the outbox)", destination, error, delay)
