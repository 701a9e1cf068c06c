"""The DICOM node's spool: every accepted instance and every result still to deliver, on disk.

Layout of the spool folder::

    inbox/SOP.dcm               received; written and fsynced before C-STORE success is answered;
                                still to segment
    results/SOP/{seg,sr,sc}.dcm the results of one instance (UIDs derived from its SOP Instance UID
                                and the model, so a redo writes the same objects)
    outbox/DEST/SOP.json        results of SOP still to deliver to destination DEST
    failed/SOP.dcm, SOP.json    instances that could not be processed, with the reason
    undeliverable/DEST/SOP.json results a destination refused too many times, with its last answer
    ledger.jsonl                one line per event (received, segmented, skipped, rejected, failed,
                                sent, undeliverable): the node's counts

Crash safety comes from the order of the steps: an instance leaves ``inbox/`` only after its
results and its outbox entries are on disk (each written atomically and fsynced), and an outbox
entry goes only after its destination confirmed the store. ``kill -9`` at any moment therefore
leaves every accepted instance either still in ``inbox/`` (segmented again after a restart, giving
the same UIDs) or with its outbox entries (sent again; the same SOP Instance UIDs, so the PACS keeps
one copy). The ledger only counts: it is appended, not fsynced.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lungseg_monai.outputs.atomic import atomic_path, fsync_path

__all__ = ["LEDGER_EVENTS", "OutboxEntry", "Spool", "spool_name"]

logger = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
LEDGER_EVENTS = ("received", "segmented", "skipped", "rejected", "failed", "sent", "undeliverable")
_UID_PATTERN = re.compile(r"^[0-9][0-9.]{0,63}$")
# Temporary files atomic_path leaves behind when a write is killed.
_TMP_PATTERN = re.compile(r"^\..+\.tmp(\.\w+)*$")


def spool_name(sop_instance_uid: str) -> str:
    """A file name for an instance: its SOP Instance UID, or a hash of it when it is not a valid UID."""
    uid = str(sop_instance_uid).strip().rstrip("\0")
    if _UID_PATTERN.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode()).hexdigest()[:40]


@dataclass
class OutboxEntry:
    """The results of one instance still to deliver to one destination.

    Attributes:
        sop: the source instance's spool name.
        files: result file names in ``results/SOP/``.
        refusals: how many times the destination answered with an error status.
        last_error: its last answer.
    """

    sop: str
    files: list[str]
    refusals: int = 0
    last_error: str = ""
    created: float = field(default_factory=time.time)


class Spool:
    """A spool folder (see the module docstring); thread-safe.

    Args:
        root: the folder (created if missing). Leftover temporary files of a killed write are removed.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.inbox, self.results = self.root / "inbox", self.root / "results"
        self.outbox, self.failed = self.root / "outbox", self.root / "failed"
        self.undeliverable = self.root / "undeliverable"
        for folder in (self.inbox, self.results, self.outbox, self.failed, self.undeliverable):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ledger = self.root / LEDGER_FILE
        self._counts = collections.Counter(e.get("event") for e in self.events())
        for path in self.root.rglob(".*.tmp*"):
            if _TMP_PATTERN.match(path.name):
                path.unlink(missing_ok=True)

    # -- events ----------------------------------------------------------------------------------

    def log_event(self, event: str, sop: str, **details: Any) -> None:
        """Append one line to the ledger (no patient data: SOP name, AE titles, reasons)."""
        line = json.dumps({"time": round(time.time(), 3), "event": event, "sop": sop, **details})
        with self._lock, open(self._ledger, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            self._counts[event] += 1

    def events(self) -> list[dict[str, Any]]:
        """Every ledger line (a line cut short by a crash is ignored)."""
        if not self._ledger.exists():
            return []
        found = []
        for line in self._ledger.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
        return found

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, sop_instance_uid: str, write: Callable[[BinaryIO], None], calling_aet: str) -> Path:
        """Write a received instance to ``inbox/`` durably (``write`` gets the open file); returns its path.

        Once this returns, the instance survives ``kill -9`` and a power cut: only then may the
        node answer C-STORE success. A second copy of the same instance replaces the first.
        """
        name = spool_name(sop_instance_uid)
        target = self.inbox / f"{name}.dcm"
        with atomic_path(target, durable=True) as tmp, open(tmp, "wb") as f:
            write(f)
        self.log_event("received", name, calling_aet=calling_aet)
        return target

    def pending(self, limit: int | None = None) -> list[Path]:
        """Instances still to segment, oldest first."""
        paths = sorted(_visible(self.inbox, "*.dcm"), key=lambda p: (_mtime(p), p.name))
        return paths[:limit] if limit is not None else paths

    # -- after processing ------------------------------------------------------------------------

    def results_dir(self, sop: str) -> Path:
        return self.results / sop

    def complete(self, sop: str, files: Sequence[Path], destinations: Iterable[str], **details: Any) -> None:
        """An instance's results are written: queue them for every destination, then drop the instance."""
        names = [Path(f).name for f in files]
        for dest in destinations:
            self._write_entry(dest, OutboxEntry(sop, names))
        if not names:
            self._remove_results(sop)
        self.log_event("segmented", sop, results=names, **details)
        self._drop_inbox(sop)

    def skip(self, sop: str, event: str, reason: str) -> None:
        """Not to segment (``skipped``: not a frontal chest radiograph; ``rejected``: implausible pixels)."""
        self.log_event(event, sop, reason=reason)
        self._remove_results(sop)
        self._drop_inbox(sop)

    def fail(self, sop: str, reason: str) -> None:
        """Could not be processed: moved to ``failed/`` with the reason, for a person to look at."""
        source = self.inbox / f"{sop}.dcm"
        with atomic_path(self.failed / f"{sop}.json", durable=True) as tmp:
            tmp.write_text(json.dumps({"sop": sop, "reason": reason, "time": time.time()}))
        if source.exists():
            os.replace(source, self.failed / f"{sop}.dcm")
            fsync_path(self.inbox)
        self._remove_results(sop)
        self.log_event("failed", sop, reason=reason)

    # -- delivering ------------------------------------------------------------------------------

    def destinations_waiting(self) -> list[str]:
        return sorted(p.name for p in self.outbox.iterdir() if p.is_dir())

    def waiting(self, dest: str, limit: int | None = None) -> list[OutboxEntry]:
        """Outbox entries of ``dest``, oldest first."""
        folder = self.outbox / dest
        if not folder.is_dir():
            return []
        entries = []
        for path in sorted(_visible(folder, "*.json"), key=lambda p: (_mtime(p), p.name)):
            try:
                entries.append(OutboxEntry(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as e:
                logger.error("outbox entry '%s' cannot be read (%s); moved to undeliverable", path, e)
                self._move_entry(path, dest)
            if limit is not None and len(entries) >= limit:
                break
        return entries

    def entry_files(self, entry: OutboxEntry) -> list[Path]:
        return [self.results_dir(entry.sop) / name for name in entry.files]

    def delivered(self, dest: str, entry: OutboxEntry) -> None:
        """``dest`` confirmed the store of ``entry``'s results."""
        (self.outbox / dest / f"{entry.sop}.json").unlink(missing_ok=True)
        self.log_event("sent", entry.sop, destination=dest, results=entry.files)
        with self._lock:
            still_needed = any((self.outbox / d / f"{entry.sop}.json").exists() for d in self.destinations_waiting())
        if not still_needed:
            self._remove_results(entry.sop)

    def refused(self, dest: str, entry: OutboxEntry, error: str, max_refusals: int) -> bool:
        """``dest`` answered with an error; True when the entry was given up (moved to ``undeliverable/``)."""
        entry.refusals += 1
        entry.last_error = error
        self._write_entry(dest, entry)
        if entry.refusals < max_refusals:
            return False
        self._move_entry(self.outbox / dest / f"{entry.sop}.json", dest)
        self.log_event("undeliverable", entry.sop, destination=dest, reason=error)
        return True

    # -- counts ----------------------------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """Counts: events from the ledger, plus ``waiting_to_segment`` and ``waiting_to_send`` now."""
        with self._lock:
            status = {event: self._counts.get(event, 0) for event in LEDGER_EVENTS}
        status["waiting_to_segment"] = len(self.pending())
        status["waiting_to_send"] = sum(len(_visible(self.outbox / d, "*.json")) for d in self.destinations_waiting())
        return status

    # -- internals -------------------------------------------------------------------------------

    def _write_entry(self, dest: str, entry: OutboxEntry) -> None:
        with atomic_path(self.outbox / dest / f"{entry.sop}.json", durable=True) as tmp:
            tmp.write_text(json.dumps(asdict(entry)))

    def _move_entry(self, path: Path, dest: str) -> None:
        target = self.undeliverable / dest / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
        sop = path.stem
        for name in json.loads(target.read_text()).get("files", []) if target.exists() else []:
            source = self.results_dir(sop) / name
            if source.exists():
                shutil.copy2(source, target.with_name(f"{sop}.{name}"))

    def _drop_inbox(self, sop: str) -> None:
        (self.inbox / f"{sop}.dcm").unlink(missing_ok=True)
        fsync_path(self.inbox)

    def _remove_results(self, sop: str) -> None:
        shutil.rmtree(self.results_dir(sop), ignore_errors=True)


def _visible(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)`` without hidden names: a file being written (``atomic_path``'s
    ``.NAME.XXXX.tmp...``) is not there yet. pathlib's glob, unlike the shell's, matches them."""
    return [p for p in folder.glob(pattern) if not p.name.startswith(".")]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
