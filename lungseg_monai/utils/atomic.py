"""Atomic file writing: write to a temporary name in the same folder, then rename.

A run killed mid-write leaves at worst a ``.tmp`` file, never a half-written output under its
final name; ``os.replace`` is atomic on POSIX and Windows within one file system. The next run
that owns those outputs removes such leftovers (:func:`remove_leftover_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["atomic_path", "fsync_path", "remove_leftover_temporaries", "save_png"]


_TOKEN_BYTES = 6
# ".<target name>.<token>.tmp<suffix>": the temporary name atomic_path gives a target.
_TEMPORARY = re.compile(rf"^\.(?P<target>.+)\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")


def _new_empty_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create a new, uniquely named empty file with the umask's permissions.

    ``tempfile.mkstemp`` would make it 0600, and the rename would hand that to the output,
    hiding results from the other accounts (PACS forwarders, viewers) that must read them.
    """
    while True:
        path = folder / f"{prefix}{secrets.token_hex(_TOKEN_BYTES)}{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) content to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed to ``target``.

    Args:
        target: the final name.
        suffix: keeps writers that choose a format by extension happy (default: target's own).
        durable: also fsync the file before the rename and its folder after, so that the file
            survives a power cut or ``kill -9`` once this returns (the DICOM node's spool).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    tmp = _new_empty_file(target.parent, f".{target.name}.", f".tmp{suffix}")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, target)
        if durable:
            fsync_path(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


# zlib level PIL uses by default.
DEFAULT_PNG_COMPRESSION = 6


def save_png(array: np.ndarray, target: str | os.PathLike, compress_level: int = DEFAULT_PNG_COMPRESSION) -> Path:
    """Save a (rows, columns) uint8 or (rows, columns, 3) RGB array as PNG, atomically.

    ``compress_level`` (0-9) trades speed for size; the pixels are the same at every level.
    """
    target = Path(target)
    with atomic_path(target) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", compress_level=compress_level)
    return target


def remove_leftover_temporaries(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporary files that writes of ``targets`` killed mid-way left (one listing per folder).

    Call it only for targets no other process is writing now (a run's own outputs, after its workers
    stopped). Returns the files removed.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in map(Path, targets):
        by_folder.setdefault(target.parent, set()).add(target.name)
    removed = []
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # no such folder: nothing was written there
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match and match["target"] in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed
