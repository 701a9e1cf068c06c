"""The ``lungseg`` command: one subcommand per job (analyze, infer, label, ...).

Each subcommand lives in the module that does the job and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` to a callable returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# Modules providing subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = ("lungseg_monai.analyze", "lungseg_monai.inference.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation of chest radiographs (MONAI).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
