"""The ``lungseg`` command: one subcommand per job (analyze, infer, label, ...).

Each subcommand lives in the module that does the job and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` to a callable returning the exit code. Building
the parser imports neither torch nor MONAI, so ``lungseg --help`` starts in a few seconds.

Nothing that ``lungseg infer``, ``lungseg node`` or ``lungseg models`` runs imports Ignite or
TensorBoard: they come with the ``train`` extra, and a core install (``pip install lungseg_monai``)
has neither. Where they are installed, ``import monai`` loads them itself (MONAI's optional imports).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "console_main", "main"]

logger = logging.getLogger(__name__)

# Modules providing subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = (
    "lungseg_monai.analyze",
    "lungseg_monai.inference.cli",
    "lungseg_monai.pacs.cli",
    "lungseg_monai.label.cli",
    "lungseg_monai.modelcards.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation of chest radiographs (MONAI).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lungseg ARGV``; returns the exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


def console_main() -> None:
    """The ``lungseg`` command."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
