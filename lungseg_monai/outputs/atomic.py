"""Atomic file writing: write to a temporary name in the same folder, then rename.

A run killed mid-write leaves at worst a ``.tmp`` file, never a half-written output under its
final name; ``os.replace`` is atomic on POSIX and Windows within one file system.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["atomic_path", "fsync_path", "save_png"]


def _new_empty_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create a new, uniquely named empty file with the umask's permissions.

    ``tempfile.mkstemp`` would make it 0600, and the rename would hand that to the output,
    hiding results from the other accounts (PACS forwarders, viewers) that must read them.
    """
    while True:
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
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
