"""Helpers the bundle configs call: where the bundle lives, and command-line flags as booleans."""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["as_bool", "bundle_root_from_argv"]

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def _first_config_file(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        if value.strip().startswith("["):
            try:
                files = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                files = value.strip("[]").replace("'", "").replace('"', "").split(",")
            return str(files[0]).strip() if files else None
        return value.split(",")[0].strip()
    return None


def bundle_root_from_argv(default: str = ".", argv: Sequence[str] | None = None) -> str:
    """The bundle folder, found from ``--config_file`` on the command line (``<root>/configs/x.json``).

    Lets ``python -m monai.bundle run --config_file bundles/lung_cxr_segmentation/configs/train.json``
    work from any folder; ``--bundle_root`` still overrides it. Falls back to ``default``.
    """
    config_file = _first_config_file(sys.argv if argv is None else argv)
    if config_file:
        parent = Path(config_file).resolve().parent
        return str(parent.parent if parent.name == "configs" else parent)
    return default


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
