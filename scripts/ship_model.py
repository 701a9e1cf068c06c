"""Turn a model trained through the bundle into a shipped model: fp16 weights, honest QC calibration, a card.

Input: a bundle root trained with a split whose ``test`` part neither trained nor selected the
model (``--split_ratios "[0.65,0.1,0.25]"``: training, model selection, held out). Steps:

1. the weights are stored in fp16 in ``lungseg_monai/pretrained/NAME/model.pt``; on every
   held-out film the fp16 weights' mask is compared with the fp32 weights' (both run in fp32):
   mean Dice >= 0.999 and no film below 0.995, or nothing is shipped (all is staged first and
   replaces the shipped files only at the end);
2. the held-out films are scored (Dice, IoU, HD95 at each film's own resolution);
3. QC is calibrated on the held-out films (films that neither trained nor selected the model),
   after a cross-fitted check: the held-out films are split by patient into folds, each fold is
   judged by a calibration fitted on the other folds, and the verdicts are compared with the
   Dice (tail caught, good masks flagged);
4. optionally, the verdict shares of ``lungseg infer`` over an unlabelled archive (its
   ``measurements.csv``) and what was seen in the overlays are stored;
5. ``model.json`` gets an ``about`` section with all figures, and the rendered card replaces
   the one in the bundle's ``docs/README.md``.

Usage::

    python scripts/ship_model.py --bundle_root RUN/vgg16 --name vgg16 --train_minutes 33 \\
        --train_command "python scripts/benchmark_quality.py ..." [--archive OUT/measurements.csv --seen "..."]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_quality import hardware_description  # noqa: E402

from lungseg_monai.io import file_stem  # noqa: E402
from lungseg_monai.evaluation.metrics import segmentation_metrics  # noqa: E402
from lungseg_monai.inference import LungSegmenter  # noqa: E402
from lungseg_monai.io import read_mask, read_radiograph  # noqa: E402
from lungseg_monai.io.checkpoint import load_checkpoint  # noqa: E402
from lungseg_monai.pretrained import MODEL_NAMES, PRETRAINED_DIR  # noqa: E402
from lungseg_monai.modelcards.card import CARD_BEGIN, CARD_END, render_card  # noqa: E402
from lungseg_monai.qc.calibration import QC_CARD_KEY, calibrate  # noqa: E402
from lungseg_monai.qc.mask import dice  # noqa: E402
from lungseg_monai.qc.quality import QC_PASS, QC_REVIEW, REVIEW_BELOW, QualityControl  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_README = REPO_ROOT / "bundles" / "lung_cxr_segmentation" / "docs" / "README.md"
# fp16 weights vs fp32 weights, both run in fp32: mean Dice of the masks over the held-out films, and the
# least any one film may have (a film whose probabilities sit near the threshold moves a few pixels).
MIN_FP16_AGREEMENT, MIN_FP16_AGREEMENT_ANY = 0.999, 0.995
MIN_HELD_OUT = 30
BAD_DICE, GOOD_DICE = 0.90, 0.95
FOLDS = 4

logger = logging.getLogger("ship_model")


def to_fp16(source: Path, target: Path) -> None:
    """Save the weights of ``source``'s state dict in fp16; BatchNorm statistics and integers unchanged.

    A BatchNorm running variance can be smaller than fp16 resolves (below 6e-5 it loses digits, below
    6e-8 it becomes 0); they are a few kB, so they stay fp32.
    """
    state = load_checkpoint(source)
    state = {
        k: v.half() if v.is_floating_point() and not k.endswith(("running_mean", "running_var")) else v
        for k, v in state.items()
    }
    torch.save(state, target)


def patient_folds(items: list[dict[str, Any]], folds: int) -> list[list[dict[str, Any]]]:
    """``items`` in ``folds`` parts, every film of one patient (``group``) in one part, sizes balanced."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(str(item.get("group", item["image"])), []).append(item)
    parts: list[list[dict[str, Any]]] = [[] for _ in range(folds)]
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        min(parts, key=len).extend(groups[name])
    return parts


def judge_folds(
    segmenter: LungSegmenter, training: list, held_out: list, forwards: dict
) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Cross-fitted verdicts, film -> (status, score), from a calibration fitted without the film's fold:
    as calibrated (review limit raised from the other folds' out-of-fold scores) and with the fixed limit."""
    verdicts: dict[str, tuple] = {}
    fixed: dict[str, tuple] = {}
    for k, fold in enumerate(patient_folds(held_out, FOLDS)):
        others = [item for item in held_out if item not in fold]
        logger.info("fold %d: calibrating on %d films, judging %d", k, len(others), len(fold))
        calibration = calibrate(segmenter, training, others, tta=True)
        for qc, out in ((calibration, verdicts), ({**calibration, "review_below": REVIEW_BELOW}, fixed)):
            segmenter.qc = QualityControl(qc)
            for item in fold:
                result = segmenter.assess(forwards[item["image"]])
                out[item["image"]] = (result.status, result.score)
    segmenter.qc = None
    return verdicts, fixed


def qc_check(verdicts: dict[str, tuple], dices: dict[str, float]) -> dict[str, Any]:
    names = sorted(dices)
    status = [verdicts[n][0] for n in names]
    scores = [verdicts[n][1] if verdicts[n][1] is not None else 0.0 for n in names]
    d = [dices[n] for n in names]
    tail = [s for s, x in zip(status, d) if x < BAD_DICE]
    good = [s for s, x in zip(status, d) if x >= GOOD_DICE]
    counts = Counter(status)
    return {
        "folds": FOLDS,
        "films": len(names),
        "spearman": float(spearmanr(scores, d).statistic),
        "tail": len(tail),
        "tail_not_passed": sum(s != QC_PASS for s in tail),
        "tail_detail": ", ".join(
            f"{x:.3f} {s}" for s, x in sorted(zip(status, d), key=lambda t: t[1]) if x < BAD_DICE
        ),
        "good": len(good),
        "good_flagged": sum(s != QC_PASS for s in good),
        "pass": counts.get(QC_PASS, 0),
        "review": counts.get(QC_REVIEW, 0),
        "reject": len(names) - counts.get(QC_PASS, 0) - counts.get(QC_REVIEW, 0),
    }


def archive_shares(measurements: Path, source: str, seen: str) -> dict[str, Any]:
    rows = list(csv.DictReader(measurements.open()))
    counts = Counter(row["qc_status"] or "failed" for row in rows)
    n = len(rows)
    return {
        "films": n,
        "source": source,
        "pass": counts.get("pass", 0) / n,
        "review": counts.get("review", 0) / n,
        "reject": counts.get("reject", 0) / n,
        "seen": seen,
    }


def write_bundle_readme(name: str) -> None:
    """Replace (or append) the rendered card of ``name`` in the bundle's docs/README.md."""
    begin = CARD_BEGIN.format(name=name)
    block = f"{begin}\n{render_card(name)}\n{CARD_END}"
    text = BUNDLE_README.read_text()
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(CARD_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BUNDLE_README.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle_root", type=Path, required=True)
    parser.add_argument("--name", required=True, choices=MODEL_NAMES)
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--train_minutes", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True, help="epochs the training ran")
    parser.add_argument("--train_command", required=True)
    parser.add_argument("--recipe", default="recipe v2 (configs/cpu_recipe.json: 128 px, AdamW, warm-up + cosine, "
                        "80 epochs, early stopping 20, affine and intensity augmentation, bf16)")
    parser.add_argument("--data", action="append", default=[], help="a training-data line of the card (repeatable)")
    parser.add_argument("--failure", action="append", default=[], help="a known failure mode (repeatable)")
    parser.add_argument("--licence", default="")
    parser.add_argument("--archive", type=Path, default=None, help="measurements.csv of `lungseg infer` on an archive")
    parser.add_argument("--archive_source", default="")
    parser.add_argument("--seen", default="", help="what the overlays of rejects and passes showed")
    parser.add_argument("--skip_weights", action="store_true", help="keep the fp16 file already shipped (card only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    split = json.loads((args.bundle_root / "models" / "datalist_split.json").read_text())
    if len(split["test"]) < MIN_HELD_OUT:
        raise SystemExit(f"{len(split['test'])} held-out films: the card's QC needs at least {MIN_HELD_OUT}")
    shipped = PRETRAINED_DIR / args.name / "model.pt"
    # Everything is made and checked in a staging folder beside the shipped models (same file system):
    # only a model that passed every gate replaces the shipped files, one os.replace each.
    with tempfile.TemporaryDirectory(dir=PRETRAINED_DIR, prefix=".staging-") as tmp:
        staged = Path(tmp) / "model.pt"
        if args.skip_weights:
            shutil.copyfile(shipped, staged)
        else:
            to_fp16(args.bundle_root / "models" / "model.pt", staged)
        make_card(args, split, staged)
        shipped.parent.mkdir(exist_ok=True)
        for suffix in (".pt", ".json"):
            os.replace(staged.with_suffix(suffix), shipped.with_suffix(suffix))
    write_bundle_readme(args.name)
    print(render_card(args.name))
    return 0


def make_card(args: argparse.Namespace, split: dict[str, Any], target: Path) -> None:
    """Score, gate and calibrate the fp16 weights at ``target``; write their card beside them.

    Raises:
        SystemExit: the fp16 masks do not agree with the fp32 weights' masks.
    """
    trained = args.bundle_root / "models" / "model.pt"
    trained_card = json.loads(trained.with_suffix(".json").read_text())
    training, selection, held_out = split["training"], split["validation"], split["test"]
    card = {k: v for k, v in trained_card.items() if k not in (QC_CARD_KEY, "about")}
    target.with_suffix(".json").write_text(json.dumps(card, indent=1))

    fp32 = LungSegmenter.from_model(trained, device="cpu", precision="fp32")
    fp16 = LungSegmenter.from_model(target, device="cpu", precision="fp32")
    metrics, agreement, forwards, dices = [], [], {}, {}
    for item in held_out:
        radiograph = read_radiograph(item["image"])
        truth = read_mask(item["label"]).pixels
        batch = fp16.prepare(radiograph)[None]
        forwards[item["image"]] = fp16.forward_qc(batch, tta=True)
        mask = fp16.to_mask(forwards[item["image"]].probabilities[0], radiograph.shape)
        agreement.append(dice(mask, fp32.segment(radiograph)))
        m = segmentation_metrics(mask, truth)
        metrics.append(m)
        dices[item["image"]] = m["dice"]
    if np.mean(agreement) < MIN_FP16_AGREEMENT or min(agreement) < MIN_FP16_AGREEMENT_ANY:
        raise SystemExit(
            f"fp16 masks agree with fp32 at mean Dice {np.mean(agreement):.5f} (needs {MIN_FP16_AGREEMENT}), "
            f"min {min(agreement):.5f} (needs {MIN_FP16_AGREEMENT_ANY}; worst {sorted(agreement)[:5]}): not shipped"
        )
    d = np.array([m["dice"] for m in metrics])
    test = {
        "films": len(held_out),
        "patients": len({item.get("group", item["image"]) for item in held_out}),
        "dice_mean": float(d.mean()),
        "dice_median": float(np.median(d)),
        "dice_p5": float(np.percentile(d, 5)),
        "dice_min": float(d.min()),
        "worst": [file_stem(n) for n in sorted(dices, key=dices.get)[:5]],
        "iou_mean": float(np.mean([m["iou"] for m in metrics])),
        "hd95_mean": float(np.mean([m["hd95"] for m in metrics if np.isfinite(m["hd95"])])),
        "fp16_agreement_min": float(min(agreement)),
        "fp16_agreement_mean": float(np.mean(agreement)),
    }
    logger.info("held-out test: %s", json.dumps(test))

    verdicts, fixed = judge_folds(fp16, training, held_out, forwards)
    check = qc_check(verdicts, dices)
    check["fixed_limit"] = qc_check(fixed, dices)
    logger.info("cross-fitted QC check: %s", json.dumps(check))
    card[QC_CARD_KEY] = calibrate(fp16, training, held_out, tta=True)

    about: dict[str, Any] = {
        "name": args.name,
        "title": f"{'VGG16' if args.name == 'vgg16' else 'ResNet50'}-UNet lung segmentation of frontal chest "
        f"radiographs ({args.name})",
        "version": args.version,
        "date": dt.date.today().isoformat(),
        "dtype": "float16 weights (run in fp32/bf16)",
        "training": {
            "recipe": args.recipe,
            "films": len(training),
            "patients": len({item.get("group", item["image"]) for item in training}),
            "validation_films": len(selection),
            "validation_patients": len({item.get("group", item["image"]) for item in selection}),
            "epochs": args.epochs,
            "best_epoch": trained_card.get("epoch", "?"),
            "selection_dice": trained_card.get("val_mean_dice"),
            "minutes": args.train_minutes,
            "hardware": hardware_description(),
            "command": args.train_command,
        },
        "data": args.data,
        "test": test,
        "qc_check": check,
        "failure_modes": args.failure,
        "licence": args.licence,
    }
    if args.archive:
        about["archive"] = archive_shares(args.archive, args.archive_source, args.seen)
    card["about"] = about
    target.with_suffix(".json").write_text(json.dumps(card, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
