"""``lungseg node``: a DICOM node that segments every chest radiograph it receives and sends the results on.

Three parts work at once: the listener (:mod:`~lungseg_monai.pacs.scp`) spools what arrives, a
processing thread segments what is spooled in batches (:mod:`~lungseg_monai.pacs.processing`), and
a sending thread delivers the results to every destination (:mod:`~lungseg_monai.pacs.sender`).
The spool (:mod:`~lungseg_monai.pacs.spool`) holds all state, so a restart after ``kill -9``
finishes what was accepted. SIGTERM (or Ctrl-C) stops accepting associations, finishes the batch
being segmented and the delivery being sent, and leaves the rest spooled for the next start.

What the node guarantees (the spool's docstring says how):

* One node per spool: the node locks its spool (:class:`~lungseg_monai.pacs.spool.SpoolLock`)
  before anything else, for its whole life; a second node on the same spool raises
  :class:`~lungseg_monai.pacs.spool.SpoolInUseError` naming the spool and the PID of the first
  (``lungseg node`` exits with status 1). ``lungseg node --status`` reads the counts without it.
* After a crash, the instances of the batch that was being segmented are segmented again first,
  one at a time; one that was started :data:`~lungseg_monai.pacs.spool.MAX_PROCESSING_ATTEMPTS`
  times without ending goes to ``failed/`` with the reason.
* A new copy of an instance (same SOP Instance UID) received while the first one is segmented is
  segmented after it; its results replace the first one's.
* A model without a usable QC calibration is refused at start
  (:class:`~lungseg_monai.qc.quality.UncalibratedModelError`) unless
  :attr:`NodeConfig.allow_uncalibrated`: its results would go out unchecked, QC ``unavailable``.

Example:
    >>> config = NodeConfig(model="models/model.pt", spool="spool", send_to=["PACS@127.0.0.1:4242"])
    >>> node = DicomNode(config)  # doctest: +SKIP
    >>> node.start(); node.port  # doctest: +SKIP
    11112
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from lungseg_monai.inference.predictor import LungSegmenter
from lungseg_monai.pacs.config import NodeConfig
from lungseg_monai.pacs.processing import InstanceProcessor
from lungseg_monai.pacs.scp import make_application_entity, make_store_handler
from lungseg_monai.pacs.sender import Sender
from lungseg_monai.pacs.spool import Spool, SpoolLock
from lungseg_monai.qc.quality import UncalibratedModelError

__all__ = ["DicomNode"]

logger = logging.getLogger(__name__)

# How long stop() waits for the batch and the delivery in progress: under systemd's default 90 s
# stop timeout, so a routine restart never kills a batch (which would count as a crash attempt).
STOP_TIMEOUT_S = 60.0
# How often the node logs its counts while work is waiting.
STATUS_LOG_INTERVAL_S = 30.0
# An instance that arrives while others are waiting joins their batch if it comes within this time.
_GATHER_S = 0.05
# Wait after the spool could not be written before trying again.
_DISK_RETRY_S = 10.0


class DicomNode:
    """The DICOM node: listener, processing and sending threads over one spool.

    The spool is locked from here until :meth:`stop` (or a failed :meth:`start`); a node is started once.

    Args:
        config: the node's settings.
        segmenter: a ready model (default: loaded from ``config.model`` on :meth:`start`).

    Raises:
        SpoolInUseError: another node holds ``config.spool``.
    """

    def __init__(self, config: NodeConfig, segmenter: LungSegmenter | None = None) -> None:
        self.config = config
        self.segmenter = segmenter
        self.batch_size = config.batch_size  # None until start(): then by the model's input size
        self._spool_lock = SpoolLock(config.spool).acquire()  # before the spool's start-up clean-up
        try:
            self.spool = Spool(config.spool)
            self.sender = Sender(self.spool, config)
        except BaseException:
            self._spool_lock.release()
            raise
        self._stop = threading.Event()
        self._arrived = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._last_status_log = 0.0

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when the config says 0)."""
        if self._server is None:
            raise RuntimeError("the node is not started")
        return int(self._server.server_address[1])

    def status(self) -> dict[str, int]:
        """Counts: received, segmented, skipped, rejected, failed, sent, undeliverable, waiting (``Spool.status``)."""
        return self.spool.status()

    def start(self) -> DicomNode:
        """Load the model, start the threads, then listen; returns at once.

        Raises:
            UncalibratedModelError: the model has no usable QC calibration and the config does not
                say ``allow_uncalibrated`` (the spool is released).
        """
        if not self._spool_lock.held:
            raise RuntimeError(f"this node was stopped and released the spool '{self.config.spool}'; make a new one")
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> DicomNode:
        from pynetdicom import _config, evt

        # Identifiers (patient data) stay out of pynetdicom's logs.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        if self.segmenter is None:
            self.segmenter = LungSegmenter.from_model(
                self.config.model, self.config.device, precision=self.config.precision
            )
        if self.segmenter.qc is None:
            reason = getattr(self.segmenter, "qc_unavailable_reason", None) or "the model has no QC calibration"
            if not self.config.allow_uncalibrated:
                raise UncalibratedModelError(reason)
            logger.warning("quality control is unavailable (%s): every result's QC verdict is 'unavailable'", reason)
        self.batch_size = self.config.batch_size or self.segmenter.auto_batch_size()
        processor = InstanceProcessor(
            self.segmenter,
            self.spool,
            list(self.sender.destinations),
            overlay=self.config.overlay,
            write_rejected_seg=self.config.write_rejected_seg,
            check_headers=self.config.check_headers,
        )
        self._threads = [
            threading.Thread(target=self._process_loop, args=(processor,), name="lungseg-node-process", daemon=True),
            threading.Thread(target=self.sender.run, args=(self._stop,), name="lungseg-node-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        ae = make_application_entity(self.config)
        handlers = [(evt.EVT_C_STORE, make_store_handler(self.spool, self._arrived.set))]
        self._server = ae.start_server((self.config.bind, int(self.config.port)), block=False, evt_handlers=handlers)
        waiting = self.spool.status()
        logger.info(
            "DICOM node %s listening on %s:%d; model %s, batches of up to %d; %d instance(s) to segment and %d "
            "result(s) to send from the spool '%s'; destinations: %s",
            self.config.aet,
            self.config.bind,
            self.port,
            self.segmenter.identity,
            self.batch_size,
            waiting["waiting_to_segment"],
            waiting["waiting_to_send"],
            self.config.spool,
            ", ".join(str(d) for d in self.sender.destinations.values()) or "none (results stay in the spool)",
        )
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop listening, finish the current batch and delivery, leave the rest spooled, release the spool."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._arrived.set()
        self.sender.wake()
        alive = []
        for thread in self._threads:
            thread.join(timeout=timeout)
            if thread.is_alive():
                alive.append(thread.name)
        if not self._spool_lock.held:
            return
        if alive:  # still working on the spool: keep it locked until this process exits
            logger.error("%s still running after %.0f s; the spool stays locked until exit", alive, timeout)
            return
        logger.info("DICOM node stopped: %s", _counts_text(self.spool.status()))
        self._spool_lock.release()

    def serve_forever(self) -> None:
        """Start, then run until SIGTERM or SIGINT."""
        stop_requested = threading.Event()

        def request_stop(signum: int, _frame: Any) -> None:
            logger.info("signal %d: finishing the current batch, the rest stays spooled", signum)
            stop_requested.set()

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop_requested.wait(timeout=1.0):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _process_loop(self, processor: InstanceProcessor) -> None:
        while not self._stop.is_set():
            if len(self.spool.pending(limit=self.batch_size)) < self.batch_size and self._arrived.wait(_GATHER_S):
                self._arrived.clear()
            try:
                # Claimed (moved to processing/, the attempt counted durably) before anything is read.
                paths = self.spool.claim(self.batch_size)
            except OSError as e:
                logger.error("cannot claim spooled instances (%s); retrying in %.0f s", e, _DISK_RETRY_S)
                self._stop.wait(timeout=_DISK_RETRY_S)
                continue
            if not paths:
                self._arrived.wait(timeout=1.0)
                self._arrived.clear()
                continue
            try:
                processor.process(paths)
            except OSError as e:  # e.g. the spool's disk is full: keep the instances, try again shortly
                logger.error(
                    "cannot process %d spooled instance(s) (%s); retrying in %.0f s", len(paths), e, _DISK_RETRY_S
                )
                self.spool.unclaim(paths)
                self._stop.wait(timeout=_DISK_RETRY_S)
            self.sender.wake()
            self._log_status()

    def _log_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status_log >= STATUS_LOG_INTERVAL_S:
            self._last_status_log = now
            logger.info("node: %s", _counts_text(self.spool.status()))


def _counts_text(status: dict[str, int]) -> str:
    return ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in status.items())
