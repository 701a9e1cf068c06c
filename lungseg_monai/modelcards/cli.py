"""``lungseg models``: list the shipped models (and any model files given) with their cards."""

from __future__ import annotations

import argparse
import json
import logging

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_MODEL = 0, 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help="list the shipped models and their cards",
        description=(
            "List the models shipped with the package (usable as --model NAME; the first is the default) and any "
            "model files given, with backbone, input size, test Dice and whether their quality control is "
            "calibrated for these very weights. --card prints one model's card (data, licences, test figures, QC "
            "calibration, failure modes, intended use, fine-tuning)."
        ),
    )
    parser.add_argument("paths", nargs="*", metavar="MODEL", help="models/model.pt or model.ts files to list too")
    parser.add_argument("--card", metavar="NAME_OR_PATH", default=None, help="print this model's card (Markdown)")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run)
    return parser


def describe(model: str) -> dict[str, object]:
    """One row of the listing: what ``model`` (a shipped name or a path) is and how it scored."""
    from lungseg_monai.inference.predictor import LungSegmenter
    from lungseg_monai.pretrained import resolve_model

    path = resolve_model(model)
    segmenter = LungSegmenter.from_model(path, device="cpu")
    test = segmenter.card.get("about", {}).get("test", {})
    return {
        "model": model,
        "path": str(path),
        "identity": segmenter.identity,
        "backbone": segmenter.card.get("backbone"),
        "image_size": segmenter.card.get("image_size"),
        "size_mib": round(path.stat().st_size / 2**20, 1),
        "test_dice_mean": test.get("dice_mean"),
        "qc": "calibrated" if segmenter.qc is not None else f"unavailable: {segmenter.qc_unavailable_reason}",
    }


def run(args: argparse.Namespace) -> int:
    from lungseg_monai.io.checkpoint import CheckpointError
    from lungseg_monai.pretrained import DEFAULT_MODEL, shipped_models
    from lungseg_monai.modelcards.card import render_card

    try:
        if args.card is not None:
            print(render_card(args.card))
            return EXIT_OK
        rows = [describe(name) for name in shipped_models()] + [describe(path) for path in args.paths]
    except (CheckpointError, OSError, ValueError) as e:
        logger.error("%s", e)
        return EXIT_BAD_MODEL
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    if not rows:
        print("no shipped model in this installation; pass model files to list them")
    for row in rows:
        dice = "n/a" if row["test_dice_mean"] is None else f"{row['test_dice_mean']:.4f}"
        default = " (default)" if row["model"] == DEFAULT_MODEL else ""
        print(
            f"{row['model']}{default}: {row['backbone']} U-Net, {row['image_size']} px, {row['size_mib']} MiB, "
            f"test Dice {dice}, QC {row['qc']}\n    {row['path']}  [{row['identity']}]"
        )
    return EXIT_OK
