"""Deliver the node's results: C-STORE to DICOM peers and STOW-RS to DICOMweb servers, with retries.

A destination that cannot be reached (connection refused, association rejected or aborted, HTTP
error) is retried with exponential back-off, without limit: its results wait in the outbox and the
node keeps receiving. A result the destination refuses with a DICOM error status is retried a few
times (:attr:`NodeConfig.max_refusals`), then set aside in ``undeliverable/`` with the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from lungseg_monai.pacs.config import Destination, NodeConfig
from lungseg_monai.pacs.spool import OutboxEntry, Spool

__all__ = ["DeliveryError", "Sender", "send_dicom", "send_stow"]

logger = logging.getLogger(__name__)

# Results sent in one association or one STOW-RS request.
ENTRIES_PER_DELIVERY = 16
# C-STORE statuses that mean stored (0x0000 success; B000, B006, B007 warnings: stored with coercion).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
_RESULT_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit / implicit VR little endian
_NETWORK_TIMEOUT_S = 30


class DeliveryError(Exception):
    """A delivery failed. ``unreachable``: the destination could not be reached (retry later);
    otherwise it refused these results (``refused`` maps result files to its answer)."""

    def __init__(self, message: str, unreachable: bool, refused: dict[Path, str] | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.refused = refused or {}


def send_dicom(destination: Destination, paths: Sequence[Path], calling_aet: str) -> None:
    """C-STORE ``paths`` to a DICOM peer in one association.

    Raises:
        DeliveryError: the peer cannot be reached, rejects or aborts the association
            (``unreachable``), or answers some stores with an error status (``refused``).
    """
    from pynetdicom import AE  # imported on use: only the node needs pynetdicom

    datasets = [(path, pydicom.dcmread(str(path))) for path in paths]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _NETWORK_TIMEOUT_S
    for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
        ae.add_requested_context(sop_class, list(_RESULT_TRANSFER_SYNTAXES))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet)
    if not assoc.is_established:
        reason = "rejected the association" if assoc.is_rejected else "cannot be reached"
        raise DeliveryError(f"{destination} {reason}", unreachable=True)
    refused: dict[Path, str] = {}
    try:
        for path, ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                raise DeliveryError(f"{destination} gave no answer to a C-STORE (association lost)", unreachable=True)
            if int(status.Status) not in _STORED:
                refused[path] = f"C-STORE status 0x{int(status.Status):04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    if refused:
        raise DeliveryError(f"{destination} refused {len(refused)} result(s)", unreachable=False, refused=refused)


def send_stow(destination: Destination, paths: Sequence[Path]) -> None:
    """STOW-RS ``paths`` to a DICOMweb server.

    Raises:
        DeliveryError: as :func:`send_dicom`.
    """
    from lungseg_monai.pacs.dicomweb import DicomwebError, stow

    try:
        result = stow(destination.url, list(paths))
    except DicomwebError as e:
        raise DeliveryError(str(e), unreachable=True) from e
    if result.failed:
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
            sent_any = self.deliver_due()
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
        now = time.monotonic()
        waits = [b.next_try - now for k, b in self._backoff.items() if b.failures and self.spool.waiting(k, limit=1)]
        return max(0.05, min([1.0, *waits]))

    def _deliver(self, key: str, destination: Destination, entries: list[OutboxEntry]) -> None:
        files = [f for entry in entries for f in self.spool.entry_files(entry)]
        missing = [f for f in files if not f.exists()]
        if missing:  # results lost (spool edited by hand): nothing to send for those entries
            for entry in entries:
                if any(f in missing for f in self.spool.entry_files(entry)):
                    self.spool.refused(key, entry, "result files missing from the spool", max_refusals=1)
            return
        try:
            if destination.kind == "dicom":
                send_dicom(destination, files, self.config.aet)
            else:
                send_stow(destination, files)
        except DeliveryError as e:
            if e.unreachable:
                self._retry_later(key, destination, str(e))
                return
            for entry in entries:
                answers = [e.refused[f] for f in self.spool.entry_files(entry) if f in e.refused]
                if not answers:
                    self.spool.delivered(key, entry)
                elif self.spool.refused(key, entry, "; ".join(answers), self.config.max_refusals):
                    logger.error("instance %s: %s gave up after refusals (%s)", entry.sop, destination, answers[0])
            self._retry_later(key, destination, str(e))
            return
        except Exception as e:  # noqa: BLE001 - e.g. a result file pynetdicom cannot encode: keep the node up
            self._retry_later(key, destination, f"{type(e).__name__}: {e}")
            return
        for entry in entries:
            self.spool.delivered(key, entry)
        self._backoff[key] = _Backoff()
        logger.info("sent the results of %d instance(s) to %s", len(entries), destination)

    def _retry_later(self, key: str, destination: Destination, error: str) -> None:
        backoff = self._backoff[key]
        delay = min(self.config.retry_max_s, self.config.retry_first_s * 2**backoff.failures)
        backoff.failures += 1
        backoff.next_try = time.monotonic() + delay
        logger.warning("%s: %s; retrying in %.0f s (results wait in the outbox)", destination, error, delay)
