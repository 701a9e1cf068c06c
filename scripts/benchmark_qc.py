"""Quality-control benchmark: does ``qc_score`` rank masks by their true Dice, and is what is not a chest rejected?

Runs a QC-calibrated model the way ``lungseg infer`` does (header check, pixel checks, network,
mask clean-up, quality verdict) on three sets and prints a Markdown section (``--report`` appends
it to BENCHMARKS.md):

1. the **test split** of the model's training run (``models/datalist_split.json``): Spearman
   correlation of ``qc_score`` with the true Dice, AUROC of ``qc_score`` for finding the masks with
   Dice < 0.90, and the share of good masks (Dice >= 0.95) that are not passed;
2. **real non-chest images** that packages ship: pydicom's CT, MR and RGB secondary-capture test
   files and scikit-image's photographs (each judged twice: as ``lungseg infer`` sees it, and on its
   pixels alone, headers ignored, for archives whose headers say nothing);
3. **real chest films made implausible**: test images rotated 90 degrees, inverted and cropped
   to their top-left quarter.

Usage (from the repository root)::

    python scripts/benchmark_qc.py --model runs/r50/models/model.pt --report BENCHMARKS.md

Targets (issue 11): Spearman >= 0.6, AUROC >= 0.9, 100 % of non-chest images rejected, <= 5 %
of good masks flagged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_quality import hardware_description, load_average  # noqa: E402

from lungseg_monai.inference import LungSegmenter, classify_dicom
from lungseg_monai.io import is_dicom_file, read_mask, read_radiograph
from lungseg_monai.qc.mask import dice
from lungseg_monai.qc.quality import QCResult

BAD_DICE = 0.90
GOOD_DICE = 0.95
N_IMPLAUSIBLE = 20
PYDICOM_IMAGES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "liver_1frame.dcm",
    "JPEG2000.dcm",
    "693_J2KI.dcm",
    "JPGExtended.dcm",
    "JPEG-lossy.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "rtdose_1frame.dcm",
    "emri_small.dcm",
)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "page.png",
    "text.png",
    "rocket.jpg",
    "retina.jpg",
    "microaneurysms.png",
    "phantom.png",
    "motorcycle_left.png",
    "clock_motion.png",
    "color.png",
    "ihc.png",
    "logo.png",
)


def _pixel_check() -> Any:
    """``lungseg_monai.qc.input.check_pixels`` when this version has it, else a check that accepts everything."""
    try:
        from lungseg_monai.qc.input import check_pixels
    except ImportError:  # pragma: no cover - older checkout
        return lambda pixels: []
    return check_pixels


def judge(segmenter: LungSegmenter, path: Path, use_headers: bool = True) -> tuple[QCResult, np.ndarray | None]:
    """What ``lungseg infer`` concludes for one file: (verdict, mask or None when refused)."""
    if use_headers and is_dicom_file(path):
        reason = classify_dicom(pydicom.dcmread(str(path), stop_before_pixels=True, force=True))
        if reason is not None:
            return QCResult.refused(f"header: {reason}"), None
    try:
        radiograph = read_radiograph(path)
    except Exception as e:  # noqa: BLE001 - an unreadable file is refused, as lungseg infer reports it
        return QCResult.refused(f"unreadable: {e}"), None
    reasons = _pixel_check()(radiograph.pixels)
    if reasons:
        return QCResult.refused("; ".join(reasons)), None
    mask, qc = segmenter.segment_with_qc(radiograph)
    return qc, mask


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """AUROC of *low* scores for finding the positives (ties count half); NaN without both classes."""
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    below = (pos[:, None] < neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(below / (len(pos) * len(neg)))


def _load_split(model: Path, split_file: Path | None) -> dict[str, list[dict[str, str]]]:
    split_file = split_file or model.parent / "datalist_split.json"
    return json.loads(split_file.read_text())


def _save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return path


def implausible_variants(items: Sequence[dict[str, str]], folder: Path) -> dict[str, list[Path]]:
    """Rotated 90°, inverted and top-left-quarter crops of real test films, as 8-bit PNGs."""
    out: dict[str, list[Path]] = {"rotated 90°": [], "inverted": [], "corner crop": []}
    for item in items:
        pixels = read_radiograph(item["image"]).pixels
        lo, hi = np.percentile(pixels, (0, 100))
        img = (pixels - lo) / max(hi - lo, 1e-6) * 255
        stem = Path(item["image"]).stem
        out["rotated 90°"].append(_save_png(np.rot90(img), folder / f"{stem}_rot90.png"))
        out["inverted"].append(_save_png(255 - img, folder / f"{stem}_inverted.png"))
        rows, cols = img.shape
        out["corner crop"].append(_save_png(img[: rows // 2, : cols // 2], folder / f"{stem}_corner.png"))
    return out


def non_chest_files(folder: Path) -> list[Path]:
    """pydicom's bundled image test files and scikit-image's photographs that exist in this install."""
    import skimage

    pydicom_dir = Path(pydicom.__file__).parent / "data" / "test_files"
    skimage_dir = Path(skimage.__file__).parent / "data"
    files = [pydicom_dir / n for n in PYDICOM_IMAGES if (pydicom_dir / n).is_file()]
    files += [skimage_dir / n for n in SKIMAGE_PHOTOS if (skimage_dir / n).is_file()]
    return files


def run(model: Path, split_file: Path | None, limit: int | None) -> str:
    segmenter = LungSegmenter.from_model(model, device="cpu")
    if segmenter.qc is None:
        raise SystemExit(f"'{model}' has no QC calibration; run the bundle's calibrate_qc first")
    split = _load_split(model, split_file)
    test = split["test"][:limit] if limit else split["test"]
    start = time.perf_counter()
    scores, dices, statuses = [], [], []
    for item in test:
        qc, mask = judge(segmenter, Path(item["image"]))
        truth = read_mask(item["label"]).pixels
        d = dice(mask, truth) if mask is not None else 0.0
        scores.append(qc.score if qc.score is not None else 0.0)
        dices.append(d)
        statuses.append(qc.status)
    rho = float(spearmanr(scores, dices).statistic)
    bad = [d < BAD_DICE for d in dices]
    area = auroc(scores, bad)
    good = [s for s, d in zip(statuses, dices) if d >= GOOD_DICE]
    good_flagged = sum(s != "pass" for s in good) / max(len(good), 1)
    # issue 21: QC must see the bad tail, not only rank it
    bad_statuses = [s for s, d in zip(statuses, dices) if d < BAD_DICE]
    bad_stopped = sum(s != "pass" for s in bad_statuses)
    bad_detail = ", ".join(f"{d:.3f} {s}" for s, d in sorted(zip(statuses, dices), key=lambda x: x[1]) if d < BAD_DICE)

    with tempfile.TemporaryDirectory() as tmp:
        others = non_chest_files(Path(tmp))
        with_headers = {p: judge(segmenter, p)[0] for p in others}
        pixels_only = {p: judge(segmenter, p, use_headers=False)[0] for p in others}
        variants = implausible_variants(test[:N_IMPLAUSIBLE], Path(tmp))
        implausible = {kind: Counter(judge(segmenter, p)[0].status for p in paths) for kind, paths in variants.items()}
    elapsed = time.perf_counter() - start

    def rejected_share(results: dict[Path, QCResult]) -> float:
        return sum(r.status == "reject" for r in results.values()) / max(len(results), 1)

    not_rejected = [f"{p.name} ({r.status}, {r.score if r.score is None else round(r.score, 3)})"
                    for p, r in pixels_only.items() if r.status != "reject"]  # fmt: skip
    lines = [
        f"### Quality control benchmark ({dt.date.today().isoformat()})",
        "",
        f"Command: `python scripts/benchmark_qc.py --model {model}" + (f" --limit {limit}`" if limit else "`"),
        f"Model: `{segmenter.identity}`, image size {segmenter.card['image_size']}, QC calibration "
        f"{json.dumps(segmenter.qc.calibration.get('validation', {}))}.",
        f"Hardware: {hardware_description()}; load {load_average()}; {elapsed:.0f} s.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| test images | {len(test)} (mean Dice {np.mean(dices):.4f}, {sum(bad)} with Dice < {BAD_DICE}) | |",
        f"| Spearman(qc_score, Dice) | {rho:.3f} | >= 0.6 |",
        f"| AUROC of qc_score for Dice < {BAD_DICE} | {area:.3f} | >= 0.9 |",
        f"| good masks (Dice >= {GOOD_DICE}) not passed | {good_flagged:.1%} of {len(good)} | <= 5 % |",
        f"| bad masks (Dice < {BAD_DICE}) not passed | {bad_stopped} of {len(bad_statuses)} ({bad_detail or 'none'}) "
        "| >= 2 of 3 (issue 21) |",
        f"| test verdicts | {dict(Counter(statuses))} | |",
        f"| non-chest rejected, as `lungseg infer` sees them | {rejected_share(with_headers):.0%} of {len(others)} | 100 % |",
        f"| non-chest rejected on pixels alone (headers ignored) | {rejected_share(pixels_only):.0%} of {len(others)} | 100 % |",
    ]
    for kind, counts in implausible.items():
        lines.append(f"| {kind} test films ({sum(counts.values())}) | {dict(counts)} | not passed |")
    if not_rejected:
        lines += ["", "Non-chest images not rejected on pixels alone: " + ", ".join(not_rejected) + "."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a QC-calibrated models/model.pt")
    parser.add_argument("--split", type=Path, default=None, help="datalist_split.json (default: beside the model)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images (a smoke test)")
    parser.add_argument("--report", type=Path, default=None, help="append the section to this Markdown file")
    args = parser.parse_args(argv)
    section = run(args.model, args.split, args.limit)
    print(section)
    if args.report is not None:
        with open(args.report, "a") as f:
            f.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
