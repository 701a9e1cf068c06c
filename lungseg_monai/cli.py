"""The ``lungseg`` command: one subcommand per job (analyze, infer, label, ...).

Each subcommand lives in the module that does the job and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` to a callable returning the exit code. Building
the parser imports neither torch nor MONAI, so ``lungseg --help`` starts in a few seconds.

A subcommand that never trains sets ``without_training_modules=True``: the ``lungseg`` process
then refuses to import Ignite, TensorBoard and MLflow, which ``import monai`` would otherwise load
(its engines, handlers and visualize modules import them as optional dependencies at import time)
although inference never uses them. Only the command-line process does this, not :func:`main`
called from Python, so a program that calls it keeps its imports.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["TRAINING_ONLY_MODULES", "build_parser", "console_main", "exclude_modules", "main"]

logger = logging.getLogger(__name__)

# Modules providing subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = (
    "lungseg_monai.analyze",
    "lungseg_monai.inference.cli",
    "lungseg_monai.pacs.cli",
    "lungseg_monai.label.cli",
    "lungseg_monai.pretrained.cli",
)
# Optional MONAI dependencies used only by training and its logging (measured on `lungseg infer`
# start-up: about 1100 modules, 50 MB and a third of the import time).
TRAINING_ONLY_MODULES = ("ignite", "tensorboard", "tensorboardX", "torch.utils.tensorboard", "mlflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation of chest radiographs (MONAI).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def exclude_modules(names: Sequence[str]) -> list[str]:
    """Make later imports of ``names`` (and their submodules) fail with ``ModuleNotFoundError``.

    Python's own mechanism (a ``None`` entry in ``sys.modules``); MONAI's ``optional_import``
    then treats them as not installed. A module already imported is left alone.

    Returns:
        the names excluded.
    """
    excluded = [name for name in names if name not in sys.modules]
    for name in excluded:
        sys.modules[name] = None  # type: ignore[assignment]
    return excluded


def main(argv: Sequence[str] | None = None, lean: bool = False) -> int:
    """Run ``lungseg ARGV``; returns the exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        lean: exclude :data:`TRAINING_ONLY_MODULES` for subcommands that do not train (the
            command-line process only: it changes what the rest of the process can import).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if lean and getattr(args, "without_training_modules", False):
        logger.debug("not importing %s", ", ".join(exclude_modules(TRAINING_ONLY_MODULES)))
    return int(args.func(args) or 0)


def console_main() -> None:
    """The ``lungseg`` command."""
    sys.exit(main(lean=True))


if __name__ == "__main__":
    console_main()
