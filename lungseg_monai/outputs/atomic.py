"""Atomic file writing: write to a temporary name in the same folder, then rename.

A run killed mid-write leaves at worst a ``.tmp`` file, never a half-written output under its
final name; ``os.replace`` is atomic on POSIX and Windows within one file system.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["atomic_path", "save_png"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed to ``target``.

    ``suffix`` keeps writers that choose a format by extension happy (default: target's own).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
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
