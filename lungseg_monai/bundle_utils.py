"""Helpers the bundle configs call: where the bundle lives, and the effective device."""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bundle_root_from_argv"]


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
