"""The output manifest: which input, content and settings every output in OUT_DIR was made from.

``OUT_DIR/manifest.json`` maps each output name to the input it belongs to and what its outputs
were made with::

    {"version": 1,
     "names": {"NAME": {"input": "/abs/path/img.png", "size": 48213, "mtime_ns": ..., "ctime_ns": ...,
                        "inode": ..., "sha256": "<hex>", "model": "LungUNet-resnet50-<hash>",
                        "settings": {...}, "outputs": ["mask", "measurements", "overlay"],
                        "qc": {"qc_status": "pass", "qc_score": 0.97, "qc_reasons": ""}}}}

It decides two things on a rerun:

- Names: a name belongs to one input (its resolved path) for good. An input seen before keeps its
  name; a new input never takes a name another input owns, even one absent from this run.
- Reuse: an output is kept only when it is listed in ``outputs`` (written for exactly this
  entry), the input's content hash, the model identity and the settings are the same as then,
  and the file still exists. Anything else is redone. ``mtime`` plays no part in that decision,
  so ``cp -p`` / ``rsync -a`` copies, which keep old times, cannot make a stale output look done.
- Verdicts: the quality verdict the outputs were made with (``qc``) is read back for every kept
  name, so a rerun reports, counts and gates (``--fail-on``, ``--stow-to``) exactly as the run
  that made the outputs did. An entry without a verdict vouches for nothing: its outputs are redone.

Content: SHA-256 of the file's bytes, about 430 MB/s on one core of the 2-core development
machine at load 6 (a few ms for a PNG, ~25 ms for a 10 MB DICOM: small next to decoding and the
network). The hash is recomputed only when the file's (size, mtime_ns, ctime_ns, inode) differ
from the recorded ones, as git's index does: ``ctime`` cannot be set by ``cp -p``, ``rsync`` or
``touch`` and changes on every write, so an unchanged stat means unchanged bytes, and an
identical rerun reads no input. A touched but unchanged file is hashed again and kept. (On
Windows ``st_ctime`` is the creation time, so there only size, mtime and file id guard it.)

An unreadable or malformed manifest is logged as a warning and treated as empty: every output is
redone and the file is replaced after the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lungseg_monai.utils.atomic import atomic_path

__all__ = ["MANIFEST_FILE", "MANIFEST_VERSION", "InputState", "ManifestEntry", "OutputManifest", "input_state"]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputState:
    """An input file as it is now: resolved path, stat signature and content hash."""

    input: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str

    def same_stat(self, other: InputState) -> bool:
        """True when path, size, mtime, ctime and inode are equal (the bytes are then the same)."""
        return (self.input, self.size, self.mtime_ns, self.ctime_ns, self.inode) == (
            other.input,
            other.size,
            other.mtime_ns,
            other.ctime_ns,
            other.inode,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_state(path: str | os.PathLike, known: InputState | None = None) -> InputState:
    """Stat ``path`` and hash its bytes, reusing ``known.sha256`` when the stat is unchanged.

    The stat is taken before the bytes are read: a file changed while being hashed has a new
    ctime, so the next run hashes it again.

    Raises:
        OSError: the file cannot be read.
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    state = InputState(str(resolved), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "")
    if known is not None and known.sha256 and state.same_stat(known):
        return replace(state, sha256=known.sha256)
    return replace(state, sha256=_sha256(resolved))


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists, other objects their str)."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


@dataclass
class ManifestEntry:
    """What the outputs of one name were made from.

    Attributes:
        source: the input (path, stat, content hash) when the outputs were written.
        model: the model identity (:attr:`LungSegmenter.identity`).
        settings: :meth:`LungSegmenter.settings`, as stored in JSON.
        outputs: formats written for exactly this source, model and settings.
        qc: the quality verdict they were made with, as :meth:`QCResult.as_row` gives it (None: unknown).
    """

    source: InputState
    model: str
    settings: dict[str, Any]
    outputs: set[str] = field(default_factory=set)
    qc: dict[str, Any] | None = None

    def made_from(self, source: InputState, model: str, settings: Mapping[str, Any]) -> bool:
        """True when the outputs were made from this content, model and settings."""
        return (
            self.source.input == source.input
            and self.source.sha256 == source.sha256
            and self.model == model
            and self.settings == _normalised(settings)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.source),
            "model": self.model,
            "settings": self.settings,
            "outputs": sorted(self.outputs),
            "qc": self.qc,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestEntry:
        """Raises ``KeyError``/``TypeError``/``ValueError`` on a malformed entry."""
        source = InputState(
            input=str(data["input"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            ctime_ns=int(data["ctime_ns"]),
            inode=int(data["inode"]),
            sha256=str(data["sha256"]),
        )
        settings, outputs, qc = data["settings"], data["outputs"], data.get("qc")
        if not isinstance(settings, dict) or not isinstance(outputs, list) or not isinstance(qc, (dict, type(None))):
            raise TypeError(
                f"'settings' and 'qc' must be objects and 'outputs' a list, got {settings!r}, {qc!r} and {outputs!r}"
            )
        return cls(source, str(data["model"]), settings, {str(o) for o in outputs}, qc)


class OutputManifest:
    """The manifest of one output folder: load it, ask what is still valid, record what was written.

    Args:
        path: the manifest file (``OUT_DIR/manifest.json``).
        entries: entries by output name.

    Example:
        >>> m = OutputManifest(Path("/tmp/out/manifest.json"))
        >>> m.names()
        {}
    """

    def __init__(self, path: str | os.PathLike, entries: Mapping[str, ManifestEntry] | None = None) -> None:
        self.path = Path(path)
        self.entries: dict[str, ManifestEntry] = dict(entries or {})
        self._known = {entry.source.input: entry.source for entry in self.entries.values()}
        self._saved: str | None = self._serialised()

    @classmethod
    def load(cls, output_dir: str | os.PathLike) -> OutputManifest:
        """The manifest in ``output_dir``; empty when there is none or it cannot be read (with a warning)."""
        path = Path(output_dir) / MANIFEST_FILE
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
                version = data.get("version") if isinstance(data, dict) else None
                raise ValueError(f"not a version {MANIFEST_VERSION} lungseg manifest (version {version!r})")
            entries = {str(name): ManifestEntry.from_json(entry) for name, entry in data["names"].items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning(
                "output manifest '%s' cannot be read (%s: %s); every output in '%s' is treated as stale and "
                "redone, and the manifest is rewritten after this run",
                path,
                type(e).__name__,
                e,
                path.parent,
            )
            manifest = cls(path)
            manifest._saved = None  # replace the unreadable file even if nothing is recorded
            return manifest
        return cls(path, entries)

    def names(self) -> dict[Path, str]:
        """Output names by resolved input path: what :func:`discover_inputs` must keep."""
        return {Path(entry.source.input): name for name, entry in sorted(self.entries.items())}

    def state(self, path: str | os.PathLike) -> InputState | None:
        """The input's current :class:`InputState` (hashing only if its stat changed), None if unreadable."""
        try:
            return input_state(path, self._known.get(str(Path(path).resolve())))
        except OSError:
            return None  # the reader reports why; nothing can be reused

    def valid_outputs(
        self, name: str, source: InputState | None, model: str, settings: Mapping[str, Any]
    ) -> set[str]:
        """Formats of ``name`` made from this content, model and settings (existence is the caller's check)."""
        entry = self.entries.get(name)
        if entry is None or source is None or entry.qc is None or not entry.made_from(source, model, settings):
            return set()
        return set(entry.outputs)

    def verdict(self, name: str) -> dict[str, Any] | None:
        """The quality verdict ``name``'s outputs were made with (``qc_status``, ``qc_score``, ``qc_reasons``)."""
        entry = self.entries.get(name)
        return None if entry is None else entry.qc

    def stale(self, name: str, fmt: str) -> bool:
        """True when ``name`` is in the manifest but its ``fmt`` output is not vouched for (not written, or
        made from other content or settings than the name's current entry)."""
        entry = self.entries.get(name)
        return entry is not None and fmt not in entry.outputs

    def forget(self, name: str, formats: Iterable[str]) -> None:
        """Mark outputs as no longer valid (about to be rewritten, or failed); the name stays owned."""
        entry = self.entries.get(name)
        if entry is not None:
            entry.outputs -= set(formats)

    def record(
        self,
        name: str,
        source: InputState,
        model: str,
        settings: Mapping[str, Any],
        formats: Collection[str],
        qc: Mapping[str, Any] | None = None,
    ) -> None:
        """``formats`` of ``name`` were written (or found valid) from ``source`` with this model and settings,
        with the quality verdict ``qc`` (None: the one recorded before, when the rest is unchanged)."""
        entry = self.entries.get(name)
        same = entry is not None and entry.made_from(source, model, settings)
        kept = entry.outputs if same else set()
        verdict = dict(qc) if qc is not None else (entry.qc if same else None)
        self.entries[name] = ManifestEntry(source, model, _normalised(settings), kept | set(formats), verdict)

    def save(self) -> bool:
        """Write the manifest atomically if it changed since loaded or saved; True when written.

        Raises:
            OSError: it cannot be written.
        """
        text = self._serialised()
        if text == self._saved:
            return False
        with atomic_path(self.path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        self._saved = text
        return True

    def _serialised(self) -> str:
        names = {name: entry.to_json() for name, entry in sorted(self.entries.items())}
        return json.dumps({"version": MANIFEST_VERSION, "names": names}, indent=1, sort_keys=True) + "\n"
