"""Error types raised by the radiograph readers.

Every reader failure is a :class:`RadiographReadError` (a ``ValueError``) that names the file and
the reason, so a batch can log it, skip the file and carry on.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RadiographReadError", "UnsupportedTransferSyntaxError", "ImageTooLargeError", "MaskMismatchError"]


class RadiographReadError(ValueError):
    """A file could not be read as a chest radiograph (or lung mask).

    Attributes:
        path: the offending file.
        reason: what was wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read '{self.path}': {reason}")


class UnsupportedTransferSyntaxError(RadiographReadError):
    """The DICOM pixel data uses a compression no installed plugin decodes."""


class ImageTooLargeError(RadiographReadError):
    """The image header announces more pixels than the configured limit (decompression-bomb guard)."""


class MaskMismatchError(RadiographReadError):
    """A lung mask does not fit its image (different size)."""
