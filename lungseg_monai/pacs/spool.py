"""The DICOM node's spool: every accepted instance and every result still to deliver, on disk.

Layout of the spool folder::

    node.lock                   locked (``flock``) by the one node working this spool, for its whole
                                life; holds that node's PID
    inbox/SOP.dcm               received; written and fsynced before C-STORE success is answered;
                                still to segment
    processing/SOP.dcm          claimed for segmentation: renamed out of inbox/ when its batch starts,
                                so a new copy of the same instance (a PACS correction keeps the SOP
                                Instance UID) lands in inbox/ and is segmented after this one
    processing/SOP.json         how many times its segmentation started without ending; written and
                                fsynced before the segmentation starts
    results/SOP/{seg,sr,sc}.dcm the results of one instance (UIDs derived from its SOP Instance UID
                                and the model, so a redo writes the same objects)
    outbox/DEST/SOP.json        results of SOP still to deliver to destination DEST, with the
                                destination's refusals, its last answer and the time of the next try
    failed/SOP.dcm, SOP.json    instances that could not be processed, with the reason
    undeliverable/DEST/SOP.json results a destination refused too many times, with its last answer
                                (and a copy of each result, SOP.seg.dcm ...)
    ledger.jsonl                one line per event (received, segmented, skipped, rejected, failed,
                                sent, undeliverable) since the last rotation
    ledger.1.jsonl              the ledger before it (past :data:`LEDGER_MAX_BYTES` the ledger is
                                rotated; one rotated file is kept)
    counts.json                 the event counts of every rotated ledger

What is guaranteed:

* **A crash** (``kill -9``, out of memory, a decoder crash, a power cut): every instance answered
  with C-STORE success is on disk in ``inbox/``, ``processing/`` or ``failed/``, or has all its
  results queued in ``outbox/`` (an instance leaves ``processing/`` only after its results and its
  outbox entries are written atomically and fsynced), and an outbox entry goes only after its
  destination confirmed the store. After a restart, instances still in ``processing/`` (the batch
  that was running) are segmented first, one at a time, so the one that killed the node is isolated
  and its batch neighbours are not blamed; results are sent again if their confirmation was lost
  (the same SOP Instance UIDs, so the PACS keeps one copy).
* **A crash loop**: an instance whose segmentation was started :data:`MAX_PROCESSING_ATTEMPTS`
  times without ending is moved to ``failed/`` with the reason, instead of killing the node at
  every start.
* **A refusal** (:meth:`Spool.refused`): counted per outbox entry; the entry gets its own next-try
  time (:attr:`OutboxEntry.next_try`), :meth:`Spool.waiting` returns only entries that are due, so
  the other results for the same destination keep flowing; after ``max_refusals`` the entry is
  moved to ``undeliverable/``.
* **A second node** on the same spool: :class:`SpoolLock` refuses it (:class:`SpoolInUseError`,
  naming the spool and the PID of the node holding it). Reading the counts
  (``Spool(root, read_only=True)``, ``lungseg node --status``) needs no lock and changes nothing.
* **Counts** (:meth:`Spool.status`) are exact across rotations and crashes: before a rotation the
  counts so far are written (fsynced) to ``counts.json`` with the generation of the ledger they
  include; a start that finds the current ledger already included (a crash between that write
  and the rename) finishes the rotation instead of counting it twice. A start reads
  ``counts.json`` and the current ledger only. The ledger is appended, not fsynced: a power cut
  can lose its last lines (never a ``kill -9``).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lungseg_monai.utils.atomic import atomic_path, fsync_path

__all__ = [
    "LEDGER_EVENTS",
    "LEDGER_MAX_BYTES",
    "MAX_PROCESSING_ATTEMPTS",
    "OutboxEntry",
    "Spool",
    "SpoolInUseError",
    "SpoolLock",
    "spool_name",
]

logger = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
ROTATED_LEDGER_FILE = "ledger.1.jsonl"
COUNTS_FILE = "counts.json"
LOCK_FILE = "node.lock"
LEDGER_EVENTS = ("received", "segmented", "skipped", "rejected", "failed", "sent", "undeliverable")
# The ledger is rotated once it holds this many bytes (about 40,000 instances' events).
LEDGER_MAX_BYTES = 8 * 2**20
# An instance whose segmentation started this many times without ending (the node died each time) fails.
MAX_PROCESSING_ATTEMPTS = 3
# The first line of every ledger written since rotation exists: which generation it is.
_GENERATION_KEY = "ledger_generation"
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
        files: result file names in ``results/SOP/`` (those the destination has not stored yet).
        refusals: how many times the destination refused them.
        last_error: its last answer.
        created: when the entry was queued (wall clock, seconds).
        next_try: not to be sent before this time (wall clock, seconds; set after a refusal).
        token: tells this entry from a later one of the same instance (a new copy segmented again).
    """

    sop: str
    files: list[str]
    refusals: int = 0
    last_error: str = ""
    created: float = field(default_factory=time.time)
    next_try: float = 0.0
    token: str = field(default_factory=lambda: secrets.token_hex(8))


class SpoolInUseError(RuntimeError):
    """Another node holds the spool's lock.

    Attributes:
        root: the spool folder.
        holder_pid: the PID the holder wrote in the lock file (None when it cannot be read).
    """

    def __init__(self, root: Path, holder_pid: int | None) -> None:
        holder = f"PID {holder_pid}" if holder_pid is not None else "PID unknown"
        super().__init__(
            f"the spool '{root}' is in use by another lungseg node ({holder}); two nodes on one spool would "
            "segment and send the same instances twice. Stop that node first (it releases the spool when it "
            "exits), or give this one its own --spool; `lungseg node --status --spool DIR` reads the counts "
            "without stopping it"
        )
        self.root, self.holder_pid = root, holder_pid


class SpoolLock:
    """An exclusive lock on a spool folder, held by one node for its whole life.

    ``fcntl.flock`` on ``node.lock`` in the spool: released by :meth:`release` or by the operating
    system when the process ends, however it ends (a ``kill -9`` leaves no stale lock). The PID of
    the holder is written in the file, for the message another node gets.

    Args:
        root: the spool folder (created if missing).

    Example:
        >>> with SpoolLock("spool"):  # doctest: +SKIP
        ...     SpoolLock("spool").acquire()
        Traceback (most recent call last):
        SpoolInUseError: the spool 'spool' is in use by another lungseg node (PID 4242); ...
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._file: Any = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> SpoolLock:
        """Take the lock; returns self.

        Raises:
            SpoolInUseError: another process (or another lock object of this one) holds it.
        """
        import fcntl  # POSIX only: imported on use

        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            text = f.read().strip()
            f.close()
            raise SpoolInUseError(self.root, int(text) if text.isdigit() else None) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Let another node take the spool (nothing happens when the lock is not held)."""
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> SpoolLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Spool:
    """A spool folder (see the module docstring); thread-safe.

    A node takes its :class:`SpoolLock` before making its ``Spool``: the start-up clean-up below
    (temporary files of a killed write, a rotation cut short) must not run under a working node.

    Args:
        root: the folder (created if missing). Leftover temporary files of a killed write are removed.
        ledger_max_bytes: rotate the ledger once it holds this many bytes.
        read_only: only read (counts, waiting work): no folder created, nothing removed or
            repaired, no lock needed; for ``lungseg node --status`` beside a running node.

    Raises:
        FileNotFoundError: ``read_only`` and ``root`` is not a folder.
    """

    def __init__(
        self, root: str | os.PathLike, ledger_max_bytes: int = LEDGER_MAX_BYTES, read_only: bool = False
    ) -> None:
        self.root = Path(root)
        self.inbox, self.processing = self.root / "inbox", self.root / "processing"
        self.results, self.outbox = self.root / "results", self.root / "outbox"
        self.failed, self.undeliverable = self.root / "failed", self.root / "undeliverable"
        self.read_only = read_only
        if read_only:
            if not self.root.is_dir():
                raise FileNotFoundError(f"spool '{self.root}' is not a folder; give the --spool the node uses")
        else:
            for folder in (self.inbox, self.processing, self.results, self.outbox, self.failed, self.undeliverable):
                folder.mkdir(parents=True, exist_ok=True)
            for path in self.root.rglob(".*.tmp*"):
                if _TMP_PATTERN.match(path.name):
                    path.unlink(missing_ok=True)
        self._lock = threading.Lock()  # the ledger and the counts
        # Claims, outbox entries and results folders: the processing and sending threads work on the
        # same instance when a new copy of it is segmented while the first one's results are sent.
        self._files_lock = threading.RLock()
        self._ledger = self.root / LEDGER_FILE
        self._ledger_max_bytes = int(ledger_max_bytes)
        self._counts: collections.Counter[str] = collections.Counter()
        self._generation = 0
        self._ledger_bytes = 0
        self._load_counts()

    # -- events ----------------------------------------------------------------------------------

    def log_event(self, event: str, sop: str, **details: Any) -> None:
        """Append one line to the ledger (no patient data: SOP name, AE titles, reasons)."""
        line = json.dumps({"time": round(time.time(), 3), "event": event, "sop": sop, **details}) + "\n"
        with self._lock:
            if not self._ledger.exists():
                self._start_ledger()
            elif self._ledger_bytes >= self._ledger_max_bytes:
                self._rotate()
            with open(self._ledger, "a", encoding="utf-8") as f:
                f.write(line)
            self._ledger_bytes += len(line.encode())
            self._counts[event] += 1

    def events(self) -> list[dict[str, Any]]:
        """The events of the rotated and the current ledger, oldest first (a line cut short by a crash is ignored).

        Older events are only counted (:meth:`status`), in ``counts.json``.
        """
        found = []
        for path in (self.root / ROTATED_LEDGER_FILE, self._ledger):
            found += _read_ledger(path)[1]
        return found

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, sop_instance_uid: str, write: Callable[[BinaryIO], None], calling_aet: str) -> Path:
        """Write a received instance to ``inbox/`` durably (``write`` gets the open file); returns its path.

        Once this returns, the instance survives ``kill -9`` and a power cut: only then may the
        node answer C-STORE success. A second copy of the same instance replaces the first while
        it waits in ``inbox/``; one that comes while the first is segmented waits its turn.
        """
        name = spool_name(sop_instance_uid)
        target = self.inbox / f"{name}.dcm"
        with atomic_path(target, durable=True) as tmp, open(tmp, "wb") as f:
            write(f)
        self.log_event("received", name, calling_aet=calling_aet)
        return target

    def pending(self, limit: int | None = None) -> list[Path]:
        """Instances still to segment: those claimed and not finished, then ``inbox/``, oldest first."""
        paths = _oldest_first(_visible(self.processing, "*.dcm")) + _oldest_first(_visible(self.inbox, "*.dcm"))
        return paths[:limit] if limit is not None else paths

    def claim(self, limit: int) -> list[Path]:
        """Claim the next instances to segment (paths in ``processing/``) and count the attempt durably.

        An instance left in ``processing/`` by a node that died comes first and alone (a batch of
        1), so the one that killed the node is found and its neighbours are not failed with it; one
        already started :data:`MAX_PROCESSING_ATTEMPTS` times is failed instead. Otherwise up to
        ``limit`` instances, oldest first, are moved out of ``inbox/``.

        Every claimed instance must end with :meth:`complete`, :meth:`skip`, :meth:`fail` or
        :meth:`unclaim`.
        """
        with self._files_lock:
            leftovers, suspects = [], []
            for path in _oldest_first(_visible(self.processing, "*.dcm")):
                attempts = self._attempts(path.stem)
                if attempts >= MAX_PROCESSING_ATTEMPTS:
                    reason = (
                        f"processing was interrupted {attempts} times (the node crashed or was killed while "
                        "processing it)"
                    )
                    logger.error("instance %s failed: %s", path.stem, reason)
                    self.fail(path.stem, reason)
                else:
                    (suspects if attempts else leftovers).append(path)
            if suspects:
                batch = suspects[:1]
            else:
                batch = leftovers[:limit]
                claimed = {p.stem for p in leftovers}
                moved = False
                for path in _oldest_first(_visible(self.inbox, "*.dcm")):
                    if len(batch) >= limit:
                        break
                    if path.stem in claimed:  # its earlier copy is still to finish: this one comes after
                        continue
                    target = self.processing / path.name
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(path, target)
                        (self.processing / f"{path.stem}.json").unlink(missing_ok=True)  # left by a power cut
                        batch.append(target)
                        moved = True
                if moved:
                    fsync_path(self.inbox)
            for path in batch:
                self._write_attempts(path.stem, self._attempts(path.stem) + 1)
            return batch

    def unclaim(self, paths: Iterable[Path]) -> None:
        """Segmentation of claimed instances stopped without a verdict (e.g. the disk is full): it does not count."""
        with self._files_lock:
            for path in paths:
                if not path.exists():
                    continue
                attempts = self._attempts(path.stem) - 1
                counter = self.processing / f"{path.stem}.json"
                if attempts <= 0:
                    counter.unlink(missing_ok=True)  # frees space: works on a full disk
                else:
                    with contextlib.suppress(OSError):
                        self._write_attempts(path.stem, attempts)

    # -- after processing ------------------------------------------------------------------------

    def results_dir(self, sop: str) -> Path:
        return self.results / sop

    def complete(
        self, sop: str, files: Sequence[Path], destinations: Iterable[str], path: Path | None = None, **details: Any
    ) -> None:
        """An instance's results are written: queue them for every destination, then drop the instance.

        The instance dropped is its claimed copy (``processing/``; a newer copy in ``inbox/`` stays
        to be segmented), or the one in ``inbox/`` when it was not claimed.
        """
        names = [Path(f).name for f in files]
        with self._files_lock:
            for dest in destinations:
                self._write_entry(dest, OutboxEntry(sop, names))
        self.log_event("segmented", sop, results=names, **details)
        self._drop_instance(sop, path)
        if not names:
            self._remove_results_if_unused(sop)

    def skip(self, sop: str, event: str, reason: str, path: Path | None = None) -> None:
        """Not to segment (``skipped``: not a frontal chest radiograph; ``rejected``: implausible pixels)."""
        self.log_event(event, sop, reason=reason)
        self._drop_instance(sop, path)
        self._remove_results_if_unused(sop)

    def fail(self, sop: str, reason: str, path: Path | None = None) -> None:
        """Could not be processed: moved to ``failed/`` with the reason, for a person to look at.

        ``path``: the copy that failed (the processor passes the one it claimed, so a newer copy
        waiting in ``inbox/`` is never moved in its place); default: see :meth:`_instance_path`.
        """
        with atomic_path(self.failed / f"{sop}.json", durable=True) as tmp:
            tmp.write_text(json.dumps({"sop": sop, "reason": reason, "time": time.time()}))
        with self._files_lock:
            source = self._instance_path(sop, path)
            if source.exists():
                os.replace(source, self.failed / f"{sop}.dcm")
                fsync_path(source.parent)
            (self.processing / f"{sop}.json").unlink(missing_ok=True)
        self._remove_results_if_unused(sop)
        self.log_event("failed", sop, reason=reason)

    # -- delivering ------------------------------------------------------------------------------

    def destinations_waiting(self) -> list[str]:
        return sorted(p.name for p in self.outbox.iterdir() if p.is_dir()) if self.outbox.is_dir() else []

    def waiting(self, dest: str, limit: int | None = None, now: float | None = None) -> list[OutboxEntry]:
        """Outbox entries of ``dest`` that are due (``next_try`` passed), oldest first.

        An entry refused and waiting for its next try is left out, so it does not hold back the others.
        """
        folder = self.outbox / dest
        if not folder.is_dir():
            return []
        now = time.time() if now is None else now
        entries = []
        for path in _oldest_first(_visible(folder, "*.json")):
            try:
                entry = OutboxEntry(**json.loads(path.read_text()))
            except FileNotFoundError:  # delivered meanwhile
                continue
            except (OSError, ValueError, TypeError) as e:
                if self.read_only:
                    continue
                logger.error("outbox entry '%s' cannot be read (%s); moved to undeliverable", path, e)
                self._move_entry(path, dest)
                continue
            if entry.next_try <= now:
                entries.append(entry)
            if limit is not None and len(entries) >= limit:
                break
        return entries

    def entry_files(self, entry: OutboxEntry) -> list[Path]:
        return [self.results_dir(entry.sop) / name for name in entry.files]

    def delivered(self, dest: str, entry: OutboxEntry) -> None:
        """``dest`` confirmed the store of ``entry``'s results."""
        with self._files_lock:
            if self._is_current(dest, entry):
                (self.outbox / dest / f"{entry.sop}.json").unlink(missing_ok=True)
        self.log_event("sent", entry.sop, destination=dest, results=entry.files)
        self._remove_results_if_unused(entry.sop)

    def refused(
        self,
        dest: str,
        entry: OutboxEntry,
        error: str,
        max_refusals: int,
        retry_in_s: float = 0.0,
        stored: Sequence[str] = (),
    ) -> bool:
        """``dest`` refused ``entry``'s results; True when the entry was given up (moved to ``undeliverable/``).

        Args:
            dest: the destination's outbox key.
            entry: what was sent.
            error: the destination's answer.
            max_refusals: give up at this many refusals of the entry.
            retry_in_s: do not send the entry again before this many seconds (the other entries go on).
            stored: names of ``entry``'s files the destination did store: counted sent, not sent again.
        """
        with self._files_lock:
            if not self._is_current(dest, entry):  # a newer copy's results replaced it: those are sent next
                return False
            if stored:
                entry.files = [name for name in entry.files if name not in stored]
            entry.refusals += 1
            entry.last_error = error
            entry.next_try = time.time() + retry_in_s
            self._write_entry(dest, entry)
        if stored:
            self.log_event("sent", entry.sop, destination=dest, results=list(stored))
        if entry.refusals < max_refusals:
            return False
        with self._files_lock:
            self._move_entry(self.outbox / dest / f"{entry.sop}.json", dest)
        self.log_event("undeliverable", entry.sop, destination=dest, reason=error)
        self._remove_results_if_unused(entry.sop)
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

    def _load_counts(self) -> None:
        """Counts from ``counts.json`` and the current ledger; finishes a rotation a crash cut short."""
        snapshot = _read_json(self.root / COUNTS_FILE) or {}
        included = int(snapshot.get("generation", -1))  # ledgers up to this generation are in the snapshot
        self._counts = collections.Counter(snapshot.get("counts", {}))
        self._generation = included + 1
        if not self._ledger.exists():
            return
        generation, events, size = _read_ledger(self._ledger)
        if generation <= included:  # the snapshot was written, the rename did not happen: finish the rotation
            if not self.read_only:
                with self._lock:
                    if events:  # (an empty one, e.g. truncated by hand, must not replace the rotated ledger)
                        os.replace(self._ledger, self.root / ROTATED_LEDGER_FILE)
                    self._start_ledger()
            return
        self._generation, self._ledger_bytes = generation, size
        self._counts.update(e["event"] for e in events)
        if not self.read_only and size and not self._ledger.read_bytes().endswith(b"\n"):
            with open(self._ledger, "a", encoding="utf-8") as f:  # a line cut short: the next one starts anew
                f.write("\n")
            self._ledger_bytes += 1

    def _start_ledger(self) -> None:
        """A new ledger holding only its generation (under ``self._lock``)."""
        header = json.dumps({_GENERATION_KEY: self._generation}) + "\n"
        with atomic_path(self._ledger, durable=True) as tmp:
            tmp.write_text(header, encoding="utf-8")
        self._ledger_bytes = len(header.encode())

    def _rotate(self) -> None:
        """Counts so far to ``counts.json`` (durably), then the ledger to ``ledger.1.jsonl`` (under ``self._lock``)."""
        snapshot = {"generation": self._generation, "counts": dict(self._counts), "time": round(time.time(), 3)}
        with atomic_path(self.root / COUNTS_FILE, durable=True) as tmp:
            tmp.write_text(json.dumps(snapshot), encoding="utf-8")
        os.replace(self._ledger, self.root / ROTATED_LEDGER_FILE)
        self._generation += 1
        self._start_ledger()

    def _attempts(self, sop: str) -> int:
        data = _read_json(self.processing / f"{sop}.json") or {}
        return int(data.get("attempts", 0))

    def _write_attempts(self, sop: str, attempts: int) -> None:
        with atomic_path(self.processing / f"{sop}.json", durable=True) as tmp:
            tmp.write_text(json.dumps({"sop": sop, "attempts": attempts, "time": round(time.time(), 3)}))

    def _instance_path(self, sop: str, path: Path | None = None) -> Path:
        """The copy of an instance being processed: ``path`` when given, else its claimed one, else the one in
        ``inbox/`` (for callers that did not claim it)."""
        if path is not None:
            return Path(path)
        claimed = self.processing / f"{sop}.dcm"
        return claimed if claimed.exists() else self.inbox / f"{sop}.dcm"

    def _drop_instance(self, sop: str, copy: Path | None = None) -> None:
        with self._files_lock:
            path = self._instance_path(sop, copy)
            path.unlink(missing_ok=True)
            if path.parent == self.processing:
                (self.processing / f"{sop}.json").unlink(missing_ok=True)
            fsync_path(path.parent)

    def _write_entry(self, dest: str, entry: OutboxEntry) -> None:
        with atomic_path(self.outbox / dest / f"{entry.sop}.json", durable=True) as tmp:
            tmp.write_text(json.dumps(asdict(entry)))

    def _is_current(self, dest: str, entry: OutboxEntry) -> bool:
        """True when ``entry`` is still the outbox entry of its instance (not replaced by a newer copy's)."""
        current = _read_json(self.outbox / dest / f"{entry.sop}.json")
        return current is not None and current.get("token", "") == entry.token

    def _move_entry(self, path: Path, dest: str) -> None:
        target = self.undeliverable / dest / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
        sop = path.stem
        for name in (_read_json(target) or {}).get("files", []) if target.exists() else []:
            source = self.results_dir(sop) / name
            if source.exists():
                shutil.copy2(source, target.with_name(f"{sop}.{name}"))

    def _remove_results_if_unused(self, sop: str) -> None:
        """Remove ``results/SOP/`` unless an outbox entry, or a copy of the instance being segmented, needs it."""
        with self._files_lock:
            if (self.processing / f"{sop}.dcm").exists():
                return
            if any((self.outbox / d / f"{sop}.json").exists() for d in self.destinations_waiting()):
                return
            shutil.rmtree(self.results_dir(sop), ignore_errors=True)


def _visible(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)`` without hidden names: a file being written (``atomic_path``'s
    ``.NAME.XXXX.tmp...``) is not there yet. pathlib's glob, unlike the shell's, matches them."""
    return [p for p in folder.glob(pattern) if not p.name.startswith(".")]


def _oldest_first(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (_mtime(p), p.name))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_ledger(path: Path) -> tuple[int, list[dict[str, Any]], int]:
    """A ledger's generation (0 for one written before rotation existed), its events and its size in bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, [], 0
    generation, events = 0, []
    for index, line in enumerate(data.decode("utf-8", errors="replace").splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            item = json.loads(line)
            if not isinstance(item, dict):
                continue
            if index == 0 and _GENERATION_KEY in item:
                generation = int(item[_GENERATION_KEY])
            elif "event" in item:
                events.append(item)
    return generation, events, len(data)
