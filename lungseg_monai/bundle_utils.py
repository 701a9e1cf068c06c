"""Helpers the bundle configs call: command-line flags as booleans."""

from __future__ import annotations

__all__ = ["as_bool"]

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def as_bool(value: bool | int | str, name: str = "flag") -> bool:
    """A bundle flag as a bool, also when it comes from the command line as a string.

    ``python -m monai.bundle run ... --resume false`` passes the string ``"false"``, which Python
    would take as true; this maps ``true/false``, ``yes/no``, ``on/off`` and ``1/0`` (any case).

    Raises:
        ValueError: any other value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")
