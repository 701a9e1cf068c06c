"""A model's card as Markdown (model-zoo style), written from its ``model.json``; ``lungseg models --card``.

The figures come from the ``about`` section that ``scripts/ship_model.py`` measured and stored
beside the weights, so the card a user reads, the bundle's ``docs/README.md`` and the model
cannot disagree. A model trained by the bundle (no ``about``) gets the technical part only.
"""

from __future__ import annotations

import os
from typing import Any

from lungseg_monai.pretrained import resolve_model

__all__ = ["CARD_BEGIN", "CARD_END", "render_card"]

# Markers around a rendered card in a Markdown file (the bundle's docs/README.md).
CARD_BEGIN = "<!-- model-card: {name} (written by scripts/ship_model.py from model.json; do not edit) -->"
CARD_END = "<!-- end of model card -->"

INTENDED_USE = (
    "Research and development: lung masks and measurements of adult frontal (PA/AP) chest radiographs, "
    "quality-controlled per film. **Not a medical device**; not for diagnosis or treatment decisions."
)
FINE_TUNING = (
    "Start from this model and train on your own films (a folder with `images/` and `masks/`, or a "
    "MONAI datalist):\n\n"
    "```bash\n"
    "python -m monai.bundle run training --config_file \"['configs/train.json','configs/cpu_recipe.json']\" \\\n"
    "    --bundle_root bundles/lung_cxr_segmentation --dataset_dir MY_FILMS \\\n"
    "    --backbone {backbone} --init_weights {name} --learning_rate 0.0003 --max_epochs 30\n"
    "```\n\n"
    "The new model goes to `BUNDLE_ROOT/models/model.pt` with its own QC calibration (at least 20 "
    "validation films); the shipped model is never written over. Keep `image_size` and the intensity "
    "settings of the card: the weights expect them."
)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _qc_lines(card: dict[str, Any], about: dict[str, Any]) -> list[str]:
    qc = card.get("qc")
    if not qc:
        return [
            "Not calibrated: its QC verdicts say `unavailable`, and `--fail-on`, `--stow-to` and the node stop them."
        ]
    fitted = qc.get("validation", {})
    # A shipped model is calibrated on films that also did not select it (scripts/ship_model.py); the
    # bundle's own training calibrates on its validation films, which chose the best epoch.
    films = "films that neither trained nor selected the model" if about else "validation films it was not trained on"
    lines = [
        f"Calibrated on {fitted.get('n_validation', '?')} {films} (feature distribution from "
        f"{fitted.get('n_training', '?')} training films); bound to the weights' SHA-256 "
        f"`{str(qc.get('weights_sha256', ''))[:16]}…`.",
    ]
    check = about.get("qc_check")
    if check:
        lines += [
            "",
            f"Cross-fitted check ({check['folds']} folds by patient over the {check['films']} held-out films; each "
            "fold's verdicts come from a calibration fitted on the other folds):",
            "",
            "| Spearman(qc_score, Dice) | masks < 0.90 not passed | masks >= 0.95 flagged "
            "| verdicts pass / review / reject |",
            "|---|---|---|---|",
            f"| {check['spearman']:.3f} | {check['tail_not_passed']} of {check['tail']} | "
            f"{check['good_flagged']} of {check['good']} | {check['pass']} / {check['review']} / {check['reject']} |",
        ]
        fixed = check.get("fixed_limit")
        if fixed:
            lines += [
                "",
                f"The review limit is raised from out-of-fold estimates (to {qc.get('review_below', 0.9):.3f} in the "
                f"shipped calibration); with the fixed limit of 0.90 the same check lets through "
                f"{fixed['tail'] - fixed['tail_not_passed']} of {fixed['tail']} masks under 0.90 and flags "
                f"{fixed['good_flagged']} of {fixed['good']} good ones. Masks under 0.90: {check['tail_detail']}.",
            ]
    archive = about.get("archive")
    if archive:
        lines += [
            "",
            f"On {archive['films']} unlabelled adult frontal films ({archive['source']}): pass "
            f"{_pct(archive['pass'])}, review {_pct(archive['review'])}, reject {_pct(archive['reject'])}. "
            f"{archive.get('seen', '')}".rstrip(),
        ]
    return lines


def render_card(model: str | os.PathLike | None = None) -> str:
    """The Markdown model card of a shipped model (by name) or of a ``model.pt``/``model.ts`` path.

    Raises:
        CheckpointError: the model or its card cannot be found (:func:`read_model_card`).
    """
    # Read as LungSegmenter reads it (sidecar, TorchScript extra files, defaults); inference imports torch,
    # so not at module level.
    from lungseg_monai.inference.predictor import read_model_card

    path = resolve_model(model)
    card = read_model_card(path)
    about = card.get("about", {})
    name = about.get("name", path.parent.name if path.name == "model.pt" else path.stem)
    backbone = card.get("backbone", "?")
    lines = [f"### {about.get('title', f'{backbone} U-Net ({name})')}", ""]
    if about.get("version"):
        lines += [f"Version {about['version']}, {about.get('date', '')}; file `{path.name}` "
                  f"({path.stat().st_size / 2**20:.1f} MiB, {about.get('dtype', 'float32')})."]
        lines += [""]
    lines += [
        "**Architecture.** MONAI FlexibleUNet with a torchvision "
        f"{backbone} encoder, decoder channels {card.get('decoder_channels')}, one output (lung logit). Input: one "
        f"channel at {card.get('image_size')} x {card.get('image_size')} px, intensities clipped to the "
        f"{card.get('intensity_percentiles')} percentiles, scaled to [0, 1] and standardised "
        f"(mean {card.get('intensity_mean')}, std {card.get('intensity_std')}); the probability map is resized to "
        f"the film's own size and thresholded at {card.get('threshold')}, then the two largest components are kept.",
        "",
    ]
    training = about.get("training")
    if training:
        lines += [
            f"**Training.** From scratch (no ImageNet weights), {training['recipe']}; {training['films']} films of "
            f"{training['patients']} patients, model selected on {training['validation_films']} films of "
            f"{training['validation_patients']} other patients; best epoch {training['best_epoch']} of "
            f"{training['epochs']}, {training['minutes']:.0f} min on {training['hardware']}.",
            "",
            f"Command: `{training['command']}`",
            "",
        ]
    data = about.get("data")
    if data:
        lines += ["**Training data.**", ""]
        lines += [f"- {item}" for item in data]
        lines += [""]
    test = about.get("test")
    if test:
        lines += [
            f"**Test** on {test['films']} films of {test['patients']} patients that neither trained nor selected it "
            "(masks scored at each film's original size):",
            "",
            "| Dice mean | median | 5th percentile | min | IoU mean | HD95 mean (px) "
            "| fp16 vs fp32 masks (Dice, min) |",
            "|---|---|---|---|---|---|---|",
            f"| {test['dice_mean']:.4f} | {test['dice_median']:.4f} | {test['dice_p5']:.4f} | {test['dice_min']:.4f} | "
            f"{test['iou_mean']:.4f} | {test['hd95_mean']:.1f} | {test['fp16_agreement_min']:.4f} |",
            "",
        ]
    lines += ["**Quality control.**", "", *_qc_lines(card, about), ""]
    failures = about.get("failure_modes")
    if failures:
        lines += ["**Known failure modes.**", ""]
        lines += [f"- {item}" for item in failures]
        lines += [""]
    lines += [f"**Intended use.** {INTENDED_USE}", ""]
    if about.get("licence"):
        lines += [f"**Licence.** {about['licence']}", ""]
    lines += ["**Fine-tuning.** " + FINE_TUNING.format(backbone=backbone, name=name if about else path), ""]
    return "\n".join(lines)
